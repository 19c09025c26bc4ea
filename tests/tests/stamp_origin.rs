//! A process whose first connection stamp came from a simulated clock far ahead of the real
//! one (the public `proto::conn::Conn` takes any `now`): a server started afterwards still
//! fires its timers on time. The stamps' origin is process-wide, so this runs in a test
//! binary of its own.

mod common;

use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use volley::Backend;

fn timers_fire_on_time_after_a_simulated_clock_set_the_stamp_origin_ahead(b: Backend) {
    // The first stamp of the process, an hour ahead (every test of this binary does it
    // first, so whichever runs first sets the origin there).
    let _sim = volley::proto::conn::Conn::<()>::new(Instant::now() + Duration::from_secs(3600));
    let cfg = TestServer::config(b).handshake_timeout(Duration::from_millis(500));
    let srv = TestServer::start(cfg);
    // A client that connects and never sends its request head.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        other => panic!("expected the server to drop the connection, got {other:?}"),
    }
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "dropped at the 500 ms handshake deadline, not {waited:?}"
    );
    assert_eq!(srv.handle().stats().handshake_timeouts, 1);
}

both_backends!(timers_fire_on_time_after_a_simulated_clock_set_the_stamp_origin_ahead);
