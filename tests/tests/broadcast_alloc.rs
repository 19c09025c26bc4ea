//! Publishing to N local connections allocates a constant number of times: the frame once,
//! the event once, then only reference-count increments per recipient.

mod common;

use volley::Backend;

use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use volley::{Config, Ctx, Handler, Message, Reject, Request, Server, Target, Upgrade};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone)]
struct Quiet;
impl Handler for Quiet {
    type State = ();
    fn on_upgrade(&mut self, _: &Request<'_>, _: &mut Upgrade) -> Result<(), Reject> {
        Ok(())
    }
    fn on_message(&mut self, _: &mut Ctx<'_>, _: &mut (), _: Message<'_>) {}
}

#[test]
#[ignore]
fn hold_connections() {
    hold_connections_main();
}

/// Publishes one 64-byte event to everyone and returns the allocations it took, from the
/// publish call until every recipient's bytes were written.
fn allocs_for_one_publish(handle: &volley::Handle, n: u64) -> usize {
    allocs_for_publish(handle, n, &[b'e'; 64], 66).0
}

/// Publishes `payload` to everyone and waits until `n` deliveries of at least `frame_len`
/// bytes each were written; returns the allocations from the publish call until then, and
/// the bytes written.
fn allocs_for_publish(
    handle: &volley::Handle,
    n: u64,
    payload: &[u8],
    frame_len: u64,
) -> (usize, u64) {
    let before_deliveries = handle.stats().deliveries;
    let before_bytes = handle.stats().bytes_out;
    let a0 = ALLOCS.load(Ordering::SeqCst);
    handle.publish(Target::All, Message::Binary(payload));
    let t = Instant::now();
    loop {
        // `stats()` itself does not allocate while no protocol close was counted.
        let s = handle.stats();
        // `>=`: the last handshakes' 101 bytes may be counted just after `before_bytes` was
        // read (the worker adds them after its write returns, the client may already have them).
        if s.deliveries >= before_deliveries + n && s.bytes_out >= before_bytes + n * frame_len {
            return (
                ALLOCS.load(Ordering::SeqCst) - a0,
                s.bytes_out - before_bytes,
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "deliveries did not complete: {} of {n} delivered, {} of {} bytes written, {s:?}",
            s.deliveries - before_deliveries,
            s.bytes_out - before_bytes,
            n * frame_len
        );
        std::thread::yield_now();
    }
}

/// The allocation counters are process-wide: the two backends run one after the other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn publishing_to_10000_local_connections_allocates_a_constant_number_of_times(b: Backend) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut counts = Vec::new();
    for n in [100usize, 10_000] {
        let server = Server::start(
            Config::new("127.0.0.1:0")
                .workers(1)
                .backend(b)
                .ping(None, Duration::from_secs(20)),
            Quiet,
        )
        .unwrap();
        let handle = server.handle();
        let mut holder = spawn_holder(server.local_addr(), n);
        while handle.stats().opened < n as u64 {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Warm-up: the worker's scratch and dirty lists grow to N once.
        allocs_for_one_publish(&handle, n as u64);
        let allocs = allocs_for_one_publish(&handle, n as u64);
        println!("{n} recipients: {allocs} allocations");
        counts.push(allocs);
        drop(holder.stdin.take());
        let _ = holder.wait();
        server.shutdown();
    }
    assert_constant(&counts, 4);
}

/// `counts` (allocations of one publish to 100, then 10,000 connections) are equal and at
/// most `max`.
fn assert_constant(counts: &[usize], max: usize) {
    assert!(
        counts[1] <= max,
        "publishing to 10,000 connections took {} allocations",
        counts[1]
    );
    assert_eq!(
        counts[0], counts[1],
        "allocations grow with the recipients: {counts:?}"
    );
}

both_backends!(publishing_to_10000_local_connections_allocates_a_constant_number_of_times,);

/// With permessage-deflate, the event's compressed twin is made once (one deflate call) and
/// shared by every recipient that negotiated it: still a constant number of allocations
/// (the twin's cell and the twin itself on top of the frame, event and inbox item), and
/// every recipient gets the compressed bytes.
fn compressed_publish_deflates_once_and_allocates_a_constant_number_of_times(b: Backend) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A 1 KiB JSON-like event and the size of its compressed frame (level 6, 32 KiB window,
    // as the server's defaults).
    let payload: Vec<u8> = (0..40)
        .flat_map(|i| format!("{{\"id\":{i:04},\"px\":\"10{i:02}.5\"}}").into_bytes())
        .take(1024)
        .collect();
    let mut c = Vec::new();
    volley::proto::deflate::Deflater::new(6).compress(15, &payload, &mut c);
    let frame_len = c.len() as u64 + if c.len() < 126 { 2 } else { 4 };
    let plain_len = payload.len() as u64 + 4;
    assert!(frame_len < plain_len / 2, "{frame_len} vs {plain_len}");
    let mut counts = Vec::new();
    for n in [100usize, 10_000] {
        let server = Server::start(
            Config::new("127.0.0.1:0")
                .workers(1)
                .backend(b)
                .deflate(true)
                .ping(None, Duration::from_secs(20)),
            Quiet,
        )
        .unwrap();
        let handle = server.handle();
        let mut holder = spawn_holder_with(server.local_addr(), n, true);
        while handle.stats().opened < n as u64 {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Deliveries are counted when queued, bytes when written (at the end of the worker's
        // turn): wait (at most 5 s) until one event's compressed frames are all written, so
        // none of the warm-up's is counted in the measured event's bytes. `opened` counts a
        // 101 when it is queued, so the last handshakes' answers may still be written after
        // `before_warmup` is read; they count towards the warm-up's total and would let the
        // wait end one frame early. So the wait also lasts until nothing more is written for
        // 20 ms.
        let written = |from: u64| {
            let t = std::time::Instant::now();
            let mut last = handle.stats().bytes_out;
            loop {
                std::thread::sleep(Duration::from_millis(20));
                let now = handle.stats().bytes_out;
                if (now >= from + n as u64 * frame_len && now == last)
                    || t.elapsed() > Duration::from_secs(5)
                {
                    break;
                }
                last = now;
            }
        };
        let before_warmup = handle.stats().bytes_out;
        allocs_for_publish(&handle, n as u64, &payload, frame_len);
        written(before_warmup);
        let (deflated, bytes) = (handle.stats().messages_deflated, handle.stats().bytes_out);
        let (allocs, _) = allocs_for_publish(&handle, n as u64, &payload, frame_len);
        written(bytes);
        // Anything more than one compressed frame per recipient would show by now.
        std::thread::sleep(Duration::from_millis(100));
        let bytes = handle.stats().bytes_out - bytes;
        let deflated = handle.stats().messages_deflated - deflated;
        println!(
            "{n} deflate recipients: {allocs} allocations, {deflated} deflate calls, \
             {bytes} bytes written ({frame_len} per delivery expected, {plain_len} plain)"
        );
        assert_eq!(deflated, 1, "one deflate call per event");
        assert_eq!(
            bytes,
            n as u64 * frame_len,
            "every recipient gets the compressed twin"
        );
        counts.push(allocs);
        drop(holder.stdin.take());
        let _ = holder.wait();
        server.shutdown();
    }
    assert_constant(&counts, 6);
}

both_backends!(compressed_publish_deflates_once_and_allocates_a_constant_number_of_times,);
