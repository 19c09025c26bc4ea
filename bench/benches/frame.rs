//! Frame header parse per length encoding, and one full decode of a small masked text frame.
//!
//! Figures are per frame (`Throughput::Elements(1)`): criterion's time is ns/frame.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use volley::proto::frame::encode_header;
use volley::proto::mask::apply_mask;
use volley::proto::{Decoded, Decoder, FrameHeader, Limits, OpCode, Role, Status};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A 32-byte chat line: the kind of small text message a browser sends.
const TEXT: &[u8; 32] = b"{\"op\":\"say\",\"text\":\"hello all\"}\n";

fn bench_header_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_header_parse");
    g.throughput(Throughput::Elements(1));
    // Masked client headers, as a server parses them: 2 + ext + 4 bytes.
    for (name, payload_len, header_len) in [
        ("len7", 100u64, 6usize),
        ("len16", 1000, 8),
        ("len64", 1 << 20, 14),
    ] {
        let h = encode_header(true, OpCode::Binary, payload_len, Some(KEY));
        assert_eq!(h.len(), header_len);
        // Some payload behind the header, as in a receive buffer.
        let mut buf = h.to_vec();
        buf.extend_from_slice(&[0u8; 64]);
        match FrameHeader::parse(&buf) {
            Ok(Status::Complete((parsed, n))) => {
                assert_eq!((parsed.payload_len, n), (payload_len, header_len));
            }
            other => panic!("{name}: {other:?}"),
        }
        g.bench_function(name, |b| b.iter(|| FrameHeader::parse(black_box(&buf))));
    }
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut frame = encode_header(true, OpCode::Text, TEXT.len() as u64, Some(KEY)).to_vec();
    let start = frame.len();
    frame.extend_from_slice(TEXT);
    apply_mask(&mut frame[start..], KEY, 0);
    let frame_len = frame.len();
    // A fixed array: the per-iteration copy is a stack copy, no allocator in the way.
    let frame: [u8; 6 + TEXT.len()] = frame.try_into().expect("6-byte header + payload");

    let mut dec = Decoder::new(Role::Server, Limits::default());
    let mut check = frame;
    let step = dec.decode(&mut check).expect("valid frame");
    assert_eq!(step.consumed, frame_len);
    assert_eq!(
        step.message,
        Some(Decoded::Text(std::str::from_utf8(TEXT).expect("ASCII")))
    );

    let mut g = c.benchmark_group("frame_decode");
    g.throughput(Throughput::Elements(1));
    // `decode` unmasks in place, so each iteration gets a fresh masked copy (not timed).
    // The decoder is reused, as on a connection: after a whole single-frame message it
    // holds no state.
    let mut dec = Decoder::new(Role::Server, Limits::default());
    g.bench_function(format!("masked_text_{}B_payload", TEXT.len()), |b| {
        b.iter_batched_ref(
            || frame,
            |buf| {
                let step = dec.decode(black_box(buf)).expect("valid frame");
                black_box(step.consumed);
                black_box(step.message);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_header_parse, bench_decode);
criterion_main!(benches);
