//! The io_uring backend: every io_uring-specific line lives in this folder.
//!
//! One ring per worker, created for a single-threaded owner (`SINGLE_ISSUER`,
//! `DEFER_TASKRUN`). Connections never enter the process file table:
//!
//! * **Accept**: one multishot accept straight into direct descriptors (a sparse registered
//!   file table whose slots the kernel allocates).
//! * **Receive**: one multishot receive per connection with a provided-buffer ring per worker
//!   ([`bufring`]); `ENOBUFS` re-arms the receive and is counted. While the connection's
//!   write queue is over its budget (`Core::wants_read`) the receive is cancelled and not
//!   re-armed until a send completion has drained it (read backpressure).
//! * **Send**: the frames corked for a connection during a turn go out as one SQE: a plain
//!   `send` of the buffer when they are one chunk (a lone broadcast frame: nothing per
//!   recipient but the SQE), else a `sendmsg` whose iovecs point into the queued chunks
//!   (shared broadcast frames included, no copy);
//!   the chunks stay pinned until the completion; a short send re-queues the rest. Every send
//!   of a turn (a whole fan-out) is submitted with one `io_uring_enter`.
//! * **Wake-ups** from other threads: an eventfd read armed on the ring.
//! * **Close**: cancel the receive, `IORING_OP_CLOSE` on the direct descriptor; the slab slot
//!   is freed only when every completion for the connection has arrived.
//!
//! The connection logic is `runtime::core`, shared with the mio backend.
#![allow(unsafe_code)]

mod bufring;

use crate::handler::Handler;
use crate::runtime::core::{AfterFlush, Core};
use crate::runtime::{Config, Handle, Shared, Wake, WorkerShared};
use bufring::BufRing;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CLOSE: u64 = 4;
const OP_CANCEL: u64 = 5;
const OP_SHUTDOWN: u64 = 6;
const OP_WAKE: u64 = 7;
/// Closing a direct descriptor that never became a connection (server full).
const OP_CLOSE_REJECTED: u64 = 8;
const OP_CANCEL_ACCEPT: u64 = 9;
/// A zero-copy send: a result completion (flagged MORE), then a notification (NOTIF) once the
/// kernel no longer reads the buffers.
const OP_SEND_ZC: u64 = 10;

const RING_ENTRIES: u32 = 4096;
/// Iovecs per sendmsg.
const MAX_IOV: usize = 64;
/// Deliveries queued in one turn from which the turn first gathers what else has arrived
/// ([`Worker::gather_more`]).
const COALESCE_MIN: u64 = 64;
/// At most this many extra entries per turn.
const GATHER_ROUNDS: usize = 2;
/// `IORING_ENTER_GETEVENTS`.
const IORING_ENTER_GETEVENTS: u32 = 1;

fn ud(op: u64, key: usize) -> u64 {
    op << 56 | key as u64
}

fn ud_op(ud: u64) -> u64 {
    ud >> 56
}

fn ud_key(ud: u64) -> usize {
    (ud & 0xFFFF_FFFF) as usize
}

/// A connection's handle in this backend: its direct descriptor and what is in flight.
#[derive(Debug)]
pub(crate) struct UringIo {
    slot: u32,
    /// Operations submitted and not completed; the slab slot is freed only at 0 after close.
    ops: u32,
    recv_armed: bool,
    /// The receive was cancelled for read backpressure (its last completion not yet seen).
    recv_paused: bool,
    /// The send slot (msghdr + iovecs) of the send in flight.
    send: Option<u32>,
    /// A zero-copy send's result, held until its notification unpins the buffers.
    zc_written: Option<i32>,
    closing: bool,
    /// A write-side shutdown is in flight: it names the direct descriptor, so the close
    /// waits for it (else it could land on the next connection given the same slot).
    shut_inflight: bool,
    /// The connection died while its shutdown was in flight: close it on that completion.
    close_after_shut: bool,
}

/// The memory a `sendmsg` reads until its completion.
struct SendSlot {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
}

/// The answer to a connection past `max_connections` (the mio backend writes the same).
fn server_full_response() -> &'static [u8] {
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

/// Whether this kernel (and sandbox) can run the backend; the reason if not.
pub(crate) fn probe() -> Result<(), String> {
    let ring = build_ring().map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut p = io_uring::Probe::new();
    ring.submitter()
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
    if !ring.params().is_feature_ext_arg() {
        return Err("the kernel lacks IORING_FEAT_EXT_ARG (wait with a timeout)".into());
    }
    ring.submitter()
        .register_files_sparse(16)
        .map_err(|e| format!("sparse file table: {e}"))?;
    BufRing::new(&ring, 16, 64, 0).map_err(|e| format!("provided-buffer ring: {e}"))?;
    Ok(())
}

fn build_ring() -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(RING_ENTRIES * 4)
        .setup_submit_all();
    match b.build(RING_ENTRIES) {
        Ok(r) => Ok(r),
        // Older kernels: without DEFER_TASKRUN (6.1), with cooperative task running (5.19).
        Err(_) => IoUring::builder()
            .setup_coop_taskrun()
            .setup_cqsize(RING_ENTRIES * 4)
            .build(RING_ENTRIES),
    }
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
    let (listeners, local_addr) = super::bind_listeners(addr, n, cfg.backlog)?;
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
    });
    let parts: Vec<_> = listeners.into_iter().zip(wake_fds).collect();
    super::spawn_workers(
        "u",
        cfg,
        shared,
        handler,
        parts,
        move |core, (listener, wake_fd)| {
            // The ring is created on the worker's thread: with SINGLE_ISSUER only its creating
            // thread may use it.
            let ring = build_ring()?;
            ring.submitter().register_files_sparse(table)?;
            Worker::new(core, ring, listener, wake_fd)
        },
    )
}

struct Worker<H: Handler> {
    core: Core<H, UringIo>,
    /// Declared before `bufs`: the ring (and its buffer registration) goes first.
    ring: IoUring,
    bufs: BufRing,
    listener: Option<std::net::TcpListener>,
    wake_fd: OwnedFd,
    wake_buf: Box<[u8; 8]>,
    sends: slab::Slab<Box<SendSlot>>,
    /// Send slots kept for reuse: a send allocates nothing once warm. Boxed because the
    /// kernel reads a slot's msghdr by address until the completion: it must not move.
    #[allow(clippy::vec_box)]
    send_pool: Vec<Box<SendSlot>>,
    accept_armed: bool,
    /// After a failed accept (table full, out of files): when to try again (ms).
    accept_retry_at: Option<u64>,
    cqes: Vec<(u64, i32, u32)>,
    /// Keys whose multishot receive ended and must be re-armed after this batch.
    rearm: Vec<usize>,
}

impl<H: Handler> super::RunWorker for Worker<H> {
    fn run(self) -> io::Result<()> {
        Worker::run_loop(self)
    }
}

impl<H: Handler> Worker<H> {
    fn new(
        core: Core<H, UringIo>,
        ring: IoUring,
        listener: std::net::TcpListener,
        wake_fd: OwnedFd,
    ) -> io::Result<Self> {
        // Accepted sockets inherit TCP_NODELAY from the listener (there is no fd to set it on).
        socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
        let (count, size) = core.cfg.uring_buffers;
        let bufs = BufRing::new(&ring, count, size, 0)?;
        let mut w = Worker {
            core,
            ring,
            bufs,
            listener: Some(listener),
            wake_fd,
            wake_buf: Box::new([0u8; 8]),
            sends: slab::Slab::new(),
            send_pool: Vec::new(),
            accept_armed: false,
            accept_retry_at: None,
            cqes: Vec::with_capacity(1024),
            rearm: Vec::new(),
        };
        w.arm_accept();
        w.arm_wake();
        Ok(w)
    }

    fn stats(&self) -> &crate::runtime::WorkerStats {
        &self.core.shared.workers[self.core.worker as usize].stats
    }

    /// Queues an SQE, submitting first if the submission queue is full.
    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to (msghdr, iovecs, wake buffer) lives in
            // this worker until the entry's completion is reaped (see SendSlot, wake_buf).
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                tracing::warn!("io_uring submit failed: {err}");
            }
        }
    }

    /// Queues the first entry of a linked pair: room for both is made first, so the pair
    /// is never split by a submission in between.
    fn push_linked(&mut self, e: squeue::Entry) {
        let room = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < 2 {
            if let Err(err) = self.ring.submit() {
                tracing::warn!("io_uring submit failed: {err}");
            }
        }
        self.push(e);
    }

    fn arm_accept(&mut self) {
        let Some(l) = &self.listener else { return };
        let e = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
            .allocate_file_index(true)
            .build()
            .user_data(ud(OP_ACCEPT, 0));
        self.push(e);
        self.accept_armed = true;
    }

    fn arm_wake(&mut self) {
        let e = opcode::Read::new(
            types::Fd(self.wake_fd.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(ud(OP_WAKE, 0));
        self.push(e);
    }

    fn arm_recv(&mut self, key: usize) {
        // Not while the queue is over its budget (read backpressure): `on_send` re-arms once
        // it has drained.
        if !self.core.wants_read(key) {
            return;
        }
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.io.recv_armed || conn.io.closing {
            return;
        }
        conn.io.recv_armed = true;
        conn.io.recv_paused = false;
        conn.io.ops += 1;
        self.core.shared.workers[self.core.worker as usize]
            .stats
            .uring_ops
            .fetch_add(1, Ordering::Relaxed);
        let e = opcode::RecvMulti::new(types::Fixed(conn.io.slot), self.bufs.bgid)
            .build()
            .user_data(ud(OP_RECV, key));
        self.push(e);
    }

    fn run_loop(mut self) -> io::Result<()> {
        loop {
            let timeout = match self.accept_retry_at {
                Some(_) => Some(std::time::Duration::from_millis(100)),
                None => self.core.poll_timeout(),
            };
            let res = if self.ring.completion().is_empty() {
                match timeout {
                    Some(d) => {
                        let ts = types::Timespec::new()
                            .sec(d.as_secs())
                            .nsec(d.subsec_nanos());
                        let args = types::SubmitArgs::new().timespec(&ts);
                        self.ring.submitter().submit_with_args(1, &args)
                    }
                    None => self.ring.submit_and_wait(1),
                }
            } else {
                self.ring.submit()
            };
            match res {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            self.core.update_now();
            let queued = self.stats().deliveries.load(Ordering::Relaxed);
            self.reap_completions();
            if self.stats().deliveries.load(Ordering::Relaxed) - queued >= COALESCE_MIN {
                self.gather_more();
            }
            if self.accept_retry_at.is_some_and(|t| self.core.now_ms >= t) {
                self.accept_retry_at = None;
                if !self.accept_armed && self.listener.is_some() && !self.core.shutting_down {
                    self.arm_accept();
                }
            }
            self.core.run_timers();
            self.flush();
            self.reap();
            if self.core.finished() && self.sends.is_empty() {
                return Ok(());
            }
        }
    }

    /// Handles every completion posted so far, then re-arms the receives that ended.
    fn reap_completions(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (u, res, flags) in cqes.drain(..) {
            self.complete(u, res, flags);
        }
        self.cqes = cqes;
        let mut rearm = std::mem::take(&mut self.rearm);
        for key in rearm.drain(..) {
            self.arm_recv(key);
        }
        self.rearm = rearm;
    }

    /// A fan-out was queued this turn. Before sending it, take in what else has arrived
    /// meanwhile (with `DEFER_TASKRUN` completions are posted only when the ring is entered):
    /// the other events of a burst from other connections then go to each recipient in the
    /// same send, not in a second one behind its completion. One extra `io_uring_enter` per
    /// fan-out turn, against up to one send per recipient.
    fn gather_more(&mut self) {
        for _ in 0..GATHER_ROUNDS {
            let queued = self.stats().deliveries.load(Ordering::Relaxed);
            // SAFETY: no submission, no argument: only runs pending task work and posts
            // the completions that are ready.
            let r = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
            };
            if r.is_err() || self.ring.completion().is_empty() {
                return;
            }
            self.reap_completions();
            if self.stats().deliveries.load(Ordering::Relaxed) == queued {
                return;
            }
        }
    }

    fn complete(&mut self, u: u64, res: i32, flags: u32) {
        let key = ud_key(u);
        match ud_op(u) {
            OP_ACCEPT => self.on_accept(res, flags),
            OP_RECV => self.on_recv(key, res, flags),
            OP_SEND => self.on_send(key, res),
            OP_SEND_ZC => self.on_send_zc(key, res, flags),
            OP_WAKE => {
                if self.core.drain_inbox() {
                    self.stop_accepting();
                }
                if res >= 0 || res == -libc::EAGAIN {
                    self.arm_wake();
                }
            }
            OP_SHUTDOWN => {
                let close = self.core.conns.get_mut(key).is_some_and(|c| {
                    c.io.shut_inflight = false;
                    std::mem::take(&mut c.io.close_after_shut)
                });
                self.op_done(key);
                if close {
                    self.close_conn(key);
                }
            }
            OP_CLOSE | OP_CANCEL => self.op_done(key),
            OP_CLOSE_REJECTED | OP_CANCEL_ACCEPT => {}
            other => tracing::error!("unknown io_uring completion {other}"),
        }
    }

    fn stop_accepting(&mut self) {
        if self.accept_armed {
            let e = opcode::AsyncCancel::new(ud(OP_ACCEPT, 0))
                .build()
                .user_data(ud(OP_CANCEL_ACCEPT, 0));
            self.push(e);
        }
        // The listening socket closes once the cancelled accept lets go of it.
        self.listener = None;
        self.accept_armed = false;
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                // ENFILE: the fixed-file table is full; EMFILE/ENOBUFS/ENOMEM: out of
                // resources. The pending connections wait in the backlog; retry shortly
                // rather than spin on a failing accept.
                if res == -libc::ENFILE {
                    tracing::warn!(
                        "accept failed: this worker's ring has no free direct descriptor (its \
                         fixed-file table is full); the kernel reset the connection it accepted. \
                         Raise --max-connections (more rings) or the soft open-files limit"
                    );
                } else {
                    tracing::warn!("accept failed: {}", io::Error::from_raw_os_error(-res));
                }
                self.accept_retry_at = Some(self.core.now_ms + 100);
                self.stats().accept_errors.fetch_add(1, Ordering::Relaxed);
            }
            if !cqueue::more(flags) {
                return;
            }
        } else if !self.core.can_accept() {
            self.core.count_rejected();
            // 503, then close: a send of a static response linked to the close of the
            // direct descriptor (nothing to keep per rejected connection).
            let slot = types::Fixed(res as u32);
            let resp = server_full_response();
            let send = opcode::Send::new(slot, resp.as_ptr(), resp.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data(ud(OP_CLOSE_REJECTED, 0));
            self.push_linked(send);
            let e = opcode::Close::new(slot)
                .build()
                .user_data(ud(OP_CLOSE_REJECTED, 0));
            self.push(e);
        } else {
            self.stats().uring_slots.fetch_add(1, Ordering::Relaxed);
            let key = self.core.insert(UringIo {
                slot: res as u32,
                ops: 0,
                recv_armed: false,
                recv_paused: false,
                send: None,
                zc_written: None,
                closing: false,
                shut_inflight: false,
                close_after_shut: false,
            });
            self.arm_recv(key);
        }
        if !self.accept_armed && self.listener.is_some() && !self.core.shutting_down {
            self.arm_accept();
        }
    }

    fn on_recv(&mut self, key: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if !more {
            conn.io.recv_armed = false;
        }
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                tracing::error!("receive completion without a buffer");
                return;
            };
            self.stats().uring_bufs_held.fetch_add(1, Ordering::Relaxed);
            let buf = self.bufs.buf(bid);
            self.core.on_data(key, &mut buf[..res as usize]);
            self.bufs.recycle(bid);
            self.stats().uring_bufs_held.fetch_sub(1, Ordering::Relaxed);
            if !more {
                self.rearm.push(key);
            } else if !self.core.wants_read(key) {
                self.pause_recv(key);
            }
        } else if res == -libc::ENOBUFS {
            self.stats().recv_enobufs.fetch_add(1, Ordering::Relaxed);
            self.rearm.push(key);
        } else if res == 0 {
            self.core.on_eof(key);
        } else if res == -libc::ECANCELED {
            // Cancelled for backpressure: re-armed if the queue drained meanwhile.
            if let Some(conn) = self.core.conns.get_mut(key) {
                if conn.io.recv_paused && !more {
                    conn.io.recv_paused = false;
                    self.rearm.push(key);
                }
            }
        } else {
            self.core.on_error(key);
        }
        if !more {
            self.op_done(key);
        }
    }

    /// Cancels `key`'s multishot receive: its queue is over the budget (read backpressure).
    fn pause_recv(&mut self, key: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if !conn.io.recv_armed || conn.io.recv_paused || conn.io.closing {
            return;
        }
        conn.io.recv_paused = true;
        conn.io.ops += 1;
        self.stats().uring_ops.fetch_add(1, Ordering::Relaxed);
        let e = opcode::AsyncCancel::new(ud(OP_RECV, key))
            .build()
            .user_data(ud(OP_CANCEL, key));
        self.push(e);
    }

    /// A zero-copy send completes twice: its result (flagged MORE), then a notification once
    /// the kernel let go of the buffers; the chunks stay pinned until then.
    fn on_send_zc(&mut self, key: usize, res: i32, flags: u32) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if cqueue::notif(flags) {
            let written = conn.io.zc_written.take().unwrap_or(0);
            return self.on_send(key, written);
        }
        if cqueue::more(flags) {
            conn.io.zc_written = Some(res);
        } else {
            self.on_send(key, res);
        }
    }

    fn on_send(&mut self, key: usize, res: i32) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if let Some(s) = conn.io.send.take() {
            let slot = self.sends.remove(s as usize);
            self.send_pool.push(slot);
        }
        let written = res.max(0) as usize;
        conn.out.end_send(written, &mut self.core.env.pool);
        if res > 0 {
            self.core.count_written(res as usize);
        }
        let failed = res < 0;
        self.op_done(key);
        if failed {
            self.core.on_error(key);
        } else {
            if self.core.take_resume(key) {
                self.arm_recv(key);
            }
            // More may have been queued meanwhile, or a short send left a rest.
            self.core.want_flush(key);
            if self.core.conns.get(key).is_some_and(|c| c.out.is_empty()) {
                self.after_flush(key);
            }
        }
    }

    /// One operation of `key` completed; free the slot once closed and idle.
    fn op_done(&mut self, key: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        conn.io.ops = conn.io.ops.saturating_sub(1);
        let free = conn.io.closing && conn.io.ops == 0;
        let st = &self.core.shared.workers[self.core.worker as usize].stats;
        st.uring_ops.fetch_sub(1, Ordering::Relaxed);
        if free {
            st.uring_slots.fetch_sub(1, Ordering::Relaxed);
            self.core.remove(key);
        }
    }

    fn after_flush(&mut self, key: usize) {
        // Once the close is submitted the direct descriptor's slot may already belong to a
        // new connection: nothing may name it again (a late send completion lands here).
        if self
            .core
            .conns
            .get(key)
            .map_or(true, |c| c.io.closing || c.is_dead())
        {
            return;
        }
        if self.core.after_flush(key) == AfterFlush::ShutdownWrite {
            // A connection that died with it (the peer had shut its side already) gets no
            // shutdown: its close sends our FIN behind what is queued in the kernel.
            if let Some(conn) = self.core.conns.get_mut(key).filter(|c| !c.is_dead()) {
                conn.io.shut_inflight = true;
                conn.io.ops += 1;
                self.core.shared.workers[self.core.worker as usize]
                    .stats
                    .uring_ops
                    .fetch_add(1, Ordering::Relaxed);
                let e = opcode::Shutdown::new(types::Fixed(conn.io.slot), libc::SHUT_WR)
                    .build()
                    .user_data(ud(OP_SHUTDOWN, key));
                self.push(e);
            }
        }
    }

    fn flush(&mut self) {
        let mut dirty = self.core.take_dirty();
        for key in dirty.drain(..) {
            self.flush_one(key);
        }
        self.core.give_dirty(dirty);
    }

    fn flush_one(&mut self, key: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.is_dead() || conn.io.closing {
            return;
        }
        if conn.out.is_sending() {
            // The completion flushes the rest.
            let _ = self.core.after_flush(key);
            return;
        }
        if conn.out.is_empty() {
            return self.after_flush(key);
        }
        let n = conn.out.begin_send(MAX_IOV);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let filled = conn.out.io_slices(&mut iov[..n]);
        let bytes = conn.out.len();
        let zc = self
            .core
            .cfg
            .uring_send_zc_min
            .is_some_and(|min| bytes >= min);
        let fd = types::Fixed(conn.io.slot);
        let e = if filled == 1 {
            // One chunk (a lone broadcast frame, or a turn's frames coalesced): a plain send
            // of that buffer, no msghdr to keep alive, so a fan-out to N sockets holds no
            // per-recipient memory while its sends are in flight.
            let (ptr, len) = (iov[0].as_ptr(), iov[0].len() as u32);
            if zc {
                opcode::SendZc::new(fd, ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(ud(OP_SEND_ZC, key))
            } else {
                opcode::Send::new(fd, ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(ud(OP_SEND, key))
            }
        } else {
            let fresh = self.send_pool.pop().unwrap_or_else(|| {
                // SAFETY: msghdr and iovec are plain C structs; all-zero is a valid value.
                Box::new(unsafe { std::mem::zeroed::<SendSlot>() })
            });
            let entry = self.sends.vacant_entry();
            let slot_id = entry.key();
            let slot = entry.insert(fresh);
            for (dst, src) in slot.iov.iter_mut().zip(&iov[..filled]) {
                dst.iov_base = src.as_ptr() as *mut _;
                dst.iov_len = src.len();
            }
            slot.hdr.msg_iov = slot.iov.as_mut_ptr();
            slot.hdr.msg_iovlen = filled as _;
            let hdr: *const libc::msghdr = &slot.hdr;
            conn.io.send = Some(slot_id as u32);
            if zc {
                opcode::SendMsgZc::new(fd, hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(ud(OP_SEND_ZC, key))
            } else {
                opcode::SendMsg::new(fd, hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(ud(OP_SEND, key))
            }
        };
        conn.io.ops += 1;
        self.core.shared.workers[self.core.worker as usize]
            .stats
            .uring_ops
            .fetch_add(1, Ordering::Relaxed);
        let _ = self.core.after_flush(key);
        self.push(e);
    }

    /// Dead connections: cancel the receive, close the direct descriptor; the slot is freed
    /// when the last completion arrives (`op_done`).
    fn reap(&mut self) {
        while let Some(key) = self.core.dead.pop() {
            self.close_conn(key);
        }
    }

    fn close_conn(&mut self, key: usize) {
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if conn.io.closing {
            return;
        }
        if conn.io.shut_inflight {
            conn.io.close_after_shut = true;
            return;
        }
        conn.io.closing = true;
        let slot = conn.io.slot;
        let recv = conn.io.recv_armed;
        conn.io.ops += 1 + recv as u32;
        self.core.shared.workers[self.core.worker as usize]
            .stats
            .uring_ops
            .fetch_add(1 + recv as u64, Ordering::Relaxed);
        if recv {
            let e = opcode::AsyncCancel::new(ud(OP_RECV, key))
                .build()
                .user_data(ud(OP_CANCEL, key));
            self.push(e);
        }
        let e = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(ud(OP_CLOSE, key));
        self.push(e);
    }
}
