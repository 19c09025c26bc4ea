//! The mio runtime against real clients: the tungstenite client (Rust) and a raw client on
//! the protocol core for what polite clients never send.

mod common;

use volley::Backend;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode as TCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message as TMsg;
use volley::proto::OpCode;
use volley::{CloseCode, Config};

fn tclient(
    srv: &TestServer,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>> {
    let (ws, resp) = tungstenite::connect(srv.url()).expect("tungstenite connects");
    assert_eq!(resp.status(), 101);
    ws
}

fn echo_text_and_binary_at_boundary_sizes(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    let mut ws = tclient(&srv);
    for size in [0usize, 125, 126, 65535, 65536, 16 << 20] {
        let bin: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        ws.send(TMsg::binary(bin.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), TMsg::binary(bin), "binary {size}");
        let text: String = (0..size)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        ws.send(TMsg::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), TMsg::text(text), "text {size}");
    }
    ws.close(None).unwrap();
    assert_eq!(srv.next_close().0, 1005);
}

fn fragmented_messages_with_interleaved_pings(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    let mut c = RawClient::connect(srv.addr, "/");
    c.send_frame(OpCode::Text, false, "κό".as_bytes());
    c.send_frame(OpCode::Ping, true, b"mid");
    c.send_frame(OpCode::Continuation, false, "σμ".as_bytes());
    c.send_frame(OpCode::Continuation, true, "ε".as_bytes());
    // The pong comes before the message that ended after the ping (Autobahn 5.6 checks it).
    assert_eq!(c.recv(), Got::Pong(b"mid".to_vec()));
    assert_eq!(c.recv(), Got::Text("κόσμε".into()));
    // A large binary message in many fragments.
    let big: Vec<u8> = (0..300_000).map(|i| i as u8).collect();
    let mut parts = big.chunks(70_001).peekable();
    let mut first = true;
    while let Some(p) = parts.next() {
        let op = if first {
            OpCode::Binary
        } else {
            OpCode::Continuation
        };
        c.send_frame(op, parts.peek().is_none(), p);
        first = false;
    }
    assert_eq!(c.recv(), Got::Binary(big));
    c.send_close(Some(1000), "done");
    assert_eq!(c.expect_close(), Some(1000));
    c.expect_eof();
    assert_eq!(srv.next_close(), (1000, "done".into()));
}

fn ping_pong_both_ways(b: Backend) {
    let cfg = TestServer::config(b).ping(Some(Duration::from_millis(300)), Duration::from_secs(5));
    let srv = TestServer::start(cfg);
    let mut ws = tclient(&srv);
    ws.send(TMsg::Ping(b"hi".to_vec().into())).unwrap();
    assert_eq!(ws.read().unwrap(), TMsg::Pong(b"hi".to_vec().into()));
    // Stay quiet: the server pings, tungstenite answers by itself.
    ws.get_mut()
        .get_mut_tcp()
        .set_read_timeout(Some(Duration::from_secs(3)))
        .ok();
    match ws.read().unwrap() {
        TMsg::Ping(p) => assert!(p.is_empty()),
        other => panic!("expected a server ping, got {other:?}"),
    }
    // Send the queued pong. Still open after the ping round (the deadlines themselves are
    // unit-tested on the connection machine, proto/conn/tests.rs).
    ws.flush().unwrap();
    ws.send(TMsg::text("still here")).unwrap();
    loop {
        match ws.read().unwrap() {
            TMsg::Text(t) => {
                assert_eq!(t.as_str(), "still here");
                break;
            }
            TMsg::Ping(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    assert!(srv.handle().stats().pings_sent >= 1);
}

/// The worker skips computing a connection's deadline after a read that can only have moved
/// it later (`Core::on_data`): the timer set before fires early and is set again. Here that
/// happens twice while messages come (every 100 ms for 2 s against an 800 ms interval), and
/// the ping must still come one interval after the last message: not before, and not lost
/// or an interval late.
fn the_ping_comes_one_interval_after_the_last_of_many_messages(b: Backend) {
    let interval = Duration::from_millis(800);
    let cfg = TestServer::config(b).ping(Some(interval), Duration::from_secs(5));
    let srv = TestServer::start(cfg);
    let mut c = RawClient::connect(srv.addr, "/");
    let mut last = Instant::now();
    for i in 0..20 {
        last = Instant::now();
        c.send_text(&format!("m{i}"));
        // A stall of the loaded machine longer than the interval may bring a ping: allowed.
        loop {
            match c.recv() {
                Got::Ping(_) => c.send_frame(OpCode::Pong, true, b""),
                got => {
                    assert_eq!(got, Got::Text(format!("m{i}")));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = srv.handle().stats().pings_sent;
    assert_eq!(
        c.recv_within(Duration::from_secs(5)),
        Some(Got::Ping(vec![]))
    );
    let after = last.elapsed();
    assert!(
        after >= interval && after < interval * 3,
        "the ping came {after:?} after the last message (interval {interval:?})"
    );
    assert_eq!(srv.handle().stats().pings_sent, before + 1);
}

trait TcpOf {
    fn get_mut_tcp(&mut self) -> &mut TcpStream;
}
impl TcpOf for tungstenite::stream::MaybeTlsStream<TcpStream> {
    fn get_mut_tcp(&mut self) -> &mut TcpStream {
        match self {
            tungstenite::stream::MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("plain TCP only"),
        }
    }
}

fn unanswered_ping_drops_the_connection_with_1006(b: Backend) {
    let cfg =
        TestServer::config(b).ping(Some(Duration::from_millis(200)), Duration::from_millis(300));
    let srv = TestServer::start(cfg);
    let mut c = RawClient::connect(srv.addr, "/");
    // Read the ping but never answer it, and send nothing else.
    assert_eq!(c.recv(), Got::Ping(vec![]));
    assert_eq!(c.recv(), Got::Eof);
    assert_eq!(srv.next_close(), (1006, "pong timeout".into()));
    assert_eq!(srv.handle().stats().pong_timeouts, 1);
}

fn close_code_paths(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    // Client closes with a code: echoed, reported.
    let mut ws = tclient(&srv);
    ws.close(Some(CloseFrame {
        code: TCode::Library(4321),
        reason: "bye".into(),
    }))
    .unwrap();
    loop {
        match ws.read() {
            Ok(TMsg::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 4321);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(srv.next_close(), (4321, "bye".into()));
    // Client closes without a status: reported 1005, answered 1000.
    let mut c = RawClient::connect(srv.addr, "/");
    c.send_close(None, "");
    assert_eq!(c.expect_close(), Some(1000));
    c.expect_eof();
    assert_eq!(srv.next_close().0, 1005);
    // Handler closes from on_message.
    let mut c = RawClient::connect(srv.addr, "/");
    c.send_text("close-me");
    assert_eq!(c.expect_close(), Some(4000));
    c.send_close(Some(4000), "");
    c.expect_eof();
    assert_eq!(srv.next_close(), (4000, "as asked".into()));
    // Handler closes from on_message, with more messages in the same read: they are not
    // delivered (nothing is echoed or counted as sent after the close).
    let mut c = RawClient::connect(srv.addr, "/");
    let sent_before = srv.handle().stats().messages_out;
    c.send_raw(&masked_texts(["close-me", "after", "and after"]));
    assert_eq!(
        c.recv(),
        Got::Close(Some((4000, "as asked".into()))),
        "the close, and no echo before it"
    );
    c.send_close(Some(4000), "");
    c.expect_eof();
    assert_eq!(srv.next_close(), (4000, "as asked".into()));
    assert_eq!(
        srv.handle().stats().messages_out,
        sent_before,
        "no message was sent (or counted) after the handler's close"
    );
    // Another thread closes through the Handle.
    let mut c = RawClient::connect(srv.addr, "/");
    let id = loop {
        if let Seen::Open(id) = srv.seen.recv_timeout(Duration::from_secs(5)).unwrap() {
            break id;
        }
    };
    srv.handle().close(id, CloseCode(4100), "from handle");
    assert_eq!(c.expect_close(), Some(4100));
    c.send_close(Some(4100), "");
    c.expect_eof();
    assert_eq!(srv.next_close(), (4100, "from handle".into()));
    // TCP dropped without a close frame: 1006.
    let c = RawClient::connect(srv.addr, "/");
    drop(c);
    assert_eq!(srv.next_close().0, 1006);
    // A close the peer never answers: reported with our code after the close timeout.
    let cfg = TestServer::config(b).close_timeout(Duration::from_millis(300));
    let srv2 = TestServer::start(cfg);
    let mut c = RawClient::connect(srv2.addr, "/");
    c.send_text("close-me");
    assert_eq!(c.expect_close(), Some(4000));
    assert_eq!(srv2.next_close(), (4000, "as asked".into()));
    assert_eq!(c.recv(), Got::Eof);
}

fn protocol_errors_close_with_the_right_code(b: Backend) {
    let cfg = TestServer::config(b).limits(1024, 4096);
    let srv = TestServer::start(cfg);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("reserved bits", vec![0xC1, 0x80, 0, 0, 0, 0], 1002),
        ("reserved opcode", vec![0x83, 0x80, 0, 0, 0, 0], 1002),
        ("fragmented ping", vec![0x09, 0x80, 0, 0, 0, 0], 1002),
        ("continuation first", vec![0x80, 0x80, 0, 0, 0, 0], 1002),
        (
            "bad close code",
            vec![0x88, 0x82, 0, 0, 0, 0, 0x03, 0xED],
            1002,
        ),
        (
            "invalid utf-8",
            vec![0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28],
            1007,
        ),
        (
            "frame too big",
            vec![0x82, 0xFE, 0x10, 0x00, 0, 0, 0, 0],
            1009,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut c = RawClient::connect(srv.addr, "/");
        c.send_raw(&bytes);
        assert_eq!(c.expect_close(), Some(code), "{name}");
        assert_eq!(srv.next_close().0, code, "{name}");
        c.expect_eof();
    }
    // A message over the limit in several frames that each fit.
    let mut c = RawClient::connect(srv.addr, "/");
    c.send_frame(OpCode::Binary, false, &[0; 1000]);
    for _ in 0..4 {
        c.send_frame(OpCode::Continuation, false, &[0; 1000]);
    }
    assert_eq!(c.expect_close(), Some(1009));
    let stats = srv.handle().stats();
    assert!(
        stats.protocol_closes.contains(&(1002, 6)),
        "{:?}",
        stats.protocol_closes
    );
}

fn http_answers_for_bad_and_plain_requests(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    let ask = |req: &str| -> String {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(ask("GET / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 426 "));
    assert!(ask("POST / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 405 "));
    assert!(ask("garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
    let v8 = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    let r = ask(v8);
    assert!(
        r.starts_with("HTTP/1.1 426 ") && r.contains("Sec-WebSocket-Version: 13"),
        "{r}"
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert!(ask(&big).starts_with("HTTP/1.1 431 "));
    // The handler rejects one path, and picks a subprotocol.
    let c = RawClient::connect_raw(srv.addr, "/forbidden", &[]);
    assert_eq!(c.status, 403);
    let c = RawClient::connect_raw(
        srv.addr,
        "/",
        &[("Sec-WebSocket-Protocol", "superchat, chat")],
    );
    assert_eq!(c.status, 101);
    assert!(
        c.head.contains("Sec-WebSocket-Protocol: chat\r\n"),
        "{}",
        c.head
    );
    assert!(srv.handle().stats().handshake_failures >= 6);
}

fn first_frames_in_the_handshake_packet_are_not_lost(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let key = volley::proto::handshake::ClientKey::from_nonce([7; 16]);
    let mut bytes = Vec::new();
    volley::proto::handshake::write_client_request(&mut bytes, "x", "/", &key, &[]).unwrap();
    volley::proto::encode::encode_client_frame(
        OpCode::Text,
        true,
        b"early",
        [1, 2, 3, 4],
        &mut bytes,
    );
    s.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 1024];
    while !got.ends_with(b"early") {
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&tmp[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101 "));
}

fn a_thousand_connections_echo_at_once(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    let mut clients: Vec<RawClient> = (0..1000)
        .map(|_| RawClient::connect(srv.addr, "/"))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_text(&format!("hello {i}"));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv(), Got::Text(format!("hello {i}")));
    }
    assert_eq!(srv.handle().stats().opened, 1000);
    assert_eq!(srv.handle().stats().messages_in, 1000);
}

/// `max_connections` is a server-wide limit, whichever worker the kernel hands a connection
/// to: with 2 workers and a limit of 40, all 40 connections are served however
/// SO_REUSEPORT's hash spreads them (an even 20/20 split comes up 1 time in 8; a per-worker
/// share of 20 would refuse the rest), the next ones get `503`, and once one leaves there is
/// room again.
fn max_connections_is_server_wide_and_refuses_with_503(b: Backend) {
    let srv = TestServer::start(TestServer::config(b).max_connections(40));
    let mut held: Vec<RawClient> = (0..40).map(|_| RawClient::connect(srv.addr, "/")).collect();
    for (i, c) in held.iter_mut().enumerate() {
        c.send_text(&format!("hi {i}"));
        assert_eq!(c.recv(), Got::Text(format!("hi {i}")));
    }
    for _ in 0..4 {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 503 "), "{resp:?}");
        assert!(resp.ends_with("server full\n"), "{resp:?}");
    }
    assert_eq!(srv.handle().stats().rejected_full, 4);
    drop(held.pop());
    let t = Instant::now();
    while srv.handle().stats().connections > 39 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the closed connection was not freed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut c = RawClient::connect(srv.addr, "/");
    c.send_text("room again");
    assert_eq!(c.recv(), Got::Text("room again".into()));
}

fn a_non_reading_client_is_held_back_while_others_are_served(b: Backend) {
    let cfg = TestServer::config(b).write_budget(256 * 1024);
    let srv = TestServer::start(cfg);
    let stalled = RawClient::connect(srv.addr, "/");
    let mut good = RawClient::connect(srv.addr, "/");
    // The stalled client sends a lot and never reads the echoes.
    let payload = vec![b'x'; 64 * 1024];
    let writer = {
        let mut s = stalled.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut frame = Vec::new();
            volley::proto::encode::encode_client_frame(
                OpCode::Binary,
                true,
                &payload,
                [9, 9, 9, 9],
                &mut frame,
            );
            for _ in 0..2000 {
                if s.write_all(&frame).is_err() {
                    break;
                }
            }
        })
    };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        good.send_text("ping?");
        assert_eq!(good.recv(), Got::Text("ping?".into()));
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its echoes over the budget stop the server reading from it (read backpressure): it
    // takes in a few MB of the 128 MB. Or the echoes of the reads already under way go over
    // the budget and close it as a slow consumer (1008); what it still sends while the
    // close drains is read and dropped.
    let st = srv.handle().stats();
    if st.slow_consumer_closes > 0 {
        assert_eq!(srv.next_close(), (1008, "slow consumer".into()));
    } else {
        assert!(st.bytes_in < 32 << 20, "read {} bytes", st.bytes_in);
    }
    good.send_text("after");
    assert_eq!(good.recv(), Got::Text("after".into()));
    drop(stalled.stream.shutdown(std::net::Shutdown::Both));
    writer.join().unwrap();
}

fn graceful_shutdown_sends_1001_to_every_client(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    let mut clients: Vec<RawClient> = (0..50).map(|_| RawClient::connect(srv.addr, "/")).collect();
    let mut ws = tclient(&srv);
    let handle = srv.handle();
    let t = std::thread::spawn(move || {
        let mut srv = srv;
        srv.server.take().unwrap().shutdown();
        srv
    });
    for c in clients.iter_mut() {
        assert_eq!(c.expect_close(), Some(1001));
        c.send_close(Some(1001), "");
        c.expect_eof();
    }
    match ws.read() {
        Ok(TMsg::Close(Some(f))) => assert_eq!(f.code, TCode::Away),
        other => panic!("{other:?}"),
    }
    let _ = ws.flush();
    let srv = t.join().unwrap();
    let mut closes = 0;
    while let Ok(s) = srv.seen.try_recv() {
        if let Seen::Close(_, code, _) = s {
            assert_eq!(code, 1001);
            closes += 1;
        }
    }
    assert_eq!(closes, 51);
    assert_eq!(handle.stats().connections, 0);
    // The port is free again: nothing is listening.
    assert!(TcpStream::connect(handle.local_addr()).is_err());
}

fn stale_ids_never_reach_a_reused_slot(b: Backend) {
    let srv = TestServer::start(Config::new("127.0.0.1:0").workers(1).backend(b));
    let c1 = RawClient::connect(srv.addr, "/");
    let old = match srv.seen.recv_timeout(Duration::from_secs(5)).unwrap() {
        Seen::Open(id) => id,
        s => panic!("{s:?}"),
    };
    drop(c1);
    srv.next_close();
    let mut c2 = RawClient::connect(srv.addr, "/");
    let new = match srv.seen.recv_timeout(Duration::from_secs(5)).unwrap() {
        Seen::Open(id) => id,
        s => panic!("{s:?}"),
    };
    assert_ne!(old, new);
    srv.handle().send_text(old, "for the old one");
    srv.handle().send_text(new, "for the new one");
    assert_eq!(c2.recv(), Got::Text("for the new one".into()));
    assert_eq!(srv.handle().stats().unknown_target, 1);
}

fn data_and_fin_in_one_burst_still_end_the_connection_at_once(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    for _ in 0..20 {
        let mut c = RawClient::connect(srv.addr, "/");
        let mut bytes = Vec::new();
        volley::proto::encode::encode_client_frame(
            OpCode::Text,
            true,
            b"bye",
            [1, 2, 3, 4],
            &mut bytes,
        );
        c.send_raw(&bytes);
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let t = Instant::now();
        assert_eq!(srv.next_close().0, 1006);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "EOF noticed late: {:?}",
            t.elapsed()
        );
    }
}

fn many_small_frames_in_one_write_are_all_answered_in_order(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    let mut c = RawClient::connect(srv.addr, "/");
    let mut burst = Vec::new();
    for i in 0..2000 {
        let mut f = Vec::new();
        volley::proto::encode::encode_client_frame(
            OpCode::Text,
            true,
            i.to_string().as_bytes(),
            [1, 2, 3, 4],
            &mut f,
        );
        burst.extend_from_slice(&f);
    }
    c.send_raw(&burst);
    for i in 0..2000 {
        assert_eq!(c.recv(), Got::Text(i.to_string()));
    }
}

fn running_out_of_receive_buffers_loses_nothing(b: Backend) {
    // Two provided buffers of 512 bytes for 40 connections sending 64 KiB each at once: the
    // io_uring backend runs out (ENOBUFS) again and again and must lose no byte.
    let srv = TestServer::start(TestServer::config(b).uring_buffers(2, 512));
    burst_of_large_messages(&srv, b, 65536);
}

fn the_receive_ring_grows_when_it_runs_out(b: Backend) {
    // One worker, 16 x 64 KiB: 1 of them circulates at first (4, 256 KiB, where the kernel
    // does not consume buffers incrementally). 40 connections sending 256 KiB each at once
    // exhaust them; the ring takes more (up to all 16) and loses no byte.
    let srv = TestServer::start(TestServer::config(b).workers(1).uring_buffers(16, 65536));
    let live = |srv: &TestServer| srv.handle().stats().uring_bufs_live;
    let start = live(&srv);
    if b == Backend::Uring {
        assert!(
            matches!(start, 1 | 4),
            "64 or 256 KiB of buffers at first: {start}"
        );
    }
    burst_of_large_messages(&srv, b, 256 * 1024);
    if b == Backend::Uring {
        assert!(live(&srv) > start, "the ring grew: {} buffers", live(&srv));
        assert!(live(&srv) <= 16, "never past the configured count");
    } else {
        assert_eq!(live(&srv), 0, "mio has no ring");
    }
}

fn large_answers_keep_their_order_and_bytes_when_the_socket_fills(b: Backend) {
    // Large answers are written to the socket at once when nothing is queued (mio), and only
    // what the socket does not take is queued. A client that sends 24 messages of 256 KiB,
    // each followed by a small text, and reads nothing until all are sent fills the server's
    // socket: later answers are partly written, then queued behind what waits. Every answer
    // must come back whole and in order, and every byte must be counted as sent.
    // A budget above the 6 MiB sent: the client is slow on purpose, not a slow consumer.
    let srv = TestServer::start(TestServer::config(b).workers(1).write_budget(64 << 20));
    let before = srv.handle().stats().bytes_out;
    let mut c = RawClient::connect(srv.addr, "/");
    let big = |i: u32| -> Vec<u8> { (0..256 * 1024u32).map(|j| (j * 7 + i * 31) as u8).collect() };
    let mut s = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..24u32 {
            let mut f = Vec::new();
            let payload: Vec<u8> = (0..256 * 1024u32).map(|j| (j * 7 + i * 31) as u8).collect();
            volley::proto::encode::encode_client_frame(
                OpCode::Binary,
                true,
                &payload,
                [1, 2, 3, 4],
                &mut f,
            );
            volley::proto::encode::encode_client_frame(
                OpCode::Text,
                true,
                i.to_string().as_bytes(),
                [4, 3, 2, 1],
                &mut f,
            );
            s.write_all(&f).unwrap();
        }
    });
    // Let the server's answers fill its socket before the first read.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut wire = 0u64;
    for i in 0..24u32 {
        assert_eq!(c.recv(), Got::Binary(big(i)), "answer {i}");
        assert_eq!(c.recv(), Got::Text(i.to_string()), "text after answer {i}");
        wire += (256 * 1024 + 10) + (2 + i.to_string().len() as u64);
    }
    writer.join().unwrap();
    let sent = srv.handle().stats().bytes_out - before;
    assert!(
        sent >= wire,
        "{sent} bytes counted as sent, {wire} on the wire"
    );
}

/// 40 connections send one binary message of `len` bytes each, all at once; every one is
/// echoed intact. On io_uring the receives must have run out of buffers at least once.
fn burst_of_large_messages(srv: &TestServer, b: Backend, len: u32) {
    let payload: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
    let mut clients: Vec<RawClient> = (0..40).map(|_| RawClient::connect(srv.addr, "/")).collect();
    let writers: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut s = c.stream.try_clone().unwrap();
            let mut f = Vec::new();
            volley::proto::encode::encode_client_frame(
                OpCode::Binary,
                true,
                &payload,
                [5, 6, 7, 8],
                &mut f,
            );
            std::thread::spawn(move || s.write_all(&f).unwrap())
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for c in clients.iter_mut() {
        assert_eq!(c.recv(), Got::Binary(payload.clone()));
    }
    if b == Backend::Uring {
        assert!(
            srv.handle().stats().recv_enobufs > 0,
            "the test must exhaust the buffers"
        );
    }
}

#[test]
fn uring_zero_copy_sends_deliver_the_same_bytes() {
    let Some(b) = uring_or_skip("uring_zero_copy_sends_deliver_the_same_bytes") else {
        return;
    };
    let srv = TestServer::start(TestServer::config(b).uring_send_zc(Some(0)));
    let mut ws = tclient(&srv);
    for size in [0usize, 1, 125, 65536, 4 << 20] {
        let bin: Vec<u8> = (0..size).map(|i| (i * 11) as u8).collect();
        ws.send(TMsg::binary(bin.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), TMsg::binary(bin), "binary {size}");
    }
    let mut c = RawClient::connect(srv.addr, "/");
    let mut burst = Vec::new();
    for i in 0..500 {
        volley::proto::encode::encode_client_frame(
            OpCode::Text,
            true,
            i.to_string().as_bytes(),
            [1, 2, 3, 4],
            &mut burst,
        );
    }
    c.send_raw(&burst);
    for i in 0..500 {
        assert_eq!(c.recv(), Got::Text(i.to_string()));
    }
}

both_backends!(
    large_answers_keep_their_order_and_bytes_when_the_socket_fills,
    many_small_frames_in_one_write_are_all_answered_in_order,
    running_out_of_receive_buffers_loses_nothing,
    the_receive_ring_grows_when_it_runs_out,
);

both_backends!(
    echo_text_and_binary_at_boundary_sizes,
    fragmented_messages_with_interleaved_pings,
    ping_pong_both_ways,
    the_ping_comes_one_interval_after_the_last_of_many_messages,
    unanswered_ping_drops_the_connection_with_1006,
    close_code_paths,
    protocol_errors_close_with_the_right_code,
    http_answers_for_bad_and_plain_requests,
    first_frames_in_the_handshake_packet_are_not_lost,
    a_thousand_connections_echo_at_once,
    max_connections_is_server_wide_and_refuses_with_503,
    a_non_reading_client_is_held_back_while_others_are_served,
    graceful_shutdown_sends_1001_to_every_client,
    stale_ids_never_reach_a_reused_slot,
    data_and_fin_in_one_burst_still_end_the_connection_at_once,
);
