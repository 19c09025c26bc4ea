//! `fanout`: N subscribers that only read, P publishers that send events at a fixed aggregate
//! rate, against a server that relays every event to its subscribers (volley's `broadcast`
//! mode, or any server that does the same).
//!
//! Each event is a binary message whose payload starts with a 24-byte header: the publisher's
//! index (u32 LE), 4 reserved bytes, the event's sequence number for that publisher (u64 LE)
//! and the publish time in nanoseconds on the run clock (u64 LE; every thread shares the
//! clock, so receipt time - publish time is the delivery latency), then filler up to
//! `--size`. Every event is masked with its own key and encoded once per send.
//!
//! Every subscriber checks each publisher's stream: the next sequence number expected, events
//! received, out of order (a sequence number below the next expected: late or duplicated).
//! At the end, expected = the events the publisher sent (every subscriber is connected before
//! the first event leaves), lost = expected - received in order. Messages arriving on the
//! publishers' own connections (a broadcast server relays to the sender too) are counted
//! apart, never as deliveries.
//!
//! Rate: `--rate R` events per second in total, round-robin over the publishers. With
//! `--burst B` the events leave B at a time every B/R seconds (B consecutive publishers send
//! one event each at the same instant), so the server finds several events per loop turn.
//!
//! Timeline: connect everything, then go; a warm-up; the measured window (`--duration`), at
//! whose edges the server's `/proc` is read; publishing stops at the window's end, then the
//! subscribers receive what is still in flight for as long as it keeps arriving (a delivery
//! is lost once nothing came for `DRAIN`, or after the window's length again); then every
//! connection is closed with 1000. Deliveries (and their latency) count in the window by
//! receipt time; server CPU per delivery = server CPU in the window / deliveries in it.

use super::{
    connect_error, share, sleep_until, spawn_worker, Common, Control, MemProbe, Note, Pool, UNSET,
};
use crate::client::{Event, Rng, State};
use crate::error::Error;
use crate::json::Json;
use crate::procfs::{Delta, Proc};
use crate::progress::Progress;
use crate::stats::{group, Failures, Latency, Table};
use crate::timeline::{Grid, Intervals};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use volley::proto::encode::encode_client_frame;
use volley::proto::{Decoded, OpCode};

/// How long subscribers wait for events still in flight after the last publish.
const DRAIN: Duration = Duration::from_secs(3);
/// How long close handshakes are awaited.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Bytes of the event header (publisher, reserved, sequence, publish time).
pub const HEADER: usize = 24;

/// The fan-out scenario's options.
#[derive(Debug, Clone)]
pub struct FanoutOpts {
    /// Subscriber connections (read only).
    pub subscribers: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Events per second, all publishers together.
    pub rate: f64,
    /// Events sent at the same instant.
    pub burst: usize,
    /// Payload bytes (at least [`HEADER`]).
    pub size: usize,
    /// Measured window.
    pub duration: Duration,
    /// Before the window.
    pub warmup: Duration,
    /// Idle time between the last connection opening and the first event (server pings
    /// keep the connections; memory per connection is read at its end).
    pub hold: Duration,
    /// Handshakes in progress at once, all threads (and with `--procs`, all processes)
    /// together: a server's accept queues overflow when clients connect faster than it
    /// accepts.
    pub max_pending: usize,
    /// Length of the timeline's intervals (`None`: [`Grid::new`]'s default).
    pub interval: Option<Duration>,
    /// Servers the subscribers are spread over, round-robin (empty: the target, like the
    /// publishers). With the nodes of a cluster here and the publishers on another node,
    /// latency and completeness are those of cross-node delivery.
    pub sub_targets: Vec<crate::target::Target>,
}

/// What the workers share beyond [`Control`].
#[derive(Debug)]
struct Shared {
    /// Events sent, per publisher (written by the worker that owns the publishers).
    sent: Vec<AtomicU64>,
    /// All events that will ever be sent are counted in `sent`.
    sending_done: AtomicBool,
    /// No publisher in this process (a `--procs` shard): `sent` is the schedule's count,
    /// and sending is done when the window ends.
    no_publishers: bool,
}

/// One subscriber's view of the publishers' streams.
#[derive(Debug, Default, Clone)]
struct Sub {
    /// Next sequence number expected, per publisher (= events received in order).
    next: Vec<u64>,
    /// Events that arrived with a sequence number below the next expected.
    out_of_order: u64,
    /// Opened (counted as a subscriber).
    opened: bool,
}

#[derive(Debug, Default)]
struct WorkerResult {
    latency: Latency,
    /// The same latencies by interval of the window (the timeline).
    intervals: Intervals,
    /// Subscriber receipts in total and in the window.
    received: u64,
    in_window: u64,
    out_of_order: u64,
    /// Subscribers by what they received in order per publisher (for the completeness
    /// check): one entry per distinct count vector, so a clean run of any size is one entry.
    subs: std::collections::BTreeMap<Vec<u64>, u64>,
    /// Messages on publisher connections (the server's relay to the sender).
    publisher_echoes: u64,
    /// Messages that are not events of this run (too short, unknown publisher, text).
    malformed: u64,
    /// Publish times later than the receipt (clock error; should never happen).
    negative: u64,
    opened: usize,
    connect_failures: Failures,
    run_failures: Failures,
    closed_clean: usize,
    /// Publisher side: sends that left more than 1 ms after their due time.
    late_sends: u64,
    /// Bytes of frames received after the handshakes (all messages, on the wire).
    wire_bytes: u64,
}

struct Worker {
    ctl: Arc<Control>,
    opts: FanoutOpts,
    /// Slot -> publisher index, for the slots that are publishers.
    publisher_of: Vec<Option<usize>>,
    subs: Vec<Sub>,
    res: WorkerResult,
    win_start: u64,
    win_end: u64,
    /// Deliveries already added to the progress count.
    reported: u64,
}

impl Worker {
    fn note(&mut self, slot: usize, note: Note<'_, '_>) {
        if self.subs.len() <= slot {
            self.subs.resize_with(slot + 1, Sub::default);
            self.publisher_of.resize(slot + 1, None);
        }
        match note {
            Note::Event(_, Event::Opened, _) => {
                self.res.opened += 1;
                self.ctl.opened.fetch_add(1, Ordering::AcqRel);
                if self.publisher_of[slot].is_none() {
                    let s = &mut self.subs[slot];
                    s.opened = true;
                    s.next = vec![0; self.opts.publishers];
                }
            }
            Note::Event(_, Event::Message(m), t) => self.message(slot, &m, t),
            Note::Done(conn) => match (&conn.failure, conn.opened_ns) {
                (Some(f), None) => {
                    self.res.connect_failures.add(f.label());
                    self.ctl.count_failure(f);
                }
                (Some(f), Some(_)) => self.res.run_failures.add(f.label()),
                (None, _) => self.res.closed_clean += 1,
            },
        }
    }

    fn message(&mut self, slot: usize, m: &Decoded<'_>, t: u64) {
        if self.publisher_of[slot].is_some() {
            self.res.publisher_echoes += 1;
            return;
        }
        let Decoded::Binary(b) = *m else {
            self.res.malformed += 1;
            return;
        };
        if b.len() < HEADER {
            self.res.malformed += 1;
            return;
        }
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let publisher = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
        let (seq, ts) = (word(8), word(16));
        let s = &mut self.subs[slot];
        if publisher >= s.next.len() {
            self.res.malformed += 1;
            return;
        }
        self.res.received += 1;
        let next = &mut s.next[publisher];
        if seq >= *next {
            // A gap (seq > next) stays visible as loss at the end: expected - in order.
            *next = seq + 1;
        } else {
            s.out_of_order += 1;
            self.res.out_of_order += 1;
        }
        if t >= self.win_start && t < self.win_end {
            self.res.in_window += 1;
            if ts > t {
                self.res.negative += 1;
            }
            let lat = t.saturating_sub(ts);
            self.res.latency.record(lat);
            self.res.intervals.record(t, lat);
        }
    }

    /// Events received in order by this worker's open subscribers, all publishers.
    fn received_in_order(&self) -> u64 {
        self.subs
            .iter()
            .filter(|s| s.opened)
            .map(|s| s.next.iter().sum::<u64>())
            .sum()
    }
}

/// One event's frame: header, filler, masked with a fresh key.
fn event_frame(publisher: usize, seq: u64, ts: u64, size: usize, rng: &mut Rng) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0..4].copy_from_slice(&(publisher as u32).to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    p[16..24].copy_from_slice(&ts.to_le_bytes());
    // JSON-like filler, as real events: compressible as they are, not as a byte pattern.
    crate::client::json_like(&mut p[HEADER..], seq);
    let mut key = [0u8; 4];
    rng.fill(&mut key);
    let mut f = Vec::with_capacity(size + 14);
    encode_client_frame(OpCode::Binary, true, &p, key, &mut f);
    f
}

/// One worker's part: its subscribers, whether it has the publishers, and how many
/// handshakes it keeps in progress.
#[derive(Debug, Clone, Copy)]
struct Part {
    subs: usize,
    publishers: bool,
    max_pending: usize,
}

fn run_worker(
    common: Common,
    ctl: Arc<Control>,
    shared: Arc<Shared>,
    opts: FanoutOpts,
    part: Part,
    grid: Grid,
) -> Result<WorkerResult, Error> {
    let rx0 = crate::client::rx_frame_bytes();
    let Part {
        subs: n_subs,
        publishers,
        max_pending,
    } = part;
    let mut pool = Pool::new(&common, ctl.clock, Arc::new(Vec::new()))?;
    let n_pubs = if publishers { opts.publishers } else { 0 };
    let mut w = Worker {
        ctl: ctl.clone(),
        opts,
        publisher_of: Vec::new(),
        subs: Vec::new(),
        res: WorkerResult::default(),
        win_start: UNSET,
        win_end: UNSET,
        reported: 0,
    };
    let tick = Some(Duration::from_millis(5));
    let mut rng = Rng::new();

    // Connect: subscribers first, then the publishers.
    let total = n_subs + n_pubs;
    let mut started = 0;
    let mut pub_slots: Vec<Option<usize>> = vec![None; n_pubs];
    while !ctl.stopped() {
        while started < total && pool.pending < max_pending {
            let p = started.checked_sub(n_subs);
            started += 1;
            let to = match (p, w.opts.sub_targets.len()) {
                (None, n) if n > 0 => Some(&w.opts.sub_targets[(started - 1) % n]),
                _ => None,
            };
            match pool.start_at(to) {
                Ok(slot) => {
                    if w.publisher_of.len() <= slot {
                        w.publisher_of.resize(slot + 1, None);
                        w.subs.resize_with(slot + 1, Sub::default);
                    }
                    w.publisher_of[slot] = p;
                    if let Some(p) = p {
                        pub_slots[p] = Some(slot);
                    }
                }
                Err(f) => {
                    w.res.connect_failures.add(f.label());
                    ctl.count_failure(&f);
                }
            }
        }
        if started == total && pool.pending == 0 {
            break;
        }
        pool.turn(tick, &mut |s, note| w.note(s, note));
    }

    // Wait for go.
    let go = pool.wait_for_go(&ctl, &mut |s, note| w.note(s, note));
    if go != UNSET {
        w.win_start = ctl.window_start_ns.load(Ordering::Acquire);
        w.win_end = ctl.window_end_ns.load(Ordering::Acquire);
        w.res.intervals = Intervals::new(grid.at(w.win_start));
        let send_until = w.win_end;
        let burst = w.opts.burst.max(1);
        let period = 1e9 * burst as f64 / w.opts.rate;
        let mut bursts: u64 = 0;
        let mut rr = 0usize;
        let mut seqs = vec![0u64; n_pubs];
        let drain_ns = DRAIN.as_nanos() as u64;
        let window_ns = w.win_end.saturating_sub(w.win_start);
        let (mut last_received, mut last_progress) = (0, 0);
        let mut done_at = UNSET;
        loop {
            let now = pool.clock.now_ns();
            let stop = ctl.stopped();
            let mut next_due = UNSET;
            if n_pubs > 0 && done_at == UNSET {
                loop {
                    let due = go + (bursts as f64 * period) as u64;
                    if due >= send_until || stop {
                        // Everything that will be sent is counted.
                        shared.sending_done.store(true, Ordering::Release);
                        done_at = now;
                        break;
                    }
                    if due > now {
                        next_due = due;
                        break;
                    }
                    if now > due + 1_000_000 {
                        w.res.late_sends += 1;
                    }
                    for _ in 0..burst {
                        let p = rr % n_pubs;
                        rr += 1;
                        let Some(slot) = pub_slots[p] else { continue };
                        let open = pool.conns[slot]
                            .as_ref()
                            .is_some_and(|c| c.state == State::Open);
                        if !open {
                            continue;
                        }
                        let ts = pool.clock.now_ns();
                        let f = event_frame(p, seqs[p], ts, w.opts.size, &mut rng);
                        pool.send_owned(slot, f);
                        seqs[p] += 1;
                        shared.sent[p].store(seqs[p], Ordering::Release);
                    }
                    bursts += 1;
                }
            }
            pool.flush(&mut |s, note| w.note(s, note));
            if shared.no_publishers && now >= send_until {
                shared.sending_done.store(true, Ordering::Release);
            }
            let sending_done = shared.sending_done.load(Ordering::Acquire);
            if stop {
                break;
            }
            if sending_done {
                if done_at == UNSET {
                    done_at = now;
                }
                let sent: u64 = shared.sent.iter().map(|s| s.load(Ordering::Acquire)).sum();
                let want = sent * w.subs.iter().filter(|s| s.opened).count() as u64;
                // Never give up on deliveries before the window ends: the publishing process
                // is done sending at its last publish, long before a broadcast to a million
                // subscribers has reached them all (it stopped reading 3 s after the publish
                // and lost its own share of the deliveries, issue 13). After the window, wait
                // while deliveries still arrive: a delivery is lost only when nothing more
                // came for `DRAIN`, or the window's length again has passed (a late one is
                // counted, in `received` but not `deliveries_in_window`).
                let received = w.received_in_order();
                if received >= want {
                    break;
                }
                let end = done_at.max(w.win_end);
                if received != last_received {
                    last_received = received;
                    last_progress = now;
                }
                let quiet = now >= end.max(last_progress).saturating_add(drain_ns);
                if quiet || now >= end.saturating_add(drain_ns.max(window_ns)) {
                    break;
                }
            }
            let timeout = if next_due != UNSET {
                let wait = next_due.saturating_sub(pool.clock.now_ns());
                Duration::from_nanos(wait.saturating_sub(1_000_000))
            } else {
                Duration::from_millis(5)
            };
            pool.turn(Some(timeout), &mut |s, note| w.note(s, note));
            ctl.add_progress(&mut w.reported, w.res.received);
        }
    }

    // Close.
    ctl.drained.fetch_add(1, Ordering::AcqRel);
    pool.close_and_wait(CLOSE_WAIT, &mut |s, note| w.note(s, note));
    for s in w.subs.iter().filter(|s| s.opened) {
        *w.res.subs.entry(s.next.clone()).or_default() += 1;
    }
    w.res.wire_bytes = crate::client::rx_frame_bytes() - rx0;
    Ok(w.res)
}

fn validate(opts: &FanoutOpts) -> Result<(), Error> {
    if opts.subscribers == 0 || opts.publishers == 0 {
        return Err(Error::Usage(
            "--subscribers and --publishers must be at least 1".into(),
        ));
    }
    if !(opts.rate > 0.0 && opts.rate.is_finite()) {
        return Err(Error::Usage(
            "--rate must be a positive number of events per second".into(),
        ));
    }
    if opts.size < HEADER {
        return Err(Error::Usage(format!(
            "--size must be at least {HEADER} bytes (the event header: publisher, sequence number, publish time)"
        )));
    }
    if opts.burst == 0 {
        return Err(Error::Usage("--burst must be at least 1".into()));
    }
    if opts.duration.is_zero() {
        return Err(Error::Usage("--duration must be more than 0".into()));
    }
    Ok(())
}

/// The events each publisher sends between `go` and `send_until` (the publishing loop's
/// schedule, replayed): what a shard without publishers expects.
fn expected_sent(opts: &FanoutOpts, go: u64, send_until: u64) -> Vec<u64> {
    let burst = opts.burst.max(1);
    let period = 1e9 * burst as f64 / opts.rate;
    let mut sent = vec![0u64; opts.publishers];
    let mut rr = 0usize;
    let mut k: u64 = 0;
    while go + ((k as f64 * period) as u64) < send_until {
        for _ in 0..burst {
            sent[rr % opts.publishers] += 1;
            rr += 1;
        }
        k += 1;
    }
    sent
}

/// This process's connections: its workers and what they share.
struct Local {
    ctl: Arc<Control>,
    grid: Grid,
    shared: Arc<Shared>,
    handles: Vec<std::thread::JoinHandle<Result<WorkerResult, Error>>>,
    conns: usize,
    threads: usize,
    max_pending: usize,
}

impl Local {
    /// Starts workers for `n_subs` subscribers (and the publishers, if `with_publishers`).
    fn start(
        common: &Common,
        opts: &FanoutOpts,
        n_subs: usize,
        with_publishers: bool,
        max_pending: usize,
    ) -> Result<Local, Error> {
        let conns = n_subs + if with_publishers { opts.publishers } else { 0 };
        let threads = common.threads.clamp(1, n_subs.max(1));
        let grid = Grid::new(opts.duration, opts.interval)?;
        crate::sys::check_files(conns)?;
        super::check_sources(common, conns)?;
        let ctl = Control::new();
        let shared = Arc::new(Shared {
            sent: (0..opts.publishers).map(|_| AtomicU64::new(0)).collect(),
            sending_done: AtomicBool::new(false),
            no_publishers: !with_publishers,
        });
        let mut handles = Vec::new();
        for i in 0..threads {
            let n = share(n_subs, threads, i);
            let (c, k, s, o) = (common.clone(), ctl.clone(), shared.clone(), opts.clone());
            let pubs = with_publishers && i == 0;
            let mp = share(max_pending, threads, i).max(1);
            handles.push(spawn_worker(common, i, move || {
                let part = Part {
                    subs: n,
                    publishers: pubs,
                    max_pending: mp,
                };
                run_worker(c, k, s, o, part, grid)
            })?);
        }
        Ok(Local {
            ctl,
            grid,
            shared,
            handles,
            conns,
            threads,
            max_pending: max_pending.max(1),
        })
    }

    /// Waits until every connection opened or failed (or the deadline); the seconds it took
    /// and whether all opened.
    fn wait_connected(&self, common: &Common, progress: &Progress) -> (f64, bool) {
        let t = Instant::now();
        let deadline = t
            + common.handshake_timeout * (1 + self.conns.div_ceil(self.max_pending)) as u32
            + Duration::from_secs(1);
        let ctl = &self.ctl;
        ctl.wait_connected(deadline, self.conns, progress);
        let ok = ctl.failed.load(Ordering::Acquire) == 0 && ctl.resolved() >= self.conns;
        (t.elapsed().as_secs_f64(), ok)
    }

    /// Stops the workers and returns why the connections could not all be opened.
    fn abort(self, common: &Common) -> Error {
        self.ctl.stop.store(true, Ordering::Release);
        let ctl = self.ctl.clone();
        let f = match super::join(self.handles) {
            Ok(results) => merge(self.grid, results).connect_failures,
            Err(e) => return e,
        };
        let mut f = f;
        if f.total() == 0 {
            f.add("timeout".into());
        }
        connect_error(common, &ctl, &f)
    }

    /// Starts the load; a process without publishers learns what will be sent from the
    /// schedule.
    fn go(&self, opts: &FanoutOpts, go: u64, win_start: u64, win_end: u64) {
        if self.shared.no_publishers {
            for (a, n) in self
                .shared
                .sent
                .iter()
                .zip(expected_sent(opts, go, win_end))
            {
                a.store(n, Ordering::Release);
            }
        }
        self.ctl.go(go, win_start, win_end);
    }

    /// Joins the workers: their results merged, and the events sent per publisher.
    fn join(self) -> Result<(WorkerResult, Vec<u64>), Error> {
        let results = super::join(self.handles)?;
        let sent = self
            .shared
            .sent
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .collect();
        Ok((merge(self.grid, results), sent))
    }
}

/// Sums workers' (or shards') results.
fn merge(grid: Grid, results: Vec<WorkerResult>) -> WorkerResult {
    let mut m = WorkerResult {
        intervals: Intervals::new(grid),
        ..WorkerResult::default()
    };
    for r in results {
        m.latency.merge(&r.latency);
        m.intervals.merge(&r.intervals);
        m.received += r.received;
        m.in_window += r.in_window;
        m.out_of_order += r.out_of_order;
        for (k, n) in r.subs {
            *m.subs.entry(k).or_default() += n;
        }
        m.publisher_echoes += r.publisher_echoes;
        m.malformed += r.malformed;
        m.negative += r.negative;
        m.opened += r.opened;
        m.connect_failures.merge(&r.connect_failures);
        m.run_failures.merge(&r.run_failures);
        m.closed_clean += r.closed_clean;
        m.late_sends += r.late_sends;
        m.wire_bytes += r.wire_bytes;
    }
    m
}

/// A shard's report to its parent: its raw results.
fn shard_json(r: &WorkerResult, sent: &[u64], publishers: bool, client: Option<Delta>) -> Json {
    let subs: Vec<Json> = r
        .subs
        .iter()
        .map(|(k, n)| {
            Json::A(vec![
                Json::A(k.iter().map(|&x| x.into()).collect()),
                (*n).into(),
            ])
        })
        .collect();
    Json::obj()
        .with("latency", r.latency.to_json())
        .with("intervals", r.intervals.to_json())
        .with("received", r.received)
        .with("in_window", r.in_window)
        .with("out_of_order", r.out_of_order)
        .with("subs", Json::A(subs))
        .with("publisher_echoes", r.publisher_echoes)
        .with("wire_bytes", r.wire_bytes)
        .with("malformed", r.malformed)
        .with("negative", r.negative)
        .with("opened", r.opened)
        .with("connect_failures", r.connect_failures.to_json())
        .with("run_failures", r.run_failures.to_json())
        .with("closed_clean", r.closed_clean)
        .with("late_sends", r.late_sends)
        .with("publishers_here", publishers)
        .with("sent", sent.to_vec())
        .with("loadgen", super::delta_json(client))
}

/// [`shard_json`] read back (its intervals laid on `grid`): the results, the events sent
/// (when the shard had the publishers) and the shard's own CPU.
fn from_shard_json(
    v: &serde_json::Value,
    grid: Grid,
) -> (WorkerResult, Option<Vec<u64>>, Option<Delta>) {
    use crate::procs::u;
    let mut subs = std::collections::BTreeMap::new();
    for e in v
        .get("subs")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        let k: Vec<u64> = e
            .get(0)
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let n = e.get(1).and_then(serde_json::Value::as_u64).unwrap_or(0);
        *subs.entry(k).or_default() += n;
    }
    let mut intervals = Intervals::new(grid);
    if let Some(i) = v.get("intervals") {
        intervals.add_json(i);
    }
    let r = WorkerResult {
        latency: v.get("latency").map(Latency::from_json).unwrap_or_default(),
        intervals,
        received: u(v, "received"),
        in_window: u(v, "in_window"),
        out_of_order: u(v, "out_of_order"),
        subs,
        publisher_echoes: u(v, "publisher_echoes"),
        wire_bytes: u(v, "wire_bytes"),
        malformed: u(v, "malformed"),
        negative: u(v, "negative"),
        opened: u(v, "opened") as usize,
        connect_failures: Failures::from_json(v.get("connect_failures")),
        run_failures: Failures::from_json(v.get("run_failures")),
        closed_clean: u(v, "closed_clean") as usize,
        late_sends: u(v, "late_sends"),
    };
    let sent = (v.get("publishers_here") == Some(&serde_json::Value::Bool(true))).then(|| {
        v.get("sent")
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default()
    });
    (r, sent, super::delta_from_json(v.get("loadgen")))
}

/// When the load starts and its window opens and closes, from now.
fn schedule(ctl: &Control, opts: &FanoutOpts, lead: Duration) -> (u64, u64, u64) {
    let go = ctl.clock.now_ns() + lead.as_nanos() as u64;
    let win_start = go + opts.warmup.as_nanos() as u64;
    (go, win_start, win_start + opts.duration.as_nanos() as u64)
}

/// The fan-out scenario: connect, hold, go, measure, report. With `--procs N` the
/// connections are spread over N shard processes ([`crate::procs`]); in a shard, this
/// process's part.
///
/// # Errors
/// Bad options, connections that could not be opened, or a worker that could not start.
pub fn run(common: &Common, opts: &FanoutOpts) -> Result<super::Outcome, Error> {
    validate(opts)?;
    if let Some(shard) = common.shard {
        return run_shard(common, opts, shard);
    }
    if common.procs > 1 {
        return run_procs(common, opts);
    }
    let me = Proc::open(std::process::id()).ok();
    let mem0 = MemProbe::take(common);
    let local = Local::start(common, opts, opts.subscribers, true, opts.max_pending)?;
    let progress = Progress::new("deliveries", false);
    let (connect_s, ok) = local.wait_connected(common, &progress);
    if !ok {
        return Err(local.abort(common));
    }
    let opened = local.ctl.opened.load(Ordering::Acquire);
    sleep_until(Instant::now() + opts.hold);
    let mem1 = MemProbe::take(common);
    let (go, win_start, win_end) = schedule(&local.ctl, opts, Duration::from_millis(1));
    local.go(opts, go, win_start, win_end);
    let clock = local.ctl.clock;
    sleep_until(clock.instant(win_start));
    let window = super::Window::open(common, &me);
    let grid = local.grid.at(win_start);
    let rss = crate::timeline::watch(&common.server, &local.ctl, &grid, &progress, win_end, None);
    let measured = window.close(common, &me);
    progress.clear();
    let threads = local.threads;
    let (result, sent) = local.join()?;
    let mut out = report(
        common,
        opts,
        &format!("{threads} thread(s)"),
        connect_s,
        &sent,
        &result,
        &rss,
        measured.server,
        measured.client,
    );
    mem0.report(&mem1, opened, true, &mut out);
    out.note_other_load(measured.other);
    Ok(out)
}

/// One shard of a `--procs` run: its share of the subscribers (the first shard also has
/// the publishers), the parent's orders, a shard report.
fn run_shard(
    common: &Common,
    opts: &FanoutOpts,
    shard: crate::procs::Shard,
) -> Result<super::Outcome, Error> {
    use crate::procs::{report_connected, wait_order, Order};
    let me = Proc::open(std::process::id()).ok();
    let with_publishers = shard.index == 0;
    let local = Local::start(
        common,
        opts,
        shard.share(opts.subscribers),
        with_publishers,
        shard.share(opts.max_pending),
    )?;
    let _ = local.wait_connected(common, &Progress::hidden());
    report_connected(
        local.ctl.opened.load(Ordering::Acquire),
        local.conns - local.ctl.opened.load(Ordering::Acquire),
    );
    let mut client = None;
    match wait_order() {
        Order::Stop => local.ctl.stop.store(true, Ordering::Release),
        Order::Go {
            go_ns,
            win_start_ns,
            win_end_ns,
        } => {
            local.go(opts, go_ns, win_start_ns, win_end_ns);
            let clock = local.ctl.clock;
            sleep_until(clock.instant(win_start_ns));
            let window = super::Window::open(common, &me);
            sleep_until(clock.instant(win_end_ns));
            client = window.close(common, &me).client;
        }
    }
    let (result, sent) = local.join()?;
    Ok(super::Outcome {
        title: "loadgen fanout shard".into(),
        table: Table::default(),
        json: shard_json(&result, &sent, with_publishers, client),
        problems: Vec::new(),
    })
}

/// The parent of a `--procs` run: starts the shards, orders them, reads the server, merges.
fn run_procs(common: &Common, opts: &FanoutOpts) -> Result<super::Outcome, Error> {
    use crate::procs::{Order, Shards};
    let procs = common.procs;
    let conns = opts.subscribers + opts.publishers;
    let grid = Grid::new(opts.duration, opts.interval)?;
    let per_proc = conns.div_ceil(procs);
    crate::sys::check_files(per_proc)?;
    super::check_sources(common, conns)?;
    let mem0 = MemProbe::take(common);
    let t = Instant::now();
    let mut shards = Shards::spawn(procs, &common.sources)?;
    let deadline =
        t + common.handshake_timeout * (2 + conns.div_ceil(opts.max_pending.max(1))) as u32;
    let (opened, failed) = shards.wait_connected(deadline)?;
    let connect_s = t.elapsed().as_secs_f64();
    let ctl = Control::new();
    if failed > 0 || opened < conns {
        shards.send(Order::Stop);
        let reports = shards.finish(Instant::now() + CLOSE_WAIT + Duration::from_secs(10))?;
        let mut f = Failures::default();
        for v in &reports {
            f.merge(&from_shard_json(v, grid).0.connect_failures);
        }
        if f.total() == 0 {
            f.add("timeout".into());
        }
        return Err(Error::NoConnection {
            url: common.target.url.clone(),
            reasons: format!("{} of {conns} failed: {}", conns - opened, f.summary()),
        });
    }
    sleep_until(Instant::now() + opts.hold);
    let mem1 = MemProbe::take(common);
    // The shards need a moment to read their order.
    let (go, win_start, win_end) = schedule(&ctl, opts, Duration::from_millis(200));
    shards.send(Order::Go {
        go_ns: go,
        win_start_ns: win_start,
        win_end_ns: win_end,
    });
    sleep_until(ctl.clock.instant(win_start));
    let window = super::Window::open(common, &None);
    // The shards' counts are not visible here: no progress line.
    let grid = grid.at(win_start);
    let rss = crate::timeline::watch(
        &common.server,
        &ctl,
        &grid,
        &Progress::hidden(),
        win_end,
        None,
    );
    let measured = window.close(common, &None);
    // Closing tens of thousands of connections per shard takes a while on a busy machine.
    let closing = Duration::from_secs(30 + (conns / 10_000) as u64);
    // A shard keeps reading for up to the window's length again while deliveries arrive.
    let late = opts.duration;
    let reports = shards.finish(Instant::now() + DRAIN + late + CLOSE_WAIT + closing)?;
    let mut results = Vec::new();
    let mut sent = vec![0; opts.publishers];
    let mut clients = Vec::new();
    for v in &reports {
        let (r, s, c) = from_shard_json(v, grid);
        results.push(r);
        if let Some(s) = s {
            sent = s;
        }
        clients.extend(c);
    }
    let result = merge(grid, results);
    let mut out = report(
        common,
        opts,
        &format!("{procs} processes x {} thread(s)", common.threads),
        connect_s,
        &sent,
        &result,
        &rss,
        measured.server,
        super::sum_deltas(clients),
    );
    mem0.report(&mem1, opened, true, &mut out);
    out.json.set("procs", procs);
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn report(
    common: &Common,
    opts: &FanoutOpts,
    placement: &str,
    connect_s: f64,
    sent: &[u64],
    r: &WorkerResult,
    rss: &[Option<u64>],
    server: Option<Delta>,
    client: Option<Delta>,
) -> super::Outcome {
    let lat = &r.latency;
    let run_failures = &r.run_failures;
    let (received, in_window, ooo, echoes, malformed, negative) = (
        r.received,
        r.in_window,
        r.out_of_order,
        r.publisher_echoes,
        r.malformed,
        r.negative,
    );
    let (opened, clean, late) = (r.opened, r.closed_clean, r.late_sends);
    let (mut subscribers, mut incomplete, mut lost) = (0u64, 0u64, 0u64);
    let events: u64 = sent.iter().sum();
    for (s, &n) in &r.subs {
        subscribers += n;
        let mut missing = 0;
        for (p, &got) in s.iter().enumerate() {
            missing += sent.get(p).copied().unwrap_or(0).saturating_sub(got);
        }
        if missing > 0 {
            incomplete += n;
        }
        lost += missing * n;
    }
    let expected = events * subscribers;
    let window_s = opts.duration.as_secs_f64();
    let rate = in_window as f64 / window_s;
    let per_delivery = |x: Option<f64>| {
        x.map(|c| {
            if in_window > 0 {
                c / in_window as f64
            } else {
                f64::NAN
            }
        })
    };
    let cpu_per = per_delivery(server.map(|d| d.cpu_us));
    let cpu_per_clock = per_delivery(server.and_then(|d| d.cpu_us_clock));
    let client_per = per_delivery(client.map(|d| d.cpu_us));

    let mut t = Table::default();
    t.row("target", common.target.url.clone());
    if !opts.sub_targets.is_empty() {
        let urls: Vec<&str> = opts.sub_targets.iter().map(|t| t.url.as_str()).collect();
        t.row("subscribers on", urls.join(" "));
    }
    let burst = if opts.burst > 1 {
        format!(" in bursts of {}", opts.burst)
    } else {
        String::new()
    };
    t.row(
        "load",
        format!(
            "{} subscribers, {} publisher(s), {} events/s{burst}, {} B binary, {placement}",
            group(opts.subscribers as u64),
            opts.publishers,
            opts.rate,
            group(opts.size as u64)
        ),
    );
    t.row(
        "connected",
        format!("{} in {:.2} s", group(opened as u64), connect_s),
    );
    t.row(
        "window",
        format!(
            "{:.1} s after {:.1} s warm-up",
            window_s,
            opts.warmup.as_secs_f64()
        ),
    );
    t.row("events published", group(events));
    t.row(
        "deliveries in window",
        format!(
            "{} ({} deliveries/s)",
            group(in_window),
            group(rate.round() as u64)
        ),
    );
    t.row(
        "expected / received",
        format!("{} / {}", group(expected), group(received)),
    );
    t.row(
        "lost",
        format!(
            "{} ({} of {} subscribers incomplete)",
            group(lost),
            group(incomplete),
            group(subscribers)
        ),
    );
    t.row("out of order", group(ooo));
    if malformed > 0 {
        t.row("not events of this run", group(malformed));
    }
    t.row("publisher echoes (not counted)", group(echoes));
    // Every message received (deliveries and the publishers' own copies) over the bytes
    // their frames took.
    let wire_per = super::wire_row(
        &mut t,
        "delivery",
        r.wire_bytes,
        received + echoes,
        common.deflate,
    );
    t.row("sends late by > 1 ms", group(late));
    t.row("connection failures", run_failures.summary());
    t.row(
        "closed cleanly",
        format!("{} of {}", group(clean as u64), group(opened as u64)),
    );
    t.row("delivery latency (us)", lat.summary_us());
    super::cpu_rows(
        &mut t,
        "delivery",
        server,
        cpu_per,
        cpu_per_clock,
        client,
        client_per,
    );

    let mut problems = Vec::new();
    if lost > 0 {
        problems.push(format!(
            "{lost} deliveries lost ({incomplete} of {subscribers} subscribers incomplete)"
        ));
    }
    if ooo > 0 {
        problems.push(format!("{ooo} events arrived out of order"));
    }
    if malformed > 0 {
        problems.push(format!(
            "{malformed} messages to subscribers were not events of this run"
        ));
    }
    if negative > 0 {
        problems.push(format!(
            "{negative} events arrived before their publish time (clock error)"
        ));
    }
    if run_failures.total() > 0 {
        problems.push(format!(
            "connections failed during the run: {}",
            run_failures.summary()
        ));
    }
    if events == 0 {
        problems.push("no event was published".into());
    }

    let json = Json::obj()
        .with("scenario", "fanout")
        .with("url", common.target.url.clone())
        .with(
            "options",
            Json::obj()
                .with("subscribers", opts.subscribers)
                .with("publishers", opts.publishers)
                .with("rate", opts.rate)
                .with("burst", opts.burst)
                .with("size", opts.size)
                .with("duration_s", opts.duration.as_secs_f64())
                .with("warmup_s", opts.warmup.as_secs_f64())
                .with("hold_s", opts.hold.as_secs_f64())
                .with("threads", common.threads)
                .with("procs", common.procs)
                .with(
                    "pin",
                    common.pin.iter().map(|&c| c as u64).collect::<Vec<u64>>(),
                )
                .with("server_pid", common.server.as_ref().map(|p| p.pid())),
        )
        .with("connected", opened)
        .with("connect_s", connect_s)
        .with("window_s", window_s)
        .with("events_published", events)
        .with("subscribers_open", subscribers)
        .with("expected", expected)
        .with("received", received)
        .with("lost", lost)
        .with("incomplete_subscribers", incomplete)
        .with("out_of_order", ooo)
        .with("malformed", malformed)
        .with("publisher_echoes", echoes)
        .with("deflate", common.deflate)
        .with("wire_bytes", r.wire_bytes)
        .with("wire_bytes_per_delivery", wire_per)
        .with("late_sends", late)
        .with("deliveries_in_window", in_window)
        .with("deliveries_per_s", rate)
        .with("closed_clean", clean)
        .with("connection_failures", run_failures.to_json())
        .with("latency", lat.to_json())
        .with("server", super::delta_json(server))
        .with("server_cpu_us_per_delivery", cpu_per)
        .with("server_cpu_us_per_delivery_clock", cpu_per_clock)
        .with("loadgen", super::delta_json(client))
        .with("loadgen_cpu_us_per_delivery", client_per)
        .with("problems", problems.clone())
        .with("interval_s", r.intervals.grid().interval_ns as f64 / 1e9)
        .with("timeline", r.intervals.timeline(rss, false));
    super::Outcome {
        title: "loadgen fanout".into(),
        table: t,
        json,
        problems,
    }
}
