//! 1,000 connections that never read plus 100 that do, and a publisher pushing 100 MiB:
//! the server's memory stays within its budgets, the readers get every event in order, the
//! stalled connections are handled by the policy (closed with 1008, or their events dropped).

mod common;

use volley::Backend;

use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use volley::{
    Config, Ctx, Handler, Message, Reject, Request, Server, SlowConsumerPolicy, Target, Upgrade,
};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn note(delta: isize) {
    let now = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        note(-(l.size() as isize));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new as isize - l.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone)]
struct Sub;
impl Handler for Sub {
    type State = ();
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _: &mut ()) {
        ctx.subscribe("feed");
    }
    fn on_message(&mut self, _: &mut Ctx<'_>, _: &mut (), _: Message<'_>) {}
}

const STALLED: usize = 1000;
const READERS: usize = 100;
const READER_THREADS: usize = 4;
const EVENT: usize = 64 * 1024;
const TOTAL: usize = 100 << 20;
const BUDGET: usize = 1 << 20;
/// Events a reader may lag behind the publisher (well inside the budget).
const WINDOW: usize = 4;

/// Reads one binary message of EVENT bytes from a blocking socket; returns its sequence.
fn read_event(s: &mut TcpStream, buf: &mut [u8]) -> u64 {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h, [0x82, 127, 0, 0], "a 64-bit-length binary frame");
    let mut l = [0u8; 6];
    s.read_exact(&mut l).unwrap();
    let len = u64::from_be_bytes([0, 0, l[0], l[1], l[2], l[3], l[4], l[5]]) as usize;
    assert_eq!(len, EVENT);
    s.read_exact(&mut buf[..len]).unwrap();
    u64::from_le_bytes(buf[..8].try_into().unwrap())
}

/// The heap counters are process-wide: the two policies run one after the other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(policy: SlowConsumerPolicy, b: Backend) -> volley::Stats {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // No server pings: the readers never send, and a run slowed past the ping interval by
    // a loaded machine would see a ping where the test expects an event.
    let cfg = Config::new("127.0.0.1:0")
        .workers(2)
        .backend(b)
        .write_budget(BUDGET)
        .slow_consumer(policy)
        // The readers never send: on a loaded machine the run can outlast the ping interval,
        // and a ping would land between the events this test reads frame by frame.
        .ping(None, Duration::from_secs(10))
        .idle_timeout(None);
    let server = Server::start(cfg, Sub).unwrap();
    let addr = server.local_addr();
    let h = server.handle();
    let stalled: Vec<TcpStream> = (0..STALLED).map(|_| open_lean(addr)).collect();
    let readers: Vec<TcpStream> = (0..READERS).map(|_| open_lean(addr)).collect();
    while h.stats().opened < (STALLED + READERS) as u64 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = TOTAL / EVENT;
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..READER_THREADS).map(|_| AtomicUsize::new(0)).collect());
    let mut groups: Vec<Vec<TcpStream>> = (0..READER_THREADS).map(|_| Vec::new()).collect();
    for (i, r) in readers.into_iter().enumerate() {
        groups[i % READER_THREADS].push(r);
    }
    let threads: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(t, mut conns)| {
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; EVENT];
                for k in 0..events {
                    for c in conns.iter_mut() {
                        assert_eq!(read_event(c, &mut buf), k as u64, "events arrive in order");
                    }
                    progress[t].store(k + 1, Ordering::Release);
                }
            })
        })
        .collect();
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let mut payload = vec![b'p'; EVENT];
    let t = Instant::now();
    for k in 0..events {
        while progress
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap()
            + WINDOW
            < k
        {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "readers stopped at {k}"
            );
            std::thread::yield_now();
        }
        payload[..8].copy_from_slice(&(k as u64).to_le_bytes());
        h.publish(Target::Topic("feed"), Message::Binary(&payload));
    }
    for th in threads {
        th.join().unwrap();
    }
    let peak = PEAK.load(Ordering::SeqCst) - base;
    println!(
        "{policy:?}: {} MiB published in {:?}, peak heap growth {} KiB",
        TOTAL >> 20,
        t.elapsed(),
        peak >> 10
    );
    // Unbounded queues would hold up to the whole 100 MiB for the stalled connections.
    assert!(peak < (16 << 20), "peak heap growth {peak} bytes");
    let stats = h.stats();
    drop(stalled);
    server.shutdown();
    stats
}

fn stalled_connections_are_closed_with_1008_and_readers_get_everything(b: Backend) {
    let s = run(SlowConsumerPolicy::Close, b);
    assert_eq!(s.slow_consumer_closes, STALLED as u64, "{s:?}");
    assert_eq!(s.drops, 0);
}

fn stalled_connections_have_their_events_dropped_under_the_drop_policy(b: Backend) {
    let s = run(SlowConsumerPolicy::Drop, b);
    assert_eq!(s.slow_consumer_closes, 0, "{s:?}");
    assert!(s.drops >= STALLED as u64, "{s:?}");
}

both_backends!(
    stalled_connections_are_closed_with_1008_and_readers_get_everything,
    stalled_connections_have_their_events_dropped_under_the_drop_policy,
);
