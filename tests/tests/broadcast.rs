//! Targeted broadcast: exactly the targeted sockets get the bytes, on every worker, in
//! publish order, from handlers and from other threads.

mod common;

use volley::Backend;

use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use volley::{
    Config, ConnId, Ctx, Handle, Handler, Message, Reject, Request, Server, Target, Upgrade,
};

/// Binds `/?key=K` to key K, subscribes `/?topic=T` to T, and reports ids by name.
#[derive(Clone)]
struct Router {
    ids: Arc<Mutex<mpsc::Sender<(String, ConnId)>>>,
}

impl Handler for Router {
    type State = String;
    fn on_upgrade(&mut self, req: &Request<'_>, _: &mut Upgrade) -> Result<String, Reject> {
        Ok(req.query.unwrap_or("").to_owned())
    }
    fn on_open(&mut self, ctx: &mut Ctx<'_>, q: &mut String) {
        for kv in q.split('&') {
            if let Some(k) = kv.strip_prefix("key=") {
                assert!(ctx.bind_key(k));
                assert!(!ctx.bind_key(k), "binding twice is refused");
            }
            if let Some(t) = kv.strip_prefix("topic=") {
                assert!(ctx.subscribe(t));
            }
        }
        let _ = self.ids.lock().unwrap().send((q.clone(), ctx.id()));
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut String, msg: Message<'_>) {
        // "all:x" publishes x to everyone; "key:k:x" to key k; "topic:t:x" to topic t;
        // "unsub:t" unsubscribes.
        let Message::Text(t) = msg else { return };
        let mut parts = t.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("all"), Some(x), None) => assert!(ctx.publish(Target::All, Message::Text(x))),
            (Some("key"), Some(k), Some(x)) => {
                assert!(ctx.publish(Target::Key(k), Message::Text(x)))
            }
            (Some("topic"), Some(tp), Some(x)) => {
                assert!(ctx.publish(Target::Topic(tp), Message::Text(x)))
            }
            (Some("unsub"), Some(tp), None) => {
                ctx.unsubscribe(tp);
                ctx.send_text("unsubscribed");
            }
            _ => {
                ctx.send(msg);
            }
        }
    }
}

struct Net {
    server: Option<Server>,
    addr: SocketAddr,
    ids: mpsc::Receiver<(String, ConnId)>,
}

impl Net {
    fn start(workers: usize, b: Backend) -> Net {
        let (tx, rx) = mpsc::channel();
        let server = Server::start(
            Config::new("127.0.0.1:0").workers(workers).backend(b),
            Router {
                ids: Arc::new(Mutex::new(tx)),
            },
        )
        .unwrap();
        Net {
            addr: server.local_addr(),
            server: Some(server),
            ids: rx,
        }
    }
    fn handle(&self) -> Handle {
        self.server.as_ref().unwrap().handle()
    }
    /// Connects with `query` and returns the client and its id.
    fn join(&self, query: &str) -> (RawClient, ConnId) {
        let c = RawClient::connect(self.addr, &format!("/?{query}"));
        let (q, id) = self.ids.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(q, query);
        (c, id)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// Asserts that nothing arrives on `c` within a short while (the socket saw no bytes).
fn assert_silent(c: &mut RawClient) {
    c.stream
        .set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let mut b = [0u8; 1];
    match std::io::Read::read(&mut c.stream, &mut b) {
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("expected silence, got {other:?} {b:?}"),
    }
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
}

fn every_target_reaches_exactly_its_recipients_across_workers(b: Backend) {
    let net = Net::start(2, b);
    // Enough connections that both workers hold some of each group.
    let mut alice: Vec<(RawClient, ConnId)> =
        (0..4).map(|_| net.join("key=alice&topic=news")).collect();
    let mut bob: Vec<(RawClient, ConnId)> = (0..3).map(|_| net.join("key=bob")).collect();
    let mut other: Vec<(RawClient, ConnId)> = (0..5).map(|_| net.join("key=carol")).collect();
    let workers: std::collections::HashSet<usize> = alice
        .iter()
        .chain(&bob)
        .chain(&other)
        .map(|(_, id)| id.worker())
        .collect();
    assert_eq!(workers.len(), 2, "connections spread over both workers");
    let h = net.handle();

    // A key with several connections (tabs): all of them, nobody else.
    h.publish(Target::Key("alice"), Message::Text("for alice"));
    for (c, _) in alice.iter_mut() {
        assert_eq!(c.recv(), Got::Text("for alice".into()));
    }
    // Several keys, one listed twice: each connection once.
    h.publish(
        Target::Keys(&["bob", "alice", "bob"]),
        Message::Binary(b"ab"),
    );
    for (c, _) in alice.iter_mut().chain(bob.iter_mut()) {
        assert_eq!(c.recv(), Got::Binary(b"ab".to_vec()));
    }
    // A list of connections on both workers, with a duplicate.
    let picked = [bob[0].1, other[0].1, other[4].1, bob[0].1];
    h.publish(Target::Conns(&picked), Message::Text("picked"));
    assert_eq!(bob[0].0.recv(), Got::Text("picked".into()));
    for i in [0, 4] {
        assert_eq!(other[i].0.recv(), Got::Text("picked".into()));
    }
    // One connection.
    h.publish(Target::Conn(other[2].1), Message::Text("just you"));
    assert_eq!(other[2].0.recv(), Got::Text("just you".into()));
    // A topic, published from inside a handler.
    other[1].0.send_text("topic:news:headline");
    for (c, _) in alice.iter_mut() {
        assert_eq!(c.recv(), Got::Text("headline".into()));
    }
    // Nobody else saw a byte of any of it.
    for (c, _) in bob
        .iter_mut()
        .skip(1)
        .chain(other.iter_mut().skip(1).take(1))
    {
        assert_silent(c);
    }
    for i in [1, 3] {
        assert_silent(&mut other[i].0);
    }
    // Unsubscribe, then publish again: the unsubscribed connection is left out.
    alice[0].0.send_text("unsub:news");
    assert_eq!(alice[0].0.recv(), Got::Text("unsubscribed".into()));
    h.publish(Target::Topic("news"), Message::Text("second"));
    for (c, _) in alice.iter_mut().skip(1) {
        assert_eq!(c.recv(), Got::Text("second".into()));
    }
    assert_silent(&mut alice[0].0);
    // Everyone, from a handler: the sender included.
    bob[2].0.send_text("all:everyone");
    for (c, _) in alice
        .iter_mut()
        .chain(bob.iter_mut())
        .chain(other.iter_mut())
    {
        assert_eq!(c.recv(), Got::Text("everyone".into()));
    }
    // Bindings from another thread through the Handle.
    h.bind_key(other[3].1, "dave");
    h.subscribe(other[3].1, "sports");
    std::thread::sleep(Duration::from_millis(50));
    h.publish(Target::Key("dave"), Message::Text("dave!"));
    h.publish(Target::Topic("sports"), Message::Text("goal"));
    assert_eq!(other[3].0.recv(), Got::Text("dave!".into()));
    assert_eq!(other[3].0.recv(), Got::Text("goal".into()));
    let s = h.stats();
    assert_eq!(s.deliveries, 4 + 7 + 3 + 1 + 4 + 3 + 12 + 2);
}

fn a_closed_connection_leaves_every_table(b: Backend) {
    let net = Net::start(1, b);
    let (c1, _) = net.join("key=k&topic=t");
    let (mut c2, _) = net.join("key=k&topic=t");
    drop(c1);
    std::thread::sleep(Duration::from_millis(100));
    let h = net.handle();
    h.publish(Target::Key("k"), Message::Text("a"));
    h.publish(Target::Topic("t"), Message::Text("b"));
    assert_eq!(c2.recv(), Got::Text("a".into()));
    assert_eq!(c2.recv(), Got::Text("b".into()));
    // A new connection reusing the slot inherits nothing.
    let (mut c3, _) = net.join("x=1");
    h.publish(Target::Key("k"), Message::Text("c"));
    assert_eq!(c2.recv(), Got::Text("c".into()));
    assert_silent(&mut c3);
    assert_eq!(h.stats().deliveries, 3);
}

fn events_from_one_thread_arrive_in_publish_order_on_every_worker(b: Backend) {
    let net = Net::start(2, b);
    let mut clients: Vec<(RawClient, ConnId)> = (0..8)
        .map(|i| net.join(&format!("key=k&topic=t&n={i}")))
        .collect();
    let h = net.handle();
    let ids: Vec<ConnId> = clients.iter().map(|(_, id)| *id).collect();
    // Interleave targets and direct sends; each recipient must see them in this order.
    for i in 0..300 {
        match i % 4 {
            0 => assert!(h.publish(Target::All, Message::Text(&i.to_string()))),
            1 => assert!(h.publish(Target::Key("k"), Message::Text(&i.to_string()))),
            2 => assert!(h.publish(Target::Conns(&ids), Message::Text(&i.to_string()))),
            _ => {
                for id in &ids {
                    h.send_text(*id, &i.to_string());
                }
            }
        }
    }
    for (c, _) in clients.iter_mut() {
        for i in 0..300 {
            assert_eq!(c.recv(), Got::Text(i.to_string()));
        }
    }
}

/// Holds connections for another process: run by `spawn_holders` below (ignored otherwise).
#[test]
#[ignore]
fn hold_connections() {
    hold_connections_main();
}

fn tracked_publish_counts_connections_reached_on_all_workers(b: Backend) {
    #[derive(Clone)]
    struct Count(Arc<Mutex<mpsc::Sender<usize>>>);
    impl Handler for Count {
        type State = ();
        fn on_upgrade(&mut self, req: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
            let _ = req;
            Ok(())
        }
        fn on_open(&mut self, ctx: &mut Ctx<'_>, _: &mut ()) {
            ctx.bind_key("everyone");
        }
        fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut (), msg: Message<'_>) {
            ctx.publish_tracked(Target::Keys(&["everyone", "nobody"]), msg, 7);
        }
        fn on_published(&mut self, _: &mut Ctx<'_>, _: &mut (), tag: u64, reached: usize) {
            assert_eq!(tag, 7);
            let _ = self.0.lock().unwrap().send(reached);
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = Server::start(
        Config::new("127.0.0.1:0").workers(2).backend(b),
        Count(Arc::new(Mutex::new(tx))),
    )
    .unwrap();
    let mut clients: Vec<RawClient> = (0..9)
        .map(|_| RawClient::connect(server.local_addr(), "/"))
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    clients[0].send_text("x");
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 9);
    for c in clients.iter_mut() {
        assert_eq!(c.recv(), Got::Text("x".into()));
    }
    let mut counts = HashMap::new();
    for c in clients.iter_mut().take(3) {
        c.send_text("y");
    }
    for _ in 0..3 {
        *counts
            .entry(rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(counts, HashMap::from([(9, 3)]));
    server.shutdown();
}

both_backends!(
    every_target_reaches_exactly_its_recipients_across_workers,
    a_closed_connection_leaves_every_table,
    events_from_one_thread_arrive_in_publish_order_on_every_worker,
    tracked_publish_counts_connections_reached_on_all_workers,
);
