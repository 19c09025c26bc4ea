//! Inputs found by the fuzzers (`engine/fuzz/`), each a named test with its bytes stored
//! under `tests/testdata/regressions/<target>-<name>.bin`, exactly as the fuzzer minimised it.
//!
//! A test for a bug that is still open is `#[ignore]`d with the reason; run them with
//! `cargo test -p volley-tests --test regressions -- --ignored`. Un-ignore it in the commit
//! that fixes the bug.

use volley::proto::handshake::DEFAULT_MAX_HEAD;
use volley_tests::{drive_handshake, Handshake};

/// Found by `handshake_parse` after ~1.8 M runs (110 s), minimised by `cargo fuzz tmin`:
///
/// ```text
/// GET t HTTP/1.1\r\nHost:\nUpgrade:websocket\nConnection:Upgrade\n
/// Sec-WebSocket-Key:dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version:13\n\r\n\r\n
/// ```
///
/// `HeadScanner::find_end` only knows `\r\n\r\n` and says the head is 131 bytes; httparse
/// also accepts bare `\n` line endings and ends the head at the `\n\r\n`, 129 bytes
/// (`Request::head_len`). The request validates, so the two trailing bytes (in general:
/// everything between the first bare-LF blank line and the first `\r\n\r\n`, possibly the
/// client's first frames) are neither head nor WebSocket stream: a runtime that resumes
/// at the scanner's length silently drops them, one that resumes at `head_len` re-reads
/// bytes the scanner called head. A head ending in a bare-LF blank line with no CRLF one
/// later is never found at all and waits until 431.
///
/// Either answer is acceptable: rejecting such a head (400), or accepting it with both
/// lengths equal.
#[test]
/// Fixed: `parse_request` refuses (400) a head whose parsed length differs from the scanned one.
fn head_with_bare_lf_lines_ends_where_the_parser_says() {
    let bytes = include_bytes!("../testdata/regressions/handshake_parse-bare_lf_head_end.bin");
    match drive_handshake(bytes, &[], DEFAULT_MAX_HEAD) {
        Handshake::Accepted {
            scanned_len,
            parsed_len,
            ..
        } => assert_eq!(scanned_len, parsed_len, "head length"),
        Handshake::Rejected(e) => assert_eq!(e.status(), 400),
        Handshake::Partial => panic!("a complete head must be answered"),
    }
}
