//! `soak`: hold an echo or fanout load for a long window and report how it drifts.
//!
//! The load is the scenario itself ([`Load::run`], every option of `echo` or `fanout`, a
//! default window of 60 s); the soak reads the run's report back (its `timeline`, see
//! [`crate::timeline`]) and adds:
//!
//! - **latency drift**: p50 and p99 of the first 10% of the intervals against the last 10%
//!   (at least one interval each), as a ratio last / first. An edge's figure is the mean of
//!   its intervals' figures weighted by their counts (the timeline keeps percentiles per
//!   interval, not the histograms).
//! - **memory drift** (with `--server-pid`): the server's RSS when the window opened and at
//!   its end, and its growth in bytes per second: the least-squares slope through every
//!   interval's reading, which one late spike or one early allocation sways less than
//!   end - start does.
//!
//! A drift past `--max-p99-drift` (ratio) or `--max-rss-growth` (bytes per second) is a
//! problem: it is printed and the exit status is 1, as for any other measured problem.
//! What it will not do: tell a leak from a cache still warming up. Run long enough for the
//! slope to mean something (minutes, not seconds) and compare with a second soak.

use super::{Common, Load, Outcome};
use crate::error::Error;
use crate::json::Json;
use crate::report::plot::{timeline, TimelinePoint};
use crate::stats::group;
use serde_json::Value;

/// Default `--max-rss-growth`: 64 KiB/s, about 225 MiB an hour, which no steady server
/// should show once warm, while page-sized noise over a minute stays far below it.
pub const DEFAULT_MAX_RSS_GROWTH: f64 = 65_536.0;
/// Default `--max-p99-drift`: p99 doubled from the first to the last tenth of the window.
pub const DEFAULT_MAX_P99_DRIFT: f64 = 2.0;
/// The share of the intervals compared at each end of the window.
const EDGE_SHARE: f64 = 0.1;

/// The soak's bounds.
#[derive(Debug, Clone, Copy)]
pub struct SoakOpts {
    /// Server RSS growth above which the soak reports a problem, bytes per second.
    pub max_rss_growth: f64,
    /// p99 last / first above which the soak reports a problem.
    pub max_p99_drift: f64,
}

/// Latency at one end of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EdgeLatency {
    /// Count-weighted mean of the intervals' p50, us.
    pub p50_us: Option<f64>,
    /// Count-weighted mean of the intervals' p99, us.
    pub p99_us: Option<f64>,
}

/// How a run drifted, from its report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drift {
    /// Intervals in the timeline.
    pub intervals: usize,
    /// Intervals compared at each end.
    pub edge: usize,
    /// The first `edge` intervals.
    pub first: EdgeLatency,
    /// The last `edge` intervals.
    pub last: EdgeLatency,
    /// Server RSS when the window opened, KiB.
    pub rss_start_kib: Option<f64>,
    /// Server RSS at the end of the last interval read, KiB.
    pub rss_end_kib: Option<f64>,
    /// Least-squares slope of the server's RSS over the window, bytes per second.
    pub rss_growth_bps: Option<f64>,
}

/// `b / a` when both are there and `a` is above 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    }
}

impl Drift {
    /// The drift of a report with a `timeline` (an empty one without).
    pub fn of(report: &Value) -> Drift {
        let points = timeline(report).unwrap_or_default();
        let n = points.len();
        let edge = ((n as f64 * EDGE_SHARE).ceil() as usize).clamp(1, n.max(1));
        let rss_start_kib = report
            .get("server")
            .and_then(|s| s.get("rss_start_kib"))
            .and_then(Value::as_f64);
        let mut rss: Vec<(f64, f64)> = rss_start_kib.map(|r| (0.0, r)).into_iter().collect();
        rss.extend(
            points
                .iter()
                .filter_map(|p| Some((p.t_s, p.server_rss_kib?))),
        );
        Drift {
            intervals: n,
            edge: edge.min(n),
            first: edge_latency(&points[..edge.min(n)]),
            last: edge_latency(&points[n - edge.min(n)..]),
            rss_start_kib: rss.first().map(|p| p.1),
            rss_end_kib: rss.last().map(|p| p.1),
            rss_growth_bps: slope(&rss).map(|kib_per_s| kib_per_s * 1024.0),
        }
    }

    /// p50 last / first.
    pub fn p50_ratio(&self) -> Option<f64> {
        ratio(self.first.p50_us, self.last.p50_us)
    }

    /// p99 last / first.
    pub fn p99_ratio(&self) -> Option<f64> {
        ratio(self.first.p99_us, self.last.p99_us)
    }

    /// The bounds this drift passes, as problems.
    pub fn problems(&self, opts: &SoakOpts) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = self.p99_ratio().filter(|&r| r > opts.max_p99_drift) {
            out.push(format!(
                "p99 drifted x{r:.2} from the first to the last tenth of the window (bound x{:.2})",
                opts.max_p99_drift
            ));
        }
        if let Some(g) = self.rss_growth_bps.filter(|&g| g > opts.max_rss_growth) {
            out.push(format!(
                "server RSS grew {} B/s over the window (bound {} B/s)",
                group(g.round() as u64),
                group(opts.max_rss_growth.round() as u64)
            ));
        }
        out
    }
}

/// Count-weighted means of the intervals' p50 and p99 (intervals without latency count
/// for nothing).
fn edge_latency(points: &[TimelinePoint]) -> EdgeLatency {
    let mean = |pick: fn(&TimelinePoint) -> Option<f64>| {
        let (mut sum, mut n) = (0.0, 0u64);
        for p in points {
            if let (Some(v), Some(c)) = (pick(p), p.count.filter(|&c| c > 0)) {
                sum += v * c as f64;
                n += c;
            }
        }
        (n > 0).then(|| sum / n as f64)
    };
    EdgeLatency {
        p50_us: mean(|p| p.p50_us),
        p99_us: mean(|p| p.p99_us),
    }
}

/// The least-squares slope of `y` over `x`; `None` with fewer than two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Runs `load` as a soak: the scenario, then its drift added to the table, the JSON
/// (`"soak"`) and the problems. A `--procs` shard just runs its part.
///
/// # Errors
/// Bad bounds ([`Error::Usage`]), or what the scenario returns.
pub fn run(common: &Common, load: &Load, opts: &SoakOpts) -> Result<Outcome, Error> {
    let rss_ok = opts.max_rss_growth >= 0.0 && opts.max_rss_growth.is_finite();
    let drift_ok = opts.max_p99_drift > 0.0 && opts.max_p99_drift.is_finite();
    if !(rss_ok && drift_ok) {
        return Err(Error::Usage(
            "--max-rss-growth must be 0 or more (bytes per second) and --max-p99-drift more than 0 (a ratio)"
                .into(),
        ));
    }
    let mut out = load.run(common)?;
    if common.shard.is_some() {
        return Ok(out);
    }
    let report = crate::report::parse_back(&out.json).map_err(Error::Sys)?;
    let d = Drift::of(&report);
    add(&mut out, &d, opts, common.server.is_some());
    out.title = format!("loadgen soak {}", load.name());
    Ok(out)
}

/// Adds the drift's rows, JSON and problems to a scenario's outcome.
fn add(out: &mut Outcome, d: &Drift, opts: &SoakOpts, server: bool) {
    let us = |x: Option<f64>| x.map_or("-".into(), |u| format!("{u:.1} us"));
    let times = |r: Option<f64>| r.map_or("-".into(), |r| format!("x{r:.2}"));
    let t = &mut out.table;
    t.row(
        "soak",
        format!(
            "{} intervals; the first and last {} compared",
            d.intervals, d.edge
        ),
    );
    let drift = |a: Option<f64>, b: Option<f64>, r: Option<f64>| {
        format!("{} -> {} ({})", us(a), us(b), times(r))
    };
    t.row(
        "p50 drift",
        drift(d.first.p50_us, d.last.p50_us, d.p50_ratio()),
    );
    t.row(
        "p99 drift",
        format!(
            "{} (bound x{:.2})",
            drift(d.first.p99_us, d.last.p99_us, d.p99_ratio()),
            opts.max_p99_drift
        ),
    );
    match (d.rss_start_kib, d.rss_end_kib) {
        (Some(a), Some(b)) if server => t.row(
            "server RSS drift",
            format!(
                "{} KiB -> {} KiB ({:+} KiB; {} B/s by least squares, bound {} B/s)",
                group(a as u64),
                group(b as u64),
                b as i64 - a as i64,
                d.rss_growth_bps
                    .map_or("-".into(), |g| format!("{:+.0}", g)),
                group(opts.max_rss_growth.round() as u64)
            ),
        ),
        _ => t.row("server RSS drift", "- (give --server-pid PID)"),
    }
    out.json.set(
        "soak",
        Json::obj()
            .with("intervals", d.intervals)
            .with("edge_intervals", d.edge)
            .with("p50_first_us", d.first.p50_us)
            .with("p50_last_us", d.last.p50_us)
            .with("p50_ratio", d.p50_ratio())
            .with("p99_first_us", d.first.p99_us)
            .with("p99_last_us", d.last.p99_us)
            .with("p99_ratio", d.p99_ratio())
            .with("rss_start_kib", d.rss_start_kib)
            .with("rss_end_kib", d.rss_end_kib)
            .with("rss_growth_bytes_per_s", d.rss_growth_bps)
            .with("max_rss_growth", opts.max_rss_growth)
            .with("max_p99_drift", opts.max_p99_drift),
    );
    let problems = d.problems(opts);
    if let Json::O(fields) = &mut out.json {
        if let Some((_, Json::A(p))) = fields.iter_mut().find(|(k, _)| k == "problems") {
            p.extend(problems.iter().map(|s| Json::S(s.clone())));
        }
    }
    out.problems.extend(problems);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[]), None);
        assert_eq!(slope(&[(1.0, 5.0)]), None);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 7.0)]), None);
        let s = slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert!((s - 2.0).abs() < 1e-12, "{s}");
        // Noise around a slope of 1: (0,0) (1,2) (2,1) (3,3) -> 0.8.
        let s = slope(&[(0.0, 0.0), (1.0, 2.0), (2.0, 1.0), (3.0, 3.0)]).unwrap();
        assert!((s - 0.8).abs() < 1e-12, "{s}");
    }

    fn report(points: &[(u64, f64, f64, Option<u64>)], rss_start: Option<u64>) -> Value {
        let tl: Vec<Value> = points
            .iter()
            .enumerate()
            .map(|(i, &(count, p50, p99, rss))| {
                json!({"t_s": (i + 1) as f64, "count": count, "p50_us": p50, "p99_us": p99,
                       "max_us": p99 * 2.0, "server_rss_kib": rss})
            })
            .collect();
        json!({"timeline": tl, "server": rss_start.map(|r| json!({"rss_start_kib": r}))})
    }

    #[test]
    fn drift_compares_the_first_and_last_tenth() {
        // 20 intervals: the first 2 and the last 2 are compared.
        let mut pts = vec![(100, 10.0, 20.0, Some(1000)); 20];
        pts[0] = (100, 10.0, 10.0, Some(1000));
        pts[1] = (300, 10.0, 30.0, Some(1000));
        pts[18] = (100, 30.0, 100.0, Some(1000));
        pts[19] = (100, 30.0, 100.0, Some(1000));
        let d = Drift::of(&report(&pts, Some(1000)));
        assert_eq!((d.intervals, d.edge), (20, 2));
        // Weighted: (10*100 + 30*300) / 400 = 25.
        assert_eq!(d.first.p99_us, Some(25.0));
        assert_eq!(d.last.p99_us, Some(100.0));
        assert_eq!(d.p99_ratio(), Some(4.0));
        assert_eq!(d.p50_ratio(), Some(3.0));
        assert_eq!(d.rss_growth_bps, Some(0.0));
        let opts = SoakOpts {
            max_rss_growth: DEFAULT_MAX_RSS_GROWTH,
            max_p99_drift: DEFAULT_MAX_P99_DRIFT,
        };
        let p = d.problems(&opts);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("x4.00"), "{p:?}");
    }

    #[test]
    fn drift_finds_memory_growth() {
        // 1 KiB/s, from the window's start reading on, over 3 intervals.
        let pts = [
            (10, 5.0, 9.0, Some(1001)),
            (10, 5.0, 9.0, Some(1002)),
            (10, 5.0, 9.0, Some(1003)),
        ];
        let d = Drift::of(&report(&pts, Some(1000)));
        assert_eq!(d.edge, 1);
        assert_eq!(
            (d.rss_start_kib, d.rss_end_kib),
            (Some(1000.0), Some(1003.0))
        );
        let g = d.rss_growth_bps.unwrap();
        assert!((g - 1024.0).abs() < 1e-9, "{g}");
        let tight = SoakOpts {
            max_rss_growth: 1000.0,
            max_p99_drift: 2.0,
        };
        let p = d.problems(&tight);
        assert!(p.len() == 1 && p[0].contains("1,024 B/s"), "{p:?}");
        assert!(d
            .problems(&SoakOpts {
                max_rss_growth: 2000.0,
                max_p99_drift: 2.0
            })
            .is_empty());
    }

    #[test]
    fn drift_of_a_report_without_timeline_or_server_is_empty() {
        let d = Drift::of(&json!({"scenario": "echo"}));
        assert_eq!(d.intervals, 0);
        assert_eq!(d.p99_ratio(), None);
        assert_eq!(d.rss_growth_bps, None);
        // Empty intervals and missing readings count for nothing.
        let d = Drift::of(&report(&[(0, 1.0, 1.0, None), (5, 2.0, 4.0, None)], None));
        assert_eq!(d.first.p99_us, None);
        assert_eq!(d.last.p99_us, Some(4.0));
        assert_eq!(d.rss_start_kib, None);
        let opts = SoakOpts {
            max_rss_growth: 0.0,
            max_p99_drift: 1.0,
        };
        assert!(d.problems(&opts).is_empty());
    }
}
