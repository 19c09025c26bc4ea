//! The connection machine under a simulated clock: every deadline, both close directions,
//! end of stream, and the faults of issue 12 (ping flood, half-close, incomplete messages).

use super::*;
use crate::proto::encode::encode_client_frame;
use crate::proto::{Decoded, Decoder};

const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// The caller's side, recorded: a byte queue, the handler's calls, the worker budget.
#[derive(Debug)]
struct Ev {
    queue: Vec<u8>,
    budget: usize,
    held: Held,
    opened: u32,
    closes: Vec<(u32, u16, String)>,
    messages: Vec<Vec<u8>>,
    /// Whether each message was a text.
    texts: Vec<bool>,
    /// The handler echoes each message; over the budget it asks for a slow-consumer close.
    echo: bool,
    next_app: u32,
    /// `request` defers its answer (as `Upgrade::defer` does).
    defer: bool,
    /// `upgrade_settled` calls.
    settled: u32,
    /// The frame each `message_in_frame` came with.
    replies: Vec<Vec<u8>>,
}

impl Ev {
    fn new(cfg: &ConnConfig) -> Self {
        Ev {
            queue: Vec::new(),
            budget: cfg.write_budget,
            held: Held::new(usize::MAX),
            opened: 0,
            closes: Vec::new(),
            messages: Vec::new(),
            texts: Vec::new(),
            echo: false,
            next_app: 1,
            defer: false,
            settled: 0,
            replies: Vec::new(),
        }
    }

    /// Frames in the queue, decoded as a client would.
    fn frames(&mut self) -> Vec<(OpCode, Vec<u8>)> {
        let start = match memchr::memmem::find(&self.queue, b"\r\n\r\n") {
            Some(i) if self.queue.starts_with(b"HTTP/") => i + 4,
            _ => 0,
        };
        let mut buf = self.queue[start..].to_vec();
        let mut dec = Decoder::new(Role::Client, Limits::default());
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let step = dec.decode(&mut buf[pos..]).expect("valid server frames");
            pos += step.consumed;
            match step.message {
                Some(Decoded::Ping(p)) => out.push((OpCode::Ping, p.to_vec())),
                Some(Decoded::Pong(p)) => out.push((OpCode::Pong, p.to_vec())),
                Some(Decoded::Close(c)) => out.push((
                    OpCode::Close,
                    c.map_or(vec![], |c| c.code.0.to_be_bytes().to_vec()),
                )),
                Some(Decoded::Text(t)) => out.push((OpCode::Text, t.as_bytes().to_vec())),
                Some(Decoded::Binary(b)) => out.push((OpCode::Binary, b.to_vec())),
                None if step.consumed == 0 => return out,
                None => {}
            }
        }
    }
}

impl Events<u32> for Ev {
    fn queued(&self) -> usize {
        self.queue.len()
    }
    fn at_frame_boundary(&self) -> bool {
        true
    }
    fn send(&mut self, header: &[u8], payload: &[u8]) {
        let close = header[0] & 0x0f == OpCode::Close.as_u8();
        assert!(
            close || self.queue.len() <= self.budget,
            "a frame queued over the budget: {} > {}",
            self.queue.len(),
            self.budget
        );
        self.queue.extend_from_slice(header);
        self.queue.extend_from_slice(payload);
    }
    fn discard(&mut self) {
        self.queue.clear();
    }
    fn held(&mut self) -> &mut Held {
        &mut self.held
    }
    fn request(&mut self, head: &[u8]) -> Head<u32> {
        if self.defer {
            return Head::Deferred;
        }
        if head.starts_with(b"GET ") {
            self.queue
                .extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
            let app = self.next_app;
            self.next_app += 1;
            Head::Open(app)
        } else {
            self.queue
                .extend_from_slice(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            Head::Answered
        }
    }
    fn upgrade_settled(&mut self) {
        self.settled += 1;
    }
    fn refuse(&mut self, _e: &HandshakeError) {
        self.queue
            .extend_from_slice(b"HTTP/1.1 431 Too Large\r\n\r\n");
    }
    fn open(&mut self, _app: &mut u32) -> Verdict {
        self.opened += 1;
        Verdict::Continue
    }
    fn message(&mut self, _app: &mut u32, msg: Decoded<'_>) -> Verdict {
        let data = match msg {
            Decoded::Text(t) => t.as_bytes(),
            Decoded::Binary(b) => b,
            _ => panic!("only data messages reach the handler"),
        };
        self.messages.push(data.to_vec());
        self.texts.push(matches!(msg, Decoded::Text(_)));
        if self.echo {
            if self.queue.len() > self.budget {
                return Verdict::SlowConsumer;
            }
            let h = encode_header(true, OpCode::Binary, data.len() as u64, None);
            self.send(&h, data);
        }
        Verdict::Continue
    }
    fn message_in_frame(&mut self, app: &mut u32, msg: Decoded<'_>, frame: &[u8]) -> Verdict {
        let data = match msg {
            Decoded::Text(t) => t.as_bytes(),
            Decoded::Binary(b) => b,
            _ => panic!("only data messages reach the handler"),
        };
        // The message's own bytes end the frame, not a copy of them.
        let at = frame.len() - data.len();
        assert!(std::ptr::eq(frame[at..].as_ptr(), data.as_ptr()));
        self.replies.push(frame.to_vec());
        self.message(app, msg)
    }
    fn close(&mut self, app: u32, code: CloseCode, reason: &str) {
        assert!(
            self.closes.iter().all(|c| c.0 != app),
            "on_close twice for {app}"
        );
        self.closes.push((app, code.0, reason.to_owned()));
    }
}

fn client(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_client_frame(op, fin, payload, [7, 7, 7, 7], &mut v);
    v
}

fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    client(OpCode::Close, true, &p)
}

/// A machine, its caller and a clock.
struct Sim {
    t0: Instant,
    now: Instant,
    cfg: ConnConfig,
    conn: Conn<u32>,
    ev: Ev,
}

impl Sim {
    fn new(cfg: ConnConfig) -> Self {
        let t0 = Instant::now();
        Sim {
            t0,
            now: t0,
            cfg,
            conn: Conn::new(t0),
            ev: Ev::new(&cfg),
        }
    }

    fn open(cfg: ConnConfig) -> Self {
        let mut s = Sim::new(cfg);
        s.read(HEAD);
        assert!(s.conn.is_open());
        s.ev.queue.clear();
        s
    }

    fn read(&mut self, bytes: &[u8]) {
        let mut b = bytes.to_vec();
        self.conn
            .handle_read(self.now, &mut b, &self.cfg, &mut self.ev);
    }

    /// Advances the clock to `ms` after the start and fires what is due.
    fn at(&mut self, ms: u64) -> Option<Timeout> {
        self.now = self.t0 + Duration::from_millis(ms);
        self.conn.handle_timeout(self.now, &self.cfg, &mut self.ev)
    }

    /// The caller flushed everything: true if it must shut the write side.
    fn flush(&mut self) -> bool {
        self.conn.poll_transmit(&self.cfg, &mut self.ev);
        self.ev.queue.clear();
        self.conn.handle_flushed(0)
    }

    fn deadline_ms(&self) -> Option<u64> {
        self.conn
            .poll_timeout(&self.cfg)
            .map(|d| (d - self.t0).as_millis() as u64)
    }
}

fn cfg() -> ConnConfig {
    ConnConfig {
        handshake_timeout: Duration::from_millis(1000),
        idle_timeout: Some(Duration::from_millis(10_000)),
        ping_interval: Some(Duration::from_millis(3000)),
        pong_timeout: Duration::from_millis(2000),
        close_timeout: Duration::from_millis(500),
        message_timeout: Some(Duration::from_millis(4000)),
        write_budget: 1024,
        ..ConnConfig::default()
    }
}

#[test]
fn a_head_not_finished_in_time_is_dropped_without_an_answer() {
    let mut s = Sim::new(cfg());
    s.read(b"GET / HTTP/1.1\r\n");
    assert_eq!(s.deadline_ms(), Some(1000));
    assert_eq!(s.at(999), None);
    // Bytes of the head do not move the handshake deadline.
    s.read(b"Host: x\r\n");
    assert_eq!(s.at(1000), Some(Timeout::Handshake));
    assert!(s.conn.is_closed());
    assert!(s.ev.queue.is_empty());
    assert!(s.ev.closes.is_empty(), "never opened: no on_close");
}

#[test]
fn a_quiet_connection_is_pinged_then_dropped_without_a_pong() {
    let mut s = Sim::open(cfg());
    assert_eq!(s.deadline_ms(), Some(3000));
    assert_eq!(s.at(3000), Some(Timeout::Ping));
    assert_eq!(s.ev.frames(), vec![(OpCode::Ping, vec![])]);
    assert_eq!(s.deadline_ms(), Some(5000));
    assert_eq!(s.at(5000), Some(Timeout::Pong));
    assert!(s.conn.is_closed());
    assert_eq!(s.ev.closes, vec![(1, 1006, "pong timeout".into())]);
}

#[test]
fn a_ping_sent_late_still_gets_the_whole_pong_timeout() {
    // The worker was busy: the ping went out 700.4 ms after it was due. The pong's deadline
    // runs from when it was sent (rounded up to the millisecond), not from when it was due.
    let mut s = Sim::open(cfg());
    s.now = s.t0 + Duration::from_micros(3_700_400);
    assert_eq!(
        s.conn.handle_timeout(s.now, &s.cfg, &mut s.ev),
        Some(Timeout::Ping)
    );
    assert_eq!(s.deadline_ms(), Some(5701));
    assert_eq!(s.at(5700), None);
    assert!(s.conn.is_open());
    assert_eq!(s.at(5701), Some(Timeout::Pong));
}

#[test]
fn any_byte_answers_a_ping_and_restarts_the_ping_interval() {
    let mut s = Sim::open(cfg());
    assert_eq!(s.at(3000), Some(Timeout::Ping));
    s.at(4000);
    s.read(&client(OpCode::Pong, true, b""));
    assert_eq!(s.deadline_ms(), Some(7000));
    assert_eq!(s.at(6999), None);
    assert!(s.conn.is_open());
}

#[test]
fn a_connection_silent_for_the_idle_timeout_is_closed_with_1001() {
    let mut c = cfg();
    c.ping_interval = None;
    let mut s = Sim::open(c);
    assert_eq!(s.deadline_ms(), Some(10_000));
    assert_eq!(s.at(10_000), Some(Timeout::Idle));
    assert_eq!(
        s.ev.frames(),
        vec![(OpCode::Close, 1001u16.to_be_bytes().to_vec())]
    );
    // The peer echoes: on_close reports our code.
    s.read(&close_frame(1001, ""));
    assert_eq!(s.ev.closes, vec![(1, 1001, "idle timeout".into())]);
    assert!(s.flush(), "everything sent: shut the write side");
    s.conn.handle_eof(s.now, &mut s.ev);
    assert!(s.conn.is_closed());
}

#[test]
fn an_unanswered_close_is_dropped_at_the_close_timeout() {
    let mut s = Sim::open(cfg());
    s.at(100);
    s.conn.close(s.now, CloseCode(4000), "bye", &mut s.ev);
    assert_eq!(s.deadline_ms(), Some(600));
    assert_eq!(s.at(600), Some(Timeout::CloseHandshake));
    assert!(s.conn.is_closed());
    assert_eq!(s.ev.closes, vec![(1, 4000, "bye".into())]);
}

#[test]
fn a_peer_that_never_sends_its_fin_is_dropped_at_the_close_timeout() {
    let mut s = Sim::open(cfg());
    s.read(&close_frame(1000, ""));
    assert!(s.flush());
    assert_eq!(s.deadline_ms(), Some(500));
    assert_eq!(s.at(500), Some(Timeout::Linger));
    assert!(s.conn.is_closed());
}

/// A close code that may not appear in a close frame (1005, 1006, 1015, and codes outside
/// the RFC's ranges) goes out as a close frame with no code; the application's code is what
/// `on_close` reports. Allowed codes go out as they are.
#[test]
fn a_code_not_allowed_on_the_wire_goes_out_as_a_close_without_one() {
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        let mut s = Sim::open(cfg());
        s.conn.close(s.now, CloseCode(code), "why", &mut s.ev);
        assert_eq!(s.ev.queue, [0x88, 0x00], "{code}");
        s.read(&close_frame(1000, ""));
        assert_eq!(s.ev.closes, vec![(1, code, "why".into())], "{code}");
    }
    for code in [1000u16, 1001, 1003, 1008, 1011, 1014, 3000, 4999] {
        let mut s = Sim::open(cfg());
        s.conn.close(s.now, CloseCode(code), "why", &mut s.ev);
        let mut want = vec![0x88, 5];
        want.extend_from_slice(&code.to_be_bytes());
        want.extend_from_slice(b"why");
        assert_eq!(s.ev.queue, want, "{code}");
    }
}

#[test]
fn data_after_our_close_frame_is_dropped() {
    let mut s = Sim::open(cfg());
    s.conn.close(s.now, CloseCode::NORMAL, "", &mut s.ev);
    s.read(&client(OpCode::Text, true, b"late"));
    assert!(s.ev.messages.is_empty());
    s.read(&close_frame(1000, ""));
    assert_eq!(s.ev.closes, vec![(1, 1000, "".into())]);
}

#[test]
fn a_protocol_error_sends_its_close_code_and_reports_it() {
    let mut s = Sim::open(cfg());
    // Unmasked client frame: 1002.
    s.read(&[0x81, 0x02, b'h', b'i']);
    assert_eq!(
        s.ev.frames(),
        vec![(OpCode::Close, 1002u16.to_be_bytes().to_vec())]
    );
    assert_eq!(s.ev.closes.len(), 1);
    assert_eq!(s.ev.closes[0].1, 1002);
}

// ---- fault 1: ping flood ----

#[test]
fn a_ping_flood_never_takes_the_queue_past_the_budget_plus_one_frame() {
    let mut s = Sim::open(cfg());
    let ping = client(OpCode::Ping, true, &[b'p'; 125]);
    let mut burst = Vec::new();
    for _ in 0..100 {
        burst.extend_from_slice(&ping);
    }
    for turn in 0..1000 {
        // One read of a hundred pings per turn; the peer never reads, so nothing is flushed.
        if s.conn.wants_read(s.ev.queued(), &s.cfg) {
            s.read(&burst);
        }
        s.conn.poll_transmit(&s.cfg, &mut s.ev);
        assert!(
            s.ev.queued() <= s.cfg.write_budget + 2 + 125,
            "turn {turn}: {} queued",
            s.ev.queued()
        );
    }
    assert!(!s.conn.wants_read(s.ev.queued(), &s.cfg), "reading stopped");
    // The peer reads again: the waiting pong goes out, then reading resumes.
    s.ev.queue.clear();
    assert!(
        !s.conn.wants_read(s.ev.queued(), &s.cfg),
        "not before the owed pong"
    );
    s.conn.poll_transmit(&s.cfg, &mut s.ev);
    assert_eq!(s.ev.frames(), vec![(OpCode::Pong, vec![b'p'; 125])]);
    s.ev.queue.clear();
    assert!(s.conn.wants_read(s.ev.queued(), &s.cfg));
    // Within the budget again, every ping is answered.
    let mut burst = Vec::new();
    for p in [&b"a"[..], b"b", b"c"] {
        burst.extend_from_slice(&client(OpCode::Ping, true, p));
    }
    s.read(&burst);
    assert_eq!(
        s.ev.frames(),
        vec![
            (OpCode::Pong, b"a".to_vec()),
            (OpCode::Pong, b"b".to_vec()),
            (OpCode::Pong, b"c".to_vec())
        ]
    );
}

#[test]
fn within_the_budget_every_ping_is_answered_in_order() {
    let mut s = Sim::open(cfg());
    s.ev.echo = true;
    s.read(&client(OpCode::Binary, false, b"frag"));
    s.read(&client(OpCode::Ping, true, b"one"));
    s.read(&client(OpCode::Ping, true, b"two"));
    s.read(&client(OpCode::Continuation, true, b"ment"));
    assert_eq!(
        s.ev.frames(),
        vec![
            (OpCode::Pong, b"one".to_vec()),
            (OpCode::Pong, b"two".to_vec()),
            (OpCode::Binary, b"fragment".to_vec()),
        ],
        "pongs go out in order, before the message that completed after them"
    );
}

#[test]
fn only_the_latest_ping_is_answered_while_a_pong_waits() {
    let mut s = Sim::open(cfg());
    s.ev.echo = true;
    s.read(&client(OpCode::Binary, true, &[0; 2000]));
    assert!(s.ev.queued() > s.cfg.write_budget);
    s.read(&client(OpCode::Ping, true, b"one"));
    s.read(&client(OpCode::Ping, true, b"two"));
    s.read(&client(OpCode::Ping, true, b"three"));
    s.conn.poll_transmit(&s.cfg, &mut s.ev);
    assert_eq!(s.ev.frames().len(), 1, "no pong queued over the budget");
    s.ev.queue.clear();
    s.conn.poll_transmit(&s.cfg, &mut s.ev);
    assert_eq!(s.ev.frames(), vec![(OpCode::Pong, b"three".to_vec())]);
}

#[test]
fn no_ping_is_queued_over_the_budget_and_the_pong_timeout_still_holds() {
    let mut s = Sim::open(cfg());
    s.ev.echo = true;
    s.read(&client(OpCode::Binary, true, &[0; 2000]));
    assert!(s.ev.queued() > s.cfg.write_budget);
    assert_eq!(s.at(3000), Some(Timeout::Ping));
    assert_eq!(s.ev.frames().len(), 1, "no ping behind the unsent echo");
    assert_eq!(s.at(5000), Some(Timeout::Pong));
    assert!(s.conn.is_closed());
}

// ---- fault 2: half-close ----

#[test]
fn eof_after_a_bad_head_still_sends_the_answer_then_shuts() {
    let mut s = Sim::new(cfg());
    s.read(b"BAD\r\n\r\n");
    s.conn.handle_eof(s.now, &mut s.ev);
    assert!(!s.conn.is_closed(), "the 400 is still owed");
    assert!(s.ev.queue.starts_with(b"HTTP/1.1 400"));
    assert!(s.conn.needs_flush());
    assert!(s.flush(), "shut after the answer");
    assert!(s.conn.is_closed(), "peer already done: closed");
}

#[test]
fn eof_after_a_close_frame_still_sends_the_echo() {
    let mut s = Sim::open(cfg());
    s.read(&close_frame(1000, "bye"));
    s.conn.handle_eof(s.now, &mut s.ev);
    assert_eq!(
        s.ev.frames(),
        vec![(OpCode::Close, 1000u16.to_be_bytes().to_vec())]
    );
    assert_eq!(s.ev.closes, vec![(1, 1000, "bye".into())]);
    assert!(!s.conn.is_closed());
    assert!(s.flush());
    assert!(s.conn.is_closed());
}

#[test]
fn eof_while_open_reports_1006_and_flushes_what_is_queued() {
    let mut s = Sim::open(cfg());
    s.ev.echo = true;
    s.read(&client(OpCode::Text, true, b"last words"));
    s.conn.handle_eof(s.now, &mut s.ev);
    assert_eq!(s.ev.closes, vec![(1, 1006, "connection dropped".into())]);
    assert_eq!(
        s.ev.frames(),
        vec![(OpCode::Binary, b"last words".to_vec())]
    );
    assert!(s.flush());
    assert!(s.conn.is_closed());
}

#[test]
fn eof_with_a_queue_that_never_drains_ends_at_the_close_timeout() {
    let mut s = Sim::open(cfg());
    s.read(&close_frame(1000, ""));
    s.conn.handle_eof(s.now, &mut s.ev);
    assert_eq!(s.at(499), None);
    assert_eq!(s.at(500), Some(Timeout::Linger));
    assert!(s.conn.is_closed());
    assert!(s.ev.queue.is_empty());
}

#[test]
fn a_socket_error_aborts_at_once_and_drops_the_queue() {
    let mut s = Sim::open(cfg());
    s.read(&close_frame(1000, ""));
    s.conn.handle_error(&mut s.ev);
    assert!(s.conn.is_closed());
    assert!(s.ev.queue.is_empty());
    assert_eq!(s.ev.closes.len(), 1);
}

// ---- fault 5: incomplete messages ----

#[test]
fn a_trickled_message_is_closed_at_its_completion_deadline() {
    let mut s = Sim::open(cfg());
    let mut frame = client(OpCode::Binary, true, &[1; 1000]);
    let rest = frame.split_off(20);
    s.read(&frame);
    assert_eq!(s.deadline_ms(), Some(3000), "the ping comes first");
    // A byte every 500 ms keeps the idle and ping timers away, not the message deadline.
    for (i, b) in rest.iter().take(7).enumerate() {
        s.at(500 * (i as u64 + 1));
        s.read(&[*b]);
    }
    assert_eq!(s.deadline_ms(), Some(4000));
    assert_eq!(s.at(4000), Some(Timeout::Message));
    assert_eq!(s.ev.closes, vec![(1, 1008, "message timeout".into())]);
    assert_eq!(
        s.ev.frames(),
        vec![(OpCode::Close, 1008u16.to_be_bytes().to_vec())]
    );
    assert_eq!(s.ev.held.bytes, 0);
}

#[test]
fn a_completed_message_stops_its_clock() {
    let mut s = Sim::open(cfg());
    let frame = client(OpCode::Binary, true, &[1; 100]);
    s.read(&frame[..50]);
    s.at(1000);
    s.read(&frame[50..]);
    assert_eq!(s.ev.messages.len(), 1);
    assert_eq!(
        s.deadline_ms(),
        Some(4000),
        "ping interval from the last byte"
    );
    assert_eq!(s.ev.held.bytes, 0);
}

#[test]
fn incomplete_messages_past_the_worker_budget_close_the_one_that_grew_with_1013() {
    let c = cfg();
    let mut held = Held::new(3000);
    let mut conns: Vec<Sim> = (0..3).map(|_| Sim::open(c)).collect();
    let part = {
        let mut f = client(OpCode::Binary, true, &[9; 10_000]);
        f.truncate(1500);
        f
    };
    for s in conns.iter_mut().take(2) {
        s.ev.held = held;
        s.read(&part);
        held = s.ev.held;
        assert!(s.conn.is_open());
    }
    assert!(held.bytes >= 2 * 1400);
    let s = &mut conns[2];
    s.ev.held = held;
    s.read(&part);
    assert_eq!(
        s.ev.closes,
        vec![(1, 1013, "incomplete messages over budget".into())]
    );
    assert!(s.ev.held.bytes <= 3000, "its bytes were given back");
    // The first two finish their messages and give theirs back too.
    let mut held = s.ev.held;
    let whole = client(OpCode::Binary, true, &[9; 10_000]);
    for s in conns.iter_mut().take(2) {
        s.ev.held = held;
        s.read(&whole[1500..]);
        held = s.ev.held;
        assert_eq!(s.ev.messages.len(), 1);
    }
    assert_eq!(held.bytes, 0);
}

// ---- on_close exactly once ----

#[test]
fn on_close_runs_once_whatever_follows() {
    let mut s = Sim::open(cfg());
    s.read(&close_frame(1000, ""));
    s.conn.close(s.now, CloseCode::NORMAL, "", &mut s.ev);
    s.conn.handle_eof(s.now, &mut s.ev);
    s.conn.handle_error(&mut s.ev);
    s.at(100_000);
    assert!(!s.conn.handle_slow_consumer(s.now, &mut s.ev));
    assert_eq!(s.ev.closes.len(), 1);
}

#[test]
fn a_slow_consumer_is_closed_with_1008_and_its_queue_dropped() {
    let mut s = Sim::open(cfg());
    s.ev.echo = true;
    s.read(&client(OpCode::Binary, true, &[0; 2000]));
    s.read(&client(OpCode::Binary, true, &[0; 10]));
    assert_eq!(s.ev.closes, vec![(1, 1008, "slow consumer".into())]);
    assert_eq!(
        s.ev.frames(),
        vec![(OpCode::Close, 1008u16.to_be_bytes().to_vec())]
    );
}

fn deferred(cfg: ConnConfig) -> Sim {
    let mut s = Sim::new(cfg);
    s.ev.defer = true;
    s
}

#[test]
fn a_deferred_upgrade_keeps_the_handshake_deadline() {
    let mut s = deferred(cfg());
    s.read(HEAD);
    assert!(s.conn.is_awaiting() && s.conn.is_handshaking());
    assert_eq!(s.deadline_ms(), Some(1000));
    s.at(500);
    s.read(&client(OpCode::Text, true, b"early"));
    assert_eq!(s.deadline_ms(), Some(1000), "bytes do not extend it");
    assert_eq!(s.at(1000), Some(Timeout::Handshake));
    assert!(s.conn.is_closed());
    assert_eq!(s.ev.settled, 1);
    assert!(s.ev.messages.is_empty() && s.ev.closes.is_empty());
    // A late answer changes nothing.
    s.conn.handle_upgrade(s.now, Some(9), &s.cfg, &mut s.ev);
    assert!(s.conn.is_closed());
    assert_eq!((s.ev.opened, s.ev.settled), (0, 1));
}

#[test]
fn a_deferred_accept_opens_and_handles_what_the_client_sent_early() {
    let mut s = deferred(cfg());
    let mut bytes = HEAD.to_vec();
    bytes.extend(client(OpCode::Text, true, b"hi"));
    bytes.extend(client(OpCode::Text, false, b"par"));
    s.read(&bytes);
    assert!(s.conn.is_awaiting());
    assert!(
        s.ev.messages.is_empty(),
        "nothing reaches the handler before it opens"
    );
    s.conn.handle_upgrade(s.now, Some(5), &s.cfg, &mut s.ev);
    assert!(s.conn.is_open());
    assert_eq!((s.ev.opened, s.ev.settled), (1, 1));
    assert_eq!(s.ev.messages, vec![b"hi".to_vec()]);
    // The rest of the fragmented message completes as usual.
    s.read(&client(OpCode::Continuation, true, b"t"));
    assert_eq!(s.ev.messages, vec![b"hi".to_vec(), b"part".to_vec()]);
}

#[test]
fn a_deferred_reject_drains_and_closes() {
    let mut s = deferred(cfg());
    s.read(HEAD);
    s.conn.handle_upgrade(s.now, None, &s.cfg, &mut s.ev);
    assert!(!s.conn.is_open() && !s.conn.is_handshaking());
    assert_eq!((s.ev.opened, s.ev.settled), (0, 1));
    assert!(s.flush(), "our side is shut once the answer is out");
}

#[test]
fn early_bytes_past_a_request_head_drop_a_deferred_upgrade() {
    let mut c = cfg();
    c.max_head = 256;
    let mut s = deferred(c);
    s.read(HEAD);
    s.read(&[0u8; 200]);
    assert!(s.conn.is_awaiting());
    s.read(&[0u8; 100]);
    assert!(s.conn.is_closed());
    assert_eq!(s.ev.settled, 1);
}

/// Early bytes in the same read as the request head are held under the same bound.
#[test]
fn early_bytes_with_the_head_past_a_request_head_drop_a_deferred_upgrade() {
    let mut c = cfg();
    c.max_head = 256;
    let mut s = deferred(c);
    let mut read = HEAD.to_vec();
    read.extend_from_slice(&[0u8; 256]);
    s.read(&read);
    assert!(s.conn.is_awaiting(), "up to max_head is kept");
    let mut s = deferred(c);
    read.push(0);
    s.read(&read);
    assert!(s.conn.is_closed());
    assert_eq!(s.ev.settled, 1);
}

#[test]
fn eof_while_an_upgrade_is_deferred_settles_it_once() {
    let mut s = deferred(cfg());
    s.read(HEAD);
    s.conn.handle_eof(s.now, &mut s.ev);
    assert!(s.conn.is_closed());
    assert_eq!(s.ev.settled, 1);
    s.conn.abort(CloseCode::ABNORMAL, "", &mut s.ev);
    assert_eq!(s.ev.settled, 1);
}

thread_local! {
    /// Set by a test: every frame goes through the general decoder (`Conn::small_frame` is
    /// skipped), the oracle the short path is compared with.
    pub(super) static GENERAL_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Messages `Conn::small_frame` handed out on this thread.
    pub(super) static SHORT_TAKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Sets [`GENERAL_ONLY`] for its lifetime (cleared even when the run panics).
struct GeneralOnly;

impl GeneralOnly {
    fn set(on: bool) -> Option<GeneralOnly> {
        on.then(|| {
            GENERAL_ONLY.with(|g| g.set(true));
            GeneralOnly
        })
    }
}

impl Drop for GeneralOnly {
    fn drop(&mut self) {
        GENERAL_ONLY.with(|g| g.set(false));
    }
}

/// One client frame, any of them: good or bad opcode, reserved bits, masked or not, 7- and
/// 16-bit lengths, ASCII, UTF-8 or random bytes.
fn any_frame() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let payload = prop_oneof![
        4 => proptest::collection::vec(0x20u8..0x7f, 0..140),
        2 => ".{0,60}".prop_map(|s: String| s.into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
        1 => proptest::collection::vec(0x20u8..0x7f, 120..300),
    ];
    (
        prop_oneof![6 => Just(1u8), 6 => Just(2), 2 => Just(0), 1 => Just(9), 1 => Just(10), 1 => Just(8), 1 => Just(3)],
        prop_oneof![5 => Just(true), 1 => Just(false)],
        prop_oneof![12 => Just(0u8), 1 => Just(4), 1 => Just(1)],
        prop_oneof![12 => Just(true), 1 => Just(false)],
        any::<[u8; 4]>(),
        payload,
    )
        .prop_map(|(op, fin, rsv, masked, key, mut p)| {
            if op >= 8 {
                p.truncate(125);
            }
            let mut f = vec![(u8::from(fin) << 7) | (rsv << 4) | op];
            let m = if masked { 0x80 } else { 0 };
            match p.len() {
                n @ 0..=125 => f.push(m | n as u8),
                n => {
                    f.push(m | 126);
                    f.extend_from_slice(&(n as u16).to_be_bytes());
                }
            }
            if masked {
                f.extend_from_slice(&key);
                crate::proto::mask::apply_mask(&mut p, key, 0);
            }
            f.extend_from_slice(&p);
            f
        })
}

proptest::proptest! {
    /// The short path for whole small frames changes nothing a peer or the handler can see:
    /// any stream of frames, read in any pieces, gives the same messages, the same bytes
    /// out, the same closes (codes and reasons) and the same state as the general decoder.
    #[test]
    fn prop_the_short_path_is_the_general_decoder(
        frames in proptest::collection::vec(any_frame(), 0..12),
        cuts in proptest::collection::vec(1usize..400, 0..6),
        echo in proptest::bool::ANY,
        frame_limit_first in proptest::bool::ANY,
    ) {
        let mut cfg = cfg();
        cfg.write_budget = 1 << 20;
        // Small enough that the generated frames cross them, either one first.
        cfg.limits = if frame_limit_first {
            Limits { max_frame: 200, max_message: 250 }
        } else {
            Limits { max_frame: 250, max_message: 150 }
        };
        let stream: Vec<u8> = frames.concat();
        let run = |general: bool| {
            let _general = GeneralOnly::set(general);
            let mut s = Sim::open(cfg);
            s.ev.echo = echo;
            let mut rest = &stream[..];
            for &c in &cuts {
                let (a, b) = rest.split_at(c.min(rest.len()));
                s.read(a);
                rest = b;
            }
            s.read(rest);
            let state = (s.conn.is_open(), s.conn.is_closed(), s.conn.held(), s.deadline_ms());
            (s.ev.messages, s.ev.texts, s.ev.queue, s.ev.closes, state)
        };
        let short = run(false);
        let general = run(true);
        proptest::prop_assert_eq!(short, general);
    }
}

#[test]
fn the_short_path_takes_small_whole_frames_and_refuses_what_it_must() {
    // Bad UTF-8 in a short text closes with 1007, as the general decoder does.
    let mut s = Sim::open(cfg());
    s.read(&client(OpCode::Text, true, &[b'a', 0xc3, b'(']));
    assert_eq!(s.ev.closes, vec![(1, 1007, "text is not UTF-8".into())]);
    // Over the frame limit: 1009 (the decoder's answer), not delivered.
    let mut c = cfg();
    c.limits = Limits {
        max_frame: 10,
        max_message: 100,
    };
    let mut s = Sim::open(c);
    s.read(&client(OpCode::Binary, true, &[1; 11]));
    assert!(s.ev.messages.is_empty());
    assert_eq!(s.ev.closes[0].1, 1009);
    // An unmasked frame: 1002.
    let mut s = Sim::open(cfg());
    s.read(&[0x82, 0x01, 0x55]);
    assert_eq!(s.ev.closes[0].1, 1002);
    // Several whole frames of 7- and 16-bit lengths in one read, text and binary: all three
    // through the short path.
    let mut s = Sim::open(cfg());
    let taken = SHORT_TAKEN.with(|n| n.get());
    let long = vec![b'x'; 300];
    let mut bytes = client(OpCode::Text, true, b"hello");
    bytes.extend(client(OpCode::Binary, true, &long));
    bytes.extend(client(
        OpCode::Text,
        true,
        "h\u{e9}llo w\u{f6}rld".as_bytes(),
    ));
    s.read(&bytes);
    assert_eq!(
        s.ev.messages,
        vec![
            b"hello".to_vec(),
            long,
            "h\u{e9}llo w\u{f6}rld".as_bytes().to_vec()
        ]
    );
    assert!(s.ev.closes.is_empty());
    assert_eq!(SHORT_TAKEN.with(|n| n.get()) - taken, 3);
}

/// A message that arrives whole in one frame with a 16-bit length comes with the frame that
/// sends it back, laid out over the client's mask key: the server's header for its opcode
/// and length, then the message's own bytes, intact. Shorter messages (also one whose
/// client spent 16 bits on a short length) come without. Text (ASCII or not) and binary,
/// every length class of the short path, in one read.
#[test]
fn a_message_with_a_16_bit_length_comes_with_the_frame_that_sends_it_back() {
    let mut s = Sim::open(cfg());
    let sizes = [0usize, 1, 125, 126, 127, 300, 16 * 1024, 65_535];
    let mut bytes = Vec::new();
    let (mut want_msgs, mut want_frames) = (Vec::new(), Vec::new());
    for (i, &n) in sizes.iter().enumerate() {
        let binary: Vec<u8> = (0..n).map(|j| (j * 31 + i) as u8).collect();
        // n bytes of text, two-byte characters with one ASCII byte where n is odd.
        let text = "\u{e9}".repeat(n / 2) + &"a".repeat(n % 2);
        for (op, p) in [(OpCode::Binary, binary), (OpCode::Text, text.into_bytes())] {
            bytes.extend(client(op, true, &p));
            if p.len() >= 126 {
                let mut frame = encode_header(true, op, p.len() as u64, None).to_vec();
                frame.extend_from_slice(&p);
                want_frames.push(frame);
            }
            want_msgs.push(p);
        }
    }
    let key = [1, 2, 3, 4];
    bytes.extend([0x81, 0x80 | 126, 0, 5]);
    bytes.extend(key);
    bytes.extend(b"short".iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    want_msgs.push(b"short".to_vec());
    let taken = SHORT_TAKEN.with(|n| n.get());
    s.read(&bytes);
    assert!(s.ev.closes.is_empty());
    assert_eq!(
        SHORT_TAKEN.with(|n| n.get()) - taken,
        want_msgs.len() as u64
    );
    assert_eq!(
        s.ev.messages, want_msgs,
        "what the handler saw: the payloads, unmasked"
    );
    assert_eq!(s.ev.replies.len(), want_frames.len());
    for (i, (got, want)) in s.ev.replies.iter().zip(&want_frames).enumerate() {
        assert!(
            got == want,
            "frame {i}: {:?} != {:?}",
            &got[..8],
            &want[..8]
        );
    }
}

proptest::proptest! {
    /// What lets the worker skip computing the deadline after most reads
    /// (`Core::on_data`): while `due_follows_last_rx` holds before and after a read, the
    /// read only moved the deadline later, so a timer set for the old one fires early and is
    /// set again, never late. Also: after every read the worker's budget counts exactly what
    /// the decoder holds (the read that holds nothing skips that bookkeeping). Any frames, read
    /// in any pieces, at any pace, with the pings and closes the timers bring on the way.
    #[test]
    fn prop_a_read_moves_a_quiet_deadline_only_later(
        frames in proptest::collection::vec(any_frame(), 0..12),
        cuts in proptest::collection::vec((1usize..400, 0u64..4000), 0..8),
        echo in proptest::bool::ANY,
    ) {
        let mut cfg = cfg();
        cfg.write_budget = 1 << 20;
        cfg.limits = Limits { max_frame: 250, max_message: 300 };
        // A message clock and a pong timeout that would come before the next ping: either
        // mistaken for a quiet deadline shows as a deadline moved earlier.
        cfg.message_timeout = Some(Duration::from_millis(1000));
        cfg.pong_timeout = Duration::from_millis(5000);
        let stream: Vec<u8> = frames.concat();
        let mut s = Sim::open(cfg);
        s.ev.echo = echo;
        let mut rest = &stream[..];
        let mut ms = 0;
        for &(c, gap) in cuts.iter().chain(std::iter::once(&(usize::MAX, 1))) {
            ms += gap;
            s.at(ms);
            let (a, b) = rest.split_at(c.min(rest.len()));
            rest = b;
            let before = s.conn.due_follows_last_rx().then(|| s.deadline_ms());
            s.read(a);
            if let (Some(before), true) = (before, s.conn.due_follows_last_rx()) {
                proptest::prop_assert!(s.deadline_ms() >= before, "{:?} -> {:?}", before, s.deadline_ms());
            }
            proptest::prop_assert_eq!(s.ev.held.bytes, s.conn.held());
            proptest::prop_assert_eq!(s.conn.held(), s.conn.decoder.buffered_capacity());
        }
    }
}

#[test]
fn a_ping_outstanding_or_a_message_begun_is_not_a_quiet_deadline() {
    let mut s = Sim::open(cfg());
    assert!(s.conn.due_follows_last_rx());
    s.read(&client(OpCode::Text, true, b"hi"));
    assert!(s.conn.due_follows_last_rx());
    // A message begun: its clock may be the earlier deadline.
    s.read(&client(OpCode::Text, false, b"h"));
    assert!(!s.conn.due_follows_last_rx());
    s.read(&client(OpCode::Continuation, true, b"i"));
    assert!(s.conn.due_follows_last_rx());
    // A ping outstanding: the pong's deadline counts from the ping, not the last byte.
    assert_eq!(s.at(3000), Some(Timeout::Ping));
    assert!(!s.conn.due_follows_last_rx());
    s.read(&client(OpCode::Pong, true, b""));
    assert!(s.conn.due_follows_last_rx());
    // Closing: the close timeout.
    s.read(&close_frame(1000, ""));
    assert!(!s.conn.due_follows_last_rx());
}
