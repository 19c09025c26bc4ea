//! `loadgen`: a capacity-planning load generator for any WebSocket server.
//!
//! ```text
//! loadgen connect --url ws://127.0.0.1:9001/ --conns 10000 --rate 2000 --hold 10 --server-pid PID
//! loadgen echo    --url ws://127.0.0.1:9001/ --conns 100 --inflight 16 --size 64 --duration 10 --server-pid PID
//! loadgen echo    --conns 100 --rate 50000 --size 64 --text      # open loop, CO-corrected latency
//! loadgen fanout  --url ws://127.0.0.1:9001/ --subscribers 1000 --publishers 1 --rate 50 --size 64 --duration 10 --server-pid PID
//! loadgen compare a.json b.json                               # two --json reports side by side
//! loadgen plot a.json --out a.svg                             # a report's latency charts
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`target`] | the `ws://` URL |
//! | [`client`] | one connection: connect, handshake, frames, pongs (the protocol core's client role) |
//! | [`scenario`] | the worker pool and the controller; `connect`, `echo` and `fanout` |
//! | [`stats`] | histograms (hdrhistogram), failure tallies, the table |
//! | [`procfs`] | the server's CPU time and RSS from `/proc` |
//! | [`sys`] | open-files limit, port range, CPU pinning |
//! | [`json`] | the `--json` report writer |
//! | [`report`] | reading reports back: `compare`, `plot` and `--plot` |
//!
//! Every run is bounded by a duration and a count and stops by itself. Exit status: 0 for a
//! clean run, 1 when the run could not be done (the error says why) or found problems
//! (verify failures, failed connections), 2 for a usage error.

#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod client;
mod error;
mod json;
mod procfs;
mod procs;
mod report;
mod scenario;
mod stats;
mod sys;
mod target;

use clap::{Args, Parser, Subcommand};
use error::Error;
use scenario::connect::ConnectOpts;
use scenario::echo::EchoOpts;
use scenario::fanout::FanoutOpts;
use scenario::{Common, Outcome};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "A capacity-planning load generator for WebSocket servers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open N connections at a rate, hold them idle, report handshake latency, failures by
    /// reason and (with --server-pid) server memory per connection.
    Connect {
        #[command(flatten)]
        common: CommonArgs,
        /// Connections to open.
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// New connections per second (default: as fast as --max-pending allows).
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds to hold the connections open once all are made.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 512)]
        max_pending: usize,
    },
    /// Send messages and check every echo byte for byte; closed loop (--inflight) or open
    /// loop (--rate); latency percentiles and (with --server-pid) server CPU per message.
    Echo {
        #[command(flatten)]
        common: CommonArgs,
        /// Connections.
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// Messages in flight per connection (closed loop; not used with --rate).
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Text messages.
        #[arg(long, conflicts_with = "binary")]
        text: bool,
        /// Binary messages (the default).
        #[arg(long)]
        binary: bool,
        /// Seconds of the measured window (with --messages: the longest the run may take
        /// after warm-up).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of load before the measured window (default 2; 0 with --messages).
        #[arg(long)]
        warmup: Option<f64>,
        /// Send exactly this many messages per connection, then stop.
        #[arg(long)]
        messages: Option<u64>,
        /// Open loop: aggregate messages per second, sent on schedule whatever the server's
        /// pace; latency counted from the intended send time (coordinated omission corrected).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Subscribers that only read and publishers that send timestamped, numbered events to a
    /// broadcast server; delivery latency, completeness per subscriber (lost, out of order)
    /// and (with --server-pid) server CPU per delivery.
    Fanout {
        #[command(flatten)]
        common: CommonArgs,
        /// Subscriber connections (they only read).
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Publisher connections (what they receive is not counted as deliveries).
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Events per second, all publishers together.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Events sent at the same instant (consecutive publishers, round-robin), every
        /// BURST/RATE seconds.
        #[arg(long, default_value_t = 1)]
        burst: usize,
        /// Payload size in bytes (at least 24: publisher, sequence number, publish time).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Seconds of the measured window; publishing stops at its end.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of publishing before the measured window.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Seconds to hold the connections idle between the last one opening and the first
        /// event (server pings keep them; memory per connection is read at its end).
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
        /// Handshakes in progress at once, in total (all threads and processes).
        #[arg(long, default_value_t = 512)]
        max_pending: usize,
    },
    /// Print two saved --json reports side by side: their options, then every figure with
    /// the ratio B/A. Runs no load.
    Compare {
        /// The baseline report.
        a: PathBuf,
        /// The report compared with it.
        b: PathBuf,
    },
    /// Draw a saved --json report as an SVG: latency over time (from its timeline) and the
    /// latency percentile curve. Runs no load.
    Plot {
        /// The report.
        report: PathBuf,
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// The server's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// Worker threads (each with its own poller and share of the connections).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin worker threads to these CPUs (`1`, `2,3`, `2-3`; thread i takes the i-th).
    #[arg(long)]
    pin: Option<String>,
    /// Source address to connect from (repeat to spread connections over several, past
    /// one address's ephemeral ports).
    #[arg(long)]
    source: Vec<IpAddr>,
    /// Seconds a connection may take to connect and finish its handshake.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// The server's process id: report its CPU time and RSS over the measured window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write every figure (and the latency histogram) to this JSON file.
    #[arg(long)]
    json: Option<String>,
    /// Spread the connections over this many loadgen processes (for more connections than
    /// one process's open-files limit holds; connect and fanout). The report is merged.
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Internal: this process is shard I of N of a --procs run.
    #[arg(long, hide = true)]
    shard: Option<String>,
    /// Internal: this shard's lane L of M of the source ports it shares with other shards.
    #[arg(long, hide = true)]
    port_lane: Option<String>,
    /// Draw the report as an SVG (latency over time, percentile curve) in this file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn secs(name: &str, s: f64) -> Result<Duration, Error> {
    if (0.0..1e7).contains(&s) {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(Error::Usage(format!(
            "--{name} must be a number of seconds, not {s}"
        )))
    }
}

fn common(a: CommonArgs) -> Result<Common, Error> {
    let target = target::Target::parse(&a.url)?;
    let pin = match &a.pin {
        Some(s) => sys::parse_cpu_list(s)?,
        None => Vec::new(),
    };
    let server = match a.server_pid {
        Some(pid) => Some(Arc::new(procfs::Proc::open(pid)?)),
        None => None,
    };
    if a.procs == 0 {
        return Err(Error::Usage("--procs must be at least 1".into()));
    }
    if a.threads == 0 {
        return Err(Error::Usage("--threads must be at least 1".into()));
    }
    let timeout = secs("timeout", a.timeout)?;
    if timeout.is_zero() {
        return Err(Error::Usage("--timeout must be more than 0".into()));
    }
    Ok(Common {
        target,
        threads: a.threads,
        pin,
        sources: a.source.clone(),
        handshake_timeout: timeout,
        server,
        json: a.json,
        procs: a.procs,
        shard: a.shard.as_deref().map(procs::Shard::parse).transpose()?,
        ports: (!a.source.is_empty()).then(|| {
            let (lane, lanes) = a
                .port_lane
                .as_deref()
                .and_then(|l| procs::Shard::parse(l).ok())
                .map_or((0, 1), |l| (l.index, l.count));
            Arc::new(client::SourcePorts::new(a.source.clone(), lane, lanes))
        }),
        plot: a.plot,
    })
}

fn run(cli: Cli) -> Result<(Common, Outcome), Error> {
    match cli.scenario {
        Scenario::Connect {
            common: c,
            conns,
            rate,
            hold,
            max_pending,
        } => {
            let common = common(c)?;
            let opts = ConnectOpts {
                conns,
                rate,
                hold: secs("hold", hold)?,
                max_pending: max_pending.max(1),
            };
            let out = scenario::connect::run(&common, &opts)?;
            Ok((common, out))
        }
        Scenario::Echo {
            common: c,
            conns,
            inflight,
            size,
            text,
            binary: _,
            duration,
            warmup,
            messages,
            rate,
        } => {
            let common = common(c)?;
            if common.procs > 1 {
                return Err(Error::Usage(
                    "--procs spreads connect and fanout runs; for echo past one process's \
                     open files, start several loadgen echo runs at once"
                        .into(),
                ));
            }
            if messages == Some(0) {
                return Err(Error::Usage("--messages must be at least 1".into()));
            }
            if size > 16 << 20 {
                return Err(Error::Usage("--size is at most 16 MiB".into()));
            }
            let warmup = warmup.unwrap_or(if messages.is_some() { 0.0 } else { 2.0 });
            let opts = EchoOpts {
                conns,
                inflight,
                size,
                text,
                duration: secs("duration", duration)?,
                warmup: secs("warmup", warmup)?,
                messages,
                rate,
            };
            let out = scenario::echo::run(&common, &opts)?;
            Ok((common, out))
        }
        Scenario::Fanout {
            common: c,
            subscribers,
            publishers,
            rate,
            burst,
            size,
            duration,
            warmup,
            hold,
            max_pending,
        } => {
            let common = common(c)?;
            if size > 16 << 20 {
                return Err(Error::Usage("--size is at most 16 MiB".into()));
            }
            let opts = FanoutOpts {
                subscribers,
                publishers,
                rate,
                burst,
                size,
                duration: secs("duration", duration)?,
                warmup: secs("warmup", warmup)?,
                hold: secs("hold", hold)?,
                max_pending: max_pending.max(1),
            };
            let out = scenario::fanout::run(&common, &opts)?;
            Ok((common, out))
        }
        Scenario::Compare { .. } | Scenario::Plot { .. } => Err(Error::Usage(
            "compare and plot read saved reports; they run no load".into(),
        )),
    }
}

fn main() {
    let cli = Cli::parse();
    let tool = match &cli.scenario {
        Scenario::Compare { a, b } => Some(report::compare_files(a, b)),
        Scenario::Plot { report: r, out } => Some(report::plot_file(r, out)),
        _ => None,
    };
    if let Some(result) = tool {
        if let Err(e) = result {
            eprintln!("loadgen: error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let (common, out) = match run(cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            std::process::exit(1);
        }
    };
    if common.shard.is_none() {
        println!("{}", out.title);
        print!("{}", out.table.render());
    }
    if let Some(path) = &common.json {
        if let Err(e) = std::fs::write(path, format!("{}\n", out.json)) {
            let e = Error::Report {
                path: path.clone(),
                why: e.to_string(),
            };
            eprintln!("loadgen: error: {e}");
            std::process::exit(1);
        }
    }
    if let Some(path) = &common.plot {
        if let Err(e) = report::plot_outcome(&out.json, path) {
            eprintln!("loadgen: error: {e}");
            std::process::exit(1);
        }
    }
    if !out.problems.is_empty() && common.shard.is_none() {
        for p in &out.problems {
            eprintln!("loadgen: problem: {p}");
        }
        std::process::exit(1);
    }
}
