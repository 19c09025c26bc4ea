//! The NATS implementation of [`Broker`]: one TCP connection per process speaking the core
//! NATS client protocol (`CONNECT`, `PUB`, `SUB`, `UNSUB`, `MSG`, `PING`/`PONG`), on two
//! threads of its own: the link thread connects, writes and reconnects; a reader thread per
//! connection parses what the server sends and hands each message's payload to the cluster
//! router, in the order the server sent them (one stream for every subscription, so events
//! from one publisher keep their order across subjects).
//!
//! The protocol parser ([`Parser`]) is sans-IO: bytes in, operations out, with bounds on the
//! control line and on payloads (a payload over the bound is skipped, not buffered).
//!
//! While the connection is down, publishes are refused at once (counted as dropped by the
//! caller); the link tries the configured servers in turn, with a growing pause (50 ms to
//! 2 s), and on reconnecting subscribes again to every subject that still has interest.

use super::{Broker, ClusterStats};
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest control line accepted from the server (`INFO` lines can be a few KiB).
const MAX_LINE: usize = 64 * 1024;
/// How often the link pings the server; two unanswered pings mean the link is dead.
const PING_EVERY: Duration = Duration::from_secs(2);
/// How long one write to the server may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect (and first `INFO`) timeout per server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Info(String),
    Msg {
        subject: String,
        payload: Vec<u8>,
    },
    /// A message whose payload was over the bound: skipped.
    Oversized {
        subject: String,
        len: usize,
    },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Why the server's stream cannot be parsed (the connection is dropped and made anew).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    LineTooLong,
    Malformed(String),
}

/// The sans-IO parser of the server's side of the protocol.
#[derive(Debug)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    pos: usize,
    max_payload: usize,
    /// Bytes (payload and CRLF) of an oversized message still to be skipped.
    skip: usize,
}

impl Parser {
    pub(crate) fn new(max_payload: usize) -> Parser {
        Parser {
            buf: Vec::new(),
            pos: 0,
            max_payload,
            skip: 0,
        }
    }

    /// Adds received bytes.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete operation, `Ok(None)` if more bytes are needed.
    pub(crate) fn next(&mut self) -> Result<Option<Op>, ParseError> {
        if self.skip > 0 {
            return Ok(None);
        }
        let rest = &self.buf[self.pos..];
        let Some(eol) = memchr::memmem::find(rest, b"\r\n") else {
            if rest.len() > MAX_LINE {
                return Err(ParseError::LineTooLong);
            }
            return Ok(None);
        };
        if eol > MAX_LINE {
            return Err(ParseError::LineTooLong);
        }
        let line = String::from_utf8_lossy(&rest[..eol]).into_owned();
        let after = eol + 2;
        let (verb, args) = match line.split_once([' ', '\t']) {
            Some((v, a)) => (v, a.trim()),
            None => (line.as_str(), ""),
        };
        let op = match verb.to_ascii_uppercase().as_str() {
            "MSG" | "HMSG" => {
                let hmsg = verb.eq_ignore_ascii_case("HMSG");
                let parts: Vec<&str> = args.split_ascii_whitespace().collect();
                // MSG subject sid [reply] size; HMSG subject sid [reply] hdr_size total_size
                let (need, subject) = match parts.first() {
                    Some(s) => (if hmsg { 4 } else { 3 }, s.to_string()),
                    None => return Err(ParseError::Malformed(line)),
                };
                if parts.len() < need || parts.len() > need + 1 {
                    return Err(ParseError::Malformed(line));
                }
                let num = |s: &str| s.parse::<usize>().ok();
                let total = parts.last().and_then(|s| num(s));
                let hdr = if hmsg {
                    parts.get(parts.len() - 2).and_then(|s| num(s))
                } else {
                    Some(0)
                };
                let (Some(total), Some(hdr)) = (total, hdr) else {
                    return Err(ParseError::Malformed(line));
                };
                if hdr > total {
                    return Err(ParseError::Malformed(line));
                }
                if total > self.max_payload {
                    // Skip the payload and its CRLF without buffering it.
                    let have = rest.len() - after;
                    let want = total + 2;
                    self.pos = self.buf.len();
                    if have >= want {
                        self.pos = self.buf.len() - (have - want);
                    } else {
                        self.skip = want - have;
                    }
                    return Ok(Some(Op::Oversized {
                        subject,
                        len: total,
                    }));
                }
                if rest.len() < after + total + 2 {
                    return Ok(None);
                }
                if &rest[after + total..after + total + 2] != b"\r\n" {
                    return Err(ParseError::Malformed(line));
                }
                let payload = rest[after + hdr..after + total].to_vec();
                self.pos += after + total + 2;
                return Ok(Some(Op::Msg { subject, payload }));
            }
            "PING" => Op::Ping,
            "PONG" => Op::Pong,
            "+OK" => Op::Ok,
            "-ERR" => Op::Err(args.to_string()),
            "INFO" => Op::Info(args.to_string()),
            _ => return Err(ParseError::Malformed(line)),
        };
        self.pos += after;
        Ok(Some(op))
    }
}

/// `max_payload` from an `INFO` line's JSON (the default 1 MiB if absent).
fn info_max_payload(info: &str) -> usize {
    let Some(i) = info.find("\"max_payload\":") else {
        return 1 << 20;
    };
    let digits: String = info[i + 14..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap_or(1 << 20)
}

/// `nats://host:port` (or `host:port`, or `host`) as `host:port`.
pub(crate) fn server_addr(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    if url.contains("://") && !url.starts_with("nats://") {
        return Err(format!(
            "{url}: only nats:// URLs are supported (no TLS, no websocket)"
        ));
    }
    if rest.contains('@') {
        return Err(format!("{url}: credentials in the URL are not supported"));
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok(
        if rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            rest.to_string()
        } else {
            format!("{rest}:4222")
        },
    )
}

/// Connects to the first server of `addrs` (from `start`) that answers with `INFO`.
pub(crate) fn connect_any(addrs: &[String], start: usize) -> io::Result<(TcpStream, usize, usize)> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no NATS server configured");
    for i in 0..addrs.len() {
        let idx = (start + i) % addrs.len();
        match connect_one(&addrs[idx]) {
            Ok((s, max)) => return Ok((s, idx, max)),
            Err(e) => last = io::Error::new(e.kind(), format!("{}: {e}", addrs[idx])),
        }
    }
    Err(last)
}

fn connect_one(addr: &str) -> io::Result<(TcpStream, usize)> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut p = Parser::new(0);
    let mut buf = [0u8; 4096];
    let max = loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before INFO",
            ));
        }
        p.feed(&buf[..n]);
        match p.next() {
            Ok(Some(Op::Info(i))) => break info_max_payload(&i),
            Ok(Some(other)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a NATS server: {other:?}"),
                ))
            }
            Ok(None) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a NATS server: {e:?}"),
                ))
            }
        }
    };
    s.set_read_timeout(None)?;
    Ok((s, max))
}

/// What the link thread writes next.
#[derive(Debug, Default)]
struct Pending {
    /// Messages to publish: (subjects, payload); every subject gets the same payload.
    out: VecDeque<(Vec<String>, Arc<[u8]>)>,
    out_bytes: usize,
    /// Subjects whose interest changed since the link last looked: the latest wish wins.
    changed: HashMap<Box<str>, bool>,
    pong_due: bool,
    /// The reader saw the connection end.
    down: bool,
}

#[derive(Debug)]
struct Inner {
    addrs: Vec<String>,
    name: String,
    pending: Mutex<Pending>,
    cv: Condvar,
    up: AtomicBool,
    stop: AtomicBool,
    reconnects: AtomicU64,
    server_max_payload: AtomicUsize,
    pings_out: AtomicU64,
    /// Most messages and bytes queued for the link thread; past them publishes are dropped.
    max_queue: (usize, usize),
    /// Largest broker message read (larger ones are skipped and counted).
    max_in: usize,
    stats: Arc<ClusterStats>,
}

/// Hands each received payload to the cluster router.
pub(crate) type Inbound = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The NATS link of a process.
pub(crate) struct NatsLink {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for NatsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLink")
            .field("addrs", &self.inner.addrs)
            .finish_non_exhaustive()
    }
}

/// Settings of a link.
#[derive(Debug)]
pub(crate) struct LinkConfig {
    pub(crate) addrs: Vec<String>,
    pub(crate) name: String,
    pub(crate) max_queue: (usize, usize),
    pub(crate) max_in: usize,
    /// Subjects subscribed from the start (and for ever).
    pub(crate) fixed: Vec<String>,
}

impl NatsLink {
    /// Starts the link. `first` is an already made connection (from [`connect_any`]) or
    /// `None` to connect in the background.
    pub(crate) fn start(
        cfg: LinkConfig,
        first: Option<(TcpStream, usize, usize)>,
        stats: Arc<ClusterStats>,
        inbound: Inbound,
    ) -> io::Result<NatsLink> {
        let mut pending = Pending::default();
        for s in &cfg.fixed {
            pending.changed.insert(s.as_str().into(), true);
        }
        let inner = Arc::new(Inner {
            addrs: cfg.addrs,
            name: cfg.name,
            pending: Mutex::new(pending),
            cv: Condvar::new(),
            up: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            server_max_payload: AtomicUsize::new(1 << 20),
            pings_out: AtomicU64::new(0),
            max_queue: cfg.max_queue,
            max_in: cfg.max_in,
            stats,
        });
        let i2 = inner.clone();
        let inbound = Arc::new(inbound);
        let thread = std::thread::Builder::new()
            .name("volley-nats".into())
            .spawn(move || run(i2, first, inbound))?;
        Ok(NatsLink {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Broker for NatsLink {
    fn publish(&self, subjects: Vec<String>, payload: Vec<u8>) -> bool {
        if !self.inner.up.load(Ordering::Acquire) {
            return false;
        }
        if payload.len() > self.inner.server_max_payload.load(Ordering::Relaxed) {
            return false;
        }
        let mut p = self.lock();
        let (max_n, max_b) = self.inner.max_queue;
        if p.out.len() >= max_n || p.out_bytes + payload.len() > max_b {
            return false;
        }
        p.out_bytes += payload.len();
        p.out.push_back((subjects, payload.into()));
        drop(p);
        self.inner.cv.notify_one();
        true
    }

    fn interest(&self, subject: &str, on: bool) {
        self.lock().changed.insert(subject.into(), on);
        self.inner.cv.notify_one();
    }

    fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.cv.notify_all();
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// The link thread: connect, run until the connection ends, reconnect, until stopped.
fn run(inner: Arc<Inner>, mut first: Option<(TcpStream, usize, usize)>, inbound: Arc<Inbound>) {
    // Subjects subscribed on the broker, with their sid (kept across reconnects).
    let mut subs: HashMap<Box<str>, u64> = HashMap::new();
    let mut next_sid = 1u64;
    let mut next_server = 0usize;
    let mut pause = Duration::from_millis(50);
    let mut connected_once = false;
    while !inner.stop.load(Ordering::Acquire) {
        let conn = match first.take() {
            Some(c) => Ok(c),
            None => connect_any(&inner.addrs, next_server),
        };
        let (stream, idx, max_payload) = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("NATS connect failed: {e}");
                wait_stop(&inner, pause);
                pause = (pause * 2).min(Duration::from_secs(2));
                next_server += 1;
                continue;
            }
        };
        pause = Duration::from_millis(50);
        inner
            .server_max_payload
            .store(max_payload, Ordering::Relaxed);
        if connected_once {
            inner.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        connected_once = true;
        tracing::info!(server = %inner.addrs[idx], "cluster link up");
        match session(&inner, stream, &mut subs, &mut next_sid, &inbound) {
            Ok(()) => {}
            Err(e) => tracing::warn!(server = %inner.addrs[idx], "cluster link down: {e}"),
        }
        // The server that failed is tried last next time.
        next_server = idx + 1;
    }
}

fn wait_stop(inner: &Inner, d: Duration) {
    let g = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
    let _ = inner
        .cv
        .wait_timeout_while(g, d, |_| !inner.stop.load(Ordering::Acquire));
}

/// One connection's life: subscribe, then write what comes until it ends or the link stops.
fn session(
    inner: &Arc<Inner>,
    stream: TcpStream,
    subs: &mut HashMap<Box<str>, u64>,
    next_sid: &mut u64,
    inbound: &Arc<Inbound>,
) -> io::Result<()> {
    // A server that stops reading (stopped, or its host gone) must not hold the writer for
    // ever: past this the write fails and the link is made anew.
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let read_half = stream.try_clone()?;
    let mut w = BufWriter::with_capacity(64 * 1024, stream.try_clone()?);
    write!(
        w,
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false,\"headers\":false,\
         \"protocol\":1,\"lang\":\"rust\",\"version\":\"{}\",\"name\":\"{}\"}}\r\n",
        env!("CARGO_PKG_VERSION"),
        inner.name
    )?;
    for (subject, sid) in subs.iter() {
        write!(w, "SUB {subject} {sid}\r\n")?;
    }
    w.write_all(b"PING\r\n")?;
    w.flush()?;
    {
        let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.down = false;
        p.pong_due = false;
    }
    inner.pings_out.store(0, Ordering::Relaxed);
    inner.up.store(true, Ordering::Release);
    inner.stats.link_up.store(1, Ordering::Relaxed);
    let reader = {
        let inner = inner.clone();
        let inbound = inbound.clone();
        std::thread::Builder::new()
            .name("volley-nats-rx".into())
            .spawn(move || read_loop(&inner, read_half, &inbound))?
    };
    let result = write_loop(inner, &mut w, subs, next_sid);
    inner.up.store(false, Ordering::Release);
    inner.stats.link_up.store(0, Ordering::Relaxed);
    let _ = stream.shutdown(Shutdown::Both);
    let _ = reader.join();
    // What was queued for the dead connection is lost (at-most-once): count it as dropped.
    let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
    let lost = p.out.len() as u64;
    p.out.clear();
    p.out_bytes = 0;
    drop(p);
    inner
        .stats
        .remote_dropped
        .fetch_add(lost, Ordering::Relaxed);
    result
}

fn write_loop(
    inner: &Inner,
    w: &mut BufWriter<TcpStream>,
    subs: &mut HashMap<Box<str>, u64>,
    next_sid: &mut u64,
) -> io::Result<()> {
    let mut last_ping = Instant::now();
    loop {
        let (out, changed, pong) = {
            let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if inner.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                if p.down {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the server closed the connection",
                    ));
                }
                if !p.out.is_empty() || !p.changed.is_empty() || p.pong_due {
                    break;
                }
                let left = PING_EVERY.saturating_sub(last_ping.elapsed());
                if left.is_zero() {
                    break;
                }
                p = inner
                    .cv
                    .wait_timeout(p, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            p.out_bytes = 0;
            let pong = std::mem::take(&mut p.pong_due);
            (
                std::mem::take(&mut p.out),
                std::mem::take(&mut p.changed),
                pong,
            )
        };
        if pong {
            w.write_all(b"PONG\r\n")?;
        }
        for (subject, on) in changed {
            match (on, subs.get(&subject)) {
                (true, None) => {
                    write!(w, "SUB {subject} {next_sid}\r\n")?;
                    subs.insert(subject, *next_sid);
                    *next_sid += 1;
                }
                (false, Some(&sid)) => {
                    write!(w, "UNSUB {sid}\r\n")?;
                    subs.remove(&subject);
                }
                _ => {}
            }
        }
        inner
            .stats
            .subscriptions
            .store(subs.len() as u64, Ordering::Relaxed);
        for (subjects, payload) in out {
            for s in &subjects {
                write!(w, "PUB {s} {}\r\n", payload.len())?;
                w.write_all(&payload)?;
                w.write_all(b"\r\n")?;
                inner.stats.msgs_out.fetch_add(1, Ordering::Relaxed);
                inner
                    .stats
                    .bytes_out
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
        }
        if last_ping.elapsed() >= PING_EVERY {
            if inner.pings_out.fetch_add(1, Ordering::AcqRel) >= 2 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "two pings unanswered",
                ));
            }
            w.write_all(b"PING\r\n")?;
            last_ping = Instant::now();
        }
        w.flush()?;
    }
}

fn read_loop(inner: &Inner, mut s: TcpStream, inbound: &Inbound) {
    let mut parser = Parser::new(inner.max_in);
    let mut buf = vec![0u8; 64 * 1024];
    let why = 'conn: loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break "end of stream".to_string(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break e.to_string(),
        };
        parser.feed(&buf[..n]);
        loop {
            match parser.next() {
                Ok(None) => break,
                Ok(Some(Op::Msg { payload, .. })) => {
                    inner.stats.msgs_in.fetch_add(1, Ordering::Relaxed);
                    inner
                        .stats
                        .bytes_in
                        .fetch_add(payload.len() as u64, Ordering::Relaxed);
                    inbound(&payload);
                }
                Ok(Some(Op::Oversized { subject, len })) => {
                    inner.stats.msgs_in.fetch_add(1, Ordering::Relaxed);
                    let n = inner.stats.bad_in.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(
                            subject,
                            len,
                            max = inner.max_in,
                            bad = n,
                            "broker message over the size limit dropped"
                        );
                    }
                }
                Ok(Some(Op::Ping)) => {
                    inner
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pong_due = true;
                    inner.cv.notify_one();
                }
                Ok(Some(Op::Pong)) => inner.pings_out.store(0, Ordering::Relaxed),
                Ok(Some(Op::Info(i))) => inner
                    .server_max_payload
                    .store(info_max_payload(&i), Ordering::Relaxed),
                Ok(Some(Op::Ok)) => {}
                Ok(Some(Op::Err(e))) => tracing::warn!("NATS server error: {e}"),
                Err(e) => break 'conn format!("unparsable stream from the server: {e:?}"),
            }
        }
    };
    tracing::debug!("cluster link reader stops: {why}");
    let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
    p.down = true;
    drop(p);
    inner.cv.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut Parser) -> Vec<Op> {
        let mut v = Vec::new();
        while let Some(op) = p.next().expect("parses") {
            v.push(op);
        }
        v
    }

    #[test]
    fn parses_ops_split_anywhere() {
        let stream = b"INFO {\"max_payload\":1048576}\r\nPING\r\nMSG a.b 1 5\r\nhello\r\n+OK\r\nHMSG x 2 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPONG\r\n";
        for cut in 0..stream.len() {
            let mut p = Parser::new(1024);
            p.feed(&stream[..cut]);
            let mut ops = all(&mut p);
            p.feed(&stream[cut..]);
            ops.extend(all(&mut p));
            assert_eq!(
                ops,
                vec![
                    Op::Info("{\"max_payload\":1048576}".into()),
                    Op::Ping,
                    Op::Msg {
                        subject: "a.b".into(),
                        payload: b"hello".to_vec()
                    },
                    Op::Ok,
                    Op::Msg {
                        subject: "x".into(),
                        payload: b"hi".to_vec()
                    },
                    Op::Pong,
                ],
                "cut at {cut}"
            );
        }
        assert_eq!(info_max_payload("{\"max_payload\": 2048}"), 2048);
        assert_eq!(info_max_payload("{}"), 1 << 20);
    }

    #[test]
    fn oversized_payload_is_skipped_not_buffered() {
        let big = vec![b'x'; 10_000];
        let mut stream = b"MSG s 1 10000\r\n".to_vec();
        stream.extend_from_slice(&big);
        stream.extend_from_slice(b"\r\nMSG s 1 2\r\nok\r\n");
        for cut in [0, 5, 20, 5000, 10_016, stream.len()] {
            let mut p = Parser::new(100);
            p.feed(&stream[..cut]);
            let mut ops = all(&mut p);
            for chunk in stream[cut..].chunks(1000) {
                p.feed(chunk);
                ops.extend(all(&mut p));
            }
            if cut <= 1000 {
                // Fed in chunks: the skipped payload never sits in the buffer.
                assert!(p.buf.len() < 2000, "buffered {}", p.buf.len());
            }
            assert_eq!(
                ops,
                vec![
                    Op::Oversized {
                        subject: "s".into(),
                        len: 10_000
                    },
                    Op::Msg {
                        subject: "s".into(),
                        payload: b"ok".to_vec()
                    }
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"BOGUS\r\n"[..],
            b"MSG\r\n",
            b"MSG s 1 x\r\n",
            b"MSG s 1 2\r\nabcd\r\n",
            b"HMSG s 1 9 2\r\n",
        ] {
            let mut p = Parser::new(100);
            p.feed(bad);
            assert!(p.next().is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut p = Parser::new(100);
        p.feed(&vec![b'a'; MAX_LINE + 10]);
        assert_eq!(p.next(), Err(ParseError::LineTooLong));
    }

    #[test]
    fn urls() {
        assert_eq!(
            server_addr("nats://127.0.0.1:4222").unwrap(),
            "127.0.0.1:4222"
        );
        assert_eq!(server_addr("localhost").unwrap(), "localhost:4222");
        assert!(server_addr("tls://x:1").is_err());
        assert!(server_addr("nats://u:p@x:1").is_err());
    }
}
