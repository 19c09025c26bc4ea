//! `GET /metrics`: the answer with the counters (their text format is `runtime::stats`),
//! and the small plain HTTP listener that serves it on an address of its own
//! (`Config::metrics_addr`).
//!
//! The listener is one thread answering one request at a time with `Connection: close`:
//! it is meant for a scraper on a private address, not for the public port. A connection
//! holds it for at most `REQUEST_DEADLINE` (the whole request head, from accept; a client
//! that trickles its head is answered 408 and dropped when it runs out) plus
//! `WRITE_DEADLINE` (the whole answer), not for a timeout per read or write call, which a
//! client sending a byte now and then could renew forever. It never touches the workers
//! (it reads their atomics), so scraping costs them nothing.

use super::handle::Handle;
use super::upgrade::HttpResponse;
use crate::proto::handshake::write_http_response;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The content type of the text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `200` answer with every worker's counters.
pub(crate) fn response(handle: &Handle) -> HttpResponse {
    HttpResponse::new(200, CONTENT_TYPE, handle.prometheus())
}

/// The metrics listener thread.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    thread: JoinHandle<()>,
}

/// A request head larger than this is not a scrape.
const MAX_HEAD: usize = 8 * 1024;

/// How long a client has, from accept, to send its whole request head.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// How long the answer has to be written, from its first byte.
const WRITE_DEADLINE: Duration = Duration::from_secs(2);

impl MetricsServer {
    /// Binds `addr` (before the workers start, so the address is taken, or the start fails,
    /// before the WebSocket port accepts anything).
    pub(crate) fn bind(addr: &str) -> io::Result<TcpListener> {
        let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
        })?;
        TcpListener::bind(addr)
    }

    /// Starts the thread answering on `listener`.
    pub(crate) fn start(listener: TcpListener, handle: Handle) -> io::Result<MetricsServer> {
        let addr = listener.local_addr()?;
        let thread = std::thread::Builder::new()
            .name("volley-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if handle.is_shutting_down() {
                        break;
                    }
                    match stream {
                        Ok(s) => {
                            if let Err(e) = serve(s, &handle) {
                                tracing::debug!("metrics request failed: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::debug!("metrics accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })?;
        tracing::info!(%addr, "serving GET /metrics");
        Ok(MetricsServer { addr, thread })
    }

    /// The address it listens on (with the real port when bound to port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread (the server is shutting down): a connection wakes its `accept`.
    pub(crate) fn stop(self) {
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if self.thread.join().is_err() {
            tracing::error!("the metrics thread panicked");
        }
    }
}

/// Answers one request: `GET /metrics` with the counters, anything else 404 (405 for a
/// method other than GET, 408 for a head not complete within `REQUEST_DEADLINE`).
fn serve(mut s: TcpStream, handle: &Handle) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
        let Some(left) = time_left(deadline) else {
            let mut out = Vec::new();
            let r = write_http_response(&mut out, 408, "text/plain", &[], b"request timeout\n");
            debug_assert!(r.is_ok(), "static headers are valid");
            // Nothing was written to it before: the few bytes fit its socket buffer.
            let _ = write_all_by(&mut s, &out, Instant::now() + WRITE_DEADLINE);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not complete within the deadline",
            ));
        };
        // The time left, not a fresh timeout per read: a byte now and then does not renew it.
        s.set_read_timeout(Some(left))?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            break;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    let mut out = Vec::new();
    let r = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let resp = response(handle);
            write_http_response(&mut out, resp.status, &resp.content_type, &[], &resp.body)
        }
        (Some(b"GET"), _) => write_http_response(&mut out, 404, "text/plain", &[], b"not found\n"),
        _ => write_http_response(
            &mut out,
            405,
            "text/plain",
            &[("Allow", "GET")],
            b"method not allowed\n",
        ),
    };
    debug_assert!(r.is_ok(), "static headers are valid");
    write_all_by(&mut s, &out, Instant::now() + WRITE_DEADLINE)
}

/// The time until `deadline`, `None` once it has passed.
fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// A read or write that timed out or was interrupted: the loop checks the deadline again.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// `write_all`, all of it by `deadline` (a client reading a byte now and then does not hold
/// the listener past it).
fn write_all_by(s: &mut TcpStream, mut out: &[u8], deadline: Instant) -> io::Result<()> {
    while !out.is_empty() {
        let left = time_left(deadline).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "answer not written within the deadline",
            )
        })?;
        s.set_write_timeout(Some(left))?;
        match s.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => out = &out[n..],
            Err(e) if retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::handle::Shared;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;
    use std::time::Instant;

    /// A server with no workers: enough for the listener (its counters are empty).
    fn handle() -> Handle {
        Handle {
            shared: Arc::new(Shared {
                workers: Vec::new(),
                local_addr: "127.0.0.1:0".parse().unwrap(),
                shutdown: AtomicBool::new(false),
                open_conns: AtomicUsize::new(0),
                max_keys_per_event: 0,
                deflate: false,
                max_bindings: (0, 0),
                cluster: None,
            }),
        }
    }

    fn start() -> (MetricsServer, Handle) {
        let h = handle();
        let listener = MetricsServer::bind("127.0.0.1:0").unwrap();
        (MetricsServer::start(listener, h.clone()).unwrap(), h)
    }

    /// Reads until EOF (or `limit`), for an answer sent with `Connection: close`.
    fn read_answer(s: &mut TcpStream, limit: Duration) -> String {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn a_scrape_is_answered() {
        let (srv, h) = start();
        let mut s = TcpStream::connect(srv.local_addr()).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let got = read_answer(&mut s, Duration::from_secs(2));
        assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
        assert!(got.contains(CONTENT_TYPE), "{got}");
        h.shared
            .shutdown
            .store(true, std::sync::atomic::Ordering::Release);
        srv.stop();
    }

    /// A client that trickles its request a byte at a time (each read well within any
    /// per-read timeout) loses the listener once `REQUEST_DEADLINE` has passed since it was
    /// accepted, and the scrape queued behind it is answered then (review s12, finding 8).
    #[test]
    fn a_trickling_client_is_cut_at_the_request_deadline() {
        let (srv, h) = start();
        let addr = srv.local_addr();
        let t0 = Instant::now();
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // The scrape connects after the slow client was accepted, and waits behind it.
        let mut scrape = None;
        let mut answer = Vec::new();
        let limit = REQUEST_DEADLINE + Duration::from_millis(1500);
        let head = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
        let mut i = 0;
        let cut = loop {
            assert!(
                t0.elapsed() < limit,
                "the trickling client still holds the listener after {:?}",
                t0.elapsed()
            );
            if slow
                .write_all(&[head.get(i).copied().unwrap_or(b'a')])
                .is_err()
            {
                break t0.elapsed();
            }
            i += 1;
            let mut buf = [0u8; 512];
            // Also the pause between two bytes (the read timeout).
            match slow.read(&mut buf) {
                Ok(0) => break t0.elapsed(),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break t0.elapsed(),
            }
            if scrape.is_none() {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                scrape = Some(s);
            }
        };
        assert!(
            cut >= REQUEST_DEADLINE,
            "cut after {cut:?}, before the deadline"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
            "{answer}"
        );
        let got = read_answer(&mut scrape.unwrap(), Duration::from_secs(1));
        assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
        eprintln!(
            "trickling client cut after {cut:?} ({}), then the scrape was answered",
            if answer.is_empty() {
                "no 408 seen"
            } else {
                "408 seen"
            }
        );
        h.shared
            .shutdown
            .store(true, std::sync::atomic::Ordering::Release);
        srv.stop();
    }
}
