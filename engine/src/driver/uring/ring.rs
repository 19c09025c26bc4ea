//! A worker's ring and the provided-buffer ring registered with it, owned together.
//!
//! The kernel writes into the provided buffers whenever a receive runs, so they may be freed
//! only once no operation can run any more and the buffer ring is unregistered. [`Ring`]
//! keeps that order itself: its `Drop` cancels every operation, waits for their final
//! completions, unregisters the buffer ring and only then frees it and closes the ring. It
//! also counts operations in flight, which is what makes "wait for every completion" a
//! checkable condition. Nothing here knows about connections.
#![allow(unsafe_code)]

use super::bufring::BufRing;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

/// Submission queue entries per ring (the completion queue has four times as many).
const RING_ENTRIES: u32 = 4096;
/// `IORING_ENTER_GETEVENTS`.
const IORING_ENTER_GETEVENTS: u32 = 1;
/// How long `Drop` waits for cancelled operations before giving up on freeing the buffers.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

/// An io_uring with its fixed-file table and its provided-buffer ring.
pub(super) struct Ring {
    ring: IoUring,
    /// INVARIANT: registered with `ring` under `bufs.bgid` until `Drop` unregisters it (or
    /// leaks it, if operations could not be stopped); never dropped while registered.
    bufs: ManuallyDrop<BufRing>,
    /// Operations submitted whose final completion (one without `IORING_CQE_F_MORE`) has
    /// not been reaped: every SQE gets exactly one.
    inflight: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("bufs", &*self.bufs)
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}

fn build_ring(primary: bool) -> io::Result<IoUring> {
    if !primary {
        // A secondary ring is never waited on directly (see `Ring::new_secondary`): without
        // DEFER_TASKRUN its completions are posted by task work that runs whenever the
        // thread enters the kernel (waiting on the primary included), and each posting
        // signals the registered eventfd.
        return IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_cqsize(RING_ENTRIES * 4)
            .setup_submit_all()
            .build(RING_ENTRIES);
    }
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

fn context(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Ring {
    /// A ring for the calling thread (`SINGLE_ISSUER`: only it may use the ring), a sparse
    /// fixed-file table of `table` slots, and `count` provided buffers of `size` bytes.
    pub(super) fn new(table: u32, bufs: Option<(u16, usize)>) -> io::Result<Ring> {
        Ring::build(true, table, bufs)
    }

    /// A worker's further ring (its table holds more connections than one ring can): the
    /// worker waits on its primary ring only, so this one signals `wake_fd` (an eventfd the
    /// primary ring reads) whenever it posts completions (`IORING_REGISTER_EVENTFD`).
    /// Built without `DEFER_TASKRUN`, which would post them only when this ring itself is
    /// entered: its completions reach its queue (and the eventfd) by task work run on the
    /// worker's thread, which the kernel wakes when it sleeps in the primary ring.
    pub(super) fn new_secondary(
        table: u32,
        bufs: Option<(u16, usize)>,
        wake_fd: std::os::fd::RawFd,
    ) -> io::Result<Ring> {
        let ring = Ring::build(false, table, bufs)?;
        ring.ring
            .submitter()
            .register_eventfd(wake_fd)
            .map_err(context("eventfd registration"))?;
        Ok(ring)
    }

    fn build(primary: bool, table: u32, want: Option<(u16, usize)>) -> io::Result<Ring> {
        let ring = build_ring(primary).map_err(context("io_uring_setup failed"))?;
        ring.submitter()
            .register_files_sparse(table)
            .map_err(context("sparse file table"))?;
        // If this fails nothing is registered: the ring alone is dropped.
        let bufs = BufRing::new(&ring, want, 0).map_err(context("provided-buffer ring"))?;
        let (count, size) = bufs.shape();
        if primary {
            tracing::debug!(
                count,
                size,
                incremental = bufs.incremental(),
                "io_uring provided buffers"
            );
        }
        Ok(Ring {
            ring,
            bufs: ManuallyDrop::new(bufs),
            inflight: 0,
        })
    }

    /// The ring itself, for what needs no accounting (probing, parameters).
    pub(super) fn uring(&self) -> &IoUring {
        &self.ring
    }

    /// The provided-buffer ring.
    pub(super) fn bufs(&mut self) -> &mut BufRing {
        &mut self.bufs
    }

    /// Queues an SQE, submitting first if the submission queue is full.
    ///
    /// # Safety
    ///
    /// The kernel reads (or writes) the memory `e` points to whenever the operation runs,
    /// which may be long after this call: every buffer, iovec array and `msghdr` named by
    /// `e` must stay valid, must not move and must not be freed or reused until the
    /// operation's final completion has been reaped (a zero-copy send: its notification),
    /// or until this ring is dropped, whichever comes first. Buffers the kernel writes must
    /// not be read or written by us meanwhile.
    ///
    /// Not a memory-safety duty but the same kind of contract for direct descriptors: the
    /// slot `e` names must not be closed before that completion either.
    pub(super) unsafe fn push(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: the caller keeps what `e` points to alive until its completion.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                self.inflight += 1;
                return;
            }
            if let Err(err) = self.ring.submit() {
                tracing::warn!("io_uring submit failed: {err}");
            }
        }
    }

    /// Queues the first entry of a linked pair: room for both is made first, so the pair
    /// is never split by a submission in between.
    ///
    /// # Safety
    ///
    /// As for [`Ring::push`].
    pub(super) unsafe fn push_linked(&mut self, e: &squeue::Entry) {
        let room = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < 2 {
            if let Err(err) = self.ring.submit() {
                tracing::warn!("io_uring submit failed: {err}");
            }
        }
        // SAFETY: the caller's duty.
        unsafe { self.push(e) };
    }

    /// Whether the ring must be entered: SQEs are queued and not yet submitted, or
    /// completions overflowed the completion queue (the kernel moves them in only when the
    /// ring is entered, which `submit` does when it sees the flag).
    pub(super) fn needs_enter(&mut self) -> bool {
        let sq = self.ring.submission();
        !sq.is_empty() || sq.cq_overflow()
    }

    /// Whether completions are waiting to be reaped.
    pub(super) fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Submits what is queued; with `wait`, blocks until a completion arrives or `timeout`
    /// (`None`: no limit) passes. A timeout or an interruption is not an error.
    pub(super) fn submit(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        let res = match (wait, timeout) {
            (false, _) => self.ring.submit(),
            (true, None) => self.ring.submit_and_wait(1),
            (true, Some(d)) => {
                let ts = types::Timespec::new()
                    .sec(d.as_secs())
                    .nsec(d.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Enters the ring without submitting, to run pending task work and post the
    /// completions that are ready (`DEFER_TASKRUN` posts them only when the ring is entered).
    pub(super) fn get_events(&mut self) -> io::Result<()> {
        // SAFETY: no submission, no argument.
        unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
        }
        .map(drop)
    }

    /// Moves every posted completion into `out` as (user_data, result, flags).
    pub(super) fn reap(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        let start = out.len();
        out.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let done = out[start..]
            .iter()
            .filter(|(_, _, flags)| !cqueue::more(*flags))
            .count();
        debug_assert!(
            done <= self.inflight,
            "a completion for an SQE never pushed"
        );
        self.inflight = self.inflight.saturating_sub(done);
    }

    /// Cancels every operation in flight and waits (up to `QUIESCE_TIMEOUT`) for their
    /// final completions, which are discarded. Returns whether none is left.
    pub(super) fn quiesce(&mut self) -> bool {
        if self.inflight == 0 {
            return true;
        }
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(u64::MAX);
        // SAFETY: a cancel points to no memory.
        unsafe { self.push(&e) };
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        let mut cqes = Vec::new();
        while self.inflight > 0 && Instant::now() < deadline {
            if let Err(e) = self.submit(true, Some(Duration::from_millis(100))) {
                tracing::warn!("io_uring wait failed while stopping: {e}");
                break;
            }
            cqes.clear();
            self.reap(&mut cqes);
        }
        self.inflight == 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.quiesce() {
            let bgid = self.bufs.bgid;
            match self.ring.submitter().unregister_buf_ring(bgid) {
                // SAFETY: no operation is left and the buffer ring is unregistered: the
                // kernel no longer refers to it. Dropped once (`bufs` is not used again).
                Ok(()) => unsafe { ManuallyDrop::drop(&mut self.bufs) },
                Err(e) => tracing::error!(
                    "unregistering the provided-buffer ring failed ({e}); its memory is leaked"
                ),
            }
        } else {
            // The kernel may still write into the buffers: leaking them is the safe choice.
            tracing::error!(
                "{} io_uring operations did not finish after cancellation; the provided \
                 buffers are leaked",
                self.inflight
            );
        }
        // The ring closes after this (field drop), with nothing left registered to free.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A receive armed on the buffer ring and never satisfied: `quiesce` (what `Drop` runs
    /// before unregistering and freeing the buffers) cancels it and waits for its final
    /// completion, and the ring then drops without a leak warning.
    #[test]
    fn quiesce_cancels_and_waits_for_operations_in_flight() {
        if let Err(why) = crate::driver::uring_probe() {
            eprintln!("SKIPPED (io_uring unavailable: {why})");
            return;
        }
        let mut ring = Ring::new(16, Some((16, 64))).expect("ring");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let bgid = ring.bufs().bgid;
        let e = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), bgid)
            .build()
            .user_data(7);
        // SAFETY: the receive takes its buffers from the ring's own buffer ring; `a` stays
        // open until after `quiesce`.
        unsafe { ring.push(&e) };
        ring.submit(false, None).unwrap();
        assert_eq!(ring.inflight, 1);
        let mut cqes = Vec::new();
        ring.reap(&mut cqes);
        assert!(cqes.is_empty(), "nothing was sent: {cqes:?}");
        assert!(ring.quiesce(), "the receive was cancelled and completed");
        assert_eq!(ring.inflight, 0);
        drop(ring);
    }
}
