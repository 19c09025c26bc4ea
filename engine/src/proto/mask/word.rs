//! Word-at-a-time unmask: 8 bytes per step in a `u64`, no `unsafe`, any target.

use super::rotate;

/// XORs `buf` with `key`, starting at key byte `phase`; returns the phase after `buf`.
///
/// Short buffers step 16 bytes in a `u128` (one SSE2 register where there is one); long ones
/// 8 bytes in a `u64`, a loop LLVM vectorises further (docs/benchmarks.md has both).
#[inline]
pub fn apply_mask_word(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let len = buf.len();
    let k = rotate(key, phase);
    let k4 = u32::from_ne_bytes(k);
    let kw = (k4 as u64) | ((k4 as u64) << 32);
    let rest = if len < 256 {
        let kx = (kw as u128) | ((kw as u128) << 64);
        let mut chunks = buf.chunks_exact_mut(16);
        for c in &mut chunks {
            // `chunks_exact_mut(16)` yields exactly 16 bytes: the conversion cannot fail.
            let arr: &mut [u8; 16] = c.try_into().expect("chunk of 16");
            *arr = (u128::from_ne_bytes(*arr) ^ kx).to_ne_bytes();
        }
        chunks.into_remainder()
    } else {
        buf
    };
    // 16 is a multiple of 4: the rest starts at key byte 0 of the rotated key.
    let mut chunks = rest.chunks_exact_mut(8);
    for c in &mut chunks {
        // `chunks_exact_mut(8)` yields exactly 8 bytes: the conversion cannot fail.
        let arr: &mut [u8; 8] = c.try_into().expect("chunk of 8");
        *arr = (u64::from_ne_bytes(*arr) ^ kw).to_ne_bytes();
    }
    // 8 is a multiple of 4: the tail starts at key byte 0 of the rotated key.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
    (phase + len) & 3
}
