//! The mio (epoll) backend: the one mio-specific file.
//!
//! Readiness is edge-triggered. Each socket is registered once for read and write readiness,
//! so a connection whose queue cannot drain costs no `epoll_ctl`: the next writable edge
//! flushes it. A read that fills less than the receive buffer means the socket is drained
//! (a later arrival raises a new edge), so an echoed message costs one `recv` and one
//! `send` (a `sendmsg` when several chunks are queued). A connection whose write queue is over its budget is not read
//! (`Core::wants_read`, read backpressure): no edge comes for what stays in the socket, so
//! the flush that drains the queue schedules the read (`Core::take_resume`).

use crate::handler::Handler;
use crate::runtime::config::Config;
use crate::runtime::core::{AfterFlush, Core};
use crate::runtime::handle::{Handle, Shared};
use crate::runtime::inbox::{Wake, WorkerShared};
use crate::runtime::queue::WriteNow;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Reads per connection per wake-up before yielding to others (fairness).
const MAX_READS: usize = 4;
/// Accepts per wake-up before yielding to connections.
const MAX_ACCEPTS: usize = 256;
/// Iovecs per vectored write.
const MAX_IOV: usize = 64;

struct MioWaker(Waker);

impl Wake for MioWaker {
    fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

/// Binds a listener with `SO_REUSEPORT`, so every worker accepts on the same address.
pub(crate) fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

/// Binds the listeners and starts `n` workers.
pub(crate) fn start<H: Handler>(
    cfg: Config,
    addr: SocketAddr,
    n: usize,
    handler: H,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> io::Result<(Handle, Vec<JoinHandle<()>>)> {
    crate::driver::raise_nofile_limit();
    let (listeners, local_addr) = super::bind_listeners(addr, n, cfg.backlog)?;
    let mut polls = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        workers.push(WorkerShared::new(
            Box::new(MioWaker(waker)),
            cfg.inbox_capacity,
        ));
        polls.push(poll);
    }
    let shared = Arc::new(Shared {
        workers,
        local_addr,
        shutdown: AtomicBool::new(false),
        open_conns: std::sync::atomic::AtomicUsize::new(0),
        max_keys_per_event: cfg.max_keys_per_event,
        deflate: cfg.deflate.is_some(),
        max_bindings: (cfg.max_keys_per_conn, cfg.max_topics_per_conn),
        cluster,
    });
    let parts: Vec<_> = polls.into_iter().zip(listeners).collect();
    super::spawn_workers(
        "w",
        cfg,
        shared,
        handler,
        parts,
        |core, (poll, listener)| Worker::new(core, poll, TcpListener::from_std(listener)),
    )
}

struct Worker<H: Handler> {
    core: Core<H, TcpStream>,
    poll: Poll,
    listener: Option<TcpListener>,
    rbuf: Vec<u8>,
    /// Connections that hit the read bound with data left: read again next turn (with
    /// whether to read to the end).
    pending_reads: Vec<(usize, bool)>,
    accept_pending: bool,
}

impl<H: Handler> super::RunWorker for Worker<H> {
    fn run(self) -> io::Result<()> {
        Worker::run_loop(self)
    }
}

impl<H: Handler> Worker<H> {
    fn new(core: Core<H, TcpStream>, poll: Poll, mut listener: TcpListener) -> io::Result<Self> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let rbuf = vec![0u8; core.config().recv_buffer];
        Ok(Worker {
            core,
            poll,
            listener: Some(listener),
            rbuf,
            pending_reads: Vec::new(),
            accept_pending: false,
        })
    }

    fn run_loop(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut again = Vec::new();
        loop {
            let timeout = if !self.pending_reads.is_empty() {
                Some(std::time::Duration::ZERO)
            } else if self.accept_pending {
                Some(std::time::Duration::from_millis(50))
            } else {
                self.core.poll_timeout()
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.core.update_now();
            std::mem::swap(&mut again, &mut self.pending_reads);
            for (key, to_end) in again.drain(..) {
                self.read(key, to_end);
            }
            if self.accept_pending {
                self.accept();
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {
                        if self.core.drain_inbox() {
                            self.stop_listening();
                        }
                    }
                    Token(key) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // After the peer's FIN no new edge will come: read to the end.
                            self.read(key, ev.is_read_closed() || ev.is_error());
                        }
                        if ev.is_writable() {
                            self.core.want_flush(key);
                        }
                    }
                }
            }
            self.core.run_timers();
            self.flush();
            self.reap();
            if self.core.finished() {
                return Ok(());
            }
        }
    }

    fn stop_listening(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.accept_pending = false;
    }

    fn accept(&mut self) {
        self.accept_pending = false;
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        for _ in 0..MAX_ACCEPTS {
            match listener.accept() {
                Ok((mut stream, _peer)) => {
                    if !self.core.can_accept() {
                        self.core.count_rejected();
                        let _ = stream.write(super::server_full_response());
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let key = self.core.next_key();
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!("registering a connection failed: {e}");
                        continue;
                    }
                    let k = self.core.insert(stream);
                    debug_assert_eq!(k, key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: the pending connection stays in the backlog;
                    // retry shortly instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    self.core
                        .stats()
                        .accept_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.accept_pending = true;
                    return;
                }
            }
        }
        self.accept_pending = true;
    }

    /// Reads what `key` has, then writes what that produced for it at once: the answers
    /// are still in the cache (a 16 KiB echo queued and sent at the end of the turn, after
    /// the other connections' reads, cost the kernel's copy from user memory 5x what an
    /// immediate send does; docs/benchmarks.md, "Issue 14, fourth session"). Output for
    /// other connections (broadcasts) waits for the end of the turn as before.
    fn read(&mut self, key: usize, to_end: bool) {
        self.read_socket(key, to_end);
        if self.core.is_dirty(key) {
            self.core.prepare_flush(key);
            self.flush_one(key);
        }
    }

    /// Reads what `key` has. A short read means the socket is drained (a later arrival raises
    /// a new edge), unless `to_end`: the peer has closed its side, so read until EOF.
    fn read_socket(&mut self, key: usize, to_end: bool) {
        for _ in 0..MAX_READS {
            // Not while the connection's queue is over its budget (read backpressure): with
            // edge-triggered readiness nothing more is reported for it, and
            // `Core::take_resume` schedules the read once the queue has drained.
            if !self.core.wants_read(key) {
                return;
            }
            let Some(io) = self.core.io_mut(key) else {
                return;
            };
            match recv(io, &mut self.rbuf) {
                Ok(0) => return self.core.on_eof(key),
                Ok(n) => {
                    self.core.on_data(key, &mut self.rbuf[..n]);
                    if n < self.rbuf.len() && !to_end {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(conn = key, "read failed: {e}");
                    return self.core.on_error(key);
                }
            }
        }
        self.pending_reads.push((key, to_end));
    }

    fn flush(&mut self) {
        let mut dirty = self.core.take_dirty();
        for key in dirty.drain(..) {
            // Flushed already this turn, right after its read (see `read`), or listed twice.
            if self.core.is_dirty(key) {
                self.flush_one(key);
            }
        }
        self.core.give_dirty(dirty);
    }

    fn flush_one(&mut self, key: usize) {
        let core = &mut self.core;
        let mut failed = false;
        let mut written = 0;
        if let Some(mut conn) = core.wire(key) {
            while !conn.out.is_empty() && !conn.is_dead() {
                // One chunk (the usual case: a turn's frames coalesce) is a plain write, and
                // the iovec array (1 KiB of stores to initialise) is built only for more.
                let res = if let Some(only) = conn.out.single_slice() {
                    send(conn.io, only)
                } else {
                    let mut iov = [IoSlice::new(&[]); MAX_IOV];
                    let n = conn.out.io_slices(&mut iov);
                    send_vectored(conn.io, &iov[..n])
                };
                match res {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(w) => {
                        conn.out.advance(w);
                        written += w;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(conn = key, "write failed: {e}");
                        failed = true;
                        break;
                    }
                }
            }
        }
        core.count_written(written);
        if failed {
            core.on_error(key);
            return;
        }
        if core.after_flush(key) == AfterFlush::ShutdownWrite {
            if let Some(io) = core.io(key) {
                let _ = io.shutdown(Shutdown::Write);
            }
        }
        if core.take_resume(key) {
            self.pending_reads.push((key, true));
        }
    }

    fn reap(&mut self) {
        while let Some(key) = self.core.pop_dead() {
            if let Some(mut io) = self.core.remove(key) {
                let _ = self.poll.registry().deregister(&mut io);
                drop(io);
            }
        }
    }
}

/// Large answers go to the socket at once when nothing is queued before them (one `send`
/// of a frame laid out in one piece, else one `sendmsg` of header and payload; no copy into
/// the write queue).
impl WriteNow for TcpStream {
    fn write_now(&self, parts: &[IoSlice<'_>]) -> Option<usize> {
        loop {
            let res = match parts {
                [one] => send(self, one),
                _ => send_vectored(self, parts),
            };
            match res {
                Ok(n) => return Some(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Would block, or failed: all of it is queued; the flush meets the error.
                Err(_) => return Some(0),
            }
        }
    }
}

/// `recv` as one system call: std's `read` goes through mio, std and libc's `recv`, whose
/// cancellation-point bookkeeping alone is ~60 instructions a read and write pair
/// (callgrind), a tenth of what the rest of an echo costs in user space.
#[cfg(target_os = "linux")]
fn recv(io: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    match rustix::net::recv(io, buf, rustix::net::RecvFlags::empty()) {
        Ok((n, _)) => Ok(n),
        Err(e) => Err(e.into()),
    }
}

/// `send` as one system call (see [`recv`]), with `MSG_NOSIGNAL`: a peer that reset the
/// connection is an error, never a SIGPIPE (which would kill an embedding process that does
/// not ignore it).
#[cfg(target_os = "linux")]
fn send(io: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(
        io,
        buf,
        rustix::net::SendFlags::NOSIGNAL,
    )?)
}

/// `sendmsg` with `MSG_NOSIGNAL` (see [`send`]): std's `write_vectored` is a `writev`, which
/// has no such flag.
#[cfg(target_os = "linux")]
fn send_vectored(io: &TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    let mut control = rustix::net::SendAncillaryBuffer::default();
    Ok(rustix::net::sendmsg(
        io,
        iov,
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )?)
}

/// Elsewhere, std's calls (which set `SO_NOSIGPIPE` where there is no `MSG_NOSIGNAL`).
#[cfg(not(target_os = "linux"))]
fn recv(mut io: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    std::io::Read::read(&mut io, buf)
}

#[cfg(not(target_os = "linux"))]
fn send(mut io: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    io.write(buf)
}

#[cfg(not(target_os = "linux"))]
fn send_vectored(mut io: &TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    io.write_vectored(iov)
}
