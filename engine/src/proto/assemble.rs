//! Message assembly: bytes in, complete messages out (RFC 6455 sections 5.4-5.6).
//!
//! [`Decoder::decode`] takes the bytes received so far, unmasks them **in place**, and returns
//! how many it consumed plus, at most, one message:
//!
//! * A message that is one frame and lies wholly in the input is handed out as a borrowed,
//!   unmasked slice of the input. No copy.
//! * A fragmented message, or a frame whose payload spans several reads, is streamed into an
//!   assembly buffer as its bytes arrive (unmasked with a rolling key phase, text validated
//!   as it comes so invalid UTF-8 fails on the fragment that makes it invalid). The buffer is
//!   allocated when such a message starts and released when it has been delivered, so an idle
//!   connection holds none.
//! * The bytes of an incomplete frame *header*, or of an incomplete control frame (at most
//!   2 + 4 + 125 bytes), are not consumed: the caller keeps them and presents them again with
//!   more bytes behind them.
//!
//! Control frames may arrive between the fragments of a message; they are returned at once
//! and leave the message in progress untouched.
//!
//! # Examples
//! ```
//! use volley::proto::{Decoded, Decoder, Limits, Role};
//! // RFC 6455 section 5.7: a masked "Hello" from a client.
//! let mut bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
//! let mut dec = Decoder::new(Role::Server, Limits::default());
//! let step = dec.decode(&mut bytes).unwrap();
//! assert_eq!(step.consumed, 11);
//! assert_eq!(step.message, Some(Decoded::Text("Hello")));
//! ```

use super::close::{parse_close_payload, CloseFrame};
use super::deflate::{InflateError, Inflater};
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode};
use super::mask::{apply_mask, unmask_payload};
use super::utf8::{self, Utf8Stream};
use super::Status;

/// Which side of the connection this decoder is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Decodes client frames: they must be masked.
    Server,
    /// Decodes server frames: they must not be masked.
    Client,
}

/// Size limits enforced while decoding, before any buffer grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted (1009 beyond it).
    pub max_frame: usize,
    /// Largest message accepted, summed over its fragments (1009 beyond it).
    pub max_message: usize,
}

impl Default for Limits {
    /// 16 MiB frames and messages.
    fn default() -> Self {
        Limits {
            max_frame: 16 << 20,
            max_message: 16 << 20,
        }
    }
}

/// What the decoder hands out: a complete message or a control frame, borrowed from the input
/// or the assembly buffer. The embedding API's [`crate::Message`] is its data part (`Text`,
/// `Binary`), named apart so a user never meets two types of the same name; `From` and
/// `TryFrom` convert between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A text message, valid UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping with its application data.
    Ping(&'a [u8]),
    /// A pong with its application data.
    Pong(&'a [u8]),
    /// A close frame; `None` when it carried no status code (reported as 1005).
    Close(Option<CloseFrame<'a>>),
}

/// The result of one [`Decoder::decode`] call.
#[derive(Debug, PartialEq, Eq)]
pub struct Step<'a> {
    /// Bytes of the input consumed. The caller drops them and presents the rest again.
    pub consumed: usize,
    /// A complete message, if one ended within the consumed bytes.
    pub message: Option<Decoded<'a>>,
}

/// A message being assembled from several frames or several reads.
#[derive(Debug)]
struct Assembly {
    /// Text or Binary.
    opcode: OpCode,
    /// Compressed (RSV1 on its first frame, permessage-deflate): `buf` holds the compressed
    /// payload until the last frame, then the inflated message.
    compressed: bool,
    /// Unmasked payload so far.
    buf: Vec<u8>,
    utf8: Utf8Stream,
    /// Payload bytes of the current frame not received yet.
    frame_remaining: u64,
    /// The current frame is the message's last.
    frame_fin: bool,
    mask: Option<[u8; 4]>,
    phase: u8,
    /// The message is complete and was handed out; drop it on the next call.
    delivered: bool,
}

/// Per-connection frame decoder and message assembler: [`Frames`] and the limits it
/// enforces. 32 bytes while idle.
#[derive(Debug)]
pub struct Decoder {
    frames: Frames,
    role: Role,
    /// A close frame was decoded (or the decoder released): nothing more is.
    closed: bool,
    limits: Limits,
}

/// A decoder's per-connection state without its role, limits and closed flag (8 bytes
/// while idle): what a server connection keeps in its slab entry, the limits being its
/// worker's ([`super::conn::ConnConfig`]) and the flag the machine's own.
#[derive(Debug)]
pub(crate) struct Frames {
    asm: Option<Box<Assembly>>,
}

impl Decoder {
    /// A decoder for `role` with the given limits.
    pub fn new(role: Role, limits: Limits) -> Self {
        Decoder {
            frames: Frames::new(),
            role,
            closed: false,
            limits,
        }
    }

    /// Whether a message is being assembled (its buffer is allocated).
    pub fn is_assembling(&self) -> bool {
        self.frames.is_assembling()
    }

    /// Bytes held by the assembly buffer (0 while idle).
    pub fn buffered_capacity(&self) -> usize {
        self.frames.buffered_capacity()
    }

    /// Frees the assembly buffer of a message that will never be finished (the connection
    /// stops reading). The decoder must not be used afterwards.
    pub fn release(&mut self) {
        self.frames.release();
        self.closed = true;
    }

    /// Decodes from the start of `buf`, unmasking in place. See the module docs.
    ///
    /// Call it again on `&mut buf[step.consumed..]` while it consumes bytes or yields
    /// messages; `consumed == 0` with no message means "need more bytes". RSV1 is refused
    /// (no extension negotiated); see [`Decoder::decode_with`].
    ///
    /// # Errors
    /// Any [`ProtocolError`]; the connection must then be closed with
    /// [`ProtocolError::close_code`]. The decoder must not be used after an error.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Step<'a>, ProtocolError> {
        self.decode_with(buf, None)
    }

    /// [`Decoder::decode`] on a connection that negotiated permessage-deflate when `inflater`
    /// is given: a message whose first frame has RSV1 is gathered compressed (its compressed
    /// size bounded by `max_message`), then inflated when its last frame arrives, the output
    /// bounded by `max_message` chunk by chunk ([`Inflater::inflate`]). The inflater is the
    /// worker's, shared by its connections: each message is inflated from a reset state
    /// (`client_no_context_takeover`).
    ///
    /// # Errors
    /// As [`Decoder::decode`], and: RSV1 without an inflater ([`ProtocolError::ReservedBits`]),
    /// on a control frame or a continuation (1002); a message that inflates past the limit or
    /// the ratio cap (1009); one that is not a deflate stream (1007 text, 1002 binary).
    pub fn decode_with<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        inflater: Option<&mut Inflater>,
    ) -> Result<Step<'a>, ProtocolError> {
        self.frames
            .decode_with(buf, inflater, self.limits, self.role, &mut self.closed)
    }
}

impl Frames {
    pub(crate) fn new() -> Self {
        Frames { asm: None }
    }

    pub(crate) fn is_assembling(&self) -> bool {
        self.asm.as_ref().is_some_and(|a| !a.delivered)
    }

    pub(crate) fn buffered_capacity(&self) -> usize {
        self.asm.as_ref().map_or(0, |a| a.buf.capacity())
    }

    /// Whether no message is being assembled and none delivered is still held.
    pub(crate) fn holds_nothing(&self) -> bool {
        self.asm.is_none()
    }

    /// Frees the assembly buffer (the caller marks itself closed: nothing more is decoded).
    pub(crate) fn release(&mut self) {
        self.asm = None;
    }

    /// Frees the buffer of a message already handed out (which the next call would free).
    pub(crate) fn drop_delivered(&mut self) {
        if self.asm.as_ref().is_some_and(|a| a.delivered) {
            self.asm = None;
        }
    }

    /// [`Decoder::decode_with`] under `limits`, for `role`; `closed` is set once a close
    /// frame is decoded (and data after it refused).
    pub(crate) fn decode_with<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        mut inflater: Option<&mut Inflater>,
        limits: Limits,
        role: Role,
        closed: &mut bool,
    ) -> Result<Step<'a>, ProtocolError> {
        if self.asm.as_ref().is_some_and(|a| a.delivered) {
            self.asm = None;
        }
        if self.asm.as_ref().is_some_and(|a| a.frame_remaining > 0) {
            return self.stream_payload(buf, 0, inflater, limits);
        }
        let (h, hlen) = match FrameHeader::parse(buf)? {
            Status::Complete(x) => x,
            Status::Partial => {
                return Ok(Step {
                    consumed: 0,
                    message: None,
                })
            }
        };
        if *closed {
            return Err(ProtocolError::DataAfterClose);
        }
        let rsv1 = h.rsv & 0b100 != 0;
        if h.rsv & 0b011 != 0 || (rsv1 && inflater.is_none()) {
            return Err(ProtocolError::ReservedBits);
        }
        if rsv1 && h.opcode.is_control() {
            return Err(ProtocolError::CompressedControl);
        }
        if rsv1 && h.opcode == OpCode::Continuation {
            return Err(ProtocolError::CompressedContinuation);
        }
        match (role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }
        // Control frames are bounded at 125 bytes by the header parser; the limit is for data.
        if !h.opcode.is_control() && h.payload_len > limits.max_frame as u64 {
            return Err(ProtocolError::FrameTooBig {
                len: h.payload_len,
                max: limits.max_frame,
            });
        }
        // Bounded by max_frame, which is a usize: the cast below cannot truncate.
        let len = h.payload_len as usize;
        if h.opcode.is_control() {
            let Some(frame) = buf.get_mut(..hlen + len) else {
                return Ok(Step {
                    consumed: 0,
                    message: None,
                });
            };
            let payload = &mut frame[hlen..];
            if let Some(k) = h.mask {
                apply_mask(payload, k, 0);
            }
            let message = match h.opcode {
                OpCode::Ping => Decoded::Ping(payload),
                OpCode::Pong => Decoded::Pong(payload),
                _ => {
                    *closed = true;
                    Decoded::Close(parse_close_payload(payload)?)
                }
            };
            return Ok(Step {
                consumed: hlen + len,
                message: Some(message),
            });
        }
        let in_progress = self.asm.is_some();
        match (h.opcode, in_progress) {
            (OpCode::Continuation, false) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, true) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            _ => {}
        }
        let so_far = self.asm.as_ref().map_or(0, |a| a.buf.len()) as u64;
        if so_far + h.payload_len > limits.max_message as u64 {
            return Err(ProtocolError::MessageTooBig {
                len: so_far + h.payload_len,
                max: limits.max_message,
            });
        }
        // A whole compressed message in one frame, wholly in the input: inflated straight
        // from it.
        if let (true, true, false, true, Some(inf)) = (
            rsv1,
            h.fin,
            in_progress,
            buf.len() - hlen >= len,
            inflater.as_deref_mut(),
        ) {
            let payload = &mut buf[hlen..hlen + len];
            if let Some(k) = h.mask {
                apply_mask(payload, k, 0);
            }
            let asm = self.asm.insert(Assembly::boxed(h.opcode, true));
            asm.delivered = true;
            let message = inflate_into(inf, payload, asm, limits.max_message)?;
            return Ok(Step {
                consumed: hlen + len,
                message: Some(message),
            });
        }
        // Fast path: a whole message in one frame, wholly in the input. Borrow it in place.
        if h.fin && !in_progress && buf.len() - hlen >= len {
            let payload = &mut buf[hlen..hlen + len];
            let message = match (h.mask, h.opcode) {
                (Some(k), OpCode::Text) => Decoded::Text(utf8::unmask_text(payload, k)?),
                (None, OpCode::Text) => Decoded::Text(utf8::validate(payload)?),
                (Some(k), _) => {
                    unmask_payload(payload, k);
                    Decoded::Binary(payload)
                }
                (None, _) => Decoded::Binary(payload),
            };
            return Ok(Step {
                consumed: hlen + len,
                message: Some(message),
            });
        }
        let asm = self
            .asm
            .get_or_insert_with(|| Assembly::boxed(h.opcode, rsv1));
        asm.frame_remaining = h.payload_len;
        asm.frame_fin = h.fin;
        asm.mask = h.mask;
        asm.phase = 0;
        if len == 0 {
            return self.finish_frame(hlen, inflater, limits);
        }
        self.stream_payload(&mut buf[hlen..], hlen, inflater, limits)
    }

    /// Moves the available bytes of the current frame's payload into the assembly buffer.
    /// `already` is what the caller consumed before `buf` (the header), added to `consumed`.
    fn stream_payload<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        already: usize,
        inflater: Option<&mut Inflater>,
        limits: Limits,
    ) -> Result<Step<'a>, ProtocolError> {
        let asm = self.asm.as_mut().expect("stream_payload needs an assembly");
        let n = (asm.frame_remaining.min(buf.len() as u64)) as usize;
        let chunk = &mut buf[..n];
        if let Some(k) = asm.mask {
            asm.phase = apply_mask(chunk, k, asm.phase as usize) as u8;
        }
        if asm.opcode == OpCode::Text && !asm.compressed {
            asm.utf8.feed(chunk)?;
        }
        asm.buf.extend_from_slice(chunk);
        asm.frame_remaining -= n as u64;
        if asm.frame_remaining > 0 {
            return Ok(Step {
                consumed: already + n,
                message: None,
            });
        }
        self.finish_frame(already + n, inflater, limits)
    }

    /// The current frame is complete: hand out the message if it was the last fragment.
    fn finish_frame(
        &mut self,
        consumed: usize,
        inflater: Option<&mut Inflater>,
        limits: Limits,
    ) -> Result<Step<'_>, ProtocolError> {
        let asm = self.asm.as_mut().expect("finish_frame needs an assembly");
        if !asm.frame_fin {
            return Ok(Step {
                consumed,
                message: None,
            });
        }
        asm.delivered = true;
        if asm.compressed {
            // RSV1 was accepted on the first frame only with an inflater, and a message's
            // frames all arrive through the same connection's calls.
            let inf = inflater.ok_or(ProtocolError::ReservedBits)?;
            let compressed = std::mem::take(&mut asm.buf);
            let message = inflate_into(inf, &compressed, asm, limits.max_message)?;
            return Ok(Step {
                consumed,
                message: Some(message),
            });
        }
        let message = if asm.opcode == OpCode::Text {
            asm.utf8.finish()?;
            // Validated piece by piece already; this second pass only produces the `&str`.
            Decoded::Text(utf8::validate(&asm.buf)?)
        } else {
            Decoded::Binary(&asm.buf)
        };
        Ok(Step {
            consumed,
            message: Some(message),
        })
    }
}

impl Assembly {
    fn boxed(opcode: OpCode, compressed: bool) -> Box<Assembly> {
        Box::new(Assembly {
            opcode,
            compressed,
            buf: Vec::new(),
            utf8: Utf8Stream::new(),
            frame_remaining: 0,
            frame_fin: false,
            mask: None,
            phase: 0,
            delivered: false,
        })
    }
}

/// Inflates a compressed message's payload into `asm.buf` (bounded by `max`) and hands it
/// out, text validated whole.
fn inflate_into<'a>(
    inf: &mut Inflater,
    compressed: &[u8],
    asm: &'a mut Assembly,
    max: usize,
) -> Result<Decoded<'a>, ProtocolError> {
    let text = asm.opcode == OpCode::Text;
    if let Err(e) = inf.inflate(compressed, &mut asm.buf, max) {
        asm.buf = Vec::new();
        return Err(match e {
            InflateError::TooBig => ProtocolError::InflatedTooBig { max },
            InflateError::Ratio => ProtocolError::InflateRatio,
            InflateError::Corrupt if text => ProtocolError::CorruptCompressedText,
            InflateError::Corrupt => ProtocolError::CorruptCompressedBinary,
        });
    }
    Ok(if text {
        Decoded::Text(utf8::validate(&asm.buf)?)
    } else {
        Decoded::Binary(&asm.buf)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::encode::encode_client_frame;
    use crate::proto::CloseCode;

    /// An owned copy of a message, to collect results across calls.
    #[derive(Debug, PartialEq, Eq, Clone)]
    pub(crate) enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    pub(crate) fn own(m: Decoded<'_>) -> Owned {
        match m {
            Decoded::Text(t) => Owned::Text(t.to_owned()),
            Decoded::Binary(b) => Owned::Binary(b.to_vec()),
            Decoded::Ping(b) => Owned::Ping(b.to_vec()),
            Decoded::Pong(b) => Owned::Pong(b.to_vec()),
            Decoded::Close(c) => Owned::Close(c.map(|c| (c.code.0, c.reason.to_owned()))),
        }
    }

    /// Feeds `wire` in pieces of `chunk` bytes, keeping unconsumed bytes like a runtime would.
    pub(crate) fn feed_chunked(
        dec: &mut Decoder,
        wire: &[u8],
        chunk: usize,
    ) -> Result<Vec<Owned>, ProtocolError> {
        feed_chunked_with(dec, wire, chunk, None)
    }

    /// [`feed_chunked`] on a connection with permessage-deflate (`inf` given).
    pub(crate) fn feed_chunked_with(
        dec: &mut Decoder,
        wire: &[u8],
        chunk: usize,
        mut inf: Option<&mut Inflater>,
    ) -> Result<Vec<Owned>, ProtocolError> {
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            pending.extend_from_slice(piece);
            let mut pos = 0;
            loop {
                let step = dec.decode_with(&mut pending[pos..], inf.as_deref_mut())?;
                pos += step.consumed;
                match step.message {
                    Some(m) => out.push(own(m)),
                    None if step.consumed == 0 => break,
                    None => {}
                }
            }
            pending.drain(..pos);
        }
        assert!(
            pending.len() < 2 + 4 + 125 + 8,
            "kept too much: {}",
            pending.len()
        );
        Ok(out)
    }

    fn client(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_client_frame(op, fin, payload, [0x37, 0xfa, 0x21, 0x3d], &mut v);
        v
    }

    fn server_dec() -> Decoder {
        Decoder::new(Role::Server, Limits::default())
    }

    #[test]
    fn rfc_examples_single_frames() {
        // Unmasked "Hello" is refused by a server, accepted by a client.
        let mut unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            server_dec().decode(&mut unmasked.clone()),
            Err(ProtocolError::UnmaskedClientFrame)
        );
        let mut c = Decoder::new(Role::Client, Limits::default());
        let step = c.decode(&mut unmasked).unwrap();
        assert_eq!(step.message, Some(Decoded::Text("Hello")));
        // Masked "Hello".
        let mut masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            server_dec().decode(&mut masked).unwrap().message,
            Some(Decoded::Text("Hello"))
        );
        let mut c = Decoder::new(Role::Client, Limits::default());
        assert_eq!(
            c.decode(&mut masked.clone()),
            Err(ProtocolError::MaskedServerFrame)
        );
        // Fragmented "Hel" + "lo", unmasked, client side.
        let mut frag = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let mut c = Decoder::new(Role::Client, Limits::default());
        assert_eq!(
            feed_chunked(&mut c, &frag, 100).unwrap(),
            vec![Owned::Text("Hello".into())]
        );
        let _ = &mut frag;
        // Unmasked ping and masked pong "Hello".
        let mut ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let mut c = Decoder::new(Role::Client, Limits::default());
        assert_eq!(
            c.decode(&mut ping).unwrap().message,
            Some(Decoded::Ping(b"Hello"))
        );
        let mut pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            server_dec().decode(&mut pong).unwrap().message,
            Some(Decoded::Pong(b"Hello"))
        );
        // 256 bytes and 64 KiB binary in single frames.
        for n in [256usize, 65536] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut wire = client(OpCode::Binary, true, &payload);
            let mut d = server_dec();
            let wire_len = wire.len();
            let step = d.decode(&mut wire).unwrap();
            assert_eq!(step.consumed, wire_len);
            assert_eq!(step.message, Some(Decoded::Binary(&payload[..])));
            assert!(!d.is_assembling());
        }
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        let mut wire = client(OpCode::Text, false, "κό".as_bytes());
        wire.extend(client(OpCode::Ping, true, b"p"));
        wire.extend(client(OpCode::Continuation, false, "σμ".as_bytes()));
        wire.extend(client(OpCode::Continuation, true, "ε".as_bytes()));
        wire.extend(client(OpCode::Binary, true, &[7u8; 300]));
        wire.extend(client(OpCode::Close, true, &[0x03, 0xE8, b'o', b'k']));
        let expect = vec![
            Owned::Ping(b"p".to_vec()),
            Owned::Text("κόσμε".into()),
            Owned::Binary(vec![7u8; 300]),
            Owned::Close(Some((1000, "ok".into()))),
        ];
        for chunk in 1..=wire.len() {
            let mut d = server_dec();
            assert_eq!(
                feed_chunked(&mut d, &wire, chunk).unwrap(),
                expect,
                "chunk {chunk}"
            );
            assert_eq!(d.buffered_capacity(), 0, "idle decoder must hold no buffer");
        }
    }

    #[test]
    fn assembly_buffer_is_released_after_delivery() {
        let mut d = server_dec();
        let wire = client(OpCode::Binary, true, &[1u8; 1000]);
        // Deliver in two reads: the payload is streamed into the assembly buffer.
        let out = feed_chunked(&mut d, &wire, 600).unwrap();
        assert_eq!(out, vec![Owned::Binary(vec![1u8; 1000])]);
        // Released on the next call.
        let mut empty: [u8; 0] = [];
        let step = d.decode(&mut empty).unwrap();
        assert_eq!(
            step,
            Step {
                consumed: 0,
                message: None
            }
        );
        assert_eq!(d.buffered_capacity(), 0);
    }

    #[test]
    fn fragmentation_errors() {
        let mut d = server_dec();
        let mut w = client(OpCode::Continuation, true, b"x");
        assert_eq!(d.decode(&mut w), Err(ProtocolError::UnexpectedContinuation));
        let mut w = client(OpCode::Text, false, b"a");
        w.extend(client(OpCode::Text, true, b"b"));
        assert_eq!(
            feed_chunked(&mut server_dec(), &w, 100),
            Err(ProtocolError::ExpectedContinuation)
        );
        let mut w = client(OpCode::Binary, false, b"a");
        w.extend(client(OpCode::Binary, true, b"b"));
        assert_eq!(
            feed_chunked(&mut server_dec(), &w, 100),
            Err(ProtocolError::ExpectedContinuation)
        );
    }

    #[test]
    fn header_level_errors_map_to_1002() {
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (vec![0xC1, 0x80, 0, 0, 0, 0], ProtocolError::ReservedBits),
            (
                vec![0x83, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedOpcode(3),
            ),
            (
                vec![0x8B, 0x80, 0, 0, 0, 0],
                ProtocolError::ReservedOpcode(0xB),
            ),
            (
                vec![0x09, 0x80, 0, 0, 0, 0],
                ProtocolError::FragmentedControl,
            ),
            (vec![0x89, 0xFE, 0, 126], ProtocolError::ControlTooLong),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                ProtocolError::InvalidLength,
            ),
            (vec![0x82, 0x00], ProtocolError::UnmaskedClientFrame),
        ];
        for (mut wire, want) in cases {
            let got = server_dec().decode(&mut wire).unwrap_err();
            assert_eq!(got, want);
            assert_eq!(got.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn limits_give_1009_before_any_allocation() {
        let limits = Limits {
            max_frame: 100,
            max_message: 150,
        };
        let mut d = Decoder::new(Role::Server, limits);
        // A header announcing a huge frame fails on the header alone.
        let mut w = crate::proto::frame::encode_header(true, OpCode::Binary, 1 << 40, Some([0; 4]))
            .to_vec();
        let e = d.decode(&mut w).unwrap_err();
        assert_eq!(
            e,
            ProtocolError::FrameTooBig {
                len: 1 << 40,
                max: 100
            }
        );
        assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG);
        assert_eq!(d.buffered_capacity(), 0);
        // Two 80-byte fragments: each frame fits, the message does not.
        let mut w = client(OpCode::Binary, false, &[0; 80]);
        w.extend(client(OpCode::Continuation, true, &[0; 80]));
        let e = feed_chunked(&mut Decoder::new(Role::Server, limits), &w, 1000).unwrap_err();
        assert_eq!(e, ProtocolError::MessageTooBig { len: 160, max: 150 });
    }

    #[test]
    fn invalid_utf8_fails_on_the_breaking_fragment() {
        // Autobahn 6.4.2-style: the bad code point is in the second fragment; the third never
        // needs to arrive for the error to be reported.
        let mut w = client(OpCode::Text, false, "κόσμε".as_bytes());
        w.extend(client(
            OpCode::Continuation,
            false,
            &[0xF4, 0x90, 0x80, 0x80],
        ));
        assert_eq!(
            feed_chunked(&mut server_dec(), &w, 1000),
            Err(ProtocolError::InvalidUtf8)
        );
        // And inside a single frame streamed over reads, on the read that breaks it.
        let mut payload = vec![b'a'; 100];
        payload[10] = 0xFF;
        let w = client(OpCode::Text, true, &payload);
        let mut d = server_dec();
        let mut first = w[..30].to_vec();
        assert_eq!(d.decode(&mut first), Err(ProtocolError::InvalidUtf8));
        // Unfinished code point at the end of the message.
        let w = client(OpCode::Text, true, &[b'a', 0xE2, 0x82]);
        assert_eq!(
            feed_chunked(&mut server_dec(), &w, 1000),
            Err(ProtocolError::InvalidUtf8)
        );
        // Split code points across fragments are fine.
        let s = "🎉".as_bytes();
        let mut w = client(OpCode::Text, false, &s[..1]);
        w.extend(client(OpCode::Continuation, false, &s[1..3]));
        w.extend(client(OpCode::Continuation, true, &s[3..]));
        assert_eq!(
            feed_chunked(&mut server_dec(), &w, 1000).unwrap(),
            vec![Owned::Text("🎉".into())]
        );
    }

    #[test]
    fn close_frames() {
        let mut w = client(OpCode::Close, true, &[]);
        assert_eq!(
            server_dec().decode(&mut w).unwrap().message,
            Some(Decoded::Close(None))
        );
        let mut w = client(OpCode::Close, true, &[0x03]);
        assert_eq!(
            server_dec().decode(&mut w),
            Err(ProtocolError::InvalidCloseCode(None))
        );
        let mut w = client(OpCode::Close, true, &1005u16.to_be_bytes());
        assert_eq!(
            server_dec().decode(&mut w),
            Err(ProtocolError::InvalidCloseCode(Some(1005)))
        );
        let mut w = client(OpCode::Close, true, &[0x03, 0xE8, 0xC0]);
        let e = server_dec().decode(&mut w).unwrap_err();
        assert_eq!(e.close_code(), CloseCode::INVALID_PAYLOAD);
        // Anything after a close is an error.
        let mut w = client(OpCode::Close, true, &[]);
        w.extend(client(OpCode::Text, true, b"late"));
        assert_eq!(
            feed_chunked(&mut server_dec(), &w, 1000),
            Err(ProtocolError::DataAfterClose)
        );
    }

    #[test]
    fn large_message_streams_through_small_reads() {
        let payload: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31) as u8).collect();
        let w = client(OpCode::Binary, true, &payload);
        let out = feed_chunked(&mut server_dec(), &w, 64 * 1024 + 7).unwrap();
        assert_eq!(out, vec![Owned::Binary(payload)]);
    }

    /// A compressed client frame: RSV1 on the first frame only, as RFC 7692 section 6.1 says.
    fn compressed_frames(op: OpCode, payload: &[u8], pieces: usize) -> Vec<u8> {
        let mut c = Vec::new();
        crate::proto::deflate::Deflater::new(6).compress(15, payload, &mut c);
        let size = c.len().div_ceil(pieces.max(1)).max(1);
        let mut wire = Vec::new();
        let parts: Vec<&[u8]> = if c.is_empty() {
            vec![&[][..]]
        } else {
            c.chunks(size).collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let first = i == 0;
            let op = if first { op } else { OpCode::Continuation };
            let mut f = client(op, i + 1 == parts.len(), part);
            if first {
                f[0] |= 0x40;
            }
            wire.extend(f);
        }
        wire
    }

    #[test]
    fn compressed_messages_inflate_at_every_split() {
        let text = "κόσμε {\"a\":1} ".repeat(200);
        let mut wire = compressed_frames(OpCode::Text, text.as_bytes(), 3);
        wire.extend(client(OpCode::Ping, true, b"p"));
        wire.extend(compressed_frames(OpCode::Binary, &[9u8; 5000], 1));
        // An uncompressed message on the same connection goes as before.
        wire.extend(client(OpCode::Text, true, b"plain"));
        let expect = vec![
            Owned::Text(text.clone()),
            Owned::Ping(b"p".to_vec()),
            Owned::Binary(vec![9u8; 5000]),
            Owned::Text("plain".into()),
        ];
        let mut inf = Inflater::new(256);
        for chunk in [1, 2, 7, 64, 1000, wire.len()] {
            let mut d = server_dec();
            let got = feed_chunked_with(&mut d, &wire, chunk, Some(&mut inf)).unwrap();
            assert_eq!(got, expect, "chunk {chunk}");
        }
    }

    #[test]
    fn rsv1_rules() {
        let mut inf = Inflater::new(256);
        let mut rsv1 = |op, fin: bool, with: bool| {
            let mut w = client(op, fin, b"\x00");
            w[0] |= 0x40;
            let d = &mut server_dec();
            let inf = if with { Some(&mut inf) } else { None };
            feed_chunked_with(d, &w, 100, inf).unwrap_err()
        };
        // Without negotiation, RSV1 is a reserved bit.
        assert_eq!(rsv1(OpCode::Text, true, false), ProtocolError::ReservedBits);
        for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            let e = rsv1(op, true, true);
            assert_eq!(e, ProtocolError::CompressedControl);
            assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        }
        // RSV1 on a continuation of a compressed (or plain) message.
        let mut w = client(OpCode::Text, false, b"a");
        let mut c = client(OpCode::Continuation, true, b"b");
        c[0] |= 0x40;
        w.extend(c);
        let e = feed_chunked_with(&mut server_dec(), &w, 100, Some(&mut inf)).unwrap_err();
        assert_eq!(e, ProtocolError::CompressedContinuation);
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        // RSV2 and RSV3 stay reserved.
        let mut w = client(OpCode::Text, true, b"a");
        w[0] |= 0x20;
        let e = feed_chunked_with(&mut server_dec(), &w, 100, Some(&mut inf)).unwrap_err();
        assert_eq!(e, ProtocolError::ReservedBits);
    }

    #[test]
    fn bad_compressed_data_and_bad_text() {
        let mut inf = Inflater::new(256);
        // BTYPE 11 (reserved): not a deflate stream.
        for (op, want, code) in [
            (
                OpCode::Text,
                ProtocolError::CorruptCompressedText,
                CloseCode::INVALID_PAYLOAD,
            ),
            (
                OpCode::Binary,
                ProtocolError::CorruptCompressedBinary,
                CloseCode::PROTOCOL_ERROR,
            ),
        ] {
            let mut w = client(op, true, &[0xff, 0xff, 0xff]);
            w[0] |= 0x40;
            let e = feed_chunked_with(&mut server_dec(), &w, 100, Some(&mut inf)).unwrap_err();
            assert_eq!((e, e.close_code()), (want, code));
        }
        // Valid deflate of invalid UTF-8.
        let w = compressed_frames(OpCode::Text, &[b'a', 0xff, b'b'], 1);
        let e = feed_chunked_with(&mut server_dec(), &w, 100, Some(&mut inf)).unwrap_err();
        assert_eq!(e, ProtocolError::InvalidUtf8);
        assert_eq!(e.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn a_zip_bomb_costs_at_most_max_message() {
        // 64 MiB of zeros compress to about 64 KiB; the limit is 1 MiB.
        let limits = Limits {
            max_frame: 1 << 20,
            max_message: 1 << 20,
        };
        let bomb = compressed_frames(OpCode::Binary, &vec![0u8; 64 << 20], 4);
        assert!(bomb.len() < 100 << 10, "{}", bomb.len());
        let mut inf = Inflater::new(0);
        let mut d = Decoder::new(Role::Server, limits);
        let e = feed_chunked_with(&mut d, &bomb, 1 << 20, Some(&mut inf)).unwrap_err();
        assert_eq!(e, ProtocolError::InflatedTooBig { max: 1 << 20 });
        assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG);
        assert!(d.buffered_capacity() <= (1 << 20) + 1);
        // The ratio cap closes it earlier, with the same code.
        let mut d = Decoder::new(Role::Server, Limits::default());
        let e =
            feed_chunked_with(&mut d, &bomb, 1 << 20, Some(&mut Inflater::new(100))).unwrap_err();
        assert_eq!(e, ProtocolError::InflateRatio);
        assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG);
        // The compressed size counts against max_message too, before it is held.
        let limits = Limits {
            max_frame: 1 << 20,
            max_message: 1000,
        };
        let mut x = 0x9E37_79B9u32;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let w = compressed_frames(OpCode::Binary, &noise, 1);
        let e = feed_chunked_with(
            &mut Decoder::new(Role::Server, limits),
            &w,
            100,
            Some(&mut inf),
        )
        .unwrap_err();
        assert!(matches!(e, ProtocolError::MessageTooBig { .. }), "{e:?}");
    }
}
