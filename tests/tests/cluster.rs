//! Several volley nodes as one server over a real `nats-server` (started here on free ports):
//! keys, topics, `ConnId`s of other nodes and everyone reach exactly their connections;
//! per-publisher order; no duplicates; the broker killed and restarted; a two-server NATS
//! cluster losing one server; malformed and oversized broker messages.
//!
//! Needs `nats-server` on the PATH (`tests/run.sh` installs Debian's); without it these tests
//! fail, unless `VOLLEY_SKIP_NATS=1` says to skip them.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use volley::{
    Backend, ClusterConfig, Config, ConnId, Ctx, Handle, Handler, Message, Reject, Request, Server,
    Target, Upgrade,
};

/// A `nats-server` child process; killed on drop.
struct Nats {
    child: Option<Child>,
    /// Names this server's log file (unique in the process: two tests may pick one port).
    id: u64,
    port: u16,
    monitor: u16,
    args: Vec<String>,
}

impl Nats {
    /// `None` (after recording the skip) when nats-server is missing and skipping was asked.
    fn available(test: &str) -> bool {
        let ok = Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        if opted_out("VOLLEY_SKIP_NATS") {
            skip(test, "nats-server not installed (VOLLEY_SKIP_NATS=1)");
            return false;
        }
        panic!("nats-server not found: tests/run.sh installs it (apt-get install nats-server); set VOLLEY_SKIP_NATS=1 to skip");
    }

    /// Starts a server on free ports (tried again on other ports if another test took one
    /// of them between `free_port` and the server's bind).
    fn start(extra: &[String]) -> Nats {
        for _ in 0..5 {
            let (port, monitor) = (free_port(), free_port());
            let mut args: Vec<String> = [
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &monitor.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend_from_slice(extra);
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let mut n = Nats {
                child: None,
                id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                port,
                monitor,
                args,
            };
            if n.try_spawn().is_ok() {
                return n;
            }
        }
        panic!("nats-server did not start on free ports five times");
    }

    /// Starts the server again on its ports.
    fn spawn(&mut self) {
        if let Err(why) = self.try_spawn() {
            panic!("nats-server did not start again: {why}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        // The log goes to a file (a pipe nobody reads would block it, or kill it with
        // SIGPIPE once closed).
        let log = self.log();
        let file = std::fs::File::create(&log).expect("nats log file");
        let mut child = Command::new("nats-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn nats-server");
        // Generous: a loaded machine (other builds) can take seconds to start a process.
        // Ready is what its own log says, not a connect to the port: another test's server
        // may hold that port (it was free when picked), and this one then exits.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Server is ready")
        {
            if let Ok(Some(status)) = child.try_wait() {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("exited with {status}: {err}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    fn log(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "volley-test-nats-{}-{}.log",
            std::process::id(),
            self.id
        ))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor)).expect("monitor");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    /// The numbers of every `"field":` in the monitoring endpoint's JSON at `path`.
    fn stats(&self, path: &str, field: &str) -> Vec<u64> {
        let body = self.get(path);
        let key = format!("\"{field}\":");
        body.match_indices(&key)
            .map(|(i, _)| {
                body[i + key.len()..]
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// A number from the monitoring endpoint's JSON (`/varz`, `/routez`).
    fn stat(&self, path: &str, field: &str) -> u64 {
        self.stats(path, field)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("{field} in {path}"))
    }

    /// Waits until the clients of this server hold `n` subscriptions (the server's own
    /// system subscriptions are not counted).
    fn wait_subs(&self, n: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got: u64 = self.stats("/connz", "subscriptions").iter().sum();
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{got} subscriptions, expected {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes raw bytes on `subject` as a plain NATS client.
    fn publish_raw(&self, subject: &str, payload: &[u8]) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut info = [0u8; 4096];
        let _ = s.read(&mut info).unwrap();
        write!(
            s,
            "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
            payload.len()
        )
        .unwrap();
        s.write_all(payload).unwrap();
        s.write_all(b"\r\nPING\r\n").unwrap();
        // PONG after the PUB: the server has taken the message.
        let mut buf = Vec::new();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&buf).contains("PONG") {
            let n = s.read(&mut b).unwrap();
            assert!(n > 0, "server closed");
            buf.extend_from_slice(&b[..n]);
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.log());
    }
}

/// Binds `/?key=K`, subscribes `/?topic=T`, reports ids by query; on message:
/// `keys:a,b:x`, `topic:t:x`, `all:x`, `to:ID:x` (send to a ConnId of any node).
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
            }
            if let Some(t) = kv.strip_prefix("topic=") {
                assert!(ctx.subscribe(t));
            }
        }
        let _ = self.ids.lock().unwrap().send((q.clone(), ctx.id()));
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut String, msg: Message<'_>) {
        let Message::Text(t) = msg else { return };
        let mut p = t.splitn(3, ':');
        match (p.next(), p.next(), p.next()) {
            (Some("keys"), Some(ks), Some(x)) => {
                let ks: Vec<&str> = ks.split(',').collect();
                assert!(ctx.publish(Target::Keys(&ks), Message::Text(x)));
            }
            (Some("topic"), Some(tp), Some(x)) => {
                assert!(ctx.publish(Target::Topic(tp), Message::Text(x)));
            }
            (Some("all"), Some(x), None) => assert!(ctx.publish(Target::All, Message::Text(x))),
            (Some("to"), Some(id), Some(x)) => {
                let id = ids_from(id);
                ctx.send_to(id, Message::Text(x));
            }
            _ => {
                ctx.send(msg);
            }
        }
    }
}

fn ids_from(s: &str) -> ConnId {
    // ConnIds are opaque: tests carry them as the number and find the id back through a
    // publish to that connection's list made by the test itself.
    let v: u64 = s.parse().unwrap();
    *ID_BOOK
        .lock()
        .unwrap()
        .iter()
        .find(|id| id.as_u64() == v)
        .expect("known id")
}

static ID_BOOK: Mutex<Vec<ConnId>> = Mutex::new(Vec::new());

struct Node {
    server: Option<Server>,
    addr: SocketAddr,
    ids: mpsc::Receiver<(String, ConnId)>,
}

impl Node {
    fn start(b: Backend, cluster: ClusterConfig) -> Node {
        let (tx, rx) = mpsc::channel();
        let server = Server::start(
            Config::new("127.0.0.1:0")
                .workers(2)
                .backend(b)
                .cluster(Some(cluster)),
            Router {
                ids: Arc::new(Mutex::new(tx)),
            },
        )
        .expect("node starts");
        Node {
            addr: server.local_addr(),
            server: Some(server),
            ids: rx,
        }
    }

    fn handle(&self) -> Handle {
        self.server.as_ref().unwrap().handle()
    }

    /// Connects with `query`; returns the client and its id.
    fn client(&self, query: &str) -> (RawClient, ConnId) {
        let c = RawClient::connect(self.addr, &format!("/?{query}"));
        let (q, id) = self.ids.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(q, query);
        ID_BOOK.lock().unwrap().push(id);
        (c, id)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

fn text(c: &mut RawClient) -> String {
    match c.recv() {
        Got::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

fn quiet(c: &mut RawClient) {
    if let Some(g) = c.recv_within(Duration::from_millis(300)) {
        panic!("expected no bytes, got {g:?}");
    }
}

/// How long a wait for the broker or the links may take before the test fails. The waits end
/// as soon as their condition holds; 15 s was once too short under the whole suite's load on
/// two cores (two NATS servers routing to each other, then a node reconnecting after one of
/// them was killed).
const PATIENCE: Duration = Duration::from_secs(45);

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each node subscribes to `all` and its own subject from the start.
const FIXED: u64 = 2;

fn three_nodes(b: Backend) {
    if !Nats::available("cluster::three_nodes") {
        return;
    }
    let nats = Nats::start(&[]);
    let [a, bn, c] = [1, 2, 3].map(|n| Node::start(b, ClusterConfig::new([nats.url()], n)));
    let (mut a1, _) = a.client("key=alice");
    let (mut a2, _) = a.client("key=dave");
    let (mut b1, _) = bn.client("key=bob");
    let (mut b2, _) = bn.client("topic=news");
    let (mut b3, b3_id) = bn.client("");
    let (mut c1, c1_id) = c.client("key=carol");
    let (mut c2, _) = c.client("key=alice&topic=news");
    // A: alice, dave; B: bob, news; C: carol, alice, news.
    nats.wait_subs(3 * FIXED + 7);
    assert_eq!(b3_id.node(), 2);
    assert_eq!(c1_id.node(), 3);

    // Keys from another thread of node A: alice is on A and C, bob on B.
    assert!(a
        .handle()
        .publish(Target::Keys(&["alice", "bob"]), Message::Text("k1")));
    assert_eq!(text(&mut a1), "k1");
    assert_eq!(text(&mut b1), "k1");
    assert_eq!(text(&mut c2), "k1");
    // A topic from a handler on A (which has no subscriber of it).
    a2.send_text("topic:news:t1");
    assert_eq!(text(&mut b2), "t1");
    assert_eq!(text(&mut c2), "t1");
    // A ConnId of node C from node A's handle, and of node B from a handler on C.
    a.handle().send_text(c1_id, "direct");
    assert_eq!(text(&mut c1), "direct");
    c1.send_text(&format!("to:{}:from-c", b3_id.as_u64()));
    assert_eq!(text(&mut b3), "from-c");
    // Everyone, from node B.
    bn.handle().publish(Target::All, Message::Text("everyone"));
    for cl in [
        &mut a1, &mut a2, &mut b1, &mut b2, &mut b3, &mut c1, &mut c2,
    ] {
        assert_eq!(text(cl), "everyone");
    }
    // Nothing else reached anyone.
    for cl in [
        &mut a1, &mut a2, &mut b1, &mut b2, &mut b3, &mut c1, &mut c2,
    ] {
        quiet(cl);
    }
    // Broker messages went out once per subject, not per recipient: keys alice and bob (2),
    // topic (1), send (1), send_to (1), all (1), each sent once and
    // not per recipient or per node.
    let out: u64 = [&a, &bn, &c]
        .iter()
        .map(|n| n.handle().cluster_stats().unwrap().msgs_out)
        .sum();
    assert_eq!(out, 6);
    // Bindings and closes of another node's connection, from node A's handle: b3 (on B)
    // subscribes to a topic nobody held, then is closed.
    a.handle().subscribe(b3_id, "late");
    nats.wait_subs(3 * FIXED + 8);
    c.handle()
        .publish(Target::Topic("late"), Message::Text("late"));
    assert_eq!(text(&mut b3), "late");
    a.handle()
        .close(b3_id, volley::CloseCode(4001), "from node 1");
    assert_eq!(b3.recv(), Got::Close(Some((4001, "from node 1".into()))));
    // Interest goes with the last connection: B drops late, C drops alice and news when c2
    // leaves.
    drop(b3);
    drop(c2);
    nats.wait_subs(3 * FIXED + 5);
    let st = c.handle().cluster_stats().unwrap();
    assert_eq!((st.link_up, st.bad_in, st.remote_dropped), (1, 0, 0));
    // C received the keys event, the topic, the send and everyone: four lags measured.
    assert_eq!(st.lag_samples, 4, "{st:?}");
    assert!(st.lag_us_max >= st.lag_us_sum / 4, "{st:?}");
    assert!(st.msgs_in >= 4 && st.bytes_in > 0, "{st:?}");
    assert!(c
        .handle()
        .prometheus()
        .contains("volley_cluster_messages_in_total{node=\"3\"}"));
}

/// One publisher's events reach a remote recipient in order, each once, whatever subjects
/// they travel on (two keys it holds, one key, a topic).
fn order_and_no_duplicates(b: Backend) {
    if !Nats::available("cluster::order_and_no_duplicates") {
        return;
    }
    let nats = Nats::start(&[]);
    let a = Node::start(b, ClusterConfig::new([nats.url()], 1));
    let bn = Node::start(b, ClusterConfig::new([nats.url()], 2));
    let (mut r, _) = bn.client("key=x&key=y&topic=t");
    let (mut other, _) = bn.client("key=z");
    nats.wait_subs(2 * FIXED + 4);
    let h = a.handle();
    let n = 600;
    for i in 0..n {
        let m = format!("{i}");
        match i % 3 {
            0 => h.publish(Target::Keys(&["x", "y", "nobody"]), Message::Text(&m)),
            1 => h.publish(Target::Key("y"), Message::Text(&m)),
            _ => h.publish(Target::Topic("t"), Message::Text(&m)),
        };
    }
    for i in 0..n {
        assert_eq!(text(&mut r), i.to_string());
    }
    quiet(&mut r);
    quiet(&mut other);
    let st = bn.handle().cluster_stats().unwrap();
    assert_eq!(
        st.duplicates_skipped,
        n / 3,
        "one copy of each two-key event skipped"
    );
    assert_eq!(h.cluster_stats().unwrap().remote_dropped, 0);
}

/// The broker is killed mid-run: local delivery goes on, events for other nodes are counted
/// as dropped, no node crashes; restarted, the links reconnect and subscribe again.
fn broker_restart(b: Backend) {
    if !Nats::available("cluster::broker_restart") {
        return;
    }
    let mut nats = Nats::start(&[]);
    let a = Node::start(b, ClusterConfig::new([nats.url()], 1));
    let bn = Node::start(b, ClusterConfig::new([nats.url()], 2));
    let (mut local, _) = a.client("key=k");
    let (mut remote, _) = bn.client("key=k");
    nats.wait_subs(2 * FIXED + 2);
    a.handle()
        .publish(Target::Key("k"), Message::Text("before"));
    assert_eq!(text(&mut local), "before");
    assert_eq!(text(&mut remote), "before");

    nats.kill();
    wait_for("links down", || {
        a.handle().cluster_stats().unwrap().link_up == 0
            && bn.handle().cluster_stats().unwrap().link_up == 0
    });
    for i in 0..10 {
        a.handle()
            .publish(Target::Key("k"), Message::Text(&format!("during{i}")));
    }
    for i in 0..10 {
        assert_eq!(text(&mut local), format!("during{i}"));
    }
    assert_eq!(a.handle().cluster_stats().unwrap().remote_dropped, 10);
    quiet(&mut remote);

    nats.spawn();
    wait_for("links up", || {
        a.handle().cluster_stats().unwrap().link_up == 1
            && bn.handle().cluster_stats().unwrap().link_up == 1
    });
    nats.wait_subs(2 * FIXED + 2);
    a.handle().publish(Target::Key("k"), Message::Text("after"));
    assert_eq!(text(&mut local), "after");
    assert_eq!(text(&mut remote), "after");
    for n in [&a, &bn] {
        let st = n.handle().cluster_stats().unwrap();
        assert!(st.reconnects >= 1, "{st:?}");
        assert_eq!(st.subscriptions, FIXED + 1);
    }
    // A new binding after the restart subscribes too.
    let (mut late, _) = bn.client("topic=late");
    nats.wait_subs(2 * FIXED + 3);
    a.handle()
        .publish(Target::Topic("late"), Message::Text("late"));
    assert_eq!(text(&mut late), "late");
}

/// Two NATS servers in a cluster; the nodes list both. Killing the one they are on loses
/// nothing once they have reconnected to the other.
fn nats_cluster_survives_one_server(b: Backend) {
    if !Nats::available("cluster::nats_cluster_survives_one_server") {
        return;
    }
    let (r1, r2) = (free_port(), free_port());
    let route = |own: u16, peer: u16| {
        vec![
            "--cluster_name".to_string(),
            "volleytest".into(),
            "--cluster".into(),
            format!("nats://127.0.0.1:{own}"),
            "--routes".into(),
            format!("nats://127.0.0.1:{peer}"),
        ]
    };
    let mut n1 = Nats::start(&route(r1, r2));
    let n2 = Nats::start(&route(r2, r1));
    wait_for("route between the NATS servers", || {
        n1.stat("/routez", "num_routes") >= 1
    });
    let urls = [n1.url(), n2.url()];
    let a = Node::start(b, ClusterConfig::new(urls.clone(), 1));
    let bn = Node::start(b, ClusterConfig::new(urls, 2));
    let (mut r, _) = bn.client("topic=t");
    n1.wait_subs(2 * FIXED + 1);
    a.handle()
        .publish(Target::Topic("t"), Message::Text("via n1"));
    assert_eq!(text(&mut r), "via n1");

    n1.kill();
    wait_for("both links on n2", || {
        [&a, &bn].iter().all(|n| {
            let st = n.handle().cluster_stats().unwrap();
            st.link_up == 1 && st.reconnects >= 1
        })
    });
    n2.wait_subs(2 * FIXED + 1);
    for i in 0..100 {
        a.handle()
            .publish(Target::Topic("t"), Message::Text(&i.to_string()));
    }
    for i in 0..100 {
        assert_eq!(text(&mut r), i.to_string());
    }
    quiet(&mut r);
}

/// Malformed and oversized broker messages are counted and dropped; the node goes on.
fn bad_broker_input(b: Backend) {
    if !Nats::available("cluster::bad_broker_input") {
        return;
    }
    let nats = Nats::start(&[]);
    let a = Node::start(b, ClusterConfig::new([nats.url()], 1).max_message(4096));
    let bn = Node::start(b, ClusterConfig::new([nats.url()], 2));
    let (mut r, _) = a.client("key=k&topic=t");
    nats.wait_subs(2 * FIXED + 2);
    let junk: [&[u8]; 6] = [
        b"hello",
        b"",
        b"V\x01\x02\x01\x02",
        &[
            b'V', 1, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe,
        ],
        &[
            b'V', 1, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
        ],
        &[
            b'V', 1, 9, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    ];
    for (i, j) in junk.iter().enumerate() {
        let subject = ["volley.all", "volley.node.1", "volley.k.k", "volley.t.t"][i % 4];
        nats.publish_raw(subject, j);
    }
    nats.publish_raw("volley.all", &vec![b'x'; 100_000]);
    wait_for("bad messages counted", || {
        a.handle().cluster_stats().unwrap().bad_in == junk.len() as u64 + 1
    });
    quiet(&mut r);
    // Still serving: a good event from the other node arrives.
    bn.handle()
        .publish(Target::Topic("t"), Message::Text("good"));
    assert_eq!(text(&mut r), "good");
    assert_eq!(a.handle().cluster_stats().unwrap().link_up, 1);
}

/// A name whose subject would be longer than the broker takes (a SUB line over its limit
/// would drop the link): served on its node only, counted, and the link stays up.
fn names_too_long_for_a_subject(b: Backend) {
    if !Nats::available("cluster::names_too_long_for_a_subject") {
        return;
    }
    let nats = Nats::start(&[]);
    let a = Node::start(b, ClusterConfig::new([nats.url()], 1));
    let bn = Node::start(b, ClusterConfig::new([nats.url()], 2));
    let long = "é".repeat(300); // 600 bytes: 1,200 hex digits in a subject
    let (mut r, id) = bn.client("key=ok");
    bn.handle().bind_key(id, &long);
    nats.wait_subs(2 * FIXED + 1);
    wait_for("unroutable counted", || {
        bn.handle().cluster_stats().unwrap().unroutable == 1
    });
    a.handle()
        .publish(Target::Keys(&[long.as_str(), "ok"]), Message::Text("one"));
    assert_eq!(text(&mut r), "one", "through the routable key");
    a.handle().publish(Target::Key(&long), Message::Text("two"));
    bn.handle()
        .publish(Target::Key(&long), Message::Text("local"));
    assert_eq!(text(&mut r), "local");
    quiet(&mut r);
    assert_eq!(a.handle().cluster_stats().unwrap().remote_dropped, 2);
    assert_eq!(bn.handle().cluster_stats().unwrap().link_up, 1);
}

/// The broker stops reading (SIGSTOP): the link's queue stays within its bound and what does
/// not fit is counted as dropped; once the broker runs again the link recovers (a new
/// connection if the old one timed out) and later events arrive, in order.
fn stalled_broker_bounds_the_link_queue(b: Backend) {
    if !Nats::available("cluster::stalled_broker_bounds_the_link_queue") {
        return;
    }
    let nats = Nats::start(&[]);
    let a = Node::start(
        b,
        ClusterConfig::new([nats.url()], 1).max_queue(64, 256 << 10),
    );
    let bn = Node::start(b, ClusterConfig::new([nats.url()], 2));
    let (mut r, _) = bn.client("topic=t");
    nats.wait_subs(2 * FIXED + 1);
    let pid = nats.child.as_ref().unwrap().id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let body = "x".repeat(1000);
    let n = 20_000u64;
    for i in 0..n {
        a.handle()
            .publish(Target::Topic("t"), Message::Text(&format!("{i:06} {body}")));
    }
    let dropped = a.handle().cluster_stats().unwrap().remote_dropped;
    signal("-CONT");
    // 20 MB published into socket buffers of a few MB and a queue of 64 messages: most of it
    // is dropped, at once, without the publisher waiting.
    assert!(dropped > n / 2, "{dropped} of {n} dropped");
    wait_for("link up", || {
        a.handle().cluster_stats().unwrap().link_up == 1
            && bn.handle().cluster_stats().unwrap().link_up == 1
    });
    nats.wait_subs(2 * FIXED + 1);
    // What got through before the stall (or sat in buffers) comes first, in order. "after"
    // is published again while nothing arrives: the broker may still be cutting and
    // re-admitting a node it found too slow for the backlog (at most once, by design).
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = match r.recv_within(Duration::from_millis(300)) {
            Some(Got::Text(t)) => t,
            Some(other) => panic!("expected text, got {other:?}"),
            None => {
                assert!(Instant::now() < deadline, "\"after\" never arrived");
                a.handle()
                    .publish(Target::Topic("t"), Message::Text("after"));
                continue;
            }
        };
        if t == "after" {
            break;
        }
        let i: u64 = t[..6].parse().unwrap();
        assert!(last < Some(i), "{i} after {last:?}");
        last = Some(i);
    }
}

both_backends!(
    stalled_broker_bounds_the_link_queue,
    names_too_long_for_a_subject,
    three_nodes,
    order_and_no_duplicates,
    broker_restart,
    nats_cluster_survives_one_server,
    bad_broker_input,
);

/// A node that cannot reach the broker fails to start with a clear error, unless told to
/// start local-only; then it connects once the broker is there.
#[test]
fn unreachable_broker_at_start() {
    if !Nats::available("cluster::unreachable_broker_at_start") {
        return;
    }
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let cfg = |c: ClusterConfig| {
        Config::new("127.0.0.1:0")
            .workers(1)
            .backend(Backend::Mio)
            .cluster(Some(c))
    };
    let (tx, _rx) = mpsc::channel();
    let router = Router {
        ids: Arc::new(Mutex::new(tx)),
    };
    let err = Server::start(cfg(ClusterConfig::new([url.clone()], 1)), router.clone())
        .expect_err("no broker: no start");
    assert!(
        err.to_string().contains("cluster broker unreachable"),
        "{err}"
    );
    let s = Server::start(
        cfg(ClusterConfig::new([url], 1).start_local_only(true)),
        router,
    )
    .expect("local-only start");
    assert_eq!(s.handle().cluster_stats().unwrap().link_up, 0);
    let mut nats = Nats::start(&[]);
    // Put the broker on the port the node was given.
    nats.kill();
    nats.args[3] = port.to_string();
    nats.port = port;
    nats.spawn();
    wait_for("link up", || {
        s.handle().cluster_stats().unwrap().link_up == 1
    });
    nats.wait_subs(FIXED);
    s.shutdown();
}

fn serve_node(mode: &str, nats: &Nats, node: u8, b: Backend) -> ChildServer {
    serve_node_with(mode, nats, node, b, &[])
}

fn serve_node_with(mode: &str, nats: &Nats, node: u8, b: Backend, extra: &[&str]) -> ChildServer {
    let backend = if b == Backend::Uring { "uring" } else { "mio" };
    let (url, node) = (nats.url(), node.to_string());
    let mut args = vec![
        "--mode",
        mode,
        "--workers",
        "2",
        "--backend",
        backend,
        "--cluster",
        &url,
        "--node-id",
        &node,
    ];
    args.extend_from_slice(extra);
    ChildServer::spawn(&args)
}

/// The binary's reference modes across three `volley serve --cluster` processes: notify to
/// keys held on other nodes, pubsub topics, broadcast.
fn binary_modes_across_nodes(b: Backend) {
    if !Nats::available("cluster::binary_modes_across_nodes") {
        return;
    }
    let nats = Nats::start(&[]);
    // notify
    let ns: Vec<ChildServer> = (1..=3).map(|n| serve_node("notify", &nats, n, b)).collect();
    let mut sender = RawClient::connect(ns[0].addr, "/?id=carol");
    let mut alice = RawClient::connect(ns[1].addr, "/?id=alice");
    let mut bob = RawClient::connect(ns[2].addr, "/?id=bob");
    let mut zed = RawClient::connect(ns[2].addr, "/?id=zed");
    nats.wait_subs(3 * FIXED + 4);
    sender.send_text(r#"{"to":["alice","bob"],"data":"hi"}"#);
    // The receipt counts this node's deliveries only (docs/modes.md).
    assert_eq!(text(&mut sender), r#"{"reached":0}"#);
    assert_eq!(text(&mut alice), "hi");
    assert_eq!(text(&mut bob), "hi");
    quiet(&mut zed);
    drop(ns);
    nats.wait_subs(0);
    // pubsub
    let ps: Vec<ChildServer> = (1..=2).map(|n| serve_node("pubsub", &nats, n, b)).collect();
    let mut sub = RawClient::connect(ps[1].addr, "/");
    sub.send_text("SUB news");
    assert_eq!(text(&mut sub), "+SUB news");
    let mut publ = RawClient::connect(ps[0].addr, "/");
    nats.wait_subs(2 * FIXED + 1);
    publ.send_text("PUB news across");
    assert_eq!(text(&mut publ), "+PUB news 0");
    assert_eq!(text(&mut sub), "across");
    drop(ps);
    nats.wait_subs(0);
    // broadcast
    let bs: Vec<ChildServer> = (1..=3)
        .map(|n| serve_node("broadcast", &nats, n, b))
        .collect();
    let mut cs: Vec<RawClient> = bs.iter().map(|s| RawClient::connect(s.addr, "/")).collect();
    nats.wait_subs(3 * FIXED);
    std::thread::sleep(Duration::from_millis(50));
    cs[2].send_text("to everyone");
    for c in cs.iter_mut() {
        assert_eq!(text(c), "to everyone");
    }
}

both_backends!(binary_modes_across_nodes);

/// `--cluster` with no broker: the process exits with a clear error.
#[test]
fn binary_without_broker_exits_with_the_reason() {
    let out = Command::new(volley_bin())
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--cluster",
            &format!("nats://127.0.0.1:{}", free_port()),
            "--node-id",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster broker unreachable"), "{err}");
}

/// A `volley serve --cluster` process's counter from its `/metrics`.
fn metric(addr: &str, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The broker restarted three times under two `volley serve` processes: each time the link
/// comes back (read from `/metrics`), delivery resumes, and neither process keeps a thread or
/// a file descriptor more than before.
#[test]
fn binary_survives_broker_restarts_without_leaks() {
    if !Nats::available("cluster::binary_survives_broker_restarts_without_leaks") {
        return;
    }
    let mut nats = Nats::start(&[]);
    let nodes: Vec<ChildServer> = (0..2)
        .map(|i| {
            serve_node_with(
                "pubsub",
                &nats,
                i as u8 + 1,
                Backend::Mio,
                &["--metrics", "127.0.0.1:0"],
            )
        })
        .collect();
    let metrics: Vec<String> = nodes
        .iter()
        .map(|n| n.metrics.unwrap().to_string())
        .collect();
    let mut sub = RawClient::connect(nodes[1].addr, "/");
    sub.send_text("SUB t");
    assert_eq!(text(&mut sub), "+SUB t");
    let mut publ = RawClient::connect(nodes[0].addr, "/");
    nats.wait_subs(2 * FIXED + 1);
    publ.send_text("PUB t first");
    assert_eq!(text(&mut publ), "+PUB t 0");
    assert_eq!(text(&mut sub), "first");
    let base: Vec<(usize, usize)> = nodes
        .iter()
        .map(|n| (threads_of(n.pid()), n.fd_count()))
        .collect();
    for round in 1..=3u64 {
        nats.kill();
        for m in &metrics {
            wait_for("link down", || {
                metric(m, "volley_cluster_link_up") == Some(0)
            });
        }
        publ.send_text("PUB t lost");
        assert_eq!(text(&mut publ), "+PUB t 0");
        nats.spawn();
        for m in &metrics {
            wait_for("link up again", || {
                metric(m, "volley_cluster_link_up") == Some(1)
                    && metric(m, "volley_cluster_reconnects_total") == Some(round)
            });
        }
        nats.wait_subs(2 * FIXED + 1);
        publ.send_text(&format!("PUB t after{round}"));
        assert_eq!(text(&mut publ), "+PUB t 0");
        assert_eq!(text(&mut sub), format!("after{round}"));
    }
    assert_eq!(
        metric(&metrics[0], "volley_cluster_remote_dropped_total"),
        Some(3)
    );
    let after: Vec<(usize, usize)> = nodes
        .iter()
        .map(|n| (threads_of(n.pid()), n.fd_count()))
        .collect();
    assert_eq!(base, after, "(threads, fds) per node before and after");
}

/// `loadgen fanout --sub-url`: the publisher on node 1, the subscribers spread over nodes 2
/// and 3 (every event crosses the broker): every event reaches every subscriber, and the
/// broker carries each event once in and once out per node with interest (two), never per
/// subscriber.
#[test]
fn loadgen_fanout_across_nodes() {
    if !Nats::available("cluster::loadgen_fanout_across_nodes") {
        return;
    }
    let bin = volley_bin().parent().unwrap().join("loadgen");
    assert!(
        bin.exists(),
        "{} not built; run `cargo test --workspace`",
        bin.display()
    );
    let nats = Nats::start(&[]);
    let nodes: Vec<ChildServer> = (1..=3)
        .map(|n| serve_node("broadcast", &nats, n, Backend::Mio))
        .collect();
    nats.wait_subs(3 * FIXED);
    let url = |i: usize| format!("ws://{}/", nodes[i].addr);
    let json = std::env::temp_dir().join(format!("cluster-fanout-{}.json", std::process::id()));
    let (in0, out0) = (
        nats.stat("/varz", "in_msgs"),
        nats.stat("/varz", "out_msgs"),
    );
    // 20 events/s for 0.5 s of warm-up and a 1 s window: 30 events, to 40 subscribers.
    let out = Command::new(bin)
        .args([
            "fanout",
            "--url",
            &url(0),
            "--sub-url",
            &url(1),
            "--sub-url",
            &url(2),
        ])
        .args([
            "--subscribers",
            "40",
            "--rate",
            "20",
            "--warmup",
            "0.5",
            "--duration",
            "1",
        ])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let report = std::fs::read_to_string(&json).unwrap_or_default();
    let _ = std::fs::remove_file(&json);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(&report).unwrap();
        v[k].as_u64().unwrap_or_else(|| panic!("{k} in {report}"))
    };
    assert_eq!(field("events_published"), 30);
    assert_eq!((field("expected"), field("received")), (1200, 1200));
    assert_eq!((field("lost"), field("out_of_order")), (0, 0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("subscribers on"), "{stdout}");
    let (ins, outs) = (
        nats.stat("/varz", "in_msgs") - in0,
        nats.stat("/varz", "out_msgs") - out0,
    );
    assert_eq!((ins, outs), (30, 60), "broker messages in and out");
}
