//! The connection machine (`proto::conn`) under random operation sequences: reads (raw
//! bytes, request heads, well-formed frames), clock ticks, EOFs, socket errors, closes,
//! flushes and slow-consumer signals, with small limits so every bound is reached.
//! `drive_conn` checks the invariants after every step (on_close at most once and exactly
//! once for an opened connection, no queue past its budget plus one frame and a close
//! frame, the incomplete-message budget, deadlines that fire and move on). The
//! `conn_lifecycle` fuzz target drives the same checker.

use proptest::prelude::*;
use volley::proto::OpCode;
use volley_tests::{drive_conn, ConnOp};

fn op() -> impl Strategy<Value = ConnOp> {
    let opcode = prop_oneof![
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Continuation),
        Just(OpCode::Ping),
        Just(OpCode::Pong),
        Just(OpCode::Close),
    ];
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(ConnOp::Read),
        1 => any::<bool>().prop_map(ConnOp::Head),
        6 => (opcode, any::<bool>(), 0usize..3000, 1u8..8).prop_map(|(opcode, fin, n, times)| {
            ConnOp::Frame {
                opcode,
                fin,
                payload: vec![b'a'; n],
                times,
            }
        }),
        3 => (0u32..2000).prop_map(ConnOp::Tick),
        1 => Just(ConnOp::Eof),
        1 => Just(ConnOp::Error),
        1 => any::<u16>().prop_map(ConnOp::Close),
        3 => (0u32..4000).prop_map(ConnOp::Flush),
        1 => Just(ConnOp::SlowConsumer),
    ]
}

fn session() -> impl Strategy<Value = Vec<ConnOp>> {
    // Most sessions open first, so the open phases get most of the cases.
    (any::<bool>(), proptest::collection::vec(op(), 0..60)).prop_map(|(open, mut ops)| {
        if open {
            ops.insert(0, ConnOp::Head(true));
        }
        ops
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn prop_conn_lifecycle_keeps_its_invariants(
        ops in session(),
        small in any::<bool>(),
        drop_policy in any::<bool>(),
    ) {
        drive_conn(&ops, small, drop_policy);
    }
}

#[test]
fn a_ping_flood_without_flushes_keeps_the_bound() {
    let mut ops = vec![ConnOp::Head(true)];
    for i in 0..5000 {
        ops.push(ConnOp::Frame {
            opcode: OpCode::Ping,
            fin: true,
            payload: vec![b'p'; 125],
            times: 3,
        });
        if i % 7 == 0 {
            ops.push(ConnOp::Flush(0));
        }
    }
    drive_conn(&ops, true, false);
}

#[test]
fn a_closed_connection_ignores_everything_after() {
    let ops = vec![
        ConnOp::Head(true),
        ConnOp::Eof,
        ConnOp::Flush(10_000),
        ConnOp::Frame {
            opcode: OpCode::Text,
            fin: true,
            payload: b"late".to_vec(),
            times: 1,
        },
        ConnOp::Tick(100_000),
        ConnOp::Close(1000),
        ConnOp::Error,
        ConnOp::SlowConsumer,
    ];
    drive_conn(&ops, true, false);
}
