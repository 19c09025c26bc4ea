//! The `volley` binary as a user runs it: its page, its answers to plain HTTP, SIGTERM, and
//! no file-descriptor leak over 10,000 connect/disconnect cycles.

mod common;

use volley::Backend;

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

fn sigterm_closes_clients_with_1001_and_exits(b: Backend) {
    let backend = if b == Backend::Uring { "uring" } else { "mio" };
    let mut srv = ChildServer::spawn(&["--workers", "2", "--backend", backend]);
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

fn no_fd_leak_over_10000_connect_disconnect_cycles(b: Backend) {
    let backend = if b == Backend::Uring { "uring" } else { "mio" };
    let args = [
        "--workers",
        "2",
        "--handshake-timeout",
        "1",
        "--backend",
        backend,
        "--metrics",
        "127.0.0.1:0",
    ];
    let srv = ChildServer::spawn(&args);
    let maddr = srv.metrics.unwrap();
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
    if b == Backend::Uring {
        // No direct descriptor, provided buffer or operation left behind, read from the
        // server's counters (served on their own address: the scrape uses none of them).
        let t = Instant::now();
        loop {
            let m = http_get(maddr, "/metrics");
            let sum = |name: &str| -> u64 {
                m.lines()
                    .filter(|l| l.starts_with(&format!("volley_{name}{{")))
                    .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                    .sum()
            };
            let got = (
                sum("uring_slots"),
                sum("uring_ops"),
                sum("uring_bufs_held"),
                sum("connections"),
            );
            if got == (0, 0, 0, 0) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "(slots, ops, bufs, conns) = {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

both_backends!(
    no_fd_leak_over_10000_connect_disconnect_cycles,
    sigterm_closes_clients_with_1001_and_exits,
);

/// Sets both open-files limits of the child to `n` before it runs.
fn with_nofile(cmd: &mut std::process::Command, n: u64) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc_rlimit { cur: n, max: n };
            if setrlimit(7 /* RLIMIT_NOFILE */, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[repr(C)]
struct libc_rlimit {
    cur: u64,
    max: u64,
}

extern "C" {
    fn setrlimit(resource: i32, rlim: *const libc_rlimit) -> i32;
}

#[test]
fn uring_serves_3000_connections_with_an_open_files_limit_of_1024() {
    if uring_or_skip("uring_serves_3000_connections_with_an_open_files_limit_of_1024").is_none() {
        return;
    }
    let mut cmd = std::process::Command::new(volley_bin());
    cmd.args([
        "serve",
        "--backend",
        "uring",
        "--max-connections",
        "4000",
        "--addr",
        "127.0.0.1:0",
    ]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    with_nofile(&mut cmd, 1024);
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let mut srv = ChildServer {
        child,
        addr: "0.0.0.0:0".parse().unwrap(),
        metrics: None,
    };
    srv.addr = read_listening(out, false).0.expect("server did not start");
    let addr = srv.addr;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    assert!(
        line.split_whitespace().filter(|w| *w == "1024").count() == 2,
        "{line}"
    );
    let mut conns: Vec<TcpStream> = (0..3000).map(|_| open_lean(addr)).collect();
    // Every one of them is a live WebSocket: each gets its echo.
    let frame = [0x81, 0x82, 0, 0, 0, 0, b'o', b'k'];
    for c in conns.iter_mut() {
        c.write_all(&frame).unwrap();
    }
    for c in conns.iter_mut() {
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b, [0x81, 0x02, b'o', b'k']);
    }
    // The server's own file table stayed small: the sockets are direct descriptors.
    assert!(srv.fd_count() < 100, "server fds: {}", srv.fd_count());
    // One worker per core, whatever the count: 4,000 connections at 921 planned per ring
    // take 5 rings, spread over the cores' workers (issue 13), not 5 workers.
    let workers = std::fs::read_dir(format!("/proc/{}/task", srv.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("volley-u"))
        .count();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(workers, cores, "io_uring worker threads");
}

/// A receive-buffer count past the kernel's limit for a provided-buffer ring (32,768) is a
/// start error naming the limit, on the command line and through `Server::start`, not a
/// panic on a worker thread (issue 13: `u16::next_power_of_two` of 40000 wrapped to 0).
#[test]
fn too_many_uring_buffers_is_a_clear_start_error() {
    let cfg = volley::Config::new("127.0.0.1:0")
        .workers(1)
        .backend(Backend::Uring)
        .uring_buffers(40000, 4096);
    let (tx, _rx) = std::sync::mpsc::channel();
    let rec = Recorder {
        tx: std::sync::Arc::new(std::sync::Mutex::new(tx)),
    };
    let err = volley::Server::start(cfg, rec).expect_err("40000 buffers are refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("32768"), "{err}");
    for arg in ["40000x4096", "65535x4096", "70000x4096"] {
        let out = std::process::Command::new(volley_bin())
            .args(["serve", "--addr", "127.0.0.1:0", "--uring-buffers", arg])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{arg}: {stderr}");
        assert!(stderr.contains("32768"), "{arg}: {stderr}");
        assert!(!stderr.contains("panicked"), "{arg}: {stderr}");
    }
}

/// A second server started on the port of a running one refuses to start ("address in use"),
/// through `Server::start` and on the command line, on both backends: its `SO_REUSEPORT`
/// listeners would otherwise join the first server's, and the kernel would hand each some of
/// the other's connections. The first keeps serving every connection.
fn a_second_server_on_a_busy_port_refuses_to_start(b: Backend) {
    let first = ChildServer::spawn(&["--backend", backend_arg(b), "--workers", "2"]);
    let cfg = volley::Config::new(first.addr.to_string())
        .workers(2)
        .backend(b);
    let (tx, _rx) = std::sync::mpsc::channel();
    let rec = Recorder {
        tx: std::sync::Arc::new(std::sync::Mutex::new(tx)),
    };
    let err = volley::Server::start(cfg, rec).expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    let out = std::process::Command::new(volley_bin())
        .args(["serve", "--backend", backend_arg(b), "--addr"])
        .arg(first.addr.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("address in use"), "{stderr}");
    for i in 0..50 {
        let mut c = RawClient::connect(first.addr, "/");
        c.send_text(&format!("m{i}"));
        assert_eq!(c.recv(), Got::Text(format!("m{i}")));
    }
}

fn backend_arg(b: Backend) -> &'static str {
    if b == Backend::Uring {
        "uring"
    } else {
        "mio"
    }
}

both_backends!(a_second_server_on_a_busy_port_refuses_to_start);
