//! Word-at-a-time unmask: 8 bytes per step in a `u64`, no `unsafe`, any target.

use super::rotate;

/// XORs `buf` with `key`, starting at key byte `phase`; returns the phase after `buf`.
#[inline]
pub fn apply_mask_word(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let k = rotate(key, phase);
    let k8 = [k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]];
    let kw = u64::from_ne_bytes(k8);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        // `chunks_exact_mut(8)` yields exactly 8 bytes, so the conversion cannot fail.
        let arr: &mut [u8; 8] = c.try_into().expect("chunk of 8");
        *arr = (u64::from_ne_bytes(*arr) ^ kw).to_ne_bytes();
    }
    // 8 is a multiple of 4: the tail starts at key byte 0 of the rotated key.
    let tail = chunks.into_remainder();
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
    (phase + buf.len()) & 3
}
