//! The `loadgen` binary against real servers: an in-process volley echo server, a port with
//! nothing listening, and a plain HTTP server. Each test takes well under a few seconds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Output;
use volley::Server;

mod common;

use common::*;

/// A port on which nothing listens (bound, then released).
fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A plain HTTP server answering every request with 404, for `n` connections.
fn http_404_server(n: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
            );
        }
    });
    addr
}

fn json_field(json: &str, key: &str) -> String {
    let pat = format!("\n  \"{key}\": ");
    let start = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing in {json}"))
        + pat.len();
    json[start..]
        .split([',', '\n'])
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

fn run_echo(server: &Server, extra: &[&str]) -> (Output, String) {
    let url = format!("ws://{}/", server.local_addr());
    let dir = std::env::temp_dir().join(format!(
        "loadgen-test-{}-{}",
        std::process::id(),
        extra.join("_").replace(['-', ' '], "")
    ));
    let json = dir.with_extension("json");
    let pid = std::process::id().to_string();
    let mut args = vec![
        "echo",
        "--url",
        &url,
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
        "--duration",
        "20",
    ];
    args.extend_from_slice(extra);
    let out = loadgen(&args);
    let report = std::fs::read_to_string(&json).unwrap_or_default();
    let _ = std::fs::remove_file(&json);
    (out, report)
}

/// Runs `loadgen` with `args` and `--json` into a file of its own (`name`), checks that it
/// succeeded, and returns its stdout and the JSON report.
fn run_ok_with_report(name: &str, args: &[&str]) -> (String, String) {
    let json =
        std::env::temp_dir().join(format!("loadgen-test-{name}-{}.json", std::process::id()));
    let mut all = args.to_vec();
    all.extend(["--json", json.to_str().unwrap()]);
    let out = loadgen(&all);
    let report = std::fs::read_to_string(&json).unwrap_or_default();
    let _ = std::fs::remove_file(&json);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (text(&out.stdout).to_string(), report)
}

#[test]
fn echo_closed_loop_counts_exactly() {
    let server = echo_server();
    let (out, json) = run_echo(
        &server,
        &[
            "--conns",
            "4",
            "--inflight",
            "3",
            "--messages",
            "50",
            "--text",
            "--size",
            "100",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("verify failures"), "{stdout}");
    assert_eq!(json_field(&json, "sent"), "200");
    assert_eq!(json_field(&json, "received"), "200");
    assert_eq!(json_field(&json, "echoes_in_window"), "200");
    assert_eq!(json_field(&json, "verify_failures"), "0");
    assert_eq!(json_field(&json, "unanswered"), "0");
    assert_eq!(json_field(&json, "closed_clean"), "4");
    // The server is this process: its CPU time was read from /proc.
    assert_ne!(json_field(&json, "server_cpu_us_per_msg"), "null", "{json}");
    server.shutdown();
}

#[test]
fn echo_large_binary_messages_are_verified() {
    // 100 KiB frames span several reads on both sides.
    let server = echo_server();
    let (out, json) = run_echo(
        &server,
        &[
            "--conns",
            "2",
            "--inflight",
            "2",
            "--messages",
            "20",
            "--binary",
            "--size",
            "102400",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(json_field(&json, "received"), "40");
    assert_eq!(json_field(&json, "verify_failures"), "0");
    server.shutdown();
}

#[test]
fn echo_open_loop_counts_exactly() {
    let server = echo_server();
    let (out, json) = run_echo(
        &server,
        &[
            "--conns",
            "5",
            "--rate",
            "2000",
            "--messages",
            "20",
            "--threads",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(json_field(&json, "sent"), "100");
    assert_eq!(json_field(&json, "received"), "100");
    assert_eq!(json_field(&json, "verify_failures"), "0");
    assert_eq!(json_field(&json, "latency_kind"), "\"co_corrected\"");
    server.shutdown();
}

#[test]
fn connect_opens_holds_and_closes() {
    let server = echo_server();
    let url = format!("ws://{}/", server.local_addr());
    let json =
        std::env::temp_dir().join(format!("loadgen-test-{}-connect.json", std::process::id()));
    let pid = std::process::id().to_string();
    let out = loadgen(&[
        "connect",
        "--url",
        &url,
        "--conns",
        "200",
        "--rate",
        "5000",
        "--hold",
        "0.2",
        "--threads",
        "2",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    assert!(
        text(&out.stdout).contains("200 of 200"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(json_field(&report, "opened"), "200");
    assert_eq!(json_field(&report, "held"), "200");
    assert_eq!(json_field(&report, "connect_failures"), "{}");
    assert_eq!(json_field(&report, "closed_clean"), "200");
    assert_ne!(json_field(&report, "server_bytes_per_conn"), "null");
    server.shutdown();
}

#[test]
fn refused_connection_is_a_clear_error() {
    let url = format!("ws://127.0.0.1:{}/", dead_port());
    for scenario in ["echo", "connect"] {
        let out = loadgen(&[scenario, "--url", &url, "--conns", "3"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{scenario}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains("connection refused"), "{scenario}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn non_websocket_server_shows_the_http_status() {
    let addr = http_404_server(8);
    let url = format!("ws://{addr}/");
    let out = loadgen(&["echo", "--url", &url, "--conns", "2", "--messages", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("not a WebSocket endpoint"), "{err}");
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(err.contains("404 Not Found"), "{err}");
}

#[test]
fn wrong_urls_are_clear_errors() {
    for url in [
        "http://127.0.0.1:9001/",
        "127.0.0.1:9001",
        "ws://127.0.0.1:99999/",
        "wss://127.0.0.1/",
    ] {
        let out = loadgen(&["echo", "--url", url, "--messages", "1"]);
        assert_eq!(out.status.code(), Some(1), "{url}");
        let err = text(&out.stderr);
        assert!(err.contains("wrong URL"), "{url}: {err}");
    }
}

#[test]
fn too_many_connections_for_the_files_limit_prints_the_numbers() {
    let out = loadgen(&["connect", "--conns", "100000000"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("100000000 connections need about 100000064 open files"),
        "{err}"
    );
    assert!(err.contains("open-files limit is"), "{err}");
    assert!(err.contains("--procs"), "{err}");
}

#[test]
fn fanout_every_subscriber_receives_every_event() {
    let server = start(Broadcast);
    let url = format!("ws://{}/", server.local_addr());
    let pid = std::process::id().to_string();
    // 2 publishers, 20 events/s in bursts of 2 (one event each every 100 ms) for 0.5 s of
    // warm-up and a 1 s window: exactly 30 events, each to 50 subscribers.
    let (_, report) = run_ok_with_report(
        "fanout",
        &[
            "fanout",
            "--url",
            &url,
            "--subscribers",
            "50",
            "--publishers",
            "2",
            "--rate",
            "20",
            "--burst",
            "2",
            "--size",
            "64",
            "--warmup",
            "0.5",
            "--duration",
            "1",
            "--threads",
            "2",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(json_field(&report, "events_published"), "30");
    assert_eq!(json_field(&report, "subscribers_open"), "50");
    assert_eq!(json_field(&report, "expected"), "1500");
    assert_eq!(json_field(&report, "received"), "1500");
    assert_eq!(json_field(&report, "lost"), "0");
    assert_eq!(json_field(&report, "incomplete_subscribers"), "0");
    assert_eq!(json_field(&report, "out_of_order"), "0");
    assert_eq!(json_field(&report, "malformed"), "0");
    // Each publisher got every event back, counted apart from the deliveries.
    assert_eq!(json_field(&report, "publisher_echoes"), "60");
    // Deliveries in the window: the 20 events published in it (by receipt time, give or
    // take the ones in flight at its edges).
    let in_window: u64 = json_field(&report, "deliveries_in_window").parse().unwrap();
    assert!((900..=1100).contains(&in_window), "{in_window}");
    assert_ne!(json_field(&report, "server_cpu_us_per_delivery"), "null");
    assert_eq!(json_field(&report, "closed_clean"), "52");
    server.shutdown();
}

/// `--procs 3`: three shard processes with their share of the subscribers (the first also
/// has the publisher) and of the source addresses, on one clock; the parent's merged report
/// counts every delivery exactly, as one process would.
#[test]
fn fanout_spread_over_processes_counts_exactly() {
    let server = start(Broadcast);
    let url = format!("ws://{}/", server.local_addr());
    let pid = std::process::id().to_string();
    // 10 events/s for 0.5 s of warm-up and a 1 s window: exactly 15 events to 90 subscribers.
    let (stdout, report) = run_ok_with_report(
        "fanout-procs",
        &[
            "fanout",
            "--url",
            &url,
            "--subscribers",
            "90",
            "--rate",
            "10",
            "--warmup",
            "0.5",
            "--duration",
            "1",
            "--hold",
            "0.2",
            "--procs",
            "3",
            "--source",
            "127.0.0.2",
            "--source",
            "127.0.0.3",
            "--server-pid",
            &pid,
        ],
    );
    assert!(stdout.contains("3 processes"), "{}", stdout);
    assert_eq!(json_field(&report, "connected"), "91");
    assert_eq!(json_field(&report, "events_published"), "15");
    assert_eq!(json_field(&report, "subscribers_open"), "90");
    assert_eq!(json_field(&report, "expected"), "1350");
    assert_eq!(json_field(&report, "received"), "1350");
    assert_eq!(json_field(&report, "lost"), "0");
    assert_eq!(json_field(&report, "out_of_order"), "0");
    assert_eq!(json_field(&report, "publisher_echoes"), "15");
    assert_eq!(json_field(&report, "closed_clean"), "91");
    // Latency is measured across processes on the shared monotonic clock.
    let in_window: u64 = json_field(&report, "deliveries_in_window").parse().unwrap();
    assert!((800..=1000).contains(&in_window), "{in_window}");
    assert_ne!(json_field(&report, "server_bytes_per_conn"), "null");
    assert_ne!(json_field(&report, "kernel_bytes_per_conn"), "null");
    server.shutdown();
}

#[test]
fn connect_spread_over_processes_counts_exactly() {
    let server = echo_server();
    let url = format!("ws://{}/", server.local_addr());
    let (_, report) = run_ok_with_report(
        "connect-procs",
        &[
            "connect", "--url", &url, "--conns", "301", "--hold", "0.2", "--procs", "2",
        ],
    );
    assert_eq!(json_field(&report, "opened"), "301");
    assert_eq!(json_field(&report, "held"), "301");
    assert_eq!(json_field(&report, "connect_failures"), "{}");
    assert_eq!(json_field(&report, "closed_clean"), "301");
    assert_eq!(json_field(&report, "procs"), "2");
    server.shutdown();
}

#[test]
fn fanout_bad_options_are_clear_errors() {
    let out = loadgen(&["fanout", "--size", "8", "--rate", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--size must be at least 24"),
        "{}",
        text(&out.stderr)
    );
    let port = dead_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let out = loadgen(&[
        "fanout",
        "--url",
        &url,
        "--subscribers",
        "3",
        "--duration",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("refused"),
        "{}",
        text(&out.stderr)
    );
}

/// The process that publishes keeps reading until the window ends: a broadcast that reaches
/// its subscribers 8 s after the publish (the server's worker is busy; at 1,000,000
/// subscribers it took 11 s) is counted in every process. Before, the publishing process gave
/// up 3 s after its last publish (plus 3 s of close handshakes), and its share of the
/// subscribers (here 20 of 40; at 1,000,000, 18,868) was counted lost.
#[test]
fn fanout_publishing_process_waits_for_late_deliveries() {
    let server = start(SlowBroadcast {
        delay: std::time::Duration::from_secs(8),
    });
    let url = format!("ws://{}/", server.local_addr());
    // One event at the window's start (0.1 event/s over a 10 s window), 2 processes.
    let (_, report) = run_ok_with_report(
        "fanout-late",
        &[
            "fanout",
            "--url",
            &url,
            "--subscribers",
            "40",
            "--rate",
            "0.1",
            "--warmup",
            "0",
            "--duration",
            "10",
            "--procs",
            "2",
        ],
    );
    assert_eq!(json_field(&report, "events_published"), "1");
    assert_eq!(json_field(&report, "expected"), "40");
    assert_eq!(json_field(&report, "received"), "40");
    assert_eq!(json_field(&report, "lost"), "0");
    server.shutdown();
}
