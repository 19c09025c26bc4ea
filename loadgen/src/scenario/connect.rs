//! `connect`: open N connections at a given rate, hold them idle, close them.
//!
//! Reports the handshake latency (TCP connect start to a verified 101), failures by reason
//! (refused, timeout, HTTP status, reset, ...), and with `--server-pid` the server's memory
//! per connection: (RSS at the end of the hold - RSS before the first connect) / connections
//! open, which is user-space memory only (the kernel's socket buffers are not in RSS).
//! Connections answer the server's pings while held, so a server that pings keeps them.

use super::{
    connect_error, delta, sample, share, sleep_until, spawn_worker, Common, Control, Note, Outcome,
    Pool,
};
use crate::client::{Event, Failure};
use crate::error::Error;
use crate::json::Json;
use crate::procfs::Delta;
use crate::stats::{group, Failures, Latency, Table};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use volley::CloseCode;

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
    pool.close_all(CloseCode::NORMAL);
    pool.flush(&mut |_, note| acc.note(note));
    let deadline = pool.clock.now_ns() + CLOSE_WAIT.as_nanos() as u64;
    while pool.remaining() > 0 && pool.clock.now_ns() < deadline {
        pool.turn(Some(Duration::from_millis(5)), &mut |_, note| {
            acc.note(note)
        });
    }
    pool.abandon_all(&mut |_, note| acc.note(note));
    Ok(acc.res)
}

/// The connect scenario: ramp, hold, report.
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
    let threads = common.threads.clamp(1, opts.conns);
    crate::sys::check_files(opts.conns)?;
    crate::sys::check_ports(opts.conns.div_ceil(common.sources.len().max(1)))?;
    let ctl = Control::new();
    let base = sample(&common.server);
    let fds_base = common.server.as_ref().and_then(|p| p.fd_count().ok());
    let max_pending = opts.max_pending.max(threads);
    let mut handles = Vec::new();
    for i in 0..threads {
        let n = share(opts.conns, threads, i);
        let rate = opts.rate.map_or(0.0, |r| r * n as f64 / opts.conns as f64);
        let mp = share(max_pending, threads, i).max(1);
        let (c, k) = (common.clone(), ctl.clone());
        handles.push(spawn_worker(common, i, move || {
            run_worker(c, k, n, rate, mp)
        })?);
    }
    let t0 = Instant::now();
    let ramp = opts.rate.map_or(Duration::ZERO, |r| {
        Duration::from_secs_f64(opts.conns as f64 / r)
    });
    let deadline = t0
        + ramp
        + common.handshake_timeout * (1 + opts.conns.div_ceil(max_pending)) as u32
        + Duration::from_secs(2);
    ctl.wait_until(deadline, || ctl.resolved() >= opts.conns);
    let ramp_s = t0.elapsed().as_secs_f64();
    let after_ramp = sample(&common.server);
    let opened_now = ctl.opened.load(Ordering::Acquire);
    if opened_now > 0 {
        sleep_until(Instant::now() + opts.hold);
    }
    let after_hold = sample(&common.server);
    let fds_held = common.server.as_ref().and_then(|p| p.fd_count().ok());
    let held = ctl.opened.load(Ordering::Acquire);
    ctl.stop.store(true, Ordering::Release);
    let mut results = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => results.push(r?),
            Err(_) => return Err(Error::Sys("a worker thread panicked".into())),
        }
    }
    let mut hs = Latency::new();
    let mut cf = Failures::default();
    let mut rf = Failures::default();
    let (mut opened, mut clean) = (0usize, 0usize);
    for r in &results {
        hs.merge(&r.handshake);
        cf.merge(&r.connect_failures);
        rf.merge(&r.run_failures);
        opened += r.opened;
        clean += r.closed_clean;
    }
    let unresolved = opts.conns.saturating_sub(opened + cf.total() as usize);
    if unresolved > 0 {
        *cf.0.entry("timeout".into()).or_default() += unresolved as u64;
    }
    if opened == 0 {
        return Err(connect_error(common, &ctl, &cf));
    }
    let ramp_cost = delta(&common.server, base, after_ramp);
    let hold_cost = delta(&common.server, base, after_hold);
    let mut out = report(
        common, opts, threads, ramp_s, held, opened, clean, &hs, &cf, &rf, ramp_cost, hold_cost,
    );
    if let (Some(a), Some(b)) = (fds_base, fds_held) {
        out.table.row(
            "server open files",
            format!("{} before, {} held", group(a as u64), group(b as u64)),
        );
        out.json.set("server_fds_before", a);
        out.json.set("server_fds_held", b);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn report(
    common: &Common,
    opts: &ConnectOpts,
    threads: usize,
    ramp_s: f64,
    held: usize,
    opened: usize,
    clean: usize,
    hs: &Latency,
    cf: &Failures,
    rf: &Failures,
    ramp_cost: Option<Delta>,
    hold_cost: Option<Delta>,
) -> Outcome {
    let per_conn = hold_cost.map(|d| d.rss_delta_bytes() as f64 / held.max(1) as f64);
    let cpu_per_conn = ramp_cost.map(|d| d.cpu_us / opened.max(1) as f64);
    let mut t = Table::default();
    t.row("target", common.target.url.clone());
    t.row(
        "load",
        format!(
            "{} connections, {}, held {:.1} s, {threads} thread(s)",
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
    let d_json = |d: Option<Delta>| match d {
        None => Json::Null,
        Some(d) => Json::obj()
            .with("wall_s", d.wall_s)
            .with("cpu_us", d.cpu_us)
            .with("sys_us", d.sys_us)
            .with("cpu_us_clock", d.cpu_us_clock)
            .with("rss_start_kib", d.rss_start_kib)
            .with("rss_end_kib", d.rss_end_kib)
            .with("rss_delta_bytes", d.rss_delta_bytes()),
    };
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
                .with("threads", threads)
                .with("server_pid", common.server.as_ref().map(|p| p.pid())),
        )
        .with("opened", opened)
        .with("held", held)
        .with("ramp_s", ramp_s)
        .with("connect_failures", cf.to_json())
        .with("failures_while_held", rf.to_json())
        .with("closed_clean", clean)
        .with("handshake", hs.to_json())
        .with("server_ramp", d_json(ramp_cost))
        .with("server_hold", d_json(hold_cost))
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
