//! SSE2 and AVX2 unmask for x86_64.
#![allow(unsafe_code)]

/// SSE2: 16 bytes per step. SSE2 is part of the x86_64 baseline, so this is always callable.
pub mod sse2 {
    use crate::proto::mask::{rotate, word::apply_mask_word};
    use std::arch::x86_64::*;

    /// XORs `buf` with `key` from key byte `phase`; returns the phase after `buf`.
    pub fn apply_mask_sse2(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
        let k = rotate(key, phase);
        let len = buf.len();
        let body = len - len % 16;
        let ptr = buf.as_mut_ptr();
        // SAFETY: SSE2 is enabled on every x86_64 target; every load and store below covers
        // bytes [i, i + 16) with i + 16 <= body <= len, inside `buf`; unaligned forms are used.
        unsafe {
            let kv = _mm_set1_epi32(i32::from_ne_bytes(k));
            let mut i = 0;
            while i < body {
                let p = ptr.add(i) as *mut __m128i;
                _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), kv));
                i += 16;
            }
        }
        // 16 is a multiple of 4: the tail meets key byte 0 of the rotated key.
        apply_mask_word(&mut buf[body..], k, 0);
        (phase + len) & 3
    }
}

/// AVX2: 128 bytes per step (four 32-byte registers), when the CPU has it. Against 64 bytes
/// a step it took a 16 KiB echo from 3,192 to 2,558 user instructions a message and 1.6% less
/// CPU (docs/benchmarks.md, "Issue 14, eleventh session"); 64-byte AVX-512 steps gained
/// nothing more there.
pub mod avx2 {
    use crate::proto::mask::{rotate, word::apply_mask_word};
    use std::arch::x86_64::*;

    /// Whether this CPU supports AVX2 (checked at run time, cached by std).
    pub fn is_available() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    /// XORs `buf` with `key` from key byte `phase`; returns the phase after `buf`.
    ///
    /// Falls back to SSE2 if the CPU lacks AVX2, so it is safe to call anywhere.
    pub fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
        if !is_available() {
            return super::sse2::apply_mask_sse2(buf, key, phase);
        }
        // SAFETY: AVX2 was detected just above.
        unsafe { apply_mask_avx2_unchecked(buf, key, phase) }
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn apply_mask_avx2_unchecked(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
        let len = buf.len();
        // Bytes up to the first 32-byte boundary go through the word loop, so the vector
        // loop's stores never split a cache line (a payload starts 6 to 14 bytes into the
        // receive buffer, after its frame header).
        let head = buf.as_ptr().align_offset(32).min(len);
        let p = apply_mask_word(&mut buf[..head], key, phase);
        let k = rotate(key, p);
        let body = &mut buf[head..];
        let n = body.len();
        let ptr = body.as_mut_ptr();
        let kv = _mm256_set1_epi32(i32::from_ne_bytes(k));
        let mut i = 0;
        // Both loops: each access covers [i, i + width) with i + width <= n, inside `body`,
        // whose start is 32-byte aligned, so the aligned forms are sound.
        // SAFETY: in bounds and aligned as above; AVX2 is guaranteed by the caller.
        unsafe {
            while i + 128 <= n {
                let p0 = ptr.add(i) as *mut __m256i;
                let p1 = ptr.add(i + 32) as *mut __m256i;
                let p2 = ptr.add(i + 64) as *mut __m256i;
                let p3 = ptr.add(i + 96) as *mut __m256i;
                let a = _mm256_load_si256(p0);
                let b = _mm256_load_si256(p1);
                let c = _mm256_load_si256(p2);
                let d = _mm256_load_si256(p3);
                _mm256_store_si256(p0, _mm256_xor_si256(a, kv));
                _mm256_store_si256(p1, _mm256_xor_si256(b, kv));
                _mm256_store_si256(p2, _mm256_xor_si256(c, kv));
                _mm256_store_si256(p3, _mm256_xor_si256(d, kv));
                i += 128;
            }
            if i + 64 <= n {
                let p0 = ptr.add(i) as *mut __m256i;
                let p1 = ptr.add(i + 32) as *mut __m256i;
                let a = _mm256_load_si256(p0);
                let b = _mm256_load_si256(p1);
                _mm256_store_si256(p0, _mm256_xor_si256(a, kv));
                _mm256_store_si256(p1, _mm256_xor_si256(b, kv));
                i += 64;
            }
            if i + 32 <= n {
                let p0 = ptr.add(i) as *mut __m256i;
                _mm256_store_si256(p0, _mm256_xor_si256(_mm256_load_si256(p0), kv));
                i += 32;
            }
        }
        // 32 is a multiple of 4: the tail meets key byte 0 of the key rotated for the body.
        apply_mask_word(&mut body[i..], k, 0);
        (phase + len) & 3
    }
}
