//! A worker's loop on its ring: accepts, receives, wake-ups, completions, and the close of a
//! connection (see [`CloseState`]).
#![allow(unsafe_code)]

use super::ops::Op;
use super::ring::Ring;
use super::send::SendSlot;
use super::{CloseState, UringIo, MAX_RINGS};
use crate::handler::Handler;
use crate::runtime::core::Core;
use crate::runtime::stats::{add_own, sub_own};
use io_uring::{cqueue, opcode, squeue, types};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

/// Deliveries queued in one turn from which the turn first gathers what else has arrived
/// ([`Worker::gather_more`]).
const COALESCE_MIN: u64 = 64;
/// At most this many extra entries per turn.
const GATHER_ROUNDS: usize = 2;

pub(super) struct WorkerRing {
    pub(super) ring: Ring,
    /// This ring's `SO_REUSEPORT` listener: its multishot accept fills this ring's table.
    listener: Option<std::net::TcpListener>,
    accept_armed: bool,
    /// After a failed accept (table full, out of files): when to try again (ms).
    accept_retry_at: Option<u64>,
    /// A receive of this batch ran out of buffers: the ring grows once after the batch.
    ran_out: bool,
}

pub(super) struct Worker<H: Handler> {
    pub(super) core: Core<H, UringIo>,
    /// The rings and their provided buffers. The kernel may use memory owned by the other
    /// fields (the pinned write queues in `core`, `sends`, `wake_buf`) until an operation's
    /// final completion: `Drop` stops every operation first.
    pub(super) rings: Vec<WorkerRing>,
    pub(super) wake_fd: OwnedFd,
    pub(super) wake_buf: Box<[u8; 8]>,
    pub(super) sends: slab::Slab<Box<SendSlot>>,
    /// Send slots kept for reuse: a send allocates nothing once warm. Boxed because the
    /// kernel reads a slot's msghdr by address until the completion: it must not move.
    #[allow(clippy::vec_box)]
    pub(super) send_pool: Vec<Box<SendSlot>>,
    pub(super) cqes: Vec<(u64, i32, u32)>,
    /// Keys whose multishot receive ended and must be re-armed after this batch.
    pub(super) rearm: Vec<usize>,
    /// The result of the wake-up read completed in this batch: the inbox is drained after
    /// the batch's other completions (see `reap_completions`).
    pub(super) woken: Option<i32>,
    /// Bytes of sends queued since the last submission by [`Worker::send_early`].
    pub(super) early_bytes: usize,
    /// Zero-copy sends' results by connection, held until their notification unpins the
    /// buffers (opt-in sends; kept here, not in every connection's slab entry). At most one
    /// per connection: a connection has one send in flight.
    pub(super) zc_written: std::collections::HashMap<usize, i32>,
}

impl<H: Handler> Drop for Worker<H> {
    fn drop(&mut self) {
        // Before any field goes: no operation may still read a pinned write queue, a
        // `SendSlot` or `wake_buf` when they are freed.
        // Every ring is stopped (not short-circuited), then the memory is leaked if any
        // failed.
        let mut stopped = true;
        for r in self.rings.iter_mut() {
            stopped &= r.ring.quiesce();
        }
        if !stopped {
            tracing::error!("io_uring operations still in flight at exit; their memory is leaked");
            self.core.leak_conns();
            std::mem::forget(std::mem::take(&mut self.sends));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
        }
    }
}

impl<H: Handler> crate::driver::RunWorker for Worker<H> {
    fn run(self) -> io::Result<()> {
        Worker::run_loop(self)
    }
}

impl<H: Handler> Worker<H> {
    /// A worker on `rings` (the primary first), each with its listener.
    pub(super) fn new(
        core: Core<H, UringIo>,
        rings: Vec<(Ring, std::net::TcpListener)>,
        wake_fd: OwnedFd,
    ) -> io::Result<Self> {
        debug_assert!(!rings.is_empty() && rings.len() <= MAX_RINGS);
        let mut w = Worker {
            core,
            rings: Vec::with_capacity(rings.len()),
            wake_fd,
            wake_buf: Box::new([0u8; 8]),
            sends: slab::Slab::new(),
            send_pool: Vec::new(),
            cqes: Vec::with_capacity(1024),
            rearm: Vec::new(),
            woken: None,
            early_bytes: 0,
            zc_written: std::collections::HashMap::new(),
        };
        for (ring, listener) in rings {
            // Accepted sockets inherit TCP_NODELAY from the listener (there is no fd to set
            // it on).
            socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
            w.rings.push(WorkerRing {
                ring,
                listener: Some(listener),
                accept_armed: false,
                accept_retry_at: None,
                ran_out: false,
            });
        }
        for r in 0..w.rings.len() {
            w.arm_accept(r);
        }
        w.arm_wake();
        Ok(w)
    }

    pub(super) fn stats(&self) -> &crate::runtime::stats::WorkerStats {
        self.core.stats()
    }

    fn arm_accept(&mut self, r: usize) {
        let Some(l) = &self.rings[r].listener else {
            return;
        };
        let e = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
            .allocate_file_index(true)
            .build();
        // SAFETY: an accept into the fixed-file table points to no memory (no address out).
        unsafe { self.submit_to(r, Op::Accept, e) };
        self.rings[r].accept_armed = true;
    }

    fn arm_wake(&mut self) {
        let e = opcode::Read::new(
            types::Fd(self.wake_fd.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build();
        // SAFETY: the kernel writes 8 bytes into `wake_buf`, boxed (it does not move) and
        // owned by this worker, which reads it only in the completion; `Worker` drops the
        // ring before it (field order).
        unsafe { self.submit_to(0, Op::Wake, e) };
    }

    pub(super) fn arm_recv(&mut self, key: usize) {
        // Not while the queue is over its budget (read backpressure): `on_send` re-arms once
        // it has drained.
        if !self.core.wants_read(key) {
            return;
        }
        let Some(conn) = self.core.wire(key) else {
            return;
        };
        // A dead connection waits for its cancel and close: nothing new names its slot.
        if conn.io.recv_armed || conn.io.close != CloseState::Open || conn.is_dead() {
            return;
        }
        conn.io.recv_armed = true;
        conn.io.recv_paused = false;
        let bgid = self.rings[conn.io.ring()].ring.bufs().bgid;
        let e = opcode::RecvMulti::new(types::Fixed(conn.io.slot()), bgid).build();
        // SAFETY: the receive takes its buffers from the provided-buffer ring, which stays
        // registered while the ring has operations; the SQE points to no other memory.
        unsafe { self.submit(Op::Recv(key), e) };
    }

    fn run_loop(mut self) -> io::Result<()> {
        loop {
            let retry = self.rings.iter().any(|r| r.accept_retry_at.is_some());
            let timeout = match retry {
                true => Some(std::time::Duration::from_millis(100)),
                false => self.core.poll_timeout(),
            };
            // The secondary rings first (they are never waited on): what completes meanwhile
            // is seen below, or signals the eventfd the primary waits on.
            for r in self.rings[1..].iter_mut() {
                if r.ring.needs_enter() {
                    r.ring.submit(false, None)?;
                }
            }
            // Sleep only when nothing is waiting to be handled.
            let wait = !self.has_completions();
            self.early_bytes = 0;
            self.rings[0].ring.submit(wait, timeout)?;
            self.core.update_now();
            let queued = self.stats().deliveries.load(Ordering::Relaxed);
            self.reap_completions();
            if self.stats().deliveries.load(Ordering::Relaxed) - queued >= COALESCE_MIN {
                self.gather_more();
            }
            if retry {
                for r in 0..self.rings.len() {
                    let wr = &mut self.rings[r];
                    if wr.accept_retry_at.is_some_and(|t| self.core.now_ms() >= t) {
                        wr.accept_retry_at = None;
                        if !wr.accept_armed
                            && wr.listener.is_some()
                            && !self.core.is_shutting_down()
                        {
                            self.arm_accept(r);
                        }
                    }
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

    fn has_completions(&mut self) -> bool {
        self.rings.iter_mut().any(|r| r.ring.has_completions())
    }

    /// Handles every completion posted so far on every ring, then re-arms the receives that
    /// ended.
    fn reap_completions(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        for r in 0..self.rings.len() {
            self.rings[r].ring.reap(&mut cqes);
            for (u, res, flags) in cqes.drain(..) {
                self.complete(r, u, res, flags);
            }
            // Once per batch, however many receives ran out in it: each of them saw the same
            // shortage, and doubling for each overshot (one 10,000-handshake burst grew a
            // ring from 64 KiB to 1.4 MiB).
            if std::mem::take(&mut self.rings[r].ran_out) {
                let added = self.rings[r].ring.bufs().grow();
                if added > 0 {
                    add_own(&self.stats().uring_bufs_live, u64::from(added));
                }
            }
        }
        self.cqes = cqes;
        // Commands from other threads (publishes above all) last: the send completions of
        // this batch have released what the kernel took, so the write budget is checked
        // against what is really still queued, as the mio backend's synchronous writes do.
        // A wake-up handled first saw every queue one completion stale.
        if let Some(res) = self.woken.take() {
            if self.core.drain_inbox() {
                self.stop_accepting();
            }
            if res >= 0 || res == -libc::EAGAIN {
                self.arm_wake();
            }
        }
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
            // Entering the primary also runs the task work that posts the secondaries'.
            if self.rings[0].ring.get_events().is_err() || !self.has_completions() {
                return;
            }
            self.reap_completions();
            if self.stats().deliveries.load(Ordering::Relaxed) == queued {
                return;
            }
        }
    }

    /// A completion reaped from ring `r`.
    fn complete(&mut self, r: usize, u: u64, res: i32, flags: u32) {
        let Some(op) = Op::decode(u) else {
            return tracing::error!("unknown io_uring completion {u:#x}");
        };
        match op {
            Op::Accept => self.on_accept(r, res, flags),
            Op::Recv(key) => self.on_recv(key, res, flags),
            Op::Send(key) => self.on_send(key, res),
            Op::SendZc(key) => self.on_send_zc(key, res, flags),
            Op::Wake => self.woken = Some(res),
            Op::Close(key) | Op::Cancel(key) | Op::Shutdown(key) => self.op_done(key),
            Op::Rejected | Op::CancelAccept => {}
        }
    }

    fn stop_accepting(&mut self) {
        for r in 0..self.rings.len() {
            if self.rings[r].accept_armed {
                let e = opcode::AsyncCancel::new(Op::Accept.encode()).build();
                // SAFETY: a cancel by user_data points to no memory.
                unsafe { self.submit_to(r, Op::CancelAccept, e) };
            }
            // The listening socket closes once the cancelled accept lets go of it.
            self.rings[r].listener = None;
            self.rings[r].accept_armed = false;
        }
    }

    /// An accept completed on ring `r`: the direct descriptor is a slot of that ring's table.
    fn on_accept(&mut self, r: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.rings[r].accept_armed = false;
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
                self.rings[r].accept_retry_at = Some(self.core.now_ms() + 100);
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
            let resp = crate::driver::server_full_response();
            let send = opcode::Send::new(slot, resp.as_ptr(), resp.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data(Op::Rejected.encode());
            // SAFETY: the send reads the static 503 response, alive for the whole process.
            unsafe { self.rings[r].ring.push_linked(&send) };
            let e = opcode::Close::new(slot).build();
            // SAFETY: a close points to no memory; it runs after the linked send completed,
            // so nothing names the slot when it is freed.
            unsafe { self.submit_to(r, Op::Rejected, e) };
        } else {
            self.stats().uring_slots.fetch_add(1, Ordering::Relaxed);
            let key = self.core.insert(UringIo::new(r, res as u32));
            self.arm_recv(key);
        }
        let wr = &self.rings[r];
        if !wr.accept_armed && wr.listener.is_some() && !self.core.is_shutting_down() {
            self.arm_accept(r);
        }
    }

    fn on_recv(&mut self, key: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let Some(io) = self.core.io_mut(key) else {
            return;
        };
        if !more {
            io.recv_armed = false;
        }
        // The buffer is one of the provided buffers of the connection's ring.
        let r = io.ring();
        if res > 0 {
            match cqueue::buffer_select(flags) {
                Some(bid) => {
                    // With incremental consumption the kernel keeps filling this buffer
                    // (for any connection) until a completion without BUF_MORE ends it.
                    let buf_more = cqueue::buffer_more(flags);
                    add_own(&self.stats().uring_bufs_held, 1);
                    match self.rings[r].ring.bufs().take(bid, res as usize, buf_more) {
                        Some(buf) => self.core.on_data(key, buf),
                        None => {
                            tracing::error!(bid, res, "receive completion outside its buffer");
                            self.core.on_error(key);
                        }
                    }
                    if !buf_more {
                        self.rings[r].ring.bufs().recycle(bid);
                    }
                    sub_own(&self.stats().uring_bufs_held, 1);
                    self.send_early(key, r);
                    if !more {
                        self.rearm.push(key);
                    } else if !self.core.wants_read(key) {
                        self.pause_recv(key);
                    }
                }
                None => {
                    // Bytes were taken from the socket but cannot be read: the stream is
                    // broken. The completion still ends an operation (below) when final.
                    tracing::error!("receive completion without a buffer");
                    self.core.on_error(key);
                }
            }
        } else if res == -libc::ENOBUFS {
            self.stats().recv_enobufs.fetch_add(1, Ordering::Relaxed);
            self.rings[r].ran_out = true;
            self.rearm.push(key);
        } else if res == 0 {
            // The peer is done sending; what it is owed still goes out.
            self.core.on_eof(key);
        } else if res == -libc::ECANCELED {
            // Cancelled for backpressure: re-armed if the queue drained meanwhile.
            if let Some(io) = self.core.io_mut(key) {
                if io.recv_paused && !more {
                    io.recv_paused = false;
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
        let Some(io) = self.core.io_mut(key) else {
            return;
        };
        if !io.recv_armed || io.recv_paused || io.close != CloseState::Open {
            return;
        }
        io.recv_paused = true;
        let e = opcode::AsyncCancel::new(Op::Recv(key).encode()).build();
        // SAFETY: a cancel by user_data points to no memory.
        unsafe { self.submit(Op::Cancel(key), e) };
    }

    /// Submits `e` as `op` of a connection, on the connection's ring. An operation of a
    /// connection is counted in its `ops` and in the `uring_ops` gauge until its final
    /// completion reaches [`Worker::op_done`]: the one place both go up.
    ///
    /// # Safety
    ///
    /// As for [`Ring::push`].
    pub(super) unsafe fn submit(&mut self, op: Op, e: squeue::Entry) {
        let key = op.key();
        debug_assert!(key.is_some(), "{op:?} names no connection: submit_to");
        let io = key.and_then(|k| self.core.io_mut(k));
        debug_assert!(io.is_some(), "{op:?} for a freed connection");
        let Some(io) = io else { return };
        // A handful at most (see `UringIo::ops`); never near 255.
        io.ops = io.ops.saturating_add(1);
        debug_assert!(io.ops < u8::MAX);
        let r = io.ring();
        add_own(&self.stats().uring_ops, 1);
        let e = e.user_data(op.encode());
        // SAFETY: the caller's duty.
        unsafe { self.rings[r].ring.push(&e) };
    }

    /// Submits `e` as `op`, which names no connection, on ring `r`.
    ///
    /// # Safety
    ///
    /// As for [`Ring::push`].
    unsafe fn submit_to(&mut self, r: usize, op: Op, e: squeue::Entry) {
        debug_assert!(op.key().is_none(), "{op:?} names a connection: submit");
        let e = e.user_data(op.encode());
        // SAFETY: the caller's duty.
        unsafe { self.rings[r].ring.push(&e) };
    }

    /// One operation of `key` completed: the one place `ops` and the `uring_ops` gauge go
    /// down. The last one of a dead connection lets its slot be closed; the completion of
    /// that close frees the connection.
    pub(super) fn op_done(&mut self, key: usize) {
        let Some(io) = self.core.io_mut(key) else {
            return;
        };
        io.ops = io.ops.saturating_sub(1);
        let (idle, close) = (io.ops == 0, io.close);
        let st = self.core.stats();
        sub_own(&st.uring_ops, 1);
        if !idle {
            return;
        }
        match close {
            CloseState::Open => {}
            CloseState::Cancelling => self.submit_close(key),
            CloseState::Closing => {
                st.uring_slots.fetch_sub(1, Ordering::Relaxed);
                self.core.remove(key);
            }
        }
    }

    /// Closes the slot of `key`, which no operation names any more.
    fn submit_close(&mut self, key: usize) {
        let Some(io) = self.core.io_mut(key) else {
            return;
        };
        debug_assert_eq!(io.ops, 0, "an operation still names the slot");
        io.close = CloseState::Closing;
        let e = opcode::Close::new(types::Fixed(io.slot())).build();
        // SAFETY: a close points to no memory.
        unsafe { self.submit(Op::Close(key), e) };
    }

    /// Dead connections: cancel every operation that names the slot (a receive, a send
    /// waiting on a peer that does not read, a shutdown); the slot is closed once the last
    /// of them completed (`op_done`), never before.
    fn reap(&mut self) {
        while let Some(key) = self.core.pop_dead() {
            let Some(io) = self.core.io_mut(key) else {
                continue;
            };
            if io.close != CloseState::Open {
                continue;
            }
            io.close = CloseState::Cancelling;
            if io.ops == 0 {
                self.submit_close(key);
                continue;
            }
            let slot = types::Fixed(io.slot());
            // Matches by file: an operation whose file is not resolved yet (queued in io-wq)
            // is not found, but it completes on its own, and the close waits for it.
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(slot).all()).build();
            // SAFETY: a cancel by descriptor points to no memory.
            unsafe { self.submit(Op::Cancel(key), e) };
        }
    }
}
