//! A real browser: headless Chromium (Debian's `chromium`, installed by `tests/run.sh`) loads the
//! binary's page, whose script connects back with the browser's WebSocket API, types two
//! messages and must show their echoes (`tests/browser/page_echo.py`, over the DevTools
//! protocol). The server runs with `--deflate`: the page's socket must report
//! permessage-deflate in `ws.extensions`, and the server's counters must show messages
//! inflated and deflated. Where Chromium is missing the test fails, unless `VOLLEY_SKIP_BROWSER=1`
//! (`tests/run.sh` installs it).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;
use volley::Backend;

fn browser_page_echo(b: Backend) {
    let name = format!("browser_page_echo::{b:?}").to_lowercase();
    if opted_out("VOLLEY_SKIP_BROWSER") {
        return skip(&name, "VOLLEY_SKIP_BROWSER=1");
    }
    let have_chromium = ["chromium", "chromium-browser"].iter().any(|c| {
        Command::new("which")
            .arg(c)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        have_chromium,
        "chromium is not installed: tests/run.sh installs it (apt-get install chromium), or set VOLLEY_SKIP_BROWSER=1"
    );
    let backend = if b == Backend::Uring { "uring" } else { "mio" };
    let srv = ChildServer::spawn(&[
        "--backend",
        backend,
        "--deflate",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = srv.metrics.unwrap().to_string();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let shot = std::env::temp_dir().join(format!("volley-page-{backend}.png"));
    let out = Command::new(python())
        .arg(root.join("tests/browser/page_echo.py"))
        .arg(format!("http://{}/", srv.addr))
        .arg(&shot)
        .output()
        .expect("run the browser driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(stdout.contains("got its echoes"));
    // Compressed messages went both ways: the server inflated Chromium's and deflated its
    // echo (the page showed the echo, so Chromium inflated it).
    let text = get_metrics(&metrics);
    for counter in [
        "volley_messages_inflated_total",
        "volley_messages_deflated_total",
    ] {
        let n: u64 = text
            .lines()
            .filter(|l| l.starts_with(counter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(n >= 1, "{counter} is {n}:\n{text}");
    }
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot"
    );
}

/// The body of `GET /metrics` on `addr`.
fn get_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

both_backends!(browser_page_echo);
