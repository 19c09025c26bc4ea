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
    CloseCode, Config, Ctx, Handler, Message, Reject, Request, Server, SlowConsumerPolicy, Target,
    Upgrade,
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

/// A chat room that announces every departure to the room, as `examples/chat.rs` does.
#[derive(Clone)]
struct Room;
impl Handler for Room {
    type State = ();
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }
    fn on_open(&mut self, ctx: &mut Ctx<'_>, _: &mut ()) {
        ctx.subscribe("room");
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut (), msg: Message<'_>) {
        ctx.publish(Target::Topic("room"), msg);
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, _: (), _: CloseCode, _: &str) {
        ctx.publish(Target::Topic("room"), Message::Text("* someone left"));
    }
}

/// Members that stopped reading, in a room whose every departure is announced: one event
/// finds the first of them over the budget and closes it, its `on_close` publishes, that
/// publish finds the next one over the budget, and so on. Applied where each arose, the chain
/// nested as deep as the stalled members, and at about 2,500 the worker's stack overflowed
/// and the process aborted. Now the whole chain is closed in one loop, and the server lives.
fn a_chain_of_slow_consumer_closes_does_not_nest(b: Backend) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const MEMBERS: usize = 4000;
    let cfg = Config::new("127.0.0.1:0")
        .workers(1)
        .backend(b)
        .write_budget(256)
        .max_connections(MEMBERS + 100)
        .ping(None, Duration::from_secs(10))
        .idle_timeout(None);
    let server = Server::start(cfg, Room).unwrap();
    let addr = server.local_addr();
    let h = server.handle();
    let members: Vec<TcpStream> = (0..MEMBERS)
        .map(|_| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            // A small receive window: each member is over the budget after a few KiB.
            sock.set_recv_buffer_size(2048).unwrap();
            sock.connect(&addr.into()).unwrap();
            finish_lean_handshake(sock.into())
        })
        .collect();
    while h.stats().opened < MEMBERS as u64 {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Fill every member's socket and then its queue, without a close yet: under the budget
    // each event fits until the kernel's buffers are full.
    let event = vec![b'e'; 1000];
    let t = Instant::now();
    let mut joiner = None;
    loop {
        let closed = h.stats().slow_consumer_closes;
        if closed >= MEMBERS as u64 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{closed} of {MEMBERS} closed"
        );
        // One joins during the burst: its queue may be over the budget before its 101 is
        // out (on io_uring the 101 waits for its send). Then it is dropped, but it never
        // gets a close frame (or anything) in place of its 101.
        if closed > 0 && joiner.is_none() {
            joiner = Some(open_unanswered(addr));
        }
        h.publish(Target::Topic("room"), Message::Binary(&event));
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut joiner = joiner.unwrap_or_else(|| open_unanswered(addr));
    let mut first = [0u8; 12];
    let n = read_up_to(&mut joiner, &mut first);
    assert!(
        n == 0 || first[..n] == b"HTTP/1.1 101"[..n],
        "a 101 or nothing: {:?}",
        &first[..n]
    );
    // Still serving, once the burst is over: a new member joins and hears the room.
    std::thread::sleep(Duration::from_millis(300));
    let mut late = RawClient::connect(addr, "/");
    h.publish(Target::Topic("room"), Message::Text("still here"));
    loop {
        match late.recv() {
            Got::Text(t) if t == "still here" => break,
            Got::Text(_) => {}
            other => panic!("{other:?}"),
        }
    }
    drop(members);
    server.shutdown();
}

/// Reads until `buf` is full or the peer closes; returns the bytes read.
fn read_up_to(s: &mut TcpStream, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

both_backends!(
    a_chain_of_slow_consumer_closes_does_not_nest,
    stalled_connections_are_closed_with_1008_and_readers_get_everything,
    stalled_connections_have_their_events_dropped_under_the_drop_policy,
);
