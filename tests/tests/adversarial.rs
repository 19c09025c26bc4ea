//! Hostile clients against both backends, one test per way of making a server hold memory
//! or lose what it owes: each is sized to finish in seconds and asserts a bound (the
//! engine's counters, the close code the client saw), not a timing.
//!
//! The deadlines themselves are unit-tested without sockets on the connection machine
//! (`engine/src/proto/conn.rs`); these check that the backends drive it as it says.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};
use volley::proto::encode::encode_client_frame;
use volley::proto::OpCode;
use volley::{Backend, SlowConsumerPolicy};

fn frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_client_frame(op, fin, payload, [1, 2, 3, 4], &mut v);
    v
}

/// Waits up to `d` for the server's close frame; its code, or `None` for none in time.
fn close_code_within(c: &mut RawClient, d: Duration) -> Option<u16> {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match c.recv_within(left.max(Duration::from_millis(1))) {
            Some(Got::Close(code)) => return Some(code.map_or(1005, |c| c.0)),
            Some(Got::Eof) | None => return None,
            Some(_) => {}
        }
    }
    None
}

/// Fault 1: a client that sends pings and never reads. Only the latest ping is answered, a
/// pong is queued only within the write budget, and the server stops reading from a
/// connection over it: what the server queued for the client (all of which the client
/// reads at the end) stays near the budget plus what the kernel buffers hold, not near what
/// the client sent (before the fix: one pong per ping, 45 MB for 48 MB of pings).
fn a_ping_flood_from_a_client_that_never_reads_is_bounded(b: Backend) {
    let cfg = TestServer::config(b).write_budget(64 * 1024);
    let srv = TestServer::start(cfg);
    let c = RawClient::connect(srv.addr, "/");
    let mut burst = Vec::new();
    for _ in 0..500 {
        burst.extend_from_slice(&frame(OpCode::Ping, true, &[b'p'; 125]));
    }
    let mut w = c.stream.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let (mut sent, mut off) = (0usize, 0usize);
    while sent < 48 << 20 {
        match w.write(&burst[off..]) {
            Ok(n) => {
                sent += n;
                off = (off + n) % burst.len();
            }
            Err(_) => break, // the server stopped reading: our write timed out
        }
    }
    // The client reads again: the pongs drain, reading resumes, the connection works.
    let reader = std::thread::spawn(move || {
        let mut c = c;
        let mut pong_bytes = 0usize;
        loop {
            match c.recv_within(Duration::from_secs(20)) {
                Some(Got::Pong(p)) => pong_bytes += p.len() + 2,
                Some(Got::Text(t)) => return (t, pong_bytes),
                other => panic!("expected pongs then the echo, got {other:?}"),
            }
        }
    });
    // What the client could not write: finish the partial frame, then a text.
    w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    if off > 0 {
        w.write_all(&burst[off..]).unwrap();
    }
    w.write_all(&frame(OpCode::Text, true, b"after")).unwrap();
    let (t, pong_bytes) = reader.join().unwrap();
    assert_eq!(t, "after");
    assert!(pong_bytes >= 127);
    assert!(
        pong_bytes < 8 << 20,
        "{pong_bytes} bytes of pongs queued for {sent} bytes of pings and a 64 KiB budget"
    );
    assert_eq!(srv.handle().stats().slow_consumer_closes, 0);
}

/// Fault 2: a peer that shuts its write side after a bad request head still gets the 400.
fn a_half_closed_peer_still_gets_its_http_answer(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    for i in 0..20 {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"BAD REQUEST\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            got.starts_with(b"HTTP/1.1 4"),
            "attempt {i}: got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// Fault 2: a peer that sends Close 1000 and shuts its write side gets the echo (RFC 6455
/// 5.5.1), then our FIN.
fn a_half_closed_peer_still_gets_its_close_echo(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    for i in 0..20 {
        let mut c = RawClient::connect(srv.addr, "/");
        c.send_close(Some(1000), "bye");
        c.stream.shutdown(Shutdown::Write).unwrap();
        let got = c.recv_within(Duration::from_secs(10));
        assert_eq!(
            got,
            Some(Got::Close(Some((1000, String::new())))),
            "attempt {i}"
        );
        assert_eq!(srv.next_close(), (1000, "bye".into()));
    }
}

/// Fault 5: the bytes a worker holds in incomplete messages are bounded; the connection
/// that takes it past the budget is closed with 1013.
fn incomplete_messages_past_the_worker_budget_close_with_1013(b: Backend) {
    let cfg = TestServer::config(b)
        .workers(1)
        .limits(8 << 20, 8 << 20)
        .incomplete_budget(4 << 20);
    let srv = TestServer::start(cfg);
    let mut clients: Vec<RawClient> = (0..4).map(|_| RawClient::connect(srv.addr, "/")).collect();
    let part = vec![b'x'; 1536 * 1024];
    for c in &mut clients {
        // The header of an 8 MiB frame and 1.5 MiB of it (masked with key 0: plain bytes).
        let mut v = vec![0x82, 0xFF];
        v.extend_from_slice(&(8u64 << 20).to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0]);
        c.send_raw(&v);
        c.send_raw(&part);
    }
    let codes: Vec<Option<u16>> = clients
        .iter_mut()
        .map(|c| close_code_within(c, Duration::from_secs(2)))
        .collect();
    assert!(
        codes.contains(&Some(1013)),
        "6 MiB held against a 4 MiB budget, yet no 1013: {codes:?}"
    );
}

/// Fault 5: a message trickled a byte at a time must still complete within the message
/// timeout (received bytes keep resetting the idle timer).
fn a_trickled_message_is_closed_at_the_message_deadline(b: Backend) {
    let cfg = TestServer::config(b)
        .message_timeout(Some(Duration::from_millis(500)))
        .idle_timeout(Some(Duration::from_secs(60)))
        .ping(None, Duration::from_secs(60));
    let srv = TestServer::start(cfg);
    let mut c = RawClient::connect(srv.addr, "/");
    let mut w = c.stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut v = vec![0x82, 0xFE];
        v.extend_from_slice(&16384u16.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0]);
        let _ = w.write_all(&v);
        for _ in 0..40 {
            if w.write_all(b"x").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(
        close_code_within(&mut c, Duration::from_secs(8)),
        Some(1008)
    );
    let (code, reason) = srv.next_close();
    assert_eq!((code, reason.as_str()), (1008, "message timeout"));
    drop(c);
    trickle.join().unwrap();
}

/// Fault 6: under `SlowConsumerPolicy::Drop` a `ctx.send` to a connection over its budget
/// is dropped (and counted), not answered with a 1008 close.
fn the_drop_policy_applies_to_ctx_send(b: Backend) {
    let cfg = TestServer::config(b)
        .write_budget(1024)
        .slow_consumer(SlowConsumerPolicy::Drop);
    let srv = TestServer::start(cfg);
    let mut c = RawClient::connect(srv.addr, "/");
    // 200 echoes of 100 bytes in one read: far past a 1 KiB budget before any flush.
    let mut burst = Vec::new();
    for _ in 0..200 {
        burst.extend_from_slice(&frame(OpCode::Text, true, &[b'e'; 100]));
    }
    c.send_raw(&burst);
    let t = Instant::now();
    while srv.handle().stats().drops == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "nothing dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.send_text("last");
    loop {
        match c.recv() {
            Got::Text(t) if t == "last" => break,
            Got::Text(_) => {}
            other => panic!("expected echoes, got {other:?}"),
        }
    }
    let st = srv.handle().stats();
    assert_eq!(st.slow_consumer_closes, 0);
    assert!(st.drops >= 1);
}

/// Already held: a request head sent a byte at a time is dropped at the handshake deadline.
fn a_slowloris_handshake_is_dropped(b: Backend) {
    let cfg = TestServer::config(b).handshake_timeout(Duration::from_millis(500));
    let srv = TestServer::start(cfg);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    let mut r = s.try_clone().unwrap();
    let drip = std::thread::spawn(move || {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
            .take(80)
        {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        r.read(&mut buf).unwrap_or(0),
        0,
        "dropped without an answer"
    );
    assert_eq!(srv.handle().stats().handshake_timeouts, 1);
    drip.join().unwrap();
}

/// Already held: a 16 MiB message in 16 Mi one-byte fragments is assembled and echoed.
fn a_16_mib_message_in_one_byte_fragments_is_echoed(b: Backend) {
    const SIZE: usize = 16 << 20;
    let srv = TestServer::start(TestServer::config(b));
    let mut c = RawClient::connect(srv.addr, "/");
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(7 << 20);
        for i in 0..SIZE {
            let op = if i == 0 {
                OpCode::Binary
            } else {
                OpCode::Continuation
            };
            let fin = i == SIZE - 1;
            // Masked with key 0: the payload byte goes out as it is.
            chunk.extend_from_slice(&[(fin as u8) << 7 | op as u8, 0x81, 0, 0, 0, 0, i as u8]);
            if chunk.len() >= 7 << 20 {
                w.write_all(&chunk).unwrap();
                chunk.clear();
            }
        }
        w.write_all(&chunk).unwrap();
    });
    match c.recv_within(Duration::from_secs(60)) {
        Some(Got::Binary(v)) => {
            assert_eq!(v.len(), SIZE);
            assert!(v.iter().enumerate().all(|(i, b)| *b == i as u8));
        }
        other => panic!("expected the echo, got {other:?}"),
    }
    writer.join().unwrap();
}

/// Already held: clients that vanish in the middle of a frame leave nothing behind.
fn abrupt_disconnects_mid_frame_free_everything(b: Backend) {
    let srv = TestServer::start(TestServer::config(b));
    for _ in 0..32 {
        let mut c = RawClient::connect(srv.addr, "/");
        let mut v = vec![0x82, 0xFE];
        v.extend_from_slice(&60000u16.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0]);
        v.extend_from_slice(&[7; 1000]);
        c.send_raw(&v);
        drop(c);
    }
    for _ in 0..32 {
        assert_eq!(srv.next_close().0, 1006);
    }
    let t = Instant::now();
    while srv.handle().stats().connections != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "connections leaked");
        std::thread::sleep(Duration::from_millis(10));
    }
}

both_backends!(
    a_ping_flood_from_a_client_that_never_reads_is_bounded,
    a_half_closed_peer_still_gets_its_http_answer,
    a_half_closed_peer_still_gets_its_close_echo,
    incomplete_messages_past_the_worker_budget_close_with_1013,
    a_trickled_message_is_closed_at_the_message_deadline,
    the_drop_policy_applies_to_ctx_send,
    a_slowloris_handshake_is_dropped,
    a_16_mib_message_in_one_byte_fragments_is_echoed,
    abrupt_disconnects_mid_frame_free_everything,
);
