//! The `volley` binary as a user runs it: its page, its answers to plain HTTP, SIGTERM, and
//! no file-descriptor leak over 10,000 connect/disconnect cycles.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn binary_serves_its_page_and_answers_plain_http() {
    let srv = ChildServer::spawn(&["--workers", "1"]);
    let page = http_get(srv.addr, "/");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/html"));
    assert!(
        page.contains("new WebSocket(url)"),
        "the page connects back with the WebSocket API"
    );
    assert!(page.contains("<b id=\"mode\">echo</b>"));
    assert!(http_get(srv.addr, "/nope").starts_with("HTTP/1.1 404 "));
    let mut c = RawClient::connect(srv.addr, "/");
    c.send_text("through the binary");
    assert_eq!(c.recv(), Got::Text("through the binary".into()));
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits() {
    let mut srv = ChildServer::spawn(&["--workers", "2"]);
    let mut clients: Vec<RawClient> = (0..20).map(|_| RawClient::connect(srv.addr, "/")).collect();
    let t = Instant::now();
    // SAFETY-free: kill(1) sends SIGTERM.
    let st = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(srv.pid().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    for c in clients.iter_mut() {
        assert_eq!(c.expect_close(), Some(1001));
        c.send_close(Some(1001), "");
        c.expect_eof();
    }
    loop {
        if let Some(status) = srv.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One connect/disconnect cycle of kind `i % 10`.
fn cycle(addr: std::net::SocketAddr, i: usize) {
    match i % 10 {
        // Abrupt: connect and drop, no bytes.
        0 | 1 => drop(TcpStream::connect(addr).unwrap()),
        // Abrupt: part of a request head, then drop.
        2 => {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
        }
        // Abrupt: handshake done, then drop without a close frame (sometimes with RST).
        3..=5 => {
            let c = RawClient::connect(addr, "/");
            if i.is_multiple_of(2) {
                let _ = socket_linger_zero(&c.stream);
            }
        }
        // A plain HTTP request.
        6 => {
            let _ = http_get(addr, "/");
        }
        // Graceful: message, close handshake, EOF.
        _ => {
            let mut c = RawClient::connect(addr, "/");
            c.send_text("x");
            assert_eq!(c.recv(), Got::Text("x".into()));
            c.send_close(Some(1000), "");
            assert_eq!(c.expect_close(), Some(1000));
            c.expect_eof();
        }
    }
}

/// SO_LINGER 0: closing sends RST instead of FIN.
fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = [1i32, 0i32]; // struct linger { l_onoff = 1, l_linger = 0 }
    let r = unsafe_setsockopt(s.as_raw_fd(), &l);
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[allow(unsafe_code)]
fn unsafe_setsockopt(fd: i32, l: &[i32; 2]) -> i32 {
    extern "C" {
        fn setsockopt(
            fd: i32,
            level: i32,
            name: i32,
            val: *const std::ffi::c_void,
            len: u32,
        ) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    // SAFETY: `l` is a valid `struct linger` (two ints) for the duration of the call.
    unsafe { setsockopt(fd, SOL_SOCKET, SO_LINGER, l.as_ptr().cast(), 8) }
}

#[test]
fn no_fd_leak_over_10000_connect_disconnect_cycles() {
    let srv = ChildServer::spawn(&["--workers", "2", "--handshake-timeout", "1"]);
    // Warm up, then take the baseline with no client connected.
    cycle(srv.addr, 9);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = srv.fd_count();
    assert!(baseline > 0);
    let addr = srv.addr;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..2500 {
                    cycle(addr, i * 4 + t);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Partial heads wait out the 1 s handshake timeout; lingering closes their close timeout.
    let t = Instant::now();
    let mut now = srv.fd_count();
    while now != baseline && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
        now = srv.fd_count();
    }
    assert_eq!(
        now, baseline,
        "server fds: {baseline} before, {now} after 10,000 cycles"
    );
}
