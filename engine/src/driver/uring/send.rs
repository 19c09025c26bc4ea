//! Sends: the chunks queued for a connection go out as one SQE per turn (a plain `send` of
//! one chunk, or a `sendmsg` whose iovecs point into the pinned chunks), and their
//! completions release what was written.
#![allow(unsafe_code)]

use super::ops::Op;
use super::worker::Worker;
use super::CloseState;
use crate::handler::Handler;
use crate::runtime::core::AfterFlush;
use io_uring::{cqueue, opcode, types};
use std::io::IoSlice;
use std::num::NonZeroU32;

/// Iovecs per sendmsg.
const MAX_IOV: usize = 64;
/// Answers at least this large are sent as soon as their receive is handled
/// ([`Worker::send_early`]); smaller ones wait for the batch's end, where they coalesce.
const EARLY_SEND_MIN: usize = 4096;
/// Early sends are submitted to the kernel once this many bytes are queued, so that the
/// kernel copies them while they are still in the cache.
const EARLY_SUBMIT: usize = 128 * 1024;

/// The memory a `sendmsg` reads until its completion.
pub(super) struct SendSlot {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
}

impl<H: Handler> Worker<H> {
    pub(super) fn flush(&mut self) {
        let mut dirty = self.core.take_dirty();
        for key in dirty.drain(..) {
            // Sent early already (see `send_early`), or listed twice.
            if self.core.is_dirty(key) {
                self.flush_one(key);
            }
        }
        self.core.give_dirty(dirty);
    }

    /// After a receive of `key` (on ring `r`) was handled: sends its answers now if they are
    /// large (a 16 KiB echo sent after the batch's other ~60 receives had left the cache:
    /// the kernel's copy from user memory was 10.8% of the CPU; docs/benchmarks.md), and
    /// submits once [`EARLY_SUBMIT`] bytes wait. The turn's flush skips what went here
    /// (`after_flush` cleared the mark).
    pub(super) fn send_early(&mut self, key: usize, r: usize) {
        if !self.core.is_dirty(key) {
            return;
        }
        let queued = match self.core.wire(key) {
            Some(w) if !w.is_dead() && !w.out.is_sending() => w.out.len(),
            _ => return,
        };
        if queued < EARLY_SEND_MIN {
            return;
        }
        self.core.prepare_flush(key);
        self.flush_one(key);
        self.early_bytes += queued;
        if self.early_bytes >= EARLY_SUBMIT {
            self.early_bytes = 0;
            if let Err(e) = self.rings[r].ring.submit(false, None) {
                // The sends stay queued; the loop's own submission retries them.
                tracing::warn!("io_uring submit failed: {e}");
            }
        }
    }

    fn flush_one(&mut self, key: usize) {
        let zc_min = self.core.config().uring.send_zc_min;
        let Some(mut conn) = self.core.wire(key) else {
            return;
        };
        if conn.is_dead() || conn.io.close != CloseState::Open {
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
        let bytes = conn.out.len();
        let zc = zc_min.is_some_and(|min| bytes >= min);
        let fd = types::Fixed(conn.io.slot());
        let e = if let Some(only) = conn.out.single_slice() {
            // One chunk (a lone broadcast frame, or a turn's frames coalesced): a plain send
            // of that buffer, no msghdr to keep alive, so a fan-out to N sockets holds no
            // per-recipient memory while its sends are in flight; and no iovec array to
            // build (1 KiB of stores).
            let (ptr, len) = (only.as_ptr(), only.len() as u32);
            conn.out.begin_send(1);
            if zc {
                opcode::SendZc::new(fd, ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            } else {
                opcode::Send::new(fd, ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
        } else {
            let n = conn.out.begin_send(MAX_IOV);
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let filled = conn.out.io_slices(&mut iov[..n]);
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
            // One send slot at most per connection: far fewer than u32::MAX.
            conn.io.send = NonZeroU32::new(slot_id as u32 + 1);
            if zc {
                opcode::SendMsgZc::new(fd, hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            } else {
                opcode::SendMsg::new(fd, hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            }
        };
        let op = if zc { Op::SendZc(key) } else { Op::Send(key) };
        let _ = self.core.after_flush(key);
        // SAFETY: a plain send reads the first queued chunk, and a sendmsg its `SendSlot`
        // (boxed in `sends`, so it does not move) and the chunks its iovecs point into. The
        // chunks are pinned by `begin_send` (never appended to, moved or freed, even by
        // `WriteQueue::clear`) and the slot stays in `sends` until `on_send` runs for the
        // final completion (a zero-copy send's notification); the connection, and so its
        // queue, is freed only after that (`op_done`).
        unsafe { self.submit(op, e) };
    }

    /// A zero-copy send completes twice: its result (flagged MORE), then a notification once
    /// the kernel let go of the buffers; the chunks stay pinned until then.
    pub(super) fn on_send_zc(&mut self, key: usize, res: i32, flags: u32) {
        if cqueue::notif(flags) {
            // Taken out first: nothing stays in the map, whatever became of the connection.
            let written = self.zc_written.remove(&key).unwrap_or(0);
            if self.core.io_mut(key).is_none() {
                return;
            }
            return self.on_send(key, written);
        }
        if self.core.io_mut(key).is_none() {
            return;
        }
        if cqueue::more(flags) {
            self.zc_written.insert(key, res);
        } else {
            self.on_send(key, res);
        }
    }

    pub(super) fn on_send(&mut self, key: usize, res: i32) {
        let Some(mut conn) = self.core.wire(key) else {
            return;
        };
        if let Some(s) = conn.io.send.take() {
            let slot = self.sends.remove(s.get() as usize - 1);
            self.send_pool.push(slot);
        }
        let written = res.max(0) as usize;
        conn.out.end_send(written);
        if res > 0 {
            self.core.count_written(res as usize);
        }
        let failed = res < 0;
        self.op_done(key);
        if failed {
            self.core.on_error(key);
        } else {
            // The queue drained below the budget: read again (read backpressure).
            if self.core.take_resume(key) {
                self.arm_recv(key);
            }
            // More may have been queued meanwhile, or a short send left a rest.
            self.core.want_flush(key);
            if self.core.wire(key).is_some_and(|c| c.out.is_empty()) {
                self.after_flush(key);
            }
        }
    }

    fn after_flush(&mut self, key: usize) {
        // Once the connection is dead nothing new may name its slot: the close waits for the
        // operations in flight only (a late send completion lands here).
        if self
            .core
            .wire(key)
            .map_or(true, |c| c.io.close != CloseState::Open || c.is_dead())
        {
            return;
        }
        if self.core.after_flush(key) == AfterFlush::ShutdownWrite {
            if let Some(io) = self.core.io(key) {
                let e = opcode::Shutdown::new(types::Fixed(io.slot()), libc::SHUT_WR).build();
                // SAFETY: a shutdown points to no memory.
                unsafe { self.submit(Op::Shutdown(key), e) };
            }
        }
    }
}
