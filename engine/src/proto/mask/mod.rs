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

#[cfg(test)]
mod tests;
