//! A worker's permessage-deflate state: one compressor per window size in use, one inflater,
//! one scratch buffer. No connection holds any of it (no context takeover, both ways), so
//! an idle connection with compression negotiated costs what one without it does.

use crate::proto::deflate::{DeflateConfig, Deflater, Inflater};
use crate::proto::frame::{encode_header, FrameHeader, HeaderBuf};
use crate::proto::{OpCode, Status};
use std::sync::Arc;

/// The scratch buffer keeps at most this much capacity between messages.
const SCRATCH_KEEP: usize = 1 << 20;

/// What a worker compresses and inflates with (`Config::deflate` on).
#[derive(Debug)]
pub(crate) struct Compression {
    cfg: DeflateConfig,
    deflater: Deflater,
    pub(crate) inflater: Inflater,
    scratch: Vec<u8>,
    /// Deflate and inflate calls already added to the worker's counters.
    reported: (u64, u64),
}

impl Compression {
    pub(crate) fn new(cfg: DeflateConfig) -> Self {
        Compression {
            cfg,
            deflater: Deflater::new(cfg.level),
            inflater: Inflater::new(cfg.max_ratio),
            scratch: Vec::new(),
            reported: (0, 0),
        }
    }

    /// Compresses `payload` with a window of `bits` into the scratch buffer; `false` (send it
    /// plain) when it is under the threshold or does not shrink.
    fn deflate(&mut self, bits: u8, payload: &[u8]) -> bool {
        if payload.len() < self.cfg.threshold {
            return false;
        }
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::new();
        }
        self.scratch.clear();
        self.deflater.compress(bits, payload, &mut self.scratch);
        self.scratch.len() < payload.len()
    }

    /// A message for one connection that agreed to a window of `bits`: the compressed
    /// frame's header (RSV1 set) and payload, or `None` to send it plain.
    pub(crate) fn message(
        &mut self,
        bits: u8,
        op: OpCode,
        payload: &[u8],
    ) -> Option<(HeaderBuf, &[u8])> {
        if !self.deflate(bits, payload) {
            return None;
        }
        let h = encode_header(true, op, self.scratch.len() as u64, None).with_rsv1();
        Some((h, &self.scratch))
    }

    /// The compressed twin of a shared server frame (header and payload), in one allocation,
    /// for connections with a 32 KiB window; `None` to send the frame itself.
    pub(crate) fn twin(&mut self, frame: &[u8]) -> Option<Arc<[u8]>> {
        let Ok(Status::Complete((h, hlen))) = FrameHeader::parse(frame) else {
            return None;
        };
        let payload = frame.get(hlen..)?;
        if !self.deflate(crate::proto::deflate::MAX_WINDOW_BITS, payload) {
            return None;
        }
        let header = encode_header(true, h.opcode, self.scratch.len() as u64, None).with_rsv1();
        Some(header.iter().chain(self.scratch.iter()).copied().collect())
    }

    /// Messages compressed and inflated since the last call (for the worker's counters).
    pub(crate) fn take_counts(&mut self) -> (u64, u64) {
        let now = (self.deflater.calls(), self.inflater.calls());
        let d = (now.0 - self.reported.0, now.1 - self.reported.1);
        self.reported = now;
        d
    }
}
