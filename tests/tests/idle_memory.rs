//! Idle connections hold no read buffer: the heap the server keeps per idle connection is
//! measured with a counting global allocator and must stay under 1 KiB.
//!
//! The clients live in this process too, so they are kept allocation-free: a bare
//! `TcpStream` each, the handshake written and read through stack buffers.

mod common;

use common::open_lean;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;
use volley::{Backend, Config, Ctx, Handler, Message, Reject, Request, Server, Upgrade};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone)]
struct Echo;
impl Handler for Echo {
    type State = ();
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _: &mut (), msg: Message<'_>) {
        ctx.send(msg);
    }
}

const N: usize = 5000;

/// The allocation counters are process-wide: the two backends run one after the other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn idle_connections_hold_under_1_kib_of_heap_each(b: Backend) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config::new("127.0.0.1:0").workers(2).backend(b);
    let server = Server::start(cfg, Echo).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    // Warm up: one connection that talks, so one-time allocations (pools, thread-locals,
    // the receive buffers) are made before the baseline.
    {
        let mut s = open_lean(addr);
        s.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']).unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
    }
    let mut clients: Vec<TcpStream> = Vec::with_capacity(N);
    std::thread::sleep(Duration::from_millis(300));
    let before = LIVE.load(Ordering::SeqCst);
    for _ in 0..N {
        clients.push(open_lean(addr));
    }
    // Let the server finish its turn for the last handshakes.
    while handle.stats().connections < N as u64 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = LIVE.load(Ordering::SeqCst);
    let per_conn = (after - before) as f64 / N as f64;
    println!("server heap per idle connection: {per_conn:.0} bytes");
    assert!(
        per_conn < 1024.0,
        "{per_conn:.0} bytes of heap per idle connection"
    );
    assert!(
        per_conn > 16.0,
        "the measurement must see the connections at all ({per_conn:.0})"
    );
    drop(clients);
    server.shutdown();
}

both_backends!(idle_connections_hold_under_1_kib_of_heap_each,);
