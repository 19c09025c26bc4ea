//! Frame headers (RFC 6455 section 5.2): parse from bytes, encode into a fixed array.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```

use super::error::ProtocolError;
use super::Status;

/// Longest possible frame header: 2 + 8 (64-bit length) + 4 (masking key).
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload a control frame may carry (section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame opcode (section 5.2). Reserved opcodes never become an `OpCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: a UTF-8 text message.
    Text,
    /// 0x2: a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Decodes the low 4 bits of the first header byte.
    ///
    /// # Errors
    /// [`ProtocolError::ReservedOpcode`] for 0x3-0x7 and 0xB-0xF.
    pub fn from_u8(op: u8) -> Result<OpCode, ProtocolError> {
        Ok(match op {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong are control frames.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1-3 as the three low bits (RSV1 = 0b100).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`.
    ///
    /// Returns `Complete((header, header_len))`, or `Partial` when `buf` holds fewer bytes
    /// than the header needs (at most [`MAX_HEADER_LEN`]). Checks everything that can be
    /// judged from the header alone: reserved opcodes, control frame rules and the 64-bit
    /// length's top bit. RSV bits and masking depend on the connection and are left to the
    /// caller.
    ///
    /// # Errors
    /// [`ProtocolError::ReservedOpcode`], [`ProtocolError::FragmentedControl`],
    /// [`ProtocolError::ControlTooLong`], [`ProtocolError::InvalidLength`].
    pub fn parse(buf: &[u8]) -> Result<Status<(FrameHeader, usize)>, ProtocolError> {
        let Some((&[b0, b1], rest)) = buf.split_first_chunk::<2>() else {
            return Ok(Status::Partial);
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if len7 as usize > MAX_CONTROL_PAYLOAD {
                return Err(ProtocolError::ControlTooLong);
            }
        }
        let (payload_len, rest, ext) = match len7 {
            126 => match rest.split_first_chunk::<2>() {
                Some((l, rest)) => (u16::from_be_bytes(*l) as u64, rest, 2),
                None => return Ok(Status::Partial),
            },
            127 => match rest.split_first_chunk::<8>() {
                Some((l, rest)) => {
                    let l = u64::from_be_bytes(*l);
                    if l >> 63 != 0 {
                        return Err(ProtocolError::InvalidLength);
                    }
                    (l, rest, 8)
                }
                None => return Ok(Status::Partial),
            },
            n => (n as u64, rest, 0),
        };
        let mask = if masked {
            match rest.split_first_chunk::<4>() {
                Some((k, _)) => Some(*k),
                None => return Ok(Status::Partial),
            }
        } else {
            None
        };
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        Ok(Status::Complete((
            FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                payload_len,
            },
            header_len,
        )))
    }
}

/// An encoded frame header in a fixed array: no allocation.
#[derive(Clone, Copy, Debug)]
pub struct HeaderBuf {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl HeaderBuf {
    /// The same header with RSV1 set: the first frame of a compressed message
    /// (permessage-deflate, RFC 7692).
    pub fn with_rsv1(mut self) -> HeaderBuf {
        self.bytes[0] |= 0x40;
        self
    }

    /// The header bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::ops::Deref for HeaderBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Encodes a frame header: unmasked when `mask` is `None` (server role), masked otherwise
/// (client role; the caller then masks the payload with the same key).
pub fn encode_header(
    fin: bool,
    opcode: OpCode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
) -> HeaderBuf {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[0] = (if fin { 0x80 } else { 0 }) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = 2;
    if payload_len < 126 {
        bytes[1] = mask_bit | payload_len as u8;
    } else if payload_len <= u16::MAX as u64 {
        bytes[1] = mask_bit | 126;
        bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        n = 4;
    } else {
        bytes[1] = mask_bit | 127;
        bytes[2..10].copy_from_slice(&payload_len.to_be_bytes());
        n = 10;
    }
    if let Some(k) = mask {
        bytes[n..n + 4].copy_from_slice(&k);
        n += 4;
    }
    HeaderBuf {
        bytes,
        len: n as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Result<Status<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(b)
    }

    #[test]
    fn rfc_5_7_examples() {
        // Unmasked "Hello".
        let (h, n) = parse(&[0x81, 0x05, 0x48, 0x65]).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.mask, h.payload_len, n),
            (true, OpCode::Text, None, 5, 2)
        );
        // Masked "Hello".
        let (h, n) = parse(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f])
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.mask, h.payload_len, n),
            (Some([0x37, 0xfa, 0x21, 0x3d]), 5, 6)
        );
        // Fragmented: "Hel" not FIN, then continuation "lo".
        let (h, _) = parse(&[0x01, 0x03]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode), (false, OpCode::Text));
        let (h, _) = parse(&[0x80, 0x02]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));
        // Unmasked ping with "Hello".
        let (h, _) = parse(&[0x89, 0x05]).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Ping);
        // 256 bytes binary in a single unmasked frame.
        let (h, n) = parse(&[0x82, 0x7E, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (256, 4));
        // 64 KiB binary in a single unmasked frame.
        let (h, n) = parse(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
        assert_eq!(
            &*encode_header(true, OpCode::Binary, 256, None),
            &[0x82, 0x7E, 0x01, 0x00]
        );
        assert_eq!(
            &*encode_header(true, OpCode::Binary, 65536, None),
            &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(
            &*encode_header(true, OpCode::Text, 5, Some([0x37, 0xfa, 0x21, 0x3d])),
            &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]
        );
    }

    #[test]
    fn partial_at_every_cut() {
        let full = encode_header(true, OpCode::Binary, 70000, Some([1, 2, 3, 4]));
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(Status::Partial), "cut {cut}");
        }
        assert!(matches!(parse(&full), Ok(Status::Complete((_, 14)))));
    }

    #[test]
    fn header_errors() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                parse(&[0x80 | op, 0]),
                Err(ProtocolError::ReservedOpcode(op))
            );
        }
        assert_eq!(parse(&[0x09, 0x00]), Err(ProtocolError::FragmentedControl));
        assert_eq!(parse(&[0x89, 0x7E]), Err(ProtocolError::ControlTooLong));
        assert_eq!(
            parse(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::InvalidLength)
        );
        let (h, _) = parse(&[0xF2, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b111);
    }

    #[test]
    fn encode_parse_roundtrip() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 40] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let h = encode_header(false, OpCode::Binary, len, mask);
                let (p, n) = parse(&h).unwrap().unwrap();
                assert_eq!(n, h.len());
                assert_eq!((p.fin, p.payload_len, p.mask), (false, len, mask));
            }
        }
    }
}
