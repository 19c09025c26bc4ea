//! Shared helpers for the runtime integration tests: an in-process server with a recording
//! handler, a raw client built on the protocol core's client role (for fragmentation and
//! protocol violations no polite client would send), and the `volley` binary's path.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use volley::proto::deflate::{Deflater, Inflater};
use volley::proto::encode::encode_client_frame;
use volley::proto::handshake::{verify_response, write_client_request, ClientKey};
use volley::proto::{Decoded, Decoder, Limits, OpCode, Role, Status};
use volley::{CloseCode, Config, ConnId, Ctx, Handler, Message, Reject, Request, Server, Upgrade};

/// What the recording handler saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Open(ConnId),
    Close(ConnId, u16, String),
}

/// Echoes every message and reports opens and closes on a channel.
#[derive(Clone)]
pub struct Recorder {
    pub tx: Arc<Mutex<mpsc::Sender<Seen>>>,
}

impl Handler for Recorder {
    type State = ();
    fn on_upgrade(&mut self, req: &Request<'_>, up: &mut Upgrade) -> Result<(), Reject> {
        if req.path == "/forbidden" {
            return Err(Reject::new(403, "no"));
        }
        if let Some(p) = req.protocols().find(|p| *p == "chat") {
            up.protocol(p);
        }
        Ok(())
    }
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _: &mut ()) {
        let _ = self.tx.lock().unwrap().send(Seen::Open(ctx.id()));
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut (), msg: Message<'_>) {
        if msg == Message::Text("close-me") {
            ctx.close(CloseCode(4000), "as asked");
            return;
        }
        ctx.send(msg);
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, _: (), code: CloseCode, reason: &str) {
        let _ = self
            .tx
            .lock()
            .unwrap()
            .send(Seen::Close(ctx.id(), code.0, reason.to_owned()));
    }
}

/// An in-process server with a [`Recorder`] on port 0.
pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub seen: mpsc::Receiver<Seen>,
}

impl TestServer {
    pub fn start(cfg: Config) -> TestServer {
        let (tx, rx) = mpsc::channel();
        let server = Server::start(
            cfg,
            Recorder {
                tx: Arc::new(Mutex::new(tx)),
            },
        )
        .expect("server starts");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            addr,
            seen: rx,
        }
    }

    pub fn config(backend: volley::Backend) -> Config {
        Config::new("127.0.0.1:0").workers(2).backend(backend)
    }

    pub fn handle(&self) -> volley::Handle {
        self.server.as_ref().unwrap().handle()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The next close the handler saw, waiting up to 10 s.
    pub fn next_close(&self) -> (u16, String) {
        loop {
            match self
                .seen
                .recv_timeout(Duration::from_secs(10))
                .expect("on_close within 10 s")
            {
                Seen::Close(_, code, reason) => return (code, reason),
                Seen::Open(_) => continue,
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// A message as the raw client decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    /// The server closed the TCP connection.
    Eof,
}

/// A client that speaks through the protocol core's client role.
pub struct RawClient {
    pub stream: TcpStream,
    dec: Decoder,
    buf: Vec<u8>,
    pub status: u16,
    pub head: String,
    /// permessage-deflate was agreed (the answer named it): server messages with RSV1 are
    /// inflated, and `send_compressed` may be used.
    pub inflater: Option<Inflater>,
    /// Whether the last data message received was compressed (RSV1 on its first frame).
    pub last_compressed: bool,
}

impl RawClient {
    /// Connects and completes the handshake for `path`.
    pub fn connect(addr: SocketAddr, path: &str) -> RawClient {
        let c = Self::connect_raw(addr, path, &[]);
        assert_eq!(c.status, 101, "handshake failed: {}", c.head);
        c
    }

    /// Connects and sends an upgrade request; does not insist on 101.
    pub fn connect_raw(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> RawClient {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let key = ClientKey::from_nonce(rand_bytes());
        let mut req = Vec::new();
        write_client_request(&mut req, &addr.to_string(), path, &key, extra).unwrap();
        stream.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            let n = stream.read(&mut tmp).expect("read handshake answer");
            assert!(n > 0, "server closed during handshake");
            buf.extend_from_slice(&tmp[..n]);
            if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                let status: u16 = head[9..12].parse().unwrap();
                if status == 101 {
                    assert_eq!(
                        verify_response(&buf, &key),
                        Ok(Status::Complete(end + 4)),
                        "{head}"
                    );
                }
                buf.drain(..end + 4);
                let agreed = head.lines().any(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("sec-websocket-extensions: permessage-deflate")
                });
                return RawClient {
                    inflater: agreed.then(|| Inflater::new(0)),
                    last_compressed: false,
                    stream,
                    dec: Decoder::new(
                        Role::Client,
                        Limits {
                            max_frame: 64 << 20,
                            max_message: 64 << 20,
                        },
                    ),
                    buf,
                    status,
                    head,
                };
            }
        }
    }

    /// Connects offering permessage-deflate with `offer` (the `Sec-WebSocket-Extensions`
    /// value); completes the handshake, whatever the server agreed to.
    pub fn connect_deflate(addr: SocketAddr, offer: &str) -> RawClient {
        let c = Self::connect_raw(addr, "/", &[("Sec-WebSocket-Extensions", offer)]);
        assert_eq!(c.status, 101, "handshake failed: {}", c.head);
        c
    }

    /// The `Sec-WebSocket-Extensions` value of the server's answer, if any.
    pub fn extensions(&self) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| v.trim().to_owned())
        })
    }

    /// Sends a compressed message (RSV1, raw deflate with a 32 KiB window, tail removed),
    /// cut into `pieces` frames.
    pub fn send_compressed(&mut self, op: OpCode, payload: &[u8], pieces: usize) {
        let mut c = Vec::new();
        Deflater::new(6).compress(15, payload, &mut c);
        self.send_rsv1_payload(op, &c, pieces);
    }

    /// Sends `compressed` as a message's payload with RSV1 on its first frame, in `pieces`
    /// frames (whatever it holds: tests send corrupt data and bombs through it).
    pub fn send_rsv1_payload(&mut self, op: OpCode, compressed: &[u8], pieces: usize) {
        let size = compressed.len().div_ceil(pieces.max(1)).max(1);
        let parts: Vec<&[u8]> = if compressed.is_empty() {
            vec![&[][..]]
        } else {
            compressed.chunks(size).collect()
        };
        let mut wire = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let start = wire.len();
            let o = if i == 0 { op } else { OpCode::Continuation };
            encode_client_frame(o, i + 1 == parts.len(), part, rand_bytes::<4>(), &mut wire);
            if i == 0 {
                wire[start] |= 0x40;
            }
        }
        self.send_raw(&wire);
    }

    pub fn send_frame(&mut self, op: OpCode, fin: bool, payload: &[u8]) {
        let mut v = Vec::new();
        encode_client_frame(op, fin, payload, rand_bytes::<4>(), &mut v);
        self.stream.write_all(&v).unwrap();
    }

    /// Writes raw bytes; errors (the server may have closed) are ignored.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    pub fn send_text(&mut self, t: &str) {
        self.send_frame(OpCode::Text, true, t.as_bytes());
    }

    pub fn send_close(&mut self, code: Option<u16>, reason: &str) {
        let mut p = Vec::new();
        if let Some(c) = code {
            p.extend_from_slice(&c.to_be_bytes());
            p.extend_from_slice(reason.as_bytes());
        }
        self.send_frame(OpCode::Close, true, &p);
    }

    /// The next message (or close, or EOF) from the server.
    pub fn recv(&mut self) -> Got {
        self.try_recv().expect("read timed out")
    }

    /// The next message, or `None` if no read brought one within `d`.
    pub fn recv_within(&mut self, d: Duration) -> Option<Got> {
        self.stream.set_read_timeout(Some(d)).unwrap();
        let got = self.try_recv();
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        got
    }

    /// The next message, or `None` when a read times out.
    fn try_recv(&mut self) -> Option<Got> {
        loop {
            let mut pos = 0;
            let mut got = None;
            loop {
                // A data frame that starts a message: note whether it is compressed.
                if let Some(&b0) = self.buf.get(pos).filter(|_| !self.dec.is_assembling()) {
                    if matches!(b0 & 0x0F, 1 | 2) {
                        self.last_compressed = b0 & 0x40 != 0;
                    }
                }
                let step = self
                    .dec
                    .decode_with(&mut self.buf[pos..], self.inflater.as_mut())
                    .expect("server frames are valid");
                pos += step.consumed;
                if let Some(m) = step.message {
                    got = Some(match m {
                        Decoded::Text(t) => Got::Text(t.to_owned()),
                        Decoded::Binary(b) => Got::Binary(b.to_vec()),
                        Decoded::Ping(b) => Got::Ping(b.to_vec()),
                        Decoded::Pong(b) => Got::Pong(b.to_vec()),
                        Decoded::Close(c) => Got::Close(c.map(|c| (c.code.0, c.reason.to_owned()))),
                    });
                    break;
                }
                if step.consumed == 0 {
                    break;
                }
            }
            self.buf.drain(..pos);
            if let Some(g) = got {
                return Some(g);
            }
            let mut tmp = vec![0u8; 256 * 1024];
            match self.stream.read(&mut tmp) {
                Ok(0) => return Some(Got::Eof),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(Got::Eof),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Reads until the server's close frame; returns its code (None: no status).
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv() {
                Got::Close(c) => return c.map(|c| c.0),
                Got::Eof => panic!("EOF before a close frame"),
                _ => {}
            }
        }
    }

    /// After the close handshake the server closes the TCP connection, promptly (well
    /// before any close timeout).
    pub fn expect_eof(&mut self) {
        self.stream
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        loop {
            match self.recv() {
                Got::Eof => return,
                Got::Close(_) => {}
                other => panic!("expected EOF, got {other:?}"),
            }
        }
    }
}

pub fn rand_bytes<const N: usize>() -> [u8; N] {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(chunk.as_ptr() as u64);
        let v = h.finish().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    out
}

/// Path of the `volley` binary built next to this test (same profile).
pub fn volley_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("volley");
    assert!(
        bin.exists(),
        "{} not built; run `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A `volley` server in a child process, killed on drop.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
}

impl ChildServer {
    /// Starts `volley serve` on port 0 with `args` and learns its address from the line the server prints once every worker accepts.
    /// A port picked by the test and handed to the server would not do: tests run in parallel,
    /// the kernel may hand the same free port to two of them, and two servers bound with
    /// `SO_REUSEPORT` would share it, each getting some of the other's connections.
    pub fn spawn(args: &[&str]) -> ChildServer {
        let mut cmd = std::process::Command::new(volley_bin());
        cmd.args(["serve", "--addr", "127.0.0.1:0"]).args(args);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn volley");
        let out = child.stdout.take().unwrap();
        // Owned from here: killed and reaped on drop, whatever happens below.
        let mut server = ChildServer {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            metrics: None,
        };
        let (addr, metrics) = read_listening(out, args.contains(&"--metrics"));
        server.addr = addr.unwrap_or_else(|| {
            panic!("volley did not print its address (exited, or not within 30 s): {args:?}")
        });
        server.metrics = metrics;
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the child, from /proc.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a `volley serve` child's stdout until it says where it listens (and, with
/// `metrics`, where it serves `/metrics`), for at most 30 s; the rest of its output is
/// drained by a thread, so the server never writes into a closed pipe. `None` for what it
/// did not print (it exited, or took too long).
pub fn read_listening(
    out: std::process::ChildStdout,
    metrics: bool,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    use std::io::BufRead;
    // Read on a thread, so that a server that neither prints nor exits fails the test after
    // a while instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(out);
        let (mut addr, mut maddr) = (None, None);
        let mut line = String::new();
        while addr.is_none() || (metrics && maddr.is_none()) {
            line.clear();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let after = |prefix: &str| -> Option<SocketAddr> {
                let rest = line.strip_prefix(prefix)?;
                rest.split([' ', '/']).next()?.parse().ok()
            };
            if let Some(a) = after("volley listening on ws://") {
                addr = Some(a);
            } else if let Some(a) = after("metrics on http://") {
                maddr = Some(a);
            }
        }
        let _ = tx.send((addr, maddr));
        let _ = std::io::copy(&mut lines, &mut std::io::sink());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or((None, None))
}

/// A free port on 127.0.0.1 at the moment of the call. Only for servers that bind without
/// `SO_REUSEPORT` (a second bind of the port then fails loudly rather than sharing it).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Opens a bare WebSocket connection (handshake through stack buffers, no heap).
pub fn open_lean(addr: SocketAddr) -> TcpStream {
    finish_lean_handshake(TcpStream::connect(addr).expect("connect"))
}

/// [`open_lean`] with `extra` header lines (each ending in CRLF) in the request (this one
/// formats the request on the heap).
pub fn open_lean_with(addr: SocketAddr, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    finish_lean(s)
}

/// Sends the handshake of [`open_lean`] on a socket the caller connected (with its own
/// options) and reads the 101.
pub fn finish_lean_handshake(mut s: TcpStream) -> TcpStream {
    send_lean_request(&mut s);
    finish_lean(s)
}

/// Connects and sends [`open_lean`]'s request, without reading the answer.
pub fn open_unanswered(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    send_lean_request(&mut s);
    s
}

/// Writes the handshake request of a lean connection (a fixed key, no heap).
fn send_lean_request(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(req).unwrap();
}

/// Text messages as the bytes of one client write (each frame masked, as a client's are):
/// the server gets them in one read.
pub fn masked_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for t in texts {
        encode_client_frame(OpCode::Text, true, t.as_bytes(), rand_bytes(), &mut out);
    }
    out
}

/// Reads a lean connection's 101 through a stack buffer.
fn finish_lean(mut s: TcpStream) -> TcpStream {
    let mut buf = [0u8; 512];
    let mut got = 0;
    while !buf[..got].ends_with(b"\r\n\r\n") {
        let n = s.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "closed during handshake");
        got += n;
    }
    assert!(buf.starts_with(b"HTTP/1.1 101 "));
    s
}

/// The body of a test binary's ignored `hold_connections` test: opens `HOLD_N` connections
/// to `HOLD_ADDR`, prints `ready`, and holds them until its standard input closes (or 120 s).
pub fn hold_connections_main() {
    let Ok(addr) = std::env::var("HOLD_ADDR") else {
        return;
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let n: usize = std::env::var("HOLD_N").unwrap().parse().unwrap();
    let deflate = std::env::var_os("HOLD_DEFLATE").is_some();
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| {
            if deflate {
                open_lean_with(addr, "Sec-WebSocket-Extensions: permessage-deflate\r\n")
            } else {
                open_lean(addr)
            }
        })
        .collect();
    println!("ready {}", conns.len());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = std::io::stdin().read(&mut b);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(120));
    drop(conns);
}

/// Holds `n` connections to `addr` in a child process (this test binary re-run with its
/// ignored `hold_connections` test), so the server's process keeps its file table for its
/// own sockets. Returns once they are all open; drop the child's stdin to release them.
pub fn spawn_holder(addr: SocketAddr, n: usize) -> std::process::Child {
    spawn_holder_with(addr, n, false)
}

/// [`spawn_holder`]; with `deflate`, every connection offers permessage-deflate.
pub fn spawn_holder_with(addr: SocketAddr, n: usize, deflate: bool) -> std::process::Child {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    if deflate {
        cmd.env("HOLD_DEFLATE", "1");
    }
    let mut child = cmd
        .args([
            "--ignored",
            "--exact",
            "hold_connections",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HOLD_ADDR", addr.to_string())
        .env("HOLD_N", n.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn holder");
    let out = child.stdout.take().unwrap();
    for line in std::io::BufReader::new(out).lines() {
        let line = line.unwrap();
        if line.contains("ready ") {
            return child;
        }
    }
    let status = child.wait();
    panic!("holder exited before opening its connections: {status:?}");
}

/// The io_uring backend for the `uring` half of a test, or `None` to skip it. Where io_uring
/// is unavailable the test fails with the reason, unless `VOLLEY_SKIP_URING=1` says to skip
/// it (then the reason is printed): the uring half never passes silently.
pub fn uring_or_skip(test: &str) -> Option<volley::Backend> {
    match volley::Backend::uring_available() {
        Ok(()) => Some(volley::Backend::Uring),
        Err(why) if opted_out("VOLLEY_SKIP_URING") => {
            skip(
                &format!("{test}::uring"),
                &format!("io_uring unavailable ({why}), VOLLEY_SKIP_URING=1"),
            );
            None
        }
        Err(why) => {
            panic!("io_uring unavailable: {why}; set VOLLEY_SKIP_URING=1 to skip the io_uring half")
        }
    }
}

/// Runs each named `fn(Backend)` as two tests, `name::mio` and `name::uring`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn mio() {
                super::$name(volley::Backend::Mio)
            }
            #[test]
            fn uring() {
                if let Some(b) = super::common::uring_or_skip(stringify!($name)) {
                    super::$name(b)
                }
            }
        }
    )*};
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Records that a test was skipped and why: printed, and appended to `$VOLLEY_SKIP_LOG` (one
/// line per test) when it is set, so that `tests/run.sh` can list the skipped tests.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    if let Ok(path) = std::env::var("VOLLEY_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// Whether the opt-out variable `var` is set to 1.
pub fn opted_out(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Runs one-time set-up under an exclusive file lock in the workspace root, so that two
/// tests (or two test binaries) never build the same thing at once: the second one waits and
/// then finds it done. `tests/run.sh` does the same set-up before any test runs.
pub fn with_setup_lock<T>(f: impl FnOnce() -> T) -> T {
    let dir = workspace_root().join("target");
    std::fs::create_dir_all(&dir).expect("create target/");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".volley-setup.lock"))
        .expect("open the set-up lock file");
    lock.lock().expect("take the set-up lock");
    let out = f();
    drop(lock); // closing the file releases the lock
    out
}

/// The venv's python with `websockets`; creates the venv (under the set-up lock) if missing.
pub fn python() -> PathBuf {
    let root = workspace_root();
    let py = root.join(".venv/bin/python");
    let has_ws = |py: &PathBuf| {
        std::process::Command::new(py)
            .args(["-c", "import websockets"])
            .status()
            .is_ok_and(|s| s.success())
    };
    with_setup_lock(|| {
        if py.exists() && has_ws(&py) {
            return;
        }
        let venv = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(root.join(".venv"))
            .status();
        assert!(
            venv.is_ok_and(|s| s.success()),
            "python3 -m venv failed: install python3-venv (tests/run.sh does), or set VOLLEY_SKIP_PYTHON=1"
        );
        let pip = std::process::Command::new(root.join(".venv/bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(root.join("tests/python/requirements.txt"))
            .status();
        assert!(
            pip.is_ok_and(|s| s.success()),
            "pip install of tests/python/requirements.txt failed"
        );
        assert!(has_ws(&py));
    });
    py
}
