//! The measured window cut into intervals: the report's `"timeline"`, latency and server
//! memory over time (what `plot` draws and `soak` reads for drift).
//!
//! - [`Grid`]: where the intervals are. `--interval SECS`, else 1 s, or the window / 300
//!   when that is longer, so that a report holds at most [`TARGET_INTERVALS`] of them.
//! - [`Intervals`]: one histogram per interval, kept by each worker beside its whole-window
//!   histogram. A latency counts in the interval its *receipt* time falls in, so every
//!   latency of the window is in exactly one interval and the counts add up to the
//!   window's. The interval is found by comparing with the current interval's bounds (a
//!   division only when the time leaves it), and a histogram is allocated when its interval
//!   is first used, never per message. Workers' (and `--procs` shards') intervals are
//!   merged at the end.
//! - [`watch`]: the main thread during the window: it wakes at each interval's end and
//!   reads the server's RSS there (with `--server-pid`), and keeps the progress line fresh.
//! - [`Intervals::timeline`]: the report entries, `{"t_s", "count", "p50_us", "p99_us",
//!   "max_us", "server_rss_kib"}`, `t_s` the interval's end in seconds since the window
//!   opened, `server_rss_kib` read at that moment (`null` without `--server-pid`).
//!
//! Memory: each interval histogram is a [`Latency::coarse`] (2 significant digits, about
//! 36 KiB), so a worker holds at most ~11 MiB of them at 300 intervals.

use crate::error::Error;
use crate::json::Json;
use crate::procfs::Proc;
use crate::progress::Progress;
use crate::scenario::{Clock, Control};
use crate::stats::Latency;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Intervals a report aims at, at most: past 300 s of window the interval grows instead.
pub const TARGET_INTERVALS: u64 = 300;
/// The most intervals an `--interval` may ask for (each costs every worker a histogram).
pub const MAX_INTERVALS: u64 = 3600;
/// The interval when the window is short enough.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the main thread refreshes the progress line between interval edges.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Where a window's intervals are, in ns on the run clock. The default grid has no
/// intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grid {
    /// Start of the window (0 until [`Grid::at`] places it).
    pub start_ns: u64,
    /// Length of each interval but possibly the last (which ends with the window).
    pub interval_ns: u64,
    /// Length of the window.
    pub window_ns: u64,
    /// Intervals: `ceil(window / interval)`.
    pub len: usize,
}

impl Grid {
    /// The intervals of a `window`: `interval` if given, else [`DEFAULT_INTERVAL`] or
    /// `window / TARGET_INTERVALS`, whichever is longer.
    ///
    /// # Errors
    /// [`Error::Usage`] when `interval` is zero or cuts the window into more than
    /// [`MAX_INTERVALS`] intervals.
    pub fn new(window: Duration, interval: Option<Duration>) -> Result<Grid, Error> {
        let window_ns = window.as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        let interval_ns = match interval {
            Some(i) if i.is_zero() => {
                return Err(Error::Usage("--interval must be more than 0".into()))
            }
            Some(i) => i.as_nanos().min(u128::from(u64::MAX / 2)) as u64,
            None => (DEFAULT_INTERVAL.as_nanos() as u64).max(window_ns / TARGET_INTERVALS),
        };
        let len = window_ns.div_ceil(interval_ns);
        if len > MAX_INTERVALS {
            return Err(Error::Usage(format!(
                "--interval {} s cuts the {} s window into {len} intervals; at most {MAX_INTERVALS} are kept, so use --interval {} or more",
                interval_ns as f64 / 1e9,
                window_ns as f64 / 1e9,
                (window_ns.div_ceil(MAX_INTERVALS) as f64 / 1e9 * 1e3).ceil() / 1e3
            )));
        }
        Ok(Grid {
            start_ns: 0,
            interval_ns,
            window_ns,
            len: len as usize,
        })
    }

    /// The same grid with the window starting at `start_ns`.
    pub fn at(self, start_ns: u64) -> Grid {
        Grid { start_ns, ..self }
    }

    /// The end of interval `i` (ns on the run clock); the last one ends with the window.
    pub fn edge_ns(&self, i: usize) -> u64 {
        self.start_ns + self.edge_offset_ns(i)
    }

    fn edge_offset_ns(&self, i: usize) -> u64 {
        (i as u64 + 1)
            .saturating_mul(self.interval_ns)
            .min(self.window_ns)
    }

    /// The end of interval `i` in seconds since the window opened.
    pub fn end_s(&self, i: usize) -> f64 {
        self.edge_offset_ns(i) as f64 / 1e9
    }

    /// The interval time `t_ns` falls in, if it is in the window.
    pub fn index(&self, t_ns: u64) -> Option<usize> {
        let off = t_ns.checked_sub(self.start_ns)?;
        if off >= self.window_ns {
            return None;
        }
        Some((off / self.interval_ns) as usize)
    }
}

/// One histogram per interval of a [`Grid`] (by default of the empty grid: it records
/// nothing).
#[derive(Debug, Clone, Default)]
pub struct Intervals {
    grid: Grid,
    /// By interval; grown (never past `grid.len`) when an interval is first used.
    hists: Vec<Latency>,
    /// The interval the last recorded time fell in.
    cur: usize,
    /// INVARIANT: `[lo, hi)` is the span of interval `cur` when `hi > lo`; `lo == hi` (as
    /// at the start) means none is current yet.
    lo: u64,
    /// End of the current interval.
    hi: u64,
}

impl Intervals {
    /// Empty histograms for the intervals of `grid`.
    pub fn new(grid: Grid) -> Intervals {
        Intervals {
            grid,
            hists: Vec::new(),
            cur: 0,
            lo: 0,
            hi: 0,
        }
    }

    /// Records `latency_ns` in the interval of receipt time `t_ns` (nothing when `t_ns` is
    /// outside the window).
    #[inline]
    pub fn record(&mut self, t_ns: u64, latency_ns: u64) {
        if (t_ns < self.lo || t_ns >= self.hi) && !self.seek(t_ns) {
            return;
        }
        self.hists[self.cur].record(latency_ns);
    }

    /// Makes the interval of `t_ns` current (allocating its histogram if it is new); false
    /// when `t_ns` is outside the window.
    #[cold]
    fn seek(&mut self, t_ns: u64) -> bool {
        let Some(i) = self.grid.index(t_ns) else {
            return false;
        };
        if self.hists.len() <= i {
            self.hists.resize_with(i + 1, Latency::coarse);
        }
        self.cur = i;
        self.lo = self.grid.start_ns + i as u64 * self.grid.interval_ns;
        self.hi = self.grid.edge_ns(i);
        true
    }

    /// The grid.
    pub fn grid(&self) -> Grid {
        self.grid
    }

    /// Adds another worker's (or shard's) counts, interval by interval.
    pub fn merge(&mut self, other: &Intervals) {
        if self.hists.len() < other.hists.len() {
            self.hists.resize_with(other.hists.len(), Latency::coarse);
        }
        for (a, b) in self.hists.iter_mut().zip(&other.hists) {
            a.merge(b);
        }
    }

    /// The raw counts for a shard report: one `[[value_ns, count], ...]` per interval.
    pub fn to_json(&self) -> Json {
        Json::A(self.hists.iter().map(Latency::buckets_json).collect())
    }

    /// Adds what [`Intervals::to_json`] wrote (intervals past the grid are ignored).
    pub fn add_json(&mut self, v: &serde_json::Value) {
        let items = v.as_array().map_or(&[][..], Vec::as_slice);
        let n = items.len().min(self.grid.len);
        if self.hists.len() < n {
            self.hists.resize_with(n, Latency::coarse);
        }
        for (h, b) in self.hists.iter_mut().zip(&items[..n]) {
            h.add_buckets(b);
        }
    }

    /// Latencies recorded, all intervals.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.hists.iter().map(Latency::count).sum()
    }

    /// The report's `"timeline"`: one entry per interval of the grid, with the server's
    /// RSS at its end from `rss` (by interval). With `trim`, intervals after the last one
    /// with a latency are left out (a counted run that ended before its time bound).
    pub fn timeline(&self, rss: &[Option<u64>], trim: bool) -> Json {
        let len = if trim {
            self.hists.len()
        } else {
            self.grid.len
        };
        let empty = Latency::coarse();
        let us = |ns: u64| ns as f64 / 1e3;
        Json::A(
            (0..len)
                .map(|i| {
                    let h = self.hists.get(i).unwrap_or(&empty);
                    let n = h.count();
                    let pct = |p: f64| (n > 0).then(|| us(h.percentile(p)));
                    Json::obj()
                        .with("t_s", self.grid.end_s(i))
                        .with("count", n)
                        .with("p50_us", pct(50.0))
                        .with("p99_us", pct(99.0))
                        .with("max_us", (n > 0).then(|| us(h.max())))
                        .with("server_rss_kib", rss.get(i).copied().flatten())
                })
                .collect(),
        )
    }
}

/// The main thread during a measured window laid on `grid`: sleeps to each interval's end
/// and reads the server's RSS there, refreshing `progress` (with the count in
/// [`Control::progress_count`]) in between. Returns after the last edge, at `bound_ns`
/// (run clock) if that comes first, or as soon as `done` holds (a counted run's "every
/// worker drained", polled every 2 ms); the RSS readings by interval, `None` where not
/// read.
pub fn watch(
    server: &Option<Arc<Proc>>,
    ctl: &Control,
    grid: &Grid,
    progress: &Progress,
    bound_ns: u64,
    done: Option<&dyn Fn() -> bool>,
) -> Vec<Option<u64>> {
    let clock: Clock = ctl.clock;
    let mut rss = Vec::with_capacity(grid.len);
    let window = Duration::from_nanos(grid.window_ns);
    for i in 0..grid.len {
        let edge_ns = grid.edge_ns(i);
        let edge = clock.instant(edge_ns.min(bound_ns));
        loop {
            let elapsed = clock.now_ns().saturating_sub(grid.start_ns);
            progress.window(Duration::from_nanos(elapsed), window, ctl.progress_count());
            if done.is_some_and(|d| d()) {
                return rss;
            }
            let now = Instant::now();
            if now >= edge {
                break;
            }
            let mut wake = edge;
            if progress.is_shown() {
                wake = wake.min(now + PROGRESS_TICK);
            }
            if done.is_some() {
                wake = wake.min(now + Duration::from_millis(2));
            }
            std::thread::sleep(wake - now);
        }
        if edge_ns > bound_ns {
            return rss;
        }
        rss.push(crate::scenario::sample(server).map(|s| s.rss_kib));
    }
    rss
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn grid_is_one_second_up_to_300_intervals() {
        let g = Grid::new(Duration::from_secs(3), None).unwrap();
        assert_eq!((g.interval_ns, g.len), (S, 3));
        let g = Grid::new(Duration::from_millis(2500), None).unwrap();
        assert_eq!(g.len, 3);
        assert_eq!(g.end_s(2), 2.5, "the last interval ends with the window");
        let g = Grid::new(Duration::from_secs(3600), None).unwrap();
        assert_eq!((g.interval_ns, g.len), (12 * S, 300));
        let g = Grid::new(Duration::from_secs(10), Some(Duration::from_millis(500))).unwrap();
        assert_eq!(g.len, 20);
        assert!(Grid::new(Duration::from_secs(10), Some(Duration::ZERO)).is_err());
        let e = Grid::new(Duration::from_secs(100), Some(Duration::from_millis(1)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("100000 intervals") && e.contains("--interval 0.028"),
            "{e}"
        );
        assert_eq!(Grid::new(Duration::ZERO, None).unwrap().len, 0);
    }

    #[test]
    fn grid_index_covers_the_window_once() {
        let g = Grid::new(Duration::from_millis(2500), None)
            .unwrap()
            .at(10 * S);
        assert_eq!(g.index(10 * S - 1), None);
        assert_eq!(g.index(10 * S), Some(0));
        assert_eq!(g.index(11 * S - 1), Some(0));
        assert_eq!(g.index(11 * S), Some(1));
        assert_eq!(g.index(12 * S + S / 2 - 1), Some(2));
        assert_eq!(g.index(12 * S + S / 2), None);
    }

    #[test]
    fn intervals_count_by_receipt_time_and_merge() {
        let g = Grid::new(Duration::from_secs(3), None).unwrap().at(5 * S);
        let mut a = Intervals::new(g);
        let mut b = Intervals::new(g);
        // Out of order, before, in and after the window.
        for (t, lat) in [
            (5 * S + 10, 1_000),
            (7 * S, 9_000),
            (4 * S, 5),
            (5 * S + 20, 3_000),
            (8 * S, 7),
            (6 * S + 1, 2_000),
        ] {
            a.record(t, lat);
        }
        b.record(7 * S + 5, 10_000);
        assert_eq!(a.count(), 4);
        a.merge(&b);
        assert_eq!(a.count(), 5);
        let v: serde_json::Value =
            serde_json::from_str(&a.timeline(&[Some(100), None], false).to_string()).unwrap();
        let t = v.as_array().unwrap();
        assert_eq!(t.len(), 3);
        let counts: Vec<u64> = t.iter().map(|e| e["count"].as_u64().unwrap()).collect();
        assert_eq!(counts, [2, 1, 2]);
        assert_eq!(t[0]["t_s"], 1.0);
        assert_eq!(t[2]["t_s"], 3.0);
        assert_eq!(t[0]["server_rss_kib"], 100);
        assert!(t[1]["server_rss_kib"].is_null() && t[2]["server_rss_kib"].is_null());
        let max = t[2]["max_us"].as_f64().unwrap();
        assert!((9.9..=10.1).contains(&max), "{max}");
        // A shard's intervals survive JSON.
        let raw: serde_json::Value = serde_json::from_str(&a.to_json().to_string()).unwrap();
        let mut back = Intervals::new(g);
        back.add_json(&raw);
        assert_eq!(back.count(), 5);
    }

    #[test]
    fn trimmed_timeline_stops_at_the_last_used_interval() {
        let g = Grid::new(Duration::from_secs(10), None).unwrap().at(S);
        let mut a = Intervals::new(g);
        a.record(S + S / 2, 1_000);
        a.record(2 * S + S / 2, 1_000);
        let v: serde_json::Value =
            serde_json::from_str(&a.timeline(&[], true).to_string()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        let v: serde_json::Value =
            serde_json::from_str(&a.timeline(&[], false).to_string()).unwrap();
        let t = v.as_array().unwrap();
        assert_eq!(t.len(), 10);
        assert!(t[5]["p99_us"].is_null() && t[5]["count"] == 0);
    }
}
