//! `connect`: open N connections at a given rate, hold them idle, close them.
//!
//! Reports the handshake latency (TCP connect start to a verified 101), failures by reason
//! (refused, timeout, HTTP status, reset, ...), and with `--server-pid` the server's memory
//! per connection: (RSS at the end of the hold - RSS before the first connect) / connections
//! open, which is user-space memory only (the kernel's socket buffers are not in RSS).
//! Connections answer the server's pings while held, so a server that pings keeps them.

use super::{
    connect_error, delta, sample, share, sleep_until, spawn_worker, Common, Control, MemProbe,
    Note, Outcome, Pool,
};
use crate::client::{Event, Failure};
use crate::error::Error;
use crate::json::Json;
use crate::procfs::Delta;
use crate::stats::{group, Failures, Latency, Table};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long close handshakes are awaited at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// The connect scenario's options.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    /// Connections to open.
    pub conns: usize,
    /// New connections per second in total (`None`: as fast as `max_pending` allows).
    pub rate: Option<f64>,
    /// How long to hold the connections once all are resolved.
    pub hold: Duration,
    /// Handshakes in progress at once, in total.
    pub max_pending: usize,
}

#[derive(Debug, Default)]
struct WorkerResult {
    handshake: Latency,
    opened: usize,
    connect_failures: Failures,
    run_failures: Failures,
    closed_clean: usize,
    last_open_ns: u64,
}

struct Acc {
    ctl: Arc<Control>,
    res: WorkerResult,
}

impl Acc {
    fn note(&mut self, note: Note<'_, '_>) {
        match note {
            Note::Event(c, Event::Opened, t) => {
                self.res.opened += 1;
                self.res.handshake.record(t.saturating_sub(c.started_ns));
                self.res.last_open_ns = self.res.last_open_ns.max(t);
                self.ctl.opened.fetch_add(1, Ordering::AcqRel);
            }
            Note::Event(_, Event::Message(_), _) => {}
            Note::Done(c) => match (&c.failure, c.opened_ns) {
                (Some(f), None) => self.connect_failed(f),
                (Some(f), Some(_)) => self.res.run_failures.add(f.label()),
                (None, _) => self.res.closed_clean += 1,
            },
        }
    }

    fn connect_failed(&mut self, f: &Failure) {
        self.res.connect_failures.add(f.label());
        self.ctl.count_failure(f);
    }
}

fn run_worker(
    common: Common,
    ctl: Arc<Control>,
    n: usize,
    rate: f64,
    max_pending: usize,
) -> Result<WorkerResult, Error> {
    let mut pool = Pool::new(&common, ctl.clock, Arc::new(Vec::new()))?;
    let mut acc = Acc {
        ctl: ctl.clone(),
        res: WorkerResult::default(),
    };
    let t0 = pool.clock.now_ns();
    let period = if rate > 0.0 { 1e9 / rate } else { 0.0 };
    let mut started = 0usize;
    while !ctl.stopped() {
        let now = pool.clock.now_ns();
        let mut next = None;
        while started < n && pool.pending < max_pending {
            let due = t0 + (started as f64 * period) as u64;
            if due > now {
                next = Some(due);
                break;
            }
            started += 1;
            if let Err(f) = pool.start() {
                acc.connect_failed(&f);
            }
        }
        if started == n && pool.pending == 0 {
            break;
        }
        let timeout = next.map_or(Duration::from_millis(5), |d| {
            Duration::from_nanos(d.saturating_sub(pool.clock.now_ns()))
        });
        pool.turn(Some(timeout), &mut |_, note| acc.note(note));
    }
    // Hold, answering pings, until the main thread has read the server.
    while !ctl.stopped() {
        pool.turn(Some(Duration::from_millis(20)), &mut |_, note| {
            acc.note(note)
        });
    }
    pool.close_and_wait(CLOSE_WAIT, &mut |_, note| acc.note(note));
    Ok(acc.res)
}

/// Starts the workers for `conns` connections at `rate` (total), `max_pending` at once.
fn start(
    common: &Common,
    conns: usize,
    rate: Option<f64>,
    max_pending: usize,
) -> Result<(Arc<Control>, Vec<Handle>), Error> {
    let threads = common.threads.clamp(1, conns.max(1));
    crate::sys::check_files(conns)?;
    super::check_sources(common, conns)?;
    let ctl = Control::new();
    let mut handles = Vec::new();
    for i in 0..threads {
        let n = share(conns, threads, i);
        let rate = rate.map_or(0.0, |r| r * n as f64 / conns.max(1) as f64);
        let mp = share(max_pending, threads, i).max(1);
        let (c, k) = (common.clone(), ctl.clone());
        handles.push(spawn_worker(common, i, move || {
            run_worker(c, k, n, rate, mp)
        })?);
    }
    Ok((ctl, handles))
}

type Handle = std::thread::JoinHandle<Result<WorkerResult, Error>>;

/// How long opening `conns` may take.
fn ramp_deadline(common: &Common, opts: &ConnectOpts, conns: usize, max_pending: usize) -> Instant {
    let ramp = opts.rate.map_or(Duration::ZERO, |r| {
        Duration::from_secs_f64(opts.conns as f64 / r)
    });
    Instant::now()
        + ramp
        + common.handshake_timeout * (1 + conns.div_ceil(max_pending.max(1))) as u32
        + Duration::from_secs(2)
}

/// Sums workers' (or shards') results; connections never resolved count as timeouts.
fn merge(results: Vec<WorkerResult>, conns: usize) -> WorkerResult {
    let mut m = WorkerResult::default();
    for r in results {
        m.handshake.merge(&r.handshake);
        m.connect_failures.merge(&r.connect_failures);
        m.run_failures.merge(&r.run_failures);
        m.opened += r.opened;
        m.closed_clean += r.closed_clean;
        m.last_open_ns = m.last_open_ns.max(r.last_open_ns);
    }
    let unresolved = conns.saturating_sub(m.opened + m.connect_failures.total() as usize);
    if unresolved > 0 {
        *m.connect_failures.0.entry("timeout".into()).or_default() += unresolved as u64;
    }
    m
}

/// The connect scenario: ramp, hold, report. With `--procs N` the connections are spread
/// over N shard processes ([`crate::procs`]); in a shard, this process's part.
///
/// # Errors
/// No connection could be opened (refused, not a WebSocket server, ...), the limits cannot
/// hold the request, or the report cannot be written. Partial failures are in the report.
pub fn run(common: &Common, opts: &ConnectOpts) -> Result<Outcome, Error> {
    if opts.conns == 0 {
        return Err(Error::Usage("--conns must be at least 1".into()));
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(Error::Usage(
            "--rate must be a positive number of connections per second".into(),
        ));
    }
    if let Some(shard) = common.shard {
        return run_shard(common, opts, shard);
    }
    if common.procs > 1 {
        return run_procs(common, opts);
    }
    let max_pending = opts.max_pending.max(common.threads);
    let mut watch = Watch::start(common);
    let (ctl, handles) = start(common, opts.conns, opts.rate, max_pending)?;
    let threads = handles.len();
    ctl.wait_until(ramp_deadline(common, opts, opts.conns, max_pending), || {
        ctl.resolved() >= opts.conns
    });
    watch.hold(common, ctl.opened.load(Ordering::Acquire) > 0, opts.hold);
    let held = ctl.opened.load(Ordering::Acquire);
    ctl.stop.store(true, Ordering::Release);
    let r = merge(super::join(handles)?, opts.conns);
    if r.opened == 0 {
        return Err(connect_error(common, &ctl, &r.connect_failures));
    }
    Ok(watch.report(common, opts, &format!("{threads} thread(s)"), held, &r))
}

/// The server observed over a connect run: before the first connection, when all are
/// resolved, and at the end of the hold.
struct Watch {
    t0: Instant,
    mem0: MemProbe,
    base: Option<crate::procfs::Sample>,
    fds_base: Option<usize>,
    ramp_s: f64,
    after_ramp: Option<crate::procfs::Sample>,
    after_hold: Option<crate::procfs::Sample>,
    mem1: Option<MemProbe>,
    fds_held: Option<usize>,
}

impl Watch {
    /// Reads the server before the first connection.
    fn start(common: &Common) -> Watch {
        Watch {
            t0: Instant::now(),
            mem0: MemProbe::take(common),
            base: sample(&common.server),
            fds_base: common.server.as_ref().and_then(|p| p.fd_count().ok()),
            ramp_s: 0.0,
            after_ramp: None,
            after_hold: None,
            mem1: None,
            fds_held: None,
        }
    }

    /// Every connection is resolved: reads the server, holds (if any opened), reads again.
    fn hold(&mut self, common: &Common, any_open: bool, hold: Duration) {
        self.ramp_s = self.t0.elapsed().as_secs_f64();
        self.after_ramp = sample(&common.server);
        if any_open {
            sleep_until(Instant::now() + hold);
        }
        self.after_hold = sample(&common.server);
        self.mem1 = Some(MemProbe::take(common));
        self.fds_held = common.server.as_ref().and_then(|p| p.fd_count().ok());
    }

    /// The report of a run that held `held` connections with results `r`.
    fn report(
        &self,
        common: &Common,
        opts: &ConnectOpts,
        placement: &str,
        held: usize,
        r: &WorkerResult,
    ) -> Outcome {
        let ramp_cost = delta(&common.server, self.base, self.after_ramp);
        let hold_cost = delta(&common.server, self.base, self.after_hold);
        let mut out = report(
            common,
            opts,
            placement,
            self.ramp_s,
            held,
            r,
            ramp_cost,
            hold_cost,
        );
        if let (Some(a), Some(b)) = (self.fds_base, self.fds_held) {
            out.table.row(
                "server open files",
                format!("{} before, {} held", group(a as u64), group(b as u64)),
            );
            out.json.set("server_fds_before", a);
            out.json.set("server_fds_held", b);
        }
        if let Some(mem1) = &self.mem1 {
            self.mem0.report(mem1, held, false, &mut out);
        }
        out
    }
}

/// One shard of a `--procs` run: open its share, report, wait for the parent, close.
fn run_shard(
    common: &Common,
    opts: &ConnectOpts,
    shard: crate::procs::Shard,
) -> Result<Outcome, Error> {
    let conns = shard.share(opts.conns);
    let rate = opts.rate.map(|r| r * conns as f64 / opts.conns as f64);
    let max_pending = shard.share(opts.max_pending).max(common.threads);
    let (ctl, handles) = start(common, conns, rate, max_pending)?;
    ctl.wait_until(ramp_deadline(common, opts, conns, max_pending), || {
        ctl.resolved() >= conns
    });
    let opened = ctl.opened.load(Ordering::Acquire);
    crate::procs::report_connected(opened, conns - opened);
    let _ = crate::procs::wait_order();
    ctl.stop.store(true, Ordering::Release);
    let r = merge(super::join(handles)?, conns);
    let json = Json::obj()
        .with("handshake", r.handshake.to_json())
        .with("opened", r.opened)
        .with("connect_failures", r.connect_failures.to_json())
        .with("run_failures", r.run_failures.to_json())
        .with("closed_clean", r.closed_clean);
    Ok(Outcome {
        title: "loadgen connect shard".into(),
        table: Table::default(),
        json,
        problems: Vec::new(),
    })
}

/// The parent of a `--procs` run: starts the shards, reads the server, merges.
fn run_procs(common: &Common, opts: &ConnectOpts) -> Result<Outcome, Error> {
    use crate::procs::{u, Order, Shards};
    let procs = common.procs;
    let per_proc = opts.conns.div_ceil(procs);
    crate::sys::check_files(per_proc)?;
    super::check_sources(common, opts.conns)?;
    let mut watch = Watch::start(common);
    let mut shards = Shards::spawn(procs, &common.sources)?;
    let max_pending = opts.max_pending.div_ceil(procs).max(common.threads);
    let deadline = ramp_deadline(common, opts, per_proc, max_pending) + Duration::from_secs(5);
    let (held, _failed) = shards.wait_connected(deadline)?;
    watch.hold(common, held > 0, opts.hold);
    shards.send(Order::Stop);
    let reports = shards.finish(Instant::now() + CLOSE_WAIT + Duration::from_secs(30))?;
    let results = reports
        .iter()
        .map(|v| WorkerResult {
            handshake: v
                .get("handshake")
                .map(Latency::from_json)
                .unwrap_or_default(),
            opened: u(v, "opened") as usize,
            connect_failures: Failures::from_json(v.get("connect_failures")),
            run_failures: Failures::from_json(v.get("run_failures")),
            closed_clean: u(v, "closed_clean") as usize,
            last_open_ns: 0,
        })
        .collect();
    let r = merge(results, opts.conns);
    if r.opened == 0 {
        return Err(Error::NoConnection {
            url: common.target.url.clone(),
            reasons: r.connect_failures.summary(),
        });
    }
    let placement = format!("{procs} processes x {} thread(s)", common.threads);
    let mut out = watch.report(common, opts, &placement, held, &r);
    out.json.set("procs", procs);
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn report(
    common: &Common,
    opts: &ConnectOpts,
    placement: &str,
    ramp_s: f64,
    held: usize,
    r: &WorkerResult,
    ramp_cost: Option<Delta>,
    hold_cost: Option<Delta>,
) -> Outcome {
    let (opened, clean) = (r.opened, r.closed_clean);
    let (hs, cf, rf) = (&r.handshake, &r.connect_failures, &r.run_failures);
    let per_conn = hold_cost.map(|d| d.rss_delta_bytes() as f64 / held.max(1) as f64);
    let cpu_per_conn = ramp_cost.map(|d| d.cpu_us / opened.max(1) as f64);
    let mut t = Table::default();
    t.row("target", common.target.url.clone());
    t.row(
        "load",
        format!(
            "{} connections, {}, held {:.1} s, {placement}",
            group(opts.conns as u64),
            opts.rate.map_or("as fast as possible".into(), |r| format!(
                "{} per second",
                group(r.round() as u64)
            )),
            opts.hold.as_secs_f64()
        ),
    );
    t.row(
        "opened",
        format!(
            "{} of {} in {:.2} s ({} per second)",
            group(opened as u64),
            group(opts.conns as u64),
            ramp_s,
            group((opened as f64 / ramp_s.max(1e-9)).round() as u64)
        ),
    );
    t.row("connect failures", cf.summary());
    t.row("handshake (us)", hs.summary_us());
    t.row("failures while held", rf.summary());
    t.row(
        "closed cleanly",
        format!("{} of {}", group(clean as u64), group(opened as u64)),
    );
    match hold_cost {
        Some(d) => {
            t.row(
                "server RSS",
                format!(
                    "{} KiB before, {} KiB with {} open ({:+} KiB)",
                    group(d.rss_start_kib),
                    group(d.rss_end_kib),
                    group(held as u64),
                    d.rss_delta_bytes() / 1024
                ),
            );
            t.row(
                "server memory per connection",
                format!(
                    "{:.0} B (RSS delta / connections)",
                    per_conn.unwrap_or(f64::NAN)
                ),
            );
        }
        None => t.row("server memory", "- (give --server-pid PID)"),
    }
    if let Some(c) = cpu_per_conn {
        t.row(
            "server CPU per connection",
            format!("{c:.1} us (accept + handshake)"),
        );
    }
    let mut problems = Vec::new();
    if cf.total() > 0 {
        problems.push(format!(
            "{} of {} connections failed to open: {}",
            cf.total(),
            opts.conns,
            cf.summary()
        ));
    }
    if rf.total() > 0 {
        problems.push(format!("connections failed while held: {}", rf.summary()));
    }
    let json = Json::obj()
        .with("scenario", "connect")
        .with("url", common.target.url.clone())
        .with(
            "options",
            Json::obj()
                .with("conns", opts.conns)
                .with("rate", opts.rate)
                .with("hold_s", opts.hold.as_secs_f64())
                .with("max_pending", opts.max_pending)
                .with("threads", common.threads)
                .with("procs", common.procs)
                .with("server_pid", common.server.as_ref().map(|p| p.pid())),
        )
        .with("opened", opened)
        .with("held", held)
        .with("ramp_s", ramp_s)
        .with("connect_failures", cf.to_json())
        .with("failures_while_held", rf.to_json())
        .with("closed_clean", clean)
        .with("handshake", hs.to_json())
        .with("server_ramp", super::delta_json(ramp_cost))
        .with("server_hold", super::delta_json(hold_cost))
        .with("server_bytes_per_conn", per_conn)
        .with("server_cpu_us_per_conn", cpu_per_conn)
        .with("problems", problems.clone());
    Outcome {
        title: "loadgen connect".into(),
        table: t,
        json,
        problems,
    }
}
