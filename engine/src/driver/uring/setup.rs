//! Starting the io_uring backend: the probe for what it needs, the fixed-file table plan,
//! the wake-up eventfds and the workers, each creating its ring on its own thread.
#![allow(unsafe_code)]

use super::ring::Ring;
use super::worker::Worker;
use crate::handler::Handler;
use crate::runtime::{Config, Handle, Shared, Wake, WorkerShared};
use io_uring::{opcode, types};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Whether this kernel (and sandbox) can run the backend; the reason if not.
pub(crate) fn probe() -> Result<(), String> {
    // A scratch ring with a small table and buffer ring; its `Drop` unregisters the buffer
    // ring before freeing it.
    let mut ring = Ring::new(16, (16, 64)).map_err(|e| e.to_string())?;
    let mut p = io_uring::Probe::new();
    ring.uring()
        .submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Shutdown::CODE, "SHUTDOWN"),
        (opcode::Read::CODE, "READ"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("the kernel lacks IORING_OP_{name}"));
        }
    }
    if !ring.uring().params().is_feature_ext_arg() {
        return Err("the kernel lacks IORING_FEAT_EXT_ARG (wait with a timeout)".into());
    }
    probe_cancel_fixed_fd(&mut ring)
}

/// Whether `ASYNC_CANCEL` takes a direct descriptor and cancels every operation on it
/// (`IORING_ASYNC_CANCEL_FD_FIXED | ALL`, Linux 6.0): closing a connection needs it. An empty
/// slot answers `EBADF`; a kernel without the flags refuses them with `EINVAL`.
fn probe_cancel_fixed_fd(ring: &mut Ring) -> Result<(), String> {
    let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(0)).all())
        .build()
        .user_data(1);
    // SAFETY: a cancel points to no memory.
    unsafe { ring.push(&e) };
    ring.submit(true, None)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    let mut cqes = Vec::new();
    ring.reap(&mut cqes);
    let res = cqes.first().map_or(-libc::EINVAL, |c| c.1);
    if res == -libc::EINVAL {
        return Err("the kernel cannot cancel by direct descriptor \
                    (IORING_ASYNC_CANCEL_FD_FIXED, Linux 6.0)"
            .into());
    }
    Ok(())
}

struct EventFd(OwnedFd);

impl Wake for EventFd {
    fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
        let r = unsafe { libc::write(self.0.as_raw_fd(), &one as *const u64 as *const _, 8) };
        if r == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Binds the listeners and starts `n` io_uring workers.
pub(crate) fn start<H: Handler>(
    cfg: Config,
    addr: SocketAddr,
    n: usize,
    handler: H,
) -> io::Result<(Handle, Vec<JoinHandle<()>>)> {
    let soft = crate::runtime::raise_nofile_limit();
    // Each ring's table takes the soft limit (the kernel's cap for one ring), or this
    // worker's share of max_connections when that is smaller, with a quarter more for the
    // uneven spread of SO_REUSEPORT's hash (a connection accepted into a full table is lost).
    let table = match cfg.max_connections {
        0 => soft as usize,
        m => (m.div_ceil(n) * 5 / 4 + 64).min(soft as usize),
    }
    .clamp(16, 1 << 20) as u32;
    let (listeners, local_addr) = crate::driver::bind_listeners(addr, n, cfg.backlog)?;
    let mut workers = Vec::with_capacity(n);
    let mut wake_fds = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let dup = owned.try_clone()?;
        workers.push(WorkerShared::new(Box::new(EventFd(owned))));
        wake_fds.push(dup);
    }
    let shared = Arc::new(Shared {
        workers,
        local_addr,
        shutdown: AtomicBool::new(false),
        open_conns: std::sync::atomic::AtomicUsize::new(0),
        max_keys_per_event: cfg.max_keys_per_event,
        max_bindings: (cfg.max_keys_per_conn, cfg.max_topics_per_conn),
    });
    let parts: Vec<_> = listeners.into_iter().zip(wake_fds).collect();
    crate::driver::spawn_workers(
        "u",
        cfg,
        shared,
        handler,
        parts,
        move |core, (listener, wake_fd)| {
            // The ring is created on the worker's thread: with SINGLE_ISSUER only its creating
            // thread may use it.
            let ring = Ring::new(table, core.cfg.uring_buffers)?;
            Worker::new(core, ring, listener, wake_fd)
        },
    )
}
