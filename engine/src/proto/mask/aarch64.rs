//! NEON unmask for aarch64 (NEON is part of the aarch64 baseline).
#![allow(unsafe_code)]

use super::{rotate, word::apply_mask_word};
use std::arch::aarch64::*;

/// XORs `buf` with `key` from key byte `phase`; returns the phase after `buf`.
pub fn apply_mask_neon(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let k = rotate(key, phase);
    let len = buf.len();
    let body = len - len % 16;
    let ptr = buf.as_mut_ptr();
    // SAFETY: NEON is enabled on every aarch64 target; each access covers [i, i + 16) with
    // i + 16 <= body <= len, inside `buf`; vld1q/vst1q have no alignment requirement.
    unsafe {
        let kv = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_ne_bytes(k)));
        let mut i = 0;
        while i < body {
            let p = ptr.add(i);
            vst1q_u8(p, veorq_u8(vld1q_u8(p), kv));
            i += 16;
        }
    }
    apply_mask_word(&mut buf[body..], k, 0);
    (phase + len) & 3
}
