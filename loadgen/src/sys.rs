//! Local limits and placement: the open-files limit, the ephemeral port range, CPU pinning.

use crate::error::Error;

/// The soft and hard open-files limits, after raising the soft one to the hard one.
pub fn raise_nofile_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`, which we own; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (0, 0);
    }
    if lim.rlim_cur < lim.rlim_max {
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads `lim`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            lim.rlim_cur = old;
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Files a run needs besides its sockets: stdio, pollers, wakers, `/proc` reads, slack.
pub const SPARE_FILES: u64 = 64;

/// Checks that `conns` sockets fit in the open-files limit (raising the soft limit first).
///
/// # Errors
/// [`Error::TooFewFiles`] with the numbers.
pub fn check_files(conns: usize) -> Result<(), Error> {
    let need = conns as u64 + SPARE_FILES;
    let (soft, hard) = raise_nofile_limit();
    if soft != 0 && need > soft {
        return Err(Error::TooFewFiles {
            conns,
            need,
            soft,
            hard,
        });
    }
    Ok(())
}

/// `net.ipv4.ip_local_port_range`, if readable.
pub fn local_port_range() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_ascii_whitespace().map(|x| x.parse::<u32>());
    let lo = it.next()?.ok()?;
    let hi = it.next()?.ok()?;
    (hi >= lo).then_some((lo, hi))
}

/// Checks that `per_source` connections from one source address fit in the port range.
///
/// # Errors
/// [`Error::TooFewPorts`] with the numbers.
pub fn check_ports(per_source: usize) -> Result<(), Error> {
    if let Some((lo, hi)) = local_port_range() {
        let ports = (hi - lo + 1) as usize;
        if per_source > ports {
            return Err(Error::TooFewPorts {
                per_source,
                ports,
                range: (lo, hi),
            });
        }
    }
    Ok(())
}

/// Parses a CPU list: `1`, `0,2`, `2-3`.
///
/// # Errors
/// [`Error::Usage`] for anything else, or a CPU this machine does not have.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, Error> {
    let bad = || {
        Error::Usage(format!(
            "--pin {s:?}: expected a CPU list such as 1, 0,2 or 2-3"
        ))
    };
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.parse().map_err(|_| bad())?;
                let b: usize = b.parse().map_err(|_| bad())?;
                if b < a {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    // The machine's CPUs, not this process's share of them (under `taskset -c 1` the
    // process may use one CPU, yet `--pin 1` is right and 0 is not).
    // SAFETY: sysconf only reads a configuration value.
    let conf = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    let n = if conf > 0 {
        conf as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    if let Some(&c) = cpus.iter().find(|&&c| c >= n) {
        return Err(Error::Usage(format!(
            "--pin {s:?}: CPU {c} does not exist (this machine has CPUs 0-{})",
            n - 1
        )));
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu`; false when the kernel refused.
pub fn pin_current_thread(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("1-0").is_err());
        assert!(parse_cpu_list("100000").is_err());
    }
}
