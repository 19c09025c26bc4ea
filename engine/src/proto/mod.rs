//! The sans-IO RFC 6455 core: bytes in, events and bytes out.
//!
//! Nothing here touches a socket, a thread or a clock, so the mio and io_uring backends,
//! `loadgen` (the client role), the tests and the fuzzers all share it. Parsers never panic:
//! running out of bytes is [`Status::Partial`], every violation is a typed error mapped to
//! one close code ([`ProtocolError::close_code`]) or one HTTP status
//! ([`HandshakeError::status`]).
//!
//! | module | RFC 6455 | what |
//! |---|---|---|
//! | [`handshake`] | 4 | request head scan and parse, validation, 101 and error responses, client side |
//! | [`frame`] | 5.2 | frame header parse and encode |
//! | [`mask`] | 5.3 | in-place unmask with runtime-dispatched SIMD and a scalar twin |
//! | [`assemble`] | 5.4-5.6 | message assembly, fragmentation, interleaved control frames |
//! | [`utf8`] | 8.1 | whole and streaming UTF-8 validation (fail fast) |
//! | [`close`] | 5.5.1, 7.4 | close codes and payloads |
//! | [`encode`] | 5 | frame encoders for the server (unmasked) and client (masked) roles |
//! | [`deflate`] | RFC 7692 | permessage-deflate: negotiation, compression, bounded inflation |
//! | [`conn`] | 5.5, 7 | a server connection's lifecycle: phases, close handshake, pong and close-echo obligations, deadlines, budgets |

pub mod assemble;
pub mod close;
pub mod conn;
pub mod deflate;
pub mod encode;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use assemble::{Decoder, Limits, Message, Role, Step};
pub use close::{CloseCode, CloseFrame};
pub use error::{ClientHandshakeError, HandshakeError, ProtocolError};
pub use frame::{FrameHeader, OpCode};

/// The answer of an incremental parser: complete, or waiting for more bytes.
///
/// Running out of bytes is not an error (httparse's contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// Parsed; the value usually carries how many bytes were used.
    Complete(T),
    /// More bytes are needed; nothing was consumed.
    Partial,
}

impl<T> Status<T> {
    /// Whether the value is complete.
    pub fn is_complete(&self) -> bool {
        matches!(self, Status::Complete(_))
    }

    /// The complete value.
    ///
    /// # Panics
    /// On `Partial`. Meant for tests and examples.
    #[track_caller]
    pub fn unwrap(self) -> T {
        match self {
            Status::Complete(t) => t,
            Status::Partial => panic!("called Status::unwrap on Partial"),
        }
    }
}
