//! rawload: raw TCP echo load generator (single thread, epoll).
//! N connections, each with K SIZE-byte messages in flight (K written back to back at the start,
//! then one more each time a whole message has come back); every echoed byte is verified.
//! Options: --port P (19080) --conns N (200) --size B (16384) --inflight K (1) --duration S (5)
//!          --warmup S (1) --server-pid PID --pin CPU
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};
use std::time::{Duration, Instant};

struct Conn {
    fd: RawFd,
    id: u64,
    next_msg: u64, // sequence number of the next message to write (selects its byte pattern)
    recv_msg: u64, // sequence number of the message being received
    recvd: usize,  // bytes of message recv_msg received so far
    out: Vec<u8>,  // written by us but not yet taken by the socket: out[out_off..]
    out_off: usize,
    sent_bytes: u64, // total bytes the socket has taken
    recvd_bytes: u64,
    out_armed: bool,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn die(msg: String) -> ! {
    eprintln!("rawload: FAIL: {msg}");
    std::process::exit(2)
}

/// (utime, stime) in clock ticks, whole process (all threads incl. io-wq workers).
fn proc_cpu(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
    (f[11].parse().unwrap(), f[12].parse().unwrap()) // fields 14 and 15 of stat(5)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, def: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or(def.into())
    };
    let port: u16 = opt("--port", "19080").parse().unwrap();
    let nconns: usize = opt("--conns", "200").parse().unwrap();
    let size: usize = opt("--size", "16384").parse().unwrap();
    let inflight: u64 = opt("--inflight", "1").parse().unwrap();
    if size == 0 || inflight == 0 {
        die("--size and --inflight must be at least 1".into());
    }
    let duration: f64 = opt("--duration", "5").parse().unwrap();
    let warmup: f64 = opt("--warmup", "1").parse().unwrap();
    let server_pid: Option<u32> = args
        .iter()
        .any(|a| a == "--server-pid")
        .then(|| opt("--server-pid", "").parse().unwrap());
    if let Some(cpu) = args
        .iter()
        .any(|a| a == "--pin")
        .then(|| opt("--pin", "").parse::<usize>().unwrap())
    {
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0,
                "sched_setaffinity"
            );
        }
    }

    // Pattern table: message m of connection c is table[o..o+size], o = (m*37 + c) % 251.
    // Byte j = (j*131) ^ (j>>8): distinct shifts give different bytes, and 256-byte blocks differ.
    let table: Vec<u8> = (0..size + 256)
        .map(|j| ((j * 131) ^ (j >> 8)) as u8)
        .collect();
    let pat = |id: u64, msg: u64| ((msg * 37 + id) % 251) as usize;

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let t0 = Instant::now();
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let mut conns: Vec<Conn> = Vec::with_capacity(nconns);
    for id in 0..nconns as u64 {
        let s = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) if id == 0 && t0.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => die(format!("connect: {e}")),
            }
        };
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        let fd = s.into_raw_fd();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: id,
        };
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        conns.push(Conn {
            fd,
            id,
            next_msg: 0,
            recv_msg: 0,
            recvd: 0,
            out: Vec::new(),
            out_off: 0,
            sent_bytes: 0,
            recvd_bytes: 0,
            out_armed: false,
        });
    }

    let set_out = |epfd: RawFd, c: &mut Conn, on: bool| {
        if c.out_armed != on {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | if on { libc::EPOLLOUT } else { 0 }) as u32,
                u64: c.id,
            };
            unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, c.fd, &mut ev) };
            c.out_armed = on;
        }
    };
    // Write as much of `buf` as the socket takes now; returns the bytes taken.
    let send_some = |c: &mut Conn, buf: &[u8]| -> usize {
        let mut off = 0;
        while off < buf.len() {
            let rest = &buf[off..];
            let n =
                unsafe { libc::send(c.fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
            if n < 0 {
                match errno() {
                    libc::EAGAIN => break,
                    libc::EINTR => continue,
                    e => die(format!("conn {}: send errno {e}", c.id)),
                }
            }
            off += n as usize;
        }
        c.sent_bytes += off as u64;
        off
    };
    // Send the pending output; EPOLLOUT stays armed while some is left.
    let flush = |epfd: RawFd, c: &mut Conn| {
        let out = std::mem::take(&mut c.out);
        c.out_off += send_some(c, &out[c.out_off..]);
        c.out = out;
        if c.out_off == c.out.len() {
            c.out.clear();
            c.out_off = 0;
        } else if c.out_off >= 64 * 1024 {
            c.out.drain(..c.out_off); // never fully drained lately: drop the sent prefix
            c.out_off = 0;
        }
        set_out(epfd, c, !c.out.is_empty());
    };
    // Write message next_msg: straight from the table when nothing is pending (no copy), the
    // rest (or all of it, behind older pending output) into the pending buffer.
    let write_msg = |epfd: RawFd, c: &mut Conn| {
        let o = pat(c.id, c.next_msg);
        let msg = &table[o..o + size];
        c.next_msg += 1;
        let taken = if c.out.is_empty() {
            send_some(c, msg)
        } else {
            0
        };
        if taken < size {
            c.out.extend_from_slice(&msg[taken..]);
        }
        set_out(epfd, c, !c.out.is_empty());
    };
    for c in conns.iter_mut() {
        for _ in 0..inflight {
            write_msg(epfd, c);
        }
    }

    let mut rbuf = vec![0u8; 256 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let mut done: u64 = 0;
    let start = Instant::now();
    let (warm_end, end) = (
        start + Duration::from_secs_f64(warmup),
        start + Duration::from_secs_f64(warmup + duration),
    );
    let mut base: Option<(Instant, u64, (u64, u64))> = None;
    loop {
        let now = Instant::now();
        if base.is_none() && now >= warm_end {
            base = Some((now, done, server_pid.map(proc_cpu).unwrap_or((0, 0))));
        }
        if now >= end {
            break;
        }
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 50) };
        if n < 0 {
            assert_eq!(errno(), libc::EINTR);
            continue;
        }
        for ev in &events[..n as usize] {
            let (id, flags) = ({ ev.u64 } as usize, { ev.events } as i32);
            let c = &mut conns[id];
            if flags & libc::EPOLLOUT != 0 && !c.out.is_empty() {
                flush(epfd, c);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) == 0 {
                continue;
            }
            // The messages owed for the echoes this event brought go out in one write, as
            // volley's loadgen does (one write per message would make the server read them
            // one by one at 16 in flight).
            let mut owed = 0;
            loop {
                let r = unsafe { libc::recv(c.fd, rbuf.as_mut_ptr().cast(), rbuf.len(), 0) };
                if r == 0 {
                    die(format!("conn {id}: server closed the connection"));
                }
                if r < 0 {
                    if errno() == libc::EAGAIN {
                        break;
                    }
                    die(format!("conn {id}: recv errno {}", errno()));
                }
                let r = r as usize;
                c.recvd_bytes += r as u64;
                if c.recvd_bytes > c.sent_bytes {
                    die(format!(
                        "conn {id}: got {} bytes back, only {} sent",
                        c.recvd_bytes, c.sent_bytes
                    ));
                }
                // The echo is the messages in sequence order; a read may span several of them.
                let mut got = &rbuf[..r];
                while !got.is_empty() {
                    let take = got.len().min(size - c.recvd);
                    let o = pat(c.id, c.recv_msg) + c.recvd;
                    if got[..take] != table[o..o + take] {
                        let k = (0..take).find(|&k| got[k] != table[o + k]).unwrap();
                        die(format!(
                            "conn {id} msg {}: mismatch at byte {}",
                            c.recv_msg,
                            c.recvd + k
                        ));
                    }
                    got = &got[take..];
                    c.recvd += take;
                    if c.recvd == size {
                        done += 1;
                        owed += 1;
                        (c.recv_msg, c.recvd) = (c.recv_msg + 1, 0);
                    }
                }
                if r < rbuf.len() {
                    break;
                }
            }
            if owed == 1 {
                write_msg(epfd, c);
            } else if owed > 1 {
                for _ in 0..owed {
                    let o = pat(c.id, c.next_msg);
                    c.out.extend_from_slice(&table[o..o + size]);
                    c.next_msg += 1;
                }
                flush(epfd, c);
            }
        }
    }
    let (t_base, m_base, (u0, s0)) = base.unwrap_or_else(|| die("no measured window".into()));
    let secs = t_base.elapsed().as_secs_f64();
    let msgs = done - m_base;
    let rate = msgs as f64 / secs;
    let mut line = format!("{{\"conns\":{nconns},\"size\":{size},\"inflight\":{inflight},\"secs\":{secs:.3},\"msgs\":{msgs},\"msgs_per_s\":{rate:.0}");
    let mut human = format!("{msgs} msgs in {secs:.2}s = {rate:.0} msg/s ({inflight} in flight per conn), all echoes verified");
    if let Some(pid) = server_pid {
        let (u1, s1) = proc_cpu(pid);
        let tick_us = 1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let per = |t: u64| t as f64 * tick_us / msgs.max(1) as f64;
        let (us, ss) = (per(u1 - u0), per(s1 - s0));
        line += &format!(
            ",\"us_per_msg\":{:.3},\"user_us_per_msg\":{us:.3},\"sys_us_per_msg\":{ss:.3}",
            us + ss
        );
        human += &format!("; server {:.3} us/msg (user {us:.3}, sys {ss:.3})", us + ss);
    }
    line += "}";
    eprintln!("rawload: {human}");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
}
