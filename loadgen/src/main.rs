//! `loadgen`: a capacity-planning load generator for any WebSocket server.
//!
//! ```text
//! loadgen connect --url ws://127.0.0.1:9001/ --conns 10000 --rate 2000 --hold 10 --server-pid PID
//! loadgen echo    --url ws://127.0.0.1:9001/ --conns 100 --inflight 16 --size 64 --duration 10 --server-pid PID
//! loadgen echo    --conns 100 --rate 50000 --size 64 --text      # open loop, CO-corrected latency
//! loadgen fanout  --url ws://127.0.0.1:9001/ --subscribers 1000 --publishers 1 --rate 50 --size 64 --duration 10 --server-pid PID
//! loadgen soak echo --conns 100 --rate 20000 --duration 600 --server-pid PID   # drift over time
//! loadgen ramp echo --conns 100 --rate-start 10000 --rate-step 10000 --step-duration 5 --slo-p99-us 2000
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
//! | [`timeline`] | the window cut into intervals: per-interval latency, server RSS at each edge |
//! | [`progress`] | the live progress line on a terminal |
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
mod progress;
mod report;
mod scenario;
mod stats;
mod sys;
mod target;
mod timeline;

use clap::{Args, Parser, Subcommand};
use error::Error;
use scenario::connect::ConnectOpts;
use scenario::echo::EchoOpts;
use scenario::fanout::FanoutOpts;
use scenario::{Common, Load, Outcome};
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
    Echo(EchoArgs),
    /// Subscribers that only read and publishers that send timestamped, numbered events to a
    /// broadcast server; delivery latency, completeness per subscriber (lost, out of order)
    /// and (with --server-pid) server CPU per delivery.
    Fanout(FanoutArgs),
    /// Hold an echo or fanout load for --duration (default 60 s) and report drift: latency
    /// of the first vs the last 10% of the timeline, and (with --server-pid) server memory
    /// growth; a problem when either passes its bound.
    Soak {
        #[command(subcommand)]
        load: SoakLoad,
    },
    /// Step the rate of an echo (open loop) or fanout load up until a service-level
    /// objective breaks (p99, loss, failed connections, rate not reached); report the
    /// highest step that held, in one line.
    Ramp {
        #[command(subcommand)]
        load: RampLoad,
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
    /// Offer permessage-deflate (RFC 7692) on every connection; the report gives the bytes
    /// on the wire per message received (run once with and once without to compare). echo
    /// sends its messages compressed, so the server must agree (`volley serve --deflate`).
    #[arg(long)]
    deflate: bool,
}

/// The echo scenario's options.
#[derive(Args, Debug)]
struct EchoArgs {
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
    /// after warm-up). Default 10; soak: 60.
    #[arg(long)]
    duration: Option<f64>,
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
    /// Seconds per interval of the report's timeline (default 1, or the window / 300 when
    /// longer).
    #[arg(long)]
    interval: Option<f64>,
}

/// The fanout scenario's options.
#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Subscriber connections (they only read).
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Publisher connections (what they receive is not counted as deliveries).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Events per second, all publishers together (default 10).
    #[arg(long)]
    rate: Option<f64>,
    /// Events sent at the same instant (consecutive publishers, round-robin), every
    /// BURST/RATE seconds.
    #[arg(long, default_value_t = 1)]
    burst: usize,
    /// Payload size in bytes (at least 24: publisher, sequence number, publish time).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds of the measured window; publishing stops at its end. Default 10; soak: 60.
    #[arg(long)]
    duration: Option<f64>,
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
    /// Seconds per interval of the report's timeline (default 1, or the window / 300 when
    /// longer).
    #[arg(long)]
    interval: Option<f64>,
    /// Spread the subscribers over these servers, round-robin (repeatable; default: --url,
    /// where the publishers always connect). For a cluster: the other nodes here, so every
    /// event crosses the broker and latency is cross-node delivery latency.
    #[arg(long = "sub-url", value_name = "URL")]
    sub_urls: Vec<String>,
}

/// The load a soak holds.
#[derive(Subcommand, Debug)]
enum SoakLoad {
    /// An echo load (closed or open loop), with every echo option.
    Echo {
        #[command(flatten)]
        load: EchoArgs,
        #[command(flatten)]
        soak: SoakArgs,
    },
    /// A fanout load, with every fanout option (--procs too).
    Fanout {
        #[command(flatten)]
        load: FanoutArgs,
        #[command(flatten)]
        soak: SoakArgs,
    },
}

/// The bounds a soak checks.
#[derive(Args, Debug)]
struct SoakArgs {
    /// Server RSS growth, bytes per second (least-squares slope over the timeline), above
    /// which the soak reports a problem (with --server-pid).
    #[arg(long, default_value_t = scenario::soak::DEFAULT_MAX_RSS_GROWTH)]
    max_rss_growth: f64,
    /// Ratio of p99 in the last 10% of the timeline to p99 in the first 10% above which
    /// the soak reports a problem.
    #[arg(long, default_value_t = scenario::soak::DEFAULT_MAX_P99_DRIFT)]
    max_p99_drift: f64,
}

/// The load a ramp steps up.
#[derive(Subcommand, Debug)]
enum RampLoad {
    /// Open-loop echo: each step sends at its rate (msg/s, all connections together).
    Echo {
        #[command(flatten)]
        load: EchoArgs,
        #[command(flatten)]
        ramp: RampArgs,
    },
    /// Fanout: each step publishes at its rate (events/s, all publishers together).
    Fanout {
        #[command(flatten)]
        load: FanoutArgs,
        #[command(flatten)]
        ramp: RampArgs,
    },
}

/// The steps of a ramp and the objective each must hold.
#[derive(Args, Debug)]
struct RampArgs {
    /// The first step's rate (echo: messages/s; fanout: events/s).
    #[arg(long)]
    rate_start: f64,
    /// Each step adds this to the rate.
    #[arg(long, conflicts_with = "factor", required_unless_present = "factor")]
    rate_step: Option<f64>,
    /// Each step multiplies the rate by this (more than 1).
    #[arg(long)]
    factor: Option<f64>,
    /// Steps at most.
    #[arg(long, default_value_t = 10)]
    max_steps: usize,
    /// Seconds of each step's measured window (after its --warmup).
    #[arg(long, default_value_t = 5.0)]
    step_duration: f64,
    /// The objective: p99 latency at most this many microseconds.
    #[arg(long)]
    slo_p99_us: f64,
    /// The objective: at most this many messages unanswered (echo) or deliveries lost
    /// (fanout) per step.
    #[arg(long, default_value_t = 0)]
    max_loss: u64,
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
        deflate: a.deflate,
    })
}

/// The echo options from the command line; `duration` when --duration is not given.
fn echo_opts(a: EchoArgs, duration: f64) -> Result<(Common, EchoOpts), Error> {
    let common = common(a.common)?;
    if common.procs > 1 {
        return Err(Error::Usage(
            "--procs spreads connect and fanout runs; for echo past one process's \
             open files, start several loadgen echo runs at once"
                .into(),
        ));
    }
    if a.messages == Some(0) {
        return Err(Error::Usage("--messages must be at least 1".into()));
    }
    if a.size > 16 << 20 {
        return Err(Error::Usage("--size is at most 16 MiB".into()));
    }
    let warmup = a
        .warmup
        .unwrap_or(if a.messages.is_some() { 0.0 } else { 2.0 });
    let opts = EchoOpts {
        conns: a.conns,
        inflight: a.inflight,
        size: a.size,
        text: a.text,
        duration: secs("duration", a.duration.unwrap_or(duration))?,
        warmup: secs("warmup", warmup)?,
        messages: a.messages,
        rate: a.rate,
        interval: a.interval.map(|i| secs("interval", i)).transpose()?,
    };
    Ok((common, opts))
}

/// The fanout options from the command line; `duration` when --duration is not given.
fn fanout_opts(a: FanoutArgs, duration: f64) -> Result<(Common, FanoutOpts), Error> {
    let common = common(a.common)?;
    if a.size > 16 << 20 {
        return Err(Error::Usage("--size is at most 16 MiB".into()));
    }
    let opts = FanoutOpts {
        subscribers: a.subscribers,
        publishers: a.publishers,
        rate: a.rate.unwrap_or(10.0),
        burst: a.burst,
        size: a.size,
        duration: secs("duration", a.duration.unwrap_or(duration))?,
        warmup: secs("warmup", a.warmup)?,
        hold: secs("hold", a.hold)?,
        max_pending: a.max_pending.max(1),
        interval: a.interval.map(|i| secs("interval", i)).transpose()?,
        sub_targets: a
            .sub_urls
            .iter()
            .map(|u| target::Target::parse(u))
            .collect::<Result<_, _>>()?,
    };
    Ok((common, opts))
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
        Scenario::Echo(a) => {
            let (common, opts) = echo_opts(a, 10.0)?;
            let out = scenario::echo::run(&common, &opts)?;
            Ok((common, out))
        }
        Scenario::Fanout(a) => {
            let (common, opts) = fanout_opts(a, 10.0)?;
            let out = scenario::fanout::run(&common, &opts)?;
            Ok((common, out))
        }
        Scenario::Soak { load } => {
            let (common, load, soak) = match load {
                SoakLoad::Echo { load, soak } => {
                    let (c, o) = echo_opts(load, 60.0)?;
                    (c, Load::Echo(o), soak)
                }
                SoakLoad::Fanout { load, soak } => {
                    let (c, o) = fanout_opts(load, 60.0)?;
                    (c, Load::Fanout(o), soak)
                }
            };
            let opts = scenario::soak::SoakOpts {
                max_rss_growth: soak.max_rss_growth,
                max_p99_drift: soak.max_p99_drift,
            };
            let out = scenario::soak::run(&common, &load, &opts)?;
            Ok((common, out))
        }
        Scenario::Ramp { load } => {
            let (common, load, ramp, given) = match load {
                RampLoad::Echo { load, ramp } => {
                    let given = [
                        ("--duration", load.duration.is_some()),
                        ("--rate", load.rate.is_some()),
                        ("--messages", load.messages.is_some()),
                    ];
                    let (c, o) = echo_opts(load, ramp.step_duration)?;
                    (c, Load::Echo(o), ramp, given)
                }
                RampLoad::Fanout { load, ramp } => {
                    let given = [
                        ("--duration", load.duration.is_some()),
                        ("--rate", load.rate.is_some()),
                        ("--messages", false),
                    ];
                    let (c, o) = fanout_opts(load, ramp.step_duration)?;
                    (c, Load::Fanout(o), ramp, given)
                }
            };
            if let Some((name, _)) = given.iter().find(|g| g.1) {
                return Err(Error::Usage(format!(
                    "ramp sets the rate and duration of each step: use --rate-start, --rate-step \
                     or --factor and --step-duration instead of {name}"
                )));
            }
            if common.procs > 1 || common.plot.is_some() {
                return Err(Error::Usage(
                    "ramp runs in one process and draws no plot: drop --procs and --plot".into(),
                ));
            }
            let step = match (ramp.rate_step, ramp.factor) {
                (Some(s), _) => scenario::ramp::Step::Add(s),
                (None, Some(f)) => scenario::ramp::Step::Mul(f),
                (None, None) => {
                    return Err(Error::Usage("give --rate-step or --factor".into()));
                }
            };
            let opts = scenario::ramp::RampOpts {
                start: ramp.rate_start,
                step,
                max_steps: ramp.max_steps,
                slo_p99_us: ramp.slo_p99_us,
                max_loss: ramp.max_loss,
            };
            let out = scenario::ramp::run(&common, &load, &opts, &mut std::io::stdout())?;
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
