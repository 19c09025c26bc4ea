//! Operation sequences replayed against the connection machine (`proto::conn::Conn`):
//! reads (raw bytes, request heads, well-formed frames), clock ticks, EOFs, socket errors,
//! closes, flushes and slow-consumer signals, in any order.
//!
//! `drive_conn` (shared with the property test `tests/tests/conn_lifecycle.rs`) checks after
//! every step: no panic, `on_close` at most once (exactly once for an opened connection that
//! ended), no handler call after it, no queue past its budget plus one frame and a close
//! frame, the incomplete-message budget, and deadlines that fire and move on.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use volley::proto::frame::OpCode;
use volley_tests::{drive_conn, ConnOp};

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
    Read(Vec<u8>),
    Head(bool),
    /// A frame of `len` bytes (`len` up to 16 Ki), `times` times over in one read.
    Frame {
        kind: Kind,
        fin: bool,
        len: u16,
        times: u8,
    },
    Tick(u16),
    Eof,
    Error,
    Close(u16),
    Flush(u16),
    SlowConsumer,
}

#[derive(Arbitrary, Debug)]
struct Input {
    small: bool,
    drop_policy: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let ops: Vec<ConnOp> = input
        .ops
        .into_iter()
        .map(|op| match op {
            Op::Read(b) => ConnOp::Read(b),
            Op::Head(v) => ConnOp::Head(v),
            Op::Frame {
                kind,
                fin,
                len,
                times,
            } => ConnOp::Frame {
                opcode: match kind {
                    Kind::Text => OpCode::Text,
                    Kind::Binary => OpCode::Binary,
                    Kind::Continuation => OpCode::Continuation,
                    Kind::Ping => OpCode::Ping,
                    Kind::Pong => OpCode::Pong,
                    Kind::Close => OpCode::Close,
                },
                fin,
                payload: vec![b'a'; (len & 0x3fff) as usize],
                times: times % 8,
            },
            Op::Tick(ms) => ConnOp::Tick(ms as u32),
            Op::Eof => ConnOp::Eof,
            Op::Error => ConnOp::Error,
            Op::Close(c) => ConnOp::Close(c),
            Op::Flush(n) => ConnOp::Flush(n as u32),
            Op::SlowConsumer => ConnOp::SlowConsumer,
        })
        .collect();
    drive_conn(&ops, input.small, input.drop_policy);
});
