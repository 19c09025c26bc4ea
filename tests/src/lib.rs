//! Integration-test helpers for volley.
//!
//! Shared by the property tests in `tests/` and the cargo-fuzz targets in `engine/fuzz/`, so
//! that a proptest case and a fuzzer input are checked by exactly the same code:
//!
//! * [`drive_decoder`] feeds a byte stream to a [`Decoder`] in reads split where the caller
//!   says, keeping unconsumed bytes as a runtime would, and *panics* on any broken
//!   invariant: no progress, too many bytes kept, an assembly buffer out of proportion to
//!   the input or the limits, an error without a wire-legal close code.
//! * [`model_decode`] is a deliberately naive reference decoder (whole buffer, plain index
//!   arithmetic, `std` UTF-8) written from RFC 6455, the oracle the real decoder is diffed
//!   against on arbitrary input.
//! * [`drive_handshake`] does the same for the request head: scanner, parser, validation,
//!   with a 4xx status for every rejection.
//! * [`plan_frames`] and [`encode_frames`] build valid streams (random fragmentation,
//!   interleaved control frames) together with the messages they must decode to.
//!
//! Nothing here returns an error for a broken invariant: it panics, which is what both
//! proptest and libFuzzer report.

use volley::proto::frame::{encode_header, OpCode};
use volley::proto::handshake::{
    parse_request, write_accept_response, AcceptKey, HeadScanner, EMPTY_HEADER, MAX_HEADERS,
};
use volley::proto::{Decoded, Decoder, HandshakeError, Limits, ProtocolError, Role, Status};

/// Most bytes the feeding loop may have to keep between reads (2 + 8 + 4 + 125).
///
/// The decoder leaves unconsumed only an incomplete frame header (at most 13 bytes) or an
/// incomplete control frame (at most 2 + 4 + 125 - 1 bytes); this is a bound on both.
pub const MAX_KEPT: usize = 2 + 8 + 4 + 125;

/// An owned copy of a [`Message`], to collect results across calls and compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping.
    Ping(Vec<u8>),
    /// A pong.
    Pong(Vec<u8>),
    /// A close frame: code and reason, or `None` for an empty payload.
    Close(Option<(u16, String)>),
}

/// Copies a borrowed message.
pub fn own(m: Decoded<'_>) -> Owned {
    match m {
        Decoded::Text(t) => Owned::Text(t.to_owned()),
        Decoded::Binary(b) => Owned::Binary(b.to_vec()),
        Decoded::Ping(b) => Owned::Ping(b.to_vec()),
        Decoded::Pong(b) => Owned::Pong(b.to_vec()),
        Decoded::Close(c) => Owned::Close(c.map(|c| (c.code.0, c.reason.to_owned()))),
    }
}

/// What the decoder made of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// Messages in the order they were handed out.
    pub messages: Vec<Owned>,
    /// The error that ended decoding, if any.
    pub error: Option<ProtocolError>,
}

/// Statistics of one [`drive_decoder`] run, for tests that want to look closer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// Most bytes kept unconsumed between two reads.
    pub max_kept: usize,
    /// Largest `Decoder::buffered_capacity()` seen.
    pub max_capacity: usize,
    /// `decode` calls made.
    pub calls: usize,
}

/// Turns cut positions (any values, any order) into sorted read boundaries ending at `len`.
pub fn boundaries(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut b: Vec<usize> = cuts.iter().map(|&c| c.min(len)).collect();
    b.push(len);
    b.sort_unstable();
    b.dedup();
    b
}

/// Cut positions every `chunk` bytes (at least 1).
pub fn cuts_every(len: usize, chunk: usize) -> Vec<usize> {
    (0..len).step_by(chunk.max(1)).skip(1).collect()
}

/// Largest assembly buffer allowed: `Vec` doubling may at most double the limit (and the
/// smallest allocation of a `Vec<u8>` is 8 bytes).
pub fn capacity_bound(limits: Limits) -> usize {
    2 * limits.max_message.max(8)
}

/// Checks an error's mapping: a close code a peer may receive, a short reason.
pub fn check_protocol_error(e: &ProtocolError) {
    let code = e.close_code();
    assert!(
        code.is_allowed_on_wire(),
        "{e:?} maps to {code}, not allowed on the wire"
    );
    assert!(
        matches!(code.0, 1002 | 1007 | 1009),
        "{e:?} maps to unexpected {code}"
    );
    let reason = e.reason();
    assert!(
        !reason.is_empty() && reason.len() <= 123,
        "{e:?}: {reason:?}"
    );
    assert!(!e.to_string().is_empty());
}

fn check_message(m: &Decoded<'_>, limits: Limits) {
    match m {
        Decoded::Text(t) => assert!(t.len() <= limits.max_message),
        Decoded::Binary(b) => assert!(b.len() <= limits.max_message),
        Decoded::Ping(b) | Decoded::Pong(b) => assert!(b.len() <= 125),
        Decoded::Close(None) => {}
        Decoded::Close(Some(c)) => {
            assert!(
                c.code.is_allowed_on_wire(),
                "close code {} delivered",
                c.code
            );
            assert!(c.reason.len() <= 123);
        }
    }
}

/// Feeds `wire` to a fresh decoder in reads that end at `cuts`, and checks every invariant
/// of the decoding contract on the way (see the crate docs). Stops at the first error.
///
/// # Panics
/// On any broken invariant; that is the point.
pub fn drive_decoder(
    role: Role,
    limits: Limits,
    wire: &[u8],
    cuts: &[usize],
) -> (Transcript, Watermarks) {
    let mut dec = Decoder::new(role, limits);
    let mut out = Transcript::default();
    let mut marks = Watermarks::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut start = 0;
    for end in boundaries(wire.len(), cuts) {
        pending.extend_from_slice(&wire[start..end]);
        start = end;
        let mut pos = 0;
        // Every turn that does not end the loop consumes at least one byte, so a correct
        // decoder needs at most `pending.len() + 1` turns for this read.
        let max_turns = pending.len() + 1;
        let mut turns = 0;
        loop {
            turns += 1;
            assert!(
                turns <= max_turns,
                "no progress: {turns} decode calls on {} bytes",
                pending.len()
            );
            marks.calls += 1;
            let avail = pending.len() - pos;
            let (consumed, message) = match dec.decode(&mut pending[pos..]) {
                Ok(step) => {
                    assert!(
                        step.consumed <= avail,
                        "consumed {} of {avail}",
                        step.consumed
                    );
                    if let Some(m) = &step.message {
                        assert!(step.consumed > 0, "message without consuming bytes");
                        check_message(m, limits);
                    }
                    (step.consumed, step.message.map(own))
                }
                Err(e) => {
                    check_protocol_error(&e);
                    out.error = Some(e);
                    marks.max_capacity = marks.max_capacity.max(dec.buffered_capacity());
                    check_capacity(&dec, limits, end);
                    return (out, marks);
                }
            };
            marks.max_capacity = marks.max_capacity.max(dec.buffered_capacity());
            check_capacity(&dec, limits, end);
            pos += consumed;
            match message {
                Some(m) => out.messages.push(m),
                None if consumed == 0 => break,
                None => {}
            }
        }
        pending.drain(..pos);
        marks.max_kept = marks.max_kept.max(pending.len());
        assert!(
            pending.len() <= MAX_KEPT,
            "decoder left {} bytes unconsumed (at most {MAX_KEPT} allowed)",
            pending.len()
        );
    }
    (out, marks)
}

/// The assembly buffer is bounded by the limits *and* by what was actually received: a
/// declared length never reserves memory by itself.
fn check_capacity(dec: &Decoder, limits: Limits, received: usize) {
    let cap = dec.buffered_capacity();
    assert!(
        cap <= capacity_bound(limits),
        "assembly buffer {cap} bytes, limit {}",
        limits.max_message
    );
    assert!(
        cap <= 2 * received.max(8),
        "assembly buffer {cap} bytes after receiving only {received}"
    );
}

/// Whether `b` is valid UTF-8 or could still become valid with more bytes.
fn utf8_prefix_ok(b: &[u8]) -> bool {
    match std::str::from_utf8(b) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// Close codes a peer may send (RFC 6455 section 7.4.1 and 7.4.2), written out
/// independently of `CloseCode::is_allowed_on_wire`.
fn close_code_ok(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A naive reference decoder: the whole stream in one buffer, decoded front to back with
/// the rules of RFC 6455 sections 5 and 8.1, checks in the same order as the real decoder
/// (opcode, control rules, length, then close state, RSV, mask, limits, fragmentation).
///
/// A stream that ends inside a frame is not an error, except that text already received
/// must be a valid UTF-8 prefix (fail fast, section 8.1).
pub fn model_decode(role: Role, limits: Limits, wire: &[u8]) -> Transcript {
    use ProtocolError as E;
    let mut out = Transcript::default();
    let mut i = 0usize;
    let mut closed = false;
    // (is_text, payload so far) of the message being assembled.
    let mut msg: Option<(bool, Vec<u8>)> = None;
    let fail = |mut out: Transcript, e: ProtocolError| {
        out.error = Some(e);
        out
    };
    loop {
        let rest = &wire[i..];
        if rest.len() < 2 {
            return out;
        }
        let (b0, b1) = (rest[0], rest[1]);
        let fin = b0 & 0x80 != 0;
        let rsv = b0 & 0x70;
        let op = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if !matches!(op, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA) {
            return fail(out, E::ReservedOpcode(op));
        }
        let control = op >= 0x8;
        if control && !fin {
            return fail(out, E::FragmentedControl);
        }
        if control && len7 > 125 {
            return fail(out, E::ControlTooLong);
        }
        let (len, mut h) = match len7 {
            126 => {
                if rest.len() < 4 {
                    return out;
                }
                (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
            }
            127 => {
                if rest.len() < 10 {
                    return out;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                let l = u64::from_be_bytes(b);
                if l >= 1 << 63 {
                    return fail(out, E::InvalidLength);
                }
                (l, 10)
            }
            n => (u64::from(n), 2),
        };
        let key = if masked {
            if rest.len() < h + 4 {
                return out;
            }
            let k = [rest[h], rest[h + 1], rest[h + 2], rest[h + 3]];
            h += 4;
            Some(k)
        } else {
            None
        };
        if closed {
            return fail(out, E::DataAfterClose);
        }
        if rsv != 0 {
            return fail(out, E::ReservedBits);
        }
        match (role, masked) {
            (Role::Server, false) => return fail(out, E::UnmaskedClientFrame),
            (Role::Client, true) => return fail(out, E::MaskedServerFrame),
            _ => {}
        }
        // The limit is for data frames; control frames are bounded at 125 bytes above.
        if !control && len > limits.max_frame as u64 {
            return fail(
                out,
                E::FrameTooBig {
                    len,
                    max: limits.max_frame,
                },
            );
        }
        let avail = (rest.len() - h) as u64;
        let unmask = |bytes: &[u8]| -> Vec<u8> {
            match key {
                Some(k) => bytes
                    .iter()
                    .enumerate()
                    .map(|(j, b)| b ^ k[j % 4])
                    .collect(),
                None => bytes.to_vec(),
            }
        };
        if control {
            if avail < len {
                return out;
            }
            let payload = unmask(&rest[h..h + len as usize]);
            let m = match op {
                0x9 => Owned::Ping(payload),
                0xA => Owned::Pong(payload),
                _ => {
                    closed = true;
                    match payload.len() {
                        0 => Owned::Close(None),
                        1 => return fail(out, E::InvalidCloseCode(None)),
                        _ => {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            if !close_code_ok(code) {
                                return fail(out, E::InvalidCloseCode(Some(code)));
                            }
                            match String::from_utf8(payload[2..].to_vec()) {
                                Ok(r) => Owned::Close(Some((code, r))),
                                Err(_) => return fail(out, E::InvalidCloseReason),
                            }
                        }
                    }
                }
            };
            out.messages.push(m);
            i += h + len as usize;
            continue;
        }
        match (op, msg.is_some()) {
            (0x0, false) => return fail(out, E::UnexpectedContinuation),
            (0x1 | 0x2, true) => return fail(out, E::ExpectedContinuation),
            _ => {}
        }
        let so_far = msg.as_ref().map_or(0, |m| m.1.len()) as u64;
        if so_far + len > limits.max_message as u64 {
            return fail(
                out,
                E::MessageTooBig {
                    len: so_far + len,
                    max: limits.max_message,
                },
            );
        }
        let take = avail.min(len) as usize;
        let payload = unmask(&rest[h..h + take]);
        let m = msg.get_or_insert_with(|| (op == 0x1, Vec::new()));
        m.1.extend_from_slice(&payload);
        if m.0 && !utf8_prefix_ok(&m.1) {
            return fail(out, E::InvalidUtf8);
        }
        if (take as u64) < len {
            return out;
        }
        i += h + take;
        if fin {
            let (text, data) = msg.take().expect("just inserted");
            out.messages.push(if text {
                match String::from_utf8(data) {
                    Ok(s) => Owned::Text(s),
                    Err(_) => return fail(out, E::InvalidUtf8),
                }
            } else {
                Owned::Binary(data)
            });
        }
    }
}

/// One frame to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: OpCode,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

/// A control frame a test may interleave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Ping with its payload (at most 125 bytes).
    Ping(Vec<u8>),
    /// Pong with its payload (at most 125 bytes).
    Pong(Vec<u8>),
}

/// One item of a planned stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// A data message, fragmented at `splits` (byte offsets into the payload), with control
    /// frames sent after the fragment of the given index.
    Data {
        /// Text (the payload is then valid UTF-8) or binary.
        text: bool,
        /// The whole message payload.
        payload: Vec<u8>,
        /// Fragment boundaries; clamped, sorted and deduplicated.
        splits: Vec<usize>,
        /// `(after_fragment, control)`: sent after that fragment (clamped to the last).
        controls: Vec<(usize, Control)>,
    },
    /// A control frame between messages.
    Control(Control),
}

fn control_frame(c: &Control) -> (FrameSpec, Owned) {
    let (opcode, p, m) = match c {
        Control::Ping(p) => (OpCode::Ping, p, Owned::Ping(p.clone())),
        Control::Pong(p) => (OpCode::Pong, p, Owned::Pong(p.clone())),
    };
    assert!(p.len() <= 125, "control payload over 125 bytes in a plan");
    (
        FrameSpec {
            fin: true,
            opcode,
            payload: p.clone(),
        },
        m,
    )
}

/// Turns a plan into frames and the messages a decoder must hand out for them, in order.
/// `close`, if given, ends the stream with a close frame `(code, reason)`.
pub fn plan_frames(items: &[Planned], close: Option<(u16, &str)>) -> (Vec<FrameSpec>, Vec<Owned>) {
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    for item in items {
        match item {
            Planned::Control(c) => {
                let (f, m) = control_frame(c);
                frames.push(f);
                expected.push(m);
            }
            Planned::Data {
                text,
                payload,
                splits,
                controls,
            } => {
                let bounds = boundaries(payload.len(), splits);
                let mut start = 0;
                let n = bounds.len();
                // Controls after the last fragment come out after the message itself.
                let mut after_message = Vec::new();
                for (idx, &end) in bounds.iter().enumerate() {
                    let opcode = match (idx, text) {
                        (0, true) => OpCode::Text,
                        (0, false) => OpCode::Binary,
                        _ => OpCode::Continuation,
                    };
                    frames.push(FrameSpec {
                        fin: idx + 1 == n,
                        opcode,
                        payload: payload[start..end].to_vec(),
                    });
                    start = end;
                    for (after, c) in controls {
                        if (*after).min(n - 1) == idx {
                            let (f, m) = control_frame(c);
                            frames.push(f);
                            if idx + 1 == n {
                                after_message.push(m);
                            } else {
                                expected.push(m);
                            }
                        }
                    }
                }
                expected.push(if *text {
                    Owned::Text(String::from_utf8(payload.clone()).expect("text plan is UTF-8"))
                } else {
                    Owned::Binary(payload.clone())
                });
                expected.append(&mut after_message);
            }
        }
    }
    if let Some((code, reason)) = close {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        frames.push(FrameSpec {
            fin: true,
            opcode: OpCode::Close,
            payload,
        });
        expected.push(Owned::Close(Some((code, reason.to_owned()))));
    }
    (frames, expected)
}

/// A tiny deterministic generator for masking keys (xorshift64), so a seed reproduces a
/// stream exactly.
#[derive(Debug, Clone)]
pub struct KeyGen(u64);

impl KeyGen {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Self {
        KeyGen(seed | 1)
    }

    /// The next 4-byte key.
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x as u32).to_le_bytes()
    }
}

/// Encodes one frame as the peer of a decoder in `role` would send it: masked with a key
/// from `keys` when the decoder is a server (client frames, via `encode_client_frame`),
/// unmasked when it is a client.
pub fn encode_frame_for(role: Role, f: &FrameSpec, keys: &mut KeyGen, out: &mut Vec<u8>) {
    match role {
        Role::Server => volley::proto::encode::encode_client_frame(
            f.opcode,
            f.fin,
            &f.payload,
            keys.next_key(),
            out,
        ),
        Role::Client => {
            out.extend_from_slice(&encode_header(
                f.fin,
                f.opcode,
                f.payload.len() as u64,
                None,
            ));
            out.extend_from_slice(&f.payload);
        }
    }
}

/// Encodes frames for a decoder in `role` (see [`encode_frame_for`]).
pub fn encode_frames(role: Role, frames: &[FrameSpec], key_seed: u64) -> Vec<u8> {
    let mut keys = KeyGen::new(key_seed);
    let mut out = Vec::new();
    for f in frames {
        encode_frame_for(role, f, &mut keys, &mut out);
    }
    out
}

/// A byte-level change to a valid stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// XOR the byte at `pos` (modulo the length) with `mask` (0 means 1).
    Flip {
        /// Position, taken modulo the length.
        pos: usize,
        /// Bits to flip.
        mask: u8,
    },
    /// Insert `byte` at `pos` (modulo length + 1).
    Insert {
        /// Position, taken modulo the length + 1.
        pos: usize,
        /// The new byte.
        byte: u8,
    },
    /// Delete the byte at `pos` (modulo the length).
    Delete {
        /// Position, taken modulo the length.
        pos: usize,
    },
    /// Cut the stream at `len` (modulo length + 1).
    Truncate {
        /// New length, taken modulo the length + 1.
        len: usize,
    },
}

/// Applies mutations in order. Positions wrap, so any value is usable.
pub fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let n = bytes.len();
        match *m {
            Mutation::Flip { pos, mask } if n > 0 => bytes[pos % n] ^= mask.max(1),
            Mutation::Insert { pos, byte } => bytes.insert(pos % (n + 1), byte),
            Mutation::Delete { pos } if n > 0 => {
                bytes.remove(pos % n);
            }
            Mutation::Truncate { len } => bytes.truncate(len % (n + 1)),
            _ => {}
        }
    }
}

/// What the handshake path made of a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// No complete head yet.
    Partial,
    /// Rejected with this error (its status is 4xx).
    Rejected(HandshakeError),
    /// Accepted.
    Accepted {
        /// The client's `Sec-WebSocket-Key`.
        key: String,
        /// Head length found by the scanner.
        scanned_len: usize,
        /// Head length reported by `parse_request` (`Request::head_len`).
        parsed_len: usize,
    },
}

fn check_rejection(e: HandshakeError) -> Handshake {
    let status = e.status();
    assert!((400..500).contains(&status), "{e:?} answered with {status}");
    assert!(!e.reason().is_empty());
    let mut out = Vec::new();
    e.write_response(&mut out);
    let text = String::from_utf8(out).expect("responses are ASCII");
    assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text:?}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text:?}");
    assert!(text.contains("\r\n\r\n"), "{text:?}");
    Handshake::Rejected(e)
}

/// Feeds a request head to [`HeadScanner::find_end`] in reads ending at `cuts` (the buffer
/// grows, as a runtime's would), then parses and validates the head it finds.
///
/// # Panics
/// On any broken invariant: a head end that is not the first `\r\n\r\n`, a head over
/// `max_head` accepted, a rejection that is not 4xx, a malformed error response, an
/// accepted key that is not base64 of 16 bytes.
pub fn drive_handshake(bytes: &[u8], cuts: &[usize], max_head: usize) -> Handshake {
    let mut scanner = HeadScanner::new();
    let first_end = memchr::memmem::find(bytes, b"\r\n\r\n").map(|i| i + 4);
    for end in boundaries(bytes.len(), cuts) {
        let buf = &bytes[..end];
        match scanner.find_end(buf, max_head) {
            Err(e) => {
                assert_eq!(e, HandshakeError::HeadTooLarge, "scanner error {e:?}");
                let complete_in_limit = first_end.is_some_and(|n| n <= end && n <= max_head);
                assert!(!complete_in_limit, "431 for a head that fits");
                assert!(end > max_head, "431 with only {end} bytes");
                return check_rejection(e);
            }
            Ok(Status::Partial) => {
                assert!(
                    end <= max_head,
                    "Partial with {end} bytes, limit {max_head}"
                );
                assert!(
                    first_end.is_none_or(|n| n > end),
                    "scanner missed the end of the head"
                );
            }
            Ok(Status::Complete(n)) => {
                assert_eq!(
                    Some(n),
                    first_end,
                    "scanner end is not the first blank line"
                );
                assert!(n <= end && n <= max_head);
                return finish_handshake(&buf[..n]);
            }
        }
    }
    Handshake::Partial
}

fn finish_handshake(head: &[u8]) -> Handshake {
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let req = match parse_request(head, &mut headers) {
        Ok(r) => r,
        Err(e) => return check_rejection(e),
    };
    assert!(req.head_len <= head.len());
    // Every accessor must cope with whatever parsed.
    let _ = (req.origin(), req.host(), req.is_upgrade());
    let _ = (req.protocols().count(), req.extensions().count());
    let _ = req.headers().count();
    let key = match req.validate() {
        Ok(k) => k,
        Err(e) => return check_rejection(e),
    };
    assert_eq!(req.method, "GET");
    assert!(req.minor_version >= 1);
    assert!(
        key.len() == 24
            && key.ends_with("==")
            && key[..22]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'),
        "accepted key {key:?} is not base64 of 16 bytes"
    );
    let accept = AcceptKey::from_key(key.as_bytes());
    let mut out = Vec::new();
    write_accept_response(&mut out, &accept, None, &[]).expect("no extra headers");
    assert!(out.starts_with(b"HTTP/1.1 101 "));
    Handshake::Accepted {
        key: key.to_owned(),
        scanned_len: head.len(),
        parsed_len: req.head_len,
    }
}

// ---- the connection machine (`proto::conn`) under operation sequences ----

/// One step of a connection's life, as a test or fuzzer drives it.
#[derive(Clone, Debug)]
pub enum ConnOp {
    /// Raw bytes from the peer.
    Read(Vec<u8>),
    /// The request head: a valid upgrade (`true`) or a bad request.
    Head(bool),
    /// A masked client frame (control payloads cut to 125 bytes), `times` times over in
    /// one read (delivered only while the machine wants to read).
    Frame {
        /// Its opcode.
        opcode: OpCode,
        /// The FIN bit.
        fin: bool,
        /// Its payload.
        payload: Vec<u8>,
        /// Copies in the read (at least 1).
        times: u8,
    },
    /// The clock moves on by this many milliseconds and due deadlines fire.
    Tick(u32),
    /// The peer shuts its write side.
    Eof,
    /// The socket fails.
    Error,
    /// The application closes with this code.
    Close(u16),
    /// The peer reads up to this many queued bytes; the caller reports the flush.
    Flush(u32),
    /// Output for the connection found its queue over the budget (close policy).
    SlowConsumer,
}

/// What the caller of a machine saw, for [`drive_conn`]'s checks.
#[derive(Debug)]
struct ConnEv {
    queue: usize,
    budget: usize,
    held: volley::proto::conn::Held,
    opened: u32,
    closes: u32,
    closed_machine: bool,
    /// The echo handler drops over the budget (`true`) or asks for a slow-consumer close.
    drop_policy: bool,
    largest_frame: usize,
}

use volley::proto::conn::Head;

impl volley::proto::conn::Events<u32> for ConnEv {
    fn queued(&self) -> usize {
        self.queue
    }
    fn at_frame_boundary(&self) -> bool {
        true
    }
    fn send(&mut self, header: &[u8], payload: &[u8]) {
        let close = header[0] & 0x0f == OpCode::Close.as_u8();
        assert!(
            close || self.queue <= self.budget,
            "a {:#x} frame queued over the budget ({} > {})",
            header[0],
            self.queue,
            self.budget
        );
        let n = header.len() + payload.len();
        self.largest_frame = self.largest_frame.max(n);
        self.queue += n;
    }
    fn discard(&mut self) {
        self.queue = 0;
    }
    fn held(&mut self) -> &mut volley::proto::conn::Held {
        &mut self.held
    }
    fn request(&mut self, head: &[u8]) -> Head<u32> {
        assert!(!self.closed_machine);
        if head.starts_with(b"GET ") {
            self.queue += 129;
            Head::Open(7)
        } else {
            self.queue += 80;
            Head::Answered
        }
    }
    fn refuse(&mut self, _e: &HandshakeError) {
        self.queue += 80;
    }
    fn open(&mut self, app: &mut u32) -> volley::proto::conn::Verdict {
        assert_eq!(*app, 7);
        self.opened += 1;
        assert_eq!(self.opened, 1, "opened twice");
        volley::proto::conn::Verdict::Continue
    }
    fn message(&mut self, app: &mut u32, msg: Decoded<'_>) -> volley::proto::conn::Verdict {
        assert_eq!(*app, 7);
        assert_eq!(self.closes, 0, "a message after on_close");
        let len = match msg {
            Decoded::Text(t) => t.len(),
            Decoded::Binary(b) => b.len(),
            other => panic!("{other:?} reached the handler"),
        };
        if self.queue > self.budget {
            return if self.drop_policy {
                volley::proto::conn::Verdict::Continue
            } else {
                volley::proto::conn::Verdict::SlowConsumer
            };
        }
        let h = encode_header(true, OpCode::Binary, len as u64, None);
        self.queue += h.len() + len;
        self.largest_frame = self.largest_frame.max(h.len() + len);
        volley::proto::conn::Verdict::Continue
    }
    fn close(&mut self, app: u32, _code: volley::CloseCode, _reason: &str) {
        assert_eq!(app, 7);
        self.closes += 1;
        assert_eq!(self.closes, 1, "on_close twice");
    }
}

/// Replays `ops` against one `proto::conn::Conn` and checks, after every step:
/// no panic; `on_open` at most once and `on_close` exactly once for an opened connection
/// that ended (at most once before); no handler call after `on_close`; nothing but a close
/// frame queued over the write budget, so the queue never holds more than the budget plus
/// one frame plus a close frame; the worker's incomplete-message count equals the
/// machine's share and is back to 0 once it ended; a closed machine reports no deadline,
/// and a deadline that fires moves the machine on (no timer that fires for ever).
/// `small` picks small limits and budgets so that every bound is reachable.
pub fn drive_conn(ops: &[ConnOp], small: bool, drop_policy: bool) {
    use std::time::{Duration, Instant};
    use volley::proto::conn::{Conn, ConnConfig, Events, Held};
    let cfg = if small {
        ConnConfig {
            limits: Limits {
                max_frame: 4096,
                max_message: 8192,
            },
            max_head: 512,
            write_budget: 1024,
            handshake_timeout: Duration::from_millis(1000),
            idle_timeout: Some(Duration::from_millis(5000)),
            ping_interval: Some(Duration::from_millis(700)),
            pong_timeout: Duration::from_millis(300),
            close_timeout: Duration::from_millis(200),
            message_timeout: Some(Duration::from_millis(1500)),
        }
    } else {
        ConnConfig::default()
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut ev = ConnEv {
        queue: 0,
        budget: cfg.write_budget,
        held: Held::new(if small { 3000 } else { 64 << 20 }),
        opened: 0,
        closes: 0,
        closed_machine: false,
        drop_policy,
        largest_frame: 0,
    };
    let mut conn: Conn<u32> = Conn::new(now);
    let mut keys = KeyGen::new(0x5eed);
    // A close frame holds at most 2 + 125 bytes.
    let bound = |ev: &ConnEv| cfg.write_budget + ev.largest_frame + 127;
    for op in ops {
        match op {
            ConnOp::Read(bytes) => {
                let mut b = bytes.clone();
                conn.handle_read(now, &mut b, &cfg, &mut ev);
            }
            ConnOp::Head(valid) => {
                let mut b = if *valid {
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n".to_vec()
                } else {
                    b"BREW / HTCPCP/1.0\r\n\r\n".to_vec()
                };
                conn.handle_read(now, &mut b, &cfg, &mut ev);
            }
            ConnOp::Frame {
                opcode,
                fin,
                payload,
                times,
            } => {
                let mut payload = payload.clone();
                if opcode.is_control() {
                    payload.truncate(125);
                }
                let spec = FrameSpec {
                    fin: *fin || opcode.is_control(),
                    opcode: *opcode,
                    payload,
                };
                let mut b = Vec::new();
                for _ in 0..(*times).max(1) {
                    encode_frame_for(Role::Server, &spec, &mut keys, &mut b);
                }
                if conn.wants_read(ev.queued(), &cfg) {
                    conn.handle_read(now, &mut b, &cfg, &mut ev);
                }
            }
            ConnOp::Tick(ms) => {
                now += Duration::from_millis(*ms as u64);
                let mut fired = 0;
                while conn.handle_timeout(now, &cfg, &mut ev).is_some() {
                    fired += 1;
                    assert!(fired <= 4, "a deadline keeps firing at the same instant");
                }
                if let Some(d) = conn.poll_timeout(&cfg) {
                    assert!(d > now, "a passed deadline did not fire");
                }
            }
            ConnOp::Eof => conn.handle_eof(now, &mut ev),
            ConnOp::Error => conn.handle_error(&mut ev),
            ConnOp::Close(code) => {
                conn.close(now, volley::CloseCode(*code % 1000 + 3000), "", &mut ev)
            }
            ConnOp::Flush(n) => {
                conn.poll_transmit(&cfg, &mut ev);
                ev.queue = ev.queue.saturating_sub(*n as usize);
                conn.handle_flushed(ev.queue);
            }
            ConnOp::SlowConsumer => {
                conn.handle_slow_consumer(now, &mut ev);
            }
        }
        assert!(
            ev.queue <= bound(&ev),
            "queue {} over budget {} + one frame {} + a close frame",
            ev.queue,
            cfg.write_budget,
            ev.largest_frame
        );
        assert_eq!(ev.held.bytes, conn.held(), "the worker's count drifted");
        assert!(
            ev.held.bytes <= ev.held.max,
            "incomplete messages over the budget"
        );
        if conn.is_closed() {
            ev.closed_machine = true;
            assert_eq!(ev.closes, ev.opened, "ended without on_close exactly once");
            assert_eq!(ev.held.bytes, 0);
            assert_eq!(conn.poll_timeout(&cfg), None);
        }
        assert!(ev.closes <= 1);
    }
}
