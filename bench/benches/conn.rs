//! The WebSocket work of an echo, per message, with no sockets, runtime or cache misses:
//! one read's bytes into the sans-IO connection machine (`Conn::handle_read`: frame
//! headers, unmasking, UTF-8 check, the handler call) and each answer's frame encoded and
//! appended to a byte queue. Beside it, `least`: the least code that does the same work for
//! this input (header, unmask, UTF-8 check, answer frame), as any server must, with nothing
//! for fragments, control frames, limits or state. Both are hot in cache, so they are lower
//! bounds on what an echo costs a server in user space per message.
//!
//! The shapes are issue 14's echo loads: 16 frames of 20 B text in one read (16 in flight),
//! one frame of 20 B text in a read (1 in flight) and one 16 KiB binary frame in a read.
//! Figures are per message (`Throughput::Elements(frames)`).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::time::Instant;
use volley::proto::conn::{Conn, ConnConfig, Events, Head, Held, Verdict};
use volley::proto::encode::encode_client_frame;
use volley::proto::frame::encode_header;
use volley::proto::mask::apply_mask;
use volley::proto::{utf8, CloseCode, Decoded, HandshakeError, OpCode};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The caller of the machine in an echo server: a byte queue, and the handler answering
/// each message with the same payload and kind.
struct Echo {
    out: Vec<u8>,
    held: Held,
}

impl Events<()> for Echo {
    fn queued(&self) -> usize {
        self.out.len()
    }
    fn at_frame_boundary(&self) -> bool {
        true
    }
    fn send(&mut self, header: &[u8], payload: &[u8]) {
        self.out.extend_from_slice(header);
        self.out.extend_from_slice(payload);
    }
    fn discard(&mut self) {
        self.out.clear();
    }
    fn held(&mut self) -> &mut Held {
        &mut self.held
    }
    fn request(&mut self, _head: &[u8]) -> Head<()> {
        Head::Open(())
    }
    fn refuse(&mut self, _e: &HandshakeError) {}
    fn open(&mut self, _app: &mut ()) -> Verdict {
        Verdict::Continue
    }
    fn message(&mut self, _app: &mut (), msg: Decoded<'_>) -> Verdict {
        let (op, data) = match msg {
            Decoded::Text(t) => (OpCode::Text, t.as_bytes()),
            Decoded::Binary(b) => (OpCode::Binary, b),
            _ => return Verdict::Continue,
        };
        let h = encode_header(true, op, data.len() as u64, None);
        self.send(&h, data);
        Verdict::Continue
    }
    fn close(&mut self, _app: (), _code: CloseCode, _reason: &str) {}
}

/// One read's worth of client frames: `n` masked frames of `payload`.
fn read_of(op: OpCode, payload: &[u8], n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..n {
        encode_client_frame(op, true, payload, KEY, &mut v);
    }
    v
}

/// The least echo: for each frame, its header (FIN, opcode, mask bit, 7- or 16-bit length,
/// key), the payload unmasked, a text payload checked as UTF-8, and the answer's header and
/// payload appended to `out`. Returns the messages answered, or `None` for anything else.
fn least(buf: &mut [u8], out: &mut Vec<u8>) -> Option<usize> {
    let mut pos = 0;
    let mut n = 0;
    while pos < buf.len() {
        let b0 = *buf.get(pos)?;
        let b1 = *buf.get(pos + 1)?;
        if b0 & 0xf0 != 0x80 || b1 & 0x80 == 0 {
            return None;
        }
        let (len, at) = match b1 & 0x7f {
            126 => {
                let l = u16::from_be_bytes(buf.get(pos + 2..pos + 4)?.try_into().ok()?);
                (usize::from(l), pos + 4)
            }
            127 => return None,
            l => (usize::from(l), pos + 2),
        };
        let key: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        let payload = buf.get_mut(at + 4..at + 4 + len)?;
        apply_mask(payload, key, 0);
        let op = match b0 & 0x0f {
            1 => {
                utf8::validate(payload).ok()?;
                OpCode::Text
            }
            2 => OpCode::Binary,
            _ => return None,
        };
        out.extend_from_slice(&encode_header(true, op, len as u64, None));
        out.extend_from_slice(payload);
        pos = at + 4 + len;
        n += 1;
    }
    Some(n)
}

fn bench_echo(c: &mut Criterion) {
    let text = b"hello from client 42";
    let big: Vec<u8> = (0..16384u32).map(|i| (i * 7) as u8).collect();
    for (name, op, payload, frames) in [
        ("16x20B_text", OpCode::Text, &text[..], 16),
        ("1x20B_text", OpCode::Text, &text[..], 1),
        ("1x16KiB_binary", OpCode::Binary, &big[..], 1),
    ] {
        let read = read_of(op, payload, frames);
        let answer_len =
            frames * (encode_header(true, op, payload.len() as u64, None).len() + payload.len());
        let cfg = ConnConfig::default();
        let now = Instant::now();
        let mut ev = Echo {
            out: Vec::with_capacity(2 * read.len()),
            held: Held::new(1 << 26),
        };
        let mut conn: Conn<()> = Conn::new(now);
        conn.handle_read(
            now,
            &mut b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &cfg,
            &mut ev,
        );
        assert!(conn.is_open());

        // Both answer every frame, byte for byte, before anything is timed.
        ev.out.clear();
        conn.handle_read(now, &mut read.clone(), &cfg, &mut ev);
        let mut expected = Vec::new();
        assert_eq!(least(&mut read.clone(), &mut expected), Some(frames));
        assert_eq!(ev.out, expected);
        assert_eq!(expected.len(), answer_len);
        assert!(conn.is_open());

        let mut g = c.benchmark_group(format!("echo_work/{name}"));
        g.throughput(Throughput::Elements(frames as u64));
        // The machine unmasks in place, so each iteration gets a fresh masked copy (not timed).
        g.bench_function("volley_conn", |b| {
            b.iter_batched_ref(
                || read.clone(),
                |buf| {
                    ev.out.clear();
                    conn.handle_read(now, black_box(buf), &cfg, &mut ev);
                    black_box(ev.out.len());
                },
                BatchSize::SmallInput,
            )
        });
        let mut out = Vec::with_capacity(2 * read.len());
        g.bench_function("least", |b| {
            b.iter_batched_ref(
                || read.clone(),
                |buf| {
                    out.clear();
                    black_box(least(black_box(buf), &mut out));
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, bench_echo);
criterion_main!(benches);
