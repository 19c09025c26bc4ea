//! The programs in `engine/examples/`, run as a user would run them (the binaries cargo
//! builds next to the tests), driven by clients: the chat on topics, the deferred auth, the
//! tokio service.

mod common;

use common::{Got, RawClient};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// An example binary running on a port of its own; killed on drop unless it exited.
struct Example {
    child: Child,
    out: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl Example {
    fn spawn(name: &str) -> Example {
        let exe = std::env::current_exe().unwrap();
        let bin = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples")
            .join(name);
        assert!(
            bin.exists(),
            "{} not built; run `cargo test --workspace` (it builds the examples)",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .arg("127.0.0.1:0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn example");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)
            .expect("the example says where it listens");
        // "<name> on ws://127.0.0.1:PORT/..."
        let addr = line
            .split("ws://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        Example { child, out, addr }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn text(c: &mut RawClient) -> String {
    match c.recv() {
        Got::Text(t) => t,
        other => panic!("{other:?}"),
    }
}

#[test]
fn chat_relays_a_line_to_the_rest_of_the_room_only() {
    let ex = Example::spawn("chat");
    let mut alice = RawClient::connect(ex.addr, "/?name=alice&room=lobby");
    assert_eq!(text(&mut alice), "welcome, alice");
    let mut bob = RawClient::connect(ex.addr, "/?name=bob&room=lobby");
    assert_eq!(text(&mut bob), "welcome, bob");
    assert_eq!(text(&mut alice), "* bob joined");
    let mut carol = RawClient::connect(ex.addr, "/?name=carol&room=attic");
    assert_eq!(text(&mut carol), "welcome, carol");
    alice.send_text("hi");
    assert_eq!(text(&mut bob), "alice: hi");
    bob.send_text("hello");
    // Alice gets bob's line, not her own first: a publish leaves out its sender.
    assert_eq!(text(&mut alice), "bob: hello");
    assert_eq!(
        carol.recv_within(Duration::from_millis(200)),
        None,
        "another room"
    );
    drop(bob);
    assert_eq!(text(&mut alice), "* bob left");
    let bad = RawClient::connect_raw(ex.addr, "/?name=a%20b", &[]);
    assert_eq!(bad.status, 400);
}

#[test]
fn auth_accepts_a_good_token_later_and_rejects_a_bad_one_with_headers() {
    let ex = Example::spawn("auth");
    let mut c = RawClient::connect(ex.addr, "/?token=secret-alice");
    assert_eq!(text(&mut c), "hello alice");
    c.send_text("hi");
    assert_eq!(text(&mut c), "alice: hi");
    let bad = RawClient::connect_raw(ex.addr, "/?token=nope", &[]);
    assert_eq!(bad.status, 401, "{}", bad.head);
    assert!(bad
        .head
        .contains("WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"));
    let none = RawClient::connect_raw(ex.addr, "/", &[]);
    assert_eq!(none.status, 401, "{}", none.head);
}

#[test]
fn tokio_service_answers_publishes_and_stops_cleanly() {
    let mut ex = Example::spawn("tokio_service");
    let mut c = RawClient::connect(ex.addr, "/");
    c.send_text("sub ticks");
    assert_eq!(text(&mut c), "subscribed");
    for i in 0..20 {
        c.send_text(&format!("add {i} 40"));
    }
    // Answers (in any order: the service works concurrently) and ticks, interleaved.
    let mut sums = Vec::new();
    let mut ticks = 0;
    let mut busy = 0;
    while sums.len() + busy < 20 || ticks == 0 {
        let t = text(&mut c);
        if let Some(s) = t.strip_prefix("sum ") {
            sums.push(s.parse::<i64>().unwrap());
        } else if t.starts_with("tick ") {
            ticks += 1;
        } else if t == "busy" {
            busy += 1;
        } else {
            panic!("{t}");
        }
    }
    sums.sort();
    // At most 8 in flight per connection: the rest were told "busy", none lost.
    assert!(sums.len() >= 8, "{sums:?}");
    assert!(sums.iter().all(|s| (40..60).contains(s)), "{sums:?}");
    // Closing its standard input stops it: clients get 1001, the process exits 0.
    drop(ex.child.stdin.take());
    let t = Instant::now();
    loop {
        match c.recv() {
            Got::Close(Some((code, _))) => {
                assert_eq!(code, 1001);
                break;
            }
            Got::Text(_) => {}
            other => panic!("{other:?}"),
        }
    }
    c.send_close(Some(1001), "");
    let status = loop {
        if let Some(s) = ex.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut ex.out, &mut rest);
    assert!(rest.contains("stopped cleanly"), "{rest}");
    let _ = std::io::stdout().flush();
}
