//! Whole-payload UTF-8 validation: `volley::proto::utf8::validate` (simdutf8, `basic`
//! flavour, runtime-dispatched) against `std::str::from_utf8`, in the same run.
//!
//! * `ascii`: JSON-like ASCII text.
//! * `mixed`: Latin with accents, Cyrillic, CJK and emoji mixed with ASCII (1-, 2-, 3- and
//!   4-byte sequences), cut at a character boundary and padded with ASCII to the exact size.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use volley::proto::utf8::validate;

const SIZES: [(&str, usize); 3] = [("64B", 64), ("1KiB", 1 << 10), ("64KiB", 64 << 10)];

const ASCII_SEED: &str = "{\"user\":\"alice\",\"op\":\"say\",\"text\":\"see you at 10:30, ok?\"}\n";
const MIXED_SEED: &str =
    "Grüße aus Köln! Привет, мир. 你好，世界。 🎉🚀 ok; naïve café — déjà vu. ";

/// `len` bytes of valid UTF-8 made by repeating `seed`.
fn text(seed: &str, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + seed.len());
    while s.len() < len {
        s.push_str(seed);
    }
    let mut cut = len;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    while s.len() < len {
        s.push('.');
    }
    debug_assert_eq!(s.len(), len);
    s.into_bytes()
}

fn bench_utf8(c: &mut Criterion) {
    for (kind, seed) in [("ascii", ASCII_SEED), ("mixed", MIXED_SEED)] {
        for (label, len) in SIZES {
            let buf = text(seed, len);
            assert!(validate(&buf).is_ok() && std::str::from_utf8(&buf).is_ok());
            let mut g = c.benchmark_group(format!("utf8_{kind}/{label}"));
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_function("volley_simdutf8", |b| {
                b.iter(|| validate(black_box(&buf)).is_ok())
            });
            g.bench_function("std_from_utf8", |b| {
                b.iter(|| std::str::from_utf8(black_box(&buf)).is_ok())
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench_utf8);
criterion_main!(benches);
