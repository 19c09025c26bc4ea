//! The per-connection write queue: frames corked during a loop turn, flushed with one
//! vectored write (or one send SQE) at the end of it.
//!
//! Small frames are appended to one owned buffer (taken from a per-worker pool), so a turn
//! that produces many frames for a connection still makes one write. Shared frames (the
//! broadcast path) are queued as a reference, never copied. When a socket takes only part of
//! the queue, the rest stays as it is, with an offset into the first chunk.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

/// Owned buffers are recycled up to this capacity; larger ones are freed.
const POOL_BUF_CAP: usize = 64 * 1024;
/// Buffers kept in a worker's pool.
const POOL_MAX: usize = 256;
/// Payloads at least this large get a buffer of their own instead of being coalesced.
const COALESCE_MAX: usize = 16 * 1024;

/// A piece of output.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// Frames encoded for this connection.
    Owned(Vec<u8>),
    /// A complete frame shared with other connections.
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(a) => a,
        }
    }
}

/// A worker's pool of empty output buffers, so a busy connection does not allocate per turn.
#[derive(Debug, Default)]
pub(crate) struct BufPool {
    free: Vec<Vec<u8>>,
}

impl BufPool {
    pub(crate) fn take(&mut self, at_least: usize) -> Vec<u8> {
        match self.free.pop() {
            Some(mut v) => {
                v.reserve(at_least);
                v
            }
            None => Vec::with_capacity(at_least.max(4096)),
        }
    }

    pub(crate) fn give(&mut self, mut v: Vec<u8>) {
        if v.capacity() <= POOL_BUF_CAP && self.free.len() < POOL_MAX {
            v.clear();
            self.free.push(v);
        }
    }
}

/// Unsent output of one connection. Holds no allocation while empty.
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the first chunk already written.
    /// INVARIANT: `offset < chunks[0].len()` whenever `chunks` is not empty, else 0.
    offset: usize,
    /// Unsent bytes in total.
    len: usize,
}

impl WriteQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the next byte to send starts a frame (nothing is half sent).
    pub(crate) fn at_frame_boundary(&self) -> bool {
        self.offset == 0
    }

    /// Appends `parts` (a header and a payload) as contiguous bytes.
    pub(crate) fn push_parts(&mut self, pool: &mut BufPool, parts: &[&[u8]]) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if n == 0 {
            return;
        }
        self.len += n;
        if n < COALESCE_MAX {
            if let Some(Chunk::Owned(last)) = self.chunks.back_mut() {
                if last.len() + n <= POOL_BUF_CAP {
                    for p in parts {
                        last.extend_from_slice(p);
                    }
                    return;
                }
            }
            let mut v = pool.take(n);
            for p in parts {
                v.extend_from_slice(p);
            }
            self.chunks.push_back(Chunk::Owned(v));
        } else {
            let mut v = Vec::with_capacity(n);
            for p in parts {
                v.extend_from_slice(p);
            }
            self.chunks.push_back(Chunk::Owned(v));
        }
    }

    /// Appends an already encoded frame, taking the buffer as it is (no copy).
    pub(crate) fn push_owned(&mut self, frame: Vec<u8>) {
        if frame.is_empty() {
            return;
        }
        self.len += frame.len();
        self.chunks.push_back(Chunk::Owned(frame));
    }

    /// Appends a shared frame by reference.
    #[allow(dead_code)] // used by the broadcast path
    pub(crate) fn push_shared(&mut self, frame: Arc<[u8]>) {
        if frame.is_empty() {
            return;
        }
        self.len += frame.len();
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Fills `out` with slices of the unsent bytes; returns how many were filled.
    pub(crate) fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            if n == out.len() {
                break;
            }
            let b = c.bytes();
            out[n] = IoSlice::new(if i == 0 { &b[self.offset..] } else { b });
            n += 1;
        }
        n
    }

    /// Marks `n` bytes as written, releasing the chunks they finish.
    pub(crate) fn advance(&mut self, mut n: usize, pool: &mut BufPool) {
        debug_assert!(n <= self.len);
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(first) = self.chunks.front() else {
                break;
            };
            let rest = first.bytes().len() - self.offset;
            if n < rest {
                self.offset += n;
                return;
            }
            n -= rest;
            self.offset = 0;
            if let Some(Chunk::Owned(v)) = self.chunks.pop_front() {
                pool.give(v);
            }
        }
        if self.chunks.is_empty() {
            // Release the deque's own storage too: an idle connection holds nothing.
            self.chunks = VecDeque::new();
        }
    }

    /// Drops everything unsent.
    pub(crate) fn clear(&mut self, pool: &mut BufPool) {
        for c in self.chunks.drain(..) {
            if let Chunk::Owned(v) = c {
                pool.give(v);
            }
        }
        self.chunks = VecDeque::new();
        self.offset = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &WriteQueue) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 64];
        let n = q.io_slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn coalesces_small_frames_and_keeps_shared_by_reference() {
        let mut pool = BufPool::default();
        let mut q = WriteQueue::default();
        q.push_parts(&mut pool, &[b"ab", b"cd"]);
        q.push_parts(&mut pool, &[b"ef"]);
        let shared: Arc<[u8]> = Arc::from(&b"SHARED"[..]);
        q.push_shared(shared.clone());
        q.push_parts(&mut pool, &[b"gh"]);
        assert_eq!(q.chunks.len(), 3);
        assert_eq!(Arc::strong_count(&shared), 2);
        assert_eq!(drain(&q), b"abcdefSHAREDgh");
        q.advance(3, &mut pool);
        assert!(!q.at_frame_boundary());
        assert_eq!(drain(&q), b"defSHAREDgh");
        q.advance(6, &mut pool);
        assert_eq!(drain(&q), b"REDgh");
        q.advance(5, &mut pool);
        assert!(q.is_empty());
        assert_eq!(Arc::strong_count(&shared), 1);
        assert_eq!(q.chunks.capacity(), 0);
    }
}
