//! Scenarios and what they share: the run clock, the controller/worker handshake, and
//! [`Pool`], one worker thread's connections on one mio poller.
//!
//! Thread-per-core shape: `--threads T` workers, each with its own poller and its own share
//! of the connections, optionally pinned (`--pin`); they share nothing but a few atomics in
//! [`Control`]. The main thread only coordinates: it waits for the connections, opens the
//! measured window, reads the server's `/proc` at its edges and collects the results.

pub mod connect;
pub mod echo;
pub mod fanout;
pub mod ramp;
pub mod soak;

use crate::client::{connect as tcp_connect, Conn, Event, Failure, Rng, State};
use crate::error::Error;
use crate::procfs::{Delta, Proc, Sample};
use crate::stats::Failures;
use crate::target::Target;
use mio::{Events, Interest, Poll, Token};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options every scenario takes.
#[derive(Debug, Clone)]
pub struct Common {
    /// The server.
    pub target: Target,
    /// Worker threads.
    pub threads: usize,
    /// CPUs to pin worker `i` to (`pin[i % len]`); empty: no pinning.
    pub pin: Vec<usize>,
    /// Source addresses to spread connections over (empty: the kernel picks).
    pub sources: Vec<std::net::IpAddr>,
    /// Connect plus handshake must finish within this.
    pub handshake_timeout: Duration,
    /// The server process to watch.
    pub server: Option<Arc<Proc>>,
    /// Where to write the JSON report.
    pub json: Option<String>,
    /// Processes to spread the connections over (`--procs`; 1: this one).
    pub procs: usize,
    /// Set in a shard of a `--procs` run: which one.
    pub shard: Option<crate::procs::Shard>,
    /// Explicit source ports over `sources` (when there are sources).
    pub ports: Option<Arc<crate::client::SourcePorts>>,
    /// Where to write the SVG plot of the report.
    pub plot: Option<std::path::PathBuf>,
    /// Offer permessage-deflate (`--deflate`).
    pub deflate: bool,
}

/// A load with a timeline, which `soak` holds and `ramp` steps up: the echo or fanout
/// scenario with its options.
#[derive(Debug, Clone)]
pub enum Load {
    /// `echo`.
    Echo(echo::EchoOpts),
    /// `fanout`.
    Fanout(fanout::FanoutOpts),
}

impl Load {
    /// `echo` or `fanout`.
    pub fn name(&self) -> &'static str {
        match self {
            Load::Echo(_) => "echo",
            Load::Fanout(_) => "fanout",
        }
    }

    /// What the rate counts, per second: `msg/s` or `events/s`.
    pub fn rate_unit(&self) -> &'static str {
        match self {
            Load::Echo(_) => "msg/s",
            Load::Fanout(_) => "events/s",
        }
    }

    /// The same load at `rate` (echo: open loop at `rate` messages per second; fanout:
    /// `rate` events per second).
    pub fn with_rate(&self, rate: f64) -> Load {
        match self {
            Load::Echo(o) => Load::Echo(echo::EchoOpts {
                rate: Some(rate),
                messages: None,
                ..o.clone()
            }),
            Load::Fanout(o) => Load::Fanout(fanout::FanoutOpts { rate, ..o.clone() }),
        }
    }

    /// Runs the scenario once.
    ///
    /// # Errors
    /// What [`echo::run`] or [`fanout::run`] returns.
    pub fn run(&self, common: &Common) -> Result<Outcome, Error> {
        match self {
            Load::Echo(o) => echo::run(common, o),
            Load::Fanout(o) => fanout::run(common, o),
        }
    }
}

/// Nanoseconds on the system's monotonic clock (`CLOCK_MONOTONIC`): one clock for every
/// thread *and every process* of a run, so a publish time written by one `--procs` shard is
/// comparable with a receipt time read by another.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock;

impl Clock {
    /// The clock.
    pub fn new() -> Clock {
        Clock
    }

    /// Nanoseconds on the monotonic clock.
    pub fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into `ts`, which we own; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// The instant at clock time `ns` (now, if that has passed).
    pub fn instant(&self, ns: u64) -> Instant {
        let now = Instant::now();
        now + Duration::from_nanos(ns.saturating_sub(self.now_ns()))
    }
}

/// Not set yet / no end.
pub const UNSET: u64 = u64::MAX;

/// What the main thread and the workers share.
#[derive(Debug)]
pub struct Control {
    /// The run clock.
    pub clock: Clock,
    /// Connections that opened.
    pub opened: AtomicUsize,
    /// Connections that failed before opening.
    pub failed: AtomicUsize,
    /// When load starts (ns); [`UNSET`] until the main thread says go.
    pub go_ns: AtomicU64,
    /// The measured window (ns); set before `go_ns`.
    pub window_start_ns: AtomicU64,
    /// End of the measured window; [`UNSET`] for "until the counts are done".
    pub window_end_ns: AtomicU64,
    /// Workers that finished their load (all answers in, or given up).
    pub drained: AtomicUsize,
    /// Stop now: close the connections and return.
    pub stop: AtomicBool,
    /// The first failure seen, for the error message.
    pub first_failure: Mutex<Option<Failure>>,
    /// Messages (echo) or deliveries (fanout) received so far, for the progress line:
    /// each worker adds what it received once per loop turn ([`Control::add_progress`]).
    pub progress: AtomicU64,
}

impl Control {
    /// A fresh control block.
    pub fn new() -> Arc<Control> {
        Arc::new(Control {
            clock: Clock::new(),
            opened: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            go_ns: AtomicU64::new(UNSET),
            window_start_ns: AtomicU64::new(UNSET),
            window_end_ns: AtomicU64::new(UNSET),
            drained: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            first_failure: Mutex::new(None),
            progress: AtomicU64::new(0),
        })
    }

    /// A worker's running total for the progress line: adds what it received since its
    /// last call (`*reported` up to `received`). Called once per loop turn.
    #[inline]
    pub fn add_progress(&self, reported: &mut u64, received: u64) {
        if received > *reported {
            self.progress
                .fetch_add(received - *reported, Ordering::Relaxed);
            *reported = received;
        }
    }

    /// What [`Control::add_progress`] summed.
    pub fn progress_count(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// [`Control::wait_until`] every connection of `total` opened or failed, showing them
    /// on `progress`; true if they all did.
    pub fn wait_connected(
        &self,
        deadline: Instant,
        total: usize,
        progress: &crate::progress::Progress,
    ) -> bool {
        self.wait_until(deadline, || {
            progress.connecting(
                self.opened.load(Ordering::Acquire),
                self.failed.load(Ordering::Acquire),
                total,
            );
            self.resolved() >= total
        })
    }

    /// Records a connection that failed before opening.
    pub fn count_failure(&self, f: &Failure) {
        self.failed.fetch_add(1, Ordering::AcqRel);
        let mut first = self.first_failure.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(|| f.clone());
    }

    /// Connections resolved (opened or failed).
    pub fn resolved(&self) -> usize {
        self.opened.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire)
    }

    /// Opens the load: the window, then go.
    pub fn go(&self, go_ns: u64, window_start_ns: u64, window_end_ns: u64) {
        self.window_start_ns
            .store(window_start_ns, Ordering::Release);
        self.window_end_ns.store(window_end_ns, Ordering::Release);
        self.go_ns.store(go_ns, Ordering::Release);
    }

    /// Whether the main thread asked to stop.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Waits (polling) until `cond` holds or `deadline` passes; true if it held.
    pub fn wait_until(&self, deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
        loop {
            if cond() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
        }
    }
}

/// What a scenario hands back: a table for people, a JSON report, and the problems it saw
/// (verify failures, failed connections) that make the run exit non-zero.
#[derive(Debug)]
pub struct Outcome {
    /// Heading of the table.
    pub title: String,
    /// The human-readable result.
    pub table: crate::stats::Table,
    /// Every figure, for `--json`.
    pub json: crate::json::Json,
    /// Problems found; empty for a clean run.
    pub problems: Vec<String>,
}

/// Sleeps until `t`.
pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// The error a run reports when connections could not be opened.
pub fn connect_error(common: &Common, ctl: &Control, failures: &Failures) -> Error {
    let url = common.target.url.clone();
    let first = ctl
        .first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let only = failures.0.len() == 1;
    match first {
        Some(Failure::Refused) if only => Error::Refused {
            url,
            addr: common.target.addr.to_string(),
        },
        Some(Failure::Http(status, status_line)) if only => Error::NotWebSocket {
            url,
            status,
            status_line,
        },
        _ => Error::NoConnection {
            url,
            reasons: failures.summary(),
        },
    }
}

/// Reads the server at a window edge (a failed read is reported as missing, not fatal).
pub fn sample(server: &Option<Arc<Proc>>) -> Option<Sample> {
    server.as_ref().and_then(|p| p.sample().ok())
}

/// The server's cost between two readings.
pub fn delta(server: &Option<Arc<Proc>>, a: Option<Sample>, b: Option<Sample>) -> Option<Delta> {
    match (server, a, b) {
        (Some(p), Some(a), Some(b)) => Some(p.delta(&a, &b)),
        _ => None,
    }
}

/// Checks that `conns` connections fit in the source ports: loadgen's own ports over the
/// `--source` addresses, or one address's ephemeral range when the kernel picks.
///
/// # Errors
/// [`Error::TooFewPorts`] with the numbers.
pub fn check_sources(common: &Common, conns: usize) -> Result<(), Error> {
    match &common.ports {
        None => crate::sys::check_ports(conns),
        Some(p) => {
            let per_source = conns.div_ceil(common.sources.len().max(1));
            if per_source > p.per_source() {
                return Err(Error::TooFewPorts {
                    per_source,
                    ports: p.per_source(),
                    range: (u32::from(crate::client::FIRST_PORT), 65_535),
                });
            }
            Ok(())
        }
    }
}

/// Splits `n` into `parts` nearly equal shares.
pub fn share(n: usize, parts: usize, i: usize) -> usize {
    n / parts + usize::from(i < n % parts)
}

/// Starts worker `i`, pinned if asked.
///
/// # Errors
/// The thread cannot be spawned.
pub fn spawn_worker<T: Send + 'static>(
    common: &Common,
    i: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>, Error> {
    let cpu = (!common.pin.is_empty()).then(|| common.pin[i % common.pin.len()]);
    std::thread::Builder::new()
        .name(format!("loadgen-{i}"))
        .spawn(move || {
            if let Some(c) = cpu {
                if !crate::sys::pin_current_thread(c) {
                    eprintln!("loadgen: warning: could not pin thread {i} to CPU {c}");
                }
            }
            f()
        })
        .map_err(|e| Error::Sys(format!("cannot start a worker thread: {e}")))
}

/// What a [`Pool`] tells its scenario about a connection.
#[derive(Debug)]
pub enum Note<'a, 'b> {
    /// An event, with the time its bytes were read (ns); the scenario may queue frames.
    Event(&'a mut Conn, Event<'b>, u64),
    /// The connection ended (once per connection); see its `failure` and `opened_ns`.
    Done(&'a Conn),
}

/// The scenario's handler of [`Note`]s, by slot.
pub type OnNote<'a> = &'a mut dyn FnMut(usize, Note<'_, '_>);

/// One worker's connections on one poller.
#[derive(Debug)]
pub struct Pool {
    poll: Poll,
    events: Events,
    /// Connections by slot (the mio token); `None` once ended and closed.
    pub conns: Vec<Option<Conn>>,
    dirty: Vec<usize>,
    again: Vec<usize>,
    rbuf: Vec<u8>,
    target: Target,
    ports: Option<Arc<crate::client::SourcePorts>>,
    rng: Rng,
    /// The run clock.
    pub clock: Clock,
    timeout_ns: u64,
    /// Pre-encoded frames that [`Conn::queue_frame`] indices refer to.
    frames: Arc<Vec<Vec<u8>>>,
    /// Connections connecting or handshaking.
    pub pending: usize,
    /// Connections open or closing.
    pub live: usize,
    last_timeout_scan: u64,
    /// Offer permessage-deflate on every connection.
    deflate: bool,
}

impl Pool {
    /// A pool for connections to `common.target`.
    ///
    /// # Errors
    /// The poller cannot be created.
    pub fn new(common: &Common, clock: Clock, frames: Arc<Vec<Vec<u8>>>) -> Result<Pool, Error> {
        Ok(Pool {
            poll: Poll::new().map_err(|e| Error::Sys(format!("cannot create a poller: {e}")))?,
            events: Events::with_capacity(1024),
            conns: Vec::new(),
            dirty: Vec::new(),
            again: Vec::new(),
            rbuf: vec![0u8; 256 * 1024],
            target: common.target.clone(),
            ports: common.ports.clone(),
            rng: Rng::new(),
            clock,
            timeout_ns: common.handshake_timeout.as_nanos() as u64,
            frames,
            pending: 0,
            live: 0,
            last_timeout_scan: 0,
            deflate: common.deflate,
        })
    }

    /// Starts a connection; its slot, or why it failed at once.
    pub fn start(&mut self) -> Result<usize, Failure> {
        self.start_at(None)
    }

    /// Starts a connection to `to` (`None`: the pool's target); its slot, or why it failed
    /// at once.
    pub fn start_at(&mut self, to: Option<&Target>) -> Result<usize, Failure> {
        let target = to.unwrap_or(&self.target);
        let (addr, host, path) = (target.addr, target.host_header.clone(), target.path.clone());
        let mut stream = match &self.ports {
            None => tcp_connect(addr, None),
            Some(ports) => {
                // A port taken by another program (or a listener on it) is skipped.
                let mut tries = 0;
                loop {
                    let Some(src) = ports.take() else {
                        return Err(Failure::NoLocalPort);
                    };
                    match tcp_connect(addr, Some(src)) {
                        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 64 => {
                            tries += 1;
                        }
                        r => break r,
                    }
                }
            }
        }
        .map_err(|e| Failure::from_io(&e))?;
        let slot = self.conns.len();
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| Failure::Io(format!("register: {e}")))?;
        let now = self.clock.now_ns();
        let conn = Conn::new(stream, &host, &path, &mut self.rng, now, self.deflate);
        self.conns.push(Some(conn));
        self.pending += 1;
        Ok(slot)
    }

    /// Queues pre-encoded frame `frame` on `slot` for this turn's flush.
    pub fn send(&mut self, slot: usize, frame: usize) {
        if let Some(c) = self.conns[slot].as_mut() {
            if matches!(c.state, State::Open) {
                c.queue_frame(frame);
                if !c.dirty {
                    c.dirty = true;
                    self.dirty.push(slot);
                }
            }
        }
    }

    /// Queues `bytes` (a complete frame for this connection only) on `slot` for this turn's
    /// flush.
    pub fn send_owned(&mut self, slot: usize, bytes: Vec<u8>) {
        if let Some(c) = self.conns[slot].as_mut() {
            if matches!(c.state, State::Open) {
                c.queue_owned(bytes);
                if !c.dirty {
                    c.dirty = true;
                    self.dirty.push(slot);
                }
            }
        }
    }

    /// Starts the close handshake of every open connection (flush with [`Pool::flush`]).
    pub fn close_all(&mut self, code: volley::CloseCode) {
        for (slot, c) in self.conns.iter_mut().enumerate() {
            if let Some(c) = c {
                c.start_close(code);
                if c.has_output() && !c.dirty {
                    c.dirty = true;
                    self.dirty.push(slot);
                }
            }
        }
    }

    /// Drops every connection still there (after the close deadline).
    pub fn abandon_all(&mut self, on: OnNote<'_>) {
        for slot in 0..self.conns.len() {
            if let Some(mut c) = self.conns[slot].take() {
                if c.state == State::Closing {
                    c.state = State::Done;
                } else {
                    c.fail(Failure::Timeout);
                }
                self.finish(slot, c, on);
            }
        }
    }

    /// Waits, answering pings, until the main thread's go time ([`Control::go`]); that
    /// time, or [`UNSET`] when told to stop first.
    pub fn wait_for_go(&mut self, ctl: &Control, on: OnNote<'_>) -> u64 {
        loop {
            let go = ctl.go_ns.load(Ordering::Acquire);
            if ctl.stopped() {
                return UNSET;
            }
            if go != UNSET && self.clock.now_ns() >= go {
                return go;
            }
            self.turn(Some(Duration::from_millis(1)), on);
        }
    }

    /// Closes every connection with 1000, waits up to `wait` for the close handshakes, then
    /// drops what is left.
    pub fn close_and_wait(&mut self, wait: Duration, on: OnNote<'_>) {
        self.close_all(volley::CloseCode::NORMAL);
        self.flush(on);
        let deadline = self.clock.now_ns() + wait.as_nanos() as u64;
        while self.remaining() > 0 && self.clock.now_ns() < deadline {
            self.turn(Some(Duration::from_millis(5)), on);
        }
        self.abandon_all(on);
    }

    /// Connections not ended yet.
    pub fn remaining(&self) -> usize {
        self.pending + self.live
    }

    /// One loop turn: wait up to `timeout` for readiness, read and decode, flush what was
    /// queued, time out slow handshakes.
    pub fn turn(&mut self, timeout: Option<Duration>, on: OnNote<'_>) {
        let timeout = if self.again.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                eprintln!("loadgen: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut again = std::mem::take(&mut self.again);
        for slot in again.drain(..) {
            self.readable(slot, false, on);
        }
        self.again = again;
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            let slot = ev.token().0;
            let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if c.state == State::Connecting {
                if !c.check_connected() {
                    continue;
                }
                if c.state == State::Handshaking {
                    self.mark(slot);
                }
            }
            let hup = ev.is_read_closed() || ev.is_error();
            if ev.is_readable() || hup {
                self.readable(slot, hup, on);
            }
            if ev.is_writable() {
                self.mark(slot);
            }
            self.check_done(slot, on);
        }
        self.events = events;
        self.flush(on);
        let now = self.clock.now_ns();
        if self.pending > 0 && now.saturating_sub(self.last_timeout_scan) > 50_000_000 {
            self.last_timeout_scan = now;
            for slot in 0..self.conns.len() {
                if let Some(c) = self.conns[slot].as_mut() {
                    if matches!(c.state, State::Connecting | State::Handshaking)
                        && now.saturating_sub(c.started_ns) > self.timeout_ns
                    {
                        c.fail(Failure::Timeout);
                        self.check_done(slot, on);
                    }
                }
            }
        }
    }

    fn readable(&mut self, slot: usize, until_eof: bool, on: OnNote<'_>) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let was_pending = c.opened_ns.is_none();
        let more = c.on_readable(&mut self.rbuf, &self.clock, until_eof, &mut |c, ev, t| {
            on(slot, Note::Event(c, ev, t))
        });
        if was_pending && c.opened_ns.is_some() {
            self.pending -= 1;
            self.live += 1;
        }
        if more {
            self.again.push(slot);
        }
        if c.has_output() {
            self.mark(slot);
        }
        self.check_done(slot, on);
    }

    fn mark(&mut self, slot: usize) {
        if let Some(c) = self.conns[slot].as_mut() {
            if !c.dirty && !c.is_done() {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// Writes out every connection with queued output.
    pub fn flush(&mut self, on: OnNote<'_>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for slot in dirty.drain(..) {
            if let Some(c) = self.conns[slot].as_mut() {
                c.dirty = false;
                c.flush(&self.frames);
            }
            self.check_done(slot, on);
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn check_done(&mut self, slot: usize, on: OnNote<'_>) {
        if !self.conns[slot].as_ref().is_some_and(Conn::is_done) {
            return;
        }
        let c = self.conns[slot].take().expect("checked above");
        self.finish(slot, c, on);
    }

    fn finish(&mut self, slot: usize, mut c: Conn, on: OnNote<'_>) {
        if c.opened_ns.is_some() {
            self.live = self.live.saturating_sub(1);
        } else {
            self.pending = self.pending.saturating_sub(1);
        }
        let _ = self.poll.registry().deregister(&mut c.stream);
        on(slot, Note::Done(&c));
    }
}

/// Appends the rows every scenario reports about the server's and loadgen's own CPU and the
/// server's memory: `unit` names what the CPU is divided by ("message", "delivery").
#[allow(clippy::too_many_arguments)]
pub fn cpu_rows(
    t: &mut crate::stats::Table,
    unit: &str,
    server: Option<Delta>,
    cpu_per: Option<f64>,
    cpu_per_clock: Option<f64>,
    client: Option<Delta>,
    client_per: Option<f64>,
) {
    use crate::stats::group;
    match server {
        Some(d) => {
            let kernel = if d.cpu_us > 0.0 {
                d.sys_us / d.cpu_us * 100.0
            } else {
                0.0
            };
            t.row(
                "server CPU",
                format!(
                    "{:.3} s in {:.2} s ({:.0}% of a core, {kernel:.0}% of it in the kernel)",
                    d.cpu_us / 1e6,
                    d.wall_s,
                    d.cpu_share() * 100.0,
                ),
            );
            t.row(
                &format!("server CPU per {unit}"),
                format!(
                    "{:.3} us (CPU clock: {})",
                    cpu_per.unwrap_or(f64::NAN),
                    cpu_per_clock.map_or("-".into(), |c| format!("{c:.3} us"))
                ),
            );
            t.row(
                "server RSS",
                format!(
                    "{} KiB -> {} KiB ({:+} KiB)",
                    group(d.rss_start_kib),
                    group(d.rss_end_kib),
                    d.rss_delta_bytes() / 1024
                ),
            );
        }
        None => t.row("server CPU", "- (give --server-pid PID)"),
    }
    if let Some(c) = client {
        t.row(
            &format!("loadgen CPU per {unit}"),
            format!(
                "{:.3} us ({:.0}% of a core)",
                client_per.unwrap_or(f64::NAN),
                c.cpu_share() * 100.0
            ),
        );
    }
}

/// The edges of a measured window: the server's and loadgen's `/proc` samples and the
/// machine's CPU ticks at its start.
#[derive(Debug)]
pub struct Window {
    server: Option<Sample>,
    client: Option<Sample>,
    machine: Option<(u64, u64)>,
    start: Instant,
}

/// What a window measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// The server's CPU and memory over the window (with `--server-pid`).
    pub server: Option<Delta>,
    /// loadgen's own.
    pub client: Option<Delta>,
    /// Cores used by every other process over the window: a check that the measurement had
    /// the machine to itself.
    pub other: Option<f64>,
    /// The window's wall time in seconds.
    pub wall_s: f64,
}

impl Window {
    /// Samples the start of the window.
    pub fn open(common: &Common, me: &Option<Proc>) -> Window {
        Window {
            server: sample(&common.server),
            client: me.as_ref().and_then(|p| p.sample().ok()),
            machine: crate::procfs::machine_ticks(),
            start: Instant::now(),
        }
    }

    /// Samples the end of the window and computes what it measured.
    pub fn close(self, common: &Common, me: &Option<Proc>) -> Measured {
        let s1 = sample(&common.server);
        let c1 = me.as_ref().and_then(|p| p.sample().ok());
        let m1 = crate::procfs::machine_ticks();
        let wall_s = self.start.elapsed().as_secs_f64();
        let server = delta(&common.server, self.server, s1);
        let client = match (me, self.client, c1) {
            (Some(p), Some(a), Some(b)) => Some(p.delta(&a, &b)),
            _ => None,
        };
        let other = match (self.machine, m1) {
            (Some(a), Some(b)) => {
                let all = crate::procfs::machine_busy_cores(a, b, wall_s);
                let ours = server.map_or(0.0, |d| d.cpu_us / 1e6 / wall_s)
                    + client.map_or(0.0, |d| d.cpu_us / 1e6 / wall_s);
                Some((all - ours).max(0.0))
            }
            _ => None,
        };
        Measured {
            server,
            client,
            other,
            wall_s,
        }
    }
}

impl Outcome {
    /// Adds the "other CPU load" row and JSON field.
    pub fn note_other_load(&mut self, other: Option<f64>) {
        if let Some(o) = other {
            self.table.row(
                "other CPU load",
                format!(
                    "{:.0}% of a core (processes other than server and loadgen)",
                    o * 100.0
                ),
            );
            self.json.set("other_cpu_cores", o);
        }
    }
}

/// Memory readings at one moment: the server's RSS (with `--server-pid`) and the kernel's
/// socket memory; two of them give memory per connection.
#[derive(Debug, Clone, Copy)]
pub struct MemProbe {
    server: Option<Sample>,
    kernel: Option<crate::procfs::KernelMem>,
}

impl MemProbe {
    /// Reads now.
    pub fn take(common: &Common) -> MemProbe {
        MemProbe {
            server: sample(&common.server),
            kernel: crate::procfs::KernelMem::sample(),
        }
    }

    /// Adds the rows and JSON fields of memory per connection from `self` (before the
    /// connections) to `after` (with `conns` of them open): the kernel's, and the server's
    /// RSS too if `server`.
    pub fn report(&self, after: &MemProbe, conns: usize, server: bool, out: &mut Outcome) {
        use crate::stats::group;
        let n = conns.max(1) as f64;
        if let (true, Some(a), Some(b)) = (server, self.server, after.server) {
            let d = b.rss_kib as i64 - a.rss_kib as i64;
            let per = d as f64 * 1024.0 / n;
            out.table.row(
                "server memory per connection",
                format!(
                    "{per:.0} B (RSS {} KiB -> {} KiB with {} open)",
                    group(a.rss_kib),
                    group(b.rss_kib),
                    group(conns as u64)
                ),
            );
            out.json.set("server_rss_before_kib", a.rss_kib);
            out.json.set("server_rss_with_conns_kib", b.rss_kib);
            out.json.set("server_bytes_per_conn", per);
        }
        if let (Some(a), Some(b)) = (self.kernel, after.kernel) {
            let per = b.delta_bytes(&a) as f64 / n;
            out.table.row(
                "kernel memory per connection",
                format!("{per:.0} B (slab + TCP buffers, machine-wide: both ends on loopback)"),
            );
            out.json.set(
                "kernel_slab_delta_kib",
                b.slab_kib as i64 - a.slab_kib as i64,
            );
            out.json.set(
                "kernel_tcp_mem_delta_pages",
                b.tcp_mem_pages as i64 - a.tcp_mem_pages as i64,
            );
            out.json.set("kernel_bytes_per_conn", per);
        }
    }
}

/// Adds loadgen processes' CPU deltas (the shards of a `--procs` run) into one.
pub fn sum_deltas(ds: impl IntoIterator<Item = Delta>) -> Option<Delta> {
    ds.into_iter().reduce(|a, b| Delta {
        wall_s: a.wall_s.max(b.wall_s),
        cpu_us: a.cpu_us + b.cpu_us,
        sys_us: a.sys_us + b.sys_us,
        cpu_us_clock: a.cpu_us_clock.zip(b.cpu_us_clock).map(|(x, y)| x + y),
        rss_start_kib: a.rss_start_kib + b.rss_start_kib,
        rss_end_kib: a.rss_end_kib + b.rss_end_kib,
    })
}

/// A [`Delta`] as JSON (and back, for shard reports).
pub fn delta_json(d: Option<Delta>) -> crate::json::Json {
    use crate::json::Json;
    match d {
        None => Json::Null,
        Some(d) => Json::obj()
            .with("wall_s", d.wall_s)
            .with("cpu_us", d.cpu_us)
            .with("sys_us", d.sys_us)
            .with("cpu_us_clock", d.cpu_us_clock)
            .with("cpu_share", d.cpu_share())
            .with("rss_start_kib", d.rss_start_kib)
            .with("rss_end_kib", d.rss_end_kib)
            .with("rss_delta_bytes", d.rss_delta_bytes()),
    }
}

/// [`delta_json`] read back.
pub fn delta_from_json(v: Option<&serde_json::Value>) -> Option<Delta> {
    let v = v?;
    let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    Some(Delta {
        wall_s: f("wall_s")?,
        cpu_us: f("cpu_us")?,
        sys_us: f("sys_us")?,
        cpu_us_clock: f("cpu_us_clock"),
        rss_start_kib: f("rss_start_kib")? as u64,
        rss_end_kib: f("rss_end_kib")? as u64,
    })
}

/// Joins the worker threads, returning their results or the first error.
pub fn join<T>(handles: Vec<std::thread::JoinHandle<Result<T, Error>>>) -> Result<Vec<T>, Error> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.join() {
            Ok(r) => out.push(r?),
            Err(_) => return Err(Error::Sys("a worker thread panicked".into())),
        }
    }
    Ok(out)
}

/// Adds the row "bytes on the wire per `what`" (`wire` bytes of frames received over
/// `messages`, saying whether permessage-deflate was offered) to `t`; returns the figure.
pub(crate) fn wire_row(
    t: &mut crate::stats::Table,
    what: &str,
    wire: u64,
    messages: u64,
    deflate: bool,
) -> f64 {
    let per = wire as f64 / messages.max(1) as f64;
    let how = if deflate {
        "permessage-deflate offered"
    } else {
        "uncompressed"
    };
    t.row(
        &format!("bytes on the wire per {what}"),
        format!("{per:.1} ({how})"),
    );
    per
}
