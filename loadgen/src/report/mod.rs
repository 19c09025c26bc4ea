//! Reading `--json` reports back: `loadgen compare A.json B.json` prints two runs side by
//! side, and `loadgen plot` (or `--plot` on any scenario) draws one as an SVG.
//!
//! | module | what |
//! |---|---|
//! | [`compare`] | flattening a report to its numeric figures, the side-by-side table |
//! | [`plot`] | the SVG: latency over time (the `timeline`) and the percentile curve |
//!
//! Reports are read into an untyped [`serde_json::Value`], not into structs: each scenario
//! has its own keys, and reports grow new ones (the optional `timeline`), so both tools must
//! take reports written by older and newer loadgens alike. Neither panics on a report it does
//! not expect: a missing figure shows as `-`, a missing chart as a caption saying so. The
//! helpers here are what `main` dispatches to, so that `main.rs` holds only the wiring.

pub mod compare;
pub mod plot;

use crate::error::Error;
use crate::json::Json;
use serde_json::Value;
use std::path::Path;

/// Reads a saved report: a JSON object.
///
/// # Errors
///
/// [`Error::ReadReport`], naming the path, when the file cannot be read, is not JSON, or
/// its top level is not an object.
pub fn load(path: &Path) -> Result<Value, Error> {
    let bad = |why: String| Error::ReadReport {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    if !value.is_object() {
        return Err(bad(
            "not a loadgen report (its top level is not a JSON object)".into(),
        ));
    }
    Ok(value)
}

/// `loadgen compare A B`: prints the table to stdout and a scenario mismatch, if any, as a
/// warning line to stderr.
///
/// # Errors
///
/// Either report cannot be read ([`load`]).
pub fn compare_files(a: &Path, b: &Path) -> Result<(), Error> {
    let ra = load(a)?;
    let rb = load(b)?;
    let cmp = compare::compare(&ra, &rb);
    if let Some(w) = &cmp.warning {
        eprintln!("loadgen: warning: {w}");
    }
    print!(
        "{}",
        cmp.render(&a.display().to_string(), &b.display().to_string())
    );
    Ok(())
}

/// `loadgen plot REPORT --out FILE.svg`: draws a saved report.
///
/// # Errors
///
/// The report cannot be read ([`load`]) or the SVG cannot be written ([`Error::Report`]).
pub fn plot_file(report: &Path, out: &Path) -> Result<(), Error> {
    plot::write_svg(&load(report)?, out)
}

/// `--plot FILE.svg`: draws the report of the run that just ended.
///
/// The report is rendered to text and parsed back, so a plot of a fresh run and of the same
/// run's saved `--json` file are drawn from the very same value.
///
/// # Errors
///
/// [`Error::Report`] when the SVG cannot be written.
pub fn plot_outcome(json: &Json, out: &Path) -> Result<(), Error> {
    let value = parse_back(json).map_err(|why| Error::Report {
        path: out.display().to_string(),
        why,
    })?;
    plot::write_svg(&value, out)
}

/// A report of this process as the [`Value`] a saved one is read into, so that what is
/// drawn or analysed (`--plot`, `soak`, `ramp`) is what `--json` saves.
///
/// # Errors
///
/// Why the text did not parse back (the writer only writes JSON, so this is a bug).
pub fn parse_back(json: &Json) -> Result<Value, String> {
    serde_json::from_str(&json.to_string())
        .map_err(|e| format!("the report did not parse back as JSON ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file under the temp dir, unique to this process and test.
    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("loadgen-report-{}-{name}", std::process::id()))
    }

    #[test]
    fn load_names_the_path_when_the_file_is_missing() {
        let p = temp("missing.json");
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(e.starts_with("cannot read report"), "{e}");
    }

    #[test]
    fn load_rejects_text_that_is_not_json() {
        let p = temp("not-json.json");
        std::fs::write(&p, "p50 12.3 p99 45.6\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        let _ = std::fs::remove_file(&p);
        assert!(e.contains("not valid JSON"), "{e}");
        assert!(e.contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn load_rejects_json_that_is_not_an_object() {
        let p = temp("array.json");
        std::fs::write(&p, "[1, 2, 3]").unwrap();
        let e = load(&p).unwrap_err().to_string();
        let _ = std::fs::remove_file(&p);
        assert!(e.contains("not a loadgen report"), "{e}");
    }

    #[test]
    fn plot_outcome_round_trips_the_writer() {
        let json = Json::obj()
            .with("scenario", "echo")
            .with("url", "ws://127.0.0.1:9001/")
            .with("nan", f64::NAN);
        let p = temp("outcome.svg");
        plot_outcome(&json, &p).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        assert!(svg.contains("<svg"), "{svg}");
    }
}
