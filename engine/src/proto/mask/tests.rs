//! Every unmask path against the scalar oracle, over lengths, alignments and phases.

use super::scalar::apply_mask_scalar;
use super::*;
use proptest::prelude::*;

type MaskFn = fn(&mut [u8], [u8; 4], usize) -> usize;

fn paths() -> Vec<(&'static str, MaskFn)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, MaskFn)> =
        vec![("word", word::apply_mask_word), ("dispatch", apply_mask)];
    #[cfg(all(target_arch = "x86_64", not(volley_disable_simd), not(miri)))]
    {
        v.push(("sse2", x86_64::sse2::apply_mask_sse2));
        if x86_64::avx2::is_available() {
            v.push(("avx2", x86_64::avx2::apply_mask_avx2));
        }
    }
    #[cfg(all(target_arch = "aarch64", not(volley_disable_simd), not(miri)))]
    v.push(("neon", aarch64::apply_mask_neon));
    v
}

fn check(data: &[u8], offset: usize, key: [u8; 4], phase: usize) {
    let mut expect = vec![0u8; offset + data.len()];
    expect[offset..].copy_from_slice(data);
    let want_phase = apply_mask_scalar(&mut expect[offset..], key, phase);
    for (name, f) in paths() {
        let mut got = vec![0u8; offset + data.len()];
        got[offset..].copy_from_slice(data);
        let p = f(&mut got[offset..], key, phase);
        assert_eq!(
            p,
            want_phase,
            "{name} phase, len {} off {offset}",
            data.len()
        );
        assert_eq!(
            got,
            expect,
            "{name} bytes, len {} off {offset} phase {phase}",
            data.len()
        );
    }
}

#[test]
fn exhaustive_small_lengths_offsets_phases() {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    // Every length up to two of the AVX2 loop's 128-byte steps, a 64- and a 32-byte step
    // and a tail, from every alignment.
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    for len in 0..=(4 * 64 + 32 + 3) {
        for offset in 0..64 {
            for phase in 0..4 {
                check(&data[..len], offset, key, phase);
            }
        }
    }
}

#[test]
fn split_reads_compose() {
    let key = [1, 2, 3, 4];
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let mut whole = data.clone();
    apply_mask_scalar(&mut whole, key, 0);
    for cut in [0, 1, 3, 17, 500, 999, 1000] {
        let mut parts = data.clone();
        let p = apply_mask(&mut parts[..cut], key, 0);
        apply_mask(&mut parts[cut..], key, p);
        assert_eq!(parts, whole, "cut {cut}");
    }
}

#[test]
fn rfc_example() {
    let mut hello = *b"Hello";
    apply_mask(&mut hello, [0x37, 0xfa, 0x21, 0x3d], 0);
    assert_eq!(hello, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    assert!(["avx2", "sse2", "neon", "word"].contains(&selected()));
}

proptest! {
    #[test]
    fn prop_mask_matches_scalar(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        key in any::<[u8; 4]>(),
        offset in 0usize..64,
        phase in 0usize..4,
    ) {
        check(&data, offset, key, phase);
    }
}

proptest! {
    /// The short path unmasks as the byte loop does and says "ASCII" exactly when no
    /// unmasked byte has its high bit set.
    #[test]
    fn prop_unmask_short_matches_scalar_and_is_ascii(
        data in proptest::collection::vec(any::<u8>(), 0..200),
        key in any::<[u8; 4]>(),
    ) {
        let mut want = data.clone();
        scalar::apply_mask_scalar(&mut want, key, 0);
        let mut got = data;
        let ascii = super::unmask_short_is_ascii(&mut got, key);
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(ascii, want.is_ascii());
    }
}

#[test]
fn unmask_short_sees_a_high_bit_in_any_position() {
    // Every length up to 24 and every position of one non-ASCII byte (words and tail).
    let key = [0x12, 0x34, 0x56, 0x78];
    for len in 0..24 {
        let plain = vec![b'a'; len];
        let mut masked = plain.clone();
        scalar::apply_mask_scalar(&mut masked, key, 0);
        assert!(
            super::unmask_short_is_ascii(&mut masked.clone(), key),
            "len {len}"
        );
        for at in 0..len {
            let mut p = plain.clone();
            p[at] = 0xc3;
            scalar::apply_mask_scalar(&mut p, key, 0);
            assert!(
                !super::unmask_short_is_ascii(&mut p, key),
                "len {len} at {at}"
            );
        }
    }
}
