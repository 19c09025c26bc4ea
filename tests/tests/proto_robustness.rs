//! Robustness properties of the sans-IO core against hostile and broken input.
//!
//! Random bytes and *mutated valid streams* (bytes flipped, inserted, deleted, truncated,
//! then split at random read boundaries) go through the handshake path and through the
//! frame decoder in both roles. The drivers in `volley_tests` panic on any broken
//! invariant (no panic in the core, progress or "need more" on every call, at most
//! `MAX_KEPT` bytes kept between reads, an assembly buffer bounded by the limits and by the
//! bytes received, wire-legal close codes, 4xx statuses), and the decoder's output is
//! diffed against the naive `model_decode`.
//!
//! Case counts are chosen so that the whole file runs in a few seconds with
//! `cargo test --release -p volley-tests --test proto_robustness`; set `PROPTEST_CASES` to
//! run every property with more cases.

use proptest::prelude::*;
use proptest::sample::Index;
use volley::proto::handshake::{ClientKey, DEFAULT_MAX_HEAD};
use volley::proto::{Limits, ProtocolError, Role};
use volley_tests::{
    cuts_every, drive_decoder, drive_handshake, encode_frames, model_decode, mutate, plan_frames,
    Control, Handshake, Mutation, Planned, MAX_KEPT,
};

/// `cases`, unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Server), Just(Role::Client)]
}

/// Default limits, or small ones so that 1009 paths are reached with small inputs.
fn arb_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0usize..300, 0usize..600).prop_map(|(max_frame, max_message)| Limits {
            max_frame,
            max_message
        }),
    ]
}

/// How a stream is split into reads.
#[derive(Debug, Clone)]
enum Reads {
    /// Boundaries at these positions (taken modulo the length).
    At(Vec<Index>),
    /// Every `n` bytes.
    Every(usize),
}

fn arb_reads() -> impl Strategy<Value = Reads> {
    prop_oneof![
        3 => proptest::collection::vec(any::<Index>(), 0..12).prop_map(Reads::At),
        1 => (1usize..24).prop_map(Reads::Every),
    ]
}

fn cuts(reads: &Reads, len: usize) -> Vec<usize> {
    match reads {
        Reads::At(ix) => ix.iter().map(|i| i.index(len + 1)).collect(),
        Reads::Every(n) => cuts_every(len, *n),
    }
}

fn arb_control() -> impl Strategy<Value = Control> {
    let payload = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..16),
        1 => proptest::collection::vec(any::<u8>(), 120..=125),
    ];
    (any::<bool>(), payload).prop_map(|(ping, p)| {
        if ping {
            Control::Ping(p)
        } else {
            Control::Pong(p)
        }
    })
}

fn arb_data() -> impl Strategy<Value = Planned> {
    let text = proptest::string::string_regex(".{0,60}")
        .expect("regex")
        .prop_map(|s| (true, s.into_bytes()));
    let binary = proptest::collection::vec(any::<u8>(), 0..400).prop_map(|b| (false, b));
    (
        prop_oneof![text, binary],
        proptest::collection::vec(any::<Index>(), 0..5),
        proptest::collection::vec((0usize..6, arb_control()), 0..3),
    )
        .prop_map(|((text, payload), splits, controls)| Planned::Data {
            splits: splits.iter().map(|i| i.index(payload.len() + 1)).collect(),
            text,
            payload,
            controls,
        })
}

fn arb_close() -> impl Strategy<Value = Option<(u16, String)>> {
    let code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
    // At most 30 chars of at most 4 bytes: within the 123 bytes a close reason may have.
    let reason = proptest::string::string_regex(".{0,30}").expect("regex");
    proptest::option::of((code, reason))
}

fn arb_plan() -> impl Strategy<Value = (Vec<Planned>, Option<(u16, String)>)> {
    (
        proptest::collection::vec(
            prop_oneof![3 => arb_data(), 1 => arb_control().prop_map(Planned::Control)],
            0..6,
        ),
        arb_close(),
    )
}

fn arb_mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(pos, mask)| Mutation::Flip { pos, mask }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(pos, byte)| Mutation::Insert { pos, byte }),
        1 => any::<usize>().prop_map(|pos| Mutation::Delete { pos }),
        1 => any::<usize>().prop_map(|len| Mutation::Truncate { len }),
    ];
    proptest::collection::vec(one, 1..5)
}

/// Decodes `wire` in the given reads, checks the invariants (inside `drive_decoder`), and
/// checks the result against the model.
fn check_against_model(
    role: Role,
    limits: Limits,
    wire: &[u8],
    cuts: &[usize],
) -> Result<(), TestCaseError> {
    let (got, marks) = drive_decoder(role, limits, wire, cuts);
    prop_assert!(marks.max_kept <= MAX_KEPT);
    let want = model_decode(role, limits, wire);
    prop_assert_eq!(got, want);
    Ok(())
}

proptest! {
    #![proptest_config(config(32_768))]

    /// Random bytes, both roles: no panic, invariants hold, same result as the model.
    #[test]
    fn prop_random_bytes_match_model(
        role in arb_role(),
        limits in arb_limits(),
        wire in proptest::collection::vec(any::<u8>(), 0..600),
        reads in arb_reads(),
    ) {
        check_against_model(role, limits, &wire, &cuts(&reads, wire.len()))?;
    }

    /// Random bytes behind a valid frame header prefix, so decoding gets past the first
    /// byte more often than with uniform bytes.
    #[test]
    fn prop_random_payload_behind_header_bits_match_model(
        role in arb_role(),
        limits in arb_limits(),
        b0 in prop_oneof![Just(0x81u8), Just(0x82), Just(0x01), Just(0x02), Just(0x00),
                          Just(0x80), Just(0x88), Just(0x89), Just(0x8A), any::<u8>()],
        len7 in prop_oneof![0u8..=125, Just(126), Just(127)],
        rest in proptest::collection::vec(any::<u8>(), 0..400),
        reads in arb_reads(),
    ) {
        let mask_bit = if role == Role::Server { 0x80 } else { 0 };
        let mut wire = vec![b0, mask_bit | len7];
        wire.extend_from_slice(&rest);
        check_against_model(role, limits, &wire, &cuts(&reads, wire.len()))?;
    }
}

proptest! {
    #![proptest_config(config(16_384))]

    /// Valid streams with a few bytes flipped, inserted, deleted or cut off: invariants hold
    /// and the decoder agrees with the model, in both roles.
    #[test]
    fn prop_mutated_streams_match_model(
        role in arb_role(),
        limits in arb_limits(),
        (items, close) in arb_plan(),
        seed in any::<u64>(),
        mutations in arb_mutations(),
        reads in arb_reads(),
    ) {
        let (frames, _) = plan_frames(&items, close.as_ref().map(|(c, r)| (*c, r.as_str())));
        let mut wire = encode_frames(role, &frames, seed);
        mutate(&mut wire, &mutations);
        check_against_model(role, limits, &wire, &cuts(&reads, wire.len()))?;
    }

    /// Differential: a valid stream of random messages (random fragmentation, interleaved
    /// pings and pongs, text and binary, an optional close at the end) decodes to exactly the
    /// planned messages however it is split into reads. Server role decodes frames from
    /// `encode_client_frame`; client role decodes unmasked frames.
    #[test]
    fn prop_valid_stream_decodes_to_original_messages(
        role in arb_role(),
        (items, close) in arb_plan(),
        seed in any::<u64>(),
        reads in arb_reads(),
    ) {
        let (frames, expected) =
            plan_frames(&items, close.as_ref().map(|(c, r)| (*c, r.as_str())));
        let wire = encode_frames(role, &frames, seed);
        let (got, marks) = drive_decoder(role, Limits::default(), &wire, &cuts(&reads, wire.len()));
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(&got.messages, &expected);
        prop_assert!(marks.max_kept <= MAX_KEPT);
        // Nothing may be left over: the stream ends on a frame boundary.
        let (whole, _) = drive_decoder(role, Limits::default(), &wire, &[]);
        prop_assert_eq!(whole.messages, expected);
    }

    /// The same valid streams under small limits: whatever is delivered before an error is
    /// a prefix of the planned messages, and the only possible errors are 1009.
    #[test]
    fn prop_valid_stream_under_small_limits_fails_only_with_1009(
        role in arb_role(),
        limits in (0usize..300, 0usize..600).prop_map(|(max_frame, max_message)| Limits {
            max_frame,
            max_message,
        }),
        (items, close) in arb_plan(),
        seed in any::<u64>(),
        reads in arb_reads(),
    ) {
        let (frames, expected) =
            plan_frames(&items, close.as_ref().map(|(c, r)| (*c, r.as_str())));
        let wire = encode_frames(role, &frames, seed);
        let c = cuts(&reads, wire.len());
        let (got, _) = drive_decoder(role, limits, &wire, &c);
        prop_assert!(expected.starts_with(&got.messages));
        if let Some(e) = got.error {
            prop_assert!(
                matches!(e, ProtocolError::FrameTooBig { .. } | ProtocolError::MessageTooBig { .. }),
                "{:?}", e
            );
            prop_assert_eq!(e.close_code().0, 1009);
        } else {
            prop_assert_eq!(&got.messages, &expected);
        }
        prop_assert_eq!(got, model_decode(role, limits, &wire));
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Frames whose lengths cross the 7-bit, 16-bit and 64-bit encodings, streamed through
    /// reads of random sizes, with the 64 KiB boundary inside.
    #[test]
    fn prop_large_frames_stream_through_random_reads(
        role in arb_role(),
        len in prop_oneof![Just(125usize), Just(126), Just(65_535), Just(65_536), 60_000usize..70_000],
        frag in any::<Index>(),
        fill in any::<u8>(),
        seed in any::<u64>(),
        reads in proptest::collection::vec(any::<Index>(), 0..40),
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ fill).collect();
        let items = [Planned::Data {
            text: false,
            splits: vec![frag.index(len + 1)],
            payload,
            controls: vec![(0, Control::Ping(b"mid".to_vec()))],
        }];
        let (frames, expected) = plan_frames(&items, None);
        let wire = encode_frames(role, &frames, seed);
        let c: Vec<usize> = reads.iter().map(|i| i.index(wire.len() + 1)).collect();
        let (got, marks) = drive_decoder(role, Limits::default(), &wire, &c);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.messages, expected);
        prop_assert!(marks.max_capacity <= 2 * len.max(8));
    }
}

/// Pieces that random request heads are built from, so that random heads look like HTTP
/// often enough to get past the first checks.
const HEAD_TOKENS: &[&str] = &[
    "GET ",
    "POST ",
    "/",
    "/chat?x=1",
    " HTTP/1.1",
    " HTTP/1.0",
    "\r\n",
    "\n",
    "\r",
    ": ",
    ":",
    ",",
    " ",
    "\t",
    "Host",
    "host",
    "Upgrade",
    "websocket",
    "Connection",
    "upgrade",
    "keep-alive",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "13",
    "dGhlIHNhbXBsZSBub25jZQ==",
    "dGhlIHNhbXBsZQ==",
    "Origin",
    "\u{0}",
    "\u{7f}",
    "é",
];

fn arb_head_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => proptest::sample::select(HEAD_TOKENS).prop_map(|t| t.as_bytes().to_vec()),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

fn arb_max_head() -> impl Strategy<Value = usize> {
    prop_oneof![Just(DEFAULT_MAX_HEAD), 0usize..300]
}

/// A valid upgrade request with random target, host, header order, header-name case,
/// optional white space and extra headers, plus the key it carries.
fn arb_request() -> impl Strategy<Value = (Vec<u8>, String)> {
    let target = proptest::string::string_regex("/[a-zA-Z0-9/._~-]{0,16}(\\?[a-z0-9=&]{0,12})?")
        .expect("regex");
    let host = proptest::string::string_regex("[a-z0-9.-]{1,20}(:[0-9]{1,5})?").expect("regex");
    let extra = proptest::collection::vec(
        (
            proptest::string::string_regex("X-[A-Za-z0-9-]{1,10}").expect("regex"),
            proptest::string::string_regex("[!-~]([ -~]{0,18}[!-~])?").expect("regex"),
        ),
        0..4,
    );
    let upgrade = proptest::sample::select(&["websocket", "WebSocket", "h2c, websocket"][..]);
    let connection =
        proptest::sample::select(&["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade ,x"][..]);
    (
        target,
        host,
        any::<[u8; 16]>(),
        upgrade,
        connection,
        extra,
        any::<u64>(),
        proptest::sample::select(&[": ", ":", ":  ", ":\t"][..]),
    )
        .prop_flat_map(
            |(target, host, nonce, upgrade, connection, extra, case_bits, sep)| {
                let key = ClientKey::from_nonce(nonce).as_str().to_owned();
                let mut headers: Vec<(String, String)> = vec![
                    ("Host".into(), host),
                    ("Upgrade".into(), upgrade.into()),
                    ("Connection".into(), connection.into()),
                    ("Sec-WebSocket-Key".into(), key.clone()),
                    ("Sec-WebSocket-Version".into(), "13".into()),
                ];
                headers.extend(extra);
                // Flip the case of header-name letters by the bits of `case_bits`.
                let mut bit = 0u32;
                for (name, _) in &mut headers {
                    *name = name
                        .chars()
                        .map(|c| {
                            bit = (bit + 1) % 64;
                            if case_bits >> bit & 1 == 1 {
                                c.to_ascii_lowercase()
                            } else {
                                c.to_ascii_uppercase()
                            }
                        })
                        .collect();
                }
                (
                    Just(headers).prop_shuffle(),
                    Just(target),
                    Just(sep),
                    Just(key),
                )
            },
        )
        .prop_map(|(headers, target, sep, key)| {
            let mut req = format!("GET {target} HTTP/1.1\r\n");
            for (n, v) in headers {
                req.push_str(&format!("{n}{sep}{v}\r\n"));
            }
            req.push_str("\r\n");
            (req.into_bytes(), key)
        })
}

proptest! {
    #![proptest_config(config(65_536))]

    /// Random heads built from HTTP-ish tokens and random bytes: no panic, every rejection
    /// is 4xx with a well-formed response, and the result does not depend on how the head
    /// was split into reads.
    #[test]
    fn prop_random_heads_are_answered_4xx_or_accepted(
        head in arb_head_soup(),
        max_head in arb_max_head(),
        reads in arb_reads(),
    ) {
        let got = drive_handshake(&head, &cuts(&reads, head.len()), max_head);
        prop_assert_eq!(got, drive_handshake(&head, &[], max_head));
    }

    /// Uniform random bytes through the handshake path.
    #[test]
    fn prop_random_bytes_handshake(
        head in proptest::collection::vec(any::<u8>(), 0..400),
        max_head in arb_max_head(),
        reads in arb_reads(),
    ) {
        let got = drive_handshake(&head, &cuts(&reads, head.len()), max_head);
        prop_assert_eq!(got, drive_handshake(&head, &[], max_head));
    }
}

proptest! {
    #![proptest_config(config(16_384))]

    /// Valid upgrade requests (random order, case, white space, extra headers), split at
    /// random reads and followed by frame bytes, are accepted with the client's key and the
    /// exact head length.
    #[test]
    fn prop_valid_requests_are_accepted(
        (req, key) in arb_request(),
        trailing in proptest::collection::vec(any::<u8>(), 0..20),
        reads in arb_reads(),
    ) {
        let head_len = req.len();
        let mut bytes = req;
        // The client's first frames may arrive with the head. Whatever they contain, the
        // head still ends at its own blank line, the first in the buffer.
        bytes.extend_from_slice(&trailing);
        let got = drive_handshake(&bytes, &cuts(&reads, bytes.len()), DEFAULT_MAX_HEAD);
        prop_assert_eq!(
            got,
            Handshake::Accepted { key, scanned_len: head_len, parsed_len: head_len }
        );
    }

    /// Valid upgrade requests with random bytes flipped, inserted, deleted or cut off: no
    /// panic, 4xx or acceptance, independent of read boundaries, under any head limit.
    #[test]
    fn prop_mutated_requests_are_answered_4xx_or_accepted(
        (req, _key) in arb_request(),
        mutations in arb_mutations(),
        max_head in arb_max_head(),
        reads in arb_reads(),
    ) {
        let mut bytes = req;
        mutate(&mut bytes, &mutations);
        let got = drive_handshake(&bytes, &cuts(&reads, bytes.len()), max_head);
        prop_assert_eq!(&got, &drive_handshake(&bytes, &[], max_head));
        if let Handshake::Accepted { scanned_len, parsed_len, .. } = got {
            // The scanner and httparse must agree on where the head ends. They do not when
            // the head uses bare LF line endings (see tests/regressions.rs,
            // `head_with_bare_lf_lines_ends_where_the_parser_says`); skip that known case.
            if !has_bare_lf(&bytes[..scanned_len]) {
                prop_assert_eq!(scanned_len, parsed_len);
            }
        }
    }
}

/// Whether `b` has a `\n` not preceded by `\r`.
fn has_bare_lf(b: &[u8]) -> bool {
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
}

/// A head fed one byte per read: Partial on every read up to the limit, then 431 on the
/// read that crosses it. (That each read scans only the new bytes, plus an overlap of 3,
/// is `HeadScanner::scanned`; this test checks the answers, not the speed.)
#[test]
fn slow_head_one_byte_per_read() {
    let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
    head.resize(DEFAULT_MAX_HEAD + 1, b'a');
    let cuts: Vec<usize> = (1..head.len()).collect();
    assert_eq!(
        drive_handshake(&head, &cuts, DEFAULT_MAX_HEAD),
        Handshake::Rejected(volley::proto::HandshakeError::HeadTooLarge)
    );
}

/// A header declaring the largest frame the limits allow, followed by a few bytes, must not
/// make the decoder reserve the declared size.
#[test]
fn declared_length_does_not_reserve_memory() {
    for role in [Role::Server, Role::Client] {
        let limits = Limits::default();
        let mut wire = volley::proto::frame::encode_header(
            true,
            volley::proto::OpCode::Binary,
            limits.max_frame as u64,
            (role == Role::Server).then_some([1, 2, 3, 4]),
        )
        .to_vec();
        wire.extend_from_slice(&[0u8; 100]);
        let (got, marks) = drive_decoder(role, limits, &wire, &[]);
        assert_eq!(got.error, None);
        assert!(got.messages.is_empty());
        assert!(marks.max_capacity <= 256, "{}", marks.max_capacity);
    }
}
