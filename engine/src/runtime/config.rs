//! Server configuration: [`Config`] and its builder, the backend choice ([`Backend`]), the
//! io_uring knobs ([`UringConfig`]) and the slow-consumer policy.

use crate::proto::deflate::DeflateConfig;
use crate::proto::Limits;
use std::io;
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
    /// The count is a ceiling: 64 KiB of buffers go round at first where the kernel consumes
    /// them incrementally (256 KiB otherwise), and twice as many after each batch of
    /// completions in which a receive ran out, so a ring only touches the memory its bursts
    /// need (the `uring_bufs_live` gauge says how many buffers circulate).
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
    /// Most messages and events from other threads a worker's inbox holds before it has
    /// taken them (`Handle::send` and `publish`, `Ctx::send_to` and `publish` across workers,
    /// a cluster's broker). Past it they are dropped for that worker and counted in
    /// `Stats::inbox_drops`: a publisher faster than the worker that delivers its events
    /// (a client publishing into a topic whose subscribers are on another worker) cannot
    /// grow the inbox without end. Tracked publishes, closes and bindings are never dropped.
    pub inbox_capacity: usize,
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
            inbox_capacity: 65_536,
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
    /// [`Config::MAX_URING_BUFFERS`]; [`Server::start`](crate::Server::start) refuses more) of `size` bytes.
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
        if self.inbox_capacity == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "inbox_capacity 0: a worker could take no message or event from other threads",
            ));
        }
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

    /// Sets the most messages and events a worker's inbox holds ([`Config::inbox_capacity`]).
    pub fn inbox_capacity(mut self, n: usize) -> Self {
        self.inbox_capacity = n;
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

    pub(crate) fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
        .min(255)
    }
}
