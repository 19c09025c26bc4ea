//! What one volley node says to the others through the broker: an event, a send, a close or
//! a binding change, in a small binary envelope. Decoding never panics: anything malformed
//! is an [`EnvelopeError`], counted and dropped by the caller.
//!
//! ```text
//! 'V' 1 | kind u8 | opcode u8 | origin node u8 | seq u64 | sent-at µs u64 | body
//! ```
//! All integers little-endian. Bodies by kind:
//! * `All`: payload
//! * `Topic`: u16 length, topic, payload
//! * `Keys`: u16 count, then u16 length and key each, payload
//! * `Conns`: u32 count, then u64 ids, payload
//! * `Send`: u64 id, payload
//! * `Close`: u64 id, u16 code, reason (UTF-8)
//! * `Bind`: u64 id, u8 op, name (UTF-8)

use crate::types::ConnId;

const MAGIC: u8 = b'V';
const VERSION: u8 = 1;
/// Bytes before the body.
pub(crate) const HEAD: usize = 2 + 3 + 8 + 8;

/// What an envelope carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    All,
    Topic(&'a str),
    Keys(Vec<&'a str>),
    Conns(Vec<ConnId>),
    Send(ConnId),
    Close(ConnId, u16, &'a str),
    Bind(ConnId, u8, &'a str),
}

impl Body<'_> {
    fn kind(&self) -> u8 {
        match self {
            Body::All => 0,
            Body::Topic(_) => 1,
            Body::Keys(_) => 2,
            Body::Conns(_) => 3,
            Body::Send(_) => 4,
            Body::Close(..) => 5,
            Body::Bind(..) => 6,
        }
    }
}

/// A decoded envelope, borrowing the broker message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    /// 1 text, 2 binary (the WebSocket opcode of the payload); 0 for close and bind.
    pub(crate) opcode: u8,
    pub(crate) origin: u8,
    pub(crate) seq: u64,
    /// Wall-clock microseconds since the Unix epoch when the origin published it.
    pub(crate) sent_us: u64,
    pub(crate) body: Body<'a>,
    pub(crate) payload: &'a [u8],
}

/// Why a broker message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvelopeError {
    /// Not a volley envelope (magic or version).
    Foreign,
    /// Shorter than its own lengths say.
    Truncated,
    /// An unknown kind or opcode.
    UnknownKind,
    /// A name, a reason or a text payload that is not UTF-8.
    NotUtf8,
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnvelopeError::Foreign => "not a volley envelope (magic or version)",
            EnvelopeError::Truncated => "truncated",
            EnvelopeError::UnknownKind => "unknown kind or opcode",
            EnvelopeError::NotUtf8 => "text that is not UTF-8",
        })
    }
}

/// Appends the envelope of `body` and `payload` to `out`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    opcode: u8,
    origin: u8,
    seq: u64,
    sent_us: u64,
    body: &Body<'_>,
    payload: &[u8],
) {
    out.extend_from_slice(&[MAGIC, VERSION, body.kind(), opcode, origin]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&sent_us.to_le_bytes());
    let name = |out: &mut Vec<u8>, s: &str| {
        // Names longer than u16 cannot be bound through the broker; truncation would change
        // the name, so callers check `fits` first.
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    match body {
        Body::All => {}
        Body::Topic(t) => name(out, t),
        Body::Keys(ks) => {
            out.extend_from_slice(&(ks.len() as u16).to_le_bytes());
            for k in ks {
                name(out, k);
            }
        }
        Body::Conns(ids) => {
            out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            for id in ids {
                out.extend_from_slice(&id.as_u64().to_le_bytes());
            }
        }
        Body::Send(id) => out.extend_from_slice(&id.as_u64().to_le_bytes()),
        Body::Close(id, code, reason) => {
            out.extend_from_slice(&id.as_u64().to_le_bytes());
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
        Body::Bind(id, op, n) => {
            out.extend_from_slice(&id.as_u64().to_le_bytes());
            out.push(*op);
            out.extend_from_slice(n.as_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Whether a body's names fit the envelope's u16 lengths and counts.
pub(crate) fn fits(body: &Body<'_>) -> bool {
    match body {
        Body::Topic(t) => t.len() <= u16::MAX as usize,
        Body::Keys(ks) => {
            ks.len() <= u16::MAX as usize && ks.iter().all(|k| k.len() <= u16::MAX as usize)
        }
        Body::Conns(ids) => ids.len() <= u32::MAX as usize,
        _ => true,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if self.buf.len() < n {
            return Err(EnvelopeError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, EnvelopeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, EnvelopeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, EnvelopeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn str(&mut self, n: usize) -> Result<&'a str, EnvelopeError> {
        let b = self.take(n)?;
        simdutf8::basic::from_utf8(b).map_err(|_| EnvelopeError::NotUtf8)
    }
    fn name(&mut self) -> Result<&'a str, EnvelopeError> {
        let n = self.u16()? as usize;
        self.str(n)
    }
    fn rest_str(&mut self) -> Result<&'a str, EnvelopeError> {
        let n = self.buf.len();
        self.str(n)
    }
}

/// Decodes one broker message.
pub(crate) fn decode(msg: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let mut r = Reader { buf: msg };
    let magic = r.take(2).map_err(|_| EnvelopeError::Foreign)?;
    if magic != [MAGIC, VERSION] {
        return Err(EnvelopeError::Foreign);
    }
    let kind = r.u8()?;
    let opcode = r.u8()?;
    let origin = r.u8()?;
    let seq = r.u64()?;
    let sent_us = r.u64()?;
    let body = match kind {
        0 => Body::All,
        1 => Body::Topic(r.name()?),
        2 => {
            let n = r.u16()? as usize;
            // Each key takes at least its 2-byte length: a count the message cannot hold is
            // refused before anything is allocated for it.
            if n * 2 > r.buf.len() {
                return Err(EnvelopeError::Truncated);
            }
            let mut ks = Vec::with_capacity(n);
            for _ in 0..n {
                ks.push(r.name()?);
            }
            Body::Keys(ks)
        }
        3 => {
            let n = r.u32()? as usize;
            if n.saturating_mul(8) > r.buf.len() {
                return Err(EnvelopeError::Truncated);
            }
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(ConnId::from_u64(r.u64()?));
            }
            Body::Conns(ids)
        }
        4 => Body::Send(ConnId::from_u64(r.u64()?)),
        5 => {
            let id = ConnId::from_u64(r.u64()?);
            let code = r.u16()?;
            Body::Close(id, code, r.rest_str()?)
        }
        6 => {
            let id = ConnId::from_u64(r.u64()?);
            let op = r.u8()?;
            if op > 3 {
                return Err(EnvelopeError::UnknownKind);
            }
            Body::Bind(id, op, r.rest_str()?)
        }
        _ => return Err(EnvelopeError::UnknownKind),
    };
    let carries_payload = kind <= 4;
    match (carries_payload, opcode) {
        (true, 1) => {
            simdutf8::basic::from_utf8(r.buf).map_err(|_| EnvelopeError::NotUtf8)?;
        }
        (true, 2) | (false, 0) => {}
        _ => return Err(EnvelopeError::UnknownKind),
    }
    Ok(Envelope {
        opcode,
        origin,
        seq,
        sent_us,
        body,
        payload: r.buf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(opcode: u8, body: Body<'_>, payload: &[u8]) {
        let mut out = Vec::new();
        encode(&mut out, opcode, 7, 42, 1234, &body, payload);
        let e = decode(&out).expect("decodes");
        assert_eq!(
            (e.opcode, e.origin, e.seq, e.sent_us),
            (opcode, 7, 42, 1234)
        );
        assert_eq!(e.body, body);
        assert_eq!(e.payload, payload);
    }

    #[test]
    fn every_kind_round_trips() {
        let id = ConnId::with_node(3, 1, 99, 5);
        roundtrip(1, Body::All, b"hello");
        roundtrip(2, Body::Topic("news"), &[0, 255, 7]);
        roundtrip(1, Body::Keys(vec!["alice", "bob", ""]), b"{}");
        roundtrip(
            2,
            Body::Conns(vec![id, ConnId::with_node(2, 0, 1, 1)]),
            b"x",
        );
        roundtrip(1, Body::Send(id), b"");
        roundtrip(0, Body::Close(id, 1000, "bye"), b"");
        roundtrip(0, Body::Bind(id, 2, "room"), b"");
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let mut good = Vec::new();
        encode(
            &mut good,
            1,
            1,
            1,
            1,
            &Body::Keys(vec!["alice", "bob"]),
            b"payload",
        );
        // Every truncation of a valid envelope fails or decodes, never panics.
        for n in 0..good.len() {
            let _ = decode(&good[..n]);
        }
        assert_eq!(decode(b"hello"), Err(EnvelopeError::Foreign));
        assert_eq!(decode(b""), Err(EnvelopeError::Foreign));
        let mut bad_kind = good.clone();
        bad_kind[2] = 99;
        assert_eq!(decode(&bad_kind), Err(EnvelopeError::UnknownKind));
        // A key count far past what the message holds is refused before allocating.
        let mut huge = good[..HEAD].to_vec();
        huge.extend_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Err(EnvelopeError::Truncated));
        let mut huge = Vec::new();
        encode(&mut huge, 2, 1, 1, 1, &Body::Conns(vec![]), b"");
        huge[HEAD..HEAD + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Err(EnvelopeError::Truncated));
        // Text that is not UTF-8.
        let mut bad_text = Vec::new();
        encode(&mut bad_text, 1, 1, 1, 1, &Body::All, &[0xff, 0xfe]);
        assert_eq!(decode(&bad_text), Err(EnvelopeError::NotUtf8));
        // Every byte flipped in turn: no panic.
        for i in 0..good.len() {
            let mut g = good.clone();
            g[i] ^= 0xA5;
            let _ = decode(&g);
        }
    }
}
