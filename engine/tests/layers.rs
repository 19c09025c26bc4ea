//! The engine's modules import only downward (issue 12): every module of `engine/src` has a
//! layer in [`LAYERS`], and a module may name another module's items only if that module
//! is in a lower layer (or is itself, or one of its own files). The table at the top of
//! docs/architecture.md shows the same list and why some modules sit where they do.
//!
//! The check reads the source as text: every `crate::` path (in `use` lines and inline, in
//! unit tests too) and every file-level `use super::...`. A new module file must be added
//! to the table, or this test fails and names it.

use std::path::{Path, PathBuf};

/// The layers, bottom first. An entry is a module path inside the crate; a file belongs to
/// the longest entry its module path starts with. Modules in one layer do not import each
/// other. The last layer holds the public paths (`lib.rs` and `runtime/mod.rs`): they only
/// declare modules and re-export, so that `volley::Config`, `volley::runtime::Config` and the
/// other paths of the public API keep working; no module below may import through them.
const LAYERS: &[&[&str]] = &[
    // The sans-IO protocol core: frames, handshake, the per-connection machine.
    &["proto"],
    // The shared vocabulary: Message, ConnId, Target, LimitReached.
    &["types"],
    // Leaves of the runtime, and broadcast (events, routing, the key and topic tables).
    &[
        "broadcast",
        "runtime::queue",
        "runtime::timer",
        "runtime::compress",
        "runtime::stats",
    ],
    // What other threads send a worker (Command, BindOp, deferred answers) and its inbox.
    &["runtime::inbox"],
    // Many nodes through a broker: pushes into worker inboxes, reads `Shared` through a trait.
    &["cluster"],
    // Config; the state every thread shares (Shared) and the public Handle.
    &["runtime::config", "runtime::handle"],
    // What a callback's Ctx writes into (Outbox), and the upgrade answers (Upgrade, Reject,
    // HttpResponse, Pending).
    &["runtime::outbox", "runtime::upgrade"],
    // The embedding surface: the Handler trait and Ctx; GET /metrics (an HttpResponse
    // with the Handle's counters, and its listener).
    &["handler", "runtime::metrics"],
    // The worker core, which calls the Handler: written once for every backend.
    &["runtime::core"],
    // The backends (syscalls): mio, io_uring.
    &["driver"],
    // Server::start: the one place that knows both the runtime and the backends.
    &["server"],
    // The public paths (re-exports only).
    &["", "runtime"],
];

/// The facades of the last layer: a file belongs to them only if it is exactly that module.
const FACADES: &[&str] = &["", "runtime"];

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The table entry (and its layer) a module path belongs to: the longest prefix.
fn unit_of(path: &[String]) -> Option<(&'static str, usize)> {
    let mut best: Option<(&'static str, usize, usize)> = None;
    for (layer, units) in LAYERS.iter().enumerate() {
        for unit in *units {
            let seg = segments(unit);
            if path.len() >= seg.len()
                && path[..seg.len()] == seg[..]
                && best.map_or(true, |(_, _, n)| seg.len() > n)
            {
                best = Some((unit, layer, seg.len()));
            }
        }
    }
    best.map(|(u, l, _)| (u, l))
}

/// A file's module path: `lib.rs` is the crate root, `x/mod.rs` is `x`, `x/y.rs` is `x::y`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "lib" && stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The source with `//` comments (doc comments included) removed; line breaks are kept.
fn strip_comments(src: &str) -> String {
    src.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Parses a use tree (`a::b`, `a::{b, c::{d as e}}`, `a::*`) starting at `*i`, after a
/// `crate::` or `super::` already resolved to `prefix`; pushes every path it names.
fn use_tree(s: &[u8], i: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
        if *i < s.len() && s[*i] == b'{' {
            *i += 1;
            loop {
                use_tree(s, i, prefix.clone(), out);
                // Skip `as name` and white space up to the separator.
                while *i < s.len() && s[*i] != b',' && s[*i] != b'}' {
                    *i += 1;
                }
                if *i >= s.len() || s[*i] == b'}' {
                    *i += 1;
                    return;
                }
                *i += 1; // ','
                while *i < s.len() && s[*i].is_ascii_whitespace() {
                    *i += 1;
                }
                if *i < s.len() && s[*i] == b'}' {
                    *i += 1;
                    return;
                }
            }
        }
        let start = *i;
        while *i < s.len() && is_ident(s[*i]) {
            *i += 1;
        }
        if *i == start {
            out.push(prefix); // `*` or the end of the path
            return;
        }
        prefix.push(String::from_utf8_lossy(&s[start..*i]).into_owned());
        if s[*i..].starts_with(b"::") {
            *i += 2;
        } else {
            out.push(prefix);
            return;
        }
    }
}

/// Every module path `src` (the file of module `module`) names, with its line.
fn imports(src: &str, module: &[String]) -> Vec<(usize, Vec<String>)> {
    let code = strip_comments(src);
    let s = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && (is_ident(s[at - 1]) || s[at - 1] == b'$') {
            continue;
        }
        let mut i = at + "crate::".len();
        let mut paths = Vec::new();
        use_tree(s, &mut i, Vec::new(), &mut paths);
        found.extend(paths.into_iter().map(|p| (line_of(at), p)));
    }
    // File-level `use super::...` (unindented; a unit test's `use super::*` is indented and
    // names the file's own module). `super` of `x/y.rs` is `x`; of `x/mod.rs`, x's parent.
    let parent = module[..module.len().saturating_sub(1)].to_vec();
    let mut offset = 0;
    for line in code.split('\n') {
        let rest = ["use super::", "pub use super::", "pub(crate) use super::"]
            .iter()
            .find_map(|p| line.strip_prefix(p));
        if rest.is_some() {
            let at = offset + line.find("super::").unwrap_or(0) + "super::".len();
            let mut i = at;
            let mut paths = Vec::new();
            use_tree(s, &mut i, parent.clone(), &mut paths);
            found.extend(paths.into_iter().map(|p| (line_of(at), p)));
        }
        offset += line.len() + 1;
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read engine/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every breach of the layering in `engine/src` (the `volley` binary, a crate of its own
/// under `bin/`, is not part of the library's layers).
fn breaches() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        if rel.starts_with("bin") {
            continue;
        }
        let module = module_of(rel);
        let name = rel.display();
        let Some((unit, layer)) = unit_of(&module) else {
            bad.push(format!("{name}: module {} has no layer", module.join("::")));
            continue;
        };
        if FACADES.contains(&unit) && module != segments(unit) {
            bad.push(format!(
                "{name}: module {} has no layer (only re-exports may sit in `{unit}`)",
                module.join("::")
            ));
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        for (line, path) in imports(&text, &module) {
            let Some((to, to_layer)) = unit_of(&path) else {
                continue;
            };
            if to != unit && to_layer >= layer {
                let what = if to.is_empty() { "the crate root" } else { to };
                bad.push(format!(
                    "{name}:{line}: `{unit}` (layer {layer}) uses `crate::{}`, which is in \
                     `{what}` (layer {to_layer}): not below it",
                    path.join("::")
                ));
            }
        }
    }
    bad
}

#[test]
fn modules_import_only_lower_layers() {
    let bad = breaches();
    assert!(
        bad.is_empty(),
        "{} imports against the layers (engine/tests/layers.rs, docs/architecture.md):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn use_trees_are_read_whole() {
    let src = "use crate::runtime::{config::Config, handle::{self, Handle as H}};\n\
               fn f() { crate::broadcast::encode_shared(x); }\n\
               use super::queue::*;\n    use super::*;\n";
    let module = segments("runtime::core");
    let got: Vec<String> = imports(src, &module)
        .into_iter()
        .map(|(line, p)| format!("{line}:{}", p.join("::")))
        .collect();
    assert_eq!(
        got,
        [
            "1:runtime::config::Config",
            "1:runtime::handle::self",
            "1:runtime::handle::Handle",
            "2:broadcast::encode_shared",
            "3:runtime::queue",
        ]
    );
    assert_eq!(
        unit_of(&segments("runtime::core::Core")),
        Some(("runtime::core", 8))
    );
    assert_eq!(unit_of(&segments("runtime::Config")), Some(("runtime", 11)));
}
