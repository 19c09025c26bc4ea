//! The per-connection write queue: frames corked during a loop turn, flushed with one
//! vectored write (or one send SQE) at the end of it.
//!
//! Small frames are appended to one owned buffer (taken from a per-worker pool), so a turn
//! that produces many frames for a connection still makes one write. Shared frames (the
//! broadcast path) are queued as a reference, never copied. When a socket takes only part of
//! the queue, the rest stays as it is, with an offset into the first chunk.

use crate::proto::frame::{encode_header, OpCode};
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
    /// Bytes owed to the peer whole before the queue is at a frame boundary
    /// ([`WriteQueue::owe_front`]): the rest of a frame whose start went straight to the
    /// socket, or the handshake's 101. Nothing is appended to it, so the boundary after it
    /// is its end.
    /// (A boxed slice, not a `Vec`: the enum keeps the 24 bytes of a `Vec`, the tags in its
    /// capacity's niche, and the slab entry does not grow.)
    Owed(Box<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Owed(b) => b,
            Chunk::Shared(a) => a,
        }
    }

    /// Its buffer, to go back to the pool: not a shared frame's (not ours), nor an owed
    /// chunk's (shrunk to its bytes, it would only make the pool's buffers small).
    fn into_buf(self) -> Option<Vec<u8>> {
        match self {
            Chunk::Owned(v) => Some(v),
            Chunk::Owed(_) | Chunk::Shared(_) => None,
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
            // Sized to the need (at least 256 bytes), not to a page: a burst of handshakes
            // leaves its answers' buffers in the pool, and at 4 KiB each the 227 in flight
            // when 10,000 clients connected at once were 93 bytes per connection for good.
            // A buffer grows once, where it is used, and keeps its size in the pool.
            None => Vec::with_capacity(at_least.max(256)),
        }
    }

    pub(crate) fn give(&mut self, mut v: Vec<u8>) {
        if v.capacity() <= POOL_BUF_CAP && self.free.len() < POOL_MAX {
            v.clear();
            self.free.push(v);
        }
    }
}

/// A backend that can write to a socket at once (a readiness backend): an answer of at
/// least [`WRITE_NOW_MIN`] bytes sent while nothing is queued before it is written straight
/// from the caller's bytes, without the copy into the write queue (a 16 KiB echo on mio:
/// docs/benchmarks.md, "Issue 14, eighth session"). Only what the socket does not take is
/// queued.
pub(crate) trait WriteNow: std::fmt::Debug {
    /// Writes what the socket takes now of `parts`, in order; returns how many bytes. `None`:
    /// this backend does not write synchronously (its sends complete later).
    fn write_now(&self, parts: &[IoSlice<'_>]) -> Option<usize>;
}

/// Payloads from this size on are written at once when the queue is empty ([`WriteNow`]):
/// below it the copy is cheaper than a system call of its own, which a turn's coalesced
/// answers share.
pub(crate) const WRITE_NOW_MIN: usize = 8 * 1024;

/// Unsent output of one connection. Holds no allocation while empty, and none either for
/// one pending chunk: the first chunk is stored inline, so delivering a shared frame to an
/// idle connection costs a reference-count increment and nothing else.
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    /// The chunk being written. INVARIANT: `None` only if `rest` is empty.
    first: Option<Chunk>,
    rest: Rest,
    /// Bytes of `first` already written. INVARIANT: `offset < first.len()`, or 0.
    offset: usize,
    /// Unsent bytes in total.
    len: usize,
    /// Chunks (from the front) an asynchronous send is reading from: never appended to,
    /// never freed until [`WriteQueue::end_send`]. Always 0 with a readiness backend.
    inflight: u32,
}

/// The chunks after the first: boxed, so that a queue of at most one chunk (every idle
/// connection's) keeps 8 bytes for them in its slab entry instead of a `VecDeque`'s 32.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // the box is the point: 8 bytes in the slab entry
struct Rest(Option<Box<VecDeque<Chunk>>>);

impl Rest {
    #[inline]
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |d| d.len())
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |d| d.capacity())
    }

    #[inline]
    fn push_back(&mut self, c: Chunk) {
        self.0.get_or_insert_with(Default::default).push_back(c);
    }

    #[inline]
    fn back_mut(&mut self) -> Option<&mut Chunk> {
        self.0.as_mut()?.back_mut()
    }

    fn pop_front(&mut self) -> Option<Chunk> {
        self.0.as_mut()?.pop_front()
    }

    fn iter(&self) -> impl Iterator<Item = &Chunk> {
        self.0.iter().flat_map(|d| d.iter())
    }

    /// Takes out the chunks from `from` on.
    fn drain_from(&mut self, from: usize) -> impl Iterator<Item = Chunk> + '_ {
        self.0
            .iter_mut()
            .flat_map(move |d| d.drain(from.min(d.len())..))
    }

    /// Frees the storage (the queue is empty).
    fn release(&mut self) {
        self.0 = None;
    }
}

impl WriteQueue {
    #[inline]
    fn chunk_count(&self) -> usize {
        self.first.is_some() as usize + self.rest.len()
    }

    /// Whether an asynchronous send is reading from this queue.
    pub(crate) fn is_sending(&self) -> bool {
        self.inflight > 0
    }

    /// Pins the first `max` chunks (or all) for an asynchronous send until
    /// [`WriteQueue::end_send`]; returns how many. Their slices come from
    /// [`WriteQueue::io_slices`] with room for that many.
    pub(crate) fn begin_send(&mut self, max: usize) -> usize {
        debug_assert_eq!(self.inflight, 0, "one send at a time");
        let n = self.chunk_count().min(max);
        self.inflight = n as u32;
        n
    }

    /// The asynchronous send wrote `written` bytes: release what it finished, unpin the rest.
    pub(crate) fn end_send(&mut self, written: usize, pool: &mut BufPool) {
        self.inflight = 0;
        self.advance(written.min(self.len), pool);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the next byte to send starts a frame (nothing is half sent).
    pub(crate) fn at_frame_boundary(&self) -> bool {
        self.offset == 0 && !matches!(self.first, Some(Chunk::Owed(_)))
    }

    /// The queue's one chunk is owed to the peer whole: the rest of a frame whose start was
    /// written to the socket at once, or the handshake's 101. Until it is written out the
    /// queue is not at a frame boundary: a slow consumer's close must not drop it and send
    /// its close frame in the middle of the peer's frame, or in place of the 101.
    pub(crate) fn owe_front(&mut self) {
        debug_assert_eq!(self.chunk_count(), 1);
        self.first = match self.first.take() {
            Some(Chunk::Owned(v)) => Some(Chunk::Owed(v.into_boxed_slice())),
            other => other,
        };
    }

    #[inline]
    fn push_chunk(&mut self, c: Chunk) {
        if self.first.is_none() {
            self.first = Some(c);
        } else {
            self.rest.push_back(c);
        }
    }

    /// Whether a new frame may be copied onto the end of the last chunk (if it is
    /// `Chunk::Owned`: never onto a shared frame or a chunk owed whole). Never onto a chunk
    /// a send is reading from: its buffer could move.
    #[inline]
    fn can_append(&self) -> bool {
        self.chunk_count() > self.inflight as usize
    }

    #[inline]
    fn last_mut(&mut self) -> Option<&mut Chunk> {
        match self.rest.back_mut() {
            Some(c) => Some(c),
            None => self.first.as_mut(),
        }
    }

    /// Appends `parts` (a header and a payload) as contiguous bytes.
    pub(crate) fn push_parts(&mut self, pool: &mut BufPool, parts: &[&[u8]]) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if n == 0 {
            return;
        }
        self.len += n;
        if n < COALESCE_MAX && self.can_append() {
            if let Some(Chunk::Owned(last)) = self.last_mut() {
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
            self.push_chunk(Chunk::Owned(v));
        } else {
            // A large frame gets a chunk of its own, from the pool when it fits there: a
            // connection echoing 16 KiB messages then reuses one buffer instead of a malloc and
            // free per message (glibc gave such blocks back with madvise and faulted them in
            // again: 0.2-0.6 page faults per message, varying from run to run).
            let mut v = if n <= POOL_BUF_CAP {
                pool.take(n)
            } else {
                Vec::with_capacity(n)
            };
            for p in parts {
                v.extend_from_slice(p);
            }
            self.push_chunk(Chunk::Owned(v));
        }
    }

    /// Appends one unmasked frame of `payload` as contiguous bytes, its header written in
    /// place: [`WriteQueue::push_parts`] for the common case of a small message sent to its
    /// own connection (no header buffer, no list of parts to walk).
    #[inline]
    pub(crate) fn push_frame(&mut self, pool: &mut BufPool, op: OpCode, payload: &[u8]) {
        let len = payload.len();
        if len >= 126 {
            let header = encode_header(true, op, len as u64, None);
            return self.push_parts(pool, &[&header, payload]);
        }
        let n = 2 + len;
        self.len += n;
        let head = [0x80 | op.as_u8(), len as u8];
        if self.can_append() {
            if let Some(Chunk::Owned(last)) = self.last_mut() {
                if last.len() + n <= POOL_BUF_CAP {
                    last.extend_from_slice(&head);
                    last.extend_from_slice(payload);
                    return;
                }
            }
        }
        let mut v = pool.take(n);
        v.extend_from_slice(&head);
        v.extend_from_slice(payload);
        self.push_chunk(Chunk::Owned(v));
    }

    /// Appends an already encoded frame, taking the buffer as it is (no copy).
    pub(crate) fn push_owned(&mut self, frame: Vec<u8>) {
        if frame.is_empty() {
            return;
        }
        self.len += frame.len();
        self.push_chunk(Chunk::Owned(frame));
    }

    /// Appends a shared frame by reference.
    pub(crate) fn push_shared(&mut self, frame: Arc<[u8]>) {
        if frame.is_empty() {
            return;
        }
        self.len += frame.len();
        self.push_chunk(Chunk::Shared(frame));
    }

    /// The unsent bytes when they are all in one chunk (the usual case: a turn's frames
    /// coalesce), else `None`.
    pub(crate) fn single_slice(&self) -> Option<&[u8]> {
        match &self.first {
            Some(first) if self.rest.is_empty() => Some(&first.bytes()[self.offset..]),
            _ => None,
        }
    }

    /// Fills `out` with slices of the unsent bytes; returns how many were filled.
    pub(crate) fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let Some(first) = &self.first else { return 0 };
        if out.is_empty() {
            return 0;
        }
        out[0] = IoSlice::new(&first.bytes()[self.offset..]);
        let mut n = 1;
        for c in self.rest.iter() {
            if n == out.len() {
                break;
            }
            out[n] = IoSlice::new(c.bytes());
            n += 1;
        }
        n
    }

    /// Marks `n` bytes as written, releasing the chunks they finish.
    pub(crate) fn advance(&mut self, mut n: usize, pool: &mut BufPool) {
        debug_assert!(n <= self.len);
        if n == self.len && self.rest.0.is_none() {
            // All of it, one chunk (a turn's frames coalesced): the common case.
            self.len = 0;
            self.offset = 0;
            if let Some(v) = self.first.take().and_then(Chunk::into_buf) {
                pool.give(v);
            }
            return;
        }
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(first) = &self.first else { break };
            let rest = first.bytes().len() - self.offset;
            if n < rest {
                self.offset += n;
                return;
            }
            n -= rest;
            self.offset = 0;
            if let Some(v) = self.first.take().and_then(Chunk::into_buf) {
                pool.give(v);
            }
            self.first = self.rest.pop_front();
        }
        if self.rest.is_empty() {
            // Release the deque's storage too: an idle connection holds nothing.
            self.rest.release();
        }
    }

    /// Drops everything unsent, except chunks an asynchronous send is still reading from
    /// (they go with [`WriteQueue::end_send`] or when the queue is dropped).
    pub(crate) fn clear(&mut self, pool: &mut BufPool) {
        if self.inflight > 0 {
            let keep = self.inflight as usize - 1; // `first` is pinned; keep this many of `rest`
            for v in self.rest.drain_from(keep).filter_map(Chunk::into_buf) {
                pool.give(v);
            }
            let first = self
                .first
                .as_ref()
                .map_or(0, |c| c.bytes().len() - self.offset);
            self.len = first + self.rest.iter().map(|c| c.bytes().len()).sum::<usize>();
            return;
        }
        for c in self.first.take().into_iter().chain(self.rest.drain_from(0)) {
            if let Some(v) = c.into_buf() {
                pool.give(v);
            }
        }
        self.rest.release();
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
        assert_eq!(q.single_slice(), None, "empty");
        q.push_parts(&mut pool, &[b"ab", b"cd"]);
        q.push_parts(&mut pool, &[b"ef"]);
        assert_eq!(
            q.single_slice(),
            Some(&b"abcdef"[..]),
            "one coalesced chunk"
        );
        let shared: Arc<[u8]> = Arc::from(&b"SHARED"[..]);
        q.push_shared(shared.clone());
        q.push_parts(&mut pool, &[b"gh"]);
        assert_eq!(q.rest.len(), 2);
        assert_eq!(Arc::strong_count(&shared), 2);
        assert_eq!(drain(&q), b"abcdefSHAREDgh");
        q.advance(3, &mut pool);
        assert!(!q.at_frame_boundary());
        assert_eq!(drain(&q), b"defSHAREDgh");
        q.advance(6, &mut pool);
        assert_eq!(drain(&q), b"REDgh");
        assert_eq!(q.single_slice(), None, "two chunks");
        q.advance(3, &mut pool);
        assert_eq!(q.single_slice(), Some(&b"gh"[..]), "the last chunk alone");
        q.advance(2, &mut pool);
        assert!(q.is_empty());
        assert_eq!(Arc::strong_count(&shared), 1);
        assert_eq!(q.rest.capacity(), 0);
        // One shared frame on an empty queue is held inline: no allocation.
        q.push_shared(shared.clone());
        assert_eq!(q.rest.capacity(), 0);
        assert_eq!(drain(&q), b"SHARED");
    }

    #[test]
    fn large_frames_reuse_pooled_buffers() {
        let mut pool = BufPool::default();
        let mut q = WriteQueue::default();
        let payload = vec![7u8; COALESCE_MAX];
        q.push_parts(&mut pool, &[b"hd", &payload]);
        let mut iov = [IoSlice::new(&[]); 4];
        assert_eq!(q.io_slices(&mut iov), 1);
        let first = iov[0].as_ptr();
        q.advance(q.len(), &mut pool);
        assert_eq!(
            pool.free.len(),
            1,
            "the written buffer went back to the pool"
        );
        q.push_parts(&mut pool, &[b"hd", &payload]);
        assert_eq!(pool.free.len(), 0);
        let mut iov = [IoSlice::new(&[]); 4];
        q.io_slices(&mut iov);
        assert_eq!(
            iov[0].as_ptr(),
            first,
            "the second frame reused the first one's buffer"
        );
        assert_eq!(drain(&q).len(), COALESCE_MAX + 2);
        // Past the pool's cap a frame still gets (and later frees) a buffer of its own.
        q.advance(q.len(), &mut pool);
        let big = vec![1u8; POOL_BUF_CAP + 1];
        q.push_parts(&mut pool, &[&big]);
        q.advance(q.len(), &mut pool);
        assert_eq!(pool.free.len(), 1);
        assert!(pool.free[0].capacity() <= POOL_BUF_CAP);
    }

    /// Every byte the queue would write, in order.
    fn queued_bytes(q: &WriteQueue) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 64];
        let n = q.io_slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn push_frame_writes_what_push_parts_writes_with_the_encoded_header() {
        let (mut pool_a, mut pool_b) = (BufPool::default(), BufPool::default());
        let (mut a, mut b) = (WriteQueue::default(), WriteQueue::default());
        for (i, len) in [0, 1, 20, 125, 126, 127, 300, 65_535, 65_536, 70_000, 5]
            .into_iter()
            .enumerate()
        {
            let op = if i % 2 == 0 {
                OpCode::Text
            } else {
                OpCode::Binary
            };
            let payload: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
            a.push_frame(&mut pool_a, op, &payload);
            let h = encode_header(true, op, len as u64, None);
            b.push_parts(&mut pool_b, &[&h, &payload]);
            // One pinned by a send in the middle: new frames go to a chunk of their own.
            if i == 3 {
                assert_eq!(a.begin_send(64), b.begin_send(64));
            }
            assert_eq!(a.len(), b.len());
            assert_eq!(a.chunk_count(), b.chunk_count(), "frame {i}");
        }
        assert_eq!(queued_bytes(&a), queued_bytes(&b));
    }

    #[test]
    fn pinned_chunks_are_not_appended_to_nor_freed() {
        let mut pool = BufPool::default();
        let mut q = WriteQueue::default();
        q.push_parts(&mut pool, &[b"abc"]);
        assert_eq!(q.begin_send(8), 1);
        let mut iov = [IoSlice::new(&[]); 8];
        assert_eq!(q.io_slices(&mut iov[..1]), 1);
        let ptr = iov[0].as_ptr();
        // A new frame during the send goes to a new chunk: the pinned buffer does not move.
        q.push_parts(&mut pool, &[b"def"]);
        assert_eq!(q.rest.len(), 1);
        // Clearing (the connection failed) keeps the pinned chunk until the send ends.
        q.clear(&mut pool);
        assert_eq!(q.len(), 3);
        let mut iov2 = [IoSlice::new(&[]); 8];
        assert_eq!(q.io_slices(&mut iov2), 1);
        assert_eq!(iov2[0].as_ptr(), ptr);
        q.end_send(2, &mut pool);
        assert_eq!(drain(&q), b"c");
        assert!(!q.is_sending());
    }
}
