//! Python's `websockets` library (installed into `.venv` by `tests/run.sh`, or here on first use)
//! against an in-process volley server.

mod common;

use volley::Backend;

use common::*;
use std::process::Command;

fn python_websockets_client_suite(b: Backend) {
    if opted_out("VOLLEY_SKIP_PYTHON") {
        let name = format!("python_websockets_client_suite::{b:?}").to_lowercase();
        return skip(&name, "VOLLEY_SKIP_PYTHON=1");
    }
    let srv = TestServer::start(TestServer::config(b));
    let out = Command::new(python())
        .arg(workspace_root().join("tests/python/client_suite.py"))
        .arg(srv.url())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python suite failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for check in [
        "echo_sizes",
        "fragmented",
        "ping_pong",
        "close_codes",
        "many_at_once",
    ] {
        assert!(
            stdout.contains(&format!("{check} ok")),
            "{check} did not run:\n{stdout}"
        );
    }
    let closes: Vec<_> = std::iter::from_fn(|| srv.seen.try_recv().ok())
        .filter_map(|s| match s {
            Seen::Close(_, code, reason) => Some((code, reason)),
            _ => None,
        })
        .collect();
    assert!(closes.contains(&(4001, "py bye".to_string())), "{closes:?}");
    assert!(
        closes.contains(&(4000, "as asked".to_string())),
        "{closes:?}"
    );
}

both_backends!(python_websockets_client_suite,);
