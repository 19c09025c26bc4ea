//! Every unmask path against the scalar oracle, for random data, key, phase and alignment.
//!
//! Checks `apply_mask` (the dispatched path), the word loop and the x86_64 SSE2/AVX2 paths
//! against `scalar::apply_mask_scalar` on a buffer placed at `offset` (0..=63) inside a
//! larger allocation; the returned phase must match; masking in two pieces with the phase
//! carried must equal masking at once; and masking twice must restore the data.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use volley::proto::mask::{apply_mask, scalar::apply_mask_scalar, word::apply_mask_word};

type MaskFn = fn(&mut [u8], [u8; 4], usize) -> usize;

#[derive(Arbitrary, Debug)]
struct Input {
    key: [u8; 4],
    phase: u8,
    offset: u8,
    split: u16,
    data: Vec<u8>,
}

fn paths() -> Vec<(&'static str, MaskFn)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, MaskFn)> =
        vec![("dispatch", apply_mask), ("word", apply_mask_word)];
    #[cfg(all(target_arch = "x86_64", not(volley_disable_simd)))]
    {
        use volley::proto::mask::x86_64::{avx2, sse2};
        v.push(("sse2", sse2::apply_mask_sse2));
        if avx2::is_available() {
            v.push(("avx2", avx2::apply_mask_avx2));
        }
    }
    #[cfg(all(target_arch = "aarch64", not(volley_disable_simd)))]
    v.push(("neon", volley::proto::mask::aarch64::apply_mask_neon));
    v
}

fuzz_target!(|input: Input| {
    let Input {
        key,
        phase,
        offset,
        split,
        data,
    } = input;
    // The documented range is 0..=3; every path also reduces larger phases modulo 4.
    let phase = phase as usize;
    let offset = offset as usize % 64;
    let mut want = data.clone();
    let want_phase = apply_mask_scalar(&mut want, key, phase);
    for (name, f) in paths() {
        let mut buf = vec![0xA5u8; offset + data.len() + 7];
        buf[offset..offset + data.len()].copy_from_slice(&data);
        let p = f(&mut buf[offset..offset + data.len()], key, phase);
        assert_eq!(p, want_phase, "{name}: phase");
        assert_eq!(
            &buf[offset..offset + data.len()],
            &want[..],
            "{name}: bytes"
        );
        assert!(
            buf[..offset].iter().all(|&b| b == 0xA5),
            "{name}: wrote before"
        );
        assert!(
            buf[offset + data.len()..].iter().all(|&b| b == 0xA5),
            "{name}: wrote after"
        );
        // Two reads with the phase carried.
        let s = split as usize % (data.len() + 1);
        let mut two = data.clone();
        let p1 = f(&mut two[..s], key, phase);
        let p2 = f(&mut two[s..], key, p1);
        assert_eq!(
            (p2, &two[..]),
            (want_phase, &want[..]),
            "{name}: split at {s}"
        );
        // XOR is an involution.
        f(&mut two, key, phase);
        assert_eq!(two, data, "{name}: not an involution");
    }
});
