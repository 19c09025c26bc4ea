//! The backend seam: where syscalls live.
//!
//! A backend owns the poller (or ring), the listeners and the sockets. Everything else, the
//! phase machine, handshake, framing, timers, write queues, handler calls, is in
//! [`crate::runtime::core`] and shared by every backend. A backend must:
//!
//! * accept connections and hand each socket to `Core::insert` (or refuse with 503 when
//!   `Core::can_accept` says no);
//! * deliver received bytes with `Core::on_data` (any buffer: mio reads into one receive
//!   buffer per worker, io_uring hands out provided buffers), and end of stream or errors
//!   with `Core::on_eof`;
//! * after each loop turn, write out every key in `Core::dirty` (one vectored write or one
//!   send per connection per turn) and report with `Core::after_flush`, which may ask for a
//!   write-side shutdown;
//! * close the sockets of `Core::dead` and free their slots with `Core::remove`;
//! * call `Core::update_now` and `Core::run_timers` every turn, sleeping at most
//!   `Core::poll_timeout`; and drain the inbox with `Core::drain_inbox` when woken.
//!
//! `mio.rs` is the only mio-specific file; `uring/` holds everything io_uring.

pub(crate) mod mio;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

/// Whether the io_uring backend can run here; the reason if not. Probed once per process,
/// on a thread of its own: tearing down the scratch ring queues task work for the thread
/// that created it, which would interrupt that thread's blocking syscalls (EINTR).
pub(crate) fn uring_probe() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        PROBE
            .get_or_init(|| {
                std::thread::spawn(uring::probe)
                    .join()
                    .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
            })
            .clone()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("io_uring exists only on Linux".into())
    }
}
