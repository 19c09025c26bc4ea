//! The thread-per-core runtime: [`Server`], its [`Config`], the [`Handle`] other threads use,
//! and connection ids.
//!
//! One worker per core, each with its own poller, its own listener on the same address
//! (`SO_REUSEPORT`), its own slab of connections, timer wheel and inbox. Workers share
//! nothing on the hot path; other threads reach them through their inboxes.

pub(crate) mod compress;
pub(crate) mod core;
pub(crate) mod metrics;
pub(crate) mod queue;
pub(crate) mod timer;
pub(crate) mod upgrade;

pub use upgrade::Pending;

use crate::broadcast::{Receipt, Target};
use crate::driver;
use crate::handler::{Handler, Message};
pub use crate::proto::deflate::DeflateConfig;
use crate::proto::{CloseCode, Limits};
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The io_uring backend's settings, grouped in [`Config::uring`].
#[derive(Clone, Debug, Default)]
pub struct UringConfig {
    /// Most direct descriptors in one ring's fixed-file table (0, the default: the soft
    /// open-files limit, the kernel's cap). Below it, fewer connections fill a ring and
    /// `max_connections` takes more rings per worker sooner (tests use it to get several).
    pub ring_slots: usize,
    /// Provided receive buffers per ring (a power of two) and their size. Receives take them
    /// from the ring (incrementally where the kernel allows it); they go back to the ring as
    /// soon as the worker has consumed them. Running out (`ENOBUFS`) only delays receives.
    /// `None` (the default): 4 MiB per ring, as 64 x 64 KiB where the kernel consumes
    /// buffers incrementally (Linux 6.12: a 16 KiB message lands in one completion instead of
    /// five, and small reads still pack), else as 1,024 x 4 KiB (each receive takes a whole
    /// buffer, so many small reads at once need many buffers).
    pub buffers: Option<(u16, usize)>,
    /// Send with `SENDMSG_ZC` (zero-copy) when a connection's batch is at least this many
    /// bytes (`None`: never, the default; see docs/benchmarks.md for why).
    pub send_zc_min: Option<usize>,
}

/// Server configuration. Every field has a default; set what you need.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    pub addr: String,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Pin worker `i` to core `i` (core_affinity).
    pub pin_workers: bool,
    /// Listen backlog (at least 1,024 avoids SYN retransmits under connection bursts).
    pub backlog: i32,
    /// Most connections the server holds; past it new ones get `503`. 0 (the default): no
    /// limit but the backend's (open files for mio; fixed-file tables for io_uring). With
    /// io_uring, a limit beyond what one ring per worker can hold gives each worker several
    /// rings (the worker count does not change).
    pub max_connections: usize,
    /// Frame and message size limits (1009 beyond them).
    pub limits: Limits,
    /// Largest request head (431 beyond it).
    pub max_head: usize,
    /// A client must finish its request head within this time.
    pub handshake_timeout: Duration,
    /// Close a connection from which nothing arrived for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Ping a connection that was quiet for this long (`None`: never).
    pub ping_interval: Option<Duration>,
    /// Drop a connection that sent nothing within this time after a ping.
    pub pong_timeout: Duration,
    /// How long a close handshake (and the lingering close after it) may take.
    pub close_timeout: Duration,
    /// A message must be complete within this time of its first byte (`None`: no limit);
    /// past it the connection is closed with 1008 "message timeout". Received bytes reset
    /// the idle timer, so without it a client trickling a byte at a time could hold a
    /// partly received message for ever.
    pub message_timeout: Option<Duration>,
    /// Bytes a worker holds in incomplete messages (assembly buffers), summed over its
    /// connections. A read that takes the sum past it closes the connection that grew with
    /// 1013 "try again later" (the server is out of room, not the peer at fault).
    pub incomplete_budget: usize,
    /// How long a graceful shutdown waits for close handshakes.
    pub shutdown_timeout: Duration,
    /// Unsent bytes a connection may hold; past it the connection is closed with 1008.
    pub write_budget: usize,
    /// Unsent bytes past which `Ctx::send` reports `SendStatus::Backpressure` and
    /// `Handler::on_drain` is owed (run once the queue is down to half of it); at most
    /// `write_budget`.
    pub high_water: usize,
    /// Size of each worker's receive buffer (mio).
    pub recv_buffer: usize,
    /// The io_uring backend's settings (ignored on mio); set them with
    /// [`Config::uring_ring_slots`], [`Config::uring_buffers`] and [`Config::uring_send_zc`].
    pub uring: UringConfig,
    /// What happens to a connection whose unsent output is over the write budget when more
    /// comes for it.
    pub slow_consumer: SlowConsumerPolicy,
    /// Most application keys one connection may be bound to; past it `Ctx::bind_key`
    /// returns false (`Ctx::try_bind_key` says why) and the refusal is logged and counted
    /// (`bindings_refused`). 0: no limit.
    pub max_keys_per_conn: usize,
    /// Most topics one connection may subscribe to; past it `Ctx::subscribe` returns false
    /// (`Ctx::try_subscribe` says why), logged and counted (`bindings_refused`). 0: no limit.
    pub max_topics_per_conn: usize,
    /// Most keys one `Target::Keys` event may list (counted as listed, before duplicates are
    /// removed); a publish listing more is refused: `publish` returns false, nothing is
    /// delivered, and it is logged and counted (`publishes_refused`). 0: no limit.
    pub max_keys_per_event: usize,
    /// Path answered on the WebSocket port with the counters in the Prometheus text format
    /// (`None`, the default: not served there). `Handler::on_http` sees the request first
    /// and can answer it (to guard or hide the path); only when it returns `None` are the
    /// counters served. See also `metrics_addr`.
    pub metrics_path: Option<String>,
    /// Serve `GET /metrics` on this address of its own (a small plain HTTP listener thread,
    /// such as `127.0.0.1:9091`), apart from the WebSocket port (`None`, the default: off).
    pub metrics_addr: Option<String>,
    /// Origins allowed to open WebSocket connections, as the browser sends them
    /// (`https://app.example.com`, compared ignoring ASCII case). A request whose `Origin`
    /// is not listed is refused with 403 before `Handler::on_upgrade`, against cross-site
    /// WebSocket hijacking. A request without `Origin` (not from a browser) is let through.
    /// Empty (the default): every origin.
    pub allowed_origins: Vec<String>,
    /// Most upgrades one worker lets `Handler::on_upgrade` defer at a time
    /// (`Upgrade::defer`); past it `defer` answers 503 with `Retry-After: 1` at once.
    pub max_pending_upgrades: usize,
    /// The I/O backend.
    pub backend: Backend,
    /// Join a cluster of volley nodes through a broker (`None`, the default: one node).
    /// Publishes, sends, closes and bindings then reach connections on every node (see
    /// docs/cluster.md).
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// permessage-deflate (RFC 7692): `None` (the default) refuses every offer; `Some`
    /// accepts one, always without context takeover, so compression state is per worker
    /// (see `proto::deflate` and docs/protocol.md).
    pub deflate: Option<DeflateConfig>,
}

/// Which I/O backend the workers run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring where the kernel (and sandbox) allow it, else mio, with one log line saying why.
    #[default]
    Auto,
    /// io_uring; starting fails with a clear error where it is unavailable.
    Uring,
    /// mio (epoll).
    Mio,
}

/// What to do with a connection that does not read fast enough (its queue is over the
/// write budget when more output comes for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Close it with 1008 "slow consumer" (counted in `slow_consumer_closes`).
    #[default]
    Close,
    /// Keep it, and drop what is sent to it until it catches up (counted in `drops`).
    Drop,
}

impl Backend {
    /// Whether the io_uring backend can run on this kernel and in this sandbox: the opcodes
    /// and features it needs are probed on a scratch ring. `Err` says what is missing.
    pub fn uring_available() -> Result<(), String> {
        driver::uring_probe()
    }
}

impl Config {
    /// Defaults, listening on `addr`.
    pub fn new(addr: impl Into<String>) -> Config {
        Config {
            addr: addr.into(),
            workers: 0,
            pin_workers: false,
            backlog: 1024,
            max_connections: 0,
            limits: Limits::default(),
            max_head: crate::proto::handshake::DEFAULT_MAX_HEAD,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(120)),
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
            message_timeout: Some(Duration::from_secs(60)),
            incomplete_budget: 256 << 20,
            shutdown_timeout: Duration::from_secs(5),
            write_budget: 4 << 20,
            high_water: 1 << 20,
            recv_buffer: 256 * 1024,
            uring: UringConfig::default(),
            slow_consumer: SlowConsumerPolicy::Close,
            max_keys_per_conn: 1024,
            max_topics_per_conn: 1024,
            max_keys_per_event: 1024,
            metrics_path: None,
            metrics_addr: None,
            allowed_origins: Vec::new(),
            max_pending_upgrades: 1024,
            backend: Backend::Auto,
            cluster: None,
            deflate: None,
        }
    }

    /// Joins a cluster (see [`crate::cluster::ClusterConfig`]).
    pub fn cluster(mut self, c: Option<crate::cluster::ClusterConfig>) -> Self {
        self.cluster = c;
        self
    }

    /// Turns permessage-deflate on (with [`DeflateConfig::default`]) or off.
    pub fn deflate(mut self, on: bool) -> Self {
        self.deflate = on.then(DeflateConfig::default);
        self
    }

    /// Sets the worker count (0: one per core).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Pins workers to cores.
    pub fn pin_workers(mut self, pin: bool) -> Self {
        self.pin_workers = pin;
        self
    }

    /// Sets the listen backlog.
    pub fn backlog(mut self, n: i32) -> Self {
        self.backlog = n;
        self
    }

    /// Sets the largest request head (431 beyond it).
    pub fn max_head(mut self, bytes: usize) -> Self {
        self.max_head = bytes;
        self
    }

    /// Sets how long a graceful shutdown waits for close handshakes.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Sets the size of each worker's receive buffer (mio).
    pub fn recv_buffer(mut self, bytes: usize) -> Self {
        self.recv_buffer = bytes;
        self
    }

    /// Sets the maximum frame and message sizes.
    pub fn limits(mut self, max_frame: usize, max_message: usize) -> Self {
        self.limits = Limits {
            max_frame,
            max_message,
        };
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Sets the idle timeout.
    pub fn idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets the ping interval and the pong timeout.
    pub fn ping(mut self, interval: Option<Duration>, pong_timeout: Duration) -> Self {
        self.ping_interval = interval;
        self.pong_timeout = pong_timeout;
        self
    }

    /// Sets the close handshake timeout.
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.close_timeout = d;
        self
    }

    /// Sets the time a message may take from its first byte to its last (`None`: no limit).
    pub fn message_timeout(mut self, d: Option<Duration>) -> Self {
        self.message_timeout = d;
        self
    }

    /// Sets the per-worker budget for bytes held in incomplete messages.
    pub fn incomplete_budget(mut self, bytes: usize) -> Self {
        self.incomplete_budget = bytes;
        self
    }

    /// Sets the per-connection write budget in bytes.
    pub fn write_budget(mut self, bytes: usize) -> Self {
        self.write_budget = bytes;
        self
    }

    /// Sets the high-water mark of a connection's unsent bytes (backpressure and
    /// `on_drain`; capped at the write budget).
    pub fn high_water(mut self, bytes: usize) -> Self {
        self.high_water = bytes;
        self
    }

    /// Caps the direct descriptors of one io_uring ring (0: the soft open-files limit).
    pub fn uring_ring_slots(mut self, slots: usize) -> Self {
        self.uring.ring_slots = slots;
        self
    }

    /// Sets the io_uring provided buffers: `count` (rounded up to a power of two, at most
    /// [`Config::MAX_URING_BUFFERS`]; [`Server::start`] refuses more) of `size` bytes.
    pub fn uring_buffers(mut self, count: u16, size: usize) -> Self {
        let count = count.max(1);
        // Past 32,768 there is no u16 power of two to round up to: keep the count as given,
        // for `validate` to refuse with the reason.
        let count = count.checked_next_power_of_two().unwrap_or(count);
        self.uring.buffers = Some((count, size.max(64)));
        self
    }

    /// Most provided buffers in one io_uring buffer ring: the kernel takes a power of two
    /// below 65,536 (its ring head and tail are 16-bit and must tell full from empty).
    pub const MAX_URING_BUFFERS: u16 = 1 << 15;

    /// Checks the settings that cannot be checked by the builder methods.
    ///
    /// # Errors
    /// `InvalidInput`, naming the setting and its allowed range: `uring_buffers` with a
    /// count that is not a power of two from 1 to [`Config::MAX_URING_BUFFERS`], or buffers
    /// smaller than 64 bytes.
    pub fn validate(&self) -> io::Result<()> {
        let Some((count, size)) = self.uring.buffers else {
            return Ok(());
        };
        if !count.is_power_of_two() || count > Self::MAX_URING_BUFFERS || size < 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "uring_buffers {count}x{size}: the count must be a power of two from 1 to \
                     {} (the kernel's limit for a provided-buffer ring) and the size at \
                     least 64 bytes",
                    Self::MAX_URING_BUFFERS
                ),
            ));
        }
        Ok(())
    }

    /// io_uring: use zero-copy sends for batches of at least `min` bytes (`None`: never).
    pub fn uring_send_zc(mut self, min: Option<usize>) -> Self {
        self.uring.send_zc_min = min;
        self
    }

    /// Sets the most upgrades a worker may have deferred at a time.
    pub fn max_pending_upgrades(mut self, n: usize) -> Self {
        self.max_pending_upgrades = n;
        self
    }

    /// Sets the I/O backend.
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = b;
        self
    }

    /// Sets the slow-consumer policy.
    pub fn slow_consumer(mut self, p: SlowConsumerPolicy) -> Self {
        self.slow_consumer = p;
        self
    }

    /// Sets the maximum number of connections.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the per-connection caps on keys and topics (0: no limit).
    pub fn max_bindings(mut self, keys: usize, topics: usize) -> Self {
        self.max_keys_per_conn = keys;
        self.max_topics_per_conn = topics;
        self
    }

    /// Sets the most keys one event may list (0: no limit).
    pub fn max_keys_per_event(mut self, n: usize) -> Self {
        self.max_keys_per_event = n;
        self
    }

    /// Serves the Prometheus counters at `path` on the WebSocket port (after
    /// `Handler::on_http` declined the request).
    pub fn metrics_path(mut self, path: Option<String>) -> Self {
        self.metrics_path = path;
        self
    }

    /// Serves `GET /metrics` on an address of its own.
    pub fn metrics_addr(mut self, addr: Option<String>) -> Self {
        self.metrics_addr = addr;
        self
    }

    /// Sets the origins allowed to open WebSocket connections (empty: any).
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// The limits and deadlines each connection's machine runs under.
    pub(crate) fn conn_config(&self) -> crate::proto::conn::ConnConfig {
        crate::proto::conn::ConnConfig {
            limits: self.limits,
            max_head: self.max_head,
            write_budget: self.write_budget,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            close_timeout: self.close_timeout,
            message_timeout: self.message_timeout,
        }
    }

    fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
        .min(255)
    }
}

/// Identifies a connection across the server (and, in a cluster, across nodes): node,
/// worker, slab slot and generation.
///
/// A slot is reused after its connection closes, but with a new generation, so an id kept
/// after its connection closed never reaches the connection that reuses the slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

/// Generations are 24 bits: the top byte of the id holds the node.
pub(crate) const GEN_MASK: u32 = 0xFF_FFFF;

impl ConnId {
    #[cfg(test)]
    pub(crate) fn new(worker: u8, key: usize, gen: u32) -> ConnId {
        ConnId::with_node(0, worker, key, gen)
    }

    pub(crate) fn with_node(node: u8, worker: u8, key: usize, gen: u32) -> ConnId {
        debug_assert!(key < (1 << 24));
        ConnId(
            (node as u64) << 56
                | (worker as u64) << 48
                | (key as u64 & 0xFF_FFFF) << 24
                | (gen & GEN_MASK) as u64,
        )
    }

    pub(crate) fn from_u64(v: u64) -> ConnId {
        ConnId(v)
    }

    /// The cluster node that holds the connection (0 outside a cluster).
    pub fn node(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// The worker that owns the connection.
    pub fn worker(self) -> usize {
        ((self.0 >> 48) & 0xFF) as usize
    }

    pub(crate) fn key(self) -> usize {
        ((self.0 >> 24) & 0xFF_FFFF) as usize
    }

    pub(crate) fn gen(self) -> u32 {
        self.0 as u32 & GEN_MASK
    }

    /// The id as a number (stable for the connection's life).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node() != 0 {
            write!(f, "n{}:", self.node())?;
        }
        write!(f, "w{}:{}#{}", self.worker(), self.key(), self.gen())
    }
}

macro_rules! stats {
    ($( #[doc = $help:literal] $name:ident, )*) => {
        /// Counters of one worker, updated by that worker only.
        #[derive(Debug, Default)]
        pub(crate) struct WorkerStats {
            $( pub(crate) $name: AtomicU64, )*
            /// Closes sent for protocol errors, by code - 1000 (1000..=1015).
            pub(crate) protocol_closes: [AtomicU64; 16],
        }

        /// A snapshot of the server's counters, summed over workers.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $( #[doc = $help] pub $name: u64, )*
            /// Closes sent for protocol errors, as (code, count), codes with a count only.
            pub protocol_closes: Vec<(u16, u64)>,
        }

        impl WorkerStats {
            /// Every worker's counters in the Prometheus text format (0.0.4): one family per
            /// counter, `# HELP` and `# TYPE` once, then one sample per worker. Counters end
            /// in `_total`; the gauges (connections, io_uring slots, operations, buffers)
            /// do not; byte counts are in bytes, the base unit.
            fn write_prometheus(workers: &[WorkerShared], out: &mut String) {
                $(
                    metrics::family(
                        out,
                        stringify!($name),
                        $help,
                        workers.iter().map(|w| w.stats.$name.load(Ordering::Relaxed)),
                    );
                )*
                metrics::protocol_closes(out, workers.iter().map(|w| &w.stats.protocol_closes));
            }
        }

        impl Stats {
            fn add(&mut self, w: &WorkerStats) {
                $( self.$name += w.$name.load(Ordering::Relaxed); )*
                for (i, c) in w.protocol_closes.iter().enumerate() {
                    let c = c.load(Ordering::Relaxed);
                    if c == 0 { continue; }
                    let code = 1000 + i as u16;
                    match self.protocol_closes.iter_mut().find(|(k, _)| *k == code) {
                        Some((_, n)) => *n += c,
                        None => self.protocol_closes.push((code, c)),
                    }
                }
            }
        }
    };
}

stats! {
    /// Connections currently held (handshaking, open or closing).
    connections,
    /// TCP connections accepted.
    accepted,
    /// WebSocket connections opened (101 sent).
    opened,
    /// Handshakes refused with an HTTP error.
    handshake_failures,
    /// Clients dropped for not finishing their request head (or for a deferred upgrade not answered) in time.
    handshake_timeouts,
    /// Upgrades `Handler::on_upgrade` deferred (`Upgrade::defer`).
    upgrades_deferred,
    /// Connections refused with 503 because the server was full.
    rejected_full,
    /// Data messages received.
    messages_in,
    /// Data messages queued for sending.
    messages_out,
    /// Bytes read from sockets.
    bytes_in,
    /// Bytes written to sockets.
    bytes_out,
    /// Connections closed because their unsent output exceeded the write budget (1008).
    slow_consumer_closes,
    /// Pings sent to quiet connections.
    pings_sent,
    /// Connections dropped because no pong (nor anything else) came after a ping.
    pong_timeouts,
    /// Connections closed for idleness.
    idle_closes,
    /// Connections closed (1008) because a message did not complete within `message_timeout`.
    message_timeouts,
    /// Connections closed (1013): the worker's incomplete messages were over `incomplete_budget`.
    incomplete_budget_closes,
    /// Messages addressed to connections that no longer exist.
    unknown_target,
    /// Events published (counted by the publishing worker).
    events_published,
    /// Event deliveries: one per recipient reached.
    deliveries,
    /// Messages dropped for slow consumers under `SlowConsumerPolicy::Drop`.
    drops,
    /// Binds and subscribes refused at a connection's cap of keys or topics.
    bindings_refused,
    /// Publishes refused for listing more keys than `Config::max_keys_per_event`.
    publishes_refused,
    /// Messages compressed (permessage-deflate): at most one per broadcast event, one per compressed direct send.
    messages_deflated,
    /// Compressed messages received and inflated.
    messages_inflated,
    /// Accepts that failed (out of files or fixed-file slots); retried shortly.
    accept_errors,
    /// io_uring: multishot receives that ran out of provided buffers (re-armed).
    recv_enobufs,
    /// io_uring: direct descriptors held (gauge).
    uring_slots,
    /// io_uring: rings the workers run (several per worker past one table's worth).
    uring_rings,
    /// io_uring: operations submitted and not completed (gauge).
    uring_ops,
    /// io_uring: provided buffers taken out of the ring and not yet returned (gauge).
    uring_bufs_held,
}

/// A request to a worker from another thread.
#[derive(Debug)]
pub(crate) enum Command {
    /// Queue a message for one connection (the frame shared as a publish's is).
    Send(ConnId, Arc<[u8]>),
    /// Start a close handshake.
    Close(ConnId, CloseCode, String),
    /// Stop accepting, close every connection with 1001, exit.
    Shutdown,
    /// Deliver an event to this worker's recipients.
    Publish(Arc<crate::broadcast::Event>),
    /// A tracked publish reached `reached` connections: tell its origin.
    Receipt {
        origin: ConnId,
        tag: u64,
        reached: usize,
    },
    /// Change a connection's key or topic bindings.
    Bind(ConnId, Box<str>, core::BindOp),
    /// The answer to a deferred upgrade.
    Upgrade(ConnId, Box<upgrade::Answer>),
}

/// Wakes a worker's poller from another thread.
pub(crate) trait Wake: Send + Sync {
    fn wake(&self) -> io::Result<()>;
}

/// Adds `n` to a counter of [`WorkerStats`] that its worker alone writes: a load and a store,
/// not a locked read-modify-write. Readers on other threads see the old or the new value.
/// (Per message a `lock add` is ~20 cycles: in a profile of echo at 16 messages in flight
/// the three in `on_message`'s path were 3% of the server's CPU.) Counters that other threads
/// also write (`events_published`, `bindings_refused`) keep `fetch_add`.
#[inline]
pub(crate) fn add_own(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Subtracts `n` from a gauge of [`WorkerStats`] that its worker alone writes (see
/// [`add_own`]).
#[inline]
pub(crate) fn sub_own(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_sub(n), Ordering::Relaxed);
}

/// What other threads share with one worker.
pub(crate) struct WorkerShared {
    pub(crate) inbox: Mutex<Vec<Command>>,
    /// Set when a wake-up is already on its way: one wake per burst, not per command.
    pub(crate) wake_pending: AtomicBool,
    pub(crate) waker: Box<dyn Wake>,
    pub(crate) stats: WorkerStats,
}

impl fmt::Debug for WorkerShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerShared").finish_non_exhaustive()
    }
}

impl WorkerShared {
    pub(crate) fn new(waker: Box<dyn Wake>) -> WorkerShared {
        WorkerShared {
            inbox: Mutex::new(Vec::new()),
            wake_pending: AtomicBool::new(false),
            waker,
            stats: WorkerStats::default(),
        }
    }

    pub(crate) fn push(&self, cmd: Command) {
        self.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cmd);
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                tracing::warn!("waking a worker failed: {e}");
            }
        }
    }

    /// Takes every queued command (called by the worker after a wake-up).
    pub(crate) fn drain(&self, into: &mut Vec<Command>) {
        self.wake_pending.store(false, Ordering::Release);
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *inbox, into);
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) workers: Vec<WorkerShared>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) shutdown: AtomicBool,
    /// Connections held by all workers together, kept only when `max_connections` is set.
    pub(crate) open_conns: std::sync::atomic::AtomicUsize,
    /// `Config::max_keys_per_event`, checked where a publish is made.
    pub(crate) max_keys_per_event: usize,
    /// `Config::deflate` is on: events carry a compressed twin's cell.
    pub(crate) deflate: bool,
    /// `Config::max_keys_per_conn` and `max_topics_per_conn`, to report a refusal.
    pub(crate) max_bindings: (usize, usize),
    /// This node's side of a cluster, if the server is in one.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Shared {
    /// This node's id in its cluster (0: not in one).
    pub(crate) fn node(&self) -> u8 {
        self.cluster.as_ref().map_or(0, |c| c.node)
    }

    /// The cluster, if `id` is a connection of another node.
    pub(crate) fn remote(&self, id: ConnId) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_deref().filter(|c| id.node() != c.node)
    }
}

/// A cloneable, `Send + Sync` handle to a running server, for any thread of the host.
#[derive(Clone, Debug)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    fn worker(&self, id: ConnId) -> Option<&WorkerShared> {
        self.shared.workers.get(id.worker())
    }

    /// Sends a message to a connection (in a cluster, of any node): delivered as
    /// `publish(Target::Conn(id), msg)` is (one shared frame, queued by reference), in order
    /// with this thread's other sends and publishes. Unknown or closed ids are ignored (and
    /// counted in `Stats::unknown_target` by the node that holds them); the connection's
    /// write budget applies.
    pub fn send(&self, id: ConnId, msg: Message<'_>) {
        let frame = crate::broadcast::encode_shared(msg);
        if let Some(c) = self.shared.remote(id) {
            return c.send(id, &frame);
        }
        if let Some(w) = self.worker(id) {
            w.push(Command::Send(id, frame));
        }
    }

    /// Sends a text message to a connection.
    pub fn send_text(&self, id: ConnId, text: &str) {
        self.send(id, Message::Text(text));
    }

    /// Sends a binary message to a connection.
    pub fn send_binary(&self, id: ConnId, data: &[u8]) {
        self.send(id, Message::Binary(data));
    }

    /// Starts the close handshake of a connection.
    pub fn close(&self, id: ConnId, code: CloseCode, reason: &str) {
        if let Some(c) = self.shared.remote(id) {
            return c.close(id, code, reason);
        }
        if let Some(w) = self.worker(id) {
            w.push(Command::Close(id, code, reason.to_owned()));
        }
    }

    /// Publishes a message to `target` (connections, keys, a topic, everyone), on every
    /// worker. The frame is encoded once; each worker gets one queue item, not one per
    /// recipient. Events published by one thread reach each recipient in order.
    ///
    /// Returns false, and delivers nothing, if `target` lists more keys than
    /// `Config::max_keys_per_event` (logged and counted in `publishes_refused`).
    pub fn publish(&self, target: Target<'_>, msg: Message<'_>) -> bool {
        self.publish_inner(target, msg, None, None)
    }

    /// Like [`Handle::publish`], with a [`Receipt`]: once every worker has delivered the
    /// event, it holds the number of connections reached, and any thread can wait for it
    /// ([`Receipt::wait_timeout`]). The `Handle` twin of `Ctx::publish_tracked`, whose total
    /// goes to `Handler::on_published` instead; in a cluster it counts this node's deliveries
    /// only (docs/cluster.md). `None`, and nothing delivered, on the same
    /// refusal as `publish` (more keys than `Config::max_keys_per_event`).
    pub fn publish_tracked(&self, target: Target<'_>, msg: Message<'_>) -> Option<Receipt> {
        let receipt = Receipt {
            cell: Arc::default(),
        };
        let to = crate::broadcast::ReceiptTo::Waiter(receipt.cell.clone());
        self.publish_inner(target, msg, None, Some(to))
            .then_some(receipt)
    }

    /// Like [`Handle::publish`], but connection `except` does not receive it even if
    /// `target` includes it: a service relaying a client's message to the others of its
    /// room (as `Ctx::publish_others` does inside a callback).
    pub fn publish_except(&self, target: Target<'_>, msg: Message<'_>, except: ConnId) -> bool {
        self.publish_inner(target, msg, Some(except), None)
    }

    fn publish_inner(
        &self,
        target: Target<'_>,
        msg: Message<'_>,
        except: Option<ConnId>,
        receipt: Option<crate::broadcast::ReceiptTo>,
    ) -> bool {
        if self.over_key_cap(&target, 0) {
            return false;
        }
        let frame = crate::broadcast::encode_shared(msg);
        let workers = &self.shared.workers;
        let target = crate::broadcast::OwnedTarget::from_target(&target);
        // Other nodes get theirs through the broker (only those with interest receive it).
        let target = match &self.shared.cluster {
            Some(c) => c.publish(target, &frame),
            None => target,
        };
        let deflate = self.shared.deflate;
        let parts = crate::broadcast::route(
            frame,
            target,
            workers.len(),
            receipt.clone(),
            except,
            deflate,
            |w, ev| workers[w].push(Command::Publish(ev)),
        );
        if let (0, Some(crate::broadcast::ReceiptTo::Waiter(cell))) = (parts, &receipt) {
            cell.complete(0); // no worker holds a recipient
        }
        if let Some(w) = workers.first() {
            w.stats.events_published.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// The per-connection caps on keys and topics.
    pub(crate) fn max_bindings(&self) -> (usize, usize) {
        self.shared.max_bindings
    }

    /// Counts a bind or subscribe refused at its cap.
    pub(crate) fn count_binding_refused(&self, worker: usize) {
        if let Some(w) = self.shared.workers.get(worker) {
            w.stats.bindings_refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether `target` lists more keys than allowed; counted on `worker`'s stats if so.
    pub(crate) fn over_key_cap(&self, target: &Target<'_>, worker: usize) -> bool {
        let Some(w) = self.shared.workers.get(worker) else {
            return false;
        };
        crate::broadcast::over_key_cap(
            target,
            self.shared.max_keys_per_event,
            &w.stats.publishes_refused,
        )
    }

    /// Posts a binding change to the connection's worker (or, in a cluster, to its node):
    /// true if posted, false if `id` names no worker of this server or the server is
    /// shutting down.
    fn bind_op(&self, id: ConnId, name: &str, op: core::BindOp) -> bool {
        if self.is_shutting_down() {
            return false;
        }
        if let Some(c) = self.shared.remote(id) {
            c.bind(id, name, op);
            return true;
        }
        match self.worker(id) {
            Some(w) => {
                w.push(Command::Bind(id, name.into(), op));
                true
            }
            None => false,
        }
    }

    /// Binds a connection to an application key (a user id, a device id). Posted, not yet
    /// applied: true once posted to the connection's worker (in a cluster, to its node), which
    /// applies it in order with this thread's other commands (an unknown or closed
    /// connection, or one at `Config::max_keys_per_conn`, is then left as it is, the latter
    /// counted in `bindings_refused`); false, and nothing posted, if `id` names no worker of
    /// this server or the server is shutting down. (`Ctx::bind_key`, on the connection's own worker,
    /// answers with the outcome instead.)
    pub fn bind_key(&self, id: ConnId, key: &str) -> bool {
        self.bind_op(id, key, core::BindOp::Bind)
    }

    /// Unbinds a connection from an application key. Posted, not yet applied: the return is
    /// as for [`Handle::bind_key`].
    pub fn unbind_key(&self, id: ConnId, key: &str) -> bool {
        self.bind_op(id, key, core::BindOp::Unbind)
    }

    /// Subscribes a connection to a topic. Posted, not yet applied: the return is as for
    /// [`Handle::bind_key`] (the worker's cap is `Config::max_topics_per_conn`).
    pub fn subscribe(&self, id: ConnId, topic: &str) -> bool {
        self.bind_op(id, topic, core::BindOp::Subscribe)
    }

    /// Unsubscribes a connection from a topic. Posted, not yet applied: the return is as for
    /// [`Handle::bind_key`].
    pub fn unsubscribe(&self, id: ConnId, topic: &str) -> bool {
        self.bind_op(id, topic, core::BindOp::Unsubscribe)
    }

    /// The server's counters, summed over workers.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for w in &self.shared.workers {
            s.add(&w.stats);
        }
        s.protocol_closes.sort();
        s
    }

    /// The cluster counters of this node (`None` outside a cluster).
    pub fn cluster_stats(&self) -> Option<crate::cluster::ClusterStatsSnapshot> {
        self.shared.cluster.as_ref().map(|c| c.snapshot())
    }

    /// This node's id in its cluster (0 outside a cluster).
    pub fn node_id(&self) -> u8 {
        self.shared.node()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Every worker's counters in the Prometheus text format (what `GET /metrics` answers on
    /// `Config::metrics_addr`, or on `Config::metrics_path`).
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(8192);
        WorkerStats::write_prometheus(&self.shared.workers, &mut out);
        if let Some(c) = &self.shared.cluster {
            c.write_prometheus(&mut out);
        }
        out
    }

    /// Starts a graceful shutdown: stop accepting, close every connection with 1001, wait up
    /// to the shutdown timeout for the close handshakes, then stop the workers.
    pub fn shutdown(&self) {
        if !self.shared.shutdown.swap(true, Ordering::AcqRel) {
            for w in &self.shared.workers {
                w.push(Command::Shutdown);
            }
        }
    }

    /// Whether a shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }
}

/// Raises the soft open-files limit to the hard limit (each socket is a file; io_uring's
/// fixed-file tables are capped by the soft limit too). Logs what it did.
#[allow(unsafe_code)]
pub(crate) fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            tracing::debug!(
                "raised the soft open-files limit from {old} to {}",
                lim.rlim_cur
            );
        } else {
            lim.rlim_cur = old;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    let cur = lim.rlim_cur as u64;
    cur
}

/// A running server: its worker threads and a [`Handle`].
#[derive(Debug)]
pub struct Server {
    handle: Handle,
    threads: Vec<JoinHandle<()>>,
    backend: Backend,
    metrics: Option<metrics::MetricsServer>,
}

impl Server {
    /// Binds one listener per worker and starts the workers.
    ///
    /// # Errors
    /// The configuration is invalid ([`Config::validate`]), the address (or `metrics_addr`)
    /// does not resolve, cannot be bound, or a poller cannot be created.
    pub fn start<H: Handler>(config: Config, handler: H) -> io::Result<Server> {
        config.validate()?;
        let metrics = match &config.metrics_addr {
            Some(a) => Some(
                metrics::MetricsServer::bind(a)
                    .map_err(|e| io::Error::new(e.kind(), format!("metrics address {a}: {e}")))?,
            ),
            None => None,
        };
        let addr = config.addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
        })?;
        let n = config.worker_count();
        let backend = match config.backend {
            Backend::Mio => Backend::Mio,
            Backend::Uring => match driver::uring_probe() {
                Ok(()) => Backend::Uring,
                Err(why) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("io_uring backend unavailable: {why}"),
                    ))
                }
            },
            Backend::Auto => match driver::uring_probe() {
                Ok(()) => Backend::Uring,
                Err(why) => {
                    tracing::info!("io_uring unavailable ({why}); using the mio backend");
                    Backend::Mio
                }
            },
        };
        let cluster = match &config.cluster {
            Some(c) => Some(crate::cluster::Cluster::start(
                c,
                config.limits.max_message,
            )?),
            None => None,
        };
        let started = match backend {
            #[cfg(target_os = "linux")]
            Backend::Uring => driver::uring::start(config, addr, n, handler, cluster.clone()),
            _ => driver::mio::start(config, addr, n, handler, cluster.clone()),
        };
        let (handle, threads) = match started {
            Ok(s) => s,
            Err(e) => {
                if let Some(c) = &cluster {
                    c.stop();
                }
                return Err(e);
            }
        };
        if let Some(c) = &cluster {
            c.attach(&handle.shared);
        }
        let mut server = Server {
            handle,
            threads,
            backend,
            metrics: None,
        };
        if let Some(listener) = metrics {
            match metrics::MetricsServer::start(listener, server.handle()) {
                Ok(m) => server.metrics = Some(m),
                Err(e) => {
                    server.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(server)
    }

    /// The backend the workers run on (`Uring` or `Mio`, never `Auto`).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How many workers (threads, one ring or poller each) run.
    pub fn workers(&self) -> usize {
        self.handle.shared.workers.len()
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The address `GET /metrics` is served on (`Config::metrics_addr`), if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// Waits until every worker has stopped (after [`Handle::shutdown`]).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        if let Some(m) = self.metrics {
            m.stop();
        }
        if let Some(c) = &self.handle.shared.cluster {
            c.stop();
        }
    }

    /// Shuts down gracefully and waits for the workers.
    pub fn shutdown(self) {
        self.handle.shutdown();
        self.join();
    }
}
