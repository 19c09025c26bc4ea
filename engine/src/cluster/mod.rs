//! Many volley nodes as one server, through a broker (core NATS; see docs/cluster.md).
//!
//! With [`crate::Config::cluster`] set, the same publish, send, close, bind and subscribe
//! calls reach connections on every node:
//!
//! * **Routing by interest.** A node subscribes to a key's or a topic's subject only while at
//!   least one of its connections is bound to it: each worker's table reports when a name
//!   gets its first local connection and loses its last, and the node keeps, per subject, the
//!   set of its workers with interest (subscribe when the set fills, unsubscribe when it
//!   empties). The broker forwards a publish only to nodes with interest. A [`ConnId`]
//!   carries its node; a send, close or bind for another node's connection goes to that
//!   node's own subject; [`Target::All`](crate::Target::All) uses one subject every node
//!   holds. No subscription per connection.
//! * **One broker link per process** ([`Broker`], NATS in [`nats`]), on threads of its own.
//!   A broker message is decoded and framed once per node and the same shared frame goes,
//!   as one queue item, to each worker with interest, as a local publish does.
//! * **At most once.** Events go to the broker without acknowledgement; while the link is
//!   down, local delivery goes on and events for other nodes are counted as dropped
//!   (`remote_dropped`); the link reconnects and subscribes again by itself.
//!
//! Subjects (`prefix` is `ClusterConfig::subject_prefix`, `volley` by default):
//! `prefix.all`, `prefix.node.N`, `prefix.k.NAME` / `prefix.t.NAME` for names of ASCII
//! letters, digits, `-` and `_`, and `prefix.kx.HEX` / `prefix.tx.HEX` (the UTF-8 bytes in
//! hex) for any other name.

pub(crate) mod envelope;
pub(crate) mod nats;

use crate::broadcast::registry::{Interest, Kind};
use crate::broadcast::{new_twin, route, Event, OwnedTarget};
use crate::proto::frame::encode_header;
use crate::proto::{CloseCode, OpCode};
use crate::runtime::inbox::{BindOp, Command, WorkerShared};
use crate::types::ConnId;
use envelope::{Body, Envelope};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// How a server joins a cluster (`Config::cluster`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// Broker servers, `nats://host:port` (several for a NATS cluster: the link tries them
    /// in turn).
    pub urls: Vec<String>,
    /// This node's id, 1 to 255, unique in the cluster: it is carried in every [`ConnId`] so
    /// that a send to a connection reaches its node.
    pub node_id: u8,
    /// Start even if no broker server answers (serving local connections, and connecting in
    /// the background). Off by default: a node that cannot reach the broker fails to start.
    pub start_local_only: bool,
    /// The first token of every subject, to run several clusters on one broker.
    pub subject_prefix: String,
    /// Most messages, and bytes, waiting for the link to write them; past either, events
    /// for other nodes are dropped and counted (`remote_dropped`).
    pub max_queue: (usize, usize),
    /// Largest broker message accepted (larger ones are skipped and counted in `bad_in`).
    pub max_message: usize,
}

impl ClusterConfig {
    /// A cluster on the NATS servers `urls`, as node `node_id` (1 to 255).
    pub fn new<I, S>(urls: I, node_id: u8) -> ClusterConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClusterConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            node_id,
            start_local_only: false,
            subject_prefix: "volley".into(),
            max_queue: (65_536, 64 << 20),
            max_message: 16 << 20,
        }
    }

    /// Starts even when no broker server answers (see [`ClusterConfig::start_local_only`]).
    pub fn start_local_only(mut self, yes: bool) -> Self {
        self.start_local_only = yes;
        self
    }

    /// Sets the subject prefix.
    pub fn subject_prefix(mut self, p: impl Into<String>) -> Self {
        self.subject_prefix = p.into();
        self
    }

    /// Sets the most messages and bytes waiting for the link (see
    /// [`ClusterConfig::max_queue`]).
    pub fn max_queue(mut self, messages: usize, bytes: usize) -> Self {
        self.max_queue = (messages.max(1), bytes.max(1));
        self
    }

    /// Sets the largest broker message accepted.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }
}

/// The seam between the cluster and a broker: another broker (Redis sharded pub/sub) is
/// one more implementation of this trait.
pub(crate) trait Broker: Send + Sync + std::fmt::Debug {
    /// Queues `payload` for each of `subjects`; false if it was not taken (link down, queue
    /// full, larger than the broker takes).
    fn publish(&self, subjects: Vec<String>, payload: Vec<u8>) -> bool;
    /// This node's interest in `subject` began (`true`) or ended.
    fn interest(&self, subject: &str, on: bool);
    /// Whether the link is connected.
    fn is_up(&self) -> bool;
    /// Reconnections since start.
    fn reconnects(&self) -> u64;
    /// Closes the link and joins its threads.
    fn stop(&self);
}

/// The cluster counters of a node (`Handle::cluster_stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStatsSnapshot {
    /// Broker messages received.
    pub msgs_in: u64,
    /// Payload bytes of broker messages received.
    pub bytes_in: u64,
    /// Broker messages published (one per subject).
    pub msgs_out: u64,
    /// Payload bytes published.
    pub bytes_out: u64,
    /// 1 while the broker link is connected.
    pub link_up: u64,
    /// Reconnections of the broker link.
    pub reconnects: u64,
    /// Events (or sends) for other nodes not published: link down, queue full or too large.
    pub remote_dropped: u64,
    /// Broker messages refused: malformed or over `max_message`.
    pub bad_in: u64,
    /// Copies of one multi-key event skipped (a node bound to several of its keys).
    pub duplicates_skipped: u64,
    /// Subjects this node is subscribed to on the broker (gauge).
    pub subscriptions: u64,
    /// Events received from other nodes with a lag measured (publish to arrival here).
    pub lag_samples: u64,
    /// Sum of those lags, in microseconds (wall clocks of two nodes: on one machine exact).
    pub lag_us_sum: u64,
    /// Largest of those lags, in microseconds.
    pub lag_us_max: u64,
    /// Keys and topics bound here whose subject would be too long for the broker (their
    /// UTF-8 over about 500 bytes): served on this node only.
    pub unroutable: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    pub(crate) msgs_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) msgs_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) link_up: AtomicU64,
    pub(crate) remote_dropped: AtomicU64,
    pub(crate) bad_in: AtomicU64,
    pub(crate) duplicates_skipped: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) lag_samples: AtomicU64,
    pub(crate) lag_us_sum: AtomicU64,
    pub(crate) lag_us_max: AtomicU64,
    pub(crate) unroutable: AtomicU64,
}

/// Workers with interest in one subject (up to 256 workers).
type Mask = [u64; 4];

fn mask_set(m: &mut Mask, w: u8, on: bool) {
    let (i, b) = ((w / 64) as usize, 1u64 << (w % 64));
    if on {
        m[i] |= b;
    } else {
        m[i] &= !b;
    }
}

/// What the cluster reaches on its own node: the workers' inboxes. The runtime's `Shared`, a
/// layer above, implements it and is given to [`Cluster::attach`] once the server has
/// started (a trait, so that the cluster need not name the runtime's shared state).
pub(crate) trait Node: Send + Sync + std::fmt::Debug {
    /// Every worker's inbox, by worker index.
    fn workers(&self) -> &[WorkerShared];
    /// Whether the server compresses (events carry a compressed twin's cell).
    fn deflate(&self) -> bool;
}

/// A node's side of the cluster: its link, its interest, its counters.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) node: u8,
    prefix: String,
    link: OnceLock<Box<dyn Broker>>,
    interest: Mutex<HashMap<Box<str>, Mask>>,
    seq: AtomicU64,
    pub(crate) stats: Arc<ClusterStats>,
    shared: OnceLock<Weak<dyn Node>>,
    /// The last multi-key event delivered from each origin node: copies of one event reach
    /// a node once per key subject it holds, one after another (one publisher connection,
    /// in order), so the node delivers the first and skips the rest.
    last_multi: Mutex<[u64; 256]>,
}

impl Cluster {
    /// Connects to the broker (or, with `start_local_only`, starts connecting in the
    /// background) and subscribes to this node's subject and to `all`.
    pub(crate) fn start(
        cfg: &ClusterConfig,
        limits_max_message: usize,
    ) -> io::Result<Arc<Cluster>> {
        if cfg.node_id == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cluster node id must be 1 to 255 (0 is a server outside any cluster)",
            ));
        }
        let addrs = cfg
            .urls
            .iter()
            .map(|u| nats::server_addr(u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let prefix_ok = !cfg.subject_prefix.is_empty()
            && cfg.subject_prefix.len() <= 64
            && cfg.subject_prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
            });
        if !prefix_ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cluster subject prefix {:?}: 1 to 64 bytes of dot-separated tokens of \
                     printable ASCII, no `*` or `>`",
                    cfg.subject_prefix
                ),
            ));
        }
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cluster: no broker URL given",
            ));
        }
        let first = match nats::connect_any(&addrs, 0) {
            Ok(c) => Some(c),
            Err(e) if cfg.start_local_only => {
                tracing::warn!(
                    "cluster broker unreachable ({e}); starting local-only, connecting in the background"
                );
                None
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cluster broker unreachable: {e} (start_local_only / \
                         --cluster-local-start to start without it)"
                    ),
                ))
            }
        };
        let prefix = cfg.subject_prefix.clone();
        let stats = Arc::new(ClusterStats::default());
        // A random start for the event sequence: a restarted node with the same id does not
        // look like a repeat of its former self.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32);
        let cluster = Arc::new(Cluster {
            node: cfg.node_id,
            prefix: prefix.clone(),
            link: OnceLock::new(),
            interest: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(seed),
            stats: stats.clone(),
            shared: OnceLock::new(),
            last_multi: Mutex::new([0; 256]),
        });
        let weak = Arc::downgrade(&cluster);
        let inbound: nats::Inbound = Box::new(move |payload| {
            if let Some(c) = weak.upgrade() {
                c.on_message(payload);
            }
        });
        let link = nats::NatsLink::start(
            nats::LinkConfig {
                addrs,
                name: format!("volley-node-{}", cfg.node_id),
                max_queue: cfg.max_queue,
                // A message carries one WebSocket message plus its envelope.
                max_in: cfg
                    .max_message
                    .min(limits_max_message.saturating_add(1 << 20)),
                fixed: vec![
                    format!("{prefix}.all"),
                    format!("{prefix}.node.{}", cfg.node_id),
                ],
            },
            first,
            stats,
            inbound,
        )?;
        let _ = cluster.link.set(Box::new(link));
        Ok(cluster)
    }

    /// Gives the cluster the workers' inboxes (once the server has started).
    pub(crate) fn attach(&self, node: Weak<dyn Node>) {
        let _ = self.shared.set(node);
    }

    /// Stops the link.
    pub(crate) fn stop(&self) {
        if let Some(l) = self.link.get() {
            l.stop();
        }
    }

    fn link(&self) -> Option<&dyn Broker> {
        self.link.get().map(|b| &**b)
    }

    /// The subject of a key or topic.
    pub(crate) fn subject(&self, kind: Kind, name: &str) -> String {
        let (raw, hex) = match kind {
            Kind::Key => ("k", "kx"),
            Kind::Topic => ("t", "tx"),
        };
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if plain {
            format!("{}.{raw}.{name}", self.prefix)
        } else {
            let mut s = format!("{}.{hex}.", self.prefix);
            for b in name.bytes() {
                s.push_str(&format!("{b:02x}"));
            }
            if name.is_empty() {
                s.push('_');
            }
            s
        }
    }

    fn node_subject(&self, node: u8) -> String {
        format!("{}.node.{node}", self.prefix)
    }

    /// A worker's table got its first connection for `name` (`on`) or lost its last.
    pub(crate) fn interest_changed(&self, worker: u8, kind: Kind, name: &str, on: bool) {
        let subject = self.subject(kind, name);
        if !routable(&subject) {
            // Local delivery only: the broker would refuse the SUB (and drop the link).
            if on {
                let n = self.stats.unroutable.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        len = name.len(),
                        unroutable = n,
                        "cluster: a name too long for a broker subject is served on this node only"
                    );
                }
            }
            return;
        }
        let mut map = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        let before_empty = map.get(subject.as_str()).map_or(true, |m| *m == [0; 4]);
        let m = map.entry(subject.as_str().into()).or_insert([0; 4]);
        mask_set(m, worker, on);
        let after_empty = *m == [0; 4];
        if after_empty {
            map.remove(subject.as_str());
        }
        // Told to the link under the lock, so the link sees the changes of one subject in
        // the order they happened.
        if before_empty != after_empty {
            if let Some(l) = self.link() {
                l.interest(&subject, !after_empty);
            }
        }
    }

    fn workers_for(&self, subjects: impl Iterator<Item = String>) -> Mask {
        let map = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = [0u64; 4];
        for s in subjects {
            if let Some(m) = map.get(s.as_str()) {
                for i in 0..4 {
                    out[i] |= m[i];
                }
            }
        }
        out
    }

    fn now_us() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }

    fn send_envelope(&self, subjects: Vec<String>, opcode: u8, body: &Body<'_>, payload: &[u8]) {
        if subjects.is_empty() {
            return;
        }
        let Some(link) = self.link() else { return };
        if !envelope::fits(body) {
            self.stats.remote_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(envelope::HEAD + 16 + payload.len());
        envelope::encode(
            &mut out,
            opcode,
            self.node,
            seq,
            Self::now_us(),
            body,
            payload,
        );
        if !link.publish(subjects, out) {
            let n = self.stats.remote_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    link_up = link.is_up(),
                    "cluster: an event for other nodes was dropped (link down, queue full or too large)"
                );
            }
        }
    }

    /// Publishes a locally made event to the other nodes with interest; returns the part
    /// this node delivers (a list of connections keeps only this node's).
    pub(crate) fn publish(&self, mut target: OwnedTarget, frame: &[u8]) -> OwnedTarget {
        self.publish_remote(&target, frame);
        if let OwnedTarget::Conns(ids) = &mut target {
            ids.retain(|id| id.node() == self.node);
        }
        target
    }

    fn publish_remote(&self, target: &OwnedTarget, frame: &[u8]) {
        let (opcode, payload) = split_frame(frame);
        match target {
            OwnedTarget::All => self.send_envelope(
                vec![format!("{}.all", self.prefix)],
                opcode,
                &Body::All,
                payload,
            ),
            OwnedTarget::Topic(t) => {
                let subject = self.subject(Kind::Topic, t);
                if !routable(&subject) {
                    self.stats.remote_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.send_envelope(vec![subject], opcode, &Body::Topic(t), payload)
            }
            OwnedTarget::Keys(ks) => {
                let subjects: Vec<String> = ks
                    .iter()
                    .map(|k| self.subject(Kind::Key, k))
                    .filter(|s| routable(s))
                    .collect();
                if subjects.len() < ks.len() {
                    self.stats.remote_dropped.fetch_add(1, Ordering::Relaxed);
                }
                let body = Body::Keys(ks.iter().map(|k| &**k).collect());
                self.send_envelope(subjects, opcode, &body, payload);
            }
            OwnedTarget::Conns(ids) => {
                let mut by_node: HashMap<u8, Vec<ConnId>> = HashMap::new();
                for id in ids.iter().filter(|id| id.node() != self.node) {
                    by_node.entry(id.node()).or_default().push(*id);
                }
                for (node, ids) in by_node {
                    self.send_envelope(
                        vec![self.node_subject(node)],
                        opcode,
                        &Body::Conns(ids),
                        payload,
                    );
                }
            }
        }
    }

    /// Sends an encoded frame to a connection of another node.
    pub(crate) fn send(&self, id: ConnId, frame: &[u8]) {
        let (opcode, payload) = split_frame(frame);
        self.send_envelope(
            vec![self.node_subject(id.node())],
            opcode,
            &Body::Send(id),
            payload,
        );
    }

    /// Starts the close handshake of a connection of another node.
    pub(crate) fn close(&self, id: ConnId, code: CloseCode, reason: &str) {
        self.send_envelope(
            vec![self.node_subject(id.node())],
            0,
            &Body::Close(id, code.0, reason),
            &[],
        );
    }

    /// Binds (or unbinds, subscribes, unsubscribes) a connection of another node.
    pub(crate) fn bind(&self, id: ConnId, name: &str, op: BindOp) {
        let op = match op {
            BindOp::Bind => 0,
            BindOp::Unbind => 1,
            BindOp::Subscribe => 2,
            BindOp::Unsubscribe => 3,
        };
        self.send_envelope(
            vec![self.node_subject(id.node())],
            0,
            &Body::Bind(id, op, name),
            &[],
        );
    }

    /// One broker message: decoded and framed once, then one queue item per worker with
    /// interest. Runs on the link's reader thread.
    fn on_message(&self, msg: &[u8]) {
        let env = match envelope::decode(msg) {
            Ok(e) => e,
            Err(e) => {
                let n = self.stats.bad_in.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        len = msg.len(),
                        bad = n,
                        "malformed broker message dropped: {e}"
                    );
                }
                return;
            }
        };
        let Some(shared) = self.shared.get().and_then(Weak::upgrade) else {
            return;
        };
        let now = Self::now_us();
        if env.sent_us > 0 && now >= env.sent_us {
            let lag = now - env.sent_us;
            self.stats.lag_samples.fetch_add(1, Ordering::Relaxed);
            self.stats.lag_us_sum.fetch_add(lag, Ordering::Relaxed);
            self.stats.lag_us_max.fetch_max(lag, Ordering::Relaxed);
        }
        self.route(&*shared, env);
    }

    fn route(&self, shared: &dyn Node, env: Envelope<'_>) {
        let workers = shared.workers();
        let mine = |id: &ConnId| id.node() == self.node && id.worker() < workers.len();
        let frame = || -> Arc<[u8]> {
            let op = if env.opcode == 1 {
                OpCode::Text
            } else {
                OpCode::Binary
            };
            let h = encode_header(true, op, env.payload.len() as u64, None);
            h.iter().chain(env.payload.iter()).copied().collect()
        };
        let push_all = |mask: Option<Mask>, target: OwnedTarget| {
            let ev = Arc::new(Event {
                frame: frame(),
                target,
                tracker: None,
                // The excluded publisher (publish_others, publish_except) is a connection of
                // the origin node, never of this one: nothing to skip here.
                except: None,
                // Compressed once for the node (by its first worker with a deflate peer).
                twin: new_twin(shared.deflate()),
            });
            for (w, inbox) in workers.iter().enumerate() {
                if mask.map_or(true, |m| m[w / 64] & (1 << (w % 64)) != 0) {
                    inbox.push_event(ev.clone());
                }
            }
        };
        match env.body {
            Body::All => push_all(None, OwnedTarget::All),
            Body::Topic(t) => {
                let m = self.workers_for(std::iter::once(self.subject(Kind::Topic, t)));
                if m != [0; 4] {
                    push_all(Some(m), OwnedTarget::Topic(t.into()));
                }
            }
            Body::Keys(ks) => {
                if ks.len() > 1 {
                    let mut last = self.last_multi.lock().unwrap_or_else(|e| e.into_inner());
                    if last[env.origin as usize] == env.seq {
                        self.stats
                            .duplicates_skipped
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    last[env.origin as usize] = env.seq;
                }
                let m = self.workers_for(ks.iter().map(|k| self.subject(Kind::Key, k)));
                if m != [0; 4] {
                    let mut ks: Vec<&str> = ks;
                    ks.sort_unstable();
                    ks.dedup();
                    push_all(
                        Some(m),
                        OwnedTarget::Keys(ks.into_iter().map(Into::into).collect()),
                    );
                }
            }
            Body::Conns(ids) => {
                let ids: Vec<ConnId> = ids.into_iter().filter(mine).collect();
                if ids.is_empty() {
                    return;
                }
                let target = OwnedTarget::Conns(ids);
                route(
                    frame(),
                    target,
                    workers.len(),
                    None,
                    None,
                    shared.deflate(),
                    |w, ev| {
                        workers[w].push_event(ev);
                    },
                );
            }
            Body::Send(id) if mine(&id) => {
                workers[id.worker()].offer(Command::Send(id, frame()));
            }
            Body::Close(id, code, reason) if mine(&id) => {
                workers[id.worker()].push(Command::Close(id, CloseCode(code), reason.to_owned()));
            }
            Body::Bind(id, op, name) if mine(&id) => {
                let op = match op {
                    0 => BindOp::Bind,
                    1 => BindOp::Unbind,
                    2 => BindOp::Subscribe,
                    _ => BindOp::Unsubscribe,
                };
                workers[id.worker()].push(Command::Bind(id, name.into(), op));
            }
            Body::Send(_) | Body::Close(..) | Body::Bind(..) => {
                self.stats.bad_in.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters, read now.
    pub(crate) fn snapshot(&self) -> ClusterStatsSnapshot {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClusterStatsSnapshot {
            msgs_in: l(&s.msgs_in),
            bytes_in: l(&s.bytes_in),
            msgs_out: l(&s.msgs_out),
            bytes_out: l(&s.bytes_out),
            link_up: l(&s.link_up),
            reconnects: self.link().map_or(0, |b| b.reconnects()),
            remote_dropped: l(&s.remote_dropped),
            bad_in: l(&s.bad_in),
            duplicates_skipped: l(&s.duplicates_skipped),
            subscriptions: l(&s.subscriptions),
            lag_samples: l(&s.lag_samples),
            lag_us_sum: l(&s.lag_us_sum),
            lag_us_max: l(&s.lag_us_max),
            unroutable: l(&s.unroutable),
        }
    }

    /// The counters in the Prometheus text format (`volley_cluster_*`).
    pub(crate) fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let s = self.snapshot();
        let rows: [(&str, &str, &str, u64); 14] = [
            (
                "cluster_messages_in_total",
                "counter",
                "Broker messages received.",
                s.msgs_in,
            ),
            (
                "cluster_received_bytes_total",
                "counter",
                "Payload bytes of broker messages received.",
                s.bytes_in,
            ),
            (
                "cluster_messages_out_total",
                "counter",
                "Broker messages published (one per subject).",
                s.msgs_out,
            ),
            (
                "cluster_sent_bytes_total",
                "counter",
                "Payload bytes published to the broker.",
                s.bytes_out,
            ),
            (
                "cluster_link_up",
                "gauge",
                "1 while the broker link is connected.",
                s.link_up,
            ),
            (
                "cluster_reconnects_total",
                "counter",
                "Reconnections of the broker link.",
                s.reconnects,
            ),
            (
                "cluster_remote_dropped_total",
                "counter",
                "Events for other nodes dropped: link down, queue full or too large.",
                s.remote_dropped,
            ),
            (
                "cluster_bad_messages_total",
                "counter",
                "Broker messages refused: malformed or over the size limit.",
                s.bad_in,
            ),
            (
                "cluster_duplicates_skipped_total",
                "counter",
                "Copies of one multi-key event skipped.",
                s.duplicates_skipped,
            ),
            (
                "cluster_subscriptions",
                "gauge",
                "Subjects subscribed on the broker.",
                s.subscriptions,
            ),
            (
                "cluster_lag_samples_total",
                "counter",
                "Events from other nodes whose lag was measured.",
                s.lag_samples,
            ),
            (
                "cluster_lag_microseconds_total",
                "counter",
                "Sum of cross-node lags (publish on the origin to arrival here), in microseconds.",
                s.lag_us_sum,
            ),
            (
                "cluster_lag_max_microseconds",
                "gauge",
                "Largest cross-node lag seen, in microseconds.",
                s.lag_us_max,
            ),
            (
                "cluster_unroutable_total",
                "counter",
                "Names bound here too long for a broker subject (served on this node only).",
                s.unroutable,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP volley_{name} {help}");
            let _ = writeln!(out, "# TYPE volley_{name} {kind}");
            let _ = writeln!(out, "volley_{name}{{node=\"{}\"}} {v}", self.node);
        }
    }
}

/// Longest subject sent to the broker: NATS refuses a control line (`SUB subject sid`, `PUB
/// subject size`) over 4 KiB by default and drops the connection.
const MAX_SUBJECT: usize = 1024;

fn routable(subject: &str) -> bool {
    subject.len() <= MAX_SUBJECT
}

/// The opcode (1 text, 2 binary) and the payload of an unmasked server frame made by
/// `encode_shared` or `encode_frame`.
fn split_frame(frame: &[u8]) -> (u8, &[u8]) {
    let opcode = frame.first().map_or(2, |b| b & 0x0F);
    let head = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    (opcode, frame.get(head..).unwrap_or(&[]))
}

/// What a worker's tables tell the cluster.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) worker: u8,
}

impl Interest for Watch {
    fn changed(&self, kind: Kind, name: &str, on: bool) {
        self.cluster.interest_changed(self.worker, kind, name, on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_workers(m: &Mask) -> impl Iterator<Item = usize> + '_ {
        (0..256).filter(|w| m[w / 64] & (1u64 << (w % 64)) != 0)
    }

    #[test]
    fn masks_and_frames() {
        let mut m = [0u64; 4];
        mask_set(&mut m, 0, true);
        mask_set(&mut m, 200, true);
        assert_eq!(mask_workers(&m).collect::<Vec<_>>(), [0, 200]);
        mask_set(&mut m, 0, false);
        assert_eq!(mask_workers(&m).collect::<Vec<_>>(), [200]);
        let f = crate::broadcast::encode_shared(crate::types::Message::Text("hi"));
        assert_eq!(split_frame(&f), (1, &b"hi"[..]));
        let big = vec![1u8; 70_000];
        let f = crate::broadcast::encode_shared(crate::types::Message::Binary(&big));
        assert_eq!(split_frame(&f), (2, &big[..]));
    }
}
