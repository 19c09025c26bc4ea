//! The `volley` binary's command line. Being an integration test of the engine package, this
//! also makes `cargo test --workspace` build the binary that the `tests/` crate drives.

use std::process::Command;

fn volley() -> Command {
    Command::new(env!("CARGO_BIN_EXE_volley"))
}

#[test]
fn help_lists_the_serve_options_and_modes() {
    let out = volley().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--addr",
        "--workers",
        "--mode",
        "--backend",
        "--max-connections",
        "--write-budget",
    ] {
        assert!(help.contains(opt), "{opt} missing from:\n{help}");
    }
    for mode in ["echo", "broadcast", "notify", "pubsub"] {
        assert!(help.contains(mode), "mode {mode} missing");
    }
}

#[test]
fn an_address_that_cannot_be_bound_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // Without SO_REUSEPORT on the first socket, the port cannot be shared.
    let out = volley()
        .args(["serve", "--addr", &addr, "--workers", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    let out = volley()
        .args(["serve", "--addr", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unknown_modes_are_refused_by_the_parser() {
    let out = volley()
        .args(["serve", "--mode", "telepathy"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("telepathy"));
}
