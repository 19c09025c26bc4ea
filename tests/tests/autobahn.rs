//! The Autobahn|Testsuite (`wstest -m fuzzingclient`, ported to Python 3 in `tests/autobahn/`)
//! against the `volley` binary in echo mode, on each backend. Every case's verdict (behaviour,
//! closing behaviour, and the close code volley sent) must match `tests/autobahn/expected.json`;
//! a difference fails the test with the case, its description and what changed.
//!
//! The harness's venv is `.venv-autobahn` (built by `tests/run.sh`, or here under the set-up
//! lock on first use). The summary and the HTML report of each run are kept in
//! `target/autobahn/<backend>/` (`summary.txt`, `reports/index.html`). `VOLLEY_SKIP_AUTOBAHN=1`
//! skips the suite. After a deliberate change of verdicts, regenerate the expectations with
//! `VOLLEY_AUTOBAHN_BLESS=1` (then read the diff of expected.json before committing it): the
//! cases that ran replace their entries, the others are kept.
//!
//! The server runs with `--deflate`, so groups 12 and 13 (permessage-deflate) run too. Their
//! cases with messages of 32 KiB and more (108 of 216: 9 of each subgroup's 18, over 90% of the
//! data) take minutes of the harness's Python per backend, so the default run leaves them out
//! ([`big_deflate_cases`]); `VOLLEY_AUTOBAHN_FULL=1` runs all 517 cases (about 10 minutes per
//! backend on this 2-core machine when it is quiet), and expected.json holds the verdicts of a
//! full run.

mod common;

use common::*;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use volley::Backend;

/// What the expectations record of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    behavior: String,
    close: String,
    code: Option<u64>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, closing {}", self.behavior, self.close)?;
        match self.code {
            Some(c) => write!(f, ", close code {c}"),
            None => write!(f, ", no close code"),
        }
    }
}

fn verdicts(cases: &Map<String, Value>) -> BTreeMap<CaseId, Verdict> {
    cases
        .iter()
        .map(|(id, c)| {
            let s = |k: &str| c[k].as_str().unwrap_or("?").to_owned();
            let v = Verdict {
                behavior: s("behavior"),
                close: s("behaviorClose"),
                code: c["remoteCloseCode"].as_u64(),
            };
            (CaseId::parse(id), v)
        })
        .collect()
}

/// A case id such as `7.13.2`, ordered numerically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CaseId(Vec<u32>);

impl CaseId {
    fn parse(s: &str) -> CaseId {
        CaseId(s.split('.').map(|p| p.parse().unwrap_or(0)).collect())
    }
}

impl std::fmt::Display for CaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|p| p.to_string()).collect();
        f.write_str(&parts.join("."))
    }
}

/// `target/` of this build (the test binary is `target/<profile>/deps/autobahn-*`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// The harness's `wstest`, building its venv under the set-up lock if it is missing.
fn harness() -> PathBuf {
    let root = workspace_root();
    let venv = root.join(".venv-autobahn");
    let wstest = venv.join("bin/wstest");
    with_setup_lock(|| {
        if wstest.exists() {
            return;
        }
        let st = Command::new(root.join("tests/autobahn/setup.sh"))
            .arg(&venv)
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "tests/autobahn/setup.sh failed (needs Python 3.9-3.12 and PyPI); \
             set VOLLEY_SKIP_AUTOBAHN=1 to skip the Autobahn|Testsuite"
        );
    });
    venv
}

/// Text of a field of a case's own report file (description, expectation, result).
fn case_text(reports: &Path, case: &Value, field: &str) -> String {
    let Some(file) = case["reportfile"].as_str() else {
        return String::new();
    };
    std::fs::read_to_string(reports.join(file))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v[field].as_str().map(str::to_owned))
        .unwrap_or_default()
        .replace("<br>", " ")
        .chars()
        .take(300)
        .collect()
}

/// Cases of groups 12 and 13 with messages of 32 KiB and more (sizes 8-10 and 13-18 of each
/// subgroup's 18), left out unless `VOLLEY_AUTOBAHN_FULL=1`.
fn big_deflate_cases() -> Vec<String> {
    const BIG: [u32; 9] = [8, 9, 10, 13, 14, 15, 16, 17, 18];
    let groups = (1..=5).map(|j| (12, j)).chain((1..=7).map(|j| (13, j)));
    groups
        .flat_map(|(g, j)| BIG.iter().map(move |i| format!("{g}.{j}.{i}")))
        .collect()
}

fn autobahn_fuzzingclient(b: Backend) {
    let backend = format!("{b:?}").to_lowercase();
    if opted_out("VOLLEY_SKIP_AUTOBAHN") {
        return skip(
            &format!("autobahn_fuzzingclient::{backend}"),
            "VOLLEY_SKIP_AUTOBAHN=1",
        );
    }
    let venv = harness();
    // --deflate: groups 12 and 13 (permessage-deflate) run too.
    let srv = ChildServer::spawn(&["--backend", &backend, "--mode", "echo", "--deflate"]);
    let out = target_dir().join("autobahn").join(&backend);
    let full = opted_out("VOLLEY_AUTOBAHN_FULL");
    let excluded: Vec<String> = if full {
        Vec::new()
    } else {
        big_deflate_cases()
    };
    let run = Command::new(workspace_root().join("tests/autobahn/run.sh"))
        .arg(format!("ws://{}", srv.addr))
        .arg(&out)
        .env("AB_VENV", &venv)
        .env("AB_AGENT", "volley")
        .env("AB_TIMEOUT", if full { "3600" } else { "900" })
        .env("AB_EXCLUDE", excluded.join(","))
        .output()
        .expect("run tests/autobahn/run.sh");
    drop(srv);
    let summary = String::from_utf8_lossy(&run.stdout).into_owned();
    std::fs::write(out.join("summary.txt"), &summary).unwrap();
    println!("{summary}");
    let reports = out.join("reports");
    let index = std::fs::read_to_string(reports.join("index.json")).unwrap_or_else(|e| {
        panic!(
            "no Autobahn report ({e}); run.sh said:\n{summary}\n{}",
            String::from_utf8_lossy(&run.stderr)
        )
    });
    let index: Value = serde_json::from_str(&index).expect("index.json is JSON");
    let cases = index["volley"]
        .as_object()
        .expect("the report has the agent 'volley'");
    let got = verdicts(cases);

    let expected_path = workspace_root().join("tests/autobahn/expected.json");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
    let mut want = verdicts(expected.as_object().unwrap());
    if opted_out("VOLLEY_AUTOBAHN_BLESS") {
        // The cases that ran replace their entries; one line per case, in case order, so
        // that a change reads as a one-line diff.
        let mut all = want.clone();
        all.extend(got.iter().map(|(k, v)| (k.clone(), v.clone())));
        let lines: Vec<String> = all
            .iter()
            .map(|(id, v)| {
                let code = v.code.map_or("null".to_owned(), |c| c.to_string());
                format!(
                    "  \"{id}\": {{\"behavior\": \"{}\", \"behaviorClose\": \"{}\", \"remoteCloseCode\": {code}}}",
                    v.behavior, v.close
                )
            })
            .collect();
        let text = format!("{{\n{}\n}}", lines.join(",\n"));
        std::fs::write(&expected_path, text + "\n").unwrap();
        eprintln!("wrote {}", expected_path.display());
        return;
    }
    // Cases left out on purpose are not expected to run.
    want.retain(|id, _| !excluded.contains(&id.to_string()));

    let mut diffs = Vec::new();
    for (id, w) in &want {
        let key = id.to_string();
        match got.get(id) {
            None => diffs.push(format!("{key}: expected {w}, but the case did not run")),
            Some(g) if g != w => {
                let c = &cases[&key];
                diffs.push(format!(
                    "{key}: expected {w}\n    got      {g}\n    case:    {}\n    outcome: {}",
                    case_text(&reports, c, "description"),
                    case_text(&reports, c, "result"),
                ));
            }
            Some(_) => {}
        }
    }
    for id in got.keys().filter(|id| !want.contains_key(id)) {
        diffs.push(format!(
            "{id}: ran, but tests/autobahn/expected.json does not list it"
        ));
    }
    assert!(
        diffs.is_empty(),
        "Autobahn|Testsuite on {backend}: {} case(s) differ from tests/autobahn/expected.json \
         (report: {}):\n{}\n\n{summary}",
        diffs.len(),
        reports.join("index.html").display(),
        diffs.join("\n"),
    );
    assert!(
        run.status.success(),
        "run.sh failed although every verdict is as expected:\n{summary}"
    );
}

both_backends!(autobahn_fuzzingclient);
