//! The capacity-planning features of the `loadgen` binary against in-process volley
//! servers: the report's timeline (echo, fanout, fanout over `--procs`), `soak` and `ramp`.
//! Each test takes a few seconds; none prints a progress line (stderr is not a terminal).

use serde_json::Value;
use std::process::{Command, Output};
use volley::Server;

mod common;

use common::{start, text, Broadcast, Echo};

/// Runs `loadgen` with `args` plus `--url` of `server`, `--server-pid` (this process) and
/// `--json` to a temp file named after `name`; the output and the parsed report.
fn loadgen(server: &Server, name: &str, args: &[&str]) -> (Output, Value) {
    let url = format!("ws://{}/", server.local_addr());
    let json = std::env::temp_dir().join(format!(
        "loadgen-capacity-{}-{name}.json",
        std::process::id()
    ));
    let pid = std::process::id().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--url",
        &url,
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(&all)
        .output()
        .expect("run loadgen");
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    let _ = std::fs::remove_file(&json);
    let report = serde_json::from_str(&text).unwrap_or(Value::Null);
    (out, report)
}

fn check_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // No progress line (nor anything else) when stderr is not a terminal.
    assert_eq!(text(&out.stderr), "", "stderr");
}

/// The report's timeline: (t_s, count, server_rss_kib) per interval, checking every entry
/// has the fields `plot` reads.
fn timeline(report: &Value) -> Vec<(f64, u64, Option<u64>)> {
    let t = report["timeline"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline in {report}"));
    t.iter()
        .map(|e| {
            for k in ["p50_us", "p99_us", "max_us"] {
                assert!(e.get(k).is_some(), "{k} missing in {e}");
            }
            (
                e["t_s"].as_f64().unwrap(),
                e["count"].as_u64().unwrap(),
                e["server_rss_kib"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn soak_echo_reports_a_timeline_that_adds_up() {
    let server = start(Echo { delay_us: 0 });
    let (out, r) = loadgen(
        &server,
        "soak",
        &[
            "soak",
            "echo",
            "--conns",
            "4",
            "--rate",
            "400",
            "--duration",
            "3",
            "--warmup",
            "0.5",
            // This test process is the server: its RSS and p99 are not a server's to judge.
            "--max-rss-growth",
            "1e12",
            "--max-p99-drift",
            "1e6",
        ],
    );
    check_ok(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("loadgen soak echo"), "{stdout}");
    for row in ["p50 drift", "p99 drift", "server RSS drift"] {
        assert!(stdout.contains(row), "{row}: {stdout}");
    }
    let t = timeline(&r);
    assert_eq!(t.len(), 3, "{t:?}");
    assert_eq!(
        t.iter().map(|e| e.0).collect::<Vec<_>>(),
        [1.0, 2.0, 3.0],
        "interval ends"
    );
    let sum: u64 = t.iter().map(|e| e.1).sum();
    assert_eq!(sum, r["echoes_in_window"].as_u64().unwrap(), "{t:?}");
    assert!((1000..=1400).contains(&sum), "{sum}");
    assert!(t.iter().all(|e| e.2.is_some()), "RSS at every edge: {t:?}");
    let soak = &r["soak"];
    assert_eq!(soak["intervals"], 3);
    assert_eq!(soak["edge_intervals"], 1);
    assert!(soak["p99_ratio"].as_f64().is_some(), "{soak}");
    assert!(soak["rss_growth_bytes_per_s"].as_f64().is_some(), "{soak}");
    server.shutdown();
}

#[test]
fn ramp_echo_stops_at_the_first_step_that_breaks() {
    // About 2,000 msg/s at most (0.5 ms per message): 200 and 800 msg/s hold, 3,200 cannot.
    let server = start(Echo { delay_us: 500 });
    let (out, r) = loadgen(
        &server,
        "ramp",
        &[
            "ramp",
            "echo",
            "--conns",
            "4",
            "--rate-start",
            "200",
            "--factor",
            "4",
            "--max-steps",
            "5",
            "--step-duration",
            "1",
            "--warmup",
            "0.3",
            "--slo-p99-us",
            "100000",
        ],
    );
    check_ok(&out);
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "capacity: 800 msg/s at p99 <= 100,000 us (next step 3,200 msg/s broke it: "
        ),
        "{stdout}"
    );
    assert!(last.contains("achieved"), "{last}");
    assert!(stdout.contains("server CPU/msg"), "{stdout}");
    assert_eq!(r["scenario"], "ramp");
    assert_eq!(r["capacity"], 800.0);
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "stops at the first step that broke");
    let held: Vec<bool> = steps.iter().map(|s| s["held"] == true).collect();
    assert_eq!(held, [true, true, false]);
    // Every step carries its full echo report, timeline included.
    assert!(steps[0]["report"]["timeline"].is_array());
    server.shutdown();
}

#[test]
fn echo_and_fanout_reports_carry_a_timeline() {
    let echo = start(Echo { delay_us: 0 });
    // A counted run: the timeline ends at the last echo, not at the 20 s bound.
    let (out, r) = loadgen(
        &echo,
        "echo",
        &[
            "echo",
            "--conns",
            "2",
            "--messages",
            "100",
            "--duration",
            "20",
        ],
    );
    check_ok(&out);
    let t = timeline(&r);
    assert!((1..=3).contains(&t.len()), "{t:?}");
    assert_eq!(t.iter().map(|e| e.1).sum::<u64>(), 200);
    echo.shutdown();

    let bcast = start(Broadcast);
    for procs in ["1", "2"] {
        let (out, r) = loadgen(
            &bcast,
            &format!("fanout-{procs}"),
            &[
                "fanout",
                "--subscribers",
                "20",
                "--rate",
                "20",
                "--warmup",
                "0.3",
                "--duration",
                "2",
                "--procs",
                procs,
            ],
        );
        check_ok(&out);
        let t = timeline(&r);
        assert_eq!(t.len(), 2, "--procs {procs}: {t:?}");
        let sum: u64 = t.iter().map(|e| e.1).sum();
        assert_eq!(
            sum,
            r["deliveries_in_window"].as_u64().unwrap(),
            "--procs {procs}"
        );
        assert!(sum > 0, "--procs {procs}");
        assert!(t.iter().all(|e| e.2.is_some()), "--procs {procs}: {t:?}");
    }
    bcast.shutdown();
}

#[test]
fn ramp_and_soak_bad_options_are_clear_errors() {
    let bin = env!("CARGO_BIN_EXE_loadgen");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "ramp",
                "echo",
                "--rate-start",
                "100",
                "--factor",
                "1",
                "--slo-p99-us",
                "10",
            ],
            "--factor must be more than 1",
        ),
        (
            &[
                "ramp",
                "echo",
                "--rate-start",
                "100",
                "--rate-step",
                "100",
                "--slo-p99-us",
                "10",
                "--duration",
                "5",
            ],
            "instead of --duration",
        ),
        (
            &[
                "ramp",
                "fanout",
                "--rate-start",
                "100",
                "--rate-step",
                "100",
                "--slo-p99-us",
                "0",
            ],
            "--slo-p99-us must be",
        ),
        (&["soak", "echo", "--max-p99-drift", "0"], "--max-p99-drift"),
    ];
    for (args, want) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
