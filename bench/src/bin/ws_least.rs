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
//! What it is for: run side by side with uWS and volley (`SERVERS="uws vmio least"
//! loadgen/scripts/bench-echo.sh`), its CPU per message is what the kernel's work plus the
//! least WebSocket work costs here, so a target below its ratio is out of reach of any
//! server making these system calls.
//!
//!   ws_least [--addr 127.0.0.1:9103]

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
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("ws_least: listening on {}", args.addr);
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
