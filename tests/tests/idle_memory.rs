//! Idle connections hold no read buffer: the heap the server keeps per idle connection is
//! measured with a counting global allocator and must stay under 1 KiB.
//!
//! The clients live in this process too, so they are kept allocation-free: a bare
//! `TcpStream` each, the handshake written and read through stack buffers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;
use volley::{Config, Ctx, Handler, Message, Reject, Request, Server, Upgrade};

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

fn open(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(req).unwrap();
    let mut buf = [0u8; 512];
    let mut got = 0;
    while !buf[..got].ends_with(b"\r\n\r\n") {
        let n = s.read(&mut buf[got..]).unwrap();
        assert!(n > 0);
        got += n;
    }
    assert!(buf.starts_with(b"HTTP/1.1 101 "));
    s
}

#[test]
fn idle_connections_hold_under_1_kib_of_heap_each() {
    let cfg = Config::new("127.0.0.1:0").workers(2);
    let server = Server::start(cfg, Echo).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    // Warm up: one connection that talks, so one-time allocations (pools, thread-locals,
    // the receive buffers) are made before the baseline.
    {
        let mut s = open(addr);
        s.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']).unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
    }
    let mut clients: Vec<TcpStream> = Vec::with_capacity(N);
    std::thread::sleep(Duration::from_millis(300));
    let before = LIVE.load(Ordering::SeqCst);
    for _ in 0..N {
        clients.push(open(addr));
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
