//! The connection logic of a worker, written once for every backend.
//!
//! A backend (see [`crate::driver`]) owns the syscalls. It calls into [`Core`] with what
//! happened (a connection accepted, bytes received, end of stream, a timer tick, a wake-up)
//! and reads back what to do: connections with output to flush ([`Core::dirty`]), sockets to
//! shut or close ([`Core::after_flush`], [`Core::dead`]). Nothing in this file makes a
//! syscall.
//!
//! Connection phases: `Handshake` (reading the request head) -> `Open` -> `Closing` (we sent
//! a close frame and wait for the peer's) -> `Draining` (the close handshake is over or the
//! connection failed: flush what is queued, shut our side, wait for the peer's FIN, close).
//! `on_close` is called exactly once, when a connection that was opened leaves `Open` or
//! `Closing` for good.

use super::queue::{BufPool, WriteQueue};
use super::timer::TimerWheel;
use super::{Command, Config, ConnId, Handle, SlowConsumerPolicy, WorkerShared};
use crate::broadcast::registry::{Registry, Subs};
use crate::broadcast::{encode_shared, group_by_worker, Event, OwnedTarget, Target, Tracker};
use crate::handler::{Ctx, Handler, HttpResponse, Message, Upgrade};
use crate::proto::encode::encode_close_frame;
use crate::proto::frame::encode_header;
use crate::proto::handshake::{
    parse_request, write_accept_response, write_http_response, AcceptKey, HeadScanner,
    EMPTY_HEADER, MAX_HEADERS,
};
use crate::proto::{self, CloseCode, Decoder, HandshakeError, OpCode, Role, Status};
use slab::Slab;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Timer granularity.
const TICK_MS: u64 = 100;

/// Where a connection is in its life.
#[derive(Debug)]
enum Phase {
    /// Reading the request head.
    Handshake(HeadScanner),
    /// Exchanging messages.
    Open,
    /// We sent a close frame; waiting for the peer's.
    Closing,
    /// Finished (close handshake done, failed, or an HTTP answer sent): flush, shut our
    /// side, wait for the peer's FIN or the close timeout, then close the socket.
    Draining { shut: bool },
}

/// One connection's state in the worker's slab.
#[derive(Debug)]
pub(crate) struct Conn<S, Io> {
    /// The backend's handle on the socket.
    pub(crate) io: Io,
    pub(crate) out: WriteQueue,
    gen: u32,
    phase: Phase,
    decoder: Decoder,
    /// Received bytes not consumed yet: part of a request head, a frame header or a control
    /// frame. Empty (no allocation) almost always.
    tail: Vec<u8>,
    /// The application's state; `Some` from open until `on_close`.
    state: Option<S>,
    /// Keys and topics this connection is bound to (allocated on its first binding).
    subs: Option<Box<Subs>>,
    /// Code and reason to report in `on_close` for a close we started.
    closing: Option<Box<(CloseCode, String)>>,
    /// Milliseconds since the worker started: last byte received, phase start, ping sent.
    last_rx: u64,
    since: u64,
    ping_sent: Option<u64>,
    /// The tick of this connection's live timer entry (0: none).
    timer_tick: u64,
    dirty: bool,
    dead: bool,
}

impl<S, Io> Conn<S, Io> {
    pub(crate) fn is_dead(&self) -> bool {
        self.dead
    }

    /// Whether reads should still be delivered (also true while draining: we wait for EOF).
    pub(crate) fn wants_read(&self) -> bool {
        !self.dead
    }
}

/// A deferred action from a handler callback on some connection.
#[derive(Debug)]
enum Deferred {
    Send(ConnId, Vec<u8>),
    Close(ConnId, CloseCode, String),
    /// A publish: the frame, its target, and (origin, tag) if the origin wants a receipt.
    Publish(Arc<[u8]>, OwnedTarget, Option<(ConnId, u64)>),
}

/// The worker-level pieces a callback's [`Ctx`] writes into.
#[derive(Debug, Default)]
pub(crate) struct Env {
    pub(crate) pool: BufPool,
    deferred: Vec<Deferred>,
    pub(crate) registry: Registry,
    budget: usize,
    policy: SlowConsumerPolicy,
}

/// The callback's own connection, when it can still send.
#[derive(Debug)]
pub(crate) struct Own<'a> {
    out: &'a mut WriteQueue,
    subs: &'a mut Option<Box<Subs>>,
}

/// What a callback writes through its [`Ctx`]: straight into its own connection's queue
/// (and its own key and topic bindings), or deferred until the callback returns for other
/// connections and for publishes.
#[derive(Debug)]
pub(crate) struct Outbox<'a> {
    own_id: ConnId,
    /// `None` when the connection can no longer send (closing, or in `on_close`).
    own: Option<Own<'a>>,
    env: &'a mut Env,
    sent: u64,
    /// Sends to the own connection dropped over the write budget (`SlowConsumerPolicy::Drop`).
    dropped: u64,
    /// A send found the own queue over the write budget under `SlowConsumerPolicy::Close`:
    /// the message was not queued and the connection is closed as a slow consumer after the
    /// callback.
    over: bool,
}

impl<'a> Outbox<'a> {
    fn new(own_id: ConnId, own: Option<Own<'a>>, env: &'a mut Env) -> Self {
        Outbox {
            own_id,
            own,
            env,
            sent: 0,
            dropped: 0,
            over: false,
        }
    }

    pub(crate) fn own_id(&self) -> ConnId {
        self.own_id
    }

    pub(crate) fn send(&mut self, id: ConnId, msg: Message<'_>) {
        let op = match msg {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        };
        let payload = msg.as_bytes();
        let header = encode_header(true, op, payload.len() as u64, None);
        // Straight into the own queue, unless something is deferred before it (a publish):
        // then it waits its turn, so this connection sees both in the order they were made.
        if id == self.own_id && self.env.deferred.is_empty() {
            if let Some(own) = self.own.as_mut() {
                if own.out.len() > self.env.budget {
                    match self.env.policy {
                        SlowConsumerPolicy::Close => self.over = true,
                        SlowConsumerPolicy::Drop => self.dropped += 1,
                    }
                    return;
                }
                own.out.push_parts(&mut self.env.pool, &[&header, payload]);
                self.sent += 1;
            }
            return;
        }
        let mut frame = Vec::with_capacity(header.len() + payload.len());
        frame.extend_from_slice(&header);
        frame.extend_from_slice(payload);
        self.env.deferred.push(Deferred::Send(id, frame));
    }

    pub(crate) fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        self.env
            .deferred
            .push(Deferred::Close(id, code, reason.to_owned()));
    }

    pub(crate) fn publish(&mut self, target: Target<'_>, msg: Message<'_>, tag: Option<u64>) {
        let frame = encode_shared(msg);
        let tag = tag.map(|t| (self.own_id, t));
        self.env.deferred.push(Deferred::Publish(
            frame,
            OwnedTarget::from_target(&target),
            tag,
        ));
    }

    /// Applies `f` to the own connection's bindings; false if it cannot (closing).
    pub(crate) fn bindings(
        &mut self,
        f: impl FnOnce(&mut Registry, &mut Subs, u32) -> bool,
    ) -> bool {
        let slot = self.own_id.key() as u32;
        match self.own.as_mut() {
            Some(own) => {
                let subs = own.subs.get_or_insert_with(Default::default);
                f(&mut self.env.registry, subs, slot)
            }
            None => false,
        }
    }
}

/// A change to a connection's key or topic bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BindOp {
    Bind,
    Unbind,
    Subscribe,
    Unsubscribe,
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
    pub(crate) handler: H,
    pub(crate) conns: Slab<Conn<H::State, Io>>,
    pub(crate) cfg: Arc<Config>,
    pub(crate) shared: Arc<super::Shared>,
    pub(crate) handle: Handle,
    pub(crate) worker: u8,
    next_gen: u32,
    epoch: Instant,
    pub(crate) now_ms: u64,
    timers: TimerWheel,
    fired: Vec<(u32, u32, u64)>,
    /// Keys with output to flush.
    pub(crate) dirty: Vec<usize>,
    /// Keys whose socket must be closed and slot freed.
    pub(crate) dead: Vec<usize>,
    /// What callbacks write into (pool, deferred actions, key and topic tables).
    pub(crate) env: Env,
    /// Slots gathered for one delivery (kept to avoid allocating per event).
    scratch: Vec<u32>,
    pub(crate) shutting_down: bool,
    shutdown_deadline: u64,
    commands: Vec<Command>,
    max_conns: usize,
}

impl<H: Handler, Io> Core<H, Io> {
    pub(crate) fn new(
        handler: H,
        cfg: Arc<Config>,
        shared: Arc<super::Shared>,
        worker: u8,
    ) -> Self {
        // A server-wide limit (the workers share one count): the kernel spreads connections
        // over the workers' SO_REUSEPORT listeners by a hash, not evenly, so an even
        // per-worker share would refuse connections while other workers have room. Without a
        // limit the shared count is not kept (no cache line bounced between workers).
        let max_conns = match cfg.max_connections {
            0 => usize::MAX,
            m => m,
        };
        let budget = cfg.write_budget;
        let policy = cfg.slow_consumer;
        Core {
            handler,
            conns: Slab::new(),
            cfg,
            handle: Handle {
                shared: shared.clone(),
            },
            shared,
            worker,
            next_gen: 1,
            epoch: Instant::now(),
            now_ms: 0,
            timers: TimerWheel::new(),
            fired: Vec::new(),
            dirty: Vec::new(),
            dead: Vec::new(),
            env: Env {
                budget,
                policy,
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
        self.now_ms = self.epoch.elapsed().as_millis() as u64;
    }

    /// How long the backend may sleep: until the next tick while timers are pending.
    pub(crate) fn poll_timeout(&self) -> Option<std::time::Duration> {
        if self.timers.is_empty() && !self.shutting_down {
            return None;
        }
        let next = (self.now_ms / TICK_MS + 1) * TICK_MS;
        Some(std::time::Duration::from_millis(next - self.now_ms))
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
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let key = self.conns.insert(Conn {
            io,
            out: WriteQueue::default(),
            gen,
            phase: Phase::Handshake(HeadScanner::new()),
            decoder: Decoder::new(Role::Server, self.cfg.limits),
            tail: Vec::new(),
            state: None,
            subs: None,
            closing: None,
            last_rx: self.now_ms,
            since: self.now_ms,
            ping_sent: None,
            timer_tick: 0,
            dirty: false,
            dead: false,
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
        debug_assert!(conn.state.is_none(), "on_close must have run");
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

    fn id(&self, key: usize) -> ConnId {
        ConnId::new(self.worker, key, self.conns[key].gen)
    }

    /// Bytes arrived for `key`. The backend may pass any buffer; it is unmasked in place.
    pub(crate) fn on_data(&mut self, key: usize, bytes: &mut [u8]) {
        let now = self.now_ms;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.dead {
            return;
        }
        conn.last_rx = now;
        conn.ping_sent = None;
        self.me()
            .stats
            .bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let conn = &mut self.conns[key];
        if conn.tail.is_empty() {
            let used = self.process(key, bytes);
            if used < bytes.len() {
                if let Some(c) = self.conns.get_mut(key) {
                    if !c.dead {
                        c.tail.extend_from_slice(&bytes[used..]);
                    }
                }
            }
        } else {
            let mut buf = std::mem::take(&mut conn.tail);
            buf.extend_from_slice(bytes);
            let used = self.process(key, &mut buf);
            if let Some(c) = self.conns.get_mut(key) {
                if used < buf.len() && !c.dead {
                    buf.drain(..used);
                    c.tail = buf;
                }
            }
        }
        self.apply_deferred();
        self.mark_output(key);
    }

    /// Runs the phase machine over `buf`; returns the bytes consumed.
    fn process(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let conn = &mut self.conns[key];
        let mut pos = 0;
        if let Phase::Handshake(mut scanner) = conn.phase {
            match scanner.find_end(buf, self.cfg.max_head) {
                Ok(Status::Partial) => {
                    conn.phase = Phase::Handshake(scanner);
                    return 0;
                }
                Ok(Status::Complete(n)) => {
                    self.handshake(key, &buf[..n]);
                    pos = n;
                }
                Err(e) => {
                    self.http_error(key, &e);
                    return buf.len();
                }
            }
        }
        match self.conns[key].phase {
            Phase::Open | Phase::Closing => pos + self.frames(key, &mut buf[pos..]),
            // Handshake cannot remain here; Draining discards what the peer still sends.
            _ => buf.len(),
        }
    }

    /// A complete request head arrived.
    fn handshake(&mut self, key: usize, head: &[u8]) {
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        let req = match parse_request(head, &mut headers) {
            Ok(r) => r,
            Err(e) => return self.http_error(key, &e),
        };
        let client_key = match req.validate() {
            Ok(k) => k,
            Err(HandshakeError::NotUpgrade)
                if req.method == "GET" && self.cfg.metrics_path.as_deref() == Some(req.path) =>
            {
                let body = self.handle.prometheus().into_bytes();
                let resp = HttpResponse {
                    status: 200,
                    content_type: "text/plain; version=0.0.4",
                    body,
                };
                return self.http_response(key, &resp);
            }
            Err(HandshakeError::NotUpgrade) if req.method == "GET" => {
                match self.handler.on_http(&req) {
                    Some(resp) => return self.http_response(key, &resp),
                    None => return self.http_error(key, &HandshakeError::NotUpgrade),
                }
            }
            Err(e) => return self.http_error(key, &e),
        };
        let mut upgrade = Upgrade::default();
        let state = match self.handler.on_upgrade(&req, &mut upgrade) {
            Ok(s) => s,
            Err(rej) => {
                tracing::debug!(status = rej.status, "upgrade rejected by the handler");
                self.me()
                    .stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                let resp = HttpResponse {
                    status: rej.status,
                    content_type: "text/plain; charset=utf-8",
                    body: rej.body.into_bytes(),
                };
                return self.http_response(key, &resp);
            }
        };
        let accept = AcceptKey::from_key(client_key.as_bytes());
        let extra: Vec<(&str, &str)> = upgrade
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let mut resp = self.env.pool.take(256);
        if let Err(e) =
            write_accept_response(&mut resp, &accept, upgrade.protocol.as_deref(), &extra)
        {
            tracing::error!("handler produced an invalid upgrade response: {e}");
            self.env.pool.give(resp);
            let resp = HttpResponse {
                status: 500,
                content_type: "text/plain",
                body: b"internal error\n".to_vec(),
            };
            // The handler's state is dropped: the connection never opened.
            drop(state);
            return self.http_response(key, &resp);
        }
        let conn = &mut self.conns[key];
        conn.out.push_owned(resp);
        conn.phase = Phase::Open;
        conn.state = Some(state);
        self.me().stats.opened.fetch_add(1, Ordering::Relaxed);
        self.schedule(key);
        self.callback(key, |h, ctx, s| h.on_open(ctx, s));
    }

    /// Answers a plain HTTP request and drains the connection.
    fn http_response(&mut self, key: usize, resp: &HttpResponse) {
        let mut out = Vec::new();
        if write_http_response(&mut out, resp.status, resp.content_type, &[], &resp.body).is_err() {
            out.clear();
            write_http_response(&mut out, 500, "text/plain", &[], b"internal error\n")
                .expect("static");
        }
        self.conns[key].out.push_owned(out);
        self.drain_conn(key);
    }

    /// Refuses a request with the status its error maps to.
    fn http_error(&mut self, key: usize, e: &HandshakeError) {
        tracing::debug!(error = %e, "handshake refused");
        self.me()
            .stats
            .handshake_failures
            .fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        e.write_response(&mut out);
        self.conns[key].out.push_owned(out);
        self.drain_conn(key);
    }

    /// Moves a connection to `Draining` (its `on_close`, if due, has run).
    fn drain_conn(&mut self, key: usize) {
        let now = self.now_ms;
        let conn = &mut self.conns[key];
        conn.phase = Phase::Draining { shut: false };
        conn.tail = Vec::new();
        conn.since = now;
        self.schedule(key);
    }

    /// Decodes frames from `buf`; returns the bytes consumed.
    fn frames(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            let Core {
                handler,
                conns,
                handle,
                env,
                shared,
                worker,
                ..
            } = self;
            let id = ConnId::new(*worker, key, conns[key].gen);
            let mut over = false;
            let conn = &mut conns[key];
            let step = match conn.decoder.decode(&mut buf[pos..]) {
                Ok(s) => s,
                Err(e) => {
                    self.fail(key, e);
                    return buf.len();
                }
            };
            pos += step.consumed;
            let Some(msg) = step.message else {
                if step.consumed == 0 {
                    return pos;
                }
                continue;
            };
            let open = matches!(conn.phase, Phase::Open);
            let stats = &shared.workers[*worker as usize].stats;
            match msg {
                proto::Message::Text(_) | proto::Message::Binary(_) if open => {
                    let data = match msg {
                        proto::Message::Text(t) => Message::Text(t),
                        proto::Message::Binary(b) => Message::Binary(b),
                        _ => unreachable!("matched data above"),
                    };
                    stats.messages_in.fetch_add(1, Ordering::Relaxed);
                    let Conn {
                        state, out, subs, ..
                    } = conn;
                    let mut ctx = Ctx {
                        out: Outbox::new(id, Some(Own { out, subs }), env),
                        handle,
                    };
                    handler.on_message(&mut ctx, state.as_mut().expect("open"), data);
                    stats
                        .messages_out
                        .fetch_add(ctx.out.sent, Ordering::Relaxed);
                    stats.drops.fetch_add(ctx.out.dropped, Ordering::Relaxed);
                    over = ctx.out.over;
                }
                proto::Message::Ping(p) if open => {
                    let h = encode_header(true, OpCode::Pong, p.len() as u64, None);
                    conn.out.push_parts(&mut env.pool, &[&h, p]);
                }
                proto::Message::Close(frame) => {
                    let (code, reason) = match frame {
                        Some(f) => (f.code, f.reason.to_owned()),
                        None => (CloseCode::NO_STATUS, String::new()),
                    };
                    self.peer_closed(key, code, &reason);
                    return buf.len();
                }
                // Pongs, and data after we sent our close frame, are dropped (RFC 6455 5.5.1).
                _ => {}
            }
            if over {
                self.slow_consumer(key);
                return buf.len();
            }
        }
    }

    /// The peer sent a close frame.
    fn peer_closed(&mut self, key: usize, code: CloseCode, reason: &str) {
        let conn = &mut self.conns[key];
        match conn.phase {
            Phase::Open => {
                // Echo the status code (RFC 6455 5.5.1); a close without one is answered 1000.
                let echo = if code == CloseCode::NO_STATUS {
                    CloseCode::NORMAL
                } else {
                    code
                };
                let mut frame = Vec::new();
                encode_close_frame(echo, "", &mut frame);
                conn.out.push_owned(frame);
                self.finish(key, code, reason);
            }
            Phase::Closing => {
                let (c, r) = match conn.closing.take() {
                    Some(b) => *b,
                    None => (code, reason.to_owned()),
                };
                self.finish(key, c, &r);
            }
            _ => {}
        }
    }

    /// The peer broke the protocol: send the close frame for the error and fail the connection.
    fn fail(&mut self, key: usize, e: proto::ProtocolError) {
        let code = e.close_code();
        tracing::debug!(conn = %self.id(key), error = %e, "protocol error");
        if let Some(c) = self
            .me()
            .stats
            .protocol_closes
            .get((code.0 - 1000) as usize)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let conn = &mut self.conns[key];
        if matches!(conn.phase, Phase::Open) && conn.out.at_frame_boundary() {
            let mut frame = Vec::new();
            encode_close_frame(code, e.reason(), &mut frame);
            conn.out.push_owned(frame);
        }
        self.finish(key, code, e.reason());
    }

    /// Starts a close handshake from our side.
    pub(crate) fn start_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        let now = self.now_ms;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.phase {
            Phase::Open => {
                let mut frame = Vec::new();
                encode_close_frame(code, reason, &mut frame);
                conn.out.push_owned(frame);
                conn.phase = Phase::Closing;
                conn.closing = Some(Box::new((code, reason.to_owned())));
                conn.since = now;
                self.schedule(key);
                self.mark_output(key);
            }
            Phase::Handshake(_) => self.abort(key, CloseCode::ABNORMAL, ""),
            _ => {}
        }
    }

    /// Ends a connection's life as seen by the handler: `on_close`, then `Draining`.
    fn finish(&mut self, key: usize, code: CloseCode, reason: &str) {
        self.close_callback(key, code, reason);
        self.drain_conn(key);
        self.mark_output(key);
    }

    fn close_callback(&mut self, key: usize, code: CloseCode, reason: &str) {
        let Core {
            handler,
            conns,
            handle,
            env,
            worker,
            ..
        } = self;
        let conn = &mut conns[key];
        if let Some(state) = conn.state.take() {
            let id = ConnId::new(*worker, key, conn.gen);
            let mut ctx = Ctx {
                out: Outbox::new(id, None, env),
                handle,
            };
            handler.on_close(&mut ctx, state, code, reason);
        }
        self.apply_deferred();
    }

    /// Drops a connection now (no close frame): `on_close` if it was open, then close.
    pub(crate) fn abort(&mut self, key: usize, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.dead {
            return;
        }
        let report = conn.closing.take().map(|b| *b);
        let (code, reason) = match report {
            Some((c, r)) if matches!(conn.phase, Phase::Closing) => (c, r),
            _ => (code, reason.to_owned()),
        };
        self.close_callback(key, code, &reason);
        let conn = &mut self.conns[key];
        conn.dead = true;
        conn.out.clear(&mut self.env.pool);
        self.dead.push(key);
    }

    /// The peer closed its side (read returned 0) or the socket failed.
    pub(crate) fn on_eof(&mut self, key: usize) {
        self.abort(key, CloseCode::ABNORMAL, "connection dropped");
    }

    /// Calls a handler callback for an open connection, with a context.
    fn callback(&mut self, key: usize, f: impl FnOnce(&mut H, &mut Ctx<'_>, &mut H::State)) {
        let Core {
            handler,
            conns,
            handle,
            env,
            shared,
            worker,
            ..
        } = self;
        let conn = &mut conns[key];
        let id = ConnId::new(*worker, key, conn.gen);
        let Conn {
            state, out, subs, ..
        } = conn;
        let mut over = false;
        if let Some(state) = state.as_mut() {
            let mut ctx = Ctx {
                out: Outbox::new(id, Some(Own { out, subs }), env),
                handle,
            };
            f(handler, &mut ctx, state);
            shared.workers[*worker as usize]
                .stats
                .messages_out
                .fetch_add(ctx.out.sent, Ordering::Relaxed);
            shared.workers[*worker as usize]
                .stats
                .drops
                .fetch_add(ctx.out.dropped, Ordering::Relaxed);
            over = ctx.out.over;
        }
        if over {
            self.slow_consumer(key);
        }
    }

    /// Applies sends and closes that callbacks addressed to other connections.
    fn apply_deferred(&mut self) {
        while !self.env.deferred.is_empty() {
            let batch = std::mem::take(&mut self.env.deferred);
            for d in batch {
                match d {
                    Deferred::Send(id, frame) => self.send_frame(id, frame),
                    Deferred::Close(id, code, reason) => self.close_id(id, code, &reason),
                    Deferred::Publish(frame, target, tag) => self.publish(frame, target, tag),
                }
            }
        }
    }

    /// Resolves an id on this worker; `None` if it is stale or gone.
    fn resolve(&self, id: ConnId) -> Option<usize> {
        let key = id.key();
        let c = self.conns.get(key)?;
        (c.gen == id.gen() && !c.dead).then_some(key)
    }

    fn send_frame(&mut self, id: ConnId, frame: Vec<u8>) {
        if id.worker() != self.worker as usize {
            if let Some(w) = self.shared.workers.get(id.worker()) {
                w.push(Command::Send(id, frame));
            }
            return;
        }
        let Some(key) = self
            .resolve(id)
            .filter(|&k| matches!(self.conns[k].phase, Phase::Open))
        else {
            self.me()
                .stats
                .unknown_target
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.conns[key].out.len() > self.cfg.write_budget {
            return match self.cfg.slow_consumer {
                SlowConsumerPolicy::Close => self.slow_consumer(key),
                SlowConsumerPolicy::Drop => {
                    self.me().stats.drops.fetch_add(1, Ordering::Relaxed);
                }
            };
        }
        self.conns[key].out.push_owned(frame);
        self.me().stats.messages_out.fetch_add(1, Ordering::Relaxed);
        self.mark_output(key);
    }

    fn close_id(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        if id.worker() != self.worker as usize {
            if let Some(w) = self.shared.workers.get(id.worker()) {
                w.push(Command::Close(id, code, reason.to_owned()));
            }
            return;
        }
        if let Some(key) = self.resolve(id) {
            self.start_close(key, code, reason);
        }
    }

    /// Closes a connection whose queue was over the write budget when more output came
    /// (the budget bounds what a reader that fell behind can hold; one message larger than
    /// the budget still goes out to a reader that keeps up, as in uWebSockets).
    fn slow_consumer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.dead || !matches!(conn.phase, Phase::Open | Phase::Closing) {
            return;
        }
        let id = ConnId::new(self.worker, key, conn.gen);
        tracing::info!(conn = %id, queued = conn.out.len(), budget = self.cfg.write_budget, "closing slow consumer");
        self.shared.workers[self.worker as usize]
            .stats
            .slow_consumer_closes
            .fetch_add(1, Ordering::Relaxed);
        let clean = conn.out.at_frame_boundary();
        conn.out.clear(&mut self.env.pool);
        conn.closing = None;
        if clean {
            let mut frame = Vec::new();
            encode_close_frame(CloseCode::POLICY_VIOLATION, "slow consumer", &mut frame);
            conn.out.push_owned(frame);
            self.finish(key, CloseCode::POLICY_VIOLATION, "slow consumer");
        } else {
            self.abort(key, CloseCode::POLICY_VIOLATION, "slow consumer");
        }
    }

    /// Queues a connection for flushing: it has output, or it is draining and its write
    /// side is still to be shut (which the backend does after the flush).
    fn mark_output(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let unshut = matches!(conn.phase, Phase::Draining { shut: false });
        if conn.dead || (conn.out.is_empty() && !unshut) {
            return;
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Called by the backend after it flushed `key` (fully or not).
    pub(crate) fn after_flush(&mut self, key: usize) -> AfterFlush {
        let Some(conn) = self.conns.get_mut(key) else {
            return AfterFlush::Nothing;
        };
        conn.dirty = false;
        if conn.dead || !conn.out.is_empty() {
            return AfterFlush::Nothing;
        }
        match &mut conn.phase {
            Phase::Draining { shut } if !*shut => {
                *shut = true;
                AfterFlush::ShutdownWrite
            }
            _ => AfterFlush::Nothing,
        }
    }

    /// Marks `key` for flushing (after a writable event).
    pub(crate) fn want_flush(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.dirty && !c.dead && !c.out.is_empty() {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    // ---- broadcast ----

    /// Publishes an encoded frame from this worker: delivered here at once, and sent as one
    /// queue item to each other worker that may hold recipients.
    pub(crate) fn publish(
        &mut self,
        frame: Arc<[u8]>,
        target: OwnedTarget,
        tag: Option<(ConnId, u64)>,
    ) {
        let n = self.shared.workers.len();
        self.me()
            .stats
            .events_published
            .fetch_add(1, Ordering::Relaxed);
        // Lists of connections are split by owning worker here; keys, topics and "all" are
        // resolved by each worker against its own tables.
        let parts: Vec<(usize, OwnedTarget)> = match target {
            OwnedTarget::Conns(ids) => group_by_worker(&ids, n)
                .into_iter()
                .enumerate()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(w, ids)| (w, OwnedTarget::Conns(ids)))
                .collect(),
            other => {
                let shared = Arc::new(Event {
                    frame,
                    target: other,
                    tracker: None,
                });
                return self.fan_out_all(shared, tag);
            }
        };
        let tracker = tag.map(|(origin, tag)| {
            Arc::new(Tracker {
                remaining: AtomicUsize::new(parts.len()),
                reached: AtomicUsize::new(0),
                origin,
                tag,
            })
        });
        if parts.is_empty() {
            if let Some((origin, tag)) = tag {
                self.receipt(origin, tag, 0);
            }
            return;
        }
        for (w, t) in parts {
            let ev = Arc::new(Event {
                frame: frame.clone(),
                target: t,
                tracker: tracker.clone(),
            });
            if w == self.worker as usize {
                self.deliver_event(&ev);
            } else {
                self.shared.workers[w].push(Command::Publish(ev));
            }
        }
    }

    /// Sends one event (keys, topic, all) to every worker, this one included.
    fn fan_out_all(&mut self, mut ev: Arc<Event>, tag: Option<(ConnId, u64)>) {
        let n = self.shared.workers.len();
        if let Some((origin, tag)) = tag {
            let tracker = Arc::new(Tracker {
                remaining: AtomicUsize::new(n),
                reached: AtomicUsize::new(0),
                origin,
                tag,
            });
            Arc::get_mut(&mut ev).expect("not shared yet").tracker = Some(tracker);
        }
        for w in 0..n {
            if w != self.worker as usize {
                self.shared.workers[w].push(Command::Publish(ev.clone()));
            }
        }
        self.deliver_event(&ev);
    }

    /// Delivers an event to its recipients on this worker; reports to its tracker.
    pub(crate) fn deliver_event(&mut self, ev: &Event) {
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        match &ev.target {
            OwnedTarget::All => slots.extend(
                self.conns
                    .iter()
                    .filter(|(_, c)| matches!(c.phase, Phase::Open))
                    .map(|(k, _)| k as u32),
            ),
            OwnedTarget::Topic(t) => {
                if let Some(set) = self.env.registry.topic(t) {
                    slots.extend(set.iter().copied());
                }
            }
            OwnedTarget::Keys(keys) => {
                for k in keys.iter() {
                    slots.extend_from_slice(self.env.registry.key(k));
                }
                if keys.len() > 1 {
                    slots.sort_unstable();
                    slots.dedup();
                }
            }
            OwnedTarget::Conns(ids) => {
                for id in ids {
                    if let Some(k) = (id.worker() == self.worker as usize)
                        .then(|| self.resolve(*id))
                        .flatten()
                    {
                        slots.push(k as u32);
                    }
                }
                slots.sort_unstable();
                slots.dedup();
            }
        }
        let mut reached = 0;
        for &slot in &slots {
            if self.push_shared_to(slot as usize, &ev.frame) {
                reached += 1;
            }
        }
        self.scratch = slots;
        self.me()
            .stats
            .deliveries
            .fetch_add(reached as u64, Ordering::Relaxed);
        if let Some(t) = &ev.tracker {
            if let Some(total) = t.finish_part(reached) {
                self.receipt(t.origin, t.tag, total);
            }
        }
    }

    /// Queues a shared frame for one connection, applying the slow-consumer policy.
    fn push_shared_to(&mut self, key: usize, frame: &Arc<[u8]>) -> bool {
        let budget = self.cfg.write_budget;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.dead || !matches!(conn.phase, Phase::Open) {
            return false;
        }
        if conn.out.len() > budget {
            match self.cfg.slow_consumer {
                SlowConsumerPolicy::Close => self.slow_consumer(key),
                SlowConsumerPolicy::Drop => {
                    self.me().stats.drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            return false;
        }
        conn.out.push_shared(frame.clone());
        if !conn.dirty {
            conn.dirty = true;
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
        self.mark_output(key);
    }

    /// Binds, unbinds, subscribes or unsubscribes a connection on behalf of another thread.
    fn bind_op(&mut self, id: ConnId, name: &str, op: BindOp) {
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
        match op {
            BindOp::Bind => env.registry.bind(subs, slot, name),
            BindOp::Unbind => env.registry.unbind(subs, slot, name),
            BindOp::Subscribe => env.registry.subscribe(subs, slot, name),
            BindOp::Unsubscribe => env.registry.unsubscribe(subs, slot, name),
        };
    }

    // ---- timers ----

    fn deadline(&self, conn: &Conn<H::State, Io>) -> u64 {
        let cfg = &self.cfg;
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        match conn.phase {
            Phase::Handshake(_) => conn.since + ms(cfg.handshake_timeout),
            Phase::Open => {
                let mut d = u64::MAX;
                if let Some(p) = cfg.ping_interval {
                    d = match conn.ping_sent {
                        Some(t) => t + ms(cfg.pong_timeout),
                        None => conn.last_rx + ms(p),
                    };
                }
                if let Some(i) = cfg.idle_timeout {
                    d = d.min(conn.last_rx + ms(i));
                }
                d
            }
            Phase::Closing | Phase::Draining { .. } => conn.since + ms(cfg.close_timeout),
        }
    }

    /// Makes sure `key` has a timer entry no later than its deadline.
    fn schedule(&mut self, key: usize) {
        let d = self.deadline(&self.conns[key]);
        if d == u64::MAX {
            return;
        }
        let tick = d.div_ceil(TICK_MS);
        let conn = &mut self.conns[key];
        if conn.timer_tick == 0 || tick < conn.timer_tick {
            conn.timer_tick = self.timers.schedule(key as u32, conn.gen, tick);
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
            if conn.gen != gen || conn.timer_tick != tick || conn.dead {
                continue; // stale entry
            }
            conn.timer_tick = 0;
            self.on_timer(key);
            if self.conns.get(key).is_some_and(|c| !c.dead) {
                self.schedule(key);
            }
        }
        self.fired = fired;
        if self.shutting_down && self.now_ms >= self.shutdown_deadline {
            let keys: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| !c.dead)
                .map(|(k, _)| k)
                .collect();
            for key in keys {
                self.abort(key, CloseCode::ABNORMAL, "shutdown deadline");
            }
        }
    }

    fn on_timer(&mut self, key: usize) {
        let now = self.now_ms;
        let deadline = self.deadline(&self.conns[key]);
        if now < deadline {
            return;
        }
        let cfg = self.cfg.clone();
        let conn = &mut self.conns[key];
        match conn.phase {
            Phase::Handshake(_) => {
                tracing::debug!(conn = key, "handshake timeout");
                self.me()
                    .stats
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                self.abort(key, CloseCode::ABNORMAL, "handshake timeout");
            }
            Phase::Open => {
                let idle = cfg
                    .idle_timeout
                    .is_some_and(|i| now >= conn.last_rx + i.as_millis() as u64);
                if idle {
                    self.me().stats.idle_closes.fetch_add(1, Ordering::Relaxed);
                    self.start_close(key, CloseCode::GOING_AWAY, "idle timeout");
                } else if conn.ping_sent.is_some() {
                    self.me()
                        .stats
                        .pong_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    self.abort(key, CloseCode::ABNORMAL, "pong timeout");
                } else {
                    conn.ping_sent = Some(now);
                    let h = encode_header(true, OpCode::Ping, 0, None);
                    conn.out.push_parts(&mut self.env.pool, &[&h]);
                    self.me().stats.pings_sent.fetch_add(1, Ordering::Relaxed);
                    self.mark_output(key);
                }
            }
            Phase::Closing => self.abort(key, CloseCode::ABNORMAL, "close handshake timeout"),
            Phase::Draining { .. } => {
                let conn = &mut self.conns[key];
                conn.dead = true;
                conn.out.clear(&mut self.env.pool);
                self.dead.push(key);
            }
        }
    }

    // ---- inbox ----

    /// Takes commands from other threads. Returns true if a shutdown was requested.
    pub(crate) fn drain_inbox(&mut self) -> bool {
        let mut cmds = std::mem::take(&mut self.commands);
        self.shared.workers[self.worker as usize].drain(&mut cmds);
        let mut shutdown = false;
        for cmd in cmds.drain(..) {
            match cmd {
                Command::Send(id, frame) => self.send_frame(id, frame),
                Command::Close(id, code, reason) => self.close_id(id, code, &reason),
                Command::Shutdown => shutdown = true,
                Command::Publish(ev) => self.deliver_event(&ev),
                Command::Receipt {
                    origin,
                    tag,
                    reached,
                } => self.receipt(origin, tag, reached),
                Command::Bind(id, name, op) => self.bind_op(id, &name, op),
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
        self.shutdown_deadline = self.now_ms + self.cfg.shutdown_timeout.as_millis() as u64;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.conns[key].phase {
                Phase::Open => self.start_close(key, CloseCode::GOING_AWAY, "server shutting down"),
                Phase::Handshake(_) => self.abort(key, CloseCode::ABNORMAL, "server shutting down"),
                _ => {}
            }
        }
    }

    /// Whether the worker may exit: shutting down and every connection gone.
    pub(crate) fn finished(&self) -> bool {
        self.shutting_down && self.conns.is_empty()
    }
}
