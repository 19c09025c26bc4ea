//! Starting the io_uring backend: the probe for what it needs, the fixed-file table plan,
//! the wake-up eventfds and the workers, each creating its ring on its own thread.
#![allow(unsafe_code)]

use super::ring::Ring;
use super::worker::Worker;
use crate::handler::Handler;
use crate::runtime::config::Config;
use crate::runtime::handle::{Handle, Shared};
use crate::runtime::inbox::{Wake, WorkerShared};
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
    let mut ring = Ring::new(16, Some((16, 64))).map_err(|e| e.to_string())?;
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

/// How the connections are spread over rings: `rings` per worker, each with a fixed-file
/// table of `table` direct descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) rings: usize,
    pub(crate) table: u32,
}

/// The ring plan for `n` workers. A ring's table holds at most the soft open-files limit
/// (`soft`, the kernel's cap for one ring) or `Config::uring_ring_slots`, whichever is
/// smaller. The kernel spreads connections over the rings' `SO_REUSEPORT` listeners by a
/// hash, not evenly, and a connection accepted into a full table is lost (reset): each ring
/// is planned at 90% of its cap, so `max_connections` past `0.9 × cap × n` takes more rings
/// per worker (never more workers), and each table is sized a quarter above an even share.
pub(crate) fn plan(max_connections: usize, ring_slots: usize, soft: u64, n: usize) -> Plan {
    let soft = (soft as usize).clamp(16, 1 << 20);
    let cap = match ring_slots {
        0 => soft,
        s => s.clamp(16, soft),
    };
    let planned = cap * 9 / 10;
    let rings = max_connections.div_ceil(planned).div_ceil(n.max(1)).max(1);
    let table = match max_connections {
        0 => cap,
        m => (m.div_ceil(n.max(1) * rings) * 5 / 4 + 64).min(cap),
    };
    Plan {
        rings,
        table: table.max(16) as u32,
    }
}

/// Binds the listeners and starts `n` io_uring workers, each on the rings of the [`plan`].
pub(crate) fn start<H: Handler>(
    cfg: Config,
    addr: SocketAddr,
    n: usize,
    handler: H,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> io::Result<(Handle, Vec<JoinHandle<()>>)> {
    let soft = crate::driver::raise_nofile_limit();
    let Plan { rings, table } = plan(cfg.max_connections, cfg.uring.ring_slots, soft, n);
    if rings > super::MAX_RINGS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "io_uring: {} connections would take {rings} rings per worker ({n} workers, \
                 {table} direct descriptors per ring), more than {}: raise the open-files \
                 limit or run more workers",
                cfg.max_connections,
                super::MAX_RINGS
            ),
        ));
    }
    if rings > 1 {
        tracing::info!(
            "io_uring: {} connections take {rings} rings per worker ({n} workers, {table} direct \
             descriptors per ring; a ring holds at most the soft open-files limit, {soft})",
            cfg.max_connections
        );
    }
    let (listeners, local_addr) = crate::driver::bind_listeners(addr, n * rings, cfg.backlog)?;
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
        workers.push(WorkerShared::new(
            Box::new(EventFd(owned)),
            cfg.inbox_capacity,
        ));
        wake_fds.push(dup);
    }
    let shared = Arc::new(Shared {
        workers,
        local_addr,
        shutdown: AtomicBool::new(false),
        open_conns: std::sync::atomic::AtomicUsize::new(0),
        max_keys_per_event: cfg.max_keys_per_event,
        deflate: cfg.deflate.is_some(),
        max_bindings: (cfg.max_keys_per_conn, cfg.max_topics_per_conn),
        cluster,
    });
    let mut listeners = listeners.into_iter();
    let parts: Vec<(Vec<_>, OwnedFd)> = wake_fds
        .into_iter()
        .map(|wake_fd| (listeners.by_ref().take(rings).collect(), wake_fd))
        .collect();
    crate::driver::spawn_workers(
        "u",
        cfg,
        shared,
        handler,
        parts,
        move |core, (listeners, wake_fd)| {
            // The rings are created on the worker's thread: with SINGLE_ISSUER only its
            // creating thread may use them.
            let bufs = core.config().uring.buffers;
            let mut worker_rings = Vec::with_capacity(listeners.len());
            for (i, listener) in listeners.into_iter().enumerate() {
                let mut ring = match i {
                    0 => Ring::new(table, bufs)?,
                    _ => Ring::new_secondary(table, bufs, wake_fd.as_raw_fd())?,
                };
                crate::runtime::stats::add_own(
                    &core.stats().uring_bufs_live,
                    u64::from(ring.bufs().live()),
                );
                worker_rings.push((ring, listener));
            }
            core.stats().uring_rings.fetch_add(
                worker_rings.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            Worker::new(core, worker_rings, wake_fd)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_connections_than_a_ring_holds_take_more_rings_per_worker_not_more_workers() {
        // The default: one ring per worker, the whole limit as its table.
        assert_eq!(
            plan(0, 0, 20_000, 2),
            Plan {
                rings: 1,
                table: 20_000
            }
        );
        // Within one ring per worker: a table sized a quarter above the share.
        assert_eq!(
            plan(10_000, 0, 20_000, 2),
            Plan {
                rings: 1,
                table: 6_314
            }
        );
        // 250,000 on 2 workers at 18,000 planned per ring: 14 rings, 7 per worker.
        assert_eq!(
            plan(250_000, 0, 20_000, 2),
            Plan {
                rings: 7,
                table: 20_000
            }
        );
        // 1,000,000: 56 rings, 28 per worker, each table a quarter above 17,858.
        assert_eq!(
            plan(1_000_000, 0, 20_000, 2),
            Plan {
                rings: 28,
                table: 20_000
            }
        );
        // A cap on the slots per ring below the limit (tests): 300 at 57 planned per ring.
        assert_eq!(
            plan(300, 64, 20_000, 2),
            Plan {
                rings: 3,
                table: 64
            }
        );
        // The cap never exceeds the limit.
        assert_eq!(
            plan(0, 50_000, 20_000, 1),
            Plan {
                rings: 1,
                table: 20_000
            }
        );
    }
}
