//! Word-at-a-time unmask: 8 bytes per step in a `u64`, no `unsafe`, any target.

use super::rotate;

/// XORs `buf` with `key`, starting at key byte `phase`; returns the phase after `buf`.
///
/// 16 bytes per step in a `u128` (one SSE2 register where there is one), then 8, then bytes.
#[inline]
pub fn apply_mask_word(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let k = rotate(key, phase);
    let k4 = u32::from_ne_bytes(k);
    let kw = (k4 as u64) | ((k4 as u64) << 32);
    let kx = (kw as u128) | ((kw as u128) << 64);
    let mut chunks = buf.chunks_exact_mut(16);
    for c in &mut chunks {
        // `chunks_exact_mut(16)` yields exactly 16 bytes, so the conversion cannot fail.
        let arr: &mut [u8; 16] = c.try_into().expect("chunk of 16");
        *arr = (u128::from_ne_bytes(*arr) ^ kx).to_ne_bytes();
    }
    // 16 is a multiple of 4: the rest starts at key byte 0 of the rotated key.
    let rest = chunks.into_remainder();
    let (eight, tail) = rest.split_at_mut(rest.len() & !7);
    if let Ok(arr) = <&mut [u8; 8]>::try_from(eight) {
        *arr = (u64::from_ne_bytes(*arr) ^ kw).to_ne_bytes();
    }
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
    (phase + buf.len()) & 3
}
