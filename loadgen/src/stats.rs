//! Counting and summarising: latency histograms, failure tallies, the printed table.

use crate::json::Json;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

/// Percentiles printed and reported.
pub const PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

/// A latency histogram in nanoseconds (1 ns to 1 hour, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        Latency(
            Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static bounds are valid"),
        )
    }

    /// Records one latency (clamped to the histogram's range).
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// An empty histogram with 2 significant digits (1% resolution) instead of 3: about a
    /// tenth of the memory (~36 KiB), for the per-interval histograms of a timeline, of
    /// which every worker holds up to a few hundred.
    pub fn coarse() -> Latency {
        Latency(
            Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("static bounds are valid"),
        )
    }

    /// A histogram back from what [`Latency::to_json`] wrote (its `histogram` buckets,
    /// `[value_ns, count]`); empty when there are none.
    pub fn from_json(v: &serde_json::Value) -> Latency {
        let mut h = Latency::new();
        if let Some(b) = v.get("histogram") {
            h.add_buckets(b);
        }
        h
    }

    /// Adds the counts of a `[[value_ns, count], ...]` array (what
    /// [`Latency::buckets_json`] wrote); malformed entries are skipped.
    pub fn add_buckets(&mut self, buckets: &serde_json::Value) {
        for b in buckets.as_array().into_iter().flatten() {
            if let (Some(value), Some(n)) = (
                b.get(0).and_then(serde_json::Value::as_u64),
                b.get(1).and_then(serde_json::Value::as_u64),
            ) {
                let _ = self.0.record_n(value.clamp(1, self.0.high()), n);
            }
        }
    }

    /// Every recorded bucket as `[value_ns, count]`.
    pub fn buckets_json(&self) -> Json {
        Json::A(
            self.0
                .iter_recorded()
                .map(|v| {
                    Json::A(vec![
                        v.value_iterated_to().into(),
                        v.count_at_value().into(),
                    ])
                })
                .collect(),
        )
    }

    /// The highest value recorded, ns (0 when empty).
    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: this cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at percentile `p` (0-100), ns.
    pub fn percentile(&self, p: f64) -> u64 {
        self.0.value_at_percentile(p)
    }

    /// `p50 12.3  p90 ...` in microseconds, or `-` when empty.
    pub fn summary_us(&self) -> String {
        if self.count() == 0 {
            return "-".into();
        }
        PERCENTILES
            .iter()
            .map(|&p| format!("{} {}", pname(p), us(self.percentile(p))))
            .collect::<Vec<_>>()
            .join("  ")
    }

    /// Percentiles, mean, and every recorded bucket as `[value_ns, count]`.
    pub fn to_json(&self) -> Json {
        let mut pct = Json::obj();
        for &p in &PERCENTILES {
            pct.set(&pname(p), self.percentile(p));
        }
        Json::obj()
            .with("unit", "ns")
            .with("count", self.count())
            .with("min", if self.count() > 0 { self.0.min() } else { 0 })
            .with("mean", self.0.mean())
            .with("max", self.0.max())
            .with("percentiles", pct)
            .with("histogram", self.buckets_json())
    }
}

fn pname(p: f64) -> String {
    if p >= 100.0 {
        "max".into()
    } else {
        format!("p{p}")
    }
}

/// Nanoseconds as microseconds with a sensible precision.
pub fn us(ns: u64) -> String {
    let u = ns as f64 / 1e3;
    if u < 10.0 {
        format!("{u:.2}")
    } else if u < 1000.0 {
        format!("{u:.1}")
    } else {
        group(u.round() as u64)
    }
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Connection failures by reason.
#[derive(Debug, Clone, Default)]
pub struct Failures(pub BTreeMap<String, u64>);

impl Failures {
    /// Counts one failure.
    pub fn add(&mut self, label: String) {
        *self.0.entry(label).or_default() += 1;
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: &Failures) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_default() += v;
        }
    }

    /// A tally back from what [`Failures::to_json`] wrote.
    pub fn from_json(v: Option<&serde_json::Value>) -> Failures {
        let mut f = Failures::default();
        if let Some(o) = v.and_then(serde_json::Value::as_object) {
            for (k, n) in o {
                *f.0.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        f
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// `refused 3, http 404 1`, or `none`.
    pub fn summary(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|(k, v)| format!("{k} {}", group(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `{ "refused": 3, ... }`
    pub fn to_json(&self) -> Json {
        Json::O(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Json::U(*v)))
                .collect(),
        )
    }
}

/// A two-column table printed at the end of a run.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    /// Adds a row.
    pub fn row(&mut self, name: &str, value: impl Into<String>) {
        self.rows.push((name.to_owned(), value.into()));
    }

    /// The table, names left-aligned in one column.
    pub fn render(&self) -> String {
        let w = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut s = String::new();
        for (k, v) in &self.rows {
            s.push_str(&format!("  {k:<w$}  {v}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }

    #[test]
    fn latency_and_failures_survive_json() {
        let mut l = Latency::new();
        for ns in [1_000u64, 2_000, 2_000, 50_000, 3_000_000] {
            l.record(ns);
        }
        let v: serde_json::Value = serde_json::from_str(&l.to_json().to_string()).unwrap();
        let back = Latency::from_json(&v);
        assert_eq!(back.count(), 5);
        for p in PERCENTILES {
            assert_eq!(back.percentile(p), l.percentile(p), "p{p}");
        }
        let mut f = Failures::default();
        f.add("refused".into());
        f.add("refused".into());
        f.add("timeout".into());
        let v: serde_json::Value = serde_json::from_str(&f.to_json().to_string()).unwrap();
        let back = Failures::from_json(Some(&v));
        assert_eq!(back.0, f.0);
    }

    #[test]
    fn latency_percentiles() {
        let mut l = Latency::new();
        for i in 1..=1000u64 {
            l.record(i * 1000);
        }
        assert_eq!(l.count(), 1000);
        let p50 = l.percentile(50.0);
        assert!((499_000..=501_000).contains(&p50), "{p50}");
        assert!(l.percentile(100.0) >= 999_000);
        let mut m = Latency::new();
        m.merge(&l);
        assert_eq!(m.count(), 1000);
    }
}
