//! Reading another process's CPU time and memory from `/proc`: the one place loadgen does
//! it, so every scenario (echo, connect, and later fan-out and soak) reports server cost the
//! same way.
//!
//! CPU time is `utime + stime` from `/proc/PID/stat` (every thread of the process, user and
//! kernel time, in clock ticks of `sysconf(_SC_CLK_TCK)`), so it counts the kernel work done
//! on the server's behalf (its syscalls and the softirq time charged to it). The same figure
//! is also read from the process's CPU-time clock (`clock_getcpuclockid`), which has
//! nanosecond resolution, as a cross-check; the tick figure is the one reported first. Memory is `VmRSS` from `/proc/PID/status`:
//! user-space memory only, not the kernel's socket buffers.

use crate::error::Error;
use std::io;
use std::time::Instant;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// `utime + stime`, in clock ticks.
    pub cpu_ticks: u64,
    /// `stime` alone (time in the kernel on the process's behalf), in clock ticks.
    pub sys_ticks: u64,
    /// The process CPU-time clock in nanoseconds, where the kernel lets us read it.
    pub cpu_clock_ns: Option<u64>,
    /// Resident set size in KiB.
    pub rss_kib: u64,
}

/// A process observed through `/proc`.
#[derive(Debug)]
pub struct Proc {
    pid: u32,
    ticks_per_s: u64,
    clock: Option<libc::clockid_t>,
}

impl Proc {
    /// Opens `pid` and takes a first reading to check it can be read.
    ///
    /// # Errors
    /// [`Error::ServerProc`] when the process does not exist or its files cannot be read.
    pub fn open(pid: u32) -> Result<Proc, Error> {
        let p = Proc {
            pid,
            ticks_per_s: clock_ticks_per_second(),
            clock: cpu_clock(pid),
        };
        p.sample().map_err(|e| Error::ServerProc {
            pid,
            why: e.to_string(),
        })?;
        Ok(p)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads CPU time and RSS now.
    ///
    /// # Errors
    /// The process is gone or `/proc` cannot be read.
    pub fn sample(&self) -> io::Result<Sample> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let (utime, stime) = parse_stat_times(&stat).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat")
        })?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let rss_kib = parse_status_kib(&status, "VmRSS:").unwrap_or(0);
        Ok(Sample {
            at: Instant::now(),
            cpu_ticks: utime + stime,
            sys_ticks: stime,
            cpu_clock_ns: self.clock.and_then(read_clock_ns),
            rss_kib,
        })
    }

    /// What happened between two readings.
    pub fn delta(&self, start: &Sample, end: &Sample) -> Delta {
        let ticks = end.cpu_ticks.saturating_sub(start.cpu_ticks);
        let sys = end.sys_ticks.saturating_sub(start.sys_ticks);
        Delta {
            wall_s: end.at.duration_since(start.at).as_secs_f64(),
            cpu_us: ticks as f64 * 1e6 / self.ticks_per_s as f64,
            sys_us: sys as f64 * 1e6 / self.ticks_per_s as f64,
            cpu_us_clock: match (start.cpu_clock_ns, end.cpu_clock_ns) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e3),
                _ => None,
            },
            rss_start_kib: start.rss_kib,
            rss_end_kib: end.rss_kib,
        }
    }

    /// Open file descriptors of the process (entries of `/proc/PID/fd`).
    ///
    /// # Errors
    /// The directory cannot be read (gone, or not ours).
    pub fn fd_count(&self) -> io::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count())
    }
}

/// A process's cost over a window.
#[derive(Clone, Copy, Debug)]
pub struct Delta {
    /// Wall-clock seconds between the readings.
    pub wall_s: f64,
    /// CPU time used, in microseconds, from `/proc/PID/stat` ticks.
    pub cpu_us: f64,
    /// The part of `cpu_us` spent in the kernel (`stime`).
    pub sys_us: f64,
    /// CPU time used, in microseconds, from the CPU-time clock (finer), if readable.
    pub cpu_us_clock: Option<f64>,
    /// RSS at the start, KiB.
    pub rss_start_kib: u64,
    /// RSS at the end, KiB.
    pub rss_end_kib: u64,
}

impl Delta {
    /// RSS growth in bytes (negative when it shrank).
    pub fn rss_delta_bytes(&self) -> i64 {
        (self.rss_end_kib as i64 - self.rss_start_kib as i64) * 1024
    }

    /// Share of one core used over the window.
    pub fn cpu_share(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.cpu_us / 1e6 / self.wall_s
        } else {
            0.0
        }
    }
}

/// The whole machine's CPU time: (busy, total) clock ticks summed over CPUs, from the first
/// line of `/proc/stat`. Busy is everything but idle and iowait.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(&stat)
}

/// [`machine_ticks`] from the text of `/proc/stat`.
pub fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// The kernel's memory that grows with sockets: slab caches (socket, inode, dentry, file
/// and TCP objects) and the TCP socket buffers, machine-wide. On loopback both ends of every
/// connection are on this machine, so a delta over N connections is N client ends plus N
/// server ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelMem {
    /// `Slab:` from `/proc/meminfo`, KiB.
    pub slab_kib: u64,
    /// `TCP: ... mem N` from `/proc/net/sockstat`, in pages.
    pub tcp_mem_pages: u64,
}

impl KernelMem {
    /// Reads the machine now.
    pub fn sample() -> Option<KernelMem> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
        Some(KernelMem {
            slab_kib: parse_status_kib(&meminfo, "Slab:")?,
            tcp_mem_pages: parse_sockstat_tcp_mem(&sockstat)?,
        })
    }

    /// Bytes grown from `start` to `self` (slab plus socket buffers; negative if it shrank).
    pub fn delta_bytes(&self, start: &KernelMem) -> i64 {
        // SAFETY: sysconf only reads a configuration value.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as i64;
        (self.slab_kib as i64 - start.slab_kib as i64) * 1024
            + (self.tcp_mem_pages as i64 - start.tcp_mem_pages as i64) * page
    }
}

/// The `mem` field of the `TCP:` line of `/proc/net/sockstat` (pages of socket buffers).
pub fn parse_sockstat_tcp_mem(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let mut it = line.split_ascii_whitespace();
    while let Some(k) = it.next() {
        let v = it.next()?;
        if k == "mem" {
            return v.parse().ok();
        }
    }
    None
}

/// CPU time used by every process on the machine between two [`machine_ticks`] readings,
/// in cores (1.0: one core busy the whole time).
pub fn machine_busy_cores(a: (u64, u64), b: (u64, u64), wall_s: f64) -> f64 {
    if wall_s <= 0.0 {
        return 0.0;
    }
    b.0.saturating_sub(a.0) as f64 / clock_ticks_per_second() as f64 / wall_s
}

/// `(utime, stime)` from the text of `/proc/PID/stat`.
///
/// The command name (field 2) may hold spaces and parentheses, so fields are counted from
/// the last `)`: after it come field 3 (state) onwards; utime and stime are fields 14 and 15.
pub fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_ascii_whitespace().skip(11);
    let utime = it.next()?.parse().ok()?;
    let stime = it.next()?.parse().ok()?;
    Some((utime, stime))
}

/// A `kB` value such as `VmRSS:` from the text of `/proc/PID/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc/PID/stat` times (100 on Linux).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn cpu_clock(pid: u32) -> Option<libc::clockid_t> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: `id` is a valid, writable clockid_t we own for the duration of the call.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut id) };
    (rc == 0 && read_clock_ns(id).is_some()).then_some(id)
}

fn read_clock_ns(id: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec we own for the duration of the call.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_tcp_mem() {
        let s =
            "sockets: used 310\nTCP: inuse 12 orphan 0 tw 3 alloc 14 mem 7\nUDP: inuse 1 mem 2\n";
        assert_eq!(parse_sockstat_tcp_mem(s), Some(7));
        assert_eq!(parse_sockstat_tcp_mem("UDP: inuse 1 mem 2\n"), None);
        assert!(
            KernelMem::sample().is_some(),
            "/proc/meminfo and /proc/net/sockstat readable"
        );
    }

    #[test]
    fn stat_with_odd_command_name() {
        let s = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15";
        assert_eq!(parse_stat_times(s), Some((111, 222)));
    }

    #[test]
    fn machine_line() {
        let s = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4 5\n";
        assert_eq!(parse_machine_ticks(s), Some((161, 1181)));
        assert!(machine_ticks().is_some());
    }

    #[test]
    fn status_rss() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    4242 kB\n";
        assert_eq!(parse_status_kib(s, "VmRSS:"), Some(4242));
        assert_eq!(parse_status_kib(s, "VmHWM:"), None);
    }

    #[test]
    fn reads_this_process() {
        let p = Proc::open(std::process::id()).unwrap();
        let a = p.sample().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = p.sample().unwrap();
        assert!(a.rss_kib > 0);
        let d = p.delta(&a, &b);
        assert!(
            d.cpu_us > 0.0 || d.cpu_us_clock.unwrap_or(0.0) > 0.0,
            "{d:?}"
        );
        assert!(p.fd_count().unwrap() > 0);
    }
}
