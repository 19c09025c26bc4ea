//! The report tools of the `loadgen` binary on real reports: two short echo runs against an
//! in-process volley echo server, then `compare`, `plot` and `--plot`. Each test takes well
//! under a few seconds.

use std::path::{Path, PathBuf};
use volley::Server;

mod common;

use common::*;

/// A path in the temp dir unique to this process and `name`.
fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-report-test-{}-{name}", std::process::id()))
}

/// A short closed-loop echo run writing its report to `json` (and its plot to `svg`).
fn echo_run(server: &Server, json: &Path, svg: Option<&Path>) {
    let url = format!("ws://{}/", server.local_addr());
    let mut args = vec![
        "echo",
        "--url",
        &url,
        "--conns",
        "4",
        "--messages",
        "50",
        "--duration",
        "20",
        "--json",
        json.to_str().unwrap(),
    ];
    if let Some(svg) = svg {
        args.extend(["--plot", svg.to_str().unwrap()]);
    }
    let out = loadgen(&args);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The fields of the table line for `key`.
fn row(table: &str, key: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|f| f.first().map(String::as_str) == Some(key))
        .unwrap_or_else(|| panic!("no {key} row in\n{table}"))
}

#[test]
fn two_echo_runs_compare_and_plot() {
    let server = echo_server();
    let (a, b) = (temp("a.json"), temp("b.json"));
    let (a_svg, b_svg) = (temp("a.svg"), temp("b.svg"));
    echo_run(&server, &a, Some(&a_svg));
    echo_run(&server, &b, None);
    server.shutdown();

    // --plot wrote the run's charts.
    let svg = std::fs::read_to_string(&a_svg).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("<polyline"), "no series in {svg}");
    assert!(svg.contains("loadgen echo"));

    let out = loadgen(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}\n{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(row(&table, "figures"), ["figures", "A", "B", "B/A"]);
    assert_eq!(row(&table, "connected"), ["connected", "4", "4", "1.00"]);
    assert_eq!(row(&table, "sent"), ["sent", "200", "200", "1.00"]);
    assert_eq!(row(&table, "conns"), ["conns", "4", "4"]);
    // Latency figures are there, histograms are not.
    let p99 = row(&table, "latency.percentiles.p99");
    assert_eq!(p99.len(), 4, "{p99:?}");
    assert!(p99[3].parse::<f64>().is_ok_and(|r| r > 0.0), "{p99:?}");
    assert!(!table.contains("histogram"), "{table}");

    // `plot` on the saved report.
    let out = loadgen(&[
        "plot",
        b.to_str().unwrap(),
        "--out",
        b_svg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let svg = std::fs::read_to_string(&b_svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    assert!(svg.contains("latency by percentile"));

    for p in [a, b, a_svg, b_svg] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn compare_of_a_missing_file_names_it() {
    let present = temp("present.json");
    std::fs::write(&present, r#"{"scenario": "echo", "connected": 1}"#).unwrap();
    let missing = temp("missing.json");
    let out = loadgen(&[
        "compare",
        present.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&present);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(err.contains("cannot read report"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn compare_of_different_scenarios_warns_and_plot_of_non_json_fails() {
    let (a, b) = (temp("connect.json"), temp("echo.json"));
    std::fs::write(&a, r#"{"scenario": "connect", "closed_clean": 10}"#).unwrap();
    std::fs::write(&b, r#"{"scenario": "echo", "closed_clean": 20}"#).unwrap();
    let out = loadgen(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        row(&text(&out.stdout), "closed_clean"),
        ["closed_clean", "10", "20", "2.00"]
    );

    std::fs::write(&a, "not json").unwrap();
    let svg = temp("never.svg");
    let out = loadgen(&["plot", a.to_str().unwrap(), "--out", svg.to_str().unwrap()]);
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("not valid JSON"), "{err}");
    assert!(err.contains(a.to_str().unwrap()), "{err}");
    assert!(!svg.exists());
}
