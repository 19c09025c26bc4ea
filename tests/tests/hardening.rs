//! Issue 12 (hardening): what one client's request can cost the server, and what the server
//! exposes by default. Each test bounds a cost (memory from /proc, CPU time from /proc,
//! answer codes) rather than a wall-clock time.
//!
//! * Repeated keys: a notify event listing one key hundreds of thousands of times.
//! * Many subscriptions on one connection.
//! * Durations too large for the timer arithmetic ("never").
//! * A failed WebSocket handshake must not be served as a plain HTTP request.
//! * `/metrics` is opt-in, on its own address, after `on_http`; the Origin allow-list.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use volley::{Backend, Ctx, Handler, HttpResponse, Message, Reject, Request, Upgrade};

fn backend(b: Backend) -> &'static str {
    if b == Backend::Uring {
        "uring"
    } else {
        "mio"
    }
}

/// Sends `request` as is and reads the whole answer (the server closes after it).
fn http_raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    http_raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS (proc(5), clear_refs "5").
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// User plus system CPU time of `pid`, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

// ---- repeated keys ----

/// A notify event listing `key` `n` times.
fn json_event(key: &str, n: usize, data: &str) -> String {
    let k = format!("\"{key}\"");
    format!("{{\"to\":[{}],\"data\":\"{data}\"}}", vec![k; n].join(","))
}

/// One event lists a key bound to 200 connections 300,000 times (1.2 MB). Expanding every
/// listed key before de-duplicating held 60 million slots (about 256 MB) in the workers'
/// scratch vectors, kept for their lives. With the key list de-duplicated first, the
/// server's peak grows by the parse only (18 MiB measured), the receipt counts each
/// connection once, and the scratch memory is freed afterwards (RSS back within 32 MiB).
fn repeated_keys_cost_one_lookup_not_one_expansion_each(b: Backend) {
    let srv = ChildServer::spawn(&[
        "--backend",
        backend(b),
        "--mode",
        "notify",
        "--workers",
        "2",
        // No cap here: this is the engine's de-duplication, not the mode's cap.
        "--max-keys-per-event",
        "0",
    ]);
    let pid = srv.pid();
    let mut bound: Vec<RawClient> = (0..200)
        .map(|_| RawClient::connect(srv.addr, "/?id=k"))
        .collect();
    let mut sender = RawClient::connect(srv.addr, "/?id=sender");
    std::thread::sleep(Duration::from_millis(200));
    let before = status_kib(pid, "VmRSS");
    reset_peak(pid);
    sender.send_text(&json_event("k", 300_000, "hi"));
    assert_eq!(sender.recv(), Got::Text("{\"reached\":200}".into()));
    for c in bound.iter_mut().take(20) {
        assert_eq!(c.recv(), Got::Text("hi".into()));
    }
    let peak = status_kib(pid, "VmHWM");
    let after = status_kib(pid, "VmRSS");
    eprintln!("RSS before {before} KiB, peak {peak} KiB, after {after} KiB");
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "server RSS peaked {} MiB above its {} MiB before one event",
        (peak - before) / 1024,
        before / 1024
    );
    // The delivery's scratch memory is given back (it used to stay at its peak).
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "server RSS stayed {} MiB above its {} MiB after one event",
        (after - before) / 1024,
        before / 1024
    );
}

/// The notify mode caps the keys of one event (100 by default): an event listing a key
/// 3,000,000 times (12 MB of JSON) is answered with an error and delivers nothing. It is
/// read without building a JSON document and the parse stops at the 101st key, so the
/// server's peak grows by about the message itself; a `serde_json::Value` per listed key
/// cost about 64 bytes each (some 250 MiB here).
fn notify_refuses_an_event_over_its_key_cap(b: Backend) {
    let srv = ChildServer::spawn(&[
        "--backend",
        backend(b),
        "--mode",
        "notify",
        "--workers",
        "2",
    ]);
    let pid = srv.pid();
    let _bound: Vec<RawClient> = (0..200)
        .map(|_| RawClient::connect(srv.addr, "/?id=k"))
        .collect();
    let mut sender = RawClient::connect(srv.addr, "/?id=sender");
    std::thread::sleep(Duration::from_millis(200));
    let before = status_kib(pid, "VmRSS");
    reset_peak(pid);
    sender.send_text(&json_event("k", 3_000_000, "hi"));
    let answer = sender.recv();
    let peak = status_kib(pid, "VmHWM");
    eprintln!("RSS before {before} KiB, peak {peak} KiB");
    assert!(
        peak.saturating_sub(before) < 48 * 1024,
        "server RSS peaked {} MiB above its {} MiB",
        (peak - before) / 1024,
        before / 1024
    );
    match answer {
        Got::Text(t) => assert!(t.contains("too many keys"), "{t}"),
        other => panic!("expected an error answer, got {other:?}"),
    }
    // 101 keys (one over the cap) are refused the same way; 100 go through.
    let keys: Vec<String> = (0..101).map(|i| format!("\"u{i}\"")).collect();
    sender.send_text(&format!("{{\"to\":[{}],\"data\":\"x\"}}", keys.join(",")));
    assert!(matches!(sender.recv(), Got::Text(t) if t.contains("too many keys")));
    sender.send_text(&format!(
        "{{\"to\":[{}],\"data\":\"x\"}}",
        keys[..100].join(",")
    ));
    assert_eq!(sender.recv(), Got::Text("{\"reached\":0}".into()));
    // The binary envelope: 101 keys are refused with its error message (0x03, reason).
    let mut env = vec![0x01];
    env.extend_from_slice(&101u16.to_be_bytes());
    for i in 0..101 {
        let k = format!("u{i}");
        env.push(k.len() as u8);
        env.extend_from_slice(k.as_bytes());
    }
    env.extend_from_slice(b"payload");
    sender.send_frame(volley::proto::OpCode::Binary, true, &env);
    match sender.recv() {
        Got::Binary(b) => {
            assert_eq!(b[0], 0x03);
            assert!(String::from_utf8_lossy(&b[1..]).contains("too many keys"));
        }
        other => panic!("expected a binary error, got {other:?}"),
    }
}

// ---- many subscriptions ----

/// Sends `n` pubsub SUB commands on one connection and counts the answers: (+SUB, -ERR).
fn subscribe_many(addr: SocketAddr, n: usize) -> (usize, usize, Option<String>) {
    let mut c = RawClient::connect(addr, "/");
    let mut wire = Vec::new();
    for i in 0..n {
        volley::proto::encode::encode_client_frame(
            volley::proto::OpCode::Text,
            true,
            format!("SUB t{i}").as_bytes(),
            rand_bytes::<4>(),
            &mut wire,
        );
    }
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&wire).unwrap());
    // Server frames here are short unmasked text frames: 0x81, length < 126, payload.
    let (mut ok, mut err, mut first_err) = (0, 0, None);
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut tmp = vec![0u8; 64 * 1024];
    c.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    while ok + err < n {
        while buf.len() - pos >= 2 && buf.len() - pos >= 2 + buf[pos + 1] as usize {
            assert_eq!(buf[pos], 0x81);
            let len = buf[pos + 1] as usize;
            assert!(len < 126);
            let text = std::str::from_utf8(&buf[pos + 2..pos + 2 + len]).unwrap();
            if text.starts_with("+SUB ") {
                ok += 1;
            } else {
                err += 1;
                first_err.get_or_insert_with(|| text.to_owned());
            }
            pos += 2 + len;
        }
        buf.drain(..pos);
        pos = 0;
        if ok + err == n {
            break;
        }
        let got = match c.stream.read(&mut tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("answers keep coming"),
        };
        assert!(got > 0, "server closed after {ok} +SUB and {err} -ERR");
        buf.extend_from_slice(&tmp[..got]);
    }
    writer.join().unwrap();
    (ok, err, first_err)
}

/// 50,000 SUB commands on one connection (1.2 MB). A per-connection `Vec` scan made them
/// cost O(N²): seconds of a worker's CPU. With hash membership and no cap they cost tens
/// of milliseconds; the bound on the server's CPU time is generous.
fn fifty_thousand_subscriptions_cost_linear_cpu(b: Backend) {
    let srv = ChildServer::spawn(&[
        "--backend",
        backend(b),
        "--mode",
        "pubsub",
        "--workers",
        "1",
        "--max-topics-per-conn",
        "0",
    ]);
    let cpu0 = cpu_ticks(srv.pid());
    let (ok, err, _) = subscribe_many(srv.addr, 50_000);
    let cpu = cpu_ticks(srv.pid()) - cpu0;
    eprintln!("server CPU for 50,000 SUB: {} ms", cpu * 10);
    assert_eq!((ok, err), (50_000, 0));
    assert!(
        cpu < 300,
        "50,000 subscriptions cost the server {} ms of CPU",
        cpu * 10
    );
}

/// The pubsub mode caps subscriptions per connection (256 by default): past the cap `SUB`
/// is answered `-ERR` and costs nothing more.
fn pubsub_answers_err_past_the_subscription_cap(b: Backend) {
    let srv = ChildServer::spawn(&[
        "--backend",
        backend(b),
        "--mode",
        "pubsub",
        "--workers",
        "1",
    ]);
    let cpu0 = cpu_ticks(srv.pid());
    let (ok, err, first_err) = subscribe_many(srv.addr, 50_000);
    let cpu = cpu_ticks(srv.pid()) - cpu0;
    eprintln!("server CPU for 50,000 SUB: {} ms", cpu * 10);
    assert!(cpu < 300, "the SUB flood cost {} ms of CPU", cpu * 10);
    assert_eq!((ok, err), (256, 50_000 - 256));
    let first_err = first_err.unwrap();
    assert!(
        first_err.starts_with("-ERR too many subscriptions"),
        "{first_err}"
    );
    // Another connection is not affected by the first one's cap.
    let mut other = RawClient::connect(srv.addr, "/");
    other.send_text("SUB t1");
    assert_eq!(other.recv(), Got::Text("+SUB t1".into()));
}

// ---- durations ----

/// `u64::MAX` seconds and `Duration::MAX` mean "never": a connection stays open with no
/// ping. The millisecond arithmetic used to wrap (`as u64`, then a wrapping add to the
/// connection's last activity), closing it at the first 100 ms tick, or pinging it at once.
/// The wrap needs the worker's clock past the overflow (1 s for the ping's), so the client
/// connects after that.
fn huge_timeouts_mean_never(b: Backend) {
    let cfg = TestServer::config(b)
        .idle_timeout(Some(Duration::from_secs(u64::MAX)))
        .ping(Some(Duration::MAX), Duration::MAX)
        .handshake_timeout(Duration::MAX)
        .close_timeout(Duration::from_secs(5));
    let srv = TestServer::start(cfg);
    std::thread::sleep(Duration::from_millis(1100));
    let mut c = RawClient::connect(srv.addr, "/");
    std::thread::sleep(Duration::from_millis(700));
    c.send_text("still here");
    // The first thing the client sees is its echo: no close, no ping.
    assert_eq!(c.recv(), Got::Text("still here".into()));
    c.send_close(Some(1000), "");
    assert_eq!(c.expect_close(), Some(1000));
    assert_eq!(srv.handle().stats().idle_closes, 0);
    assert_eq!(srv.handle().stats().pings_sent, 0);
}

/// The command line refuses a timeout beyond its range with a clear error instead of
/// starting a server that closes every connection.
#[test]
fn command_line_refuses_nonsense_timeouts() {
    for (flag, value) in [
        ("--idle-timeout", "18446744073709551615"),
        ("--ping-interval", "99999999999"),
        ("--pong-timeout", "0"),
        ("--handshake-timeout", "-1"),
        ("--idle-timeout", "soon"),
    ] {
        let port = free_port();
        let mut child = std::process::Command::new(volley_bin())
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .arg(format!("{flag}={value}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("volley serve {flag} {value} started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(!status.success(), "{flag} {value}: {status}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

// ---- failed handshakes ----

/// A request with WebSocket handshake headers that fails validation is a failed handshake
/// (400, or 426 with `Sec-WebSocket-Version: 13` for a bad version), never the demo page;
/// only a plain request gets the page.
fn failed_handshake_is_not_served_the_page(b: Backend) {
    let srv = ChildServer::spawn(&["--backend", backend(b), "--workers", "1"]);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        // Key and version, no Upgrade at all.
        (
            format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n{key}Sec-WebSocket-Version: 13\r\n\r\n"),
            400,
        ),
        // Upgrade to something else.
        (
            format!("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n{key}Sec-WebSocket-Version: 13\r\n\r\n"),
            400,
        ),
        // Only the version header, and not ours.
        (
            "GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Version: 8\r\n\r\n".to_owned(),
            426,
        ),
        // Only the key (no version: the Upgrade is what fails).
        (format!("GET / HTTP/1.1\r\nHost: x\r\n{key}\r\n"), 400),
    ];
    for (req, status) in cases {
        let got = http_raw(srv.addr, &req);
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status} ")),
            "{req:?} was answered {got:?}"
        );
        assert!(!got.contains("<html"), "{req:?} got the page");
        if status == 426 {
            assert!(got.contains("Sec-WebSocket-Version: 13\r\n"), "{got}");
        }
    }
    let page = http_get(srv.addr, "/");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
}

// ---- metrics and origins ----

/// The binary never answers the counters on its WebSocket port; `--metrics ADDR` serves
/// them there, in the Prometheus conventions.
fn metrics_are_opt_in_on_their_own_address(b: Backend) {
    let srv = ChildServer::spawn(&["--backend", backend(b), "--workers", "2"]);
    let m = http_get(srv.addr, "/metrics");
    assert!(m.starts_with("HTTP/1.1 404 "), "{m}");
    assert!(!m.contains("volley_"), "{m}");
    drop(srv);

    let srv = ChildServer::spawn(&[
        "--backend",
        backend(b),
        "--workers",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let maddr = srv.metrics.unwrap();
    let mut c = RawClient::connect(srv.addr, "/");
    c.send_text("x");
    assert_eq!(c.recv(), Got::Text("x".into()));
    assert!(http_get(srv.addr, "/metrics").starts_with("HTTP/1.1 404 "));
    let out = http_get(maddr, "/metrics");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.contains("Content-Type: text/plain; version=0.0.4"),
        "{out}"
    );
    assert!(http_get(maddr, "/other").starts_with("HTTP/1.1 404 "));
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    check_exposition(body);
    let sum = |name: &str| -> u64 {
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(sum("volley_messages_in_total"), 1);
    assert_eq!(sum("volley_opened_total"), 1);
    assert!(sum("volley_connections") >= 1);
    assert!(sum("volley_received_bytes_total") > 0);
}

/// Checks the text format's rules as Prometheus states them: each family has one HELP
/// and one TYPE before its samples, its samples are contiguous, counters end in `_total`.
fn check_exposition(body: &str) {
    let mut seen = std::collections::HashSet::new();
    let mut current: Option<(String, String)> = None; // (family, type)
    let mut helped = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_owned();
            assert!(seen.insert(name.clone()), "family {name} appears twice");
            helped = Some(name);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            assert_eq!(helped.as_deref(), Some(name), "TYPE without HELP first");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} lacks _total");
            } else {
                assert_eq!(kind, "gauge", "{line}");
                assert!(!name.ends_with("_total"), "gauge {name} ends in _total");
            }
            current = Some((name.to_owned(), kind.to_owned()));
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let (family, _) = current.as_ref().expect("a sample before any TYPE");
            assert_eq!(name, family, "sample {line} outside its family");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
    assert!(seen.len() > 10, "{body}");
}

/// Guards `/metrics` with a header, as an embedder can now that `on_http` comes first.
#[derive(Clone)]
struct Guarded;

impl Handler for Guarded {
    type State = ();
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }
    fn on_http(&mut self, req: &Request<'_>) -> Option<HttpResponse> {
        if req.path == "/metrics" && req.header("authorization") != Some(&b"Bearer s3cret"[..]) {
            return Some(HttpResponse::new(403, "text/plain", "no\n"));
        }
        None
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut (), msg: Message<'_>) {
        ctx.send(msg);
    }
}

/// On the WebSocket port the counters are off by default, and when an embedder turns them
/// on there, its `on_http` sees the request first.
fn metrics_path_comes_after_on_http(b: Backend) {
    // Default: not served (the recording handler has no on_http: 426).
    let srv = TestServer::start(TestServer::config(b));
    let got = http_get(srv.addr, "/metrics");
    assert!(got.starts_with("HTTP/1.1 426 "), "{got}");
    drop(srv);

    let mut cfg = TestServer::config(b);
    cfg.metrics_path = Some("/metrics".into());
    let server = volley::Server::start(cfg, Guarded).unwrap();
    let addr = server.local_addr();
    let got = http_get(addr, "/metrics");
    assert!(got.starts_with("HTTP/1.1 403 "), "{got}");
    let got = http_raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("# TYPE volley_connections gauge"), "{got}");
    server.shutdown();
}

/// With an allow-list, a browser page from another origin gets 403 before `on_upgrade`;
/// a listed origin (any ASCII case) and a client without `Origin` connect.
fn origin_allow_list_refuses_other_sites(b: Backend) {
    let cfg = TestServer::config(b).allowed_origins(["https://app.example.com"]);
    let srv = TestServer::start(cfg);
    let evil = RawClient::connect_raw(srv.addr, "/", &[("Origin", "https://evil.example")]);
    assert_eq!(evil.status, 403, "{}", evil.head);
    let good = RawClient::connect_raw(srv.addr, "/", &[("Origin", "https://APP.example.com")]);
    assert_eq!(good.status, 101, "{}", good.head);
    let tool = RawClient::connect_raw(srv.addr, "/", &[]);
    assert_eq!(tool.status, 101, "{}", tool.head);
    assert!(srv.handle().stats().handshake_failures >= 1);
}

/// An embedder's publish listing more keys than `Config::max_keys_per_event` is refused
/// (false, nothing delivered, counted), from a callback or from another thread.
fn publish_over_the_key_cap_is_refused(b: Backend) {
    let srv = TestServer::start(TestServer::config(b).max_keys_per_event(2));
    let h = srv.handle();
    assert!(!h.publish(volley::Target::Keys(&["a", "b", "a"]), Message::Text("x")));
    assert!(h.publish(volley::Target::Keys(&["a", "b"]), Message::Text("x")));
    assert!(h.publish(volley::Target::All, Message::Text("x")));
    assert_eq!(h.stats().publishes_refused, 1);
}

/// The same list from the command line.
#[test]
fn binary_allowed_origin_flag() {
    let srv = ChildServer::spawn(&[
        "--allowed-origin",
        "https://a.example",
        "--allowed-origin",
        "https://b.example",
    ]);
    for (origin, status) in [
        ("https://a.example", 101),
        ("https://b.example", 101),
        ("https://c.example", 403),
    ] {
        let c = RawClient::connect_raw(srv.addr, "/", &[("Origin", origin)]);
        assert_eq!(c.status, status, "{origin}: {}", c.head);
    }
}

/// `volley serve --help` says plainly that the reference modes authenticate nobody.
#[test]
fn help_says_the_modes_authenticate_nobody() {
    let out = std::process::Command::new(volley_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("authenticate nobody"), "{text}");
    assert!(text.contains("--metrics"), "{text}");
}

both_backends!(
    repeated_keys_cost_one_lookup_not_one_expansion_each,
    notify_refuses_an_event_over_its_key_cap,
    fifty_thousand_subscriptions_cost_linear_cpu,
    pubsub_answers_err_past_the_subscription_cap,
    huge_timeouts_mean_never,
    failed_handshake_is_not_served_the_page,
    metrics_are_opt_in_on_their_own_address,
    metrics_path_comes_after_on_http,
    origin_allow_list_refuses_other_sites,
    publish_over_the_key_cap_is_refused,
);
