//! `ramp`: step the rate of a load up until a service-level objective breaks, and say in
//! one line what held.
//!
//! Each step is a whole run of the scenario ([`Load::run`]: connect, warm up, a measured
//! window of `--step-duration`, drain, close) at the step's rate: echo in open loop at that
//! many messages per second (so latency is corrected for coordinated omission and grows
//! as soon as the server falls behind), fanout publishing that many events per second. A
//! step *holds* when all of these do, and *breaks* otherwise:
//!
//! - p99 latency at most `--slo-p99-us`;
//! - loss (echo: messages never answered; fanout: deliveries lost) at most `--max-loss`;
//! - no wrong message (echo: an echo that differs from what was sent; fanout: out of order
//!   or not an event of the run) and no connection failed during the step;
//! - the rate achieved at least [`MIN_ACHIEVED`] of the step's rate (echo: echoes per
//!   second in the window; fanout: deliveries per second / subscribers).
//!
//! The ramp stops at the first step that breaks, or after `--max-steps`. Its answer is the
//! last step that held: `capacity: 40,000 msg/s at p99 <= 2,000 us (next step 50,000
//! msg/s broke it: p99 3,412 us)`. A step's run that fails outright (the server went away)
//! breaks that step; on the first step it is the ramp's error.
//!
//! What it will not do: search between the last step that held and the one that broke
//! (run again with a finer `--rate-step` from there), or step connections or subscribers.

use super::{Common, Load, Outcome};
use crate::error::Error;
use crate::json::Json;
use crate::stats::{group, Table};
use serde_json::Value;
use std::io::Write;

/// The share of a step's rate it must achieve to hold.
pub const MIN_ACHIEVED: f64 = 0.95;
/// Steps a ramp may take at most (each is a whole run).
const MAX_STEPS: usize = 1000;

/// How the rate grows from step to step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// `--rate-step S`: start, start + S, start + 2S, ...
    Add(f64),
    /// `--factor F`: start, start x F, start x F², ...
    Mul(f64),
}

impl Step {
    /// The rate of step `i` (0-based).
    pub fn rate(&self, start: f64, i: usize) -> f64 {
        match *self {
            Step::Add(s) => start + s * i as f64,
            Step::Mul(f) => start * f.powi(i.min(i32::MAX as usize) as i32),
        }
    }
}

/// The ramp's options.
#[derive(Debug, Clone, Copy)]
pub struct RampOpts {
    /// The first step's rate.
    pub start: f64,
    /// How the rate grows.
    pub step: Step,
    /// Steps at most.
    pub max_steps: usize,
    /// The objective's p99 bound, us.
    pub slo_p99_us: f64,
    /// The objective's loss bound per step.
    pub max_loss: u64,
}

impl RampOpts {
    /// Checks the options.
    ///
    /// # Errors
    /// [`Error::Usage`] naming the option that cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: &str| Err(Error::Usage(s.into()));
        if !(self.start > 0.0 && self.start.is_finite()) {
            return bad("--rate-start must be a positive rate");
        }
        match self.step {
            Step::Add(s) if !(s > 0.0 && s.is_finite()) => {
                return bad("--rate-step must be more than 0")
            }
            Step::Mul(f) if !(f > 1.0 && f.is_finite()) => {
                return bad("--factor must be more than 1")
            }
            _ => {}
        }
        if !(1..=MAX_STEPS).contains(&self.max_steps) {
            return Err(Error::Usage(format!(
                "--max-steps must be 1 to {MAX_STEPS}"
            )));
        }
        if !(self.slo_p99_us > 0.0 && self.slo_p99_us.is_finite()) {
            return bad("--slo-p99-us must be a positive number of microseconds");
        }
        Ok(())
    }
}

/// What a step measured, read from its report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// The rate achieved, in the unit of the step's rate.
    pub achieved: f64,
    /// Median latency, us (`None` when nothing was measured).
    pub p50_us: Option<f64>,
    /// p99 latency, us.
    pub p99_us: Option<f64>,
    /// Echo: unanswered messages; fanout: lost deliveries.
    pub loss: u64,
    /// Wrong messages (echo: mismatched or unexpected; fanout: out of order, malformed).
    pub wrong: u64,
    /// Connections that failed during the step.
    pub failed: u64,
    /// Server CPU per message (echo) or delivery (fanout), us, with `--server-pid`.
    pub server_cpu_us: Option<f64>,
}

impl Figures {
    /// The figures of an echo or fanout report (what is missing reads as 0 or `None`).
    pub fn of(report: &Value) -> Figures {
        let u = |k: &str| report.get(k).and_then(Value::as_u64).unwrap_or(0);
        let f = |k: &str| report.get(k).and_then(Value::as_f64);
        let lat = report.get("latency");
        let measured = lat.and_then(|l| l.get("count")).and_then(Value::as_u64) > Some(0);
        let pct = |p: &str| {
            lat.and_then(|l| l.get("percentiles"))
                .and_then(|l| l.get(p))
                .and_then(Value::as_f64)
                .filter(|_| measured)
                .map(|ns| ns / 1e3)
        };
        let failed = report
            .get("connection_failures")
            .and_then(Value::as_object)
            .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
        let fanout = report.get("scenario").and_then(Value::as_str) == Some("fanout");
        let (achieved, loss, wrong, cpu) = if fanout {
            let subs = u("subscribers_open").max(1) as f64;
            (
                f("deliveries_per_s").unwrap_or(0.0) / subs,
                u("lost"),
                u("out_of_order") + u("malformed"),
                f("server_cpu_us_per_delivery"),
            )
        } else {
            (
                f("msgs_per_s").unwrap_or(0.0),
                u("unanswered"),
                u("verify_failures") + u("unexpected"),
                f("server_cpu_us_per_msg"),
            )
        };
        Figures {
            achieved,
            p50_us: pct("p50"),
            p99_us: pct("p99"),
            loss,
            wrong,
            failed,
            server_cpu_us: cpu,
        }
    }
}

/// Whether a step held the objective.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every bound held.
    Held,
    /// Why not, one reason per bound broken.
    Broke(Vec<String>),
}

impl Verdict {
    /// `held`, or `broke: REASONS`.
    pub fn label(&self) -> String {
        match self {
            Verdict::Held => "held".into(),
            Verdict::Broke(r) => format!("broke: {}", r.join(", ")),
        }
    }
}

/// Judges a step at `rate` by its figures.
pub fn judge(rate: f64, f: &Figures, opts: &RampOpts) -> Verdict {
    let mut why = Vec::new();
    match f.p99_us {
        None => why.push("no latency measured".to_owned()),
        Some(p) if p > opts.slo_p99_us => why.push(format!(
            "p99 {} us > {} us",
            group(p.round() as u64),
            group(opts.slo_p99_us.round() as u64)
        )),
        Some(_) => {}
    }
    if f.loss > opts.max_loss {
        why.push(format!("{} lost", group(f.loss)));
    }
    if f.wrong > 0 {
        why.push(format!("{} wrong messages", group(f.wrong)));
    }
    if f.failed > 0 {
        why.push(format!("{} connections failed", group(f.failed)));
    }
    if f.achieved < MIN_ACHIEVED * rate {
        why.push(format!(
            "achieved {} of {}",
            fmt_rate(f.achieved),
            fmt_rate(rate)
        ));
    }
    if why.is_empty() {
        Verdict::Held
    } else {
        Verdict::Broke(why)
    }
}

/// One step of a ramp.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// The rate asked for.
    pub rate: f64,
    /// What it measured (`None` when its run failed).
    pub figures: Option<Figures>,
    /// Held or broke.
    pub verdict: Verdict,
    /// The step's full report (`null` when its run failed).
    pub report: Json,
}

/// A rate for people: `40,000`, or `12.5` below 100.
pub fn fmt_rate(r: f64) -> String {
    if r < 100.0 && r.fract() != 0.0 {
        format!("{r:.1}")
    } else {
        group(r.round() as u64)
    }
}

/// The one-line answer: the last step that held, and what broke the next.
pub fn answer(steps: &[StepResult], opts: &RampOpts, unit: &str) -> String {
    let slo = group(opts.slo_p99_us.round() as u64);
    let held = steps
        .iter()
        .take_while(|s| s.verdict == Verdict::Held)
        .last();
    let broke = steps.iter().find(|s| s.verdict != Verdict::Held);
    let why = |s: &StepResult| match &s.verdict {
        Verdict::Broke(r) => r.join(", "),
        Verdict::Held => String::new(),
    };
    match (held, broke) {
        (Some(h), Some(b)) => format!(
            "capacity: {} {unit} at p99 <= {slo} us (next step {} {unit} broke it: {})",
            fmt_rate(h.rate),
            fmt_rate(b.rate),
            why(b)
        ),
        (Some(h), None) => format!(
            "capacity: at least {} {unit} at p99 <= {slo} us (all {} steps held; raise --max-steps or the rate)",
            fmt_rate(h.rate),
            steps.len()
        ),
        (None, Some(b)) => format!(
            "capacity: below {} {unit} at p99 <= {slo} us (the first step broke it: {})",
            fmt_rate(b.rate),
            why(b)
        ),
        (None, None) => "capacity: unknown (no step ran)".into(),
    }
}

/// The step table's header; `cpu` names the server CPU column (with `--server-pid`).
fn header(unit: &str, cpu: Option<&str>) -> String {
    let cpu = cpu.map_or(String::new(), |c| format!("  {c:>15}"));
    format!(
        "  {:>4}  {:>16}  {:>12}  {:>10}  {:>10}{cpu}  verdict",
        "step",
        format!("rate ({unit})"),
        "achieved",
        "p50 (us)",
        "p99 (us)",
    )
}

/// One row of the step table.
fn row(i: usize, s: &StepResult, server: bool) -> String {
    let f = s.figures.unwrap_or_default();
    let us = |x: Option<f64>| x.map_or("-".into(), |u| format!("{u:.1}"));
    let cpu = if server {
        format!(
            "  {:>15}",
            f.server_cpu_us.map_or("-".into(), |c| format!("{c:.3} us"))
        )
    } else {
        String::new()
    };
    format!(
        "  {:>4}  {:>16}  {:>12}  {:>10}  {:>10}{cpu}  {}",
        i + 1,
        fmt_rate(s.rate),
        s.figures.map_or("-".into(), |f| fmt_rate(f.achieved)),
        us(f.p50_us),
        us(f.p99_us),
        s.verdict.label()
    )
}

/// Runs the ramp, writing the step table to `out` as the steps end; the outcome's title is
/// the one-line answer. No step held: a problem (exit status 1).
///
/// # Errors
/// Bad options, or the first step's run failed (no server, not WebSocket, ...).
pub fn run(
    common: &Common,
    load: &Load,
    opts: &RampOpts,
    out: &mut dyn Write,
) -> Result<Outcome, Error> {
    opts.validate()?;
    let unit = load.rate_unit();
    let server = common.server.is_some();
    let (duration, warmup) = match load {
        Load::Echo(o) => (o.duration, o.warmup),
        Load::Fanout(o) => (o.duration, o.warmup),
    };
    let slo = format!(
        "p99 <= {} us, loss <= {}, no wrong message or failed connection, achieved >= {:.0}% of the rate",
        group(opts.slo_p99_us.round() as u64),
        group(opts.max_loss),
        MIN_ACHIEVED * 100.0
    );
    let _ = writeln!(
        out,
        "loadgen ramp {}: {}, steps of {:.1} s after {:.1} s warm-up, at most {}\nobjective: {slo}\n{}",
        load.name(),
        common.target.url,
        duration.as_secs_f64(),
        warmup.as_secs_f64(),
        opts.max_steps,
        header(
            unit,
            server.then_some(match load {
                Load::Echo(_) => "server CPU/msg",
                Load::Fanout(_) => "CPU/delivery",
            })
        )
    );
    let _ = out.flush();
    let mut steps: Vec<StepResult> = Vec::new();
    for i in 0..opts.max_steps {
        let rate = opts.step.rate(opts.start, i);
        let step = match load.with_rate(rate).run(common) {
            Ok(o) => {
                let value = crate::report::parse_back(&o.json).map_err(Error::Sys)?;
                let figures = Figures::of(&value);
                StepResult {
                    rate,
                    figures: Some(figures),
                    verdict: judge(rate, &figures, opts),
                    report: o.json,
                }
            }
            Err(e) if i == 0 => return Err(e),
            Err(e) => StepResult {
                rate,
                figures: None,
                verdict: Verdict::Broke(vec![format!("the run failed: {e}")]),
                report: Json::Null,
            },
        };
        let _ = writeln!(out, "{}", row(i, &step, server));
        let _ = out.flush();
        let broke = step.verdict != Verdict::Held;
        steps.push(step);
        if broke {
            break;
        }
    }
    let line = answer(&steps, opts, unit);
    let capacity = steps
        .iter()
        .take_while(|s| s.verdict == Verdict::Held)
        .last()
        .map(|s| s.rate);
    let mut problems = Vec::new();
    if capacity.is_none() {
        problems.push(format!("no step held the objective ({slo})"));
    }
    let step_json: Vec<Json> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let f = s.figures;
            Json::obj()
                .with("step", i + 1)
                .with("rate", s.rate)
                .with("achieved", f.map(|f| f.achieved))
                .with("p50_us", f.and_then(|f| f.p50_us))
                .with("p99_us", f.and_then(|f| f.p99_us))
                .with("loss", f.map(|f| f.loss))
                .with("server_cpu_us", f.and_then(|f| f.server_cpu_us))
                .with("held", s.verdict == Verdict::Held)
                .with(
                    "reasons",
                    match &s.verdict {
                        Verdict::Held => Vec::new(),
                        Verdict::Broke(r) => r.clone(),
                    },
                )
                .with("report", s.report.clone())
        })
        .collect();
    let (step_add, factor) = match opts.step {
        Step::Add(s) => (Some(s), None),
        Step::Mul(f) => (None, Some(f)),
    };
    let json = Json::obj()
        .with("scenario", "ramp")
        .with("load", load.name())
        .with("url", common.target.url.clone())
        .with(
            "options",
            Json::obj()
                .with("rate_start", opts.start)
                .with("rate_step", step_add)
                .with("factor", factor)
                .with("max_steps", opts.max_steps)
                .with("step_duration_s", duration.as_secs_f64())
                .with("warmup_s", warmup.as_secs_f64())
                .with("slo_p99_us", opts.slo_p99_us)
                .with("max_loss", opts.max_loss)
                .with("min_achieved_share", MIN_ACHIEVED),
        )
        .with("rate_unit", unit)
        .with("steps", Json::A(step_json))
        .with("capacity", capacity)
        .with("answer", line.clone())
        .with("problems", problems.clone());
    Ok(Outcome {
        title: line,
        table: Table::default(),
        json,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> RampOpts {
        RampOpts {
            start: 500.0,
            step: Step::Add(500.0),
            max_steps: 10,
            slo_p99_us: 2000.0,
            max_loss: 0,
        }
    }

    fn good(rate: f64) -> Figures {
        Figures {
            achieved: rate,
            p50_us: Some(100.0),
            p99_us: Some(500.0),
            ..Figures::default()
        }
    }

    fn step(rate: f64, verdict: Verdict) -> StepResult {
        StepResult {
            rate,
            figures: None,
            verdict,
            report: Json::Null,
        }
    }

    #[test]
    fn steps_add_or_multiply() {
        assert_eq!(Step::Add(500.0).rate(500.0, 0), 500.0);
        assert_eq!(Step::Add(500.0).rate(500.0, 3), 2000.0);
        assert_eq!(Step::Mul(2.0).rate(1000.0, 0), 1000.0);
        assert_eq!(Step::Mul(2.0).rate(1000.0, 4), 16000.0);
    }

    #[test]
    fn options_are_checked() {
        assert!(opts().validate().is_ok());
        let bad = [
            RampOpts {
                start: 0.0,
                ..opts()
            },
            RampOpts {
                step: Step::Mul(1.0),
                ..opts()
            },
            RampOpts {
                step: Step::Add(-1.0),
                ..opts()
            },
            RampOpts {
                max_steps: 0,
                ..opts()
            },
            RampOpts {
                slo_p99_us: f64::NAN,
                ..opts()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?}");
        }
    }

    #[test]
    fn judge_names_every_broken_bound() {
        let o = opts();
        assert_eq!(judge(1000.0, &good(1000.0), &o), Verdict::Held);
        // 95% of the rate is enough.
        assert_eq!(judge(1000.0, &good(950.0), &o), Verdict::Held);
        let f = Figures {
            achieved: 900.0,
            p99_us: Some(3412.0),
            loss: 3,
            wrong: 1,
            failed: 2,
            ..good(1000.0)
        };
        let Verdict::Broke(why) = judge(1000.0, &f, &o) else {
            panic!("held")
        };
        assert_eq!(
            why,
            [
                "p99 3,412 us > 2,000 us",
                "3 lost",
                "1 wrong messages",
                "2 connections failed",
                "achieved 900 of 1,000"
            ]
        );
        let none = Figures {
            p99_us: None,
            ..good(1000.0)
        };
        assert_eq!(
            judge(1000.0, &none, &o),
            Verdict::Broke(vec!["no latency measured".into()])
        );
        let lossy = RampOpts {
            max_loss: 5,
            ..opts()
        };
        let f = Figures {
            loss: 5,
            ..good(1000.0)
        };
        assert_eq!(judge(1000.0, &f, &lossy), Verdict::Held);
    }

    #[test]
    fn answer_is_the_last_step_that_held() {
        let o = opts();
        let broke = || Verdict::Broke(vec!["p99 3,412 us > 2,000 us".into()]);
        let steps = [step(40000.0, Verdict::Held), step(50000.0, broke())];
        assert_eq!(
            answer(&steps, &o, "msg/s"),
            "capacity: 40,000 msg/s at p99 <= 2,000 us (next step 50,000 msg/s broke it: p99 3,412 us > 2,000 us)"
        );
        let first = answer(&[step(500.0, broke())], &o, "msg/s");
        assert!(first.starts_with("capacity: below 500 msg/s"), "{first}");
        let all = answer(
            &[step(500.0, Verdict::Held), step(1000.0, Verdict::Held)],
            &o,
            "events/s",
        );
        assert!(
            all.starts_with("capacity: at least 1,000 events/s"),
            "{all}"
        );
        assert!(all.contains("all 2 steps held"), "{all}");
        assert_eq!(fmt_rate(12.5), "12.5");
        assert_eq!(fmt_rate(40000.0), "40,000");
    }

    #[test]
    fn figures_are_read_from_echo_and_fanout_reports() {
        let echo = json!({
            "scenario": "echo", "msgs_per_s": 990.0, "unanswered": 2, "verify_failures": 1,
            "unexpected": 0, "connection_failures": {"reset": 1},
            "server_cpu_us_per_msg": 4.5,
            "latency": {"count": 10, "percentiles": {"p50": 12000, "p99": 45000}}
        });
        let f = Figures::of(&echo);
        assert_eq!(
            f,
            Figures {
                achieved: 990.0,
                p50_us: Some(12.0),
                p99_us: Some(45.0),
                loss: 2,
                wrong: 1,
                failed: 1,
                server_cpu_us: Some(4.5),
            }
        );
        let fanout = json!({
            "scenario": "fanout", "deliveries_per_s": 5000.0, "subscribers_open": 50,
            "lost": 0, "out_of_order": 0, "malformed": 0, "connection_failures": {},
            "latency": {"count": 0, "percentiles": {"p50": 0, "p99": 0}}
        });
        let f = Figures::of(&fanout);
        assert_eq!(f.achieved, 100.0);
        assert_eq!(f.p99_us, None, "an empty histogram measured nothing");
        assert_eq!(Figures::of(&json!({})), Figures::default());
    }
}
