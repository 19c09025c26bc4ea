//! The byte-at-a-time unmask: the reference every other path is tested against.

/// XORs `buf` with `key`, starting at key byte `phase`; returns the phase after `buf`.
///
/// Deliberately plain: this is the oracle, not the fast path.
#[inline(never)]
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let mut p = phase & 3;
    for b in buf.iter_mut() {
        *b ^= key[p];
        p = (p + 1) & 3;
    }
    p
}
