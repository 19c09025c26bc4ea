//! `--procs N`: one run spread over N loadgen processes ("shards"), for more connections
//! than one process's open-files limit holds.
//!
//! The parent re-runs its own command line N times with `--shard I/N` (and its share of the
//! `--source` addresses) instead of `--procs`, `--json`, `--plot` and `--server-pid`. A
//! shard opens its share of the connections, says so on its standard output
//! (`loadgen-shard connected OPENED FAILED`) and waits for an order on its standard input:
//! `go GO_NS WINDOW_START_NS WINDOW_END_NS` (times on the shared monotonic clock, see
//! [`crate::scenario::Clock`]) or `stop`. When it is done it writes its raw results (counts,
//! histogram buckets, failures) as JSON to the file its `--json` names and exits; the parent
//! merges them into one report and reads the server's `/proc` itself. A shard whose parent
//! goes away (its standard input closes) stops.

use crate::error::Error;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The first word of every line a shard writes to its parent.
const TAG: &str = "loadgen-shard";

/// Which part of a `--procs` run this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: usize,
    /// Shards in the run.
    pub count: usize,
}

impl Shard {
    /// Parses `I/N`.
    ///
    /// # Errors
    /// [`Error::Usage`] for anything but `I/N` with `I < N`.
    pub fn parse(s: &str) -> Result<Shard, Error> {
        let bad = || Error::Usage(format!("--shard takes I/N with I < N, not {s:?}"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// This shard's part of `n`.
    pub fn share(&self, n: usize) -> usize {
        crate::scenario::share(n, self.count, self.index)
    }
}

/// What the parent tells its shards once they are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Start the load at `go_ns`; the measured window is `[win_start_ns, win_end_ns)`.
    Go {
        /// Load starts.
        go_ns: u64,
        /// Window start.
        win_start_ns: u64,
        /// Window end.
        win_end_ns: u64,
    },
    /// Close the connections and report.
    Stop,
}

impl Order {
    fn line(&self) -> String {
        match self {
            Order::Go {
                go_ns,
                win_start_ns,
                win_end_ns,
            } => format!("go {go_ns} {win_start_ns} {win_end_ns}\n"),
            Order::Stop => "stop\n".into(),
        }
    }

    fn parse(line: &str) -> Order {
        let mut it = line.split_ascii_whitespace();
        if it.next() == Some("go") {
            let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
            if let [go_ns, win_start_ns, win_end_ns] = v[..] {
                return Order::Go {
                    go_ns,
                    win_start_ns,
                    win_end_ns,
                };
            }
        }
        Order::Stop
    }
}

/// Shard side: tells the parent how many connections opened and failed.
pub fn report_connected(opened: usize, failed: usize) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{TAG} connected {opened} {failed}");
    let _ = out.flush();
}

/// Shard side: waits for the parent's order (a closed standard input means stop).
pub fn wait_order() -> Order {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 => Order::parse(&line),
        _ => Order::Stop,
    }
}

/// Options a shard does not get from its parent's command line (the parent handles them).
const STRIP: [&str; 5] = ["--procs", "--json", "--plot", "--server-pid", "--source"];

/// The parent's command line without [`STRIP`]ped options and their values.
fn shard_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let s = a.to_string_lossy();
        if let Some(name) = STRIP.iter().find(|n| s.starts_with(**n)) {
            if s.len() == name.len() {
                skip_value = true;
                continue;
            }
            if s[name.len()..].starts_with('=') {
                continue;
            }
        }
        out.push(a.clone());
    }
    out
}

/// The source addresses of shard `i` of `n`: a share of them when there are enough to go
/// round, one of them otherwise (shards then share an address's ports).
pub fn shard_sources(sources: &[IpAddr], i: usize, n: usize) -> Vec<IpAddr> {
    if sources.is_empty() {
        return Vec::new();
    }
    if sources.len() >= n {
        sources.iter().skip(i).step_by(n).copied().collect()
    } else {
        vec![sources[i % sources.len()]]
    }
}

/// Which lane of its source address's ports shard `i` of `n` takes: its own address(es)
/// alone when there are enough to go round, else a share of one address's ports with the
/// other shards on it.
pub fn port_lane(sources: usize, i: usize, n: usize) -> (usize, usize) {
    if sources == 0 || sources >= n {
        (0, 1)
    } else {
        (i / sources, n.div_ceil(sources))
    }
}

/// Parent side: the running shards.
#[derive(Debug)]
pub struct Shards {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    files: Vec<PathBuf>,
    lines: mpsc::Receiver<(usize, Option<String>)>,
    connected: Vec<Option<(usize, usize)>>,
}

impl Shards {
    /// Starts `n` shards of this process's command line.
    ///
    /// # Errors
    /// The executable cannot be re-run.
    pub fn spawn(n: usize, sources: &[IpAddr]) -> Result<Shards, Error> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::Sys(format!("cannot find loadgen's own executable: {e}")))?;
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let base = shard_args(&args);
        let (tx, rx) = mpsc::channel();
        let mut shards = Shards {
            children: Vec::new(),
            stdins: Vec::new(),
            files: Vec::new(),
            lines: rx,
            connected: vec![None; n],
        };
        for i in 0..n {
            let file =
                std::env::temp_dir().join(format!("loadgen-shard-{}-{i}.json", std::process::id()));
            let mut cmd = Command::new(&exe);
            cmd.args(&base)
                .arg("--shard")
                .arg(format!("{i}/{n}"))
                .arg("--json")
                .arg(&file);
            for s in shard_sources(sources, i, n) {
                cmd.arg("--source").arg(s.to_string());
            }
            let (lane, lanes) = port_lane(sources.len(), i, n);
            cmd.arg("--port-lane").arg(format!("{lane}/{lanes}"));
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| Error::Sys(format!("cannot start shard {i}: {e}")))?;
            let out = child.stdout.take().expect("piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    match line {
                        Ok(l) => {
                            if tx.send((i, Some(l))).is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                let _ = tx.send((i, None));
            });
            shards.stdins.push(child.stdin.take());
            shards.children.push(child);
            shards.files.push(file);
        }
        Ok(shards)
    }

    /// Waits until every shard has reported its connections; (opened, failed) summed.
    ///
    /// # Errors
    /// A shard exited before reporting (its error is on standard error), or the deadline
    /// passed.
    pub fn wait_connected(&mut self, deadline: Instant) -> Result<(usize, usize), Error> {
        while self.connected.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((i, Some(l))) => {
                    let mut it = l.split_ascii_whitespace();
                    if it.next() == Some(TAG) && it.next() == Some("connected") {
                        let v: Vec<usize> = it.filter_map(|x| x.parse().ok()).collect();
                        if let [o, f] = v[..] {
                            self.connected[i] = Some((o, f));
                        }
                    } else {
                        println!("{l}");
                    }
                }
                Ok((i, None)) => {
                    if self.connected[i].is_none() {
                        let status = self.children[i].wait().ok();
                        return Err(Error::Sys(format!(
                            "shard {i} exited before opening its connections ({})",
                            status.map_or("status unknown".into(), |s| s.to_string())
                        )));
                    }
                }
                Err(_) => {
                    let waiting = self.connected.iter().filter(|c| c.is_none()).count();
                    return Err(Error::Sys(format!(
                        "{waiting} shard(s) did not finish connecting in time"
                    )));
                }
            }
        }
        Ok(self
            .connected
            .iter()
            .flatten()
            .fold((0, 0), |(o, f), &(a, b)| (o + a, f + b)))
    }

    /// Sends `order` to every shard.
    pub fn send(&mut self, order: Order) {
        let line = order.line();
        for s in self.stdins.iter_mut().flatten() {
            let _ = s.write_all(line.as_bytes());
            let _ = s.flush();
        }
    }

    /// Waits for every shard to exit (killing those still running at `deadline`) and reads
    /// their reports.
    ///
    /// # Errors
    /// A shard failed or left no readable report.
    pub fn finish(mut self, deadline: Instant) -> Result<Vec<serde_json::Value>, Error> {
        self.stdins.clear();
        let mut reports = Vec::new();
        for i in 0..self.children.len() {
            let status = loop {
                match self.children[i].try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = self.children[i].kill();
                        let _ = self.children[i].wait();
                        break None;
                    }
                }
            };
            let text = std::fs::read_to_string(&self.files[i]);
            let _ = std::fs::remove_file(&self.files[i]);
            let parsed = text
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            match (status, parsed) {
                (Some(_), Some(v)) => reports.push(v),
                (status, _) => {
                    return Err(Error::Sys(format!(
                        "shard {i} left no report ({})",
                        status.map_or("killed at the deadline".into(), |s| s.to_string())
                    )))
                }
            }
        }
        Ok(reports)
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A number from a shard report (0 when missing).
pub fn u(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parent_options_are_stripped_in_both_spellings() {
        let args = os(&[
            "fanout",
            "--procs",
            "4",
            "--json=r.json",
            "--subscribers",
            "100",
            "--source",
            "127.0.0.2",
            "--server-pid",
            "7",
            "--plot",
            "p.svg",
        ]);
        assert_eq!(shard_args(&args), os(&["fanout", "--subscribers", "100"]));
    }

    #[test]
    fn shard_parse_and_share() {
        let s = Shard::parse("1/3").unwrap();
        assert_eq!((s.index, s.count), (1, 3));
        assert_eq!(
            (0..3)
                .map(|i| Shard { index: i, count: 3 }.share(10))
                .sum::<usize>(),
            10
        );
        assert!(Shard::parse("3/3").is_err());
        assert!(Shard::parse("x").is_err());
    }

    #[test]
    fn sources_are_dealt_out() {
        let ips: Vec<IpAddr> = (2..=6)
            .map(|i| format!("127.0.0.{i}").parse().unwrap())
            .collect();
        assert_eq!(shard_sources(&ips, 0, 2), vec![ips[0], ips[2], ips[4]]);
        assert_eq!(shard_sources(&ips, 1, 2), vec![ips[1], ips[3]]);
        assert_eq!(shard_sources(&ips[..2], 3, 4), vec![ips[1]]);
        assert!(shard_sources(&[], 0, 2).is_empty());
        // 2 addresses, 5 shards: shards 0, 2, 4 share the first (lanes 0, 1, 2 of 3).
        assert_eq!(port_lane(2, 0, 5), (0, 3));
        assert_eq!(port_lane(2, 2, 5), (1, 3));
        assert_eq!(port_lane(2, 4, 5), (2, 3));
        assert_eq!(port_lane(2, 3, 5), (1, 3));
        assert_eq!(port_lane(5, 3, 5), (0, 1));
    }

    #[test]
    fn orders_round_trip() {
        let g = Order::Go {
            go_ns: 1,
            win_start_ns: 2,
            win_end_ns: 3,
        };
        assert_eq!(Order::parse(&g.line()), g);
        assert_eq!(Order::parse(&Order::Stop.line()), Order::Stop);
        assert_eq!(Order::parse("garbage"), Order::Stop);
    }
}
