//! The live progress line on standard error: connections opened and failed while
//! connecting, then the window's elapsed time, the messages (or deliveries) so far and the
//! current rate.
//!
//! Drawn with indicatif, and only when standard error is a terminal and this process is
//! not a `--procs` shard: tests, pipes and `--json` users see nothing. The main thread
//! draws it from counters the workers already keep ([`crate::scenario::Control`]'s
//! `opened`, `failed`, and `progress`, which a worker bumps once per loop turn, not per
//! message), so the hot path pays one relaxed atomic add per turn. The line is cleared
//! before the report is printed.

use crate::stats::group;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// The rate shown is measured over at least this long.
const RATE_SPAN: Duration = Duration::from_millis(500);

/// The progress line of one run (hidden when stderr is not a terminal).
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    /// What the count counts, plural: `echoes`, `deliveries`.
    unit: &'static str,
    /// The last (time, count) the rate was measured from.
    last: Cell<Option<(Instant, u64)>>,
    /// The rate shown, per second (`None` until measured over [`RATE_SPAN`]).
    rate: Cell<Option<f64>>,
}

impl Progress {
    /// A progress line counting `unit`, shown if standard error is a terminal and `shard`
    /// is false.
    pub fn new(unit: &'static str, shard: bool) -> Progress {
        let bar = (!shard && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            unit,
            last: Cell::new(None),
            rate: Cell::new(None),
        }
    }

    /// A line that never shows.
    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            unit: "",
            last: Cell::new(None),
            rate: Cell::new(None),
        }
    }

    /// Whether the line is drawn.
    pub fn is_shown(&self) -> bool {
        self.bar.is_some()
    }

    /// While connecting: `opened` and `failed` of `total`.
    pub fn connecting(&self, opened: usize, failed: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "connecting: {} of {} open, {} failed",
                group(opened as u64),
                group(total as u64),
                group(failed as u64)
            ));
        }
    }

    /// During the window: `elapsed` of `window`, `count` so far (since the load started).
    pub fn window(&self, elapsed: Duration, window: Duration, count: u64) {
        let Some(bar) = &self.bar else {
            return;
        };
        let now = Instant::now();
        match self.last.get() {
            None => self.last.set(Some((now, count))),
            Some((t, n)) if now - t >= RATE_SPAN => {
                self.rate.set(Some(
                    count.saturating_sub(n) as f64 / (now - t).as_secs_f64(),
                ));
                self.last.set(Some((now, count)));
            }
            Some(_) => {}
        }
        bar.set_message(format!(
            "window {:.1} / {:.1} s: {} {} (since the warm-up began), {}/s now",
            elapsed.min(window).as_secs_f64(),
            window.as_secs_f64(),
            group(count),
            self.unit,
            self.rate
                .get()
                .map_or("-".into(), |r| group(r.round() as u64))
        ));
    }

    /// Removes the line (before the report is printed).
    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
