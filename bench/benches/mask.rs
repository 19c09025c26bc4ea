//! Unmask throughput: every volley path and the peers' unmask, side by side in one run.
//!
//! Two groups per size:
//! * `unmask/<size>`: the payload starts on a 64-byte boundary.
//! * `unmask_after_header/<size>`: the payload starts where it does in a receive buffer,
//!   right after a client frame header (6, 8 or 14 bytes from a 64-byte boundary), so the
//!   vector loads are unaligned and the peers' `align_to_mut` has a prefix to handle.
//!
//! Every function XORs the same buffer in place on every iteration (XOR is its own inverse,
//! the content does not matter), so the buffer stays in cache as it would right after a read.
//! Key and phase go through `black_box`: with a constant key, LTO propagates it into the
//! functions (even `#[inline(never)]` ones) and LLVM rewrites the byte-at-a-time loop into a
//! 4-byte-at-a-time one, which is not what a server running on frames' keys executes.
//!
//! Peers, as they are reachable from outside their crate:
//! * fastwebsockets 0.10: `fastwebsockets::unmask(&mut [u8], [u8; 4])` is public; measured
//!   as is, on the same buffer as ours.
//! * tungstenite 0.30: its `apply_mask` lives in a private module. The nearest public entry
//!   point that runs it is `Frame::format` on a frame whose header carries a mask: it writes
//!   the header, turns the payload `Bytes` back into a `Vec`, masks it with `apply_mask` and
//!   copies it into the output. `tungstenite_format_masked` times exactly that (setup, i.e.
//!   building the frame and the output `Vec`, is not timed); `tungstenite_format_unmasked`
//!   is the same call without a mask, so the difference between the two bounds the cost of
//!   the masking step from above. Neither is a bare kernel; see docs/benchmarks.md.

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use std::hint::black_box;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use volley::proto::mask;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// (label, payload length, client frame header length for that payload).
const SIZES: [(&str, usize, usize); 4] = [
    ("64B", 64, 6),
    ("1KiB", 1 << 10, 8),
    ("64KiB", 64 << 10, 14),
    ("1MiB", 1 << 20, 14),
];

/// A buffer of `len` bytes starting `offset` bytes after a 64-byte boundary.
struct Payload {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Payload {
    fn new(len: usize, offset: usize) -> Payload {
        let storage: Vec<u8> = (0..len + 128).map(|i| (i * 31 + 7) as u8).collect();
        let start = storage.as_ptr().align_offset(64) + offset;
        Payload {
            storage,
            start,
            len,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

fn run<F>(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    p: &mut Payload,
    mut f: F,
) where
    F: FnMut(&mut [u8]),
{
    g.bench_function(name, |b| b.iter(|| f(black_box(p.bytes()))));
}

fn volley_and_fastwebsockets(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    p: &mut Payload,
) {
    run(g, "volley_dispatch", p, |b| {
        black_box(mask::apply_mask(b, black_box(KEY), black_box(0)));
    });
    #[cfg(target_arch = "x86_64")]
    {
        if mask::x86_64::avx2::is_available() {
            run(g, "volley_avx2", p, |b| {
                black_box(mask::x86_64::avx2::apply_mask_avx2(
                    b,
                    black_box(KEY),
                    black_box(0),
                ));
            });
        }
        run(g, "volley_sse2", p, |b| {
            black_box(mask::x86_64::sse2::apply_mask_sse2(
                b,
                black_box(KEY),
                black_box(0),
            ));
        });
    }
    run(g, "volley_word", p, |b| {
        black_box(mask::word::apply_mask_word(b, black_box(KEY), black_box(0)));
    });
    run(g, "volley_scalar_bytewise", p, |b| {
        black_box(mask::scalar::apply_mask_scalar(
            b,
            black_box(KEY),
            black_box(0),
        ));
    });
    run(g, "fastwebsockets_unmask", p, |b| {
        fastwebsockets::unmask(b, black_box(KEY))
    });
}

fn tungstenite_format(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    len: usize,
    masked: bool,
) {
    let name = if masked {
        "tungstenite_format_masked"
    } else {
        "tungstenite_format_unmasked"
    };
    let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
    // Small inputs are batched so the timer's own cost stays out of the figure; a 1 MiB
    // input per iteration costs far more than reading the clock twice.
    let batch = match len {
        0..=4096 => BatchSize::SmallInput,
        4097..=65536 => BatchSize::LargeInput,
        _ => BatchSize::PerIteration,
    };
    g.bench_function(name, |b| {
        b.iter_batched(
            || {
                // `Bytes::from(Vec)` with len == capacity keeps the allocation unique, so
                // `format` can take it back as a `Vec` without copying.
                let data = tungstenite::Bytes::from(payload.clone().into_boxed_slice());
                let mut frame = Frame::message(data, OpCode::Data(Data::Binary), true);
                if masked {
                    frame.header_mut().mask = Some(KEY);
                }
                (frame, Vec::<u8>::with_capacity(len + 14))
            },
            |(frame, mut out)| {
                frame
                    .format(&mut out)
                    .expect("writing to a Vec cannot fail");
                out
            },
            batch,
        )
    });
}

fn bench_mask(c: &mut Criterion) {
    eprintln!("volley::proto::mask::selected() = {}", mask::selected());
    // Check once that every path we time computes the same bytes as the oracle.
    check_agreement();
    for (label, len, header) in SIZES {
        let mut g = c.benchmark_group(format!("unmask/{label}"));
        g.throughput(Throughput::Bytes(len as u64));
        if len >= 1 << 20 {
            g.sample_size(30);
        }
        let mut p = Payload::new(len, 0);
        volley_and_fastwebsockets(&mut g, &mut p);
        tungstenite_format(&mut g, len, true);
        tungstenite_format(&mut g, len, false);
        g.finish();

        let mut g = c.benchmark_group(format!("unmask_after_header/{label}"));
        g.throughput(Throughput::Bytes(len as u64));
        if len >= 1 << 20 {
            g.sample_size(30);
        }
        let mut p = Payload::new(len, header);
        volley_and_fastwebsockets(&mut g, &mut p);
        g.finish();
    }
}

/// Every path, on an odd length at an odd offset, against the byte-at-a-time oracle.
fn check_agreement() {
    let mut p = Payload::new(1000 + 3, 5);
    let original = p.bytes().to_vec();
    let mut want = original.clone();
    mask::scalar::apply_mask_scalar(&mut want, KEY, 0);
    let mut check = |name: &str, f: &dyn Fn(&mut [u8])| {
        p.bytes().copy_from_slice(&original);
        f(p.bytes());
        assert_eq!(
            p.bytes(),
            &want[..],
            "{name} disagrees with the scalar oracle"
        );
    };
    check("dispatch", &|b| {
        mask::apply_mask(b, KEY, 0);
    });
    check("word", &|b| {
        mask::word::apply_mask_word(b, KEY, 0);
    });
    #[cfg(target_arch = "x86_64")]
    {
        check("sse2", &|b| {
            mask::x86_64::sse2::apply_mask_sse2(b, KEY, 0);
        });
        check("avx2", &|b| {
            mask::x86_64::avx2::apply_mask_avx2(b, KEY, 0);
        });
    }
    check("fastwebsockets", &|b| fastwebsockets::unmask(b, KEY));
    let frame = Frame::message(original.clone(), OpCode::Data(Data::Binary), true);
    let mut frame = frame;
    frame.header_mut().mask = Some(KEY);
    let mut out = Vec::new();
    frame
        .format(&mut out)
        .expect("writing to a Vec cannot fail");
    assert_eq!(
        &out[out.len() - want.len()..],
        &want[..],
        "tungstenite disagrees"
    );
}

criterion_group!(benches, bench_mask);
criterion_main!(benches);
