//! A provided-buffer ring: the kernel picks a buffer for each multishot receive completion,
//! so no connection owns a read buffer. A buffer goes back to the ring as soon as the worker
//! core has consumed its bytes (the core copies only an incomplete frame's tail).
#![allow(unsafe_code)]

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// Buffers and the ring of their descriptors shared with the kernel.
pub(crate) struct BufRing {
    /// INVARIANT: `entries` points to `count` zeroed-then-initialised `BufRingEntry`s in a
    /// page-aligned allocation of `layout`, registered with the kernel under `bgid`.
    entries: *mut BufRingEntry,
    layout: Layout,
    bufs: Vec<u8>,
    count: u16,
    size: usize,
    /// Our copy of the tail; the kernel reads the shared one.
    tail: u16,
    pub(crate) bgid: u16,
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
    /// Allocates `count` (a power of two, at most 32,768) buffers of `size` bytes and
    /// registers them.
    ///
    /// # Errors
    /// `InvalidInput` for another count (`Config::validate` refuses it first), or what
    /// the allocation or the registration fails with.
    pub(crate) fn new(ring: &IoUring, count: u16, size: usize, bgid: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > crate::Config::MAX_URING_BUFFERS {
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
        let mut br = BufRing {
            entries,
            layout,
            bufs: vec![0u8; count as usize * size],
            count,
            size,
            tail: 0,
            bgid,
        };
        // SAFETY: `entries` is page aligned and holds `count` entries. The kernel uses them
        // until the buffer ring is unregistered, which `Ring`'s `Drop` does before dropping
        // this struct (on failure here nothing is registered).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, bgid, 0)?
        };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    /// The bytes of buffer `bid`.
    pub(crate) fn buf(&mut self, bid: u16) -> &mut [u8] {
        let start = bid as usize * self.size;
        &mut self.bufs[start..start + self.size]
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
