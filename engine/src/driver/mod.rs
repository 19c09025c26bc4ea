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
//! `mio.rs` is the only mio-specific file.

pub(crate) mod mio;
