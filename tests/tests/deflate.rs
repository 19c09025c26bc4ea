//! permessage-deflate (RFC 7692) over real sockets, on both backends: what is agreed, the
//! echo of compressed messages, every RSV1 rule with its close code, and a zip bomb that
//! costs the server no more than `max_message`.

mod common;

use common::*;
use std::time::Duration;
use volley::proto::deflate::{Deflater, TAIL};
use volley::proto::OpCode;
use volley::Backend;

const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn deflate_server(b: Backend) -> TestServer {
    TestServer::start(TestServer::config(b).deflate(true))
}

/// A 1 KiB JSON event, as the benchmarks send.
fn json_1k() -> String {
    let mut s = String::from("{\"type\":\"quote\",\"items\":[");
    let mut i = 0;
    while s.len() < 1000 {
        s.push_str(&format!(
            "{{\"id\":{i},\"sym\":\"SYM{i}\",\"px\":{}.25,\"qty\":{}}},",
            100 + i,
            i * 3
        ));
        i += 1;
    }
    s.pop();
    s.push_str("]}");
    s
}

fn negotiation(b: Backend) {
    let srv = deflate_server(b);
    // Chromium's offer.
    let c = RawClient::connect_deflate(srv.addr, "permessage-deflate; client_max_window_bits");
    assert_eq!(c.extensions().as_deref(), Some(AGREED));
    // Several offers in one header: the first one we can honour wins (8 bits cannot be).
    let c = RawClient::connect_deflate(
        srv.addr,
        "permessage-deflate; server_max_window_bits=8, \
         permessage-deflate; server_max_window_bits=10; client_no_context_takeover, \
         permessage-deflate",
    );
    assert_eq!(
        c.extensions(),
        Some(format!("{AGREED}; server_max_window_bits=10"))
    );
    // Offers spread over two headers.
    let c = RawClient::connect_raw(
        srv.addr,
        "/",
        &[
            ("Sec-WebSocket-Extensions", "x-webkit-deflate-frame"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ],
    );
    assert_eq!(c.extensions().as_deref(), Some(AGREED));
    // Malformed offers are declined (RFC 7692 7.1), and the connection opens without.
    for offer in [
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover=yes",
    ] {
        let mut c = RawClient::connect_deflate(srv.addr, offer);
        assert_eq!(c.extensions(), None, "{offer}");
        c.send_text("still open");
        assert_eq!(c.recv(), Got::Text("still open".into()));
    }
    // Off by default.
    let plain = TestServer::start(TestServer::config(b));
    let c = RawClient::connect_deflate(plain.addr, "permessage-deflate");
    assert_eq!(c.extensions(), None);
}

fn compressed_echo(b: Backend) {
    let srv = deflate_server(b);
    let mut c = RawClient::connect_deflate(srv.addr, "permessage-deflate");
    let json = json_1k();
    c.send_compressed(OpCode::Text, json.as_bytes(), 1);
    assert_eq!(c.recv(), Got::Text(json.clone()));
    assert!(c.last_compressed, "the echo of 1 KiB JSON is compressed");
    // A fragmented compressed message, with a ping between its frames.
    let big: Vec<u8> = json
        .as_bytes()
        .iter()
        .cycle()
        .take(200_000)
        .copied()
        .collect();
    c.send_compressed(OpCode::Binary, &big, 5);
    assert_eq!(c.recv(), Got::Binary(big));
    assert!(c.last_compressed);
    // Under the threshold (64 bytes): sent plain; an uncompressed message is fine too.
    c.send_text("short");
    assert_eq!(c.recv(), Got::Text("short".into()));
    assert!(!c.last_compressed);
    // Data that does not shrink goes out plain.
    let noise: Vec<u8> = (0..4096).map(|_| rand_bytes::<1>()[0]).collect();
    c.send_compressed(OpCode::Binary, &noise, 1);
    assert_eq!(c.recv(), Got::Binary(noise));
    assert!(!c.last_compressed);
    // A client that asked for a 512-byte window gets its echo compressed with one.
    let mut small =
        RawClient::connect_deflate(srv.addr, "permessage-deflate; server_max_window_bits=9");
    small.send_compressed(OpCode::Text, json.as_bytes(), 1);
    assert_eq!(small.recv(), Got::Text(json.clone()));
    assert!(small.last_compressed);
    let st = srv.handle().stats();
    assert!(st.messages_inflated >= 4, "{st:?}");
    assert!(st.messages_deflated >= 3, "{st:?}");
}

/// One violation on a fresh connection: the server closes with `code`, and `on_close`
/// says so.
fn expect_violation(
    srv: &TestServer,
    offer: Option<&str>,
    code: u16,
    send: impl FnOnce(&mut RawClient),
) {
    let mut c = match offer {
        Some(o) => RawClient::connect_deflate(srv.addr, o),
        None => RawClient::connect(srv.addr, "/"),
    };
    assert_eq!(c.extensions().is_some(), offer.is_some());
    send(&mut c);
    assert_eq!(c.expect_close(), Some(code));
    assert_eq!(srv.next_close().0, code);
}

fn rsv1_rules_and_bad_data(b: Backend) {
    let srv = TestServer::start(TestServer::config(b).deflate(true).limits(4 << 20, 4 << 20));
    let pmd = Some("permessage-deflate");
    // RSV1 without negotiation.
    expect_violation(&srv, None, 1002, |c| {
        c.send_rsv1_payload(OpCode::Text, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 1)
    });
    // RSV1 on a control frame.
    expect_violation(&srv, pmd, 1002, |c| {
        c.send_rsv1_payload(OpCode::Ping, b"", 1)
    });
    // RSV1 on a continuation frame.
    expect_violation(&srv, pmd, 1002, |c| {
        c.send_frame(OpCode::Text, false, b"a");
        let mut f = Vec::new();
        volley::proto::encode::encode_client_frame(
            OpCode::Continuation,
            true,
            b"b",
            [1, 2, 3, 4],
            &mut f,
        );
        f[0] |= 0x40;
        c.send_raw(&f);
    });
    // Not a deflate stream: 1007 for text, 1002 for binary.
    expect_violation(&srv, pmd, 1007, |c| {
        c.send_rsv1_payload(OpCode::Text, &[0xff, 0xff, 0xff], 1)
    });
    expect_violation(&srv, pmd, 1002, |c| {
        c.send_rsv1_payload(OpCode::Binary, &[0xff, 0xff, 0xff], 1)
    });
    // Deflate of invalid UTF-8.
    expect_violation(&srv, pmd, 1007, |c| {
        c.send_compressed(OpCode::Text, &[b'a', 0xC0, b'b'], 1)
    });
    // Inflates past max_message (4 MiB): 1009.
    expect_violation(&srv, pmd, 1009, |c| {
        c.send_compressed(OpCode::Binary, &vec![0u8; 5 << 20], 2)
    });
    // The server is still well.
    let mut c = RawClient::connect_deflate(srv.addr, "permessage-deflate");
    c.send_compressed(OpCode::Text, json_1k().as_bytes(), 1);
    assert_eq!(c.recv(), Got::Text(json_1k()));
}

/// Peak resident memory of a process, from /proc (kB).
fn vm_hwm_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A zip bomb: `blocks` sync-flushed copies of 16 MiB of zeros, each about 16 KiB.
fn bomb(blocks: usize) -> Vec<u8> {
    let mut one = Vec::new();
    Deflater::new(9).compress(15, &vec![0u8; 16 << 20], &mut one);
    let mut b = Vec::with_capacity(blocks * (one.len() + 4));
    for i in 0..blocks {
        b.extend_from_slice(&one);
        if i + 1 < blocks {
            b.extend_from_slice(&TAIL);
        }
    }
    b
}

fn zip_bomb_costs_at_most_max_message(b: Backend) {
    let backend = format!("{b:?}").to_lowercase();
    let srv = ChildServer::spawn(&[
        "--backend",
        &backend,
        "--mode",
        "echo",
        "--deflate",
        "--max-message",
        &(4 << 20).to_string(),
    ]);
    let bomb = bomb(64);
    // About 1 MiB on the wire, 1 GiB inflated.
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let mut c = RawClient::connect_deflate(srv.addr, "permessage-deflate");
    c.send_text("warm up");
    assert_eq!(c.recv(), Got::Text("warm up".into()));
    let before = vm_hwm_kb(srv.pid());
    c.send_rsv1_payload(OpCode::Binary, &bomb, 1);
    assert_eq!(c.expect_close(), Some(1009));
    let grew = vm_hwm_kb(srv.pid()).saturating_sub(before);
    // The output is capped at max_message (4 MiB) and the compressed message is held
    // whole (1 MiB): the peak grows by about that, never by the gigabyte.
    assert!(grew < 12 << 10, "peak memory grew by {grew} kB");
    // Still serving.
    let mut c = RawClient::connect_deflate(srv.addr, "permessage-deflate");
    c.send_compressed(OpCode::Text, b"after the bomb, after the bomb", 1);
    assert_eq!(
        c.recv_within(Duration::from_secs(10)),
        Some(Got::Text("after the bomb, after the bomb".into()))
    );
}

both_backends!(
    negotiation,
    compressed_echo,
    rsv1_rules_and_bad_data,
    zip_bomb_costs_at_most_max_message,
);
