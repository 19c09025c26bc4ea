//! Operation sequences replayed against `Decoder`: raw bytes, well-formed frames (valid or
//! not as a sequence: a continuation with nothing to continue, a close with a bad code) and
//! read boundaries, in any order.
//!
//! The ops build the byte stream and where reads end; `drive_decoder` replays it with all
//! of its invariant checks, and the result must equal the naive `model_decode`. With no
//! `Feed` op and a plan that respects fragmentation rules this is also a round trip.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use volley::proto::frame::OpCode;
use volley::proto::{Limits, Role};
use volley_tests::{drive_decoder, encode_frame_for, model_decode, FrameSpec, KeyGen};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Text,
    Binary,
    Continuation,
    Ping,
    Pong,
    Close,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes, appended as they are.
    Feed(Vec<u8>),
    /// A well-formed frame for the decoder's role (masked with `key` toward a server).
    /// Control payloads are cut to 125 bytes.
    FeedValid {
        kind: Kind,
        fin: bool,
        payload: Vec<u8>,
        key: u64,
    },
    /// A read boundary `back` bytes before the end of what was appended so far.
    Split(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    server: bool,
    small_limits: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let role = if input.server {
        Role::Server
    } else {
        Role::Client
    };
    let limits = if input.small_limits {
        Limits {
            max_frame: 200,
            max_message: 500,
        }
    } else {
        Limits::default()
    };
    let mut wire = Vec::new();
    let mut cuts = Vec::new();
    for op in input.ops {
        match op {
            Op::Feed(bytes) => wire.extend_from_slice(&bytes),
            Op::FeedValid {
                kind,
                fin,
                mut payload,
                key,
            } => {
                let (opcode, control) = match kind {
                    Kind::Text => (OpCode::Text, false),
                    Kind::Binary => (OpCode::Binary, false),
                    Kind::Continuation => (OpCode::Continuation, false),
                    Kind::Ping => (OpCode::Ping, true),
                    Kind::Pong => (OpCode::Pong, true),
                    Kind::Close => (OpCode::Close, true),
                };
                if control {
                    payload.truncate(125);
                }
                let frame = FrameSpec {
                    fin: fin || control,
                    opcode,
                    payload,
                };
                encode_frame_for(role, &frame, &mut KeyGen::new(key), &mut wire);
            }
            Op::Split(back) => cuts.push(wire.len().saturating_sub(back as usize)),
        }
    }
    let (got, _) = drive_decoder(role, limits, &wire, &cuts);
    assert_eq!(got, model_decode(role, limits, &wire));
});
