//! The embedding API as a backend uses it (issue 17): send status and `on_drain`, publish
//! excluding the sender, upgrades answered later from another thread, headers on
//! rejections. Each on both backends.

mod common;

use common::{rand_bytes, Got, RawClient};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use volley::proto::encode::encode_client_frame;
use volley::proto::handshake::{write_client_request, ClientKey};
use volley::proto::OpCode;
use volley::{
    Backend, Config, ConnId, Ctx, Handler, Message, Pending, Reject, Request, SendStatus, Server,
    Target, Upgrade,
};

// ---- a producer that pauses on backpressure and resumes on drain ----

const CHUNK: usize = 8 * 1024;
const TOTAL: u32 = 2_000; // 16 MB through a 64 KiB high-water mark

#[derive(Clone, Default)]
struct Producer {
    backpressured: Arc<AtomicUsize>,
    drains: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    buffered_at_pause: Arc<AtomicUsize>,
}

impl Producer {
    /// Sends numbered chunks until the connection pushes back or all are sent.
    fn pump(&self, ctx: &mut Ctx<'_>, next: &mut u32) {
        let mut chunk = vec![0u8; CHUNK];
        while *next < TOTAL {
            chunk[..4].copy_from_slice(&next.to_be_bytes());
            let status = ctx.send_binary(&chunk);
            match status {
                SendStatus::Queued => *next += 1,
                SendStatus::Backpressure => {
                    *next += 1;
                    self.backpressured.fetch_add(1, Ordering::Relaxed);
                    self.buffered_at_pause
                        .fetch_max(ctx.buffered_amount(), Ordering::Relaxed);
                    return;
                }
                SendStatus::Dropped | SendStatus::Closed => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

impl Handler for Producer {
    type State = u32;
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<u32, Reject> {
        Ok(0)
    }
    fn on_open(&mut self, ctx: &mut Ctx<'_>, next: &mut u32) {
        self.pump(ctx, next);
    }
    fn on_message(&mut self, _: &mut Ctx<'_>, _: &mut u32, _: Message<'_>) {}
    fn on_drain(&mut self, ctx: &mut Ctx<'_>, next: &mut u32) {
        self.drains.fetch_add(1, Ordering::Relaxed);
        self.pump(ctx, next);
    }
}

fn producer_pauses_on_backpressure_and_resumes_on_drain(b: Backend) {
    let p = Producer::default();
    let cfg = Config::new("127.0.0.1:0")
        .workers(1)
        .backend(b)
        .high_water(64 * 1024)
        .write_budget(256 * 1024);
    let server = Server::start(cfg, p.clone()).unwrap();
    let mut c = RawClient::connect(server.local_addr(), "/");
    // Not reading for a while: the queue fills to the mark and the producer pauses.
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.backpressured.load(Ordering::Relaxed) >= 1);
    let paused_at = p.buffered_at_pause.load(Ordering::Relaxed);
    assert!(
        paused_at > 64 * 1024 && paused_at <= 64 * 1024 + CHUNK + 16,
        "paused with {paused_at} bytes buffered"
    );
    for i in 0..TOTAL {
        match c.recv() {
            Got::Binary(b) => {
                assert_eq!(b.len(), CHUNK);
                assert_eq!(
                    u32::from_be_bytes(b[..4].try_into().unwrap()),
                    i,
                    "in order"
                );
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert_eq!(p.dropped.load(Ordering::Relaxed), 0, "nothing dropped");
    assert!(
        p.drains.load(Ordering::Relaxed) >= 1,
        "resumed by on_drain ({} pauses)",
        p.backpressured.load(Ordering::Relaxed)
    );
    let st = server.handle().stats();
    assert_eq!((st.slow_consumer_closes, st.drops), (0, 0));
    drop(c);
    server.shutdown();
}

/// Over the write budget a send is refused with `Dropped` (Drop policy: the connection stays).
#[derive(Clone)]
struct Flood(Arc<Mutex<Vec<SendStatus>>>);

impl Handler for Flood {
    type State = ();
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut (), _: Message<'_>) {
        let big = vec![1u8; 4 * 1024];
        let mut seen = self.0.lock().unwrap();
        for _ in 0..6 {
            seen.push(ctx.send_binary(&big));
        }
        ctx.close(volley::CloseCode::NORMAL, "");
        seen.push(ctx.send_text("after close"));
    }
}

fn send_reports_dropped_over_the_budget_and_closed_after_close(b: Backend) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cfg = Config::new("127.0.0.1:0")
        .workers(1)
        .backend(b)
        .high_water(6 * 1024 + 512)
        .write_budget(13 * 1024)
        .slow_consumer(volley::SlowConsumerPolicy::Drop);
    let server = Server::start(cfg, Flood(seen.clone())).unwrap();
    let mut c = RawClient::connect(server.local_addr(), "/");
    c.send_text("go");
    let _ = c.expect_close();
    drop(c);
    use SendStatus::*;
    // 4 KiB each (below the size mio writes at once, so every one is queued): within the
    // 6.5 KiB mark, then over it, then (past 13 KiB) refused.
    assert_eq!(
        *seen.lock().unwrap(),
        [
            Queued,
            Backpressure,
            Backpressure,
            Backpressure,
            Dropped,
            Dropped,
            Closed
        ]
    );
    assert_eq!(server.handle().stats().drops, 2);
    server.shutdown();
}

// ---- publish excluding the sender ----

#[derive(Clone)]
struct Room {
    opened: Arc<Mutex<mpsc::Sender<ConnId>>>,
}

impl Handler for Room {
    type State = ();
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _: &mut ()) {
        assert!(ctx.subscribe("room"));
        let _ = self.opened.lock().unwrap().send(ctx.id());
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut (), msg: Message<'_>) {
        let Message::Text(t) = msg else { return };
        if let Some(x) = t.strip_prefix("say:") {
            assert!(ctx.publish_others(Target::Topic("room"), Message::Text(x)));
        } else if let Some(x) = t.strip_prefix("echo:") {
            ctx.send_text(x);
        }
    }
}

/// The next data message must be `want` (nothing before it, so no copy of an earlier one).
fn next_is(c: &mut RawClient, want: &str) {
    assert_eq!(c.recv(), Got::Text(want.into()));
}

/// A `Room` server on `cfg` with `n` clients, each subscribed to "room"; their ids in the
/// order the connections opened (not necessarily the clients' order).
fn room_with(cfg: Config, n: usize) -> (Server, Vec<RawClient>, Vec<ConnId>) {
    let (tx, rx) = mpsc::channel();
    let room = Room {
        opened: Arc::new(Mutex::new(tx)),
    };
    let server = Server::start(cfg, room).unwrap();
    let mut clients: Vec<RawClient> = (0..n)
        .map(|_| RawClient::connect(server.local_addr(), "/"))
        .collect();
    let ids: Vec<ConnId> = (0..n)
        .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    // Subscribed in on_open: a round trip through each client makes sure it ran.
    for c in &mut clients {
        c.send_text("echo:ready");
        next_is(c, "ready");
    }
    (server, clients, ids)
}

fn publish_excluding_the_sender_reaches_everyone_else_once(b: Backend) {
    let cfg = Config::new("127.0.0.1:0").workers(2).backend(b);
    let (server, mut clients, ids) = room_with(cfg, 6);
    clients[0].send_text("say:hello");
    // The sender's own publish would arrive before the echo of its next message.
    clients[0].send_text("echo:end");
    next_is(&mut clients[0], "end");
    for c in &mut clients[1..] {
        next_is(c, "hello");
        c.send_text("echo:end");
        next_is(c, "end");
    }
    // From another thread: Handle::publish_except leaves one connection out, whichever
    // client it is (the test does not know which client got which id, so it counts). A
    // post from another thread has no order with a client's own input: wait for it.
    let h = server.handle();
    assert!(h.publish_except(Target::Topic("room"), Message::Text("news"), ids[3]));
    let mut got = 0;
    for c in &mut clients {
        match c.recv_within(Duration::from_millis(1500)) {
            Some(Got::Text(t)) if t == "news" => got += 1,
            None => {}
            other => panic!("{other:?}"),
        }
    }
    // And only once: the next message each gets is the echo.
    for c in &mut clients {
        c.send_text("echo:end");
        next_is(c, "end");
    }
    assert_eq!(got, 5, "everyone but the excluded connection, once");
    drop(clients);
    server.shutdown();
}

// ---- Handle calls answer what they can know at once; tracked publishes from any thread ----

fn handle_bindings_are_posted_and_publish_tracked_counts_from_any_thread(b: Backend) {
    let cfg = Config::new("127.0.0.1:0")
        .workers(2)
        .max_keys_per_event(2)
        .backend(b);
    let (server, mut clients, ids) = room_with(cfg, 4);
    let h = server.handle();
    let wait = Duration::from_secs(5);

    // The receipt is waited for on another thread than the one that published.
    let receipt = h
        .publish_tracked(Target::Topic("room"), Message::Text("tracked"))
        .expect("within the caps");
    let waiter = std::thread::spawn(move || receipt.wait_timeout(wait));
    for c in &mut clients {
        next_is(c, "tracked");
    }
    assert_eq!(
        waiter.join().unwrap(),
        Some(4),
        "every member, on both workers"
    );

    // Bindings from a Handle are posted in order with this thread's publishes: the worker
    // applies the bind before it delivers the next event.
    let count = |t: Target<'_>| {
        h.publish_tracked(t, Message::Text("x"))
            .expect("within the caps")
            .wait_timeout(wait)
    };
    assert!(h.bind_key(ids[0], "alice"));
    assert!(h.subscribe(ids[1], "solo"));
    assert_eq!(count(Target::Key("alice")), Some(1));
    assert_eq!(count(Target::Topic("solo")), Some(1));
    assert!(h.unbind_key(ids[0], "alice"));
    assert!(h.unsubscribe(ids[1], "solo"));
    assert_eq!(count(Target::Key("alice")), Some(0));
    assert_eq!(count(Target::Topic("solo")), Some(0));
    // No recipient on any worker: the receipt is ready at once.
    let none = h
        .publish_tracked(Target::Conns(&[]), Message::Text("x"))
        .unwrap();
    assert_eq!(none.try_get(), Some(0));
    // Over `max_keys_per_event`: refused, no receipt, as `Ctx::publish_tracked` says false.
    let three = ["a", "b", "c"];
    assert!(h
        .publish_tracked(Target::Keys(&three), Message::Text("x"))
        .is_none());
    assert_eq!(h.stats().publishes_refused, 1);

    drop(clients);
    h.shutdown();
    // Shutting down: nothing more is posted.
    assert!(!h.bind_key(ids[0], "late"));
    assert!(!h.subscribe(ids[0], "late"));
    assert!(!h.unbind_key(ids[0], "late"));
    assert!(!h.unsubscribe(ids[0], "late"));
    server.join();
}

// ---- upgrades answered later, rejections with headers ----

#[derive(Clone, Default)]
struct Auth {
    /// Upgrades deliberately never answered (kept alive so they are not dropped).
    kept: Arc<Mutex<Vec<Pending<String>>>>,
}

impl Handler for Auth {
    type State = String;
    fn on_upgrade(&mut self, req: &Request<'_>, up: &mut Upgrade) -> Result<String, Reject> {
        let token = req
            .query
            .and_then(|q| q.strip_prefix("token="))
            .unwrap_or("")
            .to_owned();
        match token.as_str() {
            "sync-bad" => Err(Reject::new(401, "no token\n")
                .header("WWW-Authenticate", "Bearer realm=\"volley\"")
                .header("Retry-After", "5")),
            "sync-inject" => {
                Err(Reject::new(401, "no\n").header("WWW-Authenticate", "x\r\nSet-Cookie: evil=1"))
            }
            "never" => {
                let kept = self.kept.clone();
                up.defer(move |p| kept.lock().unwrap().push(p))
            }
            "drop" => up.defer(drop::<Pending<String>>),
            _ => up.defer(move |mut p: Pending<String>| {
                // The "auth service": another thread that takes its time.
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    match token.as_str() {
                        t if t.starts_with("good") => {
                            p.upgrade().header("X-User", t);
                            p.accept(format!("user {t}"))
                        }
                        "inject" => {
                            p.upgrade().header("X-User", "a\r\nSet-Cookie: evil=1");
                            p.accept("never opens".into())
                        }
                        _ => p.reject(
                            Reject::new(401, "bad token\n")
                                .header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
                                .header("Retry-After", "7"),
                        ),
                    }
                });
            }),
        }
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, who: &mut String, _: Message<'_>) {
        ctx.send_text(who);
    }
}

fn auth_server(b: Backend, cfg: impl FnOnce(Config) -> Config) -> (Server, Auth) {
    let auth = Auth::default();
    let c = cfg(Config::new("127.0.0.1:0").workers(1).backend(b));
    (Server::start(c, auth.clone()).unwrap(), auth)
}

fn deferred_upgrade_accepted_from_another_thread_opens(b: Backend) {
    let (server, _) = auth_server(b, |c| c);
    let mut c = RawClient::connect(server.local_addr(), "/?token=good1");
    assert!(c.head.contains("X-User: good1\r\n"), "{}", c.head);
    c.send_text("who");
    assert_eq!(c.recv(), Got::Text("user good1".into()));
    // A client that sends a frame right behind its request (before the 101): it is kept
    // while the answer is pending and handled once the connection opens.
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let key = ClientKey::from_nonce(rand_bytes());
    let mut bytes = Vec::new();
    write_client_request(&mut bytes, &addr.to_string(), "/?token=good2", &key, &[]).unwrap();
    encode_client_frame(OpCode::Text, true, b"who", rand_bytes::<4>(), &mut bytes);
    s.write_all(&bytes).unwrap();
    let want = b"\x81\x0auser good2";
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while memchr::memmem::find(&got, want).is_none() {
        let n = s.read(&mut tmp).expect("the early frame is answered");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&tmp[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101 "));
    assert_eq!(server.handle().stats().upgrades_deferred, 2);
    drop((c, s));
    server.shutdown();
}

/// A deferred upgrade that offers permessage-deflate: the extension agreed when the request
/// arrived is answered in the 101 sent later, and the connection then speaks it both ways
/// (a compressed message in, a compressed answer out).
fn deferred_upgrade_keeps_its_permessage_deflate_offer(b: Backend) {
    let (server, _) = auth_server(b, |c| c.deflate(true));
    let token = format!("good-{}", "z".repeat(100));
    let path = format!("/?token={token}");
    let mut c = RawClient::connect_raw(
        server.local_addr(),
        &path,
        &[("Sec-WebSocket-Extensions", "permessage-deflate")],
    );
    assert_eq!(c.status, 101, "{}", c.head);
    assert!(
        c.head.contains(&format!("X-User: {token}\r\n")),
        "{}",
        c.head
    );
    let ext = c
        .extensions()
        .expect("the deferred 101 names the extension");
    assert!(ext.starts_with("permessage-deflate"), "{ext}");
    c.send_compressed(OpCode::Text, b"who", 1);
    // The answer (over the 64-byte threshold, and compressible) comes back compressed.
    assert_eq!(c.recv(), Got::Text(format!("user {token}")));
    assert!(c.last_compressed, "the answer was sent plain");
    assert_eq!(server.handle().stats().upgrades_deferred, 1);
    drop(c);
    server.shutdown();
}

fn rejections_carry_headers_now_or_later(b: Backend) {
    let (server, _) = auth_server(b, |c| c);
    let addr = server.local_addr();
    let c = RawClient::connect_raw(addr, "/?token=sync-bad", &[]);
    assert_eq!(c.status, 401, "{}", c.head);
    assert!(c
        .head
        .contains("WWW-Authenticate: Bearer realm=\"volley\"\r\n"));
    assert!(c.head.contains("Retry-After: 5\r\n"));
    let c = RawClient::connect_raw(addr, "/?token=bad", &[]);
    assert_eq!(c.status, 401, "{}", c.head);
    assert!(c
        .head
        .contains("WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"));
    assert!(c.head.contains("Retry-After: 7\r\n"));
    // CR/LF in a header: a 500, and nothing injected, now or later.
    for token in ["sync-inject", "inject"] {
        let c = RawClient::connect_raw(addr, &format!("/?token={token}"), &[]);
        assert_eq!(c.status, 500, "{}", c.head);
        assert!(!c.head.contains("Set-Cookie"), "{}", c.head);
    }
    // A Pending dropped unanswered: 500 at once, not a wait for the timeout.
    let t = Instant::now();
    let c = RawClient::connect_raw(addr, "/?token=drop", &[]);
    assert_eq!(c.status, 500, "{}", c.head);
    assert!(t.elapsed() < Duration::from_secs(5));
    server.shutdown();
}

/// Reads until the server closes; returns what came and how long it took.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (got, t.elapsed())
}

fn raw_upgrade(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let key = ClientKey::from_nonce(rand_bytes());
    let mut req = Vec::new();
    write_client_request(&mut req, &addr.to_string(), path, &key, &[]).unwrap();
    s.write_all(&req).unwrap();
    s
}

fn deferred_upgrade_never_answered_is_dropped_at_the_handshake_timeout(b: Backend) {
    let (server, auth) = auth_server(b, |c| {
        c.handshake_timeout(Duration::from_millis(500))
            .max_pending_upgrades(2)
    });
    let addr = server.local_addr();
    let mut a = raw_upgrade(addr, "/?token=never");
    let mut b2 = raw_upgrade(addr, "/?token=never");
    // Wait until both are pending, then the third is over the bound: 503 at once.
    let t = Instant::now();
    while auth.kept.lock().unwrap().len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    }
    let c = RawClient::connect_raw(addr, "/?token=never", &[]);
    assert_eq!(c.status, 503, "{}", c.head);
    assert!(c.head.contains("Retry-After: 1\r\n"));
    for s in [&mut a, &mut b2] {
        let (got, took) = read_to_close(s);
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        assert!(
            took < Duration::from_secs(3),
            "dropped at the timeout: {took:?}"
        );
    }
    assert!(server.handle().stats().handshake_timeouts >= 2);
    // Answers after the timeout are ignored; the bound is free again.
    for p in auth.kept.lock().unwrap().drain(..) {
        p.accept("late".into());
    }
    let mut c = RawClient::connect(addr, "/?token=good3");
    c.send_text("who");
    assert_eq!(c.recv(), Got::Text("user good3".into()));
    drop(c);
    server.shutdown();
}

// ---- a worker's inbox has a capacity ----

/// Blocks its worker for a while on "block" (a worker busy delivering elsewhere); signals
/// when it has started.
#[derive(Clone)]
struct Busy(Arc<Mutex<mpsc::Sender<()>>>);

impl Handler for Busy {
    type State = ();
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }
    fn on_message(&mut self, _: &mut Ctx<'_>, _: &mut (), msg: Message<'_>) {
        if msg == Message::Text("block") {
            let _ = self.0.lock().unwrap().send(());
            std::thread::sleep(Duration::from_millis(700));
        }
    }
}

/// A producer faster than the worker that delivers its events fills the worker's inbox up to
/// `Config::inbox_capacity` and no further: the rest is dropped, counted, and `publish`
/// says so. What was taken is delivered, in order, once the worker is back.
fn a_full_inbox_drops_and_counts_what_it_cannot_take(b: Backend) {
    let (tx, rx) = mpsc::channel();
    let cfg = Config::new("127.0.0.1:0")
        .workers(1)
        .backend(b)
        .inbox_capacity(100);
    let server = Server::start(cfg, Busy(Arc::new(Mutex::new(tx)))).unwrap();
    let h = server.handle();
    let mut c = RawClient::connect(server.local_addr(), "/");
    c.send_text("block");
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let taken = (0..1000)
        .filter(|i| h.publish(Target::All, Message::Text(&format!("e{i}"))))
        .count();
    assert_eq!(
        taken, 100,
        "the inbox takes its capacity while the worker is busy"
    );
    assert_eq!(h.stats().inbox_drops, 900);
    for i in 0..100 {
        assert_eq!(c.recv(), Got::Text(format!("e{i}")));
    }
    // Emptied by the worker, the inbox takes events again.
    assert!(h.publish(Target::All, Message::Text("again")));
    assert_eq!(c.recv(), Got::Text("again".into()));
    drop(c);
    server.shutdown();
}

// ---- a receipt's answer keeps its place behind earlier sends ----

/// On "go": a tracked publish, then "accepted"; its receipt answers "delivered".
#[derive(Clone)]
struct Acks;

impl Handler for Acks {
    type State = ();
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut (), _: Message<'_>) {
        ctx.publish_tracked(Target::Topic("nobody"), Message::Text("x"), 7);
        ctx.send_text("accepted");
    }
    fn on_published(&mut self, ctx: &mut Ctx<'_>, _: &mut (), tag: u64, reached: usize) {
        ctx.send_text(&format!("delivered {tag} {reached}"));
    }
}

/// A send held back behind a publish goes out before what the publish's receipt sends, even
/// when the receipt comes while the held-back actions are applied (review of session 12:
/// with one worker "delivered" overtook "accepted").
fn a_receipt_answer_keeps_its_place_behind_earlier_sends(b: Backend) {
    let cfg = Config::new("127.0.0.1:0").workers(1).backend(b);
    let server = Server::start(cfg, Acks).unwrap();
    let mut c = RawClient::connect(server.local_addr(), "/");
    for _ in 0..3 {
        c.send_text("go");
        assert_eq!(c.recv(), Got::Text("accepted".into()));
        assert_eq!(c.recv(), Got::Text("delivered 7 0".into()));
    }
    drop(c);
    server.shutdown();
}

both_backends!(
    a_receipt_answer_keeps_its_place_behind_earlier_sends,
    a_full_inbox_drops_and_counts_what_it_cannot_take,
    producer_pauses_on_backpressure_and_resumes_on_drain,
    send_reports_dropped_over_the_budget_and_closed_after_close,
    publish_excluding_the_sender_reaches_everyone_else_once,
    handle_bindings_are_posted_and_publish_tracked_counts_from_any_thread,
    deferred_upgrade_accepted_from_another_thread_opens,
    deferred_upgrade_keeps_its_permessage_deflate_offer,
    rejections_carry_headers_now_or_later,
    deferred_upgrade_never_answered_is_dropped_at_the_handshake_timeout,
);
