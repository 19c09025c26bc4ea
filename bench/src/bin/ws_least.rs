//! The least WebSocket echo server: an instrument for issue 14, not a server to use.
//!
//! It answers the echo loads of `loadgen echo` with as little work as an RFC 6455 server can
//! do on epoll: one thread, edge-triggered readiness (mio), one `recv` into a shared buffer
//! per readiness, and one `send` per read. Each whole frame of the read is unmasked in place
//! (volley's SIMD unmask), a text payload is checked as UTF-8 (volley's simdutf8 check), and
//! the answer, header then payload, is written over the bytes the client's frame used, so
//! all the answers of one read leave in one `send` with no copy of a large payload (small
//! ones are moved down to follow the previous answer).
//!
//! It keeps per connection only the bytes of an incomplete frame (or of the request head)
//! and what a short send left. It has none of volley's runtime: no slab of connection state
//! machines, no timers (no idle or ping deadlines), no handler call, no write queue and
//! budget, no counters. Pings get a pong, a close gets a close and the connection ends;
//! anything else (fragments, extensions' bits, frames of 64 KiB or more) ends the connection.
//!
//! With `--uring` the same frame loop runs on io_uring (see `uring`): per connection one
//! receive or send in flight, in and out of the connection's own buffer.
//!
//! What it is for: run side by side with uWS and volley (`SERVERS="uws vmio vuring least
//! leastu" loadgen/scripts/bench-echo.sh`), its CPU per message is what the kernel's work
//! plus the least WebSocket work costs here, so a target below its ratio is out of reach of
//! any server driving the sockets the same way.
//!
//!   ws_least [--addr 127.0.0.1:9103] [--uring]

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::SocketAddr;
use volley::proto::frame::{encode_header, OpCode};
use volley::proto::handshake::{parse_request, AcceptKey, EMPTY_HEADER, MAX_HEADERS};
use volley::proto::mask::apply_mask;
use volley::proto::utf8;

#[derive(Parser)]
#[command(about = "The least WebSocket echo server (an instrument: see the source's header)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9103")]
    addr: SocketAddr,
    /// io_uring instead of epoll: one receive or send in flight per connection, into and
    /// from the connection's own buffer (see `uring`).
    #[arg(long)]
    uring: bool,
}

const LISTENER: Token = Token(usize::MAX);
/// A request head larger than this is refused.
const MAX_HEAD: usize = 8192;
/// The shared receive buffer: room for a carried-over partial frame (< 64 KiB) and a read.
const RBUF: usize = 256 * 1024;

struct Conn {
    io: TcpStream,
    open: bool,
    /// Bytes of an incomplete frame (or request head), carried to the next read.
    tail: Vec<u8>,
    /// What a short send left, sent when the socket is writable; no reads meanwhile.
    pending: Vec<u8>,
    /// A close was answered: end once `pending` is out.
    closing: bool,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    if args.uring {
        uring::run(args.addr)
    } else {
        run_epoll(args.addr)
    }
}

fn run_epoll(addr: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("ws_least: listening on {addr}");
    let mut conns: slab::Slab<Conn> = slab::Slab::new();
    let mut rbuf = vec![0u8; RBUF];
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept(&poll, &listener, &mut conns);
                continue;
            }
            let key = ev.token().0;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            let mut alive = true;
            if ev.is_writable() && !c.pending.is_empty() {
                alive = flush(c);
            }
            if alive && c.pending.is_empty() && !c.closing {
                alive = read(c, &mut rbuf);
            }
            if !alive || (c.closing && c.pending.is_empty()) {
                let mut c = conns.remove(key);
                let _ = poll.registry().deregister(&mut c.io);
            }
        }
    }
}

fn accept(poll: &Poll, listener: &TcpListener, conns: &mut slab::Slab<Conn>) {
    loop {
        match listener.accept() {
            Ok((mut io, _)) => {
                let _ = io.set_nodelay(true);
                let entry = conns.vacant_entry();
                let token = Token(entry.key());
                if poll
                    .registry()
                    .register(&mut io, token, Interest::READABLE | Interest::WRITABLE)
                    .is_ok()
                {
                    entry.insert(Conn {
                        io,
                        open: false,
                        tail: Vec::new(),
                        pending: Vec::new(),
                        closing: false,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("ws_least: accept: {e}");
                return;
            }
        }
    }
}

/// One read (a short read means the socket is drained: edge-triggered readiness reports
/// the next arrival), its frames answered, the answers sent. False: drop the connection.
fn read(c: &mut Conn, rbuf: &mut [u8]) -> bool {
    loop {
        let carried = c.tail.len();
        rbuf[..carried].copy_from_slice(&c.tail);
        c.tail.clear();
        let n =
            match rustix::net::recv(&c.io, &mut rbuf[carried..], rustix::net::RecvFlags::empty()) {
                Ok((0, _)) => return false,
                Ok((n, _)) => n,
                Err(rustix::io::Errno::AGAIN) => {
                    c.tail.extend_from_slice(&rbuf[..carried]);
                    return true;
                }
                Err(rustix::io::Errno::INTR) => {
                    c.tail.extend_from_slice(&rbuf[..carried]);
                    continue;
                }
                Err(_) => return false,
            };
        let end = carried + n;
        let buf = &mut rbuf[..end];
        let (out, used) = if c.open {
            match frames(buf, &mut c.closing) {
                Some(r) => r,
                None => return false,
            }
        } else {
            match handshake(buf) {
                Head::Incomplete => (0..0, 0),
                Head::Open(used) => {
                    c.open = true;
                    // The 101 goes out on its own; frames sent behind the head wait for the
                    // next read (loadgen waits for the 101 before it sends).
                    let answer = handshake_answer(&buf[..used]);
                    if !send_all(c, answer.as_bytes()) {
                        return false;
                    }
                    c.tail.extend_from_slice(&buf[used..]);
                    return true;
                }
                Head::Refused => {
                    let _ = send_all(c, b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
                    c.closing = true;
                    return true;
                }
            }
        };
        c.tail.extend_from_slice(&buf[used..]);
        if c.tail.len() > (1 << 16) + MAX_HEAD {
            return false;
        }
        if !out.is_empty() && !send_all(c, &buf[out]) {
            return false;
        }
        if n < rbuf.len() - carried || !c.pending.is_empty() || c.closing {
            return true;
        }
    }
}

/// Sends `bytes`, keeping what the socket does not take for `flush`.
fn send_all(c: &mut Conn, bytes: &[u8]) -> bool {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::net::send(&c.io, &bytes[done..], rustix::net::SendFlags::NOSIGNAL) {
            Ok(w) => done += w,
            Err(rustix::io::Errno::AGAIN) => break,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    c.pending.extend_from_slice(&bytes[done..]);
    true
}

fn flush(c: &mut Conn) -> bool {
    let pending = std::mem::take(&mut c.pending);
    send_all(c, &pending)
}

/// Answers every whole frame in `buf`, in place. Returns the range of `buf` holding the
/// answers and how many bytes the frames used; `None` to drop the connection.
fn frames(buf: &mut [u8], closing: &mut bool) -> Option<(std::ops::Range<usize>, usize)> {
    let mut pos = 0;
    // The answers so far occupy buf[start..w].
    let (mut start, mut w) = (None::<usize>, 0);
    while !*closing {
        let (Some(&b0), Some(&b1)) = (buf.get(pos), buf.get(pos + 1)) else {
            break;
        };
        // FIN, no RSV bits, masked: anything else is not this server's business.
        if b0 & 0xf0 != 0x80 || b1 & 0x80 == 0 {
            return None;
        }
        let (len, at) = match b1 & 0x7f {
            126 => match buf.get(pos + 2..pos + 4) {
                Some(l) => (usize::from(u16::from_be_bytes([l[0], l[1]])), pos + 4),
                None => break,
            },
            127 => return None,
            l => (usize::from(l), pos + 2),
        };
        let body = at + 4;
        if buf.len() < body + len {
            break;
        }
        let key = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        apply_mask(&mut buf[body..body + len], key, 0);
        let op = match b0 & 0x0f {
            0x1 => {
                utf8::validate(&buf[body..body + len]).ok()?;
                OpCode::Text
            }
            0x2 => OpCode::Binary,
            0x9 if len <= 125 => OpCode::Pong,
            0xA => {
                pos = body + len;
                continue;
            }
            0x8 if len <= 125 => {
                *closing = true;
                OpCode::Close
            }
            _ => return None,
        };
        let h = encode_header(true, op, len as u64, None);
        // The answer's header goes right before its payload, over the client's key (the
        // answer header is never longer than the client's): a lone answer is not moved.
        let from = body - h.len();
        buf[from..body].copy_from_slice(&h);
        let to = match start {
            None => *start.insert(from),
            Some(_) => w,
        };
        if to != from {
            buf.copy_within(from..body + len, to);
        }
        w = to + h.len() + len;
        pos = body + len;
    }
    Some((start.map_or(0..0, |s| s..w), pos))
}

enum Head {
    Incomplete,
    /// The head's length.
    Open(usize),
    Refused,
}

fn handshake(buf: &[u8]) -> Head {
    match memchr::memmem::find(buf, b"\r\n\r\n") {
        Some(i) => {
            let mut headers = [EMPTY_HEADER; MAX_HEADERS];
            match parse_request(&buf[..i + 4], &mut headers) {
                Ok(req) if req.validate().is_ok() => Head::Open(i + 4),
                _ => Head::Refused,
            }
        }
        None if buf.len() > MAX_HEAD => Head::Refused,
        None => Head::Incomplete,
    }
}

fn handshake_answer(head: &[u8]) -> String {
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let req = parse_request(head, &mut headers).expect("checked by handshake");
    let key = req.validate().expect("checked by handshake");
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        AcceptKey::from_key(key.as_bytes()).as_str()
    )
}

/// The same server on io_uring, the least way: a listener with a multishot accept, and per
/// connection one operation in flight, a receive into its own buffer (after what an earlier
/// read left) or the send of its answers from that buffer; all of a turn's submissions in
/// one `io_uring_enter` that also waits. No provided-buffer ring, no direct descriptors.
#[allow(unsafe_code)]
mod uring {
    use super::{frames, handshake, handshake_answer, Head, MAX_HEAD};
    use io_uring::{cqueue, opcode, squeue, types, IoUring};
    use std::io;
    use std::net::{SocketAddr, TcpListener};
    use std::ops::Range;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const ACCEPT: u64 = 1 << 32;
    const RECV: u64 = 2 << 32;
    const SEND: u64 = 3 << 32;
    /// A connection's buffer: a frame under 64 KiB, its tail and a read's worth of room.
    const BUF: usize = 192 * 1024;

    struct Conn {
        fd: OwnedFd,
        buf: Box<[u8]>,
        /// Bytes at the front of `buf` from earlier reads (an incomplete frame or head).
        carried: usize,
        /// The answers being sent (in `buf`, or the 101 in `head_answer`).
        out: Range<usize>,
        /// Where the read's unused bytes start and end (moved to the front after the send).
        used: usize,
        end: usize,
        head_answer: Option<Box<[u8]>>,
        open: bool,
        closing: bool,
    }

    pub fn run(addr: SocketAddr) -> io::Result<()> {
        let listener = TcpListener::bind(addr)?;
        let mut ring: IoUring = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(1024)
        {
            Ok(r) => r,
            Err(_) => IoUring::new(1024)?,
        };
        eprintln!("ws_least (io_uring): listening on {addr}");
        let mut conns: slab::Slab<Conn> = slab::Slab::new();
        let lfd = listener.as_raw_fd();
        let mut sqes: Vec<squeue::Entry> = vec![accept(lfd)];
        let mut cqes: Vec<(u64, i32, u32)> = Vec::new();
        loop {
            for e in sqes.drain(..) {
                // SAFETY: every buffer an entry points at is a connection's boxed buffer
                // (or its boxed handshake answer), which lives in `conns` until the
                // completion of the connection's only operation in flight has been handled.
                while unsafe { ring.submission().push(&e) }.is_err() {
                    ring.submit()?;
                }
            }
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc_eintr()) => {}
                Err(e) => return Err(e),
            }
            cqes.extend(
                ring.completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (data, res, flags) in cqes.drain(..) {
                let key = (data & 0xffff_ffff) as usize;
                match data & !0xffff_ffff {
                    ACCEPT => {
                        if !cqueue::more(flags) {
                            sqes.push(accept(lfd));
                        }
                        if res >= 0 {
                            // SAFETY: the kernel handed us this new descriptor.
                            let fd = unsafe { OwnedFd::from_raw_fd(res) };
                            let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
                            let key = conns.insert(Conn {
                                fd,
                                buf: vec![0u8; BUF].into_boxed_slice(),
                                carried: 0,
                                out: 0..0,
                                used: 0,
                                end: 0,
                                head_answer: None,
                                open: false,
                                closing: false,
                            });
                            sqes.push(recv(&mut conns[key], key));
                        }
                    }
                    RECV => {
                        let Some(c) = conns.get_mut(key) else {
                            continue;
                        };
                        if res <= 0 || !on_read(c, res as usize) {
                            conns.remove(key);
                        } else if c.out.is_empty() {
                            sqes.push(recv(c, key));
                        } else {
                            sqes.push(send(c, key));
                        }
                    }
                    SEND => {
                        let Some(c) = conns.get_mut(key) else {
                            continue;
                        };
                        if res < 0 {
                            conns.remove(key);
                            continue;
                        }
                        c.out.start += res as usize;
                        if !c.out.is_empty() {
                            sqes.push(send(c, key));
                            continue;
                        }
                        if c.closing {
                            conns.remove(key);
                            continue;
                        }
                        c.head_answer = None;
                        c.buf.copy_within(c.used..c.end, 0);
                        c.carried = c.end - c.used;
                        sqes.push(recv(c, key));
                    }
                    _ => {}
                }
            }
        }
    }

    fn libc_eintr() -> i32 {
        rustix::io::Errno::INTR.raw_os_error()
    }

    fn accept(lfd: i32) -> squeue::Entry {
        opcode::AcceptMulti::new(types::Fd(lfd))
            .build()
            .user_data(ACCEPT)
    }

    fn recv(c: &mut Conn, key: usize) -> squeue::Entry {
        let room = &mut c.buf[c.carried..];
        opcode::Recv::new(
            types::Fd(c.fd.as_raw_fd()),
            room.as_mut_ptr(),
            room.len() as u32,
        )
        .build()
        .user_data(RECV | key as u64)
    }

    fn send(c: &Conn, key: usize) -> squeue::Entry {
        let bytes = match &c.head_answer {
            Some(a) => &a[c.out.clone()],
            None => &c.buf[c.out.clone()],
        };
        opcode::Send::new(
            types::Fd(c.fd.as_raw_fd()),
            bytes.as_ptr(),
            bytes.len() as u32,
        )
        .flags(rustix::net::SendFlags::NOSIGNAL.bits() as i32)
        .build()
        .user_data(SEND | key as u64)
    }

    /// `n` bytes arrived after what was carried: sets `out` to what to send (empty: read
    /// again) and `used..end` to what stays for the next read. False: drop the connection.
    fn on_read(c: &mut Conn, n: usize) -> bool {
        let end = c.carried + n;
        c.out = 0..0;
        if c.open {
            let Some((out, used)) = frames(&mut c.buf[..end], &mut c.closing) else {
                return false;
            };
            if out.is_empty() {
                c.buf.copy_within(used..end, 0);
                c.carried = end - used;
                return !c.closing && c.carried < (1 << 16) + MAX_HEAD;
            }
            (c.out, c.used, c.end) = (out, used, end);
            return true;
        }
        match handshake(&c.buf[..end]) {
            Head::Incomplete => {
                c.carried = end;
                end <= MAX_HEAD
            }
            Head::Open(used) => {
                let a = handshake_answer(&c.buf[..used])
                    .into_bytes()
                    .into_boxed_slice();
                c.out = 0..a.len();
                c.head_answer = Some(a);
                (c.used, c.end, c.open) = (used, end, true);
                true
            }
            Head::Refused => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley::proto::encode::encode_client_frame;

    fn client(op: OpCode, payload: &[u8], out: &mut Vec<u8>) {
        encode_client_frame(op, true, payload, [0x11, 0x22, 0x33, 0x44], out);
    }

    fn server(op: OpCode, payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&encode_header(true, op, payload.len() as u64, None));
        out.extend_from_slice(payload);
    }

    #[test]
    fn a_reads_frames_are_answered_in_order_in_one_run_and_a_partial_frame_is_left() {
        let big: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
        let mut read = Vec::new();
        let mut want = Vec::new();
        client(OpCode::Text, "héllo".as_bytes(), &mut read);
        server(OpCode::Text, "héllo".as_bytes(), &mut want);
        client(OpCode::Binary, &big, &mut read); // 16-bit length: an 8-byte header
        server(OpCode::Binary, &big, &mut want);
        client(OpCode::Pong, b"ignored", &mut read);
        client(OpCode::Ping, b"p", &mut read);
        server(OpCode::Pong, b"p", &mut want);
        client(OpCode::Binary, b"", &mut read);
        server(OpCode::Binary, b"", &mut want);
        let whole = read.len();
        client(OpCode::Text, b"not yet", &mut read);
        read.truncate(whole + 5); // header and one byte of the next frame
        let mut closing = false;
        let (out, used) = frames(&mut read, &mut closing).expect("valid frames");
        assert_eq!(used, whole);
        assert_eq!(&read[out], &want[..]);
        assert!(!closing);
    }

    #[test]
    fn a_lone_large_answer_is_not_moved() {
        let payload = vec![7u8; 16384];
        let mut read = Vec::new();
        client(OpCode::Binary, &payload, &mut read);
        let mut closing = false;
        let (out, used) = frames(&mut read, &mut closing).expect("valid frame");
        assert_eq!(used, read.len());
        // Client header 8 bytes, answer header 4: the answer starts 4 bytes in.
        assert_eq!(out, 4..read.len());
        let mut want = Vec::new();
        server(OpCode::Binary, &payload, &mut want);
        assert_eq!(&read[out], &want[..]);
    }

    #[test]
    fn a_close_is_answered_and_ends_the_reading() {
        let mut read = Vec::new();
        client(OpCode::Close, &1000u16.to_be_bytes(), &mut read);
        client(OpCode::Text, b"after close", &mut read);
        let mut closing = false;
        let (out, _) = frames(&mut read, &mut closing).expect("valid frames");
        assert!(closing);
        let mut want = Vec::new();
        server(OpCode::Close, &1000u16.to_be_bytes(), &mut want);
        assert_eq!(&read[out], &want[..]);
    }

    #[test]
    fn what_it_does_not_serve_drops_the_connection() {
        let mut closing = false;
        let mut bad_text = Vec::new();
        client(OpCode::Text, &[0xff, 0xfe], &mut bad_text);
        assert!(frames(&mut bad_text, &mut closing).is_none());
        let mut unmasked = Vec::new();
        server(OpCode::Text, b"hi", &mut unmasked);
        assert!(frames(&mut unmasked, &mut closing).is_none());
        let mut fragment = Vec::new();
        encode_client_frame(OpCode::Text, false, b"part", [1, 2, 3, 4], &mut fragment);
        assert!(frames(&mut fragment, &mut closing).is_none());
    }

    /// Both servers, driven by a real client (tungstenite): text, a large binary message
    /// (carried over several reads), a ping, and the close handshake.
    #[test]
    fn both_servers_echo_what_a_real_client_sends() {
        use tungstenite::Message;
        for uring in [false, true] {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port");
            std::thread::spawn(move || {
                if uring {
                    uring::run(addr)
                } else {
                    run_epoll(addr)
                }
            });
            let url = format!("ws://{addr}/");
            let mut ws = (0..100)
                .find_map(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    tungstenite::connect(&url).ok()
                })
                .expect("the server accepts")
                .0;
            let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
            for msg in [
                Message::text("héllo"),
                Message::binary(big),
                Message::Ping(b"p".to_vec().into()),
                Message::text(""),
            ] {
                ws.send(msg.clone()).expect("send");
                let back = ws.read().expect("an answer");
                match msg {
                    Message::Ping(p) => assert_eq!(back, Message::Pong(p), "uring {uring}"),
                    m => assert_eq!(back, m, "uring {uring}"),
                }
            }
            ws.close(None).expect("close");
            loop {
                match ws.read() {
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(e) => panic!("uring {uring}: {e}"),
                }
            }
        }
    }

    #[test]
    fn the_handshake_is_answered_only_for_a_whole_valid_upgrade() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert!(matches!(
            handshake(&head[..head.len() - 2]),
            Head::Incomplete
        ));
        assert!(matches!(handshake(head), Head::Open(n) if n == head.len()));
        // RFC 6455's example key and accept value.
        assert!(handshake_answer(head)
            .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(matches!(
            handshake(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Refused
        ));
    }
}
