//! Request heads: `HeadScanner::find_end` -> `parse_request` -> `Request::validate`.
//!
//! The whole input is the head (followed by whatever the client sent next). It is fed in
//! reads whose size comes from the first byte, and again in one read; `drive_handshake`
//! panics on any broken invariant (a head end that is not the first blank line, a head over
//! the limit accepted, a rejection that is not 4xx or has a malformed response, an accepted
//! key that is not base64 of 16 bytes). Both runs must agree, under the default head limit
//! and under one smaller than the input (to reach 431), and the scanner and httparse must
//! agree on where an accepted head ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley::proto::handshake::DEFAULT_MAX_HEAD;
use volley_tests::{cuts_every, drive_handshake, Handshake};

/// Whether `b` has a `\n` not preceded by `\r`.
fn has_bare_lf(b: &[u8]) -> bool {
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
}

fuzz_target!(|data: &[u8]| {
    let chunk = data.first().map_or(1, |b| (*b as usize % 32) + 1);
    let cuts = cuts_every(data.len(), chunk);
    for max_head in [DEFAULT_MAX_HEAD, data.len() / 2] {
        let split = drive_handshake(data, &cuts, max_head);
        let whole = drive_handshake(data, &[], max_head);
        assert_eq!(split, whole, "result depends on read boundaries");
        if let Handshake::Accepted {
            scanned_len,
            parsed_len,
            ..
        } = whole
        {
            // Known and reported: with bare-LF line endings httparse ends the head earlier
            // than the scanner (tests/regressions.rs,
            // `head_with_bare_lf_lines_ends_where_the_parser_says`). Remove this guard once
            // that is fixed.
            if !has_bare_lf(&data[..scanned_len]) {
                assert_eq!(scanned_len, parsed_len, "scanner and parser disagree");
            }
        }
    }
});
