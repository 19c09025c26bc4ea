//! The lifecycle of one server connection, as a machine with no I/O and no clock.
//!
//! [`Conn`] holds a connection's phase, its decoder, the bytes of an unfinished head or
//! frame, and its deadlines. Time enters as an argument (`now`); the caller (the worker core)
//! reads the clock once per loop turn, as quinn-proto's callers do.
//!
//! * **Input**: [`Conn::handle_read`] (bytes received), [`Conn::handle_eof`] (the peer shut
//!   its write side), [`Conn::handle_error`] (the socket failed), [`Conn::handle_timeout`],
//!   [`Conn::close`] (the application closes), [`Conn::handle_slow_consumer`] and
//!   [`Conn::handle_flushed`] (the caller's write queue drained).
//! * **Output**: frames the protocol obliges us to send go into the caller's write queue
//!   through [`Events::send`], a ping's pong too while the queue is within the write budget;
//!   over it, the latest ping's pong waits in the machine until [`Conn::poll_transmit`];
//!   handler calls go through [`Events`]; [`Conn::poll_timeout`] is the next
//!   deadline; [`Conn::handle_flushed`] says when to shut the write side; [`Conn::is_closed`]
//!   when to close the socket.
//!
//! Phases: `Handshake` (reading the request head) -> `Open` -> `Closing` (we sent a close
//! frame, waiting for the peer's) -> `Draining` (the close handshake is over, failed, or an
//! HTTP answer was queued: flush, shut our side, wait for the peer's FIN or the close timeout)
//! -> `Closed`. The application's state lives only inside `Open` and `Closing` and is moved
//! out, into [`Events::close`], when the connection leaves them; so `on_close` runs at most
//! once, and exactly once for a connection that opened, by construction.
//!
//! # Bounds under hostile input
//! * The write queue grows only while it is within the write budget: a data send is checked
//!   by the caller, a pong is queued only while the queue is within the budget, and over it
//!   at most one pong waits (a newer ping replaces it: RFC 6455 5.5.3 allows answering only
//!   the latest) until [`Conn::poll_transmit`] finds room for it again; pongs never take
//!   the queue past the budget, so they cannot make the application's next send fail.
//!   [`Conn::wants_read`] is false over the budget or while a pong waits, so the caller stops
//!   reading (read backpressure) and no input can grow the queue. Only a close frame, the last
//!   frame, may be queued over it: a queue never holds more than the budget plus one frame
//!   and a close frame.
//! * End of stream is not an error: what is queued (an HTTP answer, a close echo) is still
//!   sent, then our side is shut, bounded by the close timeout.
//! * A message must be complete within `message_timeout` of its first byte, and the bytes
//!   a worker holds in incomplete messages are bounded by [`Held`] (1013 past it).

use super::assemble::Frames;
use super::close::CloseCode;
use super::deflate::Inflater;
use super::encode::encode_close_frame;
use super::frame::{encode_header, OpCode};
use super::handshake::HeadScanner;
use super::mask::unmask_payload;
use super::utf8;
use super::{Decoded, HandshakeError, Limits, ProtocolError, Role, Status};
use std::time::{Duration, Instant};

/// The limits and deadlines of a connection, shared by all of a worker's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnConfig {
    /// Frame and message size limits.
    pub limits: Limits,
    /// Largest request head.
    pub max_head: usize,
    /// Unsent bytes past which nothing but a close frame is queued and reading stops.
    pub write_budget: usize,
    /// The request head must be complete within this time of the accept.
    pub handshake_timeout: Duration,
    /// Close (1001) a connection from which nothing arrived for this long.
    pub idle_timeout: Option<Duration>,
    /// Ping a connection that was quiet for this long.
    pub ping_interval: Option<Duration>,
    /// Drop (1006) a pinged connection that sent nothing within this time.
    pub pong_timeout: Duration,
    /// How long a close handshake, and the lingering close after it, may take.
    pub close_timeout: Duration,
    /// A message must be complete within this time of its first byte (1008 past it).
    pub message_timeout: Option<Duration>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            limits: Limits::default(),
            max_head: super::handshake::DEFAULT_MAX_HEAD,
            write_budget: 4 << 20,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(120)),
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
            message_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Bytes held in incomplete messages by a worker's connections, and the most allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Bytes held now (assembly buffer capacity, summed).
    pub bytes: usize,
    /// Past this, the connection whose read took the sum over is closed with 1013.
    pub max: usize,
}

impl Held {
    /// Nothing held, at most `max`.
    pub fn new(max: usize) -> Self {
        Held { bytes: 0, max }
    }
}

/// What a handler call asks of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// The handler sent into a queue over the write budget under the close policy: close the
    /// connection as a slow consumer (1008).
    SlowConsumer,
}

/// Which deadline [`Conn::handle_timeout`] acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Timeout {
    /// The request head did not arrive in time: dropped.
    Handshake,
    /// Quiet for the idle timeout: closed with 1001.
    Idle,
    /// Quiet for the ping interval: a ping was queued.
    Ping,
    /// Nothing arrived within the pong timeout after a ping: dropped (1006).
    Pong,
    /// A message did not complete in time: closed with 1008.
    Message,
    /// The peer did not answer our close frame in time: dropped.
    CloseHandshake,
    /// The peer did not shut its side in time after ours: dropped.
    Linger,
}

/// What the caller did with a complete request head ([`Events::request`]).
#[derive(Debug)]
pub enum Head<S> {
    /// The 101 is queued: the connection opens with this application state.
    Open(S),
    /// An HTTP answer is queued (a refusal or a plain response): drain, then close.
    Answered,
    /// The application decides later; the caller then queues its answer and calls
    /// [`Conn::handle_upgrade`]. The handshake deadline still runs meanwhile.
    Deferred,
}

/// The caller's side of a connection: its write queue, its handler and the worker's budget
/// for incomplete messages. The machine calls these while it handles input.
pub trait Events<S> {
    /// Unsent bytes in the connection's write queue.
    fn queued(&self) -> usize;
    /// Whether nothing in the write queue is half sent (it may be discarded cleanly).
    fn at_frame_boundary(&self) -> bool;
    /// Queues a frame (`header` then `payload`).
    fn send(&mut self, header: &[u8], payload: &[u8]);
    /// Drops every unsent byte.
    fn discard(&mut self);
    /// The worker's count of bytes held in incomplete messages.
    fn held(&mut self) -> &mut Held;
    /// A complete request head: queue the 101 and return the application's state, queue
    /// an HTTP answer, or defer the decision (see [`Head`]).
    fn request(&mut self, head: &[u8]) -> Head<S>;
    /// A deferred upgrade is settled: answered, timed out or dropped (for the caller's count
    /// of pending upgrades). Called once for each [`Head::Deferred`].
    fn upgrade_settled(&mut self) {}
    /// The request head could not be read (too large): queue the answer for `e`.
    fn refuse(&mut self, e: &HandshakeError);
    /// The connection opened (`on_open`).
    fn open(&mut self, app: &mut S) -> Verdict;
    /// A data message (`on_message`): only `Text` and `Binary` come here.
    fn message(&mut self, app: &mut S, msg: Decoded<'_>) -> Verdict;
    /// A data message that arrived whole in one frame, with `frame`: the frame that would
    /// send it back (header, then the message's own bytes, which `msg` borrows), laid out
    /// in the input over the client's header. An answer that repeats the message can send
    /// `frame` as one piece. By default the same as [`Events::message`].
    fn message_in_frame(&mut self, app: &mut S, msg: Decoded<'_>, frame: &[u8]) -> Verdict {
        let _ = frame;
        self.message(app, msg)
    }
    /// The connection's life as the application sees it is over (`on_close`).
    fn close(&mut self, app: S, code: CloseCode, reason: &str);
    /// The peer broke the protocol (for logs and counters); the machine closes.
    fn protocol_error(&mut self, _e: &ProtocolError) {}
    /// A read took the worker's incomplete-message bytes past [`Held::max`]; the machine
    /// closes this connection with 1013.
    fn over_incomplete_budget(&mut self) {}
    /// The worker's inflater if this connection negotiated permessage-deflate, else `None`
    /// (RSV1 is then a protocol error).
    fn inflater(&mut self) -> Option<&mut Inflater> {
        None
    }
}

/// Where a connection is in its life. The application's state exists only in `Open` and
/// `Closing`.
#[derive(Debug)]
enum Phase<S> {
    Handshake {
        scanner: HeadScanner,
        since: Stamp,
    },
    /// The request head was read and the application deferred its decision.
    Awaiting {
        /// When the handshake began (its deadline still applies).
        since: Stamp,
    },
    Open {
        app: S,
    },
    Closing {
        /// The application's state and our close: boxed, because only a closing connection
        /// needs the close, and inline it was 32 bytes of every slab entry (with the state
        /// beside it, 8 more).
        ours: Box<OurClose<S>>,
    },
    Draining {
        since: Stamp,
        /// Our write side is shut (after everything queued went out).
        shut: bool,
    },
    Closed,
}

/// The close we sent, while we wait for the peer's: reported to `on_close` when the
/// handshake ends (or the connection drops first).
#[derive(Debug)]
struct OurClose<S> {
    app: S,
    code: CloseCode,
    reason: Box<str>,
    since: Stamp,
}

impl<S> OurClose<S> {
    /// The handshake ended (or the connection dropped first): `on_close` gets our code and
    /// reason, and the application's state back.
    fn report<E: Events<S>>(self, ev: &mut E) {
        let OurClose {
            app, code, reason, ..
        } = self;
        ev.close(app, code, &reason);
    }
}

/// A time as signed nanoseconds from [`EPOCH`], stored offset by 2^63 (so `Option<Stamp>`
/// takes 8 bytes). A connection keeps several times; as `Instant`s (16 bytes each), plus
/// one for the connection's own origin, they were a fifth of an idle connection's slab
/// entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp(std::num::NonZeroU64);

/// The origin of every [`Stamp`]: the first `now` any connection was given. Not a clock
/// read (the machine stays sans-IO, and a simulated clock works as well): any later or
/// earlier `Instant` is a signed offset from it, good for 292 years either way.
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

const STAMP_ZERO: i128 = 1 << 63;

/// The origin of [`Stamp`]s (set from `now` if none is yet), for a caller that takes
/// deadlines in stamp units ([`Conn::due_ns`]) and converts them by one offset.
pub(crate) fn origin(now: Instant) -> Instant {
    *EPOCH.get_or_init(|| now)
}

impl Stamp {
    fn of(now: Instant) -> Stamp {
        // A worker gives every connection of a loop turn the same `now`: converted once.
        thread_local! {
            static LAST: std::cell::Cell<Option<(Instant, Stamp)>> = const { std::cell::Cell::new(None) };
        }
        if let Some((t, s)) = LAST.get() {
            if t == now {
                return s;
            }
        }
        let s = Stamp::convert(now);
        LAST.set(Some((now, s)));
        s
    }

    fn convert(now: Instant) -> Stamp {
        let epoch = origin(now);
        let ns: i128 = match now.checked_duration_since(epoch) {
            Some(d) => d.as_nanos() as i128,
            None => -((epoch - now).as_nanos() as i128),
        };
        let v = (ns + STAMP_ZERO).clamp(1, u64::MAX as i128) as u64;
        Stamp(std::num::NonZeroU64::new(v).unwrap_or(std::num::NonZeroU64::MIN))
    }

    /// `d` later; saturating, 292 years after the origin.
    fn after(self, d: Duration) -> Stamp {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Stamp(self.0.saturating_add(ns))
    }

    fn at(self) -> Instant {
        let epoch = *EPOCH.get().expect("a stamp was made, so the epoch is set");
        let ns = self.0.get() as i128 - STAMP_ZERO;
        let d = std::time::Duration::from_nanos(ns.unsigned_abs() as u64);
        if ns >= 0 {
            epoch.checked_add(d).unwrap_or(epoch)
        } else {
            epoch.checked_sub(d).unwrap_or(epoch)
        }
    }
}

/// What a connection keeps between reads while a frame or message is unfinished, boxed:
/// an idle connection keeps 8 bytes for it in its slab entry instead of 40. The box exists
/// while `tail` is not empty or a message is being assembled, and is freed when neither is
/// true after a read. Its tail travels out of it and back (`take_tail`/`put_tail`) while a
/// read continues it, so a frame spanning several reads costs one buffer, not one per read.
#[derive(Debug, Default)]
struct Partial {
    /// Received bytes not consumed yet: part of a request head, a frame header or a control
    /// frame.
    tail: Vec<u8>,
    /// When the first byte of the message being received arrived.
    msg_start: Option<Stamp>,
    /// This connection's share of [`Held::bytes`] (its assembly buffer's capacity, as last
    /// counted).
    held: usize,
}

/// One server connection's protocol machine. See the module docs.
#[derive(Debug)]
pub struct Conn<S> {
    phase: Phase<S>,
    decoder: Frames,
    /// The unfinished frame or message, if any (`None`, no allocation, almost always).
    partial: Option<Box<Partial>>,
    last_rx: Stamp,
    /// A ping was sent and nothing arrived since: how late it went out, in milliseconds
    /// after `last_rx + ping_interval` (plus one; saturating at 49 days). 4 bytes where the
    /// time it was sent took 8.
    ping_late: Option<std::num::NonZeroU32>,
    /// The pong owed for the latest ping, not yet in the write queue.
    /// Boxed (8 bytes in the slab entry, not 16), and reused by the next ping that waits.
    #[allow(clippy::box_collection)]
    pong: Option<Box<Vec<u8>>>,
    /// The peer shut its write side.
    eof: bool,
    /// The decoder saw the peer's close frame, or was released: nothing more is decoded.
    decoded_close: bool,
}

impl<S> Conn<S> {
    /// A connection accepted at `now`, waiting for its request head. Its limits are the
    /// [`ConnConfig`] given to each call.
    pub fn new(now: Instant) -> Self {
        Conn {
            phase: Phase::Handshake {
                scanner: HeadScanner::new(),
                since: Stamp::of(now),
            },
            decoder: Frames::new(),
            partial: None,
            last_rx: Stamp::of(now),
            ping_late: None,
            pong: None,
            eof: false,
            decoded_close: false,
        }
    }

    /// When the next ping is due: `ping_interval` after the last byte received.
    fn ping_due(&self, cfg: &ConnConfig) -> Option<Stamp> {
        Some(self.last_rx.after(cfg.ping_interval?))
    }

    /// When the connection counts as idle: `idle_timeout` after the last byte received.
    fn idle_due(&self, cfg: &ConnConfig) -> Option<Stamp> {
        Some(self.last_rx.after(cfg.idle_timeout?))
    }

    /// When an unfinished message must be complete: `message_timeout` after it started.
    fn message_due(&self, cfg: &ConnConfig) -> Option<Stamp> {
        Some(
            self.partial
                .as_ref()?
                .msg_start?
                .after(cfg.message_timeout?),
        )
    }

    /// When the pong for the ping sent is overdue: the pong timeout after the ping was due
    /// plus how late it went out.
    fn pong_due(&self, cfg: &ConnConfig) -> Option<Stamp> {
        let late = Duration::from_millis(u64::from(self.ping_late?.get() - 1));
        Some(self.ping_due(cfg)?.after(late).after(cfg.pong_timeout))
    }

    /// Whether the connection is open (messages and events may be sent to it).
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// Whether the request head is still being read, or its answer is deferred.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshake { .. } | Phase::Awaiting { .. })
    }

    /// Whether the application deferred its answer to the upgrade ([`Head::Deferred`]).
    pub fn is_awaiting(&self) -> bool {
        matches!(self.phase, Phase::Awaiting { .. })
    }

    /// Whether the connection is finished: the caller closes the socket.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether the caller should read from the socket: not while the write queue is over
    /// the budget or a pong waits for room in it (read backpressure), nor once closed.
    pub fn wants_read(&self, queued: usize, cfg: &ConnConfig) -> bool {
        // A waiting pong means the queue had no room for it: the peer is not reading.
        !self.is_closed() && queued <= cfg.write_budget && self.pong.is_none()
    }

    /// Whether the caller should flush even with an empty queue: a pong waits, or the write
    /// side is still to be shut.
    pub fn needs_flush(&self) -> bool {
        self.pong.is_some() || matches!(self.phase, Phase::Draining { shut: false, .. })
    }

    /// Whether the next deadline is the ping or the idle close, both counted from the last
    /// byte received (open, no ping outstanding, nothing held): true before and after a
    /// read, the read can only have moved the deadline later, so a timer set for it stands.
    pub(crate) fn due_follows_last_rx(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
            && self.ping_late.is_none()
            && self.partial.is_none()
    }

    /// Bytes this connection holds in an incomplete message.
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.held)
    }

    fn tail_is_empty(&self) -> bool {
        self.partial.as_ref().map_or(true, |p| p.tail.is_empty())
    }

    /// The unconsumed bytes, leaving the tail empty (the rest of the partial state stays).
    fn take_tail(&mut self) -> Vec<u8> {
        self.partial
            .as_mut()
            .map(|p| std::mem::take(&mut p.tail))
            .unwrap_or_default()
    }

    /// Keeps `v` as the tail (an empty one keeps no buffer); frees the box if nothing in it
    /// is left.
    fn put_tail(&mut self, v: Vec<u8>) {
        match &mut self.partial {
            Some(p) => {
                p.tail = if v.is_empty() { Vec::new() } else { v };
                if p.tail.is_empty() && p.msg_start.is_none() && p.held == 0 {
                    self.partial = None;
                }
            }
            None if !v.is_empty() => {
                self.partial = Some(Box::new(Partial {
                    tail: v,
                    ..Partial::default()
                }));
            }
            None => {}
        }
    }

    /// The application's state while the connection is open or closing.
    pub fn app_mut(&mut self) -> Option<&mut S> {
        match &mut self.phase {
            Phase::Open { app } => Some(app),
            Phase::Closing { ours } => Some(&mut ours.app),
            _ => None,
        }
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self, cfg: &ConnConfig) -> Option<Instant> {
        self.due(cfg).map(Stamp::at)
    }

    /// [`Conn::poll_timeout`] in nanoseconds after [`origin`] (negative before it).
    pub(crate) fn due_ns(&self, cfg: &ConnConfig) -> Option<i64> {
        // The stamp's offset from 2^63, in two's complement.
        self.due(cfg).map(|d| (d.0.get() ^ (1 << 63)) as i64)
    }

    /// The next deadline as a stamp: this runs after every read, so in stamps, converted by
    /// the caller if at all.
    fn due(&self, cfg: &ConnConfig) -> Option<Stamp> {
        Some(match &self.phase {
            Phase::Handshake { since, .. } | Phase::Awaiting { since } => {
                since.after(cfg.handshake_timeout)
            }
            Phase::Open { .. } => {
                let quiet = match self.ping_late {
                    Some(_) => earlier(self.pong_due(cfg), self.idle_due(cfg)),
                    // The ping and the idle close both count from the last byte received:
                    // one addition for the earlier of the two.
                    None => {
                        earlier(cfg.ping_interval, cfg.idle_timeout).map(|d| self.last_rx.after(d))
                    }
                };
                earlier(quiet, self.message_due(cfg))?
            }
            Phase::Closing { ours } => ours.since.after(cfg.close_timeout),
            Phase::Draining { since, .. } => since.after(cfg.close_timeout),
            Phase::Closed => return None,
        })
    }

    /// Bytes arrived. They are unmasked in place.
    pub fn handle_read<E: Events<S>>(
        &mut self,
        now: Instant,
        bytes: &mut [u8],
        cfg: &ConnConfig,
        ev: &mut E,
    ) {
        if self.is_closed() {
            return;
        }
        self.last_rx = Stamp::of(now);
        self.ping_late = None;
        let mut buf = self.take_tail();
        let rest = if buf.is_empty() {
            let used = self.process(now, bytes, cfg, ev);
            if used == bytes.len() && self.partial.is_none() && self.decoder.holds_nothing() {
                // Nothing held, before or now (the common case): `put_tail` and `account`
                // would change nothing. (A `release` in `process` settled the budget itself.)
                return;
            }
            if used < bytes.len() && self.reading() {
                bytes[used..].to_vec()
            } else {
                Vec::new()
            }
        } else {
            buf.extend_from_slice(bytes);
            let used = self.process(now, &mut buf, cfg, ev);
            if used < buf.len() && self.reading() {
                buf.drain(..used);
                buf
            } else {
                Vec::new()
            }
        };
        self.put_tail(rest);
        self.account(now, ev);
    }

    /// The peer shut its write side: it will send nothing more. What is queued still goes
    /// out; then our side is shut and the connection closed (bounded by the close timeout).
    pub fn handle_eof<E: Events<S>>(&mut self, now: Instant, ev: &mut E) {
        self.eof = true;
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Handshake { .. } | Phase::Closed => self.release(ev),
            Phase::Awaiting { .. } => {
                ev.upgrade_settled();
                self.release(ev);
            }
            Phase::Open { app } => {
                ev.close(app, CloseCode::ABNORMAL, "connection dropped");
                self.drain(now, ev);
            }
            Phase::Closing { ours } => {
                (*ours).report(ev);
                self.drain(now, ev);
            }
            Phase::Draining { shut: true, .. } => self.release(ev),
            draining @ Phase::Draining { shut: false, .. } => self.phase = draining,
        }
    }

    /// The socket failed (a read or write error): closed at once, the queue dropped.
    pub fn handle_error<E: Events<S>>(&mut self, ev: &mut E) {
        self.abort(CloseCode::ABNORMAL, "connection dropped", ev);
    }

    /// Drops the connection now, with no close frame; `on_close` gets `code` and `reason`
    /// (or our own close's, if one was sent).
    pub fn abort<E: Events<S>>(&mut self, code: CloseCode, reason: &str, ev: &mut E) {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Open { app } => ev.close(app, code, reason),
            Phase::Closing { ours } => (*ours).report(ev),
            Phase::Awaiting { .. } => ev.upgrade_settled(),
            _ => {}
        }
        ev.discard();
        self.release(ev);
    }

    /// Starts a close handshake from our side (a handshaking connection is dropped).
    pub fn close<E: Events<S>>(&mut self, now: Instant, code: CloseCode, reason: &str, ev: &mut E) {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Open { app } => {
                self.pong = None;
                send_close(code, reason, ev);
                self.phase = Phase::Closing {
                    ours: Box::new(OurClose {
                        app,
                        code,
                        reason: reason.into(),
                        since: Stamp::of(now),
                    }),
                };
            }
            Phase::Handshake { .. } => self.abort(CloseCode::ABNORMAL, "", ev),
            awaiting @ Phase::Awaiting { .. } => {
                self.phase = awaiting;
                self.abort(CloseCode::ABNORMAL, "", ev);
            }
            other => self.phase = other,
        }
    }

    /// The write queue is over the budget and more output came under the close policy:
    /// close with 1008 (cleanly if nothing is half sent, else at once). Returns whether the
    /// connection was open or closing (and is now closed).
    pub fn handle_slow_consumer<E: Events<S>>(&mut self, now: Instant, ev: &mut E) -> bool {
        let app = match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Open { app } => app,
            Phase::Closing { ours } => ours.app,
            other => {
                self.phase = other;
                return false;
            }
        };
        let clean = ev.at_frame_boundary();
        ev.discard();
        self.pong = None;
        if clean {
            send_close(CloseCode::POLICY_VIOLATION, "slow consumer", ev);
        }
        ev.close(app, CloseCode::POLICY_VIOLATION, "slow consumer");
        if clean {
            self.drain(now, ev);
        } else {
            self.release(ev);
        }
        true
    }

    /// Moves the pong owed for the latest ping into the write queue, if the queue is within
    /// the budget. Call before flushing.
    pub fn poll_transmit<E: Events<S>>(&mut self, cfg: &ConnConfig, ev: &mut E) {
        match self.pong.take() {
            Some(p) if pong_fits(ev.queued(), p.len(), cfg) => {
                let h = encode_header(true, OpCode::Pong, p.len() as u64, None);
                ev.send(&h, &p[..]);
            }
            waiting => self.pong = waiting,
        }
    }

    /// The caller flushed and `queued` bytes remain. Returns true when the write side should
    /// be shut now (draining, everything sent); after the peer's EOF that ends the
    /// connection.
    pub fn handle_flushed(&mut self, queued: usize) -> bool {
        if queued > 0 {
            return false;
        }
        match &mut self.phase {
            Phase::Draining { shut, .. } if !*shut => {
                *shut = true;
                if self.eof {
                    self.phase = Phase::Closed;
                }
                true
            }
            _ => false,
        }
    }

    /// Acts on the deadline if it has passed; says which.
    pub fn handle_timeout<E: Events<S>>(
        &mut self,
        now: Instant,
        cfg: &ConnConfig,
        ev: &mut E,
    ) -> Option<Timeout> {
        let t = Stamp::of(now);
        match self.due(cfg) {
            Some(d) if t >= d => {}
            _ => return None,
        }
        let passed = |due: Option<Stamp>| due.is_some_and(|due| t >= due);
        Some(match self.phase {
            Phase::Handshake { .. } | Phase::Awaiting { .. } => {
                self.abort(CloseCode::ABNORMAL, "handshake timeout", ev);
                Timeout::Handshake
            }
            Phase::Open { .. } => {
                let idle = self.idle_due(cfg);
                if passed(self.message_due(cfg)) {
                    self.fail(now, CloseCode::POLICY_VIOLATION, "message timeout", ev);
                    Timeout::Message
                } else if passed(idle) {
                    self.close(now, CloseCode::GOING_AWAY, "idle timeout", ev);
                    Timeout::Idle
                } else if self.ping_late.is_some() {
                    self.abort(CloseCode::ABNORMAL, "pong timeout", ev);
                    Timeout::Pong
                } else {
                    // Over the budget the peer is not reading: the ping is not queued, and
                    // unless bytes arrive the pong timeout drops the connection.
                    let ping_at = self.ping_due(cfg).unwrap_or(t);
                    // Rounded up: the pong's deadline is never earlier than before.
                    let late =
                        t.0.get()
                            .saturating_sub(ping_at.0.get())
                            .div_ceil(1_000_000);
                    let late = u32::try_from(late)
                        .unwrap_or(u32::MAX - 1)
                        .min(u32::MAX - 1);
                    self.ping_late = std::num::NonZeroU32::new(late + 1);
                    if ev.queued() <= cfg.write_budget {
                        let h = encode_header(true, OpCode::Ping, 0, None);
                        ev.send(&h, &[]);
                    }
                    Timeout::Ping
                }
            }
            Phase::Closing { .. } => {
                self.abort(CloseCode::ABNORMAL, "close handshake timeout", ev);
                Timeout::CloseHandshake
            }
            Phase::Draining { .. } => {
                self.phase = Phase::Closed;
                ev.discard();
                self.release(ev);
                Timeout::Linger
            }
            Phase::Closed => return None,
        })
    }

    fn reading(&self) -> bool {
        matches!(
            self.phase,
            Phase::Handshake { .. }
                | Phase::Awaiting { .. }
                | Phase::Open { .. }
                | Phase::Closing { .. }
        )
    }

    /// The caller queued the answer to a deferred upgrade: `Some(state)` after a 101 (the
    /// connection opens, and frames the client sent early are processed now), `None` after
    /// a refusal (drain, then close). Ignored unless the upgrade is awaited.
    pub fn handle_upgrade<E: Events<S>>(
        &mut self,
        now: Instant,
        app: Option<S>,
        cfg: &ConnConfig,
        ev: &mut E,
    ) {
        if !self.is_awaiting() {
            return;
        }
        ev.upgrade_settled();
        let Some(app) = app else {
            return self.drain(now, ev);
        };
        self.last_rx = Stamp::of(now);
        self.phase = Phase::Open { app };
        if let Phase::Open { app } = &mut self.phase {
            if ev.open(app) == Verdict::SlowConsumer {
                self.handle_slow_consumer(now, ev);
                return;
            }
        }
        if !self.tail_is_empty() {
            let mut buf = self.take_tail();
            let used = self.frames(now, &mut buf, cfg, ev);
            let rest = if used < buf.len() && self.reading() {
                buf.drain(..used);
                buf
            } else {
                Vec::new()
            };
            self.put_tail(rest);
            self.account(now, ev);
        }
    }

    /// Runs the phase machine over `buf`; returns the bytes consumed.
    #[inline]
    fn process<E: Events<S>>(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        cfg: &ConnConfig,
        ev: &mut E,
    ) -> usize {
        let mut pos = 0;
        if !matches!(self.phase, Phase::Open { .. }) {
            match self.before_open(now, buf, cfg, ev) {
                Ok(n) => pos = n,
                Err(n) => return n,
            }
        }
        if matches!(self.phase, Phase::Open { .. } | Phase::Closing { .. }) {
            pos + self.frames(now, &mut buf[pos..], cfg, ev)
        } else {
            // Draining discards what the peer still sends.
            buf.len()
        }
    }

    /// [`Conn::process`] before the connection is open: the handshake. `Err(n)`: `n` bytes
    /// consumed and nothing more to do with `buf`; `Ok(n)`: go on with the frames after
    /// the `n` bytes of the request head.
    #[inline(never)]
    fn before_open<E: Events<S>>(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        cfg: &ConnConfig,
        ev: &mut E,
    ) -> Result<usize, usize> {
        let mut pos = 0;
        if self.is_awaiting() {
            // A client must wait for the 101 before it sends frames; what it sends early is
            // kept (for after the answer), up to the size of a request head.
            if buf.len() > cfg.max_head {
                self.abort(CloseCode::ABNORMAL, "data before the handshake answer", ev);
                return Err(buf.len());
            }
            return Err(0);
        }
        if let Phase::Handshake { scanner, since } = &mut self.phase {
            let since = *since;
            match scanner.find_end(buf, cfg.max_head) {
                Ok(Status::Partial) => return Err(0),
                Ok(Status::Complete(n)) => {
                    pos = n;
                    match ev.request(&buf[..n]) {
                        Head::Deferred => {
                            self.phase = Phase::Awaiting { since };
                            // What came early in the same read is kept under the same
                            // bound as what comes in later reads (a whole receive buffer
                            // per pending upgrade otherwise).
                            if buf.len() - pos > cfg.max_head {
                                self.abort(CloseCode::ABNORMAL, "data before the answer", ev);
                                return Err(buf.len());
                            }
                            return Err(pos);
                        }
                        Head::Open(app) => {
                            self.last_rx = Stamp::of(now);
                            self.phase = Phase::Open { app };
                            if let Phase::Open { app } = &mut self.phase {
                                if ev.open(app) == Verdict::SlowConsumer {
                                    self.handle_slow_consumer(now, ev);
                                }
                            }
                        }
                        Head::Answered => self.drain(now, ev),
                    }
                }
                Err(e) => {
                    ev.refuse(&e);
                    self.drain(now, ev);
                    return Err(buf.len());
                }
            }
        }
        Ok(pos)
    }

    /// Decodes frames from `buf`; returns the bytes consumed. Whole small frames (most
    /// messages) are taken here; the rest go one at a time through [`Conn::decoded_frame`],
    /// out of line, so that this loop stays a few cache lines of code on the hot path.
    #[inline]
    fn frames<E: Events<S>>(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        cfg: &ConnConfig,
        ev: &mut E,
    ) -> usize {
        let mut pos = 0;
        loop {
            if pos == buf.len() {
                return pos;
            }
            let step = match self.small_frame(now, &mut buf[pos..], cfg, ev) {
                Small::No => self.decoded_frame(now, &mut buf[pos..], cfg, ev),
                taken => taken,
            };
            match step {
                Small::Took(n) => pos += n,
                Small::Stop => return buf.len(),
                Small::No => return pos,
            }
        }
    }

    /// One step of the general decoder over `buf` (any frame [`Conn::small_frame`] does not
    /// take): `Took(n)` for the bytes it consumed, `No` when it needs more bytes, `Stop`
    /// when the connection stopped reading.
    #[inline(never)]
    fn decoded_frame<E: Events<S>>(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        cfg: &ConnConfig,
        ev: &mut E,
    ) -> Small {
        let step = match self.decoder.decode_with(
            buf,
            ev.inflater(),
            cfg.limits,
            Role::Server,
            &mut self.decoded_close,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.protocol_failure(now, &e, ev);
                return Small::Stop;
            }
        };
        let consumed = step.consumed;
        let Some(msg) = step.message else {
            return if consumed == 0 {
                Small::No
            } else {
                Small::Took(consumed)
            };
        };
        match msg {
            Decoded::Text(_) | Decoded::Binary(_) => {
                // Data after we sent our close frame is dropped (RFC 6455 5.5.1).
                if let Phase::Open { app } = &mut self.phase {
                    if ev.message(app, msg) == Verdict::SlowConsumer {
                        self.handle_slow_consumer(now, ev);
                        return Small::Stop;
                    }
                }
            }
            Decoded::Ping(p) if matches!(self.phase, Phase::Open { .. }) => {
                // While its pong fits in the budget every ping is answered at once, in
                // order with the other output (a pong goes before the echo of a message
                // that completes after the ping); pongs never take the queue past the
                // budget, so they cannot make the application's next send fail. Else only the latest ping needs its pong (RFC 6455
                // 5.5.3): it waits here, replacing one not yet queued, until the queue
                // drains (`poll_transmit`); reads stop meanwhile (`wants_read`).
                if self.pong.is_none() && pong_fits(ev.queued(), p.len(), cfg) {
                    let h = encode_header(true, OpCode::Pong, p.len() as u64, None);
                    ev.send(&h, p);
                } else {
                    match &mut self.pong {
                        Some(old) => {
                            old.clear();
                            old.extend_from_slice(p);
                        }
                        slot => *slot = Some(Box::new(p.to_vec())),
                    }
                }
            }
            // Pongs, and pings after we sent our close frame.
            Decoded::Ping(_) | Decoded::Pong(_) => {}
            Decoded::Close(frame) => {
                let (code, reason): (CloseCode, Box<str>) = match frame {
                    Some(f) => (f.code, f.reason.into()),
                    None => (CloseCode::NO_STATUS, "".into()),
                };
                self.peer_closed(now, code, &reason, ev);
                return Small::Stop;
            }
        }
        Small::Took(consumed)
    }

    /// The frame most messages are, decoded without the general decoder: a whole text or
    /// binary message in one masked frame of up to 64 KiB, wholly in `buf`, while nothing is
    /// being assembled and the connection is open. The decoder's checks that such a frame
    /// can fail are made here the same way (the size limits send it to the decoder, which
    /// refuses it; bad UTF-8 closes with 1007). Echoing 20-byte texts 16 in flight it took
    /// the worker from ~740 to ~410 instructions per message (docs/benchmarks.md).
    #[inline]
    fn small_frame<E: Events<S>>(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        cfg: &ConnConfig,
        ev: &mut E,
    ) -> Small {
        #[cfg(test)]
        if tests::GENERAL_ONLY.with(|g| g.get()) {
            return Small::No;
        }
        let (b0, b1) = match *buf {
            [b0, b1, ..] => (b0, b1),
            _ => return Small::No,
        };
        // FIN, no reserved bit, text or binary; masked.
        if (b0 != 0x81 && b0 != 0x82) || b1 & 0x80 == 0 {
            return Small::No;
        }
        let (hlen, len) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(&[hi, lo]) => (8, usize::from(u16::from_be_bytes([hi, lo]))),
                _ => return Small::No,
            },
            127 => return Small::No,
            n => (6, usize::from(n)),
        };
        if buf.len() < hlen + len
            || len > cfg.limits.max_frame
            || len > cfg.limits.max_message
            || self.decoded_close
            || self.decoder.is_assembling()
        {
            return Small::No;
        }
        let Phase::Open { app } = &mut self.phase else {
            return Small::No;
        };
        let (head, rest) = buf.split_at_mut(hlen);
        let key = [
            head[hlen - 4],
            head[hlen - 3],
            head[hlen - 2],
            head[hlen - 1],
        ];
        // With a 16-bit length, the header of the frame that repeats this message is as long
        // as the client's mask key (copied out above): it goes over it, so that an answer
        // which sends the message back (an echo) is one contiguous piece
        // (`Events::message_in_frame`; the runtime writes large ones at once). Shorter
        // messages are queued, and copied, whatever their layout.
        let (msg, frame) = if hlen == 8 && len >= 126 {
            let header = [b0, 126, head[2], head[3]];
            head[4..8].copy_from_slice(&header);
            let frame = &mut buf[4..8 + len];
            if b0 == 0x81 {
                match utf8::unmask_text_in(frame, 4, key) {
                    Ok((frame, t)) => (Decoded::Text(t), Some(frame)),
                    Err(e) => {
                        self.protocol_failure(now, &e, ev);
                        return Small::Stop;
                    }
                }
            } else {
                unmask_payload(&mut frame[4..], key);
                let frame = &*frame;
                (Decoded::Binary(&frame[4..]), Some(frame))
            }
        } else {
            let payload = &mut rest[..len];
            if b0 == 0x81 {
                match utf8::unmask_text(payload, key) {
                    Ok(t) => (Decoded::Text(t), None),
                    Err(e) => {
                        self.protocol_failure(now, &e, ev);
                        return Small::Stop;
                    }
                }
            } else {
                unmask_payload(payload, key);
                (Decoded::Binary(&*payload), None)
            }
        };
        #[cfg(test)]
        tests::SHORT_TAKEN.with(|n| n.set(n.get() + 1));
        let verdict = match frame {
            Some(frame) => ev.message_in_frame(app, msg, frame),
            None => ev.message(app, msg),
        };
        if verdict == Verdict::SlowConsumer {
            self.handle_slow_consumer(now, ev);
            return Small::Stop;
        }
        Small::Took(hlen + len)
    }

    /// The peer broke the protocol: reported, then closed with the error's code and reason.
    fn protocol_failure<E: Events<S>>(&mut self, now: Instant, e: &ProtocolError, ev: &mut E) {
        ev.protocol_error(e);
        self.fail(now, e.close_code(), e.reason(), ev);
    }

    /// The peer sent a close frame.
    fn peer_closed<E: Events<S>>(
        &mut self,
        now: Instant,
        code: CloseCode,
        reason: &str,
        ev: &mut E,
    ) {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Open { app } => {
                // Echo the status code (RFC 6455 5.5.1); a close without one is answered 1000.
                let echo = if code == CloseCode::NO_STATUS {
                    CloseCode::NORMAL
                } else {
                    code
                };
                self.pong = None;
                send_close(echo, "", ev);
                ev.close(app, code, reason);
                self.drain(now, ev);
            }
            Phase::Closing { ours } => {
                (*ours).report(ev);
                self.drain(now, ev);
            }
            other => self.phase = other,
        }
    }

    /// Closes for a fault (the peer's or a limit): our close frame if still open, then
    /// `on_close` with `code`, then draining.
    fn fail<E: Events<S>>(&mut self, now: Instant, code: CloseCode, reason: &str, ev: &mut E) {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Open { app } => {
                self.pong = None;
                send_close(code, reason, ev);
                ev.close(app, code, reason);
                self.drain(now, ev);
            }
            Phase::Closing { ours } => {
                ev.close(ours.app, code, reason);
                self.drain(now, ev);
            }
            other => self.phase = other,
        }
    }

    /// Enters `Draining` (the application's state, if any, has been handed back).
    fn drain<E: Events<S>>(&mut self, now: Instant, ev: &mut E) {
        self.phase = Phase::Draining {
            since: Stamp::of(now),
            shut: false,
        };
        self.release(ev);
    }

    /// Frees what reading needed: the unfinished bytes and the assembly buffer, returned to
    /// the worker's budget; and a pong not sent yet (no pong follows a close).
    fn release<E: Events<S>>(&mut self, ev: &mut E) {
        self.pong = None;
        let held = self.held();
        self.partial = None;
        self.decoder.release();
        self.decoded_close = true;
        let h = ev.held();
        h.bytes = h.bytes.saturating_sub(held);
    }

    /// After a read: starts or ends the message clock, and settles this connection's share
    /// of the worker's incomplete-message bytes (closing it with 1013 past the budget).
    fn account<E: Events<S>>(&mut self, now: Instant, ev: &mut E) {
        if !matches!(self.phase, Phase::Open { .. } | Phase::Closing { .. }) {
            return;
        }
        // A message handed out in this read is done with: its buffer goes now, not on the
        // next read (which may never come to an idle connection).
        self.decoder.drop_delivered();
        let now_held = self.decoder.buffered_capacity();
        let old_held = self.held();
        if self.decoder.is_assembling() || !self.tail_is_empty() {
            let t = Stamp::of(now);
            let p = self.partial.get_or_insert_with(Box::default);
            p.msg_start.get_or_insert(t);
            p.held = now_held;
        } else {
            // Nothing assembling: the decoder holds no buffer.
            debug_assert_eq!(now_held, 0);
            self.partial = None;
        }
        let grew = now_held > old_held;
        let h = ev.held();
        h.bytes = h.bytes.saturating_sub(old_held) + now_held;
        if grew && h.bytes > h.max {
            ev.over_incomplete_budget();
            self.fail(
                now,
                CloseCode::TRY_AGAIN_LATER,
                "incomplete messages over budget",
                ev,
            );
        }
    }
}

/// The earlier of two optional times (or durations); `None` only if both are.
fn earlier<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What [`Conn::small_frame`] (or [`Conn::decoded_frame`]) did with the bytes.
enum Small {
    /// From `small_frame`: not such a frame, the general decoder takes it. From
    /// `decoded_frame`: no whole frame yet, more bytes are needed.
    No,
    /// Decoded and handed out: this many bytes.
    Took(usize),
    /// The connection stopped reading (closed, or failed).
    Stop,
}

/// Queues our close frame. A code that may not appear in one (1005, 1006 and 1015 name what
/// an endpoint saw, and codes outside the RFC's ranges mean nothing to the peer, RFC 6455
/// 7.4) goes out as a close frame with no code and no reason: the peer reports 1005.
fn send_close<S, E: Events<S>>(code: CloseCode, reason: &str, ev: &mut E) {
    let mut frame = Vec::with_capacity(4 + reason.len());
    if code.is_allowed_on_wire() {
        encode_close_frame(code, reason, &mut frame);
    } else {
        frame.extend_from_slice(&[0x80 | OpCode::Close.as_u8(), 0]);
    }
    ev.send(&frame, &[]);
}

/// Whether a pong for a ping of `len` bytes may be queued behind `queued` bytes: it must keep
/// the queue within the write budget (an empty queue always takes it).
fn pong_fits(queued: usize, len: usize, cfg: &ConnConfig) -> bool {
    queued == 0 || queued + 2 + len <= cfg.write_budget
}

#[cfg(test)]
mod tests;
