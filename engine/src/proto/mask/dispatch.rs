//! Picks the fastest unmask the CPU supports, once, and caches it as a function pointer.

use std::sync::atomic::{AtomicPtr, Ordering};

type MaskFn = fn(&mut [u8], [u8; 4], usize) -> usize;

/// The cached choice. Starts at `detect`, which replaces itself on first use (memchr's
/// `unsafe_ifunc!` without the unsafe: a `fn` pointer stored as a `*mut ()`).
static CHOSEN: AtomicPtr<()> = AtomicPtr::new(detect as MaskFn as *mut ());

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
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let f = CHOSEN.load(Ordering::Relaxed);
    // Every value ever stored in CHOSEN is a `MaskFn` cast to a pointer, so casting back is
    // sound; `fn` pointers and data pointers have the same size on every target Rust supports.
    #[allow(unsafe_code)]
    // SAFETY: CHOSEN only ever holds pointers made from `MaskFn` values (see `detect`).
    let f: MaskFn = unsafe { std::mem::transmute::<*mut (), MaskFn>(f) };
    f(buf, key, phase)
}

/// The name of the path `apply_mask` uses on this CPU ("avx2", "sse2", "neon" or "word").
pub fn selected() -> &'static str {
    choose().0
}

fn choose() -> (&'static str, MaskFn) {
    #[cfg(all(target_arch = "x86_64", not(volley_disable_simd), not(miri)))]
    {
        if super::x86_64::avx2::is_available() {
            return ("avx2", super::x86_64::avx2::apply_mask_avx2);
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

fn detect(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let (_name, f) = choose();
    CHOSEN.store(f as *mut (), Ordering::Relaxed);
    f(buf, key, phase)
}
