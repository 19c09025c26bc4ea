//! `loadgen compare A.json B.json`: two reports side by side.
//!
//! A report is flattened to its numeric leaves, keyed by their path (`server.cpu_us`,
//! `latency.percentiles.p99`); every key present in either report gets a row with both
//! values and the ratio B/A. The options come first, in their own section, so the reader
//! sees what differed between the runs before reading what changed.
//!
//! What it leaves out: arrays (the `histogram` buckets, the `timeline`, `problems`; arrays
//! among the options are shown as JSON there), strings and booleans outside the options.
//! Rows are in key order (serde_json's map is sorted), which keeps a latency object's
//! figures together. It never fails on a report's shape: a figure missing from one side, or
//! `null` there, shows as `-`.

use serde_json::{Number, Value};
use std::collections::BTreeMap;

/// The top-level key holding the run's options.
const OPTIONS: &str = "options";

/// One numeric figure of the two reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The flattened key path, `server.cpu_us`.
    pub key: String,
    /// The value in report A, if it has one.
    pub a: Option<Number>,
    /// The value in report B, if it has one.
    pub b: Option<Number>,
}

impl Row {
    /// B/A, when both are present and A is neither 0 nor infinite.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.a.as_ref()?.as_f64()?, self.b.as_ref()?.as_f64()?)
    }
}

/// One option of the two runs, as text (`-` where a report lacks it).
#[derive(Debug, Clone, PartialEq)]
pub struct OptionRow {
    /// The option's key under `options` (`conns`, `duration_s`).
    pub key: String,
    /// Its value in A, as JSON text (strings unquoted).
    pub a: Option<String>,
    /// Its value in B.
    pub b: Option<String>,
}

impl OptionRow {
    /// The runs differ in this option.
    pub fn differs(&self) -> bool {
        self.a != self.b
    }
}

/// Two reports compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// A's `scenario` (`?` when it has none).
    pub scenario_a: String,
    /// B's `scenario`.
    pub scenario_b: String,
    /// A's `url` (empty when it has none).
    pub url_a: String,
    /// B's `url`.
    pub url_b: String,
    /// The options of both runs, in key order.
    pub options: Vec<OptionRow>,
    /// Every numeric figure present in either report, in key order.
    pub rows: Vec<Row>,
    /// Set when the two reports are of different scenarios (the comparison is still made).
    pub warning: Option<String>,
}

/// `b / a`, or `None` when `a` is 0 or either is not finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    let r = b / a;
    (a != 0.0 && r.is_finite()).then_some(r)
}

/// The numeric leaves of a report by key path, leaving out the top-level `options` and all
/// arrays; `null` leaves are kept as `None` (a figure the run could not measure).
pub fn flatten(report: &Value) -> BTreeMap<String, Option<Number>> {
    let mut out = BTreeMap::new();
    if let Value::Object(map) = report {
        for (k, v) in map {
            if k != OPTIONS {
                walk(v, k.clone(), &mut out);
            }
        }
    }
    out
}

fn walk(v: &Value, path: String, out: &mut BTreeMap<String, Option<Number>>) {
    match v {
        Value::Number(n) => {
            out.insert(path, Some(n.clone()));
        }
        Value::Null => {
            out.insert(path, None);
        }
        Value::Object(map) => {
            for (k, v) in map {
                walk(v, format!("{path}.{k}"), out);
            }
        }
        // Histograms, timelines, problem lists; strings and booleans are not figures.
        Value::Array(_) | Value::String(_) | Value::Bool(_) => {}
    }
}

/// A report's options as text, nested objects flattened like the figures.
fn options(report: &Value) -> BTreeMap<String, String> {
    fn walk_opts(v: &Value, path: String, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk_opts(v, p, out);
                }
            }
            Value::String(s) => {
                out.insert(path, s.clone());
            }
            other => {
                out.insert(path, other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Some(o) = report.get(OPTIONS) {
        walk_opts(o, String::new(), &mut out);
    }
    out
}

fn text_field(report: &Value, key: &str) -> Option<String> {
    report.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Compares two reports (any JSON values; a non-object has no figures).
pub fn compare(a: &Value, b: &Value) -> Comparison {
    let (fa, fb) = (flatten(a), flatten(b));
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    let rows = keys
        .into_iter()
        .map(|k| Row {
            key: k.clone(),
            a: fa.get(k).cloned().flatten(),
            b: fb.get(k).cloned().flatten(),
        })
        // Only figures: a key that is `null` on both sides measured nothing.
        .filter(|r| r.a.is_some() || r.b.is_some())
        .collect();

    let (oa, ob) = (options(a), options(b));
    let mut okeys: Vec<&String> = oa.keys().chain(ob.keys()).collect();
    okeys.sort();
    okeys.dedup();
    let options = okeys
        .into_iter()
        .map(|k| OptionRow {
            key: k.clone(),
            a: oa.get(k).cloned(),
            b: ob.get(k).cloned(),
        })
        .collect();

    let scenario_a = text_field(a, "scenario").unwrap_or_else(|| "?".into());
    let scenario_b = text_field(b, "scenario").unwrap_or_else(|| "?".into());
    let warning = (scenario_a != scenario_b).then(|| {
        format!(
            "A is a {scenario_a:?} report and B a {scenario_b:?} report: only the figures \
             both have are comparable"
        )
    });
    Comparison {
        url_a: text_field(a, "url").unwrap_or_default(),
        url_b: text_field(b, "url").unwrap_or_default(),
        scenario_a,
        scenario_b,
        options,
        rows,
        warning,
    }
}

/// A number for the table: integers as they are, other values to 4 significant digits.
pub fn fmt_num(n: &Number) -> String {
    if n.is_u64() || n.is_i64() {
        return n.to_string();
    }
    let Some(x) = n.as_f64() else {
        return n.to_string();
    };
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 9) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

impl Comparison {
    /// The table as printed: a header naming A and B, the options (marked where they
    /// differ), then the figures with their ratio B/A (`-` where a side is missing or A is 0).
    pub fn render(&self, name_a: &str, name_b: &str) -> String {
        let dash = || "-".to_owned();
        let mut lines: Vec<[String; 4]> = Vec::new();
        let options_at = lines.len();
        lines.push(["options".into(), "A".into(), "B".into(), String::new()]);
        for o in &self.options {
            lines.push([
                format!("  {}", o.key),
                o.a.clone().unwrap_or_else(dash),
                o.b.clone().unwrap_or_else(dash),
                if o.differs() {
                    "differs".into()
                } else {
                    String::new()
                },
            ]);
        }
        let figures_at = lines.len();
        lines.push(["figures".into(), "A".into(), "B".into(), "B/A".into()]);
        for r in &self.rows {
            lines.push([
                format!("  {}", r.key),
                r.a.as_ref().map_or_else(dash, fmt_num),
                r.b.as_ref().map_or_else(dash, fmt_num),
                r.ratio().map_or_else(dash, |x| format!("{x:.2}")),
            ]);
        }

        let width = |i: usize| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (w0, w1, w2) = (width(0), width(1), width(2));
        let url = |u: &str| {
            if u.is_empty() {
                String::new()
            } else {
                format!(", {u}")
            }
        };
        let mut out = format!(
            "loadgen compare\n  A  {name_a} ({}{})\n  B  {name_b} ({}{})\n",
            self.scenario_a,
            url(&self.url_a),
            self.scenario_b,
            url(&self.url_b)
        );
        for (i, [k, a, b, r]) in lines.iter().enumerate() {
            if i == options_at || i == figures_at {
                out.push('\n');
            }
            let line = format!("{k:<w0$}  {a:>w1$}  {b:>w2$}  {r}");
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(conns: u64, p99: u64, cpu: Option<f64>) -> Value {
        json!({
            "scenario": "echo",
            "url": "ws://127.0.0.1:9001/",
            "options": {"conns": conns, "size": 64, "text": false, "rate": null, "pin": [1, 2]},
            "connected": conns,
            "msgs_per_s": 1234.5678,
            "latency": {
                "unit": "ns", "count": 100, "min": 900, "mean": 1500.25, "max": 9000,
                "percentiles": {"p50": 1000, "p99": p99, "max": 9000},
                "histogram": [[1000, 50], [2000, 49], [9000, 1]]
            },
            "server": {"cpu_us": cpu, "rss_delta_bytes": -4096},
            "timeline": [{"t_s": 1.0, "count": 10, "p50_us": 1.0}],
            "problems": ["none really"],
            "latency_kind": "round_trip"
        })
    }

    #[test]
    fn flatten_keeps_numeric_leaves_by_path() {
        let f = flatten(&sample(4, 5000, Some(12.5)));
        let keys: Vec<&str> = f.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "connected",
                "latency.count",
                "latency.max",
                "latency.mean",
                "latency.min",
                "latency.percentiles.max",
                "latency.percentiles.p50",
                "latency.percentiles.p99",
                "msgs_per_s",
                "server.cpu_us",
                "server.rss_delta_bytes",
            ]
        );
        assert_eq!(f["latency.percentiles.p99"], Some(Number::from(5000u64)));
        assert_eq!(f["server.rss_delta_bytes"], Some(Number::from(-4096i64)));
    }

    #[test]
    fn flatten_skips_options_arrays_and_text_and_keeps_nulls_as_none() {
        let f = flatten(&sample(4, 5000, None));
        assert!(f.keys().all(|k| !k.starts_with("options")));
        assert!(f.keys().all(|k| !k.contains("histogram")));
        assert!(f.keys().all(|k| !k.starts_with("timeline")));
        assert!(!f.contains_key("problems") && !f.contains_key("latency_kind"));
        assert!(!f.contains_key("latency.unit"));
        assert_eq!(f["server.cpu_us"], None);
        assert!(flatten(&json!([1, 2])).is_empty());
    }

    #[test]
    fn ratio_is_b_over_a_and_undefined_for_zero_a() {
        assert_eq!(ratio(4.0, 4.0), Some(1.0));
        assert_eq!(ratio(2.0, 5.0), Some(2.5));
        assert_eq!(ratio(0.0, 5.0), None);
        assert_eq!(ratio(0.0, 0.0), None);
        assert_eq!(ratio(-2.0, 1.0), Some(-0.5));
    }

    #[test]
    fn compare_lines_up_both_reports() {
        let c = compare(&sample(4, 5000, Some(10.0)), &sample(8, 7500, Some(15.0)));
        assert_eq!(c.warning, None);
        let row = |k: &str| c.rows.iter().find(|r| r.key == k).unwrap().clone();
        assert_eq!(row("connected").ratio(), Some(2.0));
        assert_eq!(row("latency.percentiles.p99").ratio(), Some(1.5));
        assert_eq!(row("server.cpu_us").ratio(), Some(1.5));
        let conns = c.options.iter().find(|o| o.key == "conns").unwrap();
        assert!(conns.differs());
        let size = c.options.iter().find(|o| o.key == "size").unwrap();
        assert!(!size.differs());
        let pin = c.options.iter().find(|o| o.key == "pin").unwrap();
        assert_eq!(pin.a.as_deref(), Some("[1,2]"));
    }

    #[test]
    fn missing_keys_and_nulls_show_as_dashes() {
        let mut b = sample(4, 5000, None);
        b["only_in_b"] = json!(3);
        b.as_object_mut().unwrap().remove("msgs_per_s");
        let c = compare(&sample(4, 5000, Some(10.0)), &b);
        let row = |k: &str| c.rows.iter().find(|r| r.key == k).unwrap().clone();
        assert_eq!(row("only_in_b").a, None);
        assert_eq!(row("only_in_b").ratio(), None);
        assert_eq!(row("msgs_per_s").b, None);
        assert_eq!(row("server.cpu_us").b, None);
        let text = c.render("a.json", "b.json");
        let line = |k: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{k} ")))
                .unwrap_or_else(|| panic!("{k} in {text}"))
                .to_owned()
        };
        assert!(line("only_in_b")
            .split_whitespace()
            .eq(["only_in_b", "-", "3", "-"]));
        assert!(line("msgs_per_s")
            .split_whitespace()
            .eq(["msgs_per_s", "1235", "-", "-"]));
        assert!(line("connected")
            .split_whitespace()
            .eq(["connected", "4", "4", "1.00"]));
        // null on both sides: nothing measured, no row.
        let both_null = compare(&sample(4, 1, None), &sample(4, 1, None));
        assert!(both_null.rows.iter().all(|r| r.key != "server.cpu_us"));
    }

    #[test]
    fn zero_in_a_has_no_ratio() {
        let a = json!({"scenario": "echo", "lost": 0});
        let b = json!({"scenario": "echo", "lost": 3});
        let c = compare(&a, &b);
        assert_eq!(c.rows[0].ratio(), None);
        let text = c.render("a", "b");
        let line = text.lines().find(|l| l.contains("lost")).unwrap();
        assert!(
            line.split_whitespace().eq(["lost", "0", "3", "-"]),
            "{text}"
        );
    }

    #[test]
    fn different_scenarios_warn_but_still_compare() {
        let a = json!({"scenario": "connect", "closed_clean": 10});
        let b = json!({"scenario": "echo", "closed_clean": 20});
        let c = compare(&a, &b);
        let w = c.warning.clone().unwrap();
        assert!(w.contains("\"connect\"") && w.contains("\"echo\""), "{w}");
        assert_eq!(c.rows[0].ratio(), Some(2.0));
        let c = compare(&json!({}), &b);
        assert!(c.warning.unwrap().contains("\"?\""));
    }

    #[test]
    fn bad_shapes_do_not_panic() {
        for v in [json!(null), json!([1]), json!("x"), json!({"options": 3})] {
            let c = compare(&v, &sample(1, 1, None));
            let _ = c.render("a", "b");
        }
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(fmt_num(&Number::from(1234567u64)), "1234567");
        assert_eq!(fmt_num(&Number::from(-5i64)), "-5");
        let f = |x: f64| fmt_num(&Number::from_f64(x).unwrap());
        assert_eq!(f(1234.5678), "1235");
        assert_eq!(f(12.345678), "12.35");
        assert_eq!(f(0.0123456), "0.01235");
        assert_eq!(f(2.5), "2.5");
        assert_eq!(f(0.0), "0");
    }
}
