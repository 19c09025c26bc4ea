//! A provided-buffer ring: the kernel picks a buffer for each multishot receive completion,
//! so no connection owns a read buffer. A buffer goes back to the ring as soon as the worker
//! core has consumed its bytes (the core copies only an incomplete frame's tail).
//!
//! Where the kernel allows it (Linux 6.12, `IOU_PBUF_RING_INC`), buffers are consumed
//! incrementally: a receive takes only the bytes it needs from the head buffer, and the next
//! receive (of any connection) continues in the same buffer. A completion flagged
//! `IORING_CQE_F_BUF_MORE` leaves its buffer with the kernel; the one without the flag ends
//! it, and only then is it recycled. So small reads (handshakes, pongs, chat messages) pack
//! into a few pages instead of touching a whole buffer each, and large buffers (one 16 KiB
//! message in one completion) cost memory only for the bytes that really arrive.
//!
//! Not all buffers are handed to the kernel at first: [`start_bytes`] worth go into the
//! ring (one 64 KiB buffer where consumed incrementally, 256 KiB otherwise), the rest wait,
//! and after each batch of completions in which a receive ran out (`ENOBUFS`) the ring
//! takes twice as many, up to all of them ([`BufRing::grow`]). The kernel takes buffers in
//! ring order, so with all of them in the ring a worker that accepted 10,000 handshakes had
//! touched most of its 4 MiB; now such a burst touches two 64 KiB buffers, and a ring grows
//! only as far as its bursts need (200 connections echoing 16 KiB each settle at 16 x 64
//! KiB: a batch of receives is copied before the worker handles any; docs/benchmarks.md,
//! "Issue 14, fifth session").
#![allow(unsafe_code)]

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// `IOU_PBUF_RING_INC` of linux/io_uring.h (Linux 6.12): incremental buffer consumption.
/// (The io-uring crate has it only in its private bindings.)
const IOU_PBUF_RING_INC: u16 = 2;

/// The default buffers where the kernel consumes them incrementally: a 16 KiB message lands
/// in one completion (with 4 KiB buffers it came in about five, each a receive of its own and
/// a copy into the connection's tail: 16 KiB echo cost 0.80-0.89x the server CPU with these,
/// docs/benchmarks.md), while small reads still pack into the head buffer.
pub(crate) const AUTO_INCREMENTAL: (u16, usize) = (64, 64 * 1024);
/// The default buffers where each receive takes a whole buffer (before Linux 6.12): many,
/// so that many small reads at once do not run out. The same 4 MiB as [`AUTO_INCREMENTAL`].
pub(crate) const AUTO_WHOLE: (u16, usize) = (1024, 4096);
/// Bytes of buffers in the ring at first (at least one buffer); more each time it runs out.
/// Where buffers are consumed incrementally, one 64 KiB buffer takes the small reads of
/// hundreds of connections (10,000 handshakes touched all 256 KiB of a larger start, 26 B of
/// every idle connection's cost at 10,000); where each receive takes a whole buffer, 256 KiB
/// (64 of 4 KiB), the size of the mio backend's read buffer.
pub(crate) fn start_bytes(incremental: bool) -> usize {
    if incremental {
        64 * 1024
    } else {
        256 * 1024
    }
}

/// Buffers and the ring of their descriptors shared with the kernel.
pub(crate) struct BufRing {
    /// INVARIANT: `entries` points to `count` zeroed-then-initialised `BufRingEntry`s in a
    /// page-aligned allocation of `layout`, registered with the kernel under `bgid`.
    entries: *mut BufRingEntry,
    layout: Layout,
    bufs: Vec<u8>,
    count: u16,
    size: usize,
    /// Buffers `0..live` circulate through the ring; `live..count` wait for [`BufRing::grow`].
    live: u16,
    /// Our copy of the tail; the kernel reads the shared one.
    tail: u16,
    pub(crate) bgid: u16,
    /// Registered with `IOU_PBUF_RING_INC`: `offsets[bid]` is where the next completion's
    /// bytes start in buffer `bid` (empty when buffers are consumed whole).
    offsets: Vec<u32>,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("count", &self.count)
            .field("size", &self.size)
            .finish()
    }
}

impl BufRing {
    /// Registers `want` (`count` buffers, a power of two at most 32,768, of `size` bytes),
    /// consumed incrementally where the kernel allows it; `None`: [`AUTO_INCREMENTAL`]
    /// where the kernel consumes buffers incrementally, else [`AUTO_WHOLE`].
    ///
    /// # Errors
    /// `InvalidInput` for another count (`Config::validate` refuses it first), or what
    /// the allocation or the registration fails with.
    pub(crate) fn new(
        ring: &IoUring,
        want: Option<(u16, usize)>,
        bgid: u16,
    ) -> io::Result<BufRing> {
        let (count, size) = want.unwrap_or(AUTO_INCREMENTAL);
        // Incremental consumption first; a kernel that does not know the flag (before 6.12)
        // refuses it with EINVAL, and the ring is registered without it.
        let mut br = BufRing::alloc(count, size, bgid)?;
        match br.register(ring, IOU_PBUF_RING_INC) {
            Ok(()) => br.offsets = vec![0; count as usize],
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if want.is_none() {
                    // Nothing is registered: dropping `br` frees it.
                    let (count, size) = AUTO_WHOLE;
                    br = BufRing::alloc(count, size, bgid)?;
                }
                br.register(ring, 0)?;
            }
            Err(e) => return Err(e),
        }
        br.live = (start_bytes(br.incremental()) / br.size).clamp(1, br.count as usize) as u16;
        for bid in 0..br.live {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// `count` buffers of `size` bytes and their descriptors, not registered.
    fn alloc(count: u16, size: usize, bgid: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > crate::runtime::config::Config::MAX_URING_BUFFERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{count} provided buffers: not a power of two from 1 to 32768"),
            ));
        }
        let layout =
            Layout::from_size_align(count as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { alloc_zeroed(layout) } as *mut BufRingEntry;
        if entries.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer ring"));
        }
        Ok(BufRing {
            entries,
            layout,
            // Zeroed by calloc: pages are touched only when the kernel first fills them.
            bufs: vec![0u8; count as usize * size],
            count,
            size,
            live: 0,
            tail: 0,
            bgid,
            offsets: Vec::new(),
        })
    }

    fn register(&self, ring: &IoUring, flags: u16) -> io::Result<()> {
        // SAFETY: `entries` is page aligned and holds `count` entries. The kernel uses them
        // until the buffer ring is unregistered, which `Ring`'s `Drop` does before dropping
        // this struct (when registration fails nothing is registered).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.entries as u64,
                self.count,
                self.bgid,
                flags,
            )
        }
    }

    /// How many buffers, of what size.
    pub(crate) fn shape(&self) -> (u16, usize) {
        (self.count, self.size)
    }

    /// How many buffers circulate through the ring (the rest wait for [`BufRing::grow`]).
    pub(crate) fn live(&self) -> u16 {
        self.live
    }

    /// The kernel ran out of buffers (a receive of the batch just handled failed with
    /// `ENOBUFS`; the worker calls this once per such batch): twice as many go round from
    /// now on, up to all of them. Returns how many were added (0: all were live).
    /// The ring's `count` entries hold every buffer, so it never overflows.
    pub(crate) fn grow(&mut self) -> u16 {
        let to = self.live.saturating_mul(2).min(self.count);
        for bid in self.live..to {
            self.push(bid);
        }
        let added = to - self.live;
        self.live = to;
        if added > 0 {
            self.publish();
        }
        added
    }

    /// Whether buffers are consumed incrementally (`IOU_PBUF_RING_INC`).
    pub(crate) fn incremental(&self) -> bool {
        !self.offsets.is_empty()
    }

    /// The `len` bytes a completion received into buffer `bid`. With incremental
    /// consumption they start where the buffer's previous completion ended; `more` (the
    /// completion's `IORING_CQE_F_BUF_MORE`) says the kernel keeps filling the buffer.
    /// `None` for a length past the buffer's end (a completion this ring did not produce).
    pub(crate) fn take(&mut self, bid: u16, len: usize, more: bool) -> Option<&mut [u8]> {
        let base = bid as usize * self.size;
        let start = self.offsets.get(bid as usize).map_or(0, |&o| o as usize);
        if bid >= self.count || start + len > self.size {
            return None;
        }
        if let Some(off) = self.offsets.get_mut(bid as usize) {
            // Past the last completion of a buffer the next one starts it afresh.
            *off = if more { (start + len) as u32 } else { 0 };
        }
        self.bufs.get_mut(base + start..base + start + len)
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.count - 1)) as usize;
        let addr = self.bufs.as_ptr() as u64 + (bid as usize * self.size) as u64;
        // SAFETY: idx < count, inside the allocation (see the INVARIANT).
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(addr);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry, inside the allocation; the kernel
        // reads it, so it is written with release ordering through an atomic view.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Gives buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // Only `Ring` drops a registered BufRing, after it stopped every operation and
        // unregistered it (`ring.rs`); the kernel no longer reads the entries or buffers.
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.entries as *mut u8, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a setting, the buffers follow what the kernel offers: 64 x 64 KiB consumed
    /// incrementally, or 1,024 x 4 KiB consumed whole.
    #[test]
    fn default_buffers_follow_incremental_consumption() {
        let Ok(ring) = IoUring::new(8) else {
            eprintln!("SKIPPED (io_uring unavailable)");
            return;
        };
        let br = BufRing::new(&ring, None, 3).expect("register");
        let want = if br.incremental() {
            AUTO_INCREMENTAL
        } else {
            AUTO_WHOLE
        };
        assert_eq!(br.shape(), want);
        assert_eq!(br.bufs.len(), 4 << 20, "4 MiB either way");
        assert_eq!(
            br.live() as usize * br.shape().1,
            start_bytes(br.incremental()),
            "64 KiB (incremental) or 256 KiB go round at first"
        );
        ring.submitter().unregister_buf_ring(3).expect("unregister");
    }

    /// Each `grow` doubles the buffers in the ring up to all of them; what goes in is the
    /// buffers not yet handed out, each once, after the entries already there.
    #[test]
    fn the_ring_grows_by_doubling_up_to_every_buffer() {
        let Ok(ring) = IoUring::new(8) else {
            eprintln!("SKIPPED (io_uring unavailable)");
            return;
        };
        let mut br = BufRing::new(&ring, Some((16, 64 * 1024)), 5).expect("register");
        if br.incremental() {
            assert_eq!((br.live(), br.tail), (1, 1), "one 64 KiB buffer");
            assert_eq!(br.grow(), 1);
            assert_eq!(br.grow(), 2);
        } else {
            assert_eq!((br.live(), br.tail), (4, 4), "256 KiB of 64 KiB buffers");
        }
        assert_eq!(br.grow(), 4);
        assert_eq!(br.grow(), 8);
        assert_eq!((br.live(), br.tail), (16, 16));
        assert_eq!(br.grow(), 0, "all are live");
        assert_eq!(br.tail, 16, "nothing pushed twice");
        // SAFETY: 16 entries were allocated; the kernel only reads them.
        let bids: Vec<u16> = (0..16)
            .map(|i| unsafe { (*br.entries.add(i)).bid() })
            .collect();
        assert_eq!(bids, (0..16).collect::<Vec<u16>>());
        // Buffers larger than the start: one at first.
        let big = BufRing::new(&ring, Some((4, 512 * 1024)), 6).expect("register");
        assert_eq!(big.live(), 1);
        ring.submitter().unregister_buf_ring(5).expect("unregister");
        ring.submitter().unregister_buf_ring(6).expect("unregister");
    }

    /// With incremental consumption each completion's bytes start where the buffer's
    /// previous completion ended, and the completion without BUF_MORE starts it afresh; a
    /// length past the buffer is refused, not sliced out of a neighbour.
    #[test]
    fn incremental_completions_continue_in_the_same_buffer() {
        let Ok(ring) = IoUring::new(8) else {
            eprintln!("SKIPPED (io_uring unavailable)");
            return;
        };
        let mut br = BufRing::new(&ring, Some((4, 256)), 7).expect("register");
        let base = br.bufs.as_ptr() as usize;
        let at = |s: &mut [u8]| s.as_ptr() as usize - base;
        if br.incremental() {
            assert_eq!(at(br.take(1, 100, true).unwrap()), 256);
            assert_eq!(at(br.take(1, 50, true).unwrap()), 356);
            let last = br.take(1, 106, false).unwrap();
            assert_eq!((at(last), last.len()), (406, 106));
            assert_eq!(at(br.take(1, 10, true).unwrap()), 256, "a fresh start");
            assert!(br.take(1, 300, true).is_none(), "past the buffer's end");
            assert_eq!(
                at(br.take(1, 5, true).unwrap()),
                266,
                "a refused length moves nothing"
            );
        } else {
            eprintln!("this kernel consumes buffers whole (before Linux 6.12)");
            assert_eq!(at(br.take(2, 256, false).unwrap()), 512);
            assert_eq!(at(br.take(2, 10, false).unwrap()), 512);
        }
        assert!(br.take(3, 257, false).is_none());
        assert!(br.take(4, 1, false).is_none(), "no such buffer");
        ring.submitter().unregister_buf_ring(7).expect("unregister");
    }
}
