//! `echo`: every message sent comes back, is checked byte for byte, and its round trip timed.
//!
//! Closed loop (default): each connection keeps `--inflight K` messages outstanding and
//! sends the next one when an echo returns. Open loop (`--rate R`): messages leave at fixed
//! times, R per second in total, spread round-robin over the connections, whatever the
//! server's pace; latency is measured from the time a message *should* have been sent
//! (coordinated-omission correction, as wrk2 does), and the plain send-to-echo time is
//! reported beside it as the service time.
//!
//! Timeline: connect every connection, then go; a warm-up; the measured window
//! (`--duration`), at whose edges the server's `/proc` is read; then no new sends, the
//! answers still in flight are awaited (`DRAIN`), and the connections are closed with 1000.
//! With `--messages M` each connection sends exactly M messages and the window lasts until
//! the last echo (still bounded by warm-up + duration).

use super::{connect_error, share, sleep_until, spawn_worker, Common, Control, Note, Pool, UNSET};
use crate::client::{Event, Payloads, Rng, State};
use crate::error::Error;
use crate::json::Json;
use crate::procfs::{Delta, Proc};
use crate::stats::{group, Failures, Latency, Table};
use crate::timeline::{Grid, Intervals};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use volley::proto::Message;

/// How long answers still in flight are awaited after the last send.
const DRAIN: Duration = Duration::from_secs(2);
/// How long close handshakes are awaited.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Distinct payloads per run (message `seq` carries payload `seq % VARIANTS`).
const VARIANTS: usize = 16;
/// Handshakes in progress per worker at once, so a burst does not overflow the backlog.
const MAX_PENDING: usize = 256;

/// The echo scenario's options.
#[derive(Debug, Clone)]
pub struct EchoOpts {
    /// Connections.
    pub conns: usize,
    /// Messages outstanding per connection (closed loop).
    pub inflight: usize,
    /// Payload bytes.
    pub size: usize,
    /// Text messages (else binary).
    pub text: bool,
    /// Measured window.
    pub duration: Duration,
    /// Before the window.
    pub warmup: Duration,
    /// Messages per connection, if counted.
    pub messages: Option<u64>,
    /// Aggregate messages per second (open loop), if set.
    pub rate: Option<f64>,
    /// Length of the timeline's intervals (`None`: [`Grid::new`]'s default).
    pub interval: Option<Duration>,
}

/// Per-connection echo state.
#[derive(Debug, Default)]
struct EchoConn {
    sent: u64,
    received: u64,
    /// (intended send time, actual send time) of each message in flight, oldest first.
    pending: VecDeque<(u64, u64)>,
    /// Finished sending (quota reached) or ended.
    done_sending: bool,
}

/// What one worker measured.
#[derive(Debug, Default)]
struct WorkerResult {
    /// Round trip (closed loop) or intended-send-to-echo (open loop), in the window.
    latency: Latency,
    /// The same latencies by interval of the window (the timeline).
    intervals: Intervals,
    /// Open loop: actual-send-to-echo, in the window.
    service: Latency,
    sent: u64,
    received: u64,
    in_window: u64,
    verify_failures: u64,
    unexpected: u64,
    /// Messages in flight on connections that ended, or at the drain deadline.
    unanswered: u64,
    opened: usize,
    /// Failures of connections after they opened (server closes, resets).
    run_failures: Failures,
    /// Failures before opening.
    connect_failures: Failures,
    closed_clean: usize,
    first_in_window_ns: u64,
    last_in_window_ns: u64,
    /// Open loop: sends that left later than intended by more than 1 ms.
    late_sends: u64,
    /// Bytes of frames received after the handshakes (what the echoes took on the wire).
    wire_bytes: u64,
}

struct Worker {
    ctl: Arc<Control>,
    payloads: Arc<Payloads>,
    opts: EchoOpts,
    st: Vec<EchoConn>,
    res: WorkerResult,
    win_start: u64,
    win_end: u64,
    send_until: u64,
    quota: u64,
    /// Messages in flight on live connections.
    outstanding: u64,
    /// Connections that opened and are done sending.
    done_sending: usize,
    /// Echoes already added to the progress count.
    reported: u64,
}

impl Worker {
    fn note(&mut self, slot: usize, note: Note<'_, '_>) {
        if self.st.len() <= slot {
            self.st.resize_with(slot + 1, EchoConn::default);
        }
        match note {
            Note::Event(_, Event::Opened, _) => {
                self.res.opened += 1;
                self.ctl.opened.fetch_add(1, Ordering::AcqRel);
            }
            Note::Event(conn, Event::Message(m), t) => self.echo(slot, conn, &m, t),
            Note::Done(conn) => {
                let e = &mut self.st[slot];
                let lost = e.pending.len() as u64;
                self.res.unanswered += lost;
                self.outstanding -= lost;
                e.pending.clear();
                match (&conn.failure, conn.opened_ns) {
                    (Some(f), None) => {
                        self.res.connect_failures.add(f.label());
                        self.ctl.count_failure(f);
                    }
                    (Some(f), Some(_)) => self.res.run_failures.add(f.label()),
                    (None, _) => self.res.closed_clean += 1,
                }
                if conn.opened_ns.is_some() && !e.done_sending {
                    e.done_sending = true;
                    self.done_sending += 1;
                }
            }
        }
    }

    fn echo(&mut self, slot: usize, conn: &mut crate::client::Conn, m: &Message<'_>, t: u64) {
        let e = &mut self.st[slot];
        let Some((intended, actual)) = e.pending.pop_front() else {
            self.res.unexpected += 1;
            return;
        };
        self.outstanding -= 1;
        if !self.payloads.matches(e.received, m) {
            self.res.verify_failures += 1;
        }
        e.received += 1;
        self.res.received += 1;
        if t >= self.win_start && t < self.win_end {
            self.res.in_window += 1;
            let lat = t.saturating_sub(intended);
            self.res.latency.record(lat);
            self.res.intervals.record(t, lat);
            if self.opts.rate.is_some() {
                self.res.service.record(t.saturating_sub(actual));
            }
            if self.res.first_in_window_ns == 0 {
                self.res.first_in_window_ns = t;
            }
            self.res.last_in_window_ns = t;
        }
        if self.opts.rate.is_none() && !e.done_sending {
            if t < self.send_until && conn.state == State::Open && !self.ctl.stopped() {
                conn.queue_frame(self.payloads.index(e.sent));
                e.pending.push_back((t, t));
                e.sent += 1;
                self.res.sent += 1;
                self.outstanding += 1;
            }
            if e.sent >= self.quota || t >= self.send_until {
                e.done_sending = true;
                self.done_sending += 1;
            }
        }
    }
}

fn run_worker(
    common: Common,
    ctl: Arc<Control>,
    opts: EchoOpts,
    payloads: Arc<Payloads>,
    n: usize,
    rate: f64,
    grid: Grid,
) -> Result<WorkerResult, Error> {
    let rx0 = crate::client::rx_frame_bytes();
    let mut pool = Pool::new(&common, ctl.clock, payloads.frames.clone())?;
    let mut w = Worker {
        ctl: ctl.clone(),
        payloads,
        quota: opts.messages.unwrap_or(u64::MAX),
        opts,
        st: Vec::new(),
        res: WorkerResult::default(),
        win_start: UNSET,
        win_end: UNSET,
        send_until: UNSET,
        outstanding: 0,
        done_sending: 0,
        reported: 0,
    };
    let tick = Some(Duration::from_millis(5));

    // Connect.
    let mut started = 0;
    while !ctl.stopped() {
        while started < n && pool.pending < MAX_PENDING {
            started += 1;
            if let Err(f) = pool.start() {
                w.res.connect_failures.add(f.label());
                ctl.count_failure(&f);
            }
        }
        if started == n && pool.pending == 0 {
            break;
        }
        pool.turn(tick, &mut |s, note| w.note(s, note));
    }

    // Wait for go (answering pings meanwhile).
    let go = pool.wait_for_go(&ctl, &mut |s, note| w.note(s, note));
    if go != UNSET {
        w.win_start = ctl.window_start_ns.load(Ordering::Acquire);
        w.win_end = ctl.window_end_ns.load(Ordering::Acquire);
        w.res.intervals = Intervals::new(grid.at(w.win_start));
        // Duration runs stop sending at the window's end; counted runs at the time bound.
        w.send_until = if w.win_end == UNSET {
            go + (w.opts.warmup + w.opts.duration).as_nanos() as u64
        } else {
            w.win_end
        };
        let open: Vec<usize> = (0..pool.conns.len())
            .filter(|&s| {
                pool.conns[s]
                    .as_ref()
                    .is_some_and(|c| c.state == State::Open)
            })
            .collect();
        if w.st.len() < pool.conns.len() {
            w.st.resize_with(pool.conns.len(), EchoConn::default);
        }
        let now = pool.clock.now_ns();
        if w.opts.rate.is_none() {
            // Closed loop: fill every window.
            for &s in &open {
                let e = &mut w.st[s];
                let k = (w.opts.inflight as u64).min(w.quota);
                for _ in 0..k {
                    pool.send(s, w.payloads.index(e.sent));
                    e.pending.push_back((now, now));
                    e.sent += 1;
                    w.res.sent += 1;
                    w.outstanding += 1;
                }
                if e.sent >= w.quota {
                    e.done_sending = true;
                    w.done_sending += 1;
                }
            }
        }
        open_loop_and_drain(&mut pool, &mut w, &open, go, rate);
    }

    // Close.
    w.ctl.drained.fetch_add(1, Ordering::AcqRel);
    pool.close_and_wait(CLOSE_WAIT, &mut |s, note| w.note(s, note));
    w.res.wire_bytes = crate::client::rx_frame_bytes() - rx0;
    Ok(w.res)
}

/// Sends on schedule (open loop) and runs turns until every answer is in or the drain
/// deadline passes.
fn open_loop_and_drain(pool: &mut Pool, w: &mut Worker, open: &[usize], go: u64, rate: f64) {
    let period = if rate > 0.0 { 1e9 / rate } else { 0.0 };
    let mut sent_sched: u64 = 0;
    let mut rr = 0usize;
    let drain_ns = DRAIN.as_nanos() as u64;
    loop {
        let now = pool.clock.now_ns();
        let stop = w.ctl.stopped();
        let mut next_due = UNSET;
        if w.opts.rate.is_some() && !stop && !open.is_empty() {
            // Send everything that is due (after a stall, the backlog leaves at once: its
            // latency still counts from the intended times).
            loop {
                let due = go + (sent_sched as f64 * period) as u64;
                if due >= w.send_until {
                    break;
                }
                if due > now {
                    next_due = due;
                    break;
                }
                // The next connection that may still send.
                let mut tries = 0;
                let slot = loop {
                    let s = open[rr % open.len()];
                    rr += 1;
                    tries += 1;
                    let e = &w.st[s];
                    let live = pool.conns[s]
                        .as_ref()
                        .is_some_and(|c| c.state == State::Open);
                    if live && !e.done_sending {
                        break Some(s);
                    }
                    if tries > open.len() {
                        break None;
                    }
                };
                let Some(s) = slot else {
                    break;
                };
                let e = &mut w.st[s];
                pool.send(s, w.payloads.index(e.sent));
                e.pending.push_back((due, now));
                e.sent += 1;
                if now > due + 1_000_000 {
                    w.res.late_sends += 1;
                }
                if e.sent >= w.quota {
                    e.done_sending = true;
                    w.done_sending += 1;
                }
                w.res.sent += 1;
                w.outstanding += 1;
                sent_sched += 1;
            }
        }
        // Queued sends leave now, not after the poll below.
        pool.flush(&mut |s, note| w.note(s, note));
        let sending_over = now >= w.send_until || w.done_sending >= w.res.opened;
        if stop
            || (sending_over && w.outstanding == 0)
            || now >= w.send_until.saturating_add(drain_ns)
        {
            return;
        }
        let timeout = if next_due != UNSET {
            // Sleep until the next send; spin through the last millisecond (epoll waits in
            // whole milliseconds).
            let wait = next_due.saturating_sub(pool.clock.now_ns());
            Duration::from_nanos(wait.saturating_sub(1_000_000))
        } else {
            Duration::from_millis(5)
        };
        pool.turn(Some(timeout), &mut |s, note| w.note(s, note));
        w.ctl.add_progress(&mut w.reported, w.res.received);
    }
}

/// The echo scenario: connect, go, measure, report.
///
/// # Errors
/// Connections could not be opened (refused, not a WebSocket server, ...), or the report
/// cannot be written. Measured problems (verify failures, failed connections during the
/// run) are in the report; [`Outcome::ok`] says whether there were any.
pub fn run(common: &Common, opts: &EchoOpts) -> Result<super::Outcome, Error> {
    if opts.conns == 0 || opts.inflight == 0 {
        return Err(Error::Usage(
            "--conns and --inflight must be at least 1".into(),
        ));
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(Error::Usage(
            "--rate must be a positive number of messages per second".into(),
        ));
    }
    let threads = common.threads.clamp(1, opts.conns);
    // Counted runs: the intervals cover the time bound; the timeline is cut at the last echo.
    let grid = Grid::new(opts.duration, opts.interval)?;
    crate::sys::check_files(opts.conns)?;
    super::check_sources(common, opts.conns)?;
    let mut rng = Rng::new();
    let mut payloads = Payloads::new(opts.size, opts.text, VARIANTS, &mut rng);
    if common.deflate {
        payloads.compress(&mut rng);
    }
    let payloads = Arc::new(payloads);
    let ctl = Control::new();
    let me = Proc::open(std::process::id()).ok();
    let mut handles = Vec::new();
    for i in 0..threads {
        let n = share(opts.conns, threads, i);
        let rate = opts.rate.map_or(0.0, |r| r * n as f64 / opts.conns as f64);
        let (c, k, o, p) = (common.clone(), ctl.clone(), opts.clone(), payloads.clone());
        handles.push(spawn_worker(common, i, move || {
            run_worker(c, k, o, p, n, rate, grid)
        })?);
    }
    let progress = crate::progress::Progress::new("echoes", common.shard.is_some());
    let connect_deadline = Instant::now()
        + common.handshake_timeout * (1 + opts.conns.div_ceil(MAX_PENDING * threads)) as u32
        + Duration::from_secs(1);
    let t_connect = Instant::now();
    ctl.wait_connected(connect_deadline, opts.conns, &progress);
    let connect_s = t_connect.elapsed().as_secs_f64();
    let failed = ctl.failed.load(Ordering::Acquire);
    if failed > 0 || ctl.resolved() < opts.conns {
        ctl.stop.store(true, Ordering::Release);
        let results = super::join(handles)?;
        let mut f = Failures::default();
        for r in &results {
            f.merge(&r.connect_failures);
        }
        if f.total() == 0 {
            f.add("timeout".into());
        }
        return Err(connect_error(common, &ctl, &f));
    }

    // Go.
    let now = ctl.clock.now_ns();
    let go = now + 1_000_000;
    let win_start = go + opts.warmup.as_nanos() as u64;
    let win_end = match opts.messages {
        Some(_) => UNSET,
        None => win_start + opts.duration.as_nanos() as u64,
    };
    ctl.go(go, win_start, win_end);
    sleep_until(ctl.clock.instant(win_start));
    let window = super::Window::open(common, &me);
    let grid = grid.at(win_start);
    let rss = if win_end == UNSET {
        let bound =
            ctl.clock.instant(go) + opts.warmup + opts.duration + DRAIN + Duration::from_secs(1);
        let drained = || ctl.drained.load(Ordering::Acquire) >= threads;
        let rss = crate::timeline::watch(
            &common.server,
            &ctl,
            &grid,
            &progress,
            UNSET,
            Some(&drained),
        );
        ctl.wait_until(bound, drained);
        rss
    } else {
        crate::timeline::watch(&common.server, &ctl, &grid, &progress, win_end, None)
    };
    let measured = window.close(common, &me);
    progress.clear();
    let (server, client, window_wall) = (measured.server, measured.client, measured.wall_s);
    let results = super::join(handles)?;
    let mut out = report(
        common,
        opts,
        threads,
        connect_s,
        window_wall,
        win_start,
        &results,
        server,
        client,
    );
    out.note_other_load(measured.other);
    let mut intervals = Intervals::new(grid);
    for r in &results {
        intervals.merge(&r.intervals);
    }
    out.json.set("interval_s", grid.interval_ns as f64 / 1e9);
    out.json.set(
        "timeline",
        intervals.timeline(&rss, opts.messages.is_some()),
    );
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn report(
    common: &Common,
    opts: &EchoOpts,
    threads: usize,
    connect_s: f64,
    window_wall: f64,
    win_start: u64,
    results: &[WorkerResult],
    server: Option<Delta>,
    client: Option<Delta>,
) -> super::Outcome {
    let mut lat = Latency::new();
    let mut service = Latency::new();
    let mut run_failures = Failures::default();
    let (mut sent, mut received, mut in_window, mut verify, mut unexpected, mut unanswered) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut opened, mut clean, mut late, mut wire) = (0usize, 0usize, 0u64, 0u64);
    let (mut first, mut last) = (u64::MAX, 0u64);
    for r in results {
        lat.merge(&r.latency);
        service.merge(&r.service);
        run_failures.merge(&r.run_failures);
        sent += r.sent;
        received += r.received;
        in_window += r.in_window;
        verify += r.verify_failures;
        unexpected += r.unexpected;
        unanswered += r.unanswered;
        opened += r.opened;
        clean += r.closed_clean;
        late += r.late_sends;
        wire += r.wire_bytes;
        if r.in_window > 0 {
            first = first.min(r.first_in_window_ns);
            last = last.max(r.last_in_window_ns);
        }
    }
    // Duration runs: the window as timed. Counted runs: from go to the last echo.
    let window_s = if opts.messages.is_some() {
        if last > win_start && first != u64::MAX {
            (last - win_start) as f64 / 1e9
        } else {
            window_wall
        }
    } else {
        opts.duration.as_secs_f64()
    };
    let rate = if window_s > 0.0 {
        in_window as f64 / window_s
    } else {
        0.0
    };
    let cpu_per_msg = server.map(|d| {
        if in_window > 0 {
            d.cpu_us / in_window as f64
        } else {
            f64::NAN
        }
    });
    let cpu_per_msg_clock = server.and_then(|d| {
        d.cpu_us_clock.map(|c| {
            if in_window > 0 {
                c / in_window as f64
            } else {
                f64::NAN
            }
        })
    });
    let client_per_msg = client.map(|d| {
        if in_window > 0 {
            d.cpu_us / in_window as f64
        } else {
            f64::NAN
        }
    });
    let kind = if opts.text { "text" } else { "binary" };
    let mode = match opts.rate {
        Some(r) => format!("open loop at {} msg/s", group(r.round() as u64)),
        None => format!("closed loop, {} in flight per connection", opts.inflight),
    };

    let mut t = Table::default();
    t.row("target", common.target.url.clone());
    t.row(
        "load",
        format!(
            "{} connections, {} B {kind}, {mode}, {threads} thread(s)",
            group(opts.conns as u64),
            group(opts.size as u64)
        ),
    );
    t.row(
        "connected",
        format!("{} in {:.2} s", group(opened as u64), connect_s),
    );
    t.row(
        "window",
        match opts.messages {
            Some(m) => format!("{m} messages per connection ({window_s:.3} s to the last echo)"),
            None => format!(
                "{:.1} s after {:.1} s warm-up",
                window_s,
                opts.warmup.as_secs_f64()
            ),
        },
    );
    t.row(
        "echoes in window",
        format!(
            "{} ({} msg/s)",
            group(in_window),
            group(rate.round() as u64)
        ),
    );
    t.row(
        "sent / received",
        format!("{} / {}", group(sent), group(received)),
    );
    let wire_per = super::wire_row(&mut t, "echo", wire, received, common.deflate);
    t.row("verify failures", group(verify));
    if unexpected > 0 {
        t.row("unexpected messages", group(unexpected));
    }
    t.row("unanswered", group(unanswered));
    t.row("connection failures", run_failures.summary());
    t.row(
        "closed cleanly",
        format!("{} of {}", group(clean as u64), group(opened as u64)),
    );
    let lname = if opts.rate.is_some() {
        "latency, CO-corrected (us)"
    } else {
        "round trip (us)"
    };
    t.row(lname, lat.summary_us());
    if opts.rate.is_some() {
        t.row("service time (us)", service.summary_us());
        t.row("sends late by > 1 ms", group(late));
    }
    super::cpu_rows(
        &mut t,
        "message",
        server,
        cpu_per_msg,
        cpu_per_msg_clock,
        client,
        client_per_msg,
    );
    let mut problems = Vec::new();
    if verify > 0 {
        problems.push(format!("{verify} echoes did not match what was sent"));
    }
    if unexpected > 0 {
        problems.push(format!(
            "{unexpected} messages arrived that were never sent"
        ));
    }
    if run_failures.total() > 0 {
        problems.push(format!(
            "connections failed during the run: {}",
            run_failures.summary()
        ));
    }
    if unanswered > 0 {
        problems.push(format!("{unanswered} messages were never answered"));
    }

    let json = Json::obj()
        .with("scenario", "echo")
        .with("url", common.target.url.clone())
        .with(
            "options",
            Json::obj()
                .with("conns", opts.conns)
                .with("inflight", opts.inflight)
                .with("size", opts.size)
                .with("text", opts.text)
                .with("duration_s", opts.duration.as_secs_f64())
                .with("warmup_s", opts.warmup.as_secs_f64())
                .with("messages", opts.messages)
                .with("rate", opts.rate)
                .with("threads", threads)
                .with(
                    "pin",
                    common.pin.iter().map(|&c| c as u64).collect::<Vec<u64>>(),
                )
                .with("server_pid", common.server.as_ref().map(|p| p.pid())),
        )
        .with("connected", opened)
        .with("connect_s", connect_s)
        .with("window_s", window_s)
        .with("echoes_in_window", in_window)
        .with("msgs_per_s", rate)
        .with("sent", sent)
        .with("received", received)
        .with("deflate", common.deflate)
        .with("wire_bytes", wire)
        .with("wire_bytes_per_message", wire_per)
        .with("verify_failures", verify)
        .with("unexpected", unexpected)
        .with("unanswered", unanswered)
        .with("closed_clean", clean)
        .with("connection_failures", run_failures.to_json())
        .with("late_sends", late)
        .with("latency", lat.to_json())
        .with(
            "latency_kind",
            if opts.rate.is_some() {
                "co_corrected"
            } else {
                "round_trip"
            },
        )
        .with(
            "service_time",
            if opts.rate.is_some() {
                service.to_json()
            } else {
                Json::Null
            },
        )
        .with("server", super::delta_json(server))
        .with("server_cpu_us_per_msg", cpu_per_msg)
        .with("server_cpu_us_per_msg_clock", cpu_per_msg_clock)
        .with("loadgen", super::delta_json(client))
        .with("loadgen_cpu_us_per_msg", client_per_msg)
        .with("problems", problems.clone());
    super::Outcome {
        title: "loadgen echo".into(),
        table: t,
        json,
        problems,
    }
}
