//! Frame encoders for both roles.
//!
//! Server frames are unmasked: the same bytes suit every recipient, which is what lets the
//! broadcast path encode an event once. Client frames (used by `loadgen` and the tests) are
//! masked with a key the caller draws at random (RFC 6455 section 5.3).

use super::close::{encode_close_payload, CloseCode};
use super::frame::{encode_header, OpCode};
use super::mask::apply_mask;

/// Appends an unmasked, final frame (header and payload) to `out`.
pub fn encode_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let h = encode_header(true, opcode, payload.len() as u64, None);
    out.reserve(h.len() + payload.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
}

/// Appends an unmasked close frame carrying `code` and `reason` (cut to fit 125 bytes).
pub fn encode_close_frame(code: CloseCode, reason: &str, out: &mut Vec<u8>) {
    let mut payload = [0u8; 125];
    let n = encode_close_payload(code, reason, &mut payload);
    encode_frame(OpCode::Close, &payload[..n], out);
}

/// Appends a masked client frame to `out`: header with `key`, then the payload masked.
pub fn encode_client_frame(
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    key: [u8; 4],
    out: &mut Vec<u8>,
) {
    let h = encode_header(fin, opcode, payload.len() as u64, Some(key));
    out.reserve(h.len() + payload.len());
    out.extend_from_slice(&h);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_5_7_bytes() {
        let mut v = Vec::new();
        encode_frame(OpCode::Text, b"Hello", &mut v);
        assert_eq!(v, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        v.clear();
        encode_client_frame(
            OpCode::Text,
            true,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
            &mut v,
        );
        assert_eq!(
            v,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        v.clear();
        encode_close_frame(CloseCode::GOING_AWAY, "bye", &mut v);
        assert_eq!(v, [0x88, 0x05, 0x03, 0xE9, b'b', b'y', b'e']);
    }
}
