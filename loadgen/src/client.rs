//! One client connection on a mio poller: connect, handshake, frames in and out.
//!
//! The protocol work is the core's client role: [`write_client_request`] and
//! [`verify_response`] for the handshake, [`Decoder`] with [`Role::Client`] for the server's
//! frames, [`encode_client_frame`] for ours. Data frames are encoded (and masked) once per
//! payload at start-up ([`Payloads`]) and queued by index, so sending a message copies
//! nothing: the write queue holds references into the pre-encoded frames and is flushed
//! with one vectored write per connection per loop turn. Pings are answered with pongs by
//! the connection itself, so idle connections survive servers that ping.
//!
//! Masking keys: each pre-encoded frame has its own random key, reused for every send of
//! that frame. RFC 6455 asks for a fresh key per frame to defeat cache poisoning through
//! intermediaries; a load generator talking to a server it is measuring does not need that,
//! and re-masking per send would cost the client as much as the server's unmasking.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use volley::proto::deflate::{Deflater, Inflater};
use volley::proto::encode::encode_client_frame;
use volley::proto::handshake::{verify_response, write_client_request, ClientKey};
use volley::proto::{ClientHandshakeError, CloseCode, Decoder, Limits, Message, OpCode, Role};

/// Iovecs per vectored write.
const MAX_IOV: usize = 64;
/// Reads per connection per wake-up before yielding to the others.
const MAX_READS: usize = 16;
/// The longest response head accepted before the handshake is declared broken.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A small, fast pseudo-random generator (xorshift64*), seeded from the OS's hash keys and
/// the clock. Good enough for nonces and masking keys of a load generator; not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded differently on every call.
    pub fn new() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Rng(h.finish() | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// Payloads of one size, each with its masked frame encoded once.
///
/// Message `seq` of a connection carries variant `seq % len()`, so an echo is checked against
/// the exact bytes sent in that position: content, length, type and order.
#[derive(Debug)]
pub struct Payloads {
    /// Text frames (payload is ASCII) or binary.
    pub text: bool,
    /// The payloads, unmasked.
    pub plain: Vec<Vec<u8>>,
    /// The same, as complete masked client frames (shared with the worker pools).
    pub frames: std::sync::Arc<Vec<Vec<u8>>>,
}

impl Payloads {
    /// `variants` distinct payloads of `size` bytes.
    pub fn new(size: usize, text: bool, variants: usize, rng: &mut Rng) -> Payloads {
        let variants = variants.max(1);
        let mut plain = Vec::with_capacity(variants);
        let mut frames = Vec::with_capacity(variants);
        for _ in 0..variants {
            let mut p = vec![0u8; size];
            if text {
                json_like(&mut p, rng.next_u64());
            } else {
                rng.fill(&mut p);
            }
            let mut key = [0u8; 4];
            rng.fill(&mut key);
            let op = if text { OpCode::Text } else { OpCode::Binary };
            let mut f = Vec::new();
            encode_client_frame(op, true, &p, key, &mut f);
            plain.push(p);
            frames.push(f);
        }
        Payloads {
            text,
            plain,
            frames: std::sync::Arc::new(frames),
        }
    }

    /// Replaces the frames with compressed ones (permessage-deflate: RSV1, raw deflate with a
    /// 32 KiB window, no context takeover, so each is compressed once for every connection).
    pub fn compress(&mut self, rng: &mut Rng) {
        let mut d = Deflater::new(6);
        let frames = self
            .plain
            .iter()
            .map(|p| {
                let mut c = Vec::new();
                d.compress(15, p, &mut c);
                let mut key = [0u8; 4];
                rng.fill(&mut key);
                let op = if self.text {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                let mut f = Vec::new();
                encode_client_frame(op, true, &c, key, &mut f);
                f[0] |= 0x40;
                f
            })
            .collect();
        self.frames = std::sync::Arc::new(frames);
    }

    /// The variant message `seq` uses.
    pub fn index(&self, seq: u64) -> usize {
        (seq % self.frames.len() as u64) as usize
    }

    /// Whether `msg` is exactly what message `seq` sent.
    pub fn matches(&self, seq: u64, msg: &Message<'_>) -> bool {
        let want = &self.plain[self.index(seq)];
        match *msg {
            Message::Text(t) => self.text && t.as_bytes() == want.as_slice(),
            Message::Binary(b) => !self.text && b == want.as_slice(),
            _ => false,
        }
    }
}

/// Fills `out` with JSON-like ASCII (records of ids, symbols, prices and quantities drawn
/// from `seed`, padded with spaces): what a real event looks like to a compressor, unlike
/// random bytes. Every byte is ASCII, so it is valid text.
pub fn json_like(out: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    let mut s = String::with_capacity(out.len() + 96);
    s.push('[');
    while s.len() < out.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!(
            "{{\"id\":{},\"sym\":\"SYM{}\",\"bid\":{}.{:02},\"qty\":{},\"side\":\"{}\"}},",
            x % 100_000,
            x % 97,
            100 + x % 900,
            x % 100,
            (x >> 20) % 1000,
            if x & 1 == 0 { "buy" } else { "sell" }
        ));
    }
    let bytes = s.as_bytes();
    out.copy_from_slice(&bytes[..out.len()]);
}

thread_local! {
    /// This thread's inflater for connections that agreed to permessage-deflate (one per
    /// thread: with no context takeover it holds nothing between messages).
    static INFLATER: RefCell<Inflater> = RefCell::new(Inflater::new(0));
    /// Bytes of frames received by this thread's connections (after their handshakes).
    static RX_FRAME_BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Bytes of frames this thread's connections received, after their handshakes: the bytes
/// on the wire that the messages took (compressed or not).
pub fn rx_frame_bytes() -> u64 {
    RX_FRAME_BYTES.with(Cell::get)
}

/// Why a connection failed, as counted in reports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// `ECONNREFUSED`: nothing listens.
    Refused,
    /// No 101 within the handshake timeout (connect or response).
    Timeout,
    /// The server answered with this HTTP status (and status line) instead of 101.
    Http(u16, String),
    /// `ECONNRESET`/`EPIPE`: the server reset the connection.
    Reset,
    /// The server closed the TCP connection without a close frame.
    Eof,
    /// The server sent a close frame we did not ask for (code).
    ClosedByServer(u16),
    /// A response that is not a valid 101 (missing headers, wrong accept key, not HTTP).
    BadHandshake(String),
    /// The server broke the protocol (our decoder's error).
    Protocol(String),
    /// No local port or address left (`EADDRNOTAVAIL`).
    NoLocalPort,
    /// Any other socket error.
    Io(String),
}

impl Failure {
    /// Classifies a socket error.
    pub fn from_io(e: &io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => Failure::Reset,
            io::ErrorKind::TimedOut => Failure::Timeout,
            io::ErrorKind::AddrNotAvailable => Failure::NoLocalPort,
            _ => Failure::Io(e.to_string()),
        }
    }

    /// The label under which this failure is counted.
    pub fn label(&self) -> String {
        match self {
            Failure::Refused => "refused".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Http(s, _) => format!("http {s}"),
            Failure::Reset => "reset".into(),
            Failure::Eof => "closed (no close frame)".into(),
            Failure::ClosedByServer(c) => format!("closed by server ({c})"),
            Failure::BadHandshake(w) => format!("bad handshake: {w}"),
            Failure::Protocol(w) => format!("protocol error: {w}"),
            Failure::NoLocalPort => "no local port".into(),
            Failure::Io(w) => format!("io: {w}"),
        }
    }
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// TCP connect in progress.
    Connecting,
    /// Request sent (or queued); waiting for the 101.
    Handshaking,
    /// Exchanging frames.
    Open,
    /// We sent a close frame; waiting for the server's and its FIN.
    Closing,
    /// Finished: cleanly, or with a [`Failure`].
    Done,
}

/// What a read produced for the scenario.
#[derive(Debug)]
pub enum Event<'a> {
    /// The handshake completed.
    Opened,
    /// A text or binary message from the server.
    Message(Message<'a>),
}

/// A piece of queued output.
#[derive(Debug)]
enum Seg {
    /// A pre-encoded frame, by index into the [`Payloads`] frames.
    Frame(u32),
    /// Bytes of this connection only (request, pong, close).
    Owned(Vec<u8>),
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub stream: mio::net::TcpStream,
    /// Where the connection is.
    pub state: State,
    key: ClientKey,
    mask_seed: u32,
    decoder: Decoder,
    /// We offered permessage-deflate.
    offered_deflate: bool,
    /// The server agreed to permessage-deflate (its messages may be compressed).
    pub deflate: bool,
    /// Response head bytes, then the bytes of an incomplete frame. Usually empty.
    tail: Vec<u8>,
    out: VecDeque<Seg>,
    /// Bytes of the first segment already written.
    /// INVARIANT: less than the first segment's length whenever `out` is not empty, else 0.
    out_off: usize,
    /// Queued for a flush this turn.
    pub dirty: bool,
    /// Nanoseconds (run clock) when the connect started.
    pub started_ns: u64,
    /// Nanoseconds (run clock) when the 101 was verified; `None` while not open yet.
    pub opened_ns: Option<u64>,
    /// Why it ended, if it failed.
    pub failure: Option<Failure>,
}

/// Starts a non-blocking TCP connect to `addr`, from `source` if given: an address alone
/// (the kernel picks the port) or an address and port.
///
/// An explicit port is how large runs avoid the kernel's port search: with tens of thousands
/// of connections from one address to one server, `connect()` scans for a free port under a
/// lock, and the scan grows with the ports in use (measured at 250,000 connections: 65% of
/// the machine's CPU in `__inet_hash_connect`/`__inet_check_established`). See
/// [`SourcePorts`].
///
/// # Errors
/// The socket cannot be created or bound (`EADDRINUSE` for a taken explicit port), or the
/// connect failed at once (for example `ECONNREFUSED` on some kernels, `EADDRNOTAVAIL` when
/// the ports are exhausted).
pub fn connect(addr: SocketAddr, source: Option<SocketAddr>) -> io::Result<mio::net::TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    if let Some(src) = source {
        if src.port() == 0 {
            // Let connect() pick the port for the whole 4-tuple instead of bind() reserving
            // one for the address alone (bind's search is slower still).
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads `one` (an int, as the option takes) for the given
            // length; the descriptor is this socket's.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        } else {
            // A port of an earlier run may still be in TIME_WAIT.
            sock.set_reuse_address(true)?;
        }
        sock.bind(&SockAddr::from(src))?;
    }
    match sock.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(sock.into()))
}

/// Lowest source port loadgen assigns itself.
pub const FIRST_PORT: u16 = 10_000;

/// Explicit source ports for connections from `--source` addresses: every connection of
/// the process takes the next (address, port) pair, round-robin over the addresses, ports
/// counting up from [`FIRST_PORT`] to 65,535 in steps of `lanes` from `lane`, so that shards
/// of a `--procs` run that share an address use disjoint ports. Shared by the process's
/// worker threads. No kernel port search, and about 55,000 ports per address instead of the
/// ephemeral range's 28,000.
#[derive(Debug)]
pub struct SourcePorts {
    sources: Vec<IpAddr>,
    next: std::sync::atomic::AtomicUsize,
    /// The first slot this run takes (random), and the slots of a lane.
    start: usize,
    slots: usize,
    lane: usize,
    lanes: usize,
}

impl SourcePorts {
    /// Ports for `sources`, lane `lane` of `lanes`, starting at a random port of the lane
    /// (and wrapping): a run right after another does not reuse the pairs whose last
    /// connections the server still holds in TIME_WAIT.
    pub fn new(sources: Vec<IpAddr>, lane: usize, lanes: usize) -> SourcePorts {
        let lanes = lanes.max(1);
        let mut r = [0u8; 8];
        Rng::new().fill(&mut r);
        let slots = (usize::from(u16::MAX) + 1 - usize::from(FIRST_PORT)) / lanes;
        SourcePorts {
            next: std::sync::atomic::AtomicUsize::new(0),
            start: (u64::from_le_bytes(r) % slots as u64) as usize,
            slots,
            sources,
            lane: lane % lanes,
            lanes,
        }
    }

    /// Ports one address offers a lane.
    pub fn per_source(&self) -> usize {
        self.slots
    }

    /// The next source address and port; `None` when every port of every address is used.
    pub fn take(&self) -> Option<SocketAddr> {
        if self.sources.is_empty() {
            return None;
        }
        let k = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.sources.len();
        if k / n >= self.slots {
            return None;
        }
        let slot = (self.start + k / n) % self.slots;
        let port = usize::from(FIRST_PORT) + slot * self.lanes + self.lane;
        let port = u16::try_from(port).ok()?;
        Some(SocketAddr::new(self.sources[k % n], port))
    }
}

impl Conn {
    /// A connection whose connect was started with [`connect`], its request already queued.
    pub fn new(
        stream: mio::net::TcpStream,
        host: &str,
        path: &str,
        rng: &mut Rng,
        now_ns: u64,
        offer_deflate: bool,
    ) -> Conn {
        let mut nonce = [0u8; 16];
        rng.fill(&mut nonce);
        let key = ClientKey::from_nonce(nonce);
        let mut req = Vec::with_capacity(256);
        let extra: &[(&str, &str)] = if offer_deflate {
            &[("Sec-WebSocket-Extensions", "permessage-deflate")]
        } else {
            &[]
        };
        write_client_request(&mut req, host, path, &key, extra)
            .expect("the target was validated when the URL was parsed");
        let mut out = VecDeque::new();
        out.push_back(Seg::Owned(req));
        Conn {
            stream,
            state: State::Connecting,
            key,
            mask_seed: rng.next_u64() as u32,
            decoder: Decoder::new(Role::Client, Limits::default()),
            offered_deflate: offer_deflate,
            deflate: false,
            tail: Vec::new(),
            out,
            out_off: 0,
            dirty: false,
            started_ns: now_ns,
            opened_ns: None,
            failure: None,
        }
    }

    /// Whether the connection is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Ends the connection with `f` (kept only if it is the first reason).
    pub fn fail(&mut self, f: Failure) {
        if self.state != State::Done {
            self.state = State::Done;
            self.failure.get_or_insert(f);
            self.out.clear();
            self.out_off = 0;
        }
    }

    /// The connection ended: normally while closing (the server may reset instead of
    /// sending its FIN), with `f` otherwise.
    fn end_or_fail(&mut self, f: Failure) {
        if self.state == State::Closing {
            self.state = State::Done;
            self.out.clear();
            self.out_off = 0;
        } else {
            self.fail(f);
        }
    }

    /// Queues pre-encoded frame `index`.
    pub fn queue_frame(&mut self, index: usize) {
        self.out.push_back(Seg::Frame(index as u32));
    }

    /// Queues bytes of this connection only (a frame encoded for one send).
    pub fn queue_owned(&mut self, bytes: Vec<u8>) {
        self.out.push_back(Seg::Owned(bytes));
    }

    /// Queues a close frame with `code` and moves to [`State::Closing`].
    pub fn start_close(&mut self, code: CloseCode) {
        match self.state {
            State::Open => {
                self.queue_control(OpCode::Close, &code.0.to_be_bytes());
                self.state = State::Closing;
            }
            State::Connecting | State::Handshaking => self.fail(Failure::Eof),
            _ => {}
        }
    }

    fn queue_control(&mut self, op: OpCode, payload: &[u8]) {
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mut f = Vec::with_capacity(6 + payload.len());
        encode_client_frame(op, true, payload, self.mask_seed.to_le_bytes(), &mut f);
        self.out.push_back(Seg::Owned(f));
    }

    /// The socket became writable while connecting: the connect finished, one way or another.
    /// Returns false while it is still in progress.
    pub fn check_connected(&mut self) -> bool {
        if self.state != State::Connecting {
            return true;
        }
        match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => {
                self.fail(Failure::from_io(&e));
                return true;
            }
            Ok(None) => {}
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.state = State::Handshaking;
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => false,
            Err(e) => {
                self.fail(Failure::from_io(&e));
                true
            }
        }
    }

    /// Writes queued output until it is all sent or the socket is full.
    /// `frames` resolves [`Conn::queue_frame`] indices.
    pub fn flush(&mut self, frames: &[Vec<u8>]) {
        if matches!(self.state, State::Connecting | State::Done) {
            return;
        }
        while !self.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, seg) in self.out.iter().take(MAX_IOV).enumerate() {
                let bytes: &[u8] = match seg {
                    Seg::Frame(f) => &frames[*f as usize],
                    Seg::Owned(v) => v,
                };
                iov[i] = IoSlice::new(if i == 0 {
                    &bytes[self.out_off..]
                } else {
                    bytes
                });
                n += 1;
            }
            match self.stream.write_vectored(&iov[..n]) {
                Ok(0) => return self.end_or_fail(Failure::Reset),
                Ok(mut w) => {
                    while w > 0 {
                        let len = match &self.out[0] {
                            Seg::Frame(f) => frames[*f as usize].len(),
                            Seg::Owned(v) => v.len(),
                        } - self.out_off;
                        if w >= len {
                            w -= len;
                            self.out.pop_front();
                            self.out_off = 0;
                        } else {
                            self.out_off += w;
                            w = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.end_or_fail(Failure::from_io(&e)),
            }
        }
    }

    /// Reads what the socket holds (up to a bound) into `rbuf`, runs the handshake and the
    /// decoder over it and hands each event to `on_event` with the time it was read.
    /// Answers pings and close frames itself.
    ///
    /// A read that fills less than `rbuf` normally means the socket is drained (a later
    /// arrival raises a new edge); when the poller reported the peer's FIN (`until_eof`),
    /// no new edge will come, so reading goes on until end of stream.
    ///
    /// Returns true when it stopped at its read bound with data possibly left: call again.
    pub fn on_readable(
        &mut self,
        rbuf: &mut [u8],
        clock: &crate::scenario::Clock,
        until_eof: bool,
        on_event: &mut dyn FnMut(&mut Conn, Event<'_>, u64),
    ) -> bool {
        for _ in 0..MAX_READS {
            if matches!(self.state, State::Connecting | State::Done) {
                return false;
            }
            match self.stream.read(rbuf) {
                Ok(0) => {
                    self.end_or_fail(Failure::Eof);
                    return false;
                }
                Ok(n) => {
                    let now = clock.now_ns();
                    self.on_bytes(&mut rbuf[..n], now, on_event);
                    if n < rbuf.len() && !until_eof {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.end_or_fail(Failure::from_io(&e));
                    return false;
                }
            }
        }
        true
    }

    fn on_bytes(
        &mut self,
        bytes: &mut [u8],
        now: u64,
        on_event: &mut dyn FnMut(&mut Conn, Event<'_>, u64),
    ) {
        if self.state == State::Handshaking {
            self.tail.extend_from_slice(bytes);
            match verify_response(&self.tail, &self.key) {
                Ok(volley::proto::Status::Partial) => {
                    if self.tail.len() > MAX_RESPONSE_HEAD {
                        self.fail(Failure::BadHandshake("response head too large".into()));
                    }
                    return;
                }
                Ok(volley::proto::Status::Complete(n)) => {
                    self.deflate = self.offered_deflate
                        && String::from_utf8_lossy(&self.tail[..n])
                            .to_ascii_lowercase()
                            .contains("\r\nsec-websocket-extensions: permessage-deflate");
                    self.tail.drain(..n);
                    RX_FRAME_BYTES.with(|c| c.set(c.get() + self.tail.len() as u64));
                    self.state = State::Open;
                    self.opened_ns = Some(now);
                    on_event(self, Event::Opened, now);
                }
                Err(ClientHandshakeError::Status(s)) => {
                    let line = status_line(&self.tail);
                    return self.fail(Failure::Http(s, line));
                }
                Err(e) => return self.fail(Failure::BadHandshake(e.to_string())),
            }
            if self.tail.is_empty() || self.is_done() {
                return;
            }
            let mut buf = std::mem::take(&mut self.tail);
            let used = self.frames(&mut buf, now, on_event);
            if used < buf.len() && !self.is_done() {
                buf.drain(..used);
                self.tail = buf;
            }
            return;
        }
        RX_FRAME_BYTES.with(|c| c.set(c.get() + bytes.len() as u64));
        if self.tail.is_empty() {
            let used = self.frames(bytes, now, on_event);
            if used < bytes.len() && !self.is_done() {
                self.tail.extend_from_slice(&bytes[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.tail);
            buf.extend_from_slice(bytes);
            let used = self.frames(&mut buf, now, on_event);
            if used < buf.len() && !self.is_done() {
                buf.drain(..used);
                self.tail = buf;
            }
        }
    }

    /// Decodes frames from `buf`; returns the bytes consumed.
    fn frames(
        &mut self,
        buf: &mut [u8],
        now: u64,
        on_event: &mut dyn FnMut(&mut Conn, Event<'_>, u64),
    ) -> usize {
        let mut pos = 0;
        // The decoder borrows itself and the buffer for the message's life, while the
        // scenario needs `&mut Conn` to queue its answer: decode with a decoder moved out.
        let mut decoder = std::mem::replace(
            &mut self.decoder,
            Decoder::new(Role::Client, Limits::default()),
        );
        loop {
            if self.is_done() {
                break;
            }
            let (d, b) = (&mut decoder, &mut buf[pos..]);
            let step = if self.deflate {
                INFLATER.with(move |i| d.decode_with(b, Some(&mut i.borrow_mut())))
            } else {
                d.decode(b)
            };
            let step = match step {
                Ok(s) => s,
                Err(e) => {
                    self.fail(Failure::Protocol(e.to_string()));
                    pos = buf.len();
                    break;
                }
            };
            pos += step.consumed;
            let Some(msg) = step.message else {
                if step.consumed == 0 {
                    break;
                }
                continue;
            };
            match msg {
                Message::Ping(p) => {
                    if self.state == State::Open {
                        self.queue_control(OpCode::Pong, p);
                    }
                }
                Message::Pong(_) => {}
                Message::Close(frame) => {
                    let code = frame.map_or(CloseCode::NO_STATUS.0, |f| f.code.0);
                    if self.state == State::Closing {
                        // Our close handshake is complete; wait for the server's FIN.
                        continue;
                    }
                    // The server closed first: echo its code, then wait for its FIN.
                    let echo = if code == CloseCode::NO_STATUS.0 {
                        CloseCode::NORMAL
                    } else {
                        CloseCode(code)
                    };
                    self.queue_control(OpCode::Close, &echo.0.to_be_bytes());
                    self.failure.get_or_insert(Failure::ClosedByServer(code));
                    self.state = State::Closing;
                    pos = buf.len();
                    break;
                }
                m @ (Message::Text(_) | Message::Binary(_)) => {
                    if self.state == State::Open || self.state == State::Closing {
                        on_event(self, Event::Message(m), now);
                    }
                }
            }
        }
        self.decoder = decoder;
        pos
    }
}

/// The first line of an HTTP response, for error messages.
fn status_line(buf: &[u8]) -> String {
    let end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len())
        .min(200);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn source_ports_are_distinct_across_lanes_and_run_out_cleanly() {
        let ips: Vec<IpAddr> = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
        let lanes: Vec<SourcePorts> = (0..3)
            .map(|l| SourcePorts::new(ips.clone(), l, 3))
            .collect();
        let mut seen = HashSet::new();
        for p in &lanes {
            let mut n = 0;
            while let Some(a) = p.take() {
                assert!(a.port() >= FIRST_PORT);
                assert!(seen.insert(a), "{a} taken twice");
                n += 1;
            }
            // Every port of the lane on both addresses, then None.
            assert_eq!(n, 2 * p.per_source());
            assert!(p.take().is_none());
        }
        assert!(seen.len() >= 2 * (65_536 - usize::from(FIRST_PORT)) - 6);
    }
}
