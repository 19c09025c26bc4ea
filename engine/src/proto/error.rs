//! Errors of the protocol core, split by who is at fault.
//!
//! * [`ProtocolError`]: the peer broke RFC 6455 or exceeded a configured limit. Each variant
//!   maps to exactly one close code through [`ProtocolError::close_code`].
//! * [`HandshakeError`]: the opening HTTP request cannot be upgraded. Each variant maps to
//!   exactly one HTTP status through [`HandshakeError::status`].
//! * [`ClientHandshakeError`]: a server's answer to our upgrade request is not a valid 101.

use super::close::CloseCode;
use std::fmt;

/// A violation by the peer, found while decoding frames. Never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV1-3 set without a negotiated extension (section 5.2). 1002.
    ReservedBits,
    /// Opcode 3-7 or 11-15 (section 5.2). 1002.
    ReservedOpcode(u8),
    /// A control frame with FIN clear (section 5.5). 1002.
    FragmentedControl,
    /// A control frame with a payload over 125 bytes (section 5.5). 1002.
    ControlTooLong,
    /// A client frame without the MASK bit (section 5.1). 1002.
    UnmaskedClientFrame,
    /// A server frame with the MASK bit (section 5.1). 1002.
    MaskedServerFrame,
    /// A 64-bit length with its most significant bit set (section 5.2). 1002.
    InvalidLength,
    /// A continuation frame with no message in progress (section 5.4). 1002.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress (section 5.4). 1002.
    ExpectedContinuation,
    /// A close frame with a 1-byte payload (`None`) or a code not allowed on the wire. 1002.
    InvalidCloseCode(Option<u16>),
    /// A close reason that is not UTF-8 (section 5.5.1). 1007.
    InvalidCloseReason,
    /// Text that is not valid UTF-8 (section 8.1). 1007.
    InvalidUtf8,
    /// A frame larger than the configured maximum. 1009.
    FrameTooBig {
        /// The length the frame declared.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// A message larger than the configured maximum. 1009.
    MessageTooBig {
        /// The size the message would reach.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// A frame after the peer's close frame (section 5.5.1). 1002.
    DataAfterClose,
    /// RSV1 (compressed) on a control frame (RFC 7692 section 6.1). 1002.
    CompressedControl,
    /// RSV1 on a continuation frame: only a message's first frame carries it (RFC 7692
    /// section 6.1). 1002.
    CompressedContinuation,
    /// A compressed message that inflates past the message limit. 1009.
    InflatedTooBig {
        /// The configured maximum.
        max: usize,
    },
    /// A compressed message that inflates past the ratio cap (a zip bomb). 1009.
    InflateRatio,
    /// A compressed text message that is not a valid deflate stream. 1007.
    CorruptCompressedText,
    /// A compressed binary message that is not a valid deflate stream. 1002.
    CorruptCompressedBinary,
}

impl ProtocolError {
    /// The close code this error is answered with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidCloseReason
            | ProtocolError::InvalidUtf8
            | ProtocolError::CorruptCompressedText => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooBig { .. }
            | ProtocolError::MessageTooBig { .. }
            | ProtocolError::InflatedTooBig { .. }
            | ProtocolError::InflateRatio => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason suitable for the close frame (always under 123 bytes).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode(_) => "reserved opcode",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::ControlTooLong => "control frame payload over 125 bytes",
            ProtocolError::UnmaskedClientFrame => "client frame not masked",
            ProtocolError::MaskedServerFrame => "server frame masked",
            ProtocolError::InvalidLength => "invalid payload length",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "new message inside a fragmented message",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
            ProtocolError::InvalidCloseReason => "close reason is not UTF-8",
            ProtocolError::InvalidUtf8 => "text is not UTF-8",
            ProtocolError::FrameTooBig { .. } => "frame too big",
            ProtocolError::MessageTooBig { .. } => "message too big",
            ProtocolError::DataAfterClose => "frame after close",
            ProtocolError::CompressedControl => "compressed control frame",
            ProtocolError::CompressedContinuation => "RSV1 on a continuation frame",
            ProtocolError::InflatedTooBig { .. } => "message too big when inflated",
            ProtocolError::InflateRatio => "message inflates past the ratio cap",
            ProtocolError::CorruptCompressedText | ProtocolError::CorruptCompressedBinary => {
                "invalid compressed data"
            }
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::InvalidCloseCode(Some(c)) => write!(f, "invalid close code {c}"),
            ProtocolError::InvalidCloseCode(None) => write!(f, "close payload of 1 byte"),
            ProtocolError::FrameTooBig { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            ProtocolError::MessageTooBig { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max}")
            }
            ProtocolError::InflatedTooBig { max } => {
                write!(
                    f,
                    "compressed message inflates past the limit of {max} bytes"
                )
            }
            other => f.write_str(other.reason()),
        }?;
        write!(f, " (close {})", self.close_code().0)
    }
}

impl std::error::Error for ProtocolError {}

/// Why an opening request cannot be upgraded. Never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head is not valid HTTP/1.x. 400.
    Malformed,
    /// The method is not GET. 405.
    MethodNotGet,
    /// HTTP/1.0 or older. 400.
    HttpVersion,
    /// No `Host` header. 400.
    MissingHost,
    /// No `websocket` token in `Upgrade` and no `Sec-WebSocket-Key` or
    /// `Sec-WebSocket-Version` either: a plain HTTP request (the server may answer it through
    /// `Handler::on_http`). 426.
    NotUpgrade,
    /// `Sec-WebSocket-Key` or `Sec-WebSocket-Version` present (a WebSocket handshake), but
    /// `Upgrade` is missing or does not name `websocket` (RFC 6455 4.2.1 item 3). 400.
    UpgradeNotWebSocket,
    /// The `Origin` is not in the server's allow-list (`Config::allowed_origins`). 403.
    OriginNotAllowed,
    /// No `upgrade` token in `Connection`. 400.
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Key` absent or not base64 of 16 bytes. 400.
    InvalidKey,
    /// `Sec-WebSocket-Version` absent or not 13. 426 with `Sec-WebSocket-Version: 13`.
    UnsupportedVersion,
    /// The head exceeds the configured limit, or has too many headers. 431.
    HeadTooLarge,
    /// A header appears twice where it must appear once (`Sec-WebSocket-Key`, `Host`). 400.
    DuplicateHeader,
}

impl HandshakeError {
    /// The HTTP status the request is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::MethodNotGet => 405,
            HandshakeError::OriginNotAllowed => 403,
            HandshakeError::NotUpgrade | HandshakeError::UnsupportedVersion => 426,
            HandshakeError::HeadTooLarge => 431,
            _ => 400,
        }
    }

    /// What went wrong, in a few words (used as the response body and in logs).
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Malformed => "malformed HTTP request",
            HandshakeError::MethodNotGet => "method must be GET",
            HandshakeError::HttpVersion => "HTTP/1.1 or later required",
            HandshakeError::MissingHost => "missing Host header",
            HandshakeError::NotUpgrade => "expected Upgrade: websocket",
            HandshakeError::UpgradeNotWebSocket => "a WebSocket handshake needs Upgrade: websocket",
            HandshakeError::OriginNotAllowed => "origin not allowed",
            HandshakeError::MissingConnectionUpgrade => "expected Connection: upgrade",
            HandshakeError::InvalidKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            HandshakeError::UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            HandshakeError::HeadTooLarge => "request head too large",
            HandshakeError::DuplicateHeader => "duplicate header",
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {})", self.reason(), self.status())
    }
}

impl std::error::Error for HandshakeError {}

/// Why a server's answer to our upgrade request is refused (client role).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientHandshakeError {
    /// The response head is not valid HTTP, or too large.
    Malformed,
    /// The status is not 101; the status code is carried.
    Status(u16),
    /// `Upgrade: websocket` missing.
    MissingUpgrade,
    /// `Connection: upgrade` missing.
    MissingConnection,
    /// `Sec-WebSocket-Accept` missing or not the value our key demands.
    BadAccept,
}

impl fmt::Display for ClientHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientHandshakeError::Malformed => f.write_str("malformed HTTP response"),
            ClientHandshakeError::Status(s) => write!(f, "server answered HTTP {s}, not 101"),
            ClientHandshakeError::MissingUpgrade => {
                f.write_str("response lacks Upgrade: websocket")
            }
            ClientHandshakeError::MissingConnection => {
                f.write_str("response lacks Connection: upgrade")
            }
            ClientHandshakeError::BadAccept => f.write_str("wrong Sec-WebSocket-Accept"),
        }
    }
}

impl std::error::Error for ClientHandshakeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_error_maps_to_a_wire_code_and_short_reason() {
        let all = [
            ProtocolError::ReservedBits,
            ProtocolError::ReservedOpcode(3),
            ProtocolError::FragmentedControl,
            ProtocolError::ControlTooLong,
            ProtocolError::UnmaskedClientFrame,
            ProtocolError::MaskedServerFrame,
            ProtocolError::InvalidLength,
            ProtocolError::UnexpectedContinuation,
            ProtocolError::ExpectedContinuation,
            ProtocolError::InvalidCloseCode(None),
            ProtocolError::InvalidCloseReason,
            ProtocolError::InvalidUtf8,
            ProtocolError::FrameTooBig { len: 1, max: 0 },
            ProtocolError::MessageTooBig { len: 1, max: 0 },
            ProtocolError::DataAfterClose,
        ];
        for e in all {
            assert!(e.close_code().is_allowed_on_wire(), "{e}");
            assert!(e.reason().len() <= super::super::close::MAX_CLOSE_REASON);
        }
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), CloseCode(1007));
        assert_eq!(
            ProtocolError::FrameTooBig { len: 9, max: 1 }.close_code(),
            CloseCode(1009)
        );
        assert_eq!(ProtocolError::ReservedBits.close_code(), CloseCode(1002));
    }
}
