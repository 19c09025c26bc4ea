//! Picks the fastest unmask the CPU supports, once, and caches it as a function pointer.

use std::sync::atomic::{AtomicPtr, Ordering};

/// Below this many bytes `apply_mask` does not dispatch.
const SMALL: usize = 128;

/// What the cache holds: an `unsafe fn` because the AVX2 path is stored unchecked (its
/// feature test is done once, in `choose`, not on every call).
type RawMaskFn = unsafe fn(&mut [u8], [u8; 4], usize) -> usize;

/// The cached choice. Starts at `detect`, which replaces itself on first use (memchr's
/// `unsafe_ifunc!`): a function pointer stored as a `*mut ()`.
static CHOSEN: AtomicPtr<()> = AtomicPtr::new(detect as RawMaskFn as *mut ());

/// XORs `buf` with `key`, starting at key byte `phase` (0..=3); returns the phase for the
/// byte after `buf`. Unmasks a client payload in place; masks a client frame likewise.
///
/// # Examples
/// ```
/// use volley::proto::mask::apply_mask;
/// let key = [0x37, 0xfa, 0x21, 0x3d];
/// let mut data = *b"Hello";
/// // Two reads: 3 bytes, then 2, with the phase carried between them.
/// let p = apply_mask(&mut data[..3], key, 0);
/// apply_mask(&mut data[3..], key, p);
/// assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
/// ```
#[inline]
#[allow(unsafe_code)]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    // Short payloads (most messages) take the word loop inline: for them an indirect call
    // and the vector set-up cost more than the vector loop saves (docs/benchmarks.md).
    if buf.len() < SMALL {
        return super::word::apply_mask_word(buf, key, phase);
    }
    let f = CHOSEN.load(Ordering::Relaxed);
    // SAFETY: CHOSEN only ever holds `RawMaskFn` values cast to pointers (`detect` and the
    // initialiser); fn and data pointers have the same size on every target Rust supports.
    let f: RawMaskFn = unsafe { std::mem::transmute::<*mut (), RawMaskFn>(f) };
    // SAFETY: the only unsafe function ever stored is the AVX2 one, and only after `choose`
    // found AVX2 on this CPU.
    unsafe { f(buf, key, phase) }
}

/// The name of the path `apply_mask` uses on this CPU ("avx2", "sse2", "neon" or "word").
pub fn selected() -> &'static str {
    choose().0
}

#[allow(unsafe_code)]
fn choose() -> (&'static str, RawMaskFn) {
    #[cfg(all(target_arch = "x86_64", not(volley_disable_simd), not(miri)))]
    {
        if super::x86_64::avx2::is_available() {
            return ("avx2", super::x86_64::avx2::apply_mask_avx2_unchecked);
        }
        return ("sse2", super::x86_64::sse2::apply_mask_sse2);
    }
    #[cfg(all(target_arch = "aarch64", not(volley_disable_simd), not(miri)))]
    {
        return ("neon", super::aarch64::apply_mask_neon);
    }
    #[allow(unreachable_code)]
    ("word", super::word::apply_mask_word)
}

#[allow(unsafe_code)]
unsafe fn detect(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let (name, f) = choose();
    tracing::debug!("unmask: using the {name} path");
    CHOSEN.store(f as *mut (), Ordering::Relaxed);
    // SAFETY: `choose` returns the AVX2 function only where the CPU has AVX2.
    unsafe { f(buf, key, phase) }
}
