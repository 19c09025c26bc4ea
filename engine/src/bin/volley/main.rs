//! The `volley` server binary: reference modes for trying and benchmarking the engine.
//!
//! `volley serve [--addr 127.0.0.1:9001] [--workers N] [--mode echo|broadcast|notify|pubsub]
//! [--cluster nats://127.0.0.1:4222 --node-id N]`; logs with `RUST_LOG`. The modes' wire formats are in docs/modes.md.

use clap::{Parser, Subcommand};
use std::time::Duration;
use volley::{Backend, ClusterConfig, Config, Server, SlowConsumerPolicy};

#[derive(Parser, Debug)]
#[command(
    name = "volley",
    version,
    about = "A thread-per-core WebSocket server engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
}

/// The longest timeout accepted on the command line, in seconds (a year). Use 0 for
/// "never" where a timeout can be off; a larger number is refused rather than wrapped.
const MAX_SECS: u64 = 365 * 24 * 3600;

/// Seconds, 0 to a year.
fn secs_arg() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(0..=MAX_SECS)
}

/// Seconds, 1 to a year.
fn secs_arg_nonzero() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=MAX_SECS)
}

#[derive(Parser, Debug, Clone)]
#[command(
    after_help = "SECURITY: the reference modes authenticate nobody. Anyone who can \
reach the port can connect, as any `?id=` in notify mode (connecting as `/?id=alice` reads \
alice's events), subscribe to any topic and publish to anyone. Run them on a trusted network \
or behind a proxy that authenticates; embed the engine with your own `on_upgrade` for \
anything else. `--allowed-origin` stops other web sites' pages from connecting through a \
visitor's browser; it does not authenticate."
)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    addr: String,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Reference mode.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// I/O backend: io_uring where available (auto), or forced.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Pin each worker to a core.
    #[arg(long)]
    pin: bool,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_message: usize,
    /// io_uring: zero-copy sends for batches of at least this many bytes (0: never).
    #[arg(long, default_value_t = 0)]
    send_zc_min: usize,
    /// io_uring: provided receive buffers per worker, COUNTxSIZE (bytes); a message larger
    /// than SIZE arrives in pieces that are copied together. Default: 64x65536 where the
    /// kernel consumes buffers incrementally (Linux 6.12), else 1024x4096.
    #[arg(long, value_parser = parse_buffers)]
    uring_buffers: Option<(u16, usize)>,
    /// Most connections held (0: no limit but the backend's). With io_uring and no
    /// --workers, more than one ring per core can hold starts more workers.
    #[arg(long, default_value_t = 0)]
    max_connections: usize,
    /// Unsent bytes a connection may hold before it is closed as a slow consumer.
    #[arg(long, default_value_t = 4 << 20)]
    write_budget: usize,
    /// Seconds between server pings on quiet connections (0: off; at most a year).
    #[arg(long, default_value_t = 30, value_parser = secs_arg())]
    ping_interval: u64,
    /// Seconds a pinged connection has to answer before it is dropped (1006; 1 to a year).
    #[arg(long, default_value_t = 20, value_parser = secs_arg_nonzero())]
    pong_timeout: u64,
    /// Seconds of silence after which a connection is closed (0: never; at most a year).
    #[arg(long, default_value_t = 120, value_parser = secs_arg())]
    idle_timeout: u64,
    /// When a connection's unsent output is over the write budget: close it (1008) or drop
    /// what is sent to it until it catches up.
    #[arg(long, value_enum, default_value_t = SlowPolicy::Close)]
    slow_consumer: SlowPolicy,
    /// Seconds a client has to finish its handshake (1 to a year).
    #[arg(long, default_value_t = 10, value_parser = secs_arg_nonzero())]
    handshake_timeout: u64,
    /// Serve the Prometheus counters as `GET /metrics` on this address of their own, such as
    /// 127.0.0.1:9091 (default: not served). Keep it private: the WebSocket port never
    /// serves them.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Allow WebSocket connections from pages of this origin only, such as
    /// https://app.example.com (repeatable; default: any origin). Others get 403; clients
    /// that send no Origin (not browsers) are let through.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Most keys one notify event may list (0: no limit); an event listing more is
    /// answered with an error and not delivered.
    #[arg(long, default_value_t = 100)]
    max_keys_per_event: usize,
    /// Most topics one pubsub connection may subscribe to (0: no limit); past it `SUB` is
    /// answered `-ERR`.
    #[arg(long, default_value_t = 256)]
    max_topics_per_conn: usize,
    /// Most keys one connection may be bound to (0: no limit).
    #[arg(long, default_value_t = 16)]
    max_keys_per_conn: usize,
    /// Join a cluster of volley nodes through NATS: the broker's URLs, comma-separated
    /// (nats://127.0.0.1:4222,nats://10.0.0.2:4222). Every mode then works across nodes
    /// (notify to keys held on other nodes, pubsub topics, broadcast); receipts (`reached`,
    /// `+PUB topic N`) count this node's deliveries only. See docs/cluster.md.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This node's id in the cluster, 1 to 255, unique among the nodes (default: a random
    /// one, logged; set it when running more than a few nodes).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=255))]
    node_id: Option<u8>,
    /// Start even when no NATS server answers (serving local connections and connecting
    /// in the background); without it such a node exits with an error.
    #[arg(long, requires = "cluster")]
    cluster_local_start: bool,
    /// Accept permessage-deflate (RFC 7692) from clients that offer it (browsers do),
    /// always without context takeover: compression state is per worker, not per
    /// connection. Broadcast events are compressed once, whatever the recipients.
    #[arg(long)]
    deflate: bool,
    /// With --deflate: messages shorter than this many bytes are sent uncompressed.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    deflate_threshold: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BackendArg {
    Auto,
    Uring,
    Mio,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SlowPolicy {
    Close,
    Drop,
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs::parse_from(["serve"])
    }
}

mod envelope;
mod modes;

use modes::{Mode, Reference};

fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => ServeArgs::default(),
    };
    let mut cfg = Config::new(args.addr.clone())
        .workers(args.workers)
        .pin_workers(args.pin)
        .limits(args.max_message, args.max_message)
        .write_budget(args.write_budget)
        .max_connections(args.max_connections)
        .uring_send_zc((args.send_zc_min > 0).then_some(args.send_zc_min))
        .handshake_timeout(Duration::from_secs(args.handshake_timeout))
        .idle_timeout(secs(args.idle_timeout))
        .ping(
            secs(args.ping_interval),
            Duration::from_secs(args.pong_timeout),
        )
        .max_bindings(args.max_keys_per_conn, args.max_topics_per_conn)
        .max_keys_per_event(args.max_keys_per_event)
        .metrics_addr(args.metrics.clone())
        .allowed_origins(args.allowed_origins.clone())
        .backend(match args.backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Uring => Backend::Uring,
            BackendArg::Mio => Backend::Mio,
        })
        .slow_consumer(match args.slow_consumer {
            SlowPolicy::Close => SlowConsumerPolicy::Close,
            SlowPolicy::Drop => SlowConsumerPolicy::Drop,
        })
        .cluster(cluster_config(&args));
    if let Some((count, size)) = args.uring_buffers {
        cfg = cfg.uring_buffers(count, size);
    }
    cfg.deflate = args.deflate.then(|| volley::DeflateConfig {
        threshold: args.deflate_threshold,
        ..Default::default()
    });
    let reference = Reference {
        mode: args.mode,
        max_keys_per_event: args.max_keys_per_event,
    };
    let server = match Server::start(cfg, reference) {
        Ok(s) => s,
        Err(e) => {
            if args.cluster.is_empty() {
                eprintln!("volley: cannot listen on {}: {e}", args.addr);
            } else {
                // The cluster's broker is reached before the address is bound.
                eprintln!("volley: cannot start on {}: {e}", args.addr);
            }
            std::process::exit(1);
        }
    };
    let handle = server.handle();
    let h = handle.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        tracing::info!("shutting down");
        h.shutdown();
    }) {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
    let workers = server.workers();
    let backend = if server.backend() == Backend::Uring {
        "io_uring"
    } else {
        "mio"
    };
    println!(
        "volley listening on ws://{} (mode {}, {workers} workers, {backend})",
        server.local_addr(),
        args.mode.name(),
    );
    if let Some(m) = server.metrics_addr() {
        println!("metrics on http://{m}/metrics");
    }
    if !args.cluster.is_empty() {
        println!(
            "cluster node {} on {}",
            handle.node_id(),
            args.cluster.join(",")
        );
    }
    tracing::info!(addr = %server.local_addr(), mode = args.mode.name(), workers, backend, "listening");
    server.join();
    let s = handle.stats();
    tracing::info!(
        accepted = s.accepted,
        opened = s.opened,
        handshake_failures = s.handshake_failures,
        handshake_timeouts = s.handshake_timeouts,
        accept_errors = s.accept_errors,
        rejected_full = s.rejected_full,
        pings_sent = s.pings_sent,
        pong_timeouts = s.pong_timeouts,
        messages_in = s.messages_in,
        deliveries = s.deliveries,
        slow_consumer_closes = s.slow_consumer_closes,
        "stopped"
    );
}

/// The cluster settings from `--cluster`, `--node-id` and `--cluster-local-start`.
fn cluster_config(args: &ServeArgs) -> Option<ClusterConfig> {
    if args.cluster.is_empty() {
        return None;
    }
    let node = args.node_id.unwrap_or_else(|| {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id();
        let n = (seed % 255 + 1) as u8;
        tracing::warn!(
            node_id = n,
            "no --node-id: picked {n} at random; ids must be unique in the cluster, set them"
        );
        n
    });
    Some(ClusterConfig::new(args.cluster.clone(), node).start_local_only(args.cluster_local_start))
}

/// `COUNTxSIZE`, for example `1024x4096`.
fn parse_buffers(s: &str) -> Result<(u16, usize), String> {
    let bad = || format!("expected COUNTxSIZE such as 1024x4096, not {s:?}");
    let (c, z) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    // Parsed wide so that 40000 or 70000 get the range message, not a parse error.
    let count: u32 = c.trim().parse().map_err(|_| bad())?;
    let size: usize = z.trim().parse().map_err(|_| bad())?;
    let max = Config::MAX_URING_BUFFERS;
    if !(1..=u32::from(max)).contains(&count) || !(64..=1 << 20).contains(&size) {
        return Err(format!(
            "{s:?}: COUNT must be from 1 to {max} (the kernel's limit for a provided-buffer \
             ring; rounded up to a power of two) and SIZE from 64 to 1048576 bytes"
        ));
    }
    Ok((count as u16, size))
}
