//! The io_uring backend: every io_uring-specific line lives in this folder.
//!
//! One ring per worker, created for a single-threaded owner (`SINGLE_ISSUER`,
//! `DEFER_TASKRUN`); past what one ring's fixed-file table holds (the soft open-files
//! limit), several per worker: each with its own listener, the others without
//! `DEFER_TASKRUN` and signalling the worker's eventfd, which the first one reads (see
//! `Ring::new_secondary`); a connection's [`UringIo`] names its ring. Connections never
//! enter the process file table:
//!
//! * **Accept**: one multishot accept straight into direct descriptors (a sparse registered
//!   file table whose slots the kernel allocates).
//! * **Receive**: one multishot receive per connection with a provided-buffer ring per worker
//!   ([`bufring`]); `ENOBUFS` re-arms the receive and is counted.
//! * **Send**: the frames corked for a connection during a turn go out as one SQE: a plain
//!   `send` of the buffer when they are one chunk (a lone broadcast frame: nothing per
//!   recipient but the SQE), else a `sendmsg` whose iovecs point into the queued chunks
//!   (shared broadcast frames included, no copy);
//!   the chunks stay pinned until the completion; a short send re-queues the rest. Every send
//!   of a turn (a whole fan-out) is submitted with one `io_uring_enter`.
//! * **Wake-ups** from other threads: an eventfd read armed on the ring.
//! * **Close**: cancel every operation on the direct descriptor, `IORING_OP_CLOSE` it once
//!   the last one has completed (see [`CloseState`]), free the slab slot when the close has.
//!
//! The connection logic is `runtime::core`, shared with the mio backend. Files:
//!
//! * `setup.rs`: the probe, the ring plan (rings per worker, table size) and starting the
//!   workers;
//! * `ring.rs`: the ring with its provided-buffer ring (`bufring.rs`), torn down in order;
//! * `ops.rs`: what each SQE was for, in its `user_data`;
//! * `worker.rs`: the loop, accepts, receives, wake-ups and the close of a connection;
//! * `send.rs`: building sends from a connection's write queue, and their completions.
//!
//! Unsafe code is allowed file by file, where the kernel is handed memory.

mod bufring;
mod ops;
mod ring;
mod send;
mod setup;
mod worker;

pub(crate) use setup::{probe, start};

/// The most rings a worker may have (a connection names its ring in one byte).
pub(crate) const MAX_RINGS: usize = 256;

/// A connection's handle in this backend: its direct descriptor and what is in flight.
#[derive(Debug)]
pub(crate) struct UringIo {
    /// The connection's direct descriptor (`slot`, the low 24 bits: a table holds at most
    /// 2^20) and the worker's ring whose fixed-file table holds it (`ring`, the high 8 bits;
    /// 0: the primary); every operation of the connection goes to that ring.
    place: u32,
    /// Operations submitted and not completed (a receive, a send, cancels, a shutdown, a
    /// close: a handful at most). Every one names the slot: the `CLOSE` is submitted only
    /// once this is 0, and the connection is freed when the close completes.
    ops: u8,
    recv_armed: bool,
    /// The receive was cancelled for read backpressure (its last completion not yet seen).
    recv_paused: bool,
    /// The send slot (msghdr + iovecs) of the send in flight, plus one (so the `Option`
    /// takes 4 bytes and the slab entry 8 fewer).
    send: Option<std::num::NonZeroU32>,
    close: CloseState,
}

/// Sends complete later here (the kernel reads the queue until the completion): every
/// answer is queued.
impl crate::runtime::queue::WriteNow for UringIo {
    fn write_now(&self, _: &[std::io::IoSlice<'_>]) -> Option<usize> {
        None
    }
}

impl UringIo {
    fn new(ring: usize, slot: u32) -> UringIo {
        debug_assert!(ring < MAX_RINGS && slot < 1 << 24);
        UringIo {
            place: (ring as u32) << 24 | slot,
            ops: 0,
            recv_armed: false,
            recv_paused: false,
            send: None,
            close: CloseState::Open,
        }
    }

    /// The direct descriptor.
    fn slot(&self) -> u32 {
        self.place & 0xFF_FFFF
    }

    /// The index of the ring whose table holds the slot.
    fn ring(&self) -> usize {
        (self.place >> 24) as usize
    }
}

/// How far a connection's close has gone.
///
/// The kernel resolves a direct descriptor only when an operation runs, and an operation
/// punted to io-wq (`SHUTDOWN` always is) runs later than its submission. Closing the slot
/// while such an operation is pending would let the next accepted connection, which the
/// kernel gives the same slot, receive it. So the `CLOSE` waits until every operation that
/// names the slot has completed: first they are cancelled, then the slot is closed, then the
/// connection (and the write queue its sends pinned) is freed.
///
/// The operations that name a connection's slot, each counted in `UringIo::ops`: the
/// multishot receive, `SEND`/`SENDMSG` and their zero-copy forms (any may be punted to
/// io-wq), `SHUTDOWN` (always io-wq), and the `ASYNC_CANCEL` by descriptor (resolved when it
/// is issued, counted all the same). The 503 answer to a connection refused as the server is
/// full names its slot in a `SEND` hard-linked to the `CLOSE`: the kernel runs the close only
/// after the send completed, wherever the send ran. Accept and the wake-up read name no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseState {
    /// In use: operations may be submitted.
    Open,
    /// Dead: nothing new is submitted; every operation of the slot is cancelled and the
    /// close waits for their completions.
    Cancelling,
    /// The `CLOSE` is submitted (nothing else names the slot); its completion frees the
    /// connection.
    Closing,
}

#[cfg(test)]
mod tests {
    /// An io_uring connection's slab entry: the core's 136 bytes with a 4-byte socket, plus
    /// this backend's state (slot, ring, operations in flight, send slot, close state).
    #[test]
    fn a_uring_connection_slab_entry_stays_small() {
        use std::mem::size_of;
        assert!(size_of::<super::UringIo>() <= 12);
        assert!(size_of::<crate::runtime::core::Conn<(), super::UringIo>>() <= 144);
    }
}
