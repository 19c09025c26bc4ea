//! The backend seam: where syscalls live.
//!
//! A backend owns the poller (or ring), the listeners and the sockets. Everything else, the
//! phase machine, handshake, framing, timers, write queues, handler calls, is in
//! [`crate::runtime::core`] and shared by every backend. A backend must:
//!
//! * accept connections and hand each socket to `Core::insert` (or refuse with 503 when
//!   `Core::can_accept` says no);
//! * deliver received bytes with `Core::on_data` (any buffer: mio reads into one receive
//!   buffer per worker, io_uring hands out provided buffers); end of stream (a read of 0
//!   bytes: the peer is done sending, what it is owed still goes out) with `Core::on_eof`,
//!   and read or write errors (drop at once) with `Core::on_error`;
//! * read from a connection only while `Core::wants_read` says so (read backpressure: its
//!   write queue is over the budget), and read again once `Core::take_resume` says so after
//!   a flush;
//! * after each loop turn, write out every key from `Core::take_dirty` (one vectored write or
//!   one send per connection per turn; give the vector back with `Core::give_dirty`) and
//!   report with `Core::after_flush`, which may ask for a write-side shutdown;
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

/// The answer to a connection past `max_connections`, built once for both backends (mio
/// writes it, io_uring sends it from this static buffer linked to the close).
pub(crate) fn server_full_response() -> &'static [u8] {
    static RESP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    RESP.get_or_init(|| {
        let mut out = Vec::new();
        crate::proto::handshake::write_http_response(
            &mut out,
            503,
            "text/plain",
            &[],
            b"server full\n",
        )
        .expect("static");
        out
    })
}

/// Binds `n` listeners on one address with `SO_REUSEPORT` (the kernel spreads connections
/// over them); returns them and the bound address (with the real port for port 0).
///
/// `SO_REUSEPORT` would also let this server join the listeners of another process of the
/// same user on that port (a second instance started by mistake), and the kernel would split
/// the connections between the two without a word. A plain bind of the address first fails
/// with `EADDRINUSE` when anything listens there, and so does the start.
pub(crate) fn bind_listeners(
    addr: std::net::SocketAddr,
    n: usize,
    backlog: i32,
) -> std::io::Result<(Vec<std::net::TcpListener>, std::net::SocketAddr)> {
    if addr.port() != 0 {
        refuse_if_listened_on(addr)?;
    }
    let first = mio::bind_reuseport(addr, backlog)?;
    let local = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(mio::bind_reuseport(local, backlog)?);
    }
    Ok((all, local))
}

/// Fails with `AddrInUse` when a socket listens on `addr`, with or without `SO_REUSEPORT`.
fn refuse_if_listened_on(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As the listeners do: connections of an earlier run in TIME_WAIT are no conflict.
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "address in use: another process listens on it",
        )),
        other => other,
    }
}

/// The cores workers are pinned to (empty: no pinning).
pub(crate) fn pin_cores(cfg: &crate::runtime::config::Config) -> Vec<core_affinity::CoreId> {
    if cfg.pin_workers {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// Pins the calling worker thread `i` to its core, if pinning is on.
pub(crate) fn pin_worker(i: usize, cores: &[core_affinity::CoreId]) {
    if let Some(id) = cores.get(i % cores.len().max(1)) {
        if !core_affinity::set_for_current(*id) {
            tracing::warn!(worker = i, "could not pin worker to core {}", id.id);
        }
    }
}

/// A backend's worker, set up on its own thread and ready to run its loop.
pub(crate) trait RunWorker {
    /// Runs the loop until the worker has shut down.
    fn run(self) -> std::io::Result<()>;
}

/// Starts one thread per element of `parts` (a worker's share: its listener and poller or
/// eventfd): each pins itself, builds its `Core` and its backend worker with `setup` (on
/// that thread, as io_uring's SINGLE_ISSUER requires), reports whether that worked, then runs.
/// Returns once every worker has started; if one fails, the others are shut down and the
/// error is returned.
pub(crate) fn spawn_workers<H, Io, T, W, F>(
    label: &'static str,
    cfg: crate::runtime::config::Config,
    shared: std::sync::Arc<crate::runtime::handle::Shared>,
    handler: H,
    parts: Vec<T>,
    setup: F,
) -> std::io::Result<(
    crate::runtime::handle::Handle,
    Vec<std::thread::JoinHandle<()>>,
)>
where
    H: crate::handler::Handler,
    Io: crate::runtime::queue::WriteNow,
    T: Send + 'static,
    W: RunWorker,
    F: Fn(crate::runtime::core::Core<H, Io>, T) -> std::io::Result<W> + Copy + Send + 'static,
{
    let n = parts.len();
    let cfg = std::sync::Arc::new(cfg);
    let cores = std::sync::Arc::new(pin_cores(&cfg));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let mut threads = Vec::with_capacity(n);
    for (i, part) in parts.into_iter().enumerate() {
        let (handler, cfg, shared, cores) =
            (handler.clone(), cfg.clone(), shared.clone(), cores.clone());
        let ready = ready_tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("volley-{label}{i}"))
            .spawn(move || {
                pin_worker(i, &cores);
                let core = crate::runtime::core::Core::new(handler, cfg, shared, i as u8);
                match setup(core, part) {
                    Ok(w) => {
                        let _ = ready.send(Ok(()));
                        if let Err(e) = w.run() {
                            tracing::error!(worker = i, "worker stopped: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })?;
        threads.push(t);
    }
    drop(ready_tx);
    let handle = crate::runtime::handle::Handle { shared };
    for _ in 0..n {
        let failed = match ready_rx.recv() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(std::io::Error::other("a worker exited during start")),
        };
        if let Some(e) = failed {
            handle.shutdown();
            for t in threads {
                let _ = t.join();
            }
            return Err(std::io::Error::new(
                e.kind(),
                format!("worker setup failed: {e}"),
            ));
        }
    }
    Ok((handle, threads))
}

/// Raises the soft open-files limit to the hard limit (each socket is a file; io_uring's
/// fixed-file tables are capped by the soft limit too). Logs what it did.
#[allow(unsafe_code)]
pub(crate) fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            tracing::debug!(
                "raised the soft open-files limit from {old} to {}",
                lim.rlim_cur
            );
        } else {
            lim.rlim_cur = old;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    let cur = lim.rlim_cur as u64;
    cur
}
