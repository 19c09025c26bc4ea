//! `GET /metrics`: the answer with the counters (their text format is `runtime::stats`),
//! and the small plain HTTP listener that serves it on an address of its own
//! (`Config::metrics_addr`).
//!
//! The listener is one thread answering one request at a time with `Connection: close`,
//! with read and write timeouts: it is meant for a scraper on a private address, not for
//! the public port. It never touches the workers (it reads their atomics), so scraping
//! costs them nothing.

use super::handle::Handle;
use super::upgrade::HttpResponse;
use crate::proto::handshake::write_http_response;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::Duration;

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
/// method other than GET).
fn serve(mut s: TcpStream, handle: &Handle) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
        let n = s.read(&mut buf)?;
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
    s.write_all(&out)?;
    s.flush()
}
