//! Close codes (RFC 6455 section 7.4) and close frame payloads (section 5.5.1).
//!
//! One table, written once with [`close_codes!`], produces the named constants, their
//! descriptions and the "may this code appear on the wire" rule, so the rule and its tests
//! cannot drift apart.

use super::error::ProtocolError;
use super::utf8;

/// A WebSocket close status code.
///
/// Any `u16` can be held; [`CloseCode::is_allowed_on_wire`] says whether a peer may send it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

macro_rules! close_codes {
    ($( $(#[$doc:meta])* $name:ident($code:literal) $wire:ident $desc:literal; )*) => {
        impl CloseCode {
            $( $(#[$doc])* pub const $name: CloseCode = CloseCode($code); )*

            /// The registered name of a code defined by RFC 6455, if it is one.
            pub fn description(self) -> Option<&'static str> {
                match self.0 {
                    $( $code => Some($desc), )*
                    _ => None,
                }
            }

            /// Whether a close frame may carry this code (RFC 6455 section 7.4.1 and 7.4.2).
            ///
            /// Registered codes carry their own flag in the table; 3000-3999 (IANA registered
            /// for libraries and frameworks) and 4000-4999 (private use) are allowed; the rest
            /// of 0-2999 is reserved and rejected.
            pub fn is_allowed_on_wire(self) -> bool {
                match self.0 {
                    $( $code => close_codes!(@wire $wire), )*
                    3000..=4999 => true,
                    _ => false,
                }
            }

            /// Every code of the table with its wire flag; used by the tests.
            #[doc(hidden)]
            pub const TABLE: &'static [(u16, bool)] = &[ $( ($code, close_codes!(@wire $wire)), )* ];
        }
    };
    (@wire allowed) => { true };
    (@wire local) => { false };
}

close_codes! {
    /// 1000: the purpose of the connection has been fulfilled.
    NORMAL(1000) allowed "normal closure";
    /// 1001: the endpoint is going away (server shutdown, browser navigating away).
    GOING_AWAY(1001) allowed "going away";
    /// 1002: the peer broke the protocol.
    PROTOCOL_ERROR(1002) allowed "protocol error";
    /// 1003: a data type the endpoint cannot accept.
    UNSUPPORTED_DATA(1003) allowed "unsupported data";
    /// 1004: reserved; never sent.
    RESERVED(1004) local "reserved";
    /// 1005: no status code was present in the close frame; never sent.
    NO_STATUS(1005) local "no status received";
    /// 1006: the connection dropped without a close frame; never sent.
    ABNORMAL(1006) local "abnormal closure";
    /// 1007: message data inconsistent with its type (text that is not UTF-8).
    INVALID_PAYLOAD(1007) allowed "invalid frame payload data";
    /// 1008: a message violated the endpoint's policy (also used for slow consumers).
    POLICY_VIOLATION(1008) allowed "policy violation";
    /// 1009: a frame or message too big to process.
    MESSAGE_TOO_BIG(1009) allowed "message too big";
    /// 1010: the client expected an extension the server did not negotiate.
    MANDATORY_EXTENSION(1010) allowed "mandatory extension";
    /// 1011: the server hit an unexpected condition.
    INTERNAL_ERROR(1011) allowed "internal error";
    /// 1012: the service is restarting.
    SERVICE_RESTART(1012) allowed "service restart";
    /// 1013: try again later.
    TRY_AGAIN_LATER(1013) allowed "try again later";
    /// 1014: a gateway received an invalid response.
    BAD_GATEWAY(1014) allowed "bad gateway";
    /// 1015: the TLS handshake failed; never sent.
    TLS_HANDSHAKE(1015) local "TLS handshake failure";
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.description() {
            Some(d) => write!(f, "{} ({d})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A parsed close frame payload: a code and a UTF-8 reason, borrowed from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The status code.
    pub code: CloseCode,
    /// The reason, at most 123 bytes.
    pub reason: &'a str,
}

/// Parses a close frame payload (RFC 6455 section 5.5.1).
///
/// An empty payload is a close without a status (`Ok(None)`, reported locally as 1005).
///
/// # Errors
/// A 1-byte payload or a code that may not appear on the wire is
/// [`ProtocolError::InvalidCloseCode`] (1002); a reason that is not UTF-8 is
/// [`ProtocolError::InvalidCloseReason`] (1007).
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() {
            Ok(None)
        } else {
            Err(ProtocolError::InvalidCloseCode(None))
        };
    };
    let code = CloseCode(u16::from_be_bytes(*code));
    if !code.is_allowed_on_wire() {
        return Err(ProtocolError::InvalidCloseCode(Some(code.0)));
    }
    let reason = utf8::validate(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
    Ok(Some(CloseFrame { code, reason }))
}

/// Longest close reason that fits a control frame (125 - 2 bytes of code).
pub const MAX_CLOSE_REASON: usize = 123;

/// Writes a close payload (code + reason) into `out`, cutting the reason at a character
/// boundary so the frame stays within 125 bytes. Returns the number of bytes written.
pub fn encode_close_payload(code: CloseCode, reason: &str, out: &mut [u8; 125]) -> usize {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[..2].copy_from_slice(&code.0.to_be_bytes());
    out[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    2 + end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_rule_matches_rfc_ranges() {
        for c in 0..=u16::MAX {
            let expected = matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(CloseCode(c).is_allowed_on_wire(), expected, "code {c}");
        }
    }

    #[test]
    fn table_has_all_rfc_codes() {
        let codes: Vec<u16> = CloseCode::TABLE.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, (1000..=1015).collect::<Vec<_>>());
        assert_eq!(CloseCode::GOING_AWAY.to_string(), "1001 (going away)");
    }

    #[test]
    fn parse_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(
            parse_close_payload(&[0x03]),
            Err(ProtocolError::InvalidCloseCode(None))
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, b'b', b'y', b'e']),
            Ok(Some(CloseFrame {
                code: CloseCode::NORMAL,
                reason: "bye"
            }))
        );
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(
                parse_close_payload(&bad.to_be_bytes()),
                Err(ProtocolError::InvalidCloseCode(Some(bad)))
            );
        }
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xFF]),
            Err(ProtocolError::InvalidCloseReason)
        );
    }

    #[test]
    fn encode_cuts_at_char_boundary() {
        let mut out = [0u8; 125];
        let reason = "é".repeat(100); // 200 bytes
        let n = encode_close_payload(CloseCode::NORMAL, &reason, &mut out);
        assert!(n <= 125);
        let parsed = parse_close_payload(&out[..n]).unwrap().unwrap();
        assert_eq!(parsed.reason.len(), 122);
    }
}
