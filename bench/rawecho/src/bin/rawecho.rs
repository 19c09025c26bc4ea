//! rawecho MODE [PORT] -- single-threaded raw TCP echo server on 127.0.0.1:PORT (default 19080).
//! MODE: epoll | uring | uring-nocopy | uring-single | uring-poll. Bytes in are written back unchanged.
use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let port: u16 = args
        .get(2)
        .map(|p| p.parse().expect("port"))
        .unwrap_or(19080);
    if !matches!(
        mode,
        "epoll" | "uring" | "uring-nocopy" | "uring-single" | "uring-poll"
    ) {
        eprintln!("usage: rawecho epoll|uring|uring-nocopy|uring-single|uring-poll [PORT]");
        std::process::exit(2);
    }
    let lfd = listener(port, mode == "epoll");
    match mode {
        "epoll" => ep::run(lfd),
        "uring" => ur::run(lfd, false),
        "uring-nocopy" => ur::run(lfd, true),
        "uring-single" => us::run(lfd),
        _ => up::run(lfd),
    }
}

fn listener(port: u16, nonblocking: bool) -> RawFd {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // A previous io_uring server's listener can outlive its process briefly (async ring
    // teardown), so retry EADDRINUSE for a few seconds.
    let t0 = std::time::Instant::now();
    while let Err(e) = s.bind(&addr.into()) {
        if e.kind() != io::ErrorKind::AddrInUse || t0.elapsed().as_secs() >= 5 {
            panic!("bind: {e}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    s.listen(1024).expect("listen");
    s.set_nonblocking(nonblocking).unwrap();
    s.into_raw_fd()
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    let p = &one as *const libc::c_int as *const libc::c_void;
    unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, p, 4) };
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Mode 1: epoll, edge-triggered, nonblocking, one shared 256 KiB read buffer.
mod ep {
    use super::{errno, set_nodelay};
    use std::os::fd::RawFd;

    /// Bytes that a short send left over, flushed on EPOLLOUT before reading again.
    struct Conn {
        pending: Vec<u8>,
        off: usize,
    }

    fn ctl(epfd: RawFd, op: i32, fd: RawFd, events: i32) {
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: fd as u64,
        };
        if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
            panic!("epoll_ctl: {}", std::io::Error::last_os_error());
        }
    }

    fn arm(epfd: RawFd, fd: RawFd, out: bool) {
        let ev = libc::EPOLLIN | libc::EPOLLET | if out { libc::EPOLLOUT } else { 0 };
        ctl(epfd, libc::EPOLL_CTL_MOD, fd, ev);
    }

    pub fn run(lfd: RawFd) -> ! {
        eprintln!("rawecho epoll: listening");
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0);
        ctl(
            epfd,
            libc::EPOLL_CTL_ADD,
            lfd,
            libc::EPOLLIN | libc::EPOLLET,
        );
        let mut buf = vec![0u8; 256 * 1024];
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, -1) };
            if n < 0 {
                assert_eq!(errno(), libc::EINTR, "epoll_wait");
                continue;
            }
            for ev in &events[..n as usize] {
                let (fd, flags) = ({ ev.u64 } as RawFd, { ev.events } as i32);
                if fd == lfd {
                    accept_all(epfd, lfd, &mut conns);
                    continue;
                }
                let Some(c) = conns.get_mut(fd as usize).and_then(|c| c.as_mut()) else {
                    continue;
                };
                let mut ok = true;
                if flags & libc::EPOLLOUT != 0 && !c.pending.is_empty() {
                    ok = flush(epfd, fd, c);
                }
                // Only read when nothing is pending (keeps the echo in order). Reading after a
                // completed flush is required with ET: we may have stopped reading early.
                if ok && c.pending.is_empty() {
                    ok = read_echo(epfd, fd, c, &mut buf);
                }
                if !ok {
                    unsafe { libc::close(fd) };
                    conns[fd as usize] = None;
                }
            }
        }
    }

    fn accept_all(epfd: RawFd, lfd: RawFd, conns: &mut Vec<Option<Conn>>) {
        loop {
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            let fd =
                unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
            if fd < 0 {
                match errno() {
                    libc::EAGAIN => return,
                    libc::EINTR | libc::ECONNABORTED => continue,
                    e => {
                        eprintln!("accept4: errno {e}");
                        return;
                    }
                }
            }
            set_nodelay(fd);
            if conns.len() <= fd as usize {
                conns.resize_with(fd as usize + 1, || None);
            }
            conns[fd as usize] = Some(Conn {
                pending: Vec::new(),
                off: 0,
            });
            ctl(epfd, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN | libc::EPOLLET);
        }
    }

    /// recv until EAGAIN or a short read, echoing each chunk straight from `buf`.
    /// Returns false if the connection must be closed.
    fn read_echo(epfd: RawFd, fd: RawFd, c: &mut Conn, buf: &mut [u8]) -> bool {
        loop {
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n == 0 {
                return false;
            }
            if n < 0 {
                match errno() {
                    libc::EAGAIN => return true,
                    libc::EINTR => continue,
                    _ => return false,
                }
            }
            let n = n as usize;
            let s = unsafe { libc::send(fd, buf.as_ptr().cast(), n, libc::MSG_NOSIGNAL) };
            let s = if s >= 0 {
                s as usize
            } else if errno() == libc::EAGAIN {
                0
            } else {
                return false;
            };
            if s < n {
                c.pending.extend_from_slice(&buf[s..n]);
                c.off = 0;
                arm(epfd, fd, true);
                return true; // stop reading until the backlog is flushed
            }
            if n < buf.len() {
                return true; // short read: socket drained, ET will tell us about more
            }
        }
    }

    fn flush(epfd: RawFd, fd: RawFd, c: &mut Conn) -> bool {
        while c.off < c.pending.len() {
            let rest = &c.pending[c.off..];
            let s = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
            if s < 0 {
                return errno() == libc::EAGAIN; // keep EPOLLOUT armed
            }
            c.off += s as usize;
        }
        c.pending.clear();
        c.off = 0;
        arm(epfd, fd, false);
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Modes 2/3: io_uring, multishot accept + multishot recv with a provided buffer ring.
mod ur {
    use super::set_nodelay;
    use io_uring::{cqueue, opcode, squeue, types, IoUring};
    use std::collections::VecDeque;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicU16, Ordering};

    const NBUF: u16 = 64;
    const BUFSZ: usize = 64 * 1024;
    const BGID: u16 = 0;
    const IOU_PBUF_RING_INC: u16 = 2;
    const ACCEPT: u64 = 1;
    const RECV: u64 = 2;
    const SEND: u64 = 3;

    fn tok(kind: u64, idx: usize) -> u64 {
        kind << 32 | idx as u64
    }

    enum Buf {
        Owned(Vec<u8>),                        // uring: copy of the received bytes
        Pbuf { bid: u16, off: u32, len: u32 }, // uring-nocopy: a slice of a provided buffer
    }
    struct Out {
        buf: Buf,
        sent: usize,
    }
    /// One send in flight per connection (a queue keeps the echo in order across short sends).
    struct Conn {
        fd: RawFd,
        recv_armed: bool,
        send_inflight: bool,
        closing: bool,
        q: VecDeque<Out>,
    }

    /// Provided buffer ring. A buffer goes back to the ring when the kernel is done with it
    /// (CQE without BUF_MORE) and no send still points into it.
    struct Pbufs {
        ring: *mut types::BufRingEntry,
        mem: *mut u8,
        tail: u16,
        inc: bool,
        off: [u32; NBUF as usize], // where this buffer's next completion starts
        in_ring: [bool; NBUF as usize], // kernel owns it
        refs: [u32; NBUF as usize], // sends pointing into it (nocopy)
        nin: usize,
    }
    impl Pbufs {
        fn push(&mut self, bid: u16) {
            let e = unsafe { &mut *self.ring.add((self.tail & (NBUF - 1)) as usize) };
            e.set_addr(self.mem as u64 + bid as u64 * BUFSZ as u64);
            e.set_len(BUFSZ as u32);
            e.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let b = bid as usize;
            (self.off[b], self.in_ring[b]) = (0, true);
            self.nin += 1;
        }
        fn publish(&self) {
            let t = unsafe { types::BufRingEntry::tail(self.ring) } as *const AtomicU16;
            unsafe { (*t).store(self.tail, Ordering::Release) };
        }
        fn release(&mut self, bid: u16) {
            if !self.in_ring[bid as usize] && self.refs[bid as usize] == 0 {
                self.push(bid);
            }
        }
        fn ptr(&self, bid: u16, off: u32) -> *const u8 {
            unsafe { self.mem.add(bid as usize * BUFSZ + off as usize) }
        }
    }

    struct Srv {
        ring: IoUring,
        conns: Vec<Conn>,
        free: Vec<usize>,
        pool: Vec<Vec<u8>>,
        pb: Pbufs,
        nocopy: bool,
        starved: Vec<usize>,
    }

    fn mmap(len: usize) -> *mut u8 {
        let (prot, fl) = (
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        );
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                fl | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap");
        p.cast()
    }

    /// Ring setup shared by all io_uring modes.
    pub fn new_ring() -> (IoUring, &'static str) {
        match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(8192)
            .build(1024)
        {
            Ok(r) => (r, "single_issuer+defer_taskrun"),
            Err(_) => (
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_cqsize(8192)
                    .build(1024)
                    .expect("io_uring"),
                "coop_taskrun",
            ),
        }
    }

    /// Push an SQE, submitting first if the SQ is full.
    pub fn push_sqe(ring: &mut IoUring, e: &squeue::Entry) {
        while unsafe { ring.submission().push(e) }.is_err() {
            ring.submit().expect("submit");
        }
    }

    /// submit_and_wait(1), tolerating the transient errors.
    pub fn submit_wait(ring: &mut IoUring) {
        if let Err(e) = ring.submit_and_wait(1) {
            let ok = [libc::EINTR, libc::EBUSY, libc::EAGAIN];
            assert!(
                ok.contains(&e.raw_os_error().unwrap_or(0)),
                "submit_and_wait: {e}"
            );
        }
    }

    pub fn run(lfd: RawFd, nocopy: bool) -> ! {
        let (ring, setup) = new_ring();
        let ring_mem = mmap(4096) as *mut types::BufRingEntry;
        let sub = ring.submitter();
        // RAWECHO_NO_INC=1 forces the non-incremental fallback (for testing it).
        let fl = if std::env::var_os("RAWECHO_NO_INC").is_some() {
            0
        } else {
            IOU_PBUF_RING_INC
        };
        let inc = match unsafe { sub.register_buf_ring_with_flags(ring_mem as u64, NBUF, BGID, fl) }
        {
            Ok(()) if fl == 0 => false,
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                unsafe { sub.register_buf_ring_with_flags(ring_mem as u64, NBUF, BGID, 0) }
                    .expect("register_buf_ring");
                false
            }
            Err(e) => panic!("register_buf_ring: {e}"),
        };
        eprintln!(
            "rawecho {}: setup={setup} pbuf_incremental={inc}",
            if nocopy { "uring-nocopy" } else { "uring" }
        );
        let n = NBUF as usize;
        let pb = Pbufs {
            ring: ring_mem,
            mem: mmap(n * BUFSZ),
            tail: 0,
            inc,
            off: [0; 64],
            in_ring: [false; 64],
            refs: [0; 64],
            nin: 0,
        };
        let mut s = Srv {
            ring,
            conns: Vec::new(),
            free: Vec::new(),
            pool: Vec::new(),
            pb,
            nocopy,
            starved: Vec::new(),
        };
        for bid in 0..NBUF {
            s.pb.push(bid);
        }
        s.sqe(
            opcode::AcceptMulti::new(types::Fd(lfd))
                .build()
                .user_data(tok(ACCEPT, 0)),
        );
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(8192);
        loop {
            s.pb.publish();
            if let Err(e) = s.ring.submit_and_wait(1) {
                let ok = [libc::EINTR, libc::EBUSY, libc::EAGAIN];
                assert!(
                    ok.contains(&e.raw_os_error().unwrap_or(0)),
                    "submit_and_wait: {e}"
                );
            }
            cqes.extend(
                s.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (ud, res, flags) in cqes.drain(..) {
                let idx = (ud & 0xffff_ffff) as usize;
                match ud >> 32 {
                    ACCEPT => s.on_accept(lfd, res, flags),
                    RECV => s.on_recv(idx, res, flags),
                    SEND => s.on_send(idx, res),
                    _ => unreachable!(),
                }
            }
            if !s.starved.is_empty() && s.pb.nin > 0 {
                for idx in std::mem::take(&mut s.starved) {
                    s.arm_recv(idx);
                }
            }
        }
    }

    impl Srv {
        fn sqe(&mut self, e: squeue::Entry) {
            while unsafe { self.ring.submission().push(&e) }.is_err() {
                self.ring.submit().expect("submit");
            }
        }
        fn arm_recv(&mut self, idx: usize) {
            self.conns[idx].recv_armed = true;
            let fd = types::Fd(self.conns[idx].fd);
            self.sqe(
                opcode::RecvMulti::new(fd, BGID)
                    .build()
                    .user_data(tok(RECV, idx)),
            );
        }
        fn submit_send(&mut self, idx: usize) {
            let c = &mut self.conns[idx];
            let o = c.q.front().unwrap();
            let (p, len) = match &o.buf {
                Buf::Owned(v) => (v.as_ptr(), v.len()),
                Buf::Pbuf { bid, off, len } => (self.pb.ptr(*bid, *off), *len as usize),
            };
            c.send_inflight = true;
            let e = opcode::Send::new(
                types::Fd(c.fd),
                unsafe { p.add(o.sent) },
                (len - o.sent) as u32,
            );
            self.sqe(
                e.flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(tok(SEND, idx)),
            );
        }
        fn on_accept(&mut self, lfd: RawFd, res: i32, flags: u32) {
            if res >= 0 {
                set_nodelay(res);
                let c = Conn {
                    fd: res,
                    recv_armed: false,
                    send_inflight: false,
                    closing: false,
                    q: VecDeque::new(),
                };
                let idx = match self.free.pop() {
                    Some(i) => {
                        self.conns[i] = c;
                        i
                    }
                    None => {
                        self.conns.push(c);
                        self.conns.len() - 1
                    }
                };
                self.arm_recv(idx);
            } else {
                eprintln!("accept: errno {}", -res);
            }
            if !cqueue::more(flags) {
                self.sqe(
                    opcode::AcceptMulti::new(types::Fd(lfd))
                        .build()
                        .user_data(tok(ACCEPT, 0)),
                );
            }
        }
        fn on_recv(&mut self, idx: usize, res: i32, flags: u32) {
            let more = cqueue::more(flags);
            if !more {
                self.conns[idx].recv_armed = false;
            }
            let closing = self.conns[idx].closing;
            if let Some(bid) = cqueue::buffer_select(flags) {
                let (b, n) = (bid as usize, res.max(0) as u32);
                let off = self.pb.off[b];
                self.pb.off[b] += n; // incremental: the next completion continues here
                if !self.pb.inc || !cqueue::buffer_more(flags) {
                    self.pb.in_ring[b] = false;
                    self.pb.nin -= 1;
                }
                if n > 0 && !closing {
                    let buf = if self.nocopy {
                        self.pb.refs[b] += 1;
                        Buf::Pbuf { bid, off, len: n }
                    } else {
                        let src = unsafe {
                            std::slice::from_raw_parts(self.pb.ptr(bid, off), n as usize)
                        };
                        let mut v = self.pool.pop().unwrap_or_default();
                        v.clear();
                        v.extend_from_slice(src);
                        Buf::Owned(v)
                    };
                    self.conns[idx].q.push_back(Out { buf, sent: 0 });
                    if !self.conns[idx].send_inflight {
                        self.submit_send(idx);
                    }
                }
                self.pb.release(bid);
            }
            if !more && !closing {
                if res == -libc::ENOBUFS {
                    self.starved.push(idx);
                } else if res > 0 {
                    self.arm_recv(idx);
                } else {
                    self.close(idx); // EOF or error
                }
            }
            self.maybe_free(idx);
        }
        fn on_send(&mut self, idx: usize, res: i32) {
            self.conns[idx].send_inflight = false;
            if res <= 0 || self.conns[idx].closing {
                self.close(idx);
                return self.maybe_free(idx);
            }
            let c = &mut self.conns[idx];
            let o = c.q.front_mut().unwrap();
            o.sent += res as usize;
            let len = match &o.buf {
                Buf::Owned(v) => v.len(),
                Buf::Pbuf { len, .. } => *len as usize,
            };
            if o.sent < len {
                return self.submit_send(idx); // partial send: resubmit the remainder
            }
            let o = c.q.pop_front().unwrap();
            let more = !c.q.is_empty();
            self.recycle(o);
            if more {
                self.submit_send(idx);
            }
        }
        fn recycle(&mut self, o: Out) {
            match o.buf {
                Buf::Owned(v) => self.pool.push(v),
                Buf::Pbuf { bid, .. } => {
                    self.pb.refs[bid as usize] -= 1;
                    self.pb.release(bid);
                }
            }
        }
        /// shutdown() makes a still-armed multishot recv terminate; the fd is closed (and its
        /// slot reused) only when no operation references it any more.
        fn close(&mut self, idx: usize) {
            let c = &mut self.conns[idx];
            if !c.closing {
                c.closing = true;
                unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
            }
        }
        fn maybe_free(&mut self, idx: usize) {
            let c = &mut self.conns[idx];
            if c.closing && !c.recv_armed && !c.send_inflight && c.fd >= 0 {
                unsafe { libc::close(c.fd) };
                c.fd = -1;
                let q = std::mem::take(&mut c.q);
                for o in q {
                    self.recycle(o);
                }
                self.starved.retain(|&i| i != idx);
                self.free.push(idx);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mode 4: uring-single. No provided buffers, no multishot recv: each connection owns a 64 KiB
// buffer and has exactly one operation in flight at any time: recv into the buffer -> send
// exactly those bytes from it (rest resent on short sends) -> re-arm the recv.
mod us {
    use super::{set_nodelay, ur};
    use io_uring::{cqueue, opcode, types, IoUring};
    use std::os::fd::RawFd;

    const BUFSZ: usize = 64 * 1024;
    const ACCEPT: u64 = 1;
    const RECV: u64 = 2;
    const SEND: u64 = 3;

    fn tok(kind: u64, idx: usize) -> u64 {
        kind << 32 | idx as u64
    }

    struct Conn {
        fd: RawFd,
        buf: Vec<u8>, // heap block never moves, even when `conns` reallocates
        len: usize,   // bytes received by the last recv
        sent: usize,  // of those, already sent
    }

    struct Srv {
        ring: IoUring,
        conns: Vec<Conn>,
        free: Vec<usize>,
    }

    pub fn run(lfd: RawFd) -> ! {
        let (ring, setup) = ur::new_ring();
        eprintln!("rawecho uring-single: setup={setup}");
        let mut s = Srv {
            ring,
            conns: Vec::new(),
            free: Vec::new(),
        };
        s.sqe(
            opcode::AcceptMulti::new(types::Fd(lfd))
                .build()
                .user_data(tok(ACCEPT, 0)),
        );
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(8192);
        loop {
            ur::submit_wait(&mut s.ring);
            cqes.extend(
                s.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (ud, res, flags) in cqes.drain(..) {
                let idx = (ud & 0xffff_ffff) as usize;
                match ud >> 32 {
                    ACCEPT => s.on_accept(lfd, res, flags),
                    RECV => s.on_recv(idx, res),
                    SEND => s.on_send(idx, res),
                    _ => unreachable!(),
                }
            }
        }
    }

    impl Srv {
        fn sqe(&mut self, e: io_uring::squeue::Entry) {
            ur::push_sqe(&mut self.ring, &e);
        }
        fn arm_recv(&mut self, idx: usize) {
            let c = &mut self.conns[idx];
            let e = opcode::Recv::new(types::Fd(c.fd), c.buf.as_mut_ptr(), BUFSZ as u32);
            self.sqe(e.build().user_data(tok(RECV, idx)));
        }
        fn submit_send(&mut self, idx: usize) {
            let c = &self.conns[idx];
            let p = unsafe { c.buf.as_ptr().add(c.sent) };
            let e = opcode::Send::new(types::Fd(c.fd), p, (c.len - c.sent) as u32);
            self.sqe(
                e.flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(tok(SEND, idx)),
            );
        }
        fn on_accept(&mut self, lfd: RawFd, res: i32, flags: u32) {
            if res >= 0 {
                set_nodelay(res);
                let c = Conn {
                    fd: res,
                    buf: vec![0u8; BUFSZ],
                    len: 0,
                    sent: 0,
                };
                let idx = match self.free.pop() {
                    Some(i) => {
                        self.conns[i] = c;
                        i
                    }
                    None => {
                        self.conns.push(c);
                        self.conns.len() - 1
                    }
                };
                self.arm_recv(idx);
            } else {
                eprintln!("accept: errno {}", -res);
            }
            if !cqueue::more(flags) {
                self.sqe(
                    opcode::AcceptMulti::new(types::Fd(lfd))
                        .build()
                        .user_data(tok(ACCEPT, 0)),
                );
            }
        }
        fn on_recv(&mut self, idx: usize, res: i32) {
            if res > 0 {
                let c = &mut self.conns[idx];
                (c.len, c.sent) = (res as usize, 0);
                self.submit_send(idx);
            } else if res == -libc::EINTR || res == -libc::EAGAIN {
                self.arm_recv(idx);
            } else {
                self.close(idx); // EOF or error
            }
        }
        fn on_send(&mut self, idx: usize, res: i32) {
            if res <= 0 {
                return self.close(idx);
            }
            let c = &mut self.conns[idx];
            c.sent += res as usize;
            if c.sent < c.len {
                self.submit_send(idx); // short send: the rest, from the same buffer
            } else {
                self.arm_recv(idx);
            }
        }
        /// The op that just completed was the only one in flight: nothing references the fd.
        fn close(&mut self, idx: usize) {
            let c = &mut self.conns[idx];
            unsafe { libc::close(c.fd) };
            c.fd = -1;
            c.buf = Vec::new(); // free the 64 KiB
            self.free.push(idx);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mode 5: uring-poll. io_uring for readiness only (multishot POLL_ADD POLLIN per connection),
// the I/O itself is plain nonblocking recv(2)/send(2) as in the epoll mode. A short send stores
// the remainder and arms a one-shot POLLOUT; reading resumes once it is flushed.
mod up {
    use super::{errno, set_nodelay, ur};
    use io_uring::{cqueue, opcode, types, IoUring};
    use std::os::fd::RawFd;

    const ACCEPT: u64 = 1;
    const POLLIN: u64 = 2;
    const POLLOUT: u64 = 3;
    const CANCEL: u64 = 4;

    fn tok(kind: u64, idx: usize) -> u64 {
        kind << 32 | idx as u64
    }

    struct Conn {
        fd: RawFd,
        pending: Vec<u8>,
        off: usize,
        in_armed: bool,  // multishot POLLIN outstanding
        out_armed: bool, // one-shot POLLOUT outstanding
        closing: bool,
    }

    struct Srv {
        ring: IoUring,
        conns: Vec<Conn>,
        free: Vec<usize>,
        buf: Vec<u8>,
    }

    pub fn run(lfd: RawFd) -> ! {
        let (ring, setup) = ur::new_ring();
        eprintln!("rawecho uring-poll: setup={setup}");
        let mut s = Srv {
            ring,
            conns: Vec::new(),
            free: Vec::new(),
            buf: vec![0u8; 256 * 1024],
        };
        s.arm_accept(lfd);
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(8192);
        loop {
            ur::submit_wait(&mut s.ring);
            cqes.extend(
                s.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (ud, res, flags) in cqes.drain(..) {
                let idx = (ud & 0xffff_ffff) as usize;
                match ud >> 32 {
                    ACCEPT => s.on_accept(lfd, res, flags),
                    POLLIN => s.on_pollin(idx, res, flags),
                    POLLOUT => s.on_pollout(idx, res),
                    CANCEL => {}
                    _ => unreachable!(),
                }
            }
        }
    }

    impl Srv {
        fn sqe(&mut self, e: io_uring::squeue::Entry) {
            ur::push_sqe(&mut self.ring, &e);
        }
        fn arm_accept(&mut self, lfd: RawFd) {
            let e = opcode::AcceptMulti::new(types::Fd(lfd))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
            self.sqe(e.build().user_data(tok(ACCEPT, 0)));
        }
        fn arm_in(&mut self, idx: usize) {
            self.conns[idx].in_armed = true;
            let e = opcode::PollAdd::new(types::Fd(self.conns[idx].fd), libc::POLLIN as u32)
                .multi(true);
            self.sqe(e.build().user_data(tok(POLLIN, idx)));
        }
        fn arm_out(&mut self, idx: usize) {
            self.conns[idx].out_armed = true;
            let e = opcode::PollAdd::new(types::Fd(self.conns[idx].fd), libc::POLLOUT as u32);
            self.sqe(e.build().user_data(tok(POLLOUT, idx)));
        }
        fn on_accept(&mut self, lfd: RawFd, res: i32, flags: u32) {
            if res >= 0 {
                set_nodelay(res);
                let c = Conn {
                    fd: res,
                    pending: Vec::new(),
                    off: 0,
                    in_armed: false,
                    out_armed: false,
                    closing: false,
                };
                let idx = match self.free.pop() {
                    Some(i) => {
                        self.conns[i] = c;
                        i
                    }
                    None => {
                        self.conns.push(c);
                        self.conns.len() - 1
                    }
                };
                self.arm_in(idx);
            } else {
                eprintln!("accept: errno {}", -res);
            }
            if !cqueue::more(flags) {
                self.arm_accept(lfd);
            }
        }
        fn on_pollin(&mut self, idx: usize, res: i32, flags: u32) {
            if !cqueue::more(flags) {
                self.conns[idx].in_armed = false;
            }
            let c = &self.conns[idx];
            if !c.closing && c.pending.is_empty() && res > 0 && !self.read_echo(idx) {
                self.close(idx);
            }
            let c = &self.conns[idx];
            if !c.closing && !c.in_armed {
                // Terminated (CQ overflow, error...): re-arm; it fires at once if data is there.
                if res < 0 && res != -libc::ECANCELED && res != -libc::ENOMEM {
                    self.close(idx);
                } else {
                    self.arm_in(idx);
                }
            }
            self.maybe_free(idx);
        }
        fn on_pollout(&mut self, idx: usize, res: i32) {
            self.conns[idx].out_armed = false;
            if !self.conns[idx].closing {
                if res < 0 {
                    self.close(idx);
                } else {
                    // Flush, then read: POLLIN wakeups were ignored while the backlog existed.
                    let ok = match self.flush(idx) {
                        Some(true) => self.read_echo(idx),
                        Some(false) => {
                            self.arm_out(idx);
                            true
                        }
                        None => false,
                    };
                    if !ok {
                        self.close(idx);
                    }
                }
            }
            self.maybe_free(idx);
        }
        /// recv until EAGAIN or a short read, echoing each chunk straight from the shared buffer.
        /// Returns false if the connection must be closed.
        fn read_echo(&mut self, idx: usize) -> bool {
            let fd = self.conns[idx].fd;
            let buf = &mut self.buf;
            loop {
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n == 0 {
                    return false;
                }
                if n < 0 {
                    match errno() {
                        libc::EAGAIN => return true,
                        libc::EINTR => continue,
                        _ => return false,
                    }
                }
                let n = n as usize;
                let s = unsafe { libc::send(fd, buf.as_ptr().cast(), n, libc::MSG_NOSIGNAL) };
                let s = if s >= 0 {
                    s as usize
                } else if errno() == libc::EAGAIN {
                    0
                } else {
                    return false;
                };
                if s < n {
                    let c = &mut self.conns[idx];
                    c.pending.extend_from_slice(&buf[s..n]);
                    c.off = 0;
                    self.arm_out(idx);
                    return true; // stop reading until the backlog is flushed
                }
                if n < buf.len() {
                    return true; // short read: drained; the multishot poll reports new data
                }
            }
        }
        /// Some(true): all flushed; Some(false): EAGAIN, still pending; None: error.
        fn flush(&mut self, idx: usize) -> Option<bool> {
            let c = &mut self.conns[idx];
            while c.off < c.pending.len() {
                let rest = &c.pending[c.off..];
                let s = unsafe {
                    libc::send(c.fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL)
                };
                if s < 0 {
                    return match errno() {
                        libc::EAGAIN => Some(false),
                        libc::EINTR => continue,
                        _ => None,
                    };
                }
                c.off += s as usize;
            }
            c.pending.clear();
            c.off = 0;
            Some(true)
        }
        /// Cancel the outstanding polls; the fd is closed (and the slot reused) only after their
        /// final CQEs, so a stale CQE can never hit a new connection in the same slot.
        fn close(&mut self, idx: usize) {
            let c = &mut self.conns[idx];
            if c.closing {
                return;
            }
            c.closing = true;
            if c.in_armed || c.out_armed {
                let b = types::CancelBuilder::fd(types::Fd(c.fd)).all();
                self.sqe(
                    opcode::AsyncCancel2::new(b)
                        .build()
                        .user_data(tok(CANCEL, idx)),
                );
            }
        }
        fn maybe_free(&mut self, idx: usize) {
            let c = &mut self.conns[idx];
            if c.closing && !c.in_armed && !c.out_armed && c.fd >= 0 {
                unsafe { libc::close(c.fd) };
                c.fd = -1;
                c.pending = Vec::new();
                self.free.push(idx);
            }
        }
    }
}
