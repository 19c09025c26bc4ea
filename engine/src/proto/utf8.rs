//! UTF-8 validation with simdutf8, whole and streaming.
//!
//! A text message may be split across frames, and a frame's payload across reads, at any
//! byte, including inside a code point. [`Utf8Stream`] carries the (at most 3) bytes of an
//! unfinished code point to the next chunk, and fails as soon as the input is certainly
//! invalid (RFC 6455 section 8.1 allows failing fast; Autobahn 6.4.x checks it), not only
//! when the message ends.

use super::error::ProtocolError;

/// Validates a whole text payload; returns it as `&str`.
///
/// # Errors
/// [`ProtocolError::InvalidUtf8`] if `bytes` is not UTF-8.
#[inline]
#[allow(unsafe_code)]
pub fn validate(bytes: &[u8]) -> Result<&str, ProtocolError> {
    // Short texts (chat lines, small JSON events) are mostly ASCII: a word-at-a-time check
    // of their high bits is a few nanoseconds, where simdutf8 hands inputs under 64 bytes to
    // `core::str::from_utf8` (2.7% of the server's CPU echoing 20-byte texts, 16 in flight).
    if bytes.len() < 64 && bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    // The `basic` flavour is the fastest; it only says yes or no, which is all we need here.
    simdutf8::basic::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8)
}

/// Unmasks a text frame's whole payload (its first byte meets key byte 0) and validates it:
/// a short ASCII text in one pass over its bytes.
#[inline]
#[allow(unsafe_code)]
pub(crate) fn unmask_text(bytes: &mut [u8], key: [u8; 4]) -> Result<&str, ProtocolError> {
    if super::mask::unmask_payload(bytes, key) {
        // SAFETY: `unmask_payload` returns true only when it saw every unmasked byte with
        // its high bit clear: ASCII, which is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    validate(bytes)
}

/// [`unmask_text`] for the payload at `frame[at..]`, giving back the whole `frame` beside the
/// text, both shared: a caller can hand out the text and still send the frame (a header in
/// `frame[..at]`, then the payload) as one piece.
#[inline]
#[allow(unsafe_code)]
pub(crate) fn unmask_text_in(
    frame: &mut [u8],
    at: usize,
    key: [u8; 4],
) -> Result<(&[u8], &str), ProtocolError> {
    let ascii = super::mask::unmask_payload(&mut frame[at..], key);
    let frame = &*frame;
    let text = &frame[at..];
    if ascii {
        // SAFETY: as in `unmask_text`: every unmasked byte of `text` had its high bit clear,
        // and nothing has written to them since (`frame` is only shared from here on).
        return Ok((frame, unsafe { std::str::from_utf8_unchecked(text) }));
    }
    validate(text).map(|t| (frame, t))
}

/// Streaming validator for a text message that arrives in pieces.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    /// The bytes of an unfinished code point from the previous chunk.
    /// INVARIANT: `carry_len < 4`, and `carry[..carry_len]` is a valid prefix of a code point.
    carry: [u8; 4],
    carry_len: u8,
}

/// Length of the code point a lead byte starts, or 0 if it cannot start one.
fn seq_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl Utf8Stream {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece of the message.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidUtf8`] as soon as the bytes so far cannot begin valid UTF-8.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ProtocolError> {
        if self.carry_len > 0 {
            let have = self.carry_len as usize;
            let need = seq_len(self.carry[0]);
            debug_assert!(need > have);
            let take = (need - have).min(chunk.len());
            self.carry[have..have + take].copy_from_slice(&chunk[..take]);
            let now = have + take;
            chunk = &chunk[take..];
            match simdutf8::compat::from_utf8(&self.carry[..now]) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix; the chunk ran out before the code point ended.
                    self.carry_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(ProtocolError::InvalidUtf8),
            }
        }
        match simdutf8::compat::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                // The chunk ends inside a code point that may still be completed.
                let rest = &chunk[e.valid_up_to()..];
                self.carry[..rest.len()].copy_from_slice(rest);
                self.carry_len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(ProtocolError::InvalidUtf8),
        }
    }

    /// Ends the message: an unfinished code point at the end is invalid.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidUtf8`] if the message ended inside a code point.
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let unfinished = self.carry_len != 0;
        self.carry_len = 0;
        if unfinished {
            Err(ProtocolError::InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream_ok(pieces: &[&[u8]]) -> Result<(), ProtocolError> {
        let mut s = Utf8Stream::new();
        for p in pieces {
            s.feed(p)?;
        }
        s.finish()
    }

    #[test]
    fn split_code_points_are_valid() {
        let text = "κόσμε 🎉 ok".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(
                    stream_ok(&[&text[..a], &text[a..b], &text[b..]]),
                    Ok(()),
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn fails_fast_on_the_piece_that_breaks_it() {
        // Autobahn 6.4.1: "κόσμε" + 0xF4 0x90 0x80 0x80 (above U+10FFFF) + "edited".
        let mut s = Utf8Stream::new();
        s.feed("κόσμε".as_bytes()).unwrap();
        // 0xF4 alone may still start a valid code point...
        s.feed(&[0xF4]).unwrap();
        // ...but 0xF4 0x90 never can: fail now, before the message ends.
        assert_eq!(s.feed(&[0x90]), Err(ProtocolError::InvalidUtf8));
        // An invalid byte in the middle of a chunk fails at once as well.
        assert_eq!(
            Utf8Stream::new().feed(b"ab\xFFcd"),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn unfinished_at_end_is_invalid() {
        assert_eq!(stream_ok(&[&[0xE2, 0x82]]), Err(ProtocolError::InvalidUtf8));
        assert_eq!(stream_ok(&[b"", b""]), Ok(()));
    }

    #[test]
    fn whole_texts_short_and_long_are_checked() {
        assert_eq!(validate(b"hello"), Ok("hello"));
        assert_eq!(validate(b""), Ok(""));
        assert_eq!(validate("h\u{e9}llo".as_bytes()), Ok("h\u{e9}llo"));
        assert_eq!(validate(b"abc\xFF"), Err(ProtocolError::InvalidUtf8));
        assert_eq!(validate(&[b'a'; 63]).map(str::len), Ok(63));
        let mut long = vec![b'a'; 100];
        assert_eq!(validate(&long).map(str::len), Ok(100));
        long[99] = 0x80;
        assert_eq!(validate(&long), Err(ProtocolError::InvalidUtf8));
    }

    proptest! {
        #[test]
        fn prop_validate_matches_std(bytes in proptest::collection::vec(
            prop_oneof![4 => 0x20u8..0x7F, 1 => any::<u8>()], 0..100)) {
            prop_assert_eq!(validate(&bytes).is_ok(), std::str::from_utf8(&bytes).is_ok());
        }

        #[test]
        fn prop_stream_matches_std(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts { pieces.push(&bytes[last..c]); last = c; }
            pieces.push(&bytes[last..]);
            let want = std::str::from_utf8(&bytes).is_ok();
            prop_assert_eq!(stream_ok(&pieces).is_ok(), want);
            prop_assert_eq!(validate(&bytes).is_ok(), want);
        }
    }
}
