//! One SVG per report: a title (scenario, URL, options) over two charts.
//!
//! - **Latency over time**, from the report's `timeline` (p50, p99 and max per interval, in
//!   microseconds, against seconds since the measured window opened). Reports without a
//!   timeline (connect, or echo/fanout reports written before it existed) get a caption
//!   saying so instead.
//! - **The percentile curve** of the report's main latency histogram (`latency` for echo
//!   and fanout, `handshake` for connect), drawn as HdrHistogram's "percentile
//!   distribution": the x axis is `log10(1 / (1 - p))`, so 0%, 90%, 99%, 99.9%, 99.99% are
//!   evenly spaced and the tail gets the room it deserves.
//!
//! Charts are drawn with plotters' SVG backend, which writes text as `<text>` elements and
//! leaves fonts to the viewer (no font files or system libraries are read). Nothing here
//! panics on a report of an unexpected shape: a value that is missing or not a number is
//! left out, and a chart with nothing to draw says so.

use crate::error::Error;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::path::Path;

/// The whole image, pixels.
const SIZE: (u32, u32) = (1000, 900);
/// Height of the title band above the charts, pixels.
const TITLE_H: u32 = 70;
/// The font family asked of the viewer.
const FONT: &str = "sans-serif";

/// Errors from drawing; the SVG backend's only error is I/O, and it writes to a string.
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// A drawing area of the SVG being built.
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws `report` as one SVG at `path` (see the module doc for what it shows).
///
/// # Errors
///
/// [`Error::Report`] naming `path` when drawing or writing fails.
pub fn write_svg(report: &Value, path: &Path) -> Result<(), Error> {
    let fail = |why: String| Error::Report {
        path: path.display().to_string(),
        why,
    };
    let svg = render(report).map_err(|e| fail(format!("drawing the plot failed: {e}")))?;
    std::fs::write(path, svg).map_err(|e| fail(e.to_string()))
}

/// The SVG document for `report`.
fn render(report: &Value) -> Result<String, Box<dyn std::error::Error>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, subtitle) = titles(report);
        root.draw(&Text::new(title, (20, 14), (FONT, 24).into_font()))?;
        root.draw(&Text::new(subtitle, (20, 44), (FONT, 15).into_font()))?;
        let (_, body) = root.split_vertically(TITLE_H);
        let (top, bottom) = body.split_vertically((SIZE.1 - TITLE_H) / 2);
        draw_timeline(&top, report)?;
        draw_percentiles(&bottom, report)?;
        root.present()?;
    }
    Ok(svg)
}

/// `loadgen echo  ws://127.0.0.1:9001/` and the options as `key=value` pairs.
fn titles(report: &Value) -> (String, String) {
    let field = |k: &str| report.get(k).and_then(Value::as_str).unwrap_or("?");
    let title = format!("loadgen {}   {}", field("scenario"), field("url"));
    let mut opts = Vec::new();
    if let Some(Value::Object(map)) = report.get("options") {
        for (k, v) in map {
            // The server's pid and the CPU list say nothing about the load.
            if matches!(v, Value::Null | Value::Array(_)) || k == "server_pid" {
                continue;
            }
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            opts.push(format!("{k}={v}"));
        }
    }
    (title, opts.join("  "))
}

/// One interval of the report's `timeline`, figures in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelinePoint {
    /// End of the interval, seconds since the measured window opened.
    pub t_s: f64,
    /// Median latency in the interval.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// Highest latency.
    pub max_us: Option<f64>,
    /// Latencies in the interval.
    pub count: Option<u64>,
    /// The server's RSS at the interval's end, KiB (`null` without `--server-pid`).
    pub server_rss_kib: Option<f64>,
}

/// The report's `timeline`, or `None` when it has none (or an empty one). Entries without
/// a finite `t_s` are skipped; figures that are missing, `null` or not finite are `None`.
pub fn timeline(report: &Value) -> Option<Vec<TimelinePoint>> {
    let num = |e: &Value, k: &str| e.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
    let points: Vec<TimelinePoint> = report
        .get("timeline")?
        .as_array()?
        .iter()
        .filter_map(|e| {
            Some(TimelinePoint {
                t_s: num(e, "t_s")?,
                p50_us: num(e, "p50_us"),
                p99_us: num(e, "p99_us"),
                max_us: num(e, "max_us"),
                count: e.get("count").and_then(Value::as_u64),
                server_rss_kib: num(e, "server_rss_kib"),
            })
        })
        .collect();
    (!points.is_empty()).then_some(points)
}

fn caption_font() -> TextStyle<'static> {
    (FONT, 18).into_font().color(&BLACK)
}

/// Draws a chart's caption and, in its middle, why there is nothing to draw.
fn draw_empty(area: &Area<'_>, caption: &str, why: &str) -> DrawResult {
    let inner = area.titled(caption, caption_font())?;
    let (w, h) = inner.dim_in_pixel();
    let style = (FONT, 16)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    inner.draw(&Text::new(why, (w as i32 / 2, h as i32 / 2), style))?;
    Ok(())
}

/// Chart (a): p50, p99 and max per timeline interval.
fn draw_timeline(area: &Area<'_>, report: &Value) -> DrawResult {
    let caption = "latency over time";
    let Some(points) = timeline(report) else {
        return draw_empty(
            area,
            caption,
            "no timeline in this report: nothing to draw over time",
        );
    };
    type Pick = fn(&TimelinePoint) -> Option<f64>;
    let series: [(&str, RGBColor, Pick); 3] = [
        ("p50", BLUE, |p| p.p50_us),
        ("p99", RGBColor(230, 120, 0), |p| p.p99_us),
        ("max", RED, |p| p.max_us),
    ];
    let t_max = points.iter().map(|p| p.t_s).fold(0.0, f64::max);
    let y_max = points
        .iter()
        .flat_map(|p| [p.p50_us, p.p99_us, p.max_us])
        .flatten()
        .fold(0.0, f64::max);
    let mut chart = chart(area, caption, nonzero(t_max), y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the measured window opened")
        .y_desc("latency (us)")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    for (name, color, pick) in series {
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|p| Some((p.t_s, pick(p)?)))
            .collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The report's main latency object: `latency` (echo, fanout), else `handshake` (connect),
/// else the first top-level object with a `histogram` array. Returns its key too.
pub fn main_latency(report: &Value) -> Option<(&str, &Value)> {
    let is_latency = |v: &Value| v.get("histogram").is_some_and(Value::is_array);
    let map = report.as_object()?;
    ["latency", "handshake"]
        .iter()
        .find_map(|&k| map.get_key_value(k).filter(|(_, v)| is_latency(v)))
        .or_else(|| map.iter().find(|(_, v)| is_latency(v)))
        .map(|(k, v)| (k.as_str(), v))
}

/// A latency object's `[value_ns, count]` buckets; malformed entries are skipped.
pub fn buckets(latency: &Value) -> Vec<(u64, u64)> {
    let Some(items) = latency.get("histogram").and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|b| match b.as_array()?.as_slice() {
            [v, c] => Some((v.as_u64()?, c.as_u64()?)),
            _ => None,
        })
        .collect()
}

/// The percentile curve of a histogram as a step line: points `(p, latency_us)` with `p`
/// the fraction of samples (0 to 1) below the point.
///
/// Each bucket is a horizontal step from the fraction of samples below it to the fraction
/// at or below it. The last step ends at 100%, which is at infinity on the
/// `log10(1 / (1 - p))` axis, so it is cut at `1 - 1 / (10 N)` (one decade past the finest
/// percentile N samples resolve), where the highest value stays visible. Buckets may come
/// in any order; empty ones are ignored. No samples: no points.
pub fn percentile_curve(buckets: &[(u64, u64)]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(u64, u64)> = buckets.iter().copied().filter(|b| b.1 > 0).collect();
    sorted.sort_unstable();
    // u128: a report's counts are not trusted to sum within u64.
    let total: u128 = sorted.iter().map(|b| u128::from(b.1)).sum();
    if total == 0 {
        return Vec::new();
    }
    let n = total as f64;
    let cap = 1.0 - 1.0 / (10.0 * n);
    let mut below: u128 = 0;
    let mut points = Vec::with_capacity(sorted.len() * 2);
    for (value_ns, count) in sorted {
        let us = value_ns as f64 / 1e3;
        points.push((below as f64 / n, us));
        below += u128::from(count);
        points.push(((below as f64 / n).min(cap), us));
    }
    points
}

/// `p` (0 to 1) on the percentile axis: `log10(1 / (1 - p))`; 0% is 0, 90% is 1, 99% is 2.
pub fn decades(p: f64) -> f64 {
    -(1.0 - p).log10()
}

/// The percentile at `x` decades, as a label: `0%`, `90%`, `99.9%`.
fn percent_label(x: f64) -> String {
    let digits = (x.round() as i64 - 2).clamp(0, 9) as usize;
    format!("{:.digits$}%", 100.0 * (1.0 - 10f64.powf(-x)))
}

/// Chart (b): the percentile curve of the main latency histogram.
fn draw_percentiles(area: &Area<'_>, report: &Value) -> DrawResult {
    let Some((key, lat)) = main_latency(report) else {
        return draw_empty(
            area,
            "latency by percentile",
            "no latency histogram in this report",
        );
    };
    let curve = percentile_curve(&buckets(lat));
    let kind = report
        .get("latency_kind")
        .and_then(Value::as_str)
        .filter(|_| key == "latency")
        .map_or_else(String::new, |k| format!(", {k}"));
    let samples: u64 = buckets(lat)
        .iter()
        .map(|b| b.1)
        .fold(0, u64::saturating_add);
    let caption = format!("latency by percentile ({key}{kind}, {samples} samples)");
    if curve.is_empty() {
        return draw_empty(area, &caption, "the histogram is empty: no samples");
    }
    let points: Vec<(f64, f64)> = curve.iter().map(|&(p, us)| (decades(p), us)).collect();
    let x_end = points
        .iter()
        .map(|p| p.0)
        .fold(0.0, f64::max)
        .ceil()
        .max(2.0);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let mut chart = chart(area, &caption, x_end, y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        // One label a decade: with the range a whole number of decades, plotters puts them
        // on the integers, that is on 0%, 90%, 99%, ...
        .x_labels(x_end as usize + 1)
        .x_label_formatter(&|x| percent_label(*x))
        .draw()?;
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
    Ok(())
}

/// `x`, or 1 when it is not above 0 (a chart's range must not be empty).
/// One chart's frame in `area`: x from 0 to `x_end`, y from 0 to a little above `y_max`.
fn chart<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    x_end: f64,
    y_max: f64,
) -> Result<
    ChartContext<
        'a,
        SVGBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    DrawingAreaErrorKind<std::io::Error>,
> {
    ChartBuilder::on(area)
        .caption(caption, caption_font())
        .margin(15)
        // Room for the last x label, centred on the right edge.
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..x_end, 0.0..nonzero(y_max * 1.05))
}

fn nonzero(x: f64) -> f64 {
    if x > 0.0 && x.is_finite() {
        x
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentile_curve_steps_through_the_buckets() {
        // 100 samples: 90 at 1 us, 9 at 2 us, 1 at 5 us (given out of order).
        let curve = percentile_curve(&[(2000, 9), (1000, 90), (7000, 0), (5000, 1)]);
        let want = [
            (0.0, 1.0),
            (0.9, 1.0),
            (0.9, 2.0),
            (0.99, 2.0),
            (0.99, 5.0),
            (0.999, 5.0), // 100%, cut one decade past 1 - 1/100
        ];
        assert_eq!(curve.len(), want.len(), "{curve:?}");
        for (got, want) in curve.iter().zip(want) {
            assert!(close(got.0, want.0) && close(got.1, want.1), "{curve:?}");
        }
        let x: Vec<f64> = curve.iter().map(|p| decades(p.0)).collect();
        assert!(
            close(x[1], 1.0) && close(x[3], 2.0) && close(x[5], 3.0),
            "{x:?}"
        );
    }

    #[test]
    fn percentile_curve_of_nothing_is_empty() {
        assert!(percentile_curve(&[]).is_empty());
        assert!(percentile_curve(&[(1000, 0)]).is_empty());
        // Counts that would overflow u64 when summed.
        let c = percentile_curve(&[(1, u64::MAX), (2, u64::MAX)]);
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn percent_labels_match_the_hdr_ticks() {
        let labels: Vec<String> = (0..5).map(|x| percent_label(f64::from(x))).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%"]);
    }

    #[test]
    fn buckets_skip_malformed_entries() {
        let lat = json!({"histogram": [[1000, 3], [2000], "x", [-1, 2], [3000, 1.5], [4000, 2]]});
        assert_eq!(buckets(&lat), [(1000, 3), (4000, 2)]);
        assert!(buckets(&json!({"histogram": 3})).is_empty());
    }

    #[test]
    fn main_latency_prefers_latency_then_handshake() {
        let h = json!({"histogram": []});
        let echo = json!({"service_time": h, "latency": h});
        assert_eq!(main_latency(&echo).unwrap().0, "latency");
        let connect = json!({"handshake": h, "server_ramp": {}});
        assert_eq!(main_latency(&connect).unwrap().0, "handshake");
        let other = json!({"latency": null, "delivery": h});
        assert_eq!(main_latency(&other).unwrap().0, "delivery");
        assert!(main_latency(&json!({"latency": 3})).is_none());
        assert!(main_latency(&json!([1])).is_none());
    }

    #[test]
    fn timeline_is_read_leniently() {
        let r = json!({"timeline": [
            {"t_s": 1.0, "count": 10, "p50_us": 12.5, "p99_us": 40.0, "max_us": 80.0, "server_rss_kib": null},
            {"count": 3},
            {"t_s": 2.0, "p50_us": null, "p99_us": "x"}
        ]});
        let t = timeline(&r).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].p99_us, Some(40.0));
        assert_eq!((t[1].t_s, t[1].p50_us, t[1].p99_us), (2.0, None, None));
        assert!(timeline(&json!({})).is_none());
        assert!(timeline(&json!({"timeline": []})).is_none());
        assert!(timeline(&json!({"timeline": {}})).is_none());
    }

    fn sample(with_timeline: bool) -> Value {
        let mut r = json!({
            "scenario": "echo",
            "url": "ws://127.0.0.1:9001/",
            "options": {"conns": 4, "size": 64, "rate": null, "pin": [], "server_pid": 7},
            "latency_kind": "round_trip",
            "latency": {
                "unit": "ns", "count": 100, "min": 1000, "mean": 1200.0, "max": 5000,
                "percentiles": {"p50": 1000, "max": 5000},
                "histogram": [[1000, 90], [2000, 9], [5000, 1]]
            }
        });
        if with_timeline {
            r["timeline"] = json!([
                {"t_s": 1.0, "count": 50, "p50_us": 1.0, "p99_us": 2.0, "max_us": 5.0, "server_rss_kib": 5678},
                {"t_s": 2.0, "count": 50, "p50_us": 1.1, "p99_us": 2.2, "max_us": 4.0, "server_rss_kib": null}
            ]);
        }
        r
    }

    fn svg_of(report: &Value, name: &str) -> String {
        let p =
            std::env::temp_dir().join(format!("loadgen-plot-{}-{name}.svg", std::process::id()));
        write_svg(report, &p).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        svg
    }

    /// Polylines (plotters draws a line series as one) in the SVG.
    fn lines(svg: &str) -> usize {
        svg.matches("<polyline").count()
    }

    #[test]
    fn write_svg_draws_both_charts() {
        let svg = svg_of(&sample(true), "both");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("loadgen echo"), "title");
        assert!(
            svg.contains("conns=4") && !svg.contains("server_pid"),
            "options"
        );
        assert!(svg.contains("latency over time") && svg.contains("p99"));
        assert!(svg.contains("99.9%"), "percentile ticks");
        assert!(svg.contains("round_trip, 100 samples"));
        // Three timeline series and the percentile curve.
        assert!(lines(&svg) >= 4, "{}", lines(&svg));
    }

    #[test]
    fn write_svg_without_timeline_says_so() {
        let svg = svg_of(&sample(false), "no-timeline");
        assert!(svg.contains("no timeline in this report"));
        assert!(lines(&svg) >= 1);
        assert!(svg.contains("99%"));
    }

    #[test]
    fn write_svg_takes_any_object() {
        for r in [
            json!({}),
            json!({"latency": {"histogram": []}}),
            json!([1, 2]),
        ] {
            let svg = svg_of(&r, "odd");
            assert!(svg.contains("<svg"));
        }
    }

    #[test]
    fn write_svg_to_a_missing_directory_names_the_path() {
        let p = std::env::temp_dir().join("loadgen-no-such-dir-4f1c/plot.svg");
        let e = write_svg(&sample(false), &p).unwrap_err().to_string();
        assert!(e.contains("loadgen-no-such-dir-4f1c/plot.svg"), "{e}");
    }
}
