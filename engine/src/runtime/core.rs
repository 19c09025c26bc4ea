//! The connection logic of a worker, written once for every backend.
//!
//! A backend (see [`crate::driver`]) owns the syscalls. It calls into [`Core`] with what
//! happened (a connection accepted, bytes received, end of stream, a timer tick, a wake-up)
//! and reads back what to do: connections with output to flush ([`Core::take_dirty`]),
//! sockets to shut or close ([`Core::after_flush`], [`Core::pop_dead`]). A backend touches a
//! connection only through [`Core::wire`] (its socket handle and unsent output) and the
//! methods of `Core`; every field is private. Nothing in this file makes a syscall.
//!
//! Each connection's lifecycle (phases, deadlines, the pong and close-echo obligations, end
//! of stream, budgets) is its sans-IO machine, [`crate::proto::conn::Conn`]. `Core` keeps
//! the slab, the write queues, the handler calls, broadcast and the inbox; it reads the clock
//! once per loop turn and passes `now` to the machines. What a callback's `Ctx` writes into
//! is the [`Outbox`] (`runtime/outbox.rs`, a layer below the handler), which `Core` builds
//! for each callback and whose deferred actions it applies once the callback returns.

use super::compress::Compression;
use super::config::{Config, SlowConsumerPolicy};
use super::handle::{Handle, Shared};
use super::inbox::{Answer, BindOp, Command, WorkerShared};
use super::outbox::{Deferred, Env, Outbox, Own};
use super::queue::{BufPool, WriteNow, WriteQueue};
use super::stats::{add_own, WorkerStats};
use super::timer::{millis, TimerWheel};
use super::upgrade::{self, DeferSlot, HttpResponse, Reject, Upgrade};
use crate::broadcast::registry::{Added, Caps, Interest, Registry, Subs};
use crate::broadcast::{route, scratch_spike, Event, OwnedTarget, ReceiptTo};
use crate::handler::{Ctx, Handler};
use crate::proto::conn::{self as machine, ConnConfig, Events, Head, Held, Timeout, Verdict};
use crate::proto::deflate::{self, Agreed, Inflater, MAX_WINDOW_BITS};
use crate::proto::handshake::{parse_request, AcceptKey, EMPTY_HEADER, MAX_HEADERS};
use crate::proto::{self, CloseCode, HandshakeError};
use crate::types::{ConnId, Message, GEN_MASK};
use slab::Slab;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timer granularity.
const TICK_MS: u64 = 100;

/// How far ahead a timer entry may be due, in ticks (3.4 years): a later deadline is
/// scheduled at this distance and scheduled again when it fires.
const MAX_AHEAD: u64 = 1 << 30;

/// A tick as a connection keeps it: 32 bits (4 bytes of its slab entry, not 8), wrapping
/// after 13.6 years of a worker's uptime, never 0 (which means "no entry"). Every live
/// entry is due within [`MAX_AHEAD`] ticks of now, so two tags compare by their wrapping
/// difference. Two ticks 2^32 apart share a tag; the worst a stale entry that matches can
/// do is make the worker look at the connection's deadline early, which is harmless.
fn tick_tag(tick: u64) -> u32 {
    (tick as u32).max(1)
}

/// Whether the tick tagged `a` comes before the one tagged `b` (both within 2^31 ticks of
/// each other).
fn tag_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// One connection's entry in the worker's slab.
#[derive(Debug)]
pub(crate) struct Conn<S, Io> {
    /// The backend's handle on the socket.
    io: Io,
    out: WriteQueue,
    gen: u32,
    /// The protocol machine; the application's state lives inside it.
    machine: machine::Conn<S>,
    /// Keys and topics this connection is bound to (allocated on its first binding).
    subs: Option<Box<Subs>>,
    /// The live timer entry's tick, as a [`tick_tag`] (0: none).
    timer_tick: u32,
    flags: Flags,
    /// permessage-deflate: 0 if not negotiated, else the window (bits) agreed for what we
    /// send. The connection holds no compression state: it is the worker's.
    deflate: u8,
}

/// A connection's yes/no state, one bit each (as four `bool`s they took 8 bytes of every
/// slab entry, with the padding they caused).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flags(u8);

impl Flags {
    /// In the worker's dirty list: output to flush at the end of the turn.
    pub(crate) const DIRTY: u8 = 1;
    /// Closed for the core: its socket is closed once the backend takes it
    /// ([`Core::pop_dead`]).
    pub(crate) const DEAD: u8 = 2;
    /// Reading stopped because the write queue was over the budget (read backpressure).
    pub(crate) const PAUSED: u8 = 4;
    /// The write queue went over the high-water mark: `on_drain` is owed once it is down to
    /// half of it.
    pub(crate) const DRAIN_OWED: u8 = 8;
    /// A callback closed its own connection; the close is applied after the read. Until then
    /// the read's later messages are not delivered, and callbacks cannot send to it.
    pub(crate) const CLOSE_ASKED: u8 = 16;

    pub(crate) fn has(self, f: u8) -> bool {
        self.0 & f != 0
    }

    pub(crate) fn set(&mut self, f: u8, on: bool) {
        if on {
            self.0 |= f;
        } else {
            self.0 &= !f;
        }
    }
}

/// A backend's view of one connection: its socket handle and its unsent output, the only
/// parts of a connection a backend touches (through [`Core::wire`]).
pub(crate) struct Wire<'a, Io> {
    pub(crate) io: &'a mut Io,
    pub(crate) out: Output<'a>,
    dead: bool,
}

impl<Io> Wire<'_, Io> {
    /// The connection is closed for the core: the backend closes its socket once
    /// [`Core::pop_dead`] hands it over, and sends nothing new on it.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead
    }
}

/// A connection's unsent output as a backend writes it: slices to hand to the kernel, and
/// how much of them the kernel took (the written chunks go back to the worker's pool).
pub(crate) struct Output<'a> {
    queue: &'a mut WriteQueue,
    pool: &'a mut BufPool,
}

impl Output<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_sending(&self) -> bool {
        self.queue.is_sending()
    }

    pub(crate) fn io_slices<'b>(&'b self, out: &mut [std::io::IoSlice<'b>]) -> usize {
        self.queue.io_slices(out)
    }

    /// The unsent bytes when they are all in one chunk; see [`WriteQueue::single_slice`].
    pub(crate) fn single_slice(&self) -> Option<&[u8]> {
        self.queue.single_slice()
    }

    /// A readiness backend wrote `n` bytes.
    pub(crate) fn advance(&mut self, n: usize) {
        self.queue.advance(n, self.pool);
    }

    /// A completion backend pins the first `max` chunks for one send; see
    /// [`WriteQueue::begin_send`].
    pub(crate) fn begin_send(&mut self, max: usize) -> usize {
        self.queue.begin_send(max)
    }

    /// The send begun by [`Output::begin_send`] wrote `n` bytes.
    pub(crate) fn end_send(&mut self, n: usize) {
        self.queue.end_send(n, self.pool);
    }
}

/// What the backend should do with a connection after flushing it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterFlush {
    Nothing,
    /// Everything is sent in `Draining`: shut the write side (the peer sees FIN).
    ShutdownWrite,
}

/// A worker's backend-independent state.
pub(crate) struct Core<H: Handler, Io> {
    handler: H,
    conns: Slab<Conn<H::State, Io>>,
    cfg: Arc<Config>,
    /// The machines' limits and deadlines, from `cfg`.
    conn_cfg: ConnConfig,
    shared: Arc<Shared>,
    handle: Handle,
    worker: u8,
    /// This node's id in its cluster (0: not in one), carried in every `ConnId` made here.
    node: u8,
    next_gen: u32,
    epoch: Instant,
    /// Where the connections' stamps count from ([`machine::origin`]) relative to `epoch`,
    /// in ns: a deadline in stamp units becomes one on this worker's clock by one add. The
    /// origin is whatever `now` first made a stamp in the process (a simulated clock of the
    /// public `proto::conn::Conn` may set it before or after the real time).
    stamp_offset_ns: i64,
    /// The time of this loop turn (read once per turn by [`Core::update_now`]).
    now: Instant,
    now_ms: u64,
    timers: TimerWheel,
    fired: Vec<(u32, u32, u64)>,
    /// Keys with output to flush.
    dirty: Vec<usize>,
    /// [`Core::apply_deferred_now`] is running: a call from inside it (a slow consumer
    /// closed by a delivery, whose `on_close` publishes) leaves the new actions to its loop.
    applying: bool,
    /// Keys whose socket must be closed and slot freed.
    dead: Vec<usize>,
    /// What callbacks write into (pool, deferred actions, key and topic tables).
    env: Env,
    /// Slots gathered for one delivery (kept to avoid allocating per event).
    scratch: Vec<u32>,
    shutting_down: bool,
    shutdown_deadline: u64,
    commands: Vec<Command>,
    max_conns: usize,
}

/// The worker's side of one connection, as its machine sees it: the write queue, the
/// handler (with a [`Ctx`] for each call), the counters.
struct Ev<'a, H: Handler> {
    handler: &'a mut H,
    out: &'a mut WriteQueue,
    io: &'a dyn WriteNow,
    subs: &'a mut Option<Box<Subs>>,
    flags: &'a mut Flags,
    deflate: &'a mut u8,
    env: &'a mut Env,
    handle: &'a Handle,
    stats: &'a WorkerStats,
    cfg: &'a Config,
    id: ConnId,
}

impl<H: Handler> Ev<'_, H> {
    /// Calls the handler for an open connection, with a context that sends into its queue.
    fn call(
        &mut self,
        app: &mut H::State,
        f: impl FnOnce(&mut H, &mut Ctx<'_>, &mut H::State),
    ) -> Verdict {
        self.call_with(app, None, f)
    }

    /// A data message for `on_message`, with the frame that sends it back when it has one
    /// (`reply`, see [`Outbox::send_own`]).
    #[inline(always)]
    fn on_message(
        &mut self,
        app: &mut H::State,
        msg: proto::Decoded<'_>,
        reply: Option<&[u8]>,
    ) -> Verdict {
        let Ok(data) = Message::try_from(msg) else {
            return Verdict::Continue;
        };
        add_own(&self.stats.messages_in, 1);
        if self.flags.has(Flags::CLOSE_ASKED) {
            // Closed by the application earlier in this read: what follows is not delivered.
            return Verdict::Continue;
        }
        self.call_with(app, reply, |h, ctx, s| h.on_message(ctx, s, data))
    }

    /// [`Ev::call`] for a connection that can no longer send (closing): its callback's sends
    /// answer `Closed`, as they do in `on_close`.
    fn call_unsendable(
        &mut self,
        app: &mut H::State,
        f: impl FnOnce(&mut H, &mut Ctx<'_>, &mut H::State),
    ) {
        let mut ctx = Ctx {
            out: Outbox::new(self.id, None, &mut *self.env),
            handle: self.handle,
        };
        f(&mut *self.handler, &mut ctx, app);
    }

    /// [`Ev::call`] for a message that arrived in `reply`, the frame that sends it back
    /// (see [`Outbox::send_own`]).
    #[inline(always)]
    fn call_with(
        &mut self,
        app: &mut H::State,
        reply: Option<&[u8]>,
        f: impl FnOnce(&mut H, &mut Ctx<'_>, &mut H::State),
    ) -> Verdict {
        let mut ctx = Ctx {
            out: Outbox::new(
                self.id,
                Some(Own {
                    out: &mut *self.out,
                    io: self.io,
                    subs: &mut *self.subs,
                    flags: &mut *self.flags,
                    deflate: *self.deflate,
                }),
                &mut *self.env,
            )
            .with_reply(reply),
            handle: self.handle,
        };
        f(&mut *self.handler, &mut ctx, app);
        let (sent, dropped, over) = (ctx.out.sent, ctx.out.dropped, ctx.out.over);
        add_own(&self.stats.messages_out, sent);
        if ctx.out.written > 0 {
            add_own(&self.stats.bytes_out, ctx.out.written);
        }
        add_own(&self.stats.drops, dropped);
        if !over {
            return Verdict::Continue;
        }
        tracing::info!(conn = %self.id, queued = self.out.len(), budget = self.cfg.write_budget, "closing slow consumer");
        self.stats
            .slow_consumer_closes
            .fetch_add(1, Ordering::Relaxed);
        Verdict::SlowConsumer
    }

    /// Answers a plain HTTP request.
    fn http_response(&mut self, resp: &HttpResponse) {
        let mut out = Vec::new();
        upgrade::write_response(&mut out, resp);
        self.out.push_owned(out);
    }

    /// Queues the answer to an upgrade, now or deferred: the 101 (and returns the state the
    /// connection opens with) or the rejection.
    fn finish_upgrade(
        &mut self,
        result: Result<H::State, Reject>,
        accept: &AcceptKey,
        protocol: Option<&str>,
        headers: &[(String, String)],
        offer: Option<Agreed>,
    ) -> Option<H::State> {
        let state = match result {
            Ok(s) => s,
            Err(rej) => {
                tracing::debug!(conn = %self.id, status = rej.status, "upgrade rejected by the handler");
                self.stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.http_response(&upgrade::rejection(rej));
                return None;
            }
        };
        // permessage-deflate, unless the application answers the extensions itself.
        let agreed = offer.filter(|_| {
            !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
        });
        let mut extra = headers.to_vec();
        if let Some(a) = agreed {
            extra.push(("Sec-WebSocket-Extensions".into(), a.response()));
        }
        // Not from the pool: the 101 is owed whole (below), and goes when it is written.
        let mut resp = Vec::with_capacity(256);
        if !upgrade::write_accept(&mut resp, accept, protocol, &extra) {
            // The handler's state is dropped: the connection never opened.
            drop(state);
            self.out.push_owned(resp);
            return None;
        }
        self.out.push_owned(resp);
        // Owed whole: a burst delivered before it is flushed may close this connection as a
        // slow consumer, and then it must not lose its 101 to a close frame.
        self.out.owe_front();
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        *self.deflate = agreed.map_or(0, |a| a.window_bits());
        Some(state)
    }

    /// Refuses a request with the status its error maps to.
    fn http_error(&mut self, e: &HandshakeError) {
        tracing::debug!(error = %e, "handshake refused");
        self.stats
            .handshake_failures
            .fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        e.write_response(&mut out);
        self.out.push_owned(out);
    }
}

impl<H: Handler> Events<H::State> for Ev<'_, H> {
    fn queued(&self) -> usize {
        self.out.len()
    }

    fn at_frame_boundary(&self) -> bool {
        self.out.at_frame_boundary()
    }

    fn send(&mut self, header: &[u8], payload: &[u8]) {
        self.out.push_parts(&mut self.env.pool, &[header, payload]);
    }

    fn discard(&mut self) {
        self.out.clear(&mut self.env.pool);
    }

    fn held(&mut self) -> &mut Held {
        &mut self.env.held
    }

    /// A complete request head arrived.
    fn request(&mut self, head: &[u8]) -> Head<H::State> {
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        let req = match parse_request(head, &mut headers) {
            Ok(r) => r,
            Err(e) => {
                self.http_error(&e);
                return Head::Answered;
            }
        };
        let client_key = match req.validate() {
            Ok(k) => k,
            // A plain request (no WebSocket handshake headers): the application answers it
            // first, then the metrics path if configured on this port, else 426.
            Err(HandshakeError::NotUpgrade) if req.method == "GET" => {
                match self.handler.on_http(&req) {
                    Some(resp) => self.http_response(&resp),
                    None if self.cfg.metrics_path.as_deref() == Some(req.path) => {
                        let resp = crate::runtime::metrics::response(self.handle);
                        self.http_response(&resp)
                    }
                    None => self.http_error(&HandshakeError::NotUpgrade),
                }
                return Head::Answered;
            }
            Err(e) => {
                self.http_error(&e);
                return Head::Answered;
            }
        };
        if !req.origin_allowed(&self.cfg.allowed_origins) {
            self.http_error(&HandshakeError::OriginNotAllowed);
            return Head::Answered;
        }
        let accept = AcceptKey::from_key(client_key.as_bytes());
        // What permessage-deflate offer we could accept (decided with the answer: the
        // application may answer the extensions itself).
        let offer = self
            .env
            .compression
            .is_some()
            .then(|| deflate::negotiate(req.extensions()))
            .flatten();
        let mut upgrade = Upgrade::default();
        if self.env.pending_upgrades < self.cfg.max_pending_upgrades {
            upgrade.slot = Some(DeferSlot {
                handle: self.handle.clone(),
                id: self.id,
                accept,
                offer,
            });
        }
        let result = self.handler.on_upgrade(&req, &mut upgrade);
        if upgrade.deferred {
            // The answer comes through the inbox (`Core::answer_upgrade`); what on_upgrade
            // returned is not it.
            drop(result);
            self.env.pending_upgrades += 1;
            self.stats.upgrades_deferred.fetch_add(1, Ordering::Relaxed);
            return Head::Deferred;
        }
        let Upgrade {
            protocol, headers, ..
        } = upgrade;
        match self.finish_upgrade(result, &accept, protocol.as_deref(), &headers, offer) {
            Some(state) => Head::Open(state),
            None => Head::Answered,
        }
    }

    fn upgrade_settled(&mut self) {
        self.env.pending_upgrades = self.env.pending_upgrades.saturating_sub(1);
    }

    fn refuse(&mut self, e: &HandshakeError) {
        self.http_error(e);
    }

    fn open(&mut self, app: &mut H::State) -> Verdict {
        self.call(app, |h, ctx, s| h.on_open(ctx, s))
    }

    #[inline(always)]
    fn message(&mut self, app: &mut H::State, msg: proto::Decoded<'_>) -> Verdict {
        self.on_message(app, msg, None)
    }

    #[inline(always)]
    fn message_in_frame(
        &mut self,
        app: &mut H::State,
        msg: proto::Decoded<'_>,
        frame: &[u8],
    ) -> Verdict {
        self.on_message(app, msg, Some(frame))
    }

    fn close(&mut self, app: H::State, code: CloseCode, reason: &str) {
        let mut ctx = Ctx {
            out: Outbox::new(self.id, None, &mut *self.env),
            handle: self.handle,
        };
        self.handler.on_close(&mut ctx, app, code, reason);
    }

    fn protocol_error(&mut self, e: &proto::ProtocolError) {
        let code = e.close_code();
        tracing::debug!(conn = %self.id, error = %e, "protocol error");
        if let Some(c) = self.stats.protocol_closes.get((code.0 - 1000) as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn inflater(&mut self) -> Option<&mut Inflater> {
        match *self.deflate {
            0 => None,
            _ => self.env.compression.as_mut().map(|c| &mut c.inflater),
        }
    }

    fn over_incomplete_budget(&mut self) {
        tracing::info!(conn = %self.id, held = self.env.held.bytes, budget = self.env.held.max, "incomplete messages over the worker's budget: closing with 1013");
        self.stats
            .incomplete_budget_closes
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl<H: Handler, Io: WriteNow> Core<H, Io> {
    pub(crate) fn new(handler: H, cfg: Arc<Config>, shared: Arc<Shared>, worker: u8) -> Self {
        // A server-wide limit (the workers share one count): the kernel spreads connections
        // over the workers' SO_REUSEPORT listeners by a hash, not evenly, so an even
        // per-worker share would refuse connections while other workers have room. Without a
        // limit the shared count is not kept (no cache line bounced between workers).
        let max_conns = match cfg.max_connections {
            0 => usize::MAX,
            m => m,
        };
        let budget = cfg.write_budget;
        let high_water = cfg.high_water.min(budget);
        let caps = Caps {
            keys: cfg.max_keys_per_conn,
            topics: cfg.max_topics_per_conn,
        };
        let policy = cfg.slow_consumer;
        let held = Held::new(cfg.incomplete_budget);
        let compression = cfg.deflate.map(Compression::new);
        let conn_cfg = cfg.conn_config();
        let epoch = Instant::now();
        let origin = machine::origin(epoch);
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let stamp_offset_ns = match origin.checked_duration_since(epoch) {
            Some(ahead) => ns(ahead),
            None => -ns(epoch - origin),
        };
        let node = shared.node();
        let mut registry = Registry::with_caps(caps);
        registry.watch = shared.cluster.clone().map(|cluster| {
            Box::new(crate::cluster::Watch { cluster, worker }) as Box<dyn Interest>
        });
        Core {
            handler,
            conns: Slab::new(),
            cfg,
            conn_cfg,
            handle: Handle {
                shared: shared.clone(),
            },
            shared,
            worker,
            node,
            next_gen: 1,
            epoch,
            stamp_offset_ns,
            now: epoch,
            now_ms: 0,
            timers: TimerWheel::new(),
            fired: Vec::new(),
            dirty: Vec::new(),
            applying: false,
            dead: Vec::new(),
            env: Env {
                budget,
                high_water,
                registry,
                policy,
                held,
                compression,
                ..Env::default()
            },
            scratch: Vec::new(),
            shutting_down: false,
            shutdown_deadline: 0,
            commands: Vec::new(),
            max_conns,
        }
    }

    fn me(&self) -> &WorkerShared {
        &self.shared.workers[self.worker as usize]
    }

    /// Reads the clock once per loop turn.
    pub(crate) fn update_now(&mut self) {
        self.now = Instant::now();
        self.now_ms = self.now.saturating_duration_since(self.epoch).as_millis() as u64;
    }

    /// How long the backend may sleep: not at all with output to flush, else until the next
    /// tick while timers are pending.
    pub(crate) fn poll_timeout(&self) -> Option<Duration> {
        if !self.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        if self.timers.is_empty() && !self.shutting_down {
            return None;
        }
        let next = (self.now_ms / TICK_MS + 1) * TICK_MS;
        Some(Duration::from_millis(next - self.now_ms))
    }

    /// Whether a new connection can be taken (else the backend answers 503 and closes).
    pub(crate) fn can_accept(&self) -> bool {
        !self.shutting_down
            && self.conns.len() < 1 << 24
            && self.shared.open_conns.load(Ordering::Relaxed) < self.max_conns
    }

    /// Counts a connection refused because the server is full.
    pub(crate) fn count_rejected(&self) {
        self.me()
            .stats
            .rejected_full
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The slab key the next [`Core::insert`] will use (backends register it first).
    pub(crate) fn next_key(&self) -> usize {
        self.conns.vacant_key()
    }

    /// Takes a newly accepted connection; returns its key.
    pub(crate) fn insert(&mut self, io: Io) -> usize {
        let gen = self.next_gen;
        self.next_gen = (self.next_gen.wrapping_add(1) & GEN_MASK).max(1);
        let key = self.conns.insert(Conn {
            io,
            out: WriteQueue::default(),
            gen,
            machine: machine::Conn::new(self.now),
            subs: None,
            timer_tick: 0,
            flags: Flags::default(),
            deflate: 0,
        });
        if self.max_conns != usize::MAX {
            self.shared.open_conns.fetch_add(1, Ordering::Relaxed);
        }
        let st = &self.me().stats;
        st.accepted.fetch_add(1, Ordering::Relaxed);
        st.connections.fetch_add(1, Ordering::Relaxed);
        self.schedule(key);
        key
    }

    /// Frees a dead connection's slot, returning its socket for the backend to close.
    pub(crate) fn remove(&mut self, key: usize) -> Option<Io> {
        let conn = self.conns.try_remove(key)?;
        debug_assert!(conn.machine.is_closed(), "on_close must have run");
        if let Some(subs) = conn.subs {
            self.env.registry.remove_all(*subs, key as u32);
        }
        let mut out = conn.out;
        out.clear(&mut self.env.pool);
        if self.max_conns != usize::MAX {
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
        }
        self.me().stats.connections.fetch_sub(1, Ordering::Relaxed);
        Some(conn.io)
    }

    /// The socket handle and unsent output of `key`, for the backend.
    pub(crate) fn wire(&mut self, key: usize) -> Option<Wire<'_, Io>> {
        let conn = self.conns.get_mut(key)?;
        Some(Wire {
            dead: conn.flags.has(Flags::DEAD),
            io: &mut conn.io,
            out: Output {
                queue: &mut conn.out,
                pool: &mut self.env.pool,
            },
        })
    }

    /// The backend's handle on `key`'s socket.
    pub(crate) fn io(&self, key: usize) -> Option<&Io> {
        self.conns.get(key).map(|c| &c.io)
    }

    /// The backend's handle on `key`'s socket.
    pub(crate) fn io_mut(&mut self, key: usize) -> Option<&mut Io> {
        self.conns.get_mut(key).map(|c| &mut c.io)
    }

    /// A connection the core is done with: the backend closes its socket (then
    /// [`Core::remove`]s it, at once or when the kernel has let go of it).
    pub(crate) fn pop_dead(&mut self) -> Option<usize> {
        self.dead.pop()
    }

    /// Gives up every connection without freeing it: the kernel may still write into their
    /// queues (an io_uring worker whose ring did not stop at exit).
    pub(crate) fn leak_conns(&mut self) {
        std::mem::forget(std::mem::take(&mut self.conns));
    }

    pub(crate) fn config(&self) -> &Config {
        &self.cfg
    }

    /// This worker's counters and gauges.
    pub(crate) fn stats(&self) -> &WorkerStats {
        &self.me().stats
    }

    /// The time of this loop turn, in milliseconds since the worker started.
    pub(crate) fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    fn id(&self, key: usize) -> ConnId {
        ConnId::with_node(self.node, self.worker, key, self.conns[key].gen)
    }

    /// Runs `f` on `key`'s machine with the worker's side of it; `None` if `key` is gone or
    /// dead. Follow with [`Core::settle`].
    fn with_conn<R>(
        &mut self,
        key: usize,
        f: impl FnOnce(&mut machine::Conn<H::State>, &mut Ev<'_, H>, &ConnConfig) -> R,
    ) -> Option<R> {
        let Core {
            handler,
            conns,
            handle,
            env,
            shared,
            worker,
            node,
            cfg,
            conn_cfg,
            ..
        } = self;
        let conn = conns.get_mut(key).filter(|c| !c.flags.has(Flags::DEAD))?;
        let id = ConnId::with_node(*node, *worker, key, conn.gen);
        let Conn {
            io,
            machine,
            out,
            subs,
            flags,
            deflate,
            ..
        } = conn;
        let mut ev = Ev {
            handler,
            out,
            io,
            subs,
            flags,
            deflate,
            env,
            handle,
            stats: &shared.workers[*worker as usize].stats,
            cfg,
            id,
        };
        Some(f(machine, &mut ev, conn_cfg))
    }

    /// After a machine call: a closed machine's socket is queued for closing; otherwise its
    /// timer is kept and its output marked for flushing.
    fn settle(&mut self, key: usize) {
        self.settle_timer(key, false);
    }

    /// [`Core::settle`]; `timer_stands`: the machine's deadline can only have moved later
    /// since its live timer was set (see [`Core::on_data`]), which then fires early and is
    /// set again (the wheel is lazy), so the deadline need not be computed now.
    #[inline]
    fn settle_timer(&mut self, key: usize, timer_stands: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.flags.has(Flags::DEAD) {
            return;
        }
        if conn.machine.is_closed() {
            conn.flags.set(Flags::DEAD, true);
            conn.out.clear(&mut self.env.pool);
            self.dead.push(key);
            return;
        }
        if !(timer_stands && conn.machine.due_follows_last_rx()) {
            self.schedule(key);
        }
        self.mark_output(key);
    }

    /// Bytes arrived for `key`. The backend may pass any buffer; it is unmasked in place.
    pub(crate) fn on_data(&mut self, key: usize, bytes: &mut [u8]) {
        let now = self.now;
        add_own(&self.me().stats.bytes_in, bytes.len() as u64);
        // A connection that is open with no ping outstanding and nothing held has its timer
        // at (or before) the last read's ping or idle deadline. If it is still so after this
        // read, the deadline only moved later (about 120 instructions a read saved).
        let timer_stands = self
            .conns
            .get(key)
            .is_some_and(|c| c.timer_tick != 0 && c.machine.due_follows_last_rx());
        self.with_conn(key, |m, ev, cfg| m.handle_read(now, bytes, cfg, ev));
        self.apply_deferred();
        self.settle_timer(key, timer_stands);
    }

    /// The peer shut its write side (a read returned 0): what is queued still goes out.
    pub(crate) fn on_eof(&mut self, key: usize) {
        let now = self.now;
        self.with_conn(key, |m, ev, _| m.handle_eof(now, ev));
        self.apply_deferred();
        self.settle(key);
    }

    /// A read or write on `key`'s socket failed: it is dropped at once.
    pub(crate) fn on_error(&mut self, key: usize) {
        self.with_conn(key, |m, ev, _| m.handle_error(ev));
        self.apply_deferred();
        self.settle(key);
    }

    /// Whether the backend should read from `key`: not while its queue is over the write
    /// budget (read backpressure; [`Core::take_resume`] says when to start again).
    pub(crate) fn wants_read(&mut self, key: usize) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if c.flags.has(Flags::DEAD) {
            return false;
        }
        let yes = c.machine.wants_read(c.out.len(), &self.conn_cfg);
        if !yes {
            c.flags.set(Flags::PAUSED, true);
        }
        yes
    }

    /// After a flush: true once if `key` stopped reading for backpressure and may read again.
    /// Also runs `on_drain` if it is owed and the queue is down to half the high-water mark
    /// (every backend calls this after each write that made progress).
    pub(crate) fn take_resume(&mut self, key: usize) -> bool {
        self.drained(key);
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if c.flags.has(Flags::PAUSED)
            && !c.flags.has(Flags::DEAD)
            && c.machine.wants_read(c.out.len(), &self.conn_cfg)
        {
            c.flags.set(Flags::PAUSED, false);
            return true;
        }
        false
    }

    /// Runs `on_drain` for `key` if its queue went over the high-water mark and is now down
    /// to half of it.
    #[inline]
    fn drained(&mut self, key: usize) {
        let low = self.env.high_water / 2;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if !c.flags.has(Flags::DRAIN_OWED) || c.flags.has(Flags::DEAD) || c.out.len() > low {
            return;
        }
        self.call_on_drain(key);
    }

    /// The rare half of [`Core::drained`], out of line (see [`Core::transmit_owed`]).
    #[cold]
    #[inline(never)]
    fn call_on_drain(&mut self, key: usize) {
        let c = &mut self.conns[key];
        c.flags.set(Flags::DRAIN_OWED, false);
        if !c.machine.is_open() {
            return;
        }
        self.callback(key, |h, ctx, s| h.on_drain(ctx, s));
        self.apply_deferred();
        self.settle(key);
    }

    /// Starts a close handshake from our side.
    pub(crate) fn start_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        let now = self.now;
        self.with_conn(key, |m, ev, _| m.close(now, code, reason, ev));
        self.settle(key);
    }

    /// Drops a connection now (no close frame): `on_close` if it was open, then close.
    pub(crate) fn abort(&mut self, key: usize, code: CloseCode, reason: &str) {
        self.with_conn(key, |m, ev, _| m.abort(code, reason, ev));
        self.apply_deferred();
        self.settle(key);
    }

    /// Calls a handler callback for an open (or closing) connection, with a context.
    fn callback(&mut self, key: usize, f: impl FnOnce(&mut H, &mut Ctx<'_>, &mut H::State)) {
        let now = self.now;
        self.with_conn(key, |m, ev, _| {
            let open = m.is_open() && !ev.flags.has(Flags::CLOSE_ASKED);
            let verdict = match m.app_mut() {
                Some(app) if open => ev.call(app, f),
                // Closing (our close frame may be out already): nothing more may be sent.
                Some(app) => {
                    ev.call_unsendable(app, f);
                    Verdict::Continue
                }
                None => Verdict::Continue,
            };
            if verdict == Verdict::SlowConsumer {
                m.handle_slow_consumer(now, ev);
            }
        });
        self.settle(key);
    }

    /// Applies sends and closes that callbacks addressed to other connections (most calls
    /// find none: that check stays inline, the work out of line).
    #[inline]
    fn apply_deferred(&mut self) {
        if !self.env.deferred.is_empty() {
            self.apply_deferred_now();
        }
    }

    /// Applies what callbacks deferred, and what that causes in turn, in one loop. Never
    /// nested: a delivery can close a slow consumer whose `on_close` publishes, and that
    /// publish can find the next slow consumer, and so on. Applied where they arose, such
    /// chains were as deep as the stalled recipients (thousands in a chat room whose members
    /// stopped reading: the worker's stack overflowed and the process aborted).
    #[inline(never)]
    fn apply_deferred_now(&mut self) {
        if self.applying {
            return;
        }
        self.applying = true;
        // One at a time from the front: what is not applied yet stays in the list, so a
        // callback run by an item (`on_published` when a tracked publish completes here)
        // queues its own sends behind its connection's earlier ones, not ahead of them.
        while let Some(d) = self.env.deferred.pop_front() {
            match d {
                Deferred::SendOwn(id, frame) => {
                    self.env.deferred_own = self.env.deferred_own.saturating_sub(frame.len());
                    self.send_own(id, frame)
                }
                Deferred::Send(id, frame) => self.send_shared(id, frame),
                Deferred::Close(id, code, reason) => self.close_id(id, code, &reason),
                Deferred::Publish(frame, target, tag, except) => {
                    self.publish(frame, target, tag, except)
                }
            }
        }
        self.applying = false;
    }

    /// Resolves an id on this worker; `None` if it is stale or gone.
    fn resolve(&self, id: ConnId) -> Option<usize> {
        if id.node() != self.node {
            return None;
        }
        let key = id.key();
        let c = self.conns.get(key)?;
        (c.gen == id.gen() && !c.flags.has(Flags::DEAD)).then_some(key)
    }

    /// Queues a frame a callback sent to its own connection (admitted within the budget
    /// when it was sent; only a close since then stops it).
    fn send_own(&mut self, id: ConnId, frame: Vec<u8>) {
        let Some(key) = self
            .resolve(id)
            .filter(|&k| self.conns[k].machine.is_open())
        else {
            return;
        };
        self.conns[key].out.push_owned(frame);
        self.mark_output(key);
    }

    /// Queues a shared frame for one connection of any worker (`send_to`, `Handle::send`).
    fn send_shared(&mut self, id: ConnId, frame: Arc<[u8]>) {
        if let Some(c) = self.shared.remote(id) {
            return c.send(id, &frame);
        }
        if id.worker() != self.worker as usize {
            if let Some(w) = self.shared.workers.get(id.worker()) {
                w.offer(Command::Send(id, frame));
            }
            return;
        }
        let Some(key) = self
            .resolve(id)
            .filter(|&k| self.conns[k].machine.is_open())
        else {
            self.me()
                .stats
                .unknown_target
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.push_shared_to(key, &frame) {
            add_own(&self.me().stats.messages_out, 1);
        }
    }

    fn close_id(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        if let Some(c) = self.shared.remote(id) {
            return c.close(id, code, reason);
        }
        if id.worker() != self.worker as usize {
            if let Some(w) = self.shared.workers.get(id.worker()) {
                w.push(Command::Close(id, code, reason.to_owned()));
            }
            return;
        }
        if let Some(key) = self.resolve(id) {
            if !code.is_allowed_on_wire() {
                tracing::warn!(conn = %id, code = code.0, "close code not allowed in a close frame (RFC 6455 7.4): the close frame goes out without a code");
            }
            self.start_close(key, code, reason);
        }
    }

    /// Closes a connection whose queue was over the write budget when more output came
    /// (the budget bounds what a reader that fell behind can hold; one message larger than
    /// the budget still goes out to a reader that keeps up, as in uWebSockets).
    fn slow_consumer(&mut self, key: usize) {
        let now = self.now;
        let queued = self.conns.get(key).map_or(0, |c| c.out.len());
        if self.with_conn(key, |m, ev, _| m.handle_slow_consumer(now, ev)) == Some(true) {
            tracing::info!(conn = %self.id(key), queued, budget = self.cfg.write_budget, "closing slow consumer");
            self.me()
                .stats
                .slow_consumer_closes
                .fetch_add(1, Ordering::Relaxed);
        }
        self.apply_deferred();
        self.settle(key);
    }

    /// Queues a connection for flushing: it has output, a pong is owed, or it is draining
    /// and its write side is still to be shut (which the backend does after the flush).
    fn mark_output(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.flags.has(Flags::DEAD) || (conn.out.is_empty() && !conn.machine.needs_flush()) {
            return;
        }
        if !conn.flags.has(Flags::DIRTY) {
            conn.flags.set(Flags::DIRTY, true);
            self.dirty.push(key);
        }
    }

    /// The connections to flush this turn (the pong each one owes is queued first, within
    /// its budget). Give the vector back with [`Core::give_dirty`].
    pub(crate) fn take_dirty(&mut self) -> Vec<usize> {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            // Most were flushed right after their read already (`prepare_flush`).
            if self.is_dirty(key) {
                self.queue_pong(key);
            }
        }
        self.publish_compression_counts();
        dirty
    }

    /// Adds the messages deflated and inflated since the last call to the worker's stats.
    /// Called before any flush, so a peer that got its answer finds it counted.
    fn publish_compression_counts(&mut self) {
        if let Some(c) = self.env.compression.as_mut() {
            let (deflated, inflated) = c.take_counts();
            if deflated == 0 && inflated == 0 {
                return;
            }
            let st = &self.shared.workers[self.worker as usize].stats;
            st.messages_deflated.fetch_add(deflated, Ordering::Relaxed);
            st.messages_inflated.fetch_add(inflated, Ordering::Relaxed);
        }
    }

    /// Whether `key` waits to be flushed this turn (it has output, or a pong or a shutdown
    /// is owed) and is not dead.
    pub(crate) fn is_dirty(&self, key: usize) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.flags.has(Flags::DIRTY) && !c.flags.has(Flags::DEAD))
    }

    /// Gets `key` ready to be flushed ahead of the turn's other connections (the pong it
    /// owes queued first, as [`Core::take_dirty`] does): a backend that has just read from
    /// it writes its answers while they are still in the cache. The key stays in the turn's
    /// list; [`Core::after_flush`] clears its mark, and the backend skips it there
    /// ([`Core::is_dirty`]).
    pub(crate) fn prepare_flush(&mut self, key: usize) {
        self.queue_pong(key);
        self.publish_compression_counts();
    }

    /// Queues the pong `key` owes, if it fits (checked first without building the machine's
    /// side: most flushes owe none).
    #[inline]
    fn queue_pong(&mut self, key: usize) {
        if self.conns.get(key).is_some_and(|c| c.machine.needs_flush()) {
            self.transmit_owed(key);
        }
    }

    /// The rare half of [`Core::queue_pong`], kept out of line so that the check costs a
    /// few instructions (inlined, the machine's side made every caller save and restore a
    /// dozen registers: ~30 instructions a flush).
    #[cold]
    #[inline(never)]
    fn transmit_owed(&mut self, key: usize) {
        self.with_conn(key, |m, ev, cfg| m.poll_transmit(cfg, ev));
    }

    /// Returns the (drained) vector from [`Core::take_dirty`], to reuse its allocation.
    pub(crate) fn give_dirty(&mut self, mut dirty: Vec<usize>) {
        if self.dirty.is_empty() {
            dirty.clear();
            self.dirty = dirty;
        }
    }

    /// Called by the backend after it flushed `key` (fully or not).
    pub(crate) fn after_flush(&mut self, key: usize) -> AfterFlush {
        let Some(conn) = self.conns.get_mut(key) else {
            return AfterFlush::Nothing;
        };
        conn.flags.set(Flags::DIRTY, false);
        if conn.flags.has(Flags::DEAD) {
            return AfterFlush::Nothing;
        }
        let shut = conn.machine.handle_flushed(conn.out.len());
        if conn.machine.is_closed() {
            // The peer had already shut its side: both directions are done.
            conn.flags.set(Flags::DEAD, true);
            self.dead.push(key);
        } else if conn.out.is_empty() && conn.machine.needs_flush() {
            // A pong waited for the queue to drain.
            conn.flags.set(Flags::DIRTY, true);
            self.dirty.push(key);
        }
        if shut {
            AfterFlush::ShutdownWrite
        } else {
            AfterFlush::Nothing
        }
    }

    /// Marks `key` for flushing (after a writable event).
    pub(crate) fn want_flush(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.flags.has(Flags::DIRTY) && !c.flags.has(Flags::DEAD) && !c.out.is_empty() {
                c.flags.set(Flags::DIRTY, true);
                self.dirty.push(key);
            }
        }
    }

    /// Adds `n` bytes written to the worker's counters.
    pub(crate) fn count_written(&self, n: usize) {
        add_own(&self.me().stats.bytes_out, n as u64);
    }

    // ---- broadcast ----

    /// Publishes an encoded frame from this worker: delivered here at once, and sent as one
    /// queue item to each other worker that may hold recipients.
    pub(crate) fn publish(
        &mut self,
        frame: Arc<[u8]>,
        target: OwnedTarget,
        tag: Option<(ConnId, u64)>,
        except: Option<ConnId>,
    ) {
        let n = self.shared.workers.len();
        self.me()
            .stats
            .events_published
            .fetch_add(1, Ordering::Relaxed);
        // Other nodes get theirs through the broker (only those with interest receive it).
        let target = match &self.shared.cluster {
            Some(c) => c.publish(target, &frame),
            None => target,
        };
        let me = self.worker as usize;
        let mut local = None;
        let workers = &self.shared.workers;
        let deflate = self.cfg.deflate.is_some();
        let to = tag.map(|(origin, tag)| ReceiptTo::Conn(origin, tag));
        let parts = route(frame, target, n, to, except, deflate, |w, ev| {
            if w == me {
                local = Some(ev);
            } else {
                workers[w].push_event(ev);
            }
        });
        if parts == 0 {
            if let Some((origin, tag)) = tag {
                self.receipt(origin, tag, 0);
            }
        }
        if let Some(ev) = local {
            self.deliver_event(&ev);
        }
    }

    /// Delivers an event to its recipients on this worker; reports to its tracker.
    pub(crate) fn deliver_event(&mut self, ev: &Event) {
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        match &ev.target {
            OwnedTarget::All => slots.extend(
                self.conns
                    .iter()
                    .filter(|(_, c)| c.machine.is_open())
                    .map(|(k, _)| k as u32),
            ),
            OwnedTarget::Topic(t) => {
                if let Some(set) = self.env.registry.topic(t) {
                    slots.extend(set.iter().copied());
                }
            }
            OwnedTarget::Keys(keys) => {
                for k in keys.iter() {
                    slots.extend(self.env.registry.key(k));
                }
                if keys.len() > 1 {
                    slots.sort_unstable();
                    slots.dedup();
                }
            }
            OwnedTarget::Conns(ids) => {
                let mut unknown = 0;
                for id in ids {
                    match (id.worker() == self.worker as usize)
                        .then(|| self.resolve(*id))
                        .flatten()
                        .filter(|&k| self.conns[k].machine.is_open())
                    {
                        Some(k) => slots.push(k as u32),
                        None => unknown += 1,
                    }
                }
                if unknown > 0 {
                    self.me()
                        .stats
                        .unknown_target
                        .fetch_add(unknown, Ordering::Relaxed);
                }
                slots.sort_unstable();
                slots.dedup();
            }
        }
        // The publisher's own connection, when it asked to be left out.
        if let Some(k) = ev.except.and_then(|id| {
            (id.worker() == self.worker as usize)
                .then(|| self.resolve(id))
                .flatten()
        }) {
            slots.retain(|&s| s as usize != k);
        }
        let mut reached = 0;
        // The compressed twin, looked up (and made, if no worker has yet) on the first
        // recipient that takes it: a refcount, never a per-recipient deflate or copy.
        let mut twin: Option<Option<Arc<[u8]>>> = None;
        for &slot in &slots {
            let wants_twin = ev.twin.is_some()
                && self
                    .conns
                    .get(slot as usize)
                    .is_some_and(|c| c.deflate == MAX_WINDOW_BITS);
            if wants_twin && twin.is_none() {
                twin = Some(self.twin_of(ev));
            }
            let frame = match &twin {
                Some(Some(t)) if wants_twin => t,
                _ => &ev.frame,
            };
            if self.push_shared_to(slot as usize, frame) {
                reached += 1;
            }
        }
        if scratch_spike(slots.capacity(), self.conns.len()) {
            slots = Vec::new();
        }
        self.scratch = slots;
        add_own(&self.me().stats.deliveries, reached as u64);
        if let Some(t) = &ev.tracker {
            if let Some(total) = t.finish_part(reached) {
                match &t.to {
                    ReceiptTo::Conn(origin, tag) => self.receipt(*origin, *tag, total),
                    ReceiptTo::Waiter(cell) => cell.complete(total),
                }
            }
        }
    }

    /// The event's compressed twin, compressed by this worker if no worker has yet.
    fn twin_of(&mut self, ev: &Event) -> Option<Arc<[u8]>> {
        let cell = ev.twin.as_ref()?;
        let comp = self.env.compression.as_mut()?;
        cell.get_or_init(|| comp.twin(&ev.frame)).clone()
    }

    /// Queues a shared frame for one connection, applying the slow-consumer policy.
    fn push_shared_to(&mut self, key: usize, frame: &Arc<[u8]>) -> bool {
        let budget = self.cfg.write_budget;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.flags.has(Flags::DEAD) || !conn.machine.is_open() {
            return false;
        }
        if conn.out.len() > budget {
            match self.cfg.slow_consumer {
                SlowConsumerPolicy::Close => self.slow_consumer(key),
                SlowConsumerPolicy::Drop => {
                    add_own(&self.me().stats.drops, 1);
                }
            }
            return false;
        }
        conn.out.push_shared(frame.clone());
        if conn.out.len() > self.env.high_water {
            conn.flags.set(Flags::DRAIN_OWED, true);
        }
        if !conn.flags.has(Flags::DIRTY) {
            conn.flags.set(Flags::DIRTY, true);
            self.dirty.push(key);
        }
        true
    }

    /// Reports a tracked publish's total to its origin connection (`on_published`).
    fn receipt(&mut self, origin: ConnId, tag: u64, reached: usize) {
        if origin.worker() != self.worker as usize {
            if let Some(w) = self.shared.workers.get(origin.worker()) {
                w.push(Command::Receipt {
                    origin,
                    tag,
                    reached,
                });
            }
            return;
        }
        let Some(key) = self.resolve(origin) else {
            return;
        };
        self.callback(key, |h, ctx, s| h.on_published(ctx, s, tag, reached));
        self.apply_deferred();
        self.settle(key);
    }

    /// Binds, unbinds, subscribes or unsubscribes a connection on behalf of another thread.
    fn bind_op(&mut self, id: ConnId, name: &str, op: BindOp) {
        if let Some(c) = self.shared.remote(id) {
            return c.bind(id, name, op);
        }
        if id.worker() != self.worker as usize {
            if let Some(w) = self.shared.workers.get(id.worker()) {
                w.push(Command::Bind(id, name.into(), op));
            }
            return;
        }
        let Some(key) = self.resolve(id) else { return };
        let Core { conns, env, .. } = self;
        let subs = conns[key].subs.get_or_insert_with(Default::default);
        let slot = key as u32;
        let added = match op {
            BindOp::Bind => env.registry.bind(subs, slot, name),
            BindOp::Subscribe => env.registry.subscribe(subs, slot, name),
            BindOp::Unbind => {
                env.registry.unbind(subs, slot, name);
                return;
            }
            BindOp::Unsubscribe => {
                env.registry.unsubscribe(subs, slot, name);
                return;
            }
        };
        if added == Added::Full {
            self.me()
                .stats
                .bindings_refused
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A deferred upgrade's answer arrived from another thread ([`upgrade::Pending`]).
    fn answer_upgrade(&mut self, id: ConnId, answer: Answer) {
        let Some(key) = self
            .resolve(id)
            .filter(|&k| self.conns[k].machine.is_awaiting())
        else {
            tracing::debug!(conn = %id, "answer to an upgrade no longer awaited (timed out or dropped)");
            return;
        };
        let Answer {
            accept,
            offer,
            protocol,
            headers,
            result,
        } = answer;
        let result = match result.downcast::<Result<H::State, Reject>>() {
            Ok(r) => *r,
            Err(_) => {
                tracing::error!(conn = %id, "a deferred upgrade was answered with a state of another type: 500");
                Err(Reject::new(500, "internal error\n"))
            }
        };
        let now = self.now;
        self.with_conn(key, |m, ev, cfg| {
            let state = ev.finish_upgrade(result, &accept, protocol.as_deref(), &headers, offer);
            m.handle_upgrade(now, state, cfg, ev);
        });
        self.apply_deferred();
        self.settle(key);
    }

    // ---- timers ----

    /// Makes sure `key` has a timer entry no later than its machine's deadline.
    fn schedule(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let Some(ns) = conn.machine.due_ns(&self.conn_cfg) else {
            return;
        };
        let ms = ns.saturating_add(self.stamp_offset_ns).max(0) as u64 / 1_000_000;
        // A deadline further ahead than `MAX_AHEAD` ticks fires early and is scheduled again,
        // so that every live tag is within 2^31 ticks of every other (see `tick_tag`).
        let now_tick = self.now_ms / TICK_MS;
        let tick = ms.div_ceil(TICK_MS).max(1).min(now_tick + MAX_AHEAD);
        let live = conn.timer_tick;
        if live == 0 || tag_before(tick_tag(tick), live) {
            let due = self.timers.schedule(key as u32, conn.gen, tick);
            conn.timer_tick = tick_tag(due);
        }
    }

    /// Fires due timers. Call once per loop turn, after `update_now`.
    pub(crate) fn run_timers(&mut self) {
        let now_tick = self.now_ms / TICK_MS;
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(now_tick, &mut fired);
        for (key, gen, tick) in fired.drain(..) {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.gen != gen || conn.timer_tick != tick_tag(tick) || conn.flags.has(Flags::DEAD) {
                continue; // stale entry
            }
            conn.timer_tick = 0;
            self.on_timer(key);
        }
        self.fired = fired;
        if self.shutting_down && self.now_ms >= self.shutdown_deadline {
            let keys: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| !c.flags.has(Flags::DEAD))
                .map(|(k, _)| k)
                .collect();
            for key in keys {
                self.abort(key, CloseCode::ABNORMAL, "shutdown deadline");
            }
        }
    }

    fn on_timer(&mut self, key: usize) {
        let now = self.now;
        let fired = self
            .with_conn(key, |m, ev, cfg| m.handle_timeout(now, cfg, ev))
            .flatten();
        let st = &self.me().stats;
        let counter = match fired {
            Some(Timeout::Handshake) => {
                tracing::debug!(conn = key, "handshake timeout");
                Some(&st.handshake_timeouts)
            }
            Some(Timeout::Idle) => Some(&st.idle_closes),
            Some(Timeout::Ping) => Some(&st.pings_sent),
            Some(Timeout::Pong) => Some(&st.pong_timeouts),
            Some(Timeout::Message) => Some(&st.message_timeouts),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.apply_deferred();
        self.settle(key);
    }

    // ---- inbox ----

    /// Takes commands from other threads. Returns true if a shutdown was requested.
    pub(crate) fn drain_inbox(&mut self) -> bool {
        let mut cmds = std::mem::take(&mut self.commands);
        self.shared.workers[self.worker as usize].drain(&mut cmds);
        let mut shutdown = false;
        for cmd in cmds.drain(..) {
            match cmd {
                Command::Send(id, frame) => self.send_shared(id, frame),
                Command::Close(id, code, reason) => self.close_id(id, code, &reason),
                Command::Shutdown => shutdown = true,
                Command::Publish(ev) => self.deliver_event(&ev),
                Command::Receipt {
                    origin,
                    tag,
                    reached,
                } => self.receipt(origin, tag, reached),
                Command::Bind(id, name, op) => self.bind_op(id, &name, op),
                Command::Upgrade(id, answer) => self.answer_upgrade(id, *answer),
            }
        }
        self.commands = cmds;
        if shutdown {
            self.begin_shutdown();
        }
        shutdown
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.shutdown_deadline = self
            .now_ms
            .saturating_add(millis(self.cfg.shutdown_timeout));
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let m = &self.conns[key].machine;
            if m.is_open() {
                self.start_close(key, CloseCode::GOING_AWAY, "server shutting down");
            } else if m.is_handshaking() {
                self.abort(key, CloseCode::ABNORMAL, "server shutting down");
            }
        }
    }

    /// Whether the worker may exit: shutting down and every connection gone.
    pub(crate) fn finished(&self) -> bool {
        self.shutting_down && self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    /// Tags order ticks across the 2^32 wrap, are never 0 ("no entry"), and a tick 2^32
    /// later shares its tag (harmless: the connection's deadline is looked at early).
    #[test]
    fn timer_tags_order_ticks_across_the_wrap() {
        use super::{tag_before, tick_tag, MAX_AHEAD};
        let wrap = 1u64 << 32;
        assert!(tag_before(tick_tag(5), tick_tag(6)));
        assert!(!tag_before(tick_tag(6), tick_tag(5)));
        assert!(!tag_before(tick_tag(7), tick_tag(7)));
        assert!(tag_before(tick_tag(wrap - 3), tick_tag(wrap + 3)));
        assert!(!tag_before(tick_tag(wrap + 3), tick_tag(wrap - 3)));
        let now = 3 * wrap - 10;
        assert!(tag_before(tick_tag(now), tick_tag(now + MAX_AHEAD)));
        assert!(tag_before(
            tick_tag(now + MAX_AHEAD - 1),
            tick_tag(now + MAX_AHEAD)
        ));
        assert_eq!(tick_tag(wrap), 1, "never 0");
        assert_eq!(tick_tag(0), 1);
        assert_eq!(tick_tag(wrap + 1), tick_tag(1));
    }

    /// An idle connection's cost is mostly its slab entry (server RSS per idle connection at
    /// 10,000, one mio worker: 472 B with a 288-byte entry, 287 B with a 224-byte one, 219 B
    /// with a 200-byte one, 155 B with this 136-byte one; uWebSockets holds 272 B). A field
    /// added to the entry shows up here first.
    #[test]
    fn a_connection_slab_entry_stays_small() {
        use std::mem::size_of;
        assert!(size_of::<super::WriteQueue>() <= 56);
        assert!(size_of::<crate::proto::conn::Conn<()>>() <= 56);
        // A 4-byte socket handle stands for mio's (a file descriptor in a release build;
        // debug builds add a selector id to it).
        assert!(size_of::<super::Conn<(), std::os::fd::OwnedFd>>() <= 136);
        // An application state of one pointer (the volley binary's) costs no more.
        assert!(size_of::<super::Conn<Option<Box<u8>>, std::os::fd::OwnedFd>>() <= 136);
        #[cfg(not(debug_assertions))]
        assert_eq!(size_of::<mio::net::TcpStream>(), 4);
    }
}
