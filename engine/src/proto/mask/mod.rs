//! Unmasking (and masking: XOR is its own inverse) of WebSocket payloads, in place.
//!
//! RFC 6455 section 5.3: byte `i` of a payload is XORed with byte `i % 4` of the masking key.
//! A payload may arrive over several reads, so every function takes a *phase* (which key byte
//! the first byte of `buf` meets) and returns the phase for the byte after `buf`.
//!
//! Layout, after memchr's `arch/`:
//! * [`scalar`]: the byte-at-a-time loop. Only the oracle for tests and benches.
//! * [`word`]: 8 bytes at a time in a `u64`. The portable fallback that ships.
//! * `x86_64`: SSE2 (baseline on every x86_64 CPU) and AVX2 (when the CPU has it).
//! * `aarch64`: NEON (baseline on every aarch64 CPU).
//! * [`apply_mask`]: detects the best path once, caches a function pointer and calls it.
//!
//! Build with `--cfg volley_disable_simd` to ship the word loop only (Miri uses it too).

pub mod scalar;
pub mod word;

#[cfg(all(target_arch = "x86_64", not(volley_disable_simd), not(miri)))]
pub mod x86_64;

#[cfg(all(target_arch = "aarch64", not(volley_disable_simd), not(miri)))]
pub mod aarch64;

mod dispatch;

pub use dispatch::{apply_mask, selected};

/// The key as it applies to a buffer whose first byte meets key byte `phase`.
#[inline]
pub(crate) fn rotate(key: [u8; 4], phase: usize) -> [u8; 4] {
    // Little-endian view: byte `p` moves to byte 0 with one rotate instruction.
    u32::from_le_bytes(key)
        .rotate_right(8 * (phase as u32 & 3))
        .to_le_bytes()
}

/// Unmasks a short payload whose first byte meets key byte 0, and says whether every
/// unmasked byte is ASCII: one pass of 8-byte words for the small frames most messages are
/// (the SIMD path's dispatch and set-up cost more than such payloads; a text's validation
/// needs no second pass when the answer is yes).
#[inline]
pub(crate) fn unmask_short_is_ascii(buf: &mut [u8], key: [u8; 4]) -> bool {
    let k4 = u32::from_ne_bytes(key);
    let kw = u64::from(k4) | (u64::from(k4) << 32);
    let mut seen = 0u64;
    let mut rest = buf;
    while rest.len() >= 8 {
        let (word, tail) = std::mem::take(&mut rest).split_at_mut(8);
        // Exactly 8 bytes: the conversion cannot fail.
        let word: &mut [u8; 8] = word.try_into().expect("8 bytes");
        let w = u64::from_ne_bytes(*word) ^ kw;
        seen |= w;
        *word = w.to_ne_bytes();
        rest = tail;
    }
    // 8 and 4 are multiples of 4: what is left starts at key byte 0.
    if rest.len() >= 4 {
        let (word, tail) = std::mem::take(&mut rest).split_at_mut(4);
        // Exactly 4 bytes: the conversion cannot fail.
        let word: &mut [u8; 4] = word.try_into().expect("4 bytes");
        let w = u32::from_ne_bytes(*word) ^ k4;
        seen |= u64::from(w);
        *word = w.to_ne_bytes();
        rest = tail;
    }
    for (b, k) in rest.iter_mut().zip(key) {
        *b ^= k;
        seen |= u64::from(*b);
    }
    seen & 0x8080_8080_8080_8080 == 0
}

/// Unmasks a frame's whole payload (its first byte meets key byte 0). Returns whether every
/// byte is known to be ASCII: checked in the same pass for payloads of up to 64 bytes,
/// `false` (not known) for longer ones, which take the SIMD path.
#[inline]
pub(crate) fn unmask_payload(buf: &mut [u8], key: [u8; 4]) -> bool {
    if buf.len() <= 64 {
        unmask_short_is_ascii(buf, key)
    } else {
        apply_mask(buf, key, 0);
        false
    }
}

#[cfg(test)]
mod tests;
