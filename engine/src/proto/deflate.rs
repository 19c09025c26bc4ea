//! permessage-deflate (RFC 7692): negotiation, and bounded compression and inflation.
//!
//! Bytes in, bytes out: no sockets, threads or clocks. What volley agrees to, and why:
//!
//! * **No context takeover, both ways.** The answer always carries `server_no_context_takeover`
//!   and `client_no_context_takeover` (a server may add the latter even when the offer lacks
//!   it, section 7.1.1.2). Every message is then compressed and inflated from a fresh state,
//!   so one [`Deflater`] and one [`Inflater`] per *worker* serve all its connections, and an
//!   idle connection with compression negotiated holds no zlib state at all. (With context
//!   takeover a connection would hold up to 256 KiB of deflate state and 32 KiB of window.)
//! * **`server_max_window_bits=N`** (9-15) is answered with the same N and honoured: the
//!   worker keeps one compressor per window size in use, made on first use. N = 8 is
//!   declined: zlib (and zlib-rs) cannot produce a raw deflate stream with a 256-byte window.
//! * **`client_max_window_bits`** (with or without a value) is accepted and not echoed: the
//!   inflater uses a 32 KiB window, which reads a stream made with any smaller one.
//! * An offer with an unknown parameter, a parameter twice, or a value that is not a decimal
//!   8-15 without leading zeros (quoted or not) is declined (section 7.1); the next offer is
//!   tried, and with none acceptable the connection opens without compression.
//!
//! Frames: a compressed message has RSV1 on its first frame; its payload is a raw deflate
//! stream flushed with `Z_SYNC_FLUSH` whose trailing `00 00 ff ff` is removed (section 7.2.1),
//! and appended again before inflating (section 7.2.2).
//!
//! Inflation is bounded ([`Inflater::inflate`]): the output grows a chunk at a time and is
//! checked after each chunk against the message limit and a ratio cap, so a few KiB that
//! would inflate to gigabytes cost at most the limit.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's token.
pub const EXTENSION: &str = "permessage-deflate";

/// The end of a sync flush, removed after compressing and appended before inflating.
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest window (32 KiB); also what the inflater uses.
pub const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window zlib can compress with as a raw stream.
pub const MIN_WINDOW_BITS: u8 = 9;

/// What was agreed with one client: always no context takeover both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// `server_max_window_bits` the client asked for (answered with the same value), or
    /// `None` when it did not ask (we then use 15).
    pub server_max_window_bits: Option<u8>,
}

impl Agreed {
    /// The window our compressor must use for this client.
    pub fn window_bits(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS)
    }

    /// The `Sec-WebSocket-Extensions` value of the answer.
    pub fn response(&self) -> String {
        let mut s = format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if let Some(n) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={n}"));
        }
        s
    }
}

/// Why one offer was declined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declined {
    /// Another extension (or an empty element).
    NotDeflate,
    /// A parameter RFC 7692 does not define.
    UnknownParameter,
    /// A parameter given twice.
    DuplicateParameter,
    /// A value that is missing, present where none is allowed, or not a decimal 8-15.
    InvalidValue,
    /// `server_max_window_bits=8`: zlib cannot compress with a 256-byte window.
    WindowTooSmall,
}

/// Reads one offer (`permessage-deflate; param[=value]; ...`, one element of the
/// comma-separated header list) and says what we would answer.
///
/// # Errors
/// [`Declined`] with the first reason found.
pub fn accept_offer(offer: &str) -> Result<Agreed, Declined> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case(EXTENSION))
    {
        return Err(Declined::NotDeflate);
    }
    let mut seen = 0u8;
    let mut agreed = Agreed {
        server_max_window_bits: None,
    };
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (p, None),
        };
        let bit = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 1,
            "client_no_context_takeover" => 2,
            "server_max_window_bits" => 4,
            "client_max_window_bits" => 8,
            _ => return Err(Declined::UnknownParameter),
        };
        if seen & bit != 0 {
            return Err(Declined::DuplicateParameter);
        }
        seen |= bit;
        match (bit, value) {
            (1 | 2, None) => {}
            (1 | 2, Some(_)) => return Err(Declined::InvalidValue),
            (4, Some(v)) => match window_bits(v)? {
                8 => return Err(Declined::WindowTooSmall),
                n => agreed.server_max_window_bits = Some(n),
            },
            (4, None) => return Err(Declined::InvalidValue),
            (_, Some(v)) => {
                window_bits(v)?;
            }
            (_, None) => {}
        }
    }
    Ok(agreed)
}

/// A window-bits value: 8-15 in decimal without leading zeros, bare or quoted.
fn window_bits(v: &str) -> Result<u8, Declined> {
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    match v {
        "8" | "9" => Ok(v.as_bytes()[0] - b'0'),
        "10" | "11" | "12" | "13" | "14" | "15" => Ok(10 + v.as_bytes()[1] - b'0'),
        _ => Err(Declined::InvalidValue),
    }
}

/// The first offer among `offers` (the elements of every `Sec-WebSocket-Extensions` header,
/// in order) that we accept, as RFC 7692 section 5 asks.
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    offers.into_iter().find_map(|o| accept_offer(o).ok())
}

/// The compression settings of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Messages shorter than this go out uncompressed.
    pub threshold: usize,
    /// zlib level, 0-9.
    pub level: u32,
    /// An inflated message more than this many times its compressed size is refused
    /// (1009), once it is past [`RATIO_FLOOR`] bytes. 0: no cap.
    pub max_ratio: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            threshold: 64,
            level: 6,
            max_ratio: 256,
        }
    }
}

/// Below this many inflated bytes the ratio cap does not apply (short messages that compress
/// well are common and harmless).
pub const RATIO_FLOOR: usize = 64 << 10;

/// A worker's compressors, one per window size in use, each made on first use (by zlib's
/// sizing, `2^(bits+2) + 128 KiB`: 256 KiB at 15 bits). Each message is compressed from a
/// reset state (no context takeover).
pub struct Deflater {
    by_bits: [Option<Box<Compress>>; (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1) as usize],
    level: u32,
    calls: u64,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("level", &self.level)
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl Deflater {
    /// No compressor yet; they are made at `level` when first needed.
    pub fn new(level: u32) -> Self {
        Deflater {
            by_bits: Default::default(),
            level: level.min(9),
            calls: 0,
        }
    }

    /// How many messages were compressed.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Appends the compressed form of `input` to `out` (a message payload: sync-flushed, the
    /// `00 00 ff ff` tail removed) using a window of `bits` (clamped to 9-15).
    pub fn compress(&mut self, bits: u8, input: &[u8], out: &mut Vec<u8>) {
        let bits = bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        let level = self.level;
        let c = self.by_bits[(bits - MIN_WINDOW_BITS) as usize].get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(
                Compression::new(level),
                false,
                bits,
            ))
        });
        c.reset();
        self.calls += 1;
        let start = out.len();
        let mut pos = 0;
        out.reserve(input.len() / 2 + 64);
        loop {
            if out.capacity() - out.len() < 16 {
                out.reserve(out.capacity().max(64));
            }
            let before = c.total_in();
            c.compress_vec(&input[pos..], out, FlushCompress::Sync)
                .expect("deflate with valid parameters does not fail");
            pos += (c.total_in() - before) as usize;
            // A sync flush is complete once all input is taken and output space was left.
            if pos == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        debug_assert!(out[start..].ends_with(&TAIL));
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    }
}

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message limit.
    TooBig,
    /// It inflates past the ratio cap.
    Ratio,
    /// It is not a valid deflate stream.
    Corrupt,
}

/// A worker's inflater (32 KiB window, reset for each message).
pub struct Inflater {
    d: Decompress,
    max_ratio: u32,
    calls: u64,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("max_ratio", &self.max_ratio)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// An inflater refusing output over `max_ratio` times the input (0: no cap).
    pub fn new(max_ratio: u32) -> Self {
        Inflater {
            d: Decompress::new_with_window_bits(false, MAX_WINDOW_BITS),
            max_ratio,
            calls: 0,
        }
    }

    /// How many messages were inflated (or tried).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Inflates one message's payload (its frames' payloads concatenated, without the tail)
    /// into `out` (cleared first), never holding more than `max + 1` bytes of output: the
    /// limit and the ratio cap are checked after every chunk the inflater produces.
    ///
    /// # Errors
    /// [`InflateError`]; `out` then holds a partial result to be discarded.
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(), InflateError> {
        self.d.reset(false);
        self.calls += 1;
        out.clear();
        let ratio_max = match self.max_ratio {
            0 => usize::MAX,
            r => (input.len().max(1)).saturating_mul(r as usize),
        };
        for src in [input, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    let want = (out.capacity() * 2).max(4096).min(max.saturating_add(1));
                    if want <= out.len() {
                        return Err(InflateError::TooBig);
                    }
                    out.reserve_exact(want - out.len());
                }
                let (in0, out0) = (self.d.total_in(), self.d.total_out());
                let st = self
                    .d
                    .decompress_vec(&src[pos..], out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                pos += (self.d.total_in() - in0) as usize;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if out.len() > RATIO_FLOOR && out.len() > ratio_max {
                    return Err(InflateError::Ratio);
                }
                if st == Status::StreamEnd {
                    // A final block ended the stream: what follows is not part of it.
                    return Ok(());
                }
                let progress = self.d.total_in() != in0 || self.d.total_out() != out0;
                if pos == src.len() && out.len() < out.capacity() {
                    break;
                }
                if !progress && out.len() < out.capacity() {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_accepted_and_answered() {
        let a = accept_offer("permessage-deflate").unwrap();
        assert_eq!(a.server_max_window_bits, None);
        assert_eq!(a.window_bits(), 15);
        assert_eq!(
            a.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // Chromium's offer.
        assert!(accept_offer("permessage-deflate; client_max_window_bits").is_ok());
        let a = accept_offer(
            "Permessage-Deflate ; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=\"10\"; client_max_window_bits=12",
        )
        .unwrap();
        assert_eq!(a.window_bits(), 10);
        assert!(a.response().ends_with("; server_max_window_bits=10"));
    }

    #[test]
    fn offers_declined_as_rfc_7692_says() {
        use Declined::*;
        let cases = [
            ("x-webkit-deflate-frame", NotDeflate),
            ("", NotDeflate),
            ("permessage-deflate; foo", UnknownParameter),
            ("permessage-deflate; foo=1", UnknownParameter),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                DuplicateParameter,
            ),
            (
                "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
                DuplicateParameter,
            ),
            (
                "permessage-deflate; server_no_context_takeover=1",
                InvalidValue,
            ),
            (
                "permessage-deflate; client_no_context_takeover=",
                InvalidValue,
            ),
            ("permessage-deflate; server_max_window_bits", InvalidValue),
            (
                "permessage-deflate; server_max_window_bits=16",
                InvalidValue,
            ),
            ("permessage-deflate; server_max_window_bits=7", InvalidValue),
            (
                "permessage-deflate; server_max_window_bits=09",
                InvalidValue,
            ),
            ("permessage-deflate; server_max_window_bits=", InvalidValue),
            ("permessage-deflate; client_max_window_bits=0", InvalidValue),
            (
                "permessage-deflate; client_max_window_bits=\"15",
                InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=8",
                WindowTooSmall,
            ),
        ];
        for (offer, want) in cases {
            assert_eq!(accept_offer(offer), Err(want), "{offer:?}");
        }
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        let a = negotiate([
            "x-foo",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=9",
            "permessage-deflate",
        ])
        .unwrap();
        assert_eq!(a.server_max_window_bits, Some(9));
        assert_eq!(negotiate(["permessage-deflate; bogus", "x-foo"]), None);
        assert_eq!(negotiate([]), None);
    }

    fn inflate_all(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let mut out = Vec::new();
        Inflater::new(256).inflate(data, &mut out, max).map(|_| out)
    }

    #[test]
    fn round_trip_every_window_and_the_rfc_example() {
        // RFC 7692 7.2.3.1: "Hello" compressed.
        assert_eq!(
            inflate_all(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(),
            b"Hello"
        );
        // 7.2.3.5: "Hello" in a stored block (no compression).
        assert_eq!(
            inflate_all(
                &[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00],
                100
            )
            .unwrap(),
            b"Hello"
        );
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("{{\"id\":{i},\"v\":\"abc\"}}").into_bytes())
            .take(200_000)
            .collect();
        let mut d = Deflater::new(6);
        let mut inf = Inflater::new(0);
        for bits in 9..=15 {
            for len in [0usize, 1, 100, 70_000, text.len()] {
                let mut c = Vec::new();
                d.compress(bits, &text[..len], &mut c);
                assert!(!c.ends_with(&TAIL));
                let mut out = Vec::new();
                inf.inflate(&c, &mut out, len).unwrap();
                assert_eq!(out, &text[..len], "bits {bits} len {len}");
                // Decodable with exactly the agreed window (what the client uses).
                let mut small = Decompress::new_with_window_bits(false, bits);
                let mut c2 = c.clone();
                c2.extend_from_slice(&TAIL);
                let mut o2 = Vec::with_capacity(len + 16);
                small
                    .decompress_vec(&c2, &mut o2, FlushDecompress::Sync)
                    .unwrap();
                assert_eq!(o2, &text[..len]);
            }
        }
        assert_eq!(d.calls(), 35);
        // An empty message is the single byte 0x00 (7.2.3.6).
        let mut c = Vec::new();
        d.compress(15, b"", &mut c);
        assert_eq!(c, [0x00]);
    }

    #[test]
    fn inflate_is_bounded_and_rejects_garbage() {
        // A zip bomb: 10 MB of zeros is about 10 KB compressed.
        let mut c = Vec::new();
        Deflater::new(9).compress(15, &vec![0u8; 10 << 20], &mut c);
        assert!(c.len() < 20_000, "{}", c.len());
        let mut out = Vec::new();
        let mut inf = Inflater::new(0);
        assert_eq!(
            inf.inflate(&c, &mut out, 1 << 20),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= (1 << 20) + 1, "{}", out.capacity());
        // The ratio cap stops it earlier.
        let mut out = Vec::new();
        assert_eq!(
            Inflater::new(100).inflate(&c, &mut out, 16 << 20),
            Err(InflateError::Ratio)
        );
        assert!(out.len() < 4 << 20);
        // Exactly at the limit is fine.
        let mut c = Vec::new();
        Deflater::new(6).compress(15, &[7u8; 5000], &mut c);
        assert_eq!(inf.inflate(&c, &mut out, 5000), Ok(()));
        assert_eq!(inf.inflate(&c, &mut out, 4999), Err(InflateError::TooBig));
        // Not deflate: BTYPE 11 is reserved.
        assert_eq!(
            inflate_all(&[0xff, 0xff, 0xff], 100),
            Err(InflateError::Corrupt)
        );
        // The inflater is reusable after an error.
        let mut c = Vec::new();
        Deflater::new(6).compress(15, b"again", &mut c);
        assert_eq!(inf.inflate(&c, &mut out, 100), Ok(()));
        assert_eq!(out, b"again");
    }
}
