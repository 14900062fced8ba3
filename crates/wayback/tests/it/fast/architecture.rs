//! The layering rules of docs/architecture.md §4, checked on the source: which top-level
//! module of the `wayback` crate may import which, and no circle of imports between files.
//!
//! Edges come from `use` lines and from paths written inline (`crate::jobs::new_job(…)`), each
//! resolved to the file that defines the deepest module it names. A module root (`mod.rs`,
//! `lib.rs`, or `x.rs` beside a folder `x/`) re-exporting its own children is a facade, not a
//! dependency, so those edges are left out; every other edge counts. Test modules
//! (`#[cfg(test)] mod tests { … }` and `*tests.rs` files) are not part of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module of `crates/wayback/src` may import (besides itself). A new edge
/// fails this test: either it breaks a layer, or the table and docs/architecture.md §4 change
/// together.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("crash_point", &[]),
    ("crypto", &[]),
    ("tls", &[]),
    ("storage", &["domain"]),
    ("pg", &["domain"]),
    ("catalog", &["domain"]),
    ("store", &["crypto", "domain"]),
    ("config", &["domain", "storage"]),
    ("telemetry", &["config"]),
    ("shutdown", &[]),
    ("cc", &["config", "domain"]),
    (
        "archive",
        &["config", "crash_point", "crypto", "domain", "pg", "storage"],
    ),
    (
        "runtime",
        &[
            "archive", "config", "crypto", "domain", "pg", "storage", "tls",
        ],
    ),
    ("metrics", &["domain", "runtime"]),
    (
        "open",
        &["config", "crypto", "runtime", "storage", "store", "tls"],
    ),
    (
        "context",
        &[
            "catalog", "config", "metrics", "runtime", "storage", "store",
        ],
    ),
    (
        "jobs",
        &[
            "archive",
            "catalog",
            "config",
            "context",
            "crash_point",
            "domain",
            "metrics",
            "runtime",
            "storage",
            "store",
        ],
    ),
    (
        "broker",
        &[
            "archive", "catalog", "context", "domain", "jobs", "storage", "store",
        ],
    ),
    (
        "maintenance",
        &[
            "archive", "catalog", "cc", "config", "context", "domain", "jobs", "metrics",
            "runtime", "storage", "store",
        ],
    ),
    ("osb", &["broker", "domain", "metrics"]),
    (
        "api",
        &[
            "archive", "catalog", "cc", "domain", "osb", "runtime", "storage", "store",
        ],
    ),
    (
        "dashboard",
        &[
            "api", "archive", "catalog", "cc", "config", "crypto", "domain", "runtime", "storage",
            "store",
        ],
    ),
    (
        "agent",
        &[
            "archive",
            "config",
            "domain",
            "open",
            "osb",
            "runtime",
            "shutdown",
            "storage",
            "telemetry",
        ],
    ),
    (
        "cli",
        &[
            "archive",
            "catalog",
            "cc",
            "config",
            "crypto",
            "context",
            "domain",
            "jobs",
            "maintenance",
            "open",
            "pg",
            "runtime",
            "storage",
            "store",
            "telemetry",
        ],
    ),
    (
        "startup",
        &[
            "api",
            "broker",
            "catalog",
            "cc",
            "config",
            "context",
            "dashboard",
            "jobs",
            "maintenance",
            "metrics",
            "open",
            "osb",
            "runtime",
            "storage",
            "store",
        ],
    ),
];

#[test]
fn no_module_imports_above_its_layer() {
    let graph = Graph::read(&crate_src("wayback"));
    let allowed: BTreeMap<&str, BTreeSet<&str>> = MAY_IMPORT
        .iter()
        .map(|(m, may)| (*m, may.iter().copied().collect()))
        .collect();
    let mut wrong = Vec::new();
    for (from, to) in graph.edges() {
        let (a, b) = (top_module(from), top_module(to));
        if a == b || a == "lib" || a == "main" {
            continue;
        }
        match allowed.get(a.as_str()) {
            None => wrong.push(format!("{from}: module {a} is not in MAY_IMPORT")),
            Some(may) if !may.contains(b.as_str()) => {
                wrong.push(format!("{from} imports {to}: {a} may not import {b}"))
            }
            Some(_) => {}
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn no_circle_of_imports_between_files() {
    for krate in ["wayback", "cf-wayback", "wayback-api"] {
        let graph = Graph::read(&crate_src(krate));
        let circles = graph.circles();
        assert!(
            circles.is_empty(),
            "{krate}: files that import each other (directly or around a circle):\n{}",
            circles
                .iter()
                .map(|c| c.join(" → "))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The checker finds what it must: a circle and a layer break in a made-up crate.
#[test]
fn the_checker_sees_circles_and_facades() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\n");
    write("a/mod.rs", "mod x;\nmod y;\npub use x::X;\n");
    write("a/x.rs", "use super::y::Y;\npub struct X;\n");
    write("a/y.rs", "use crate::a::x::X;\npub struct Y;\n");
    write(
        "b.rs",
        "pub fn f() { let _ = crate::a::X; }\n#[cfg(test)]\nmod tests {\n    use crate::a::y::Y;\n}\n",
    );
    let graph = Graph::read(dir.path());
    assert_eq!(graph.circles(), vec![vec!["a/x.rs", "a/y.rs"]]);
    let edges: Vec<_> = graph.edges().collect();
    assert!(edges.contains(&(&"b.rs".to_string(), &"a/mod.rs".to_string())));
    assert!(!edges.iter().any(|(f, t)| *f == "b.rs" && *t == "a/y.rs"));
    assert!(!edges.iter().any(|(f, _)| *f == "a/mod.rs"), "facade edges");
}

fn crate_src(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

fn top_module(file: &str) -> String {
    let first = file.split('/').next().unwrap_or(file);
    first.trim_end_matches(".rs").to_string()
}

/// Files (relative paths) and the files each imports.
struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut files = BTreeMap::new();
        collect(src, src, &mut files);
        let names: BTreeSet<String> = files.keys().cloned().collect();
        let mut edges = BTreeMap::new();
        for (rel, text) in &files {
            if is_test_file(rel) {
                continue;
            }
            let here = module_path(rel);
            let mut to = BTreeSet::new();
            for path in paths_in(&without_tests(text)) {
                let Some(abs) = absolute(&path, &here, &names) else {
                    continue;
                };
                if let Some(file) = file_for(&abs, &names) {
                    let facade = is_root(rel, &names) && is_below(&file, rel);
                    if &file != rel && !facade {
                        to.insert(file);
                    }
                }
            }
            edges.insert(rel.clone(), to);
        }
        Graph { edges }
    }

    fn edges(&self) -> impl Iterator<Item = (&String, &String)> {
        self.edges
            .iter()
            .flat_map(|(f, ts)| ts.iter().map(move |t| (f, t)))
    }

    /// Strongly connected groups of more than one file (Tarjan), each sorted.
    fn circles(&self) -> Vec<Vec<String>> {
        struct T<'a> {
            g: &'a BTreeMap<String, BTreeSet<String>>,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on: BTreeSet<&'a str>,
            next: usize,
            out: Vec<Vec<String>>,
        }
        impl<'a> T<'a> {
            fn visit(&mut self, v: &'a str) {
                self.index.insert(v, self.next);
                self.low.insert(v, self.next);
                self.next += 1;
                self.stack.push(v);
                self.on.insert(v);
                for w in self.g.get(v).into_iter().flatten() {
                    let w = w.as_str();
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let l = self.low[w].min(self.low[v]);
                        self.low.insert(v, l);
                    } else if self.on.contains(w) {
                        let l = self.index[w].min(self.low[v]);
                        self.low.insert(v, l);
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut group = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on.remove(w);
                        group.push(w.to_string());
                        if w == v {
                            break;
                        }
                    }
                    if group.len() > 1 {
                        group.sort();
                        self.out.push(group);
                    }
                }
            }
        }
        let mut t = T {
            g: &self.edges,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            next: 0,
            out: Vec::new(),
        };
        for v in self.edges.keys() {
            if !t.index.contains_key(v.as_str()) {
                t.visit(v);
            }
        }
        t.out.sort();
        t.out
    }
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel, std::fs::read_to_string(&path).unwrap());
        }
    }
}

fn is_test_file(rel: &str) -> bool {
    let stem = rel
        .rsplit('/')
        .next()
        .unwrap_or(rel)
        .trim_end_matches(".rs");
    stem == "tests" || stem.ends_with("_tests")
}

/// The text without comments and without an inline `#[cfg(test)] mod tests { … }` (to the end
/// of the file, where this code base keeps it).
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == "#[cfg(test)]" && lines.peek().is_some_and(|n| n.trim().starts_with("mod ")) {
            if lines.peek().is_some_and(|n| n.trim_end().ends_with('{')) {
                break;
            }
            continue;
        }
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every path a file names: the trees of its `use` items, flattened, and inline `crate::…`.
fn paths_in(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut item: Option<String> = None;
    for line in code.lines() {
        let t = line.trim();
        match item.as_mut() {
            Some(text) => text.push_str(t),
            None => {
                let visibility = ["pub(crate) ", "pub(super) ", "pub "]
                    .iter()
                    .find_map(|p| t.strip_prefix(p))
                    .unwrap_or(t);
                item = visibility.strip_prefix("use ").map(str::to_string);
            }
        }
        if let Some(text) = item.as_ref().filter(|text| text.contains(';')) {
            let tree: String = text[..text.find(';').unwrap()]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            expand(&tree, &mut out);
            item = None;
        }
    }
    let mut rest = code;
    while let Some(j) = rest.find("crate::") {
        let prev = rest[..j].chars().next_back();
        let tail = &rest[j..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !prev.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            out.push(tail[..len].trim_end_matches(':').to_string());
        }
        rest = &tail[len.max(1)..];
    }
    out
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str, out: &mut Vec<String>) {
    match tree.find('{') {
        None => out.push(tree.trim_end_matches("::*").to_string()),
        Some(open) => {
            let prefix = tree[..open].trim_end_matches("::");
            let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
            let inner = &tree[open + 1..close];
            let mut depth = 0;
            let mut part = String::new();
            for c in inner.chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let p = std::mem::take(&mut part);
                        if p == "self" || p.is_empty() {
                            out.push(prefix.to_string());
                        } else {
                            expand(&format!("{prefix}::{p}"), out);
                        }
                        continue;
                    }
                    _ => {}
                }
                part.push(c);
            }
        }
    }
}

/// `a/b.rs` and `a/b/mod.rs` → ["a", "b"]; `lib.rs` → [].
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The crate-absolute module path a path written in the module `here` names; None for other
/// crates and the standard library.
fn absolute(path: &str, here: &[String], files: &BTreeSet<String>) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let first = *segs.first()?;
    let mut base: Vec<String> = match first {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => here.to_vec(),
        _ => {
            // A child module named without `self::` (2018 paths).
            let mut child = here.to_vec();
            child.push(first.to_string());
            if module_file(&child, files).is_some() {
                here.to_vec()
            } else {
                return None;
            }
        }
    };
    let mut rest = &segs[..];
    if first == "crate" || first == "self" {
        rest = &segs[1..];
    }
    while let Some(&"super") = rest.first() {
        base.pop();
        rest = &rest[1..];
    }
    base.extend(rest.iter().map(|s| s.to_string()));
    Some(base)
}

fn module_file(module: &[String], files: &BTreeSet<String>) -> Option<String> {
    if module.is_empty() {
        return Some("lib.rs".to_string());
    }
    let joined = module.join("/");
    [format!("{joined}.rs"), format!("{joined}/mod.rs")]
        .into_iter()
        .find(|f| files.contains(f))
}

/// The file of the deepest module `path` names.
fn file_for(path: &[String], files: &BTreeSet<String>) -> Option<String> {
    (0..=path.len())
        .rev()
        .find_map(|n| module_file(&path[..n], files))
}

/// A module root: `lib.rs`, `x/mod.rs`, or `x.rs` with a folder `x/` of submodules.
fn is_root(rel: &str, files: &BTreeSet<String>) -> bool {
    if rel == "lib.rs" || rel.ends_with("/mod.rs") || rel == "mod.rs" {
        return true;
    }
    let dir = rel.trim_end_matches(".rs");
    files.iter().any(|f| f.starts_with(&format!("{dir}/")))
}

/// Whether `file` is a submodule (at any depth) of the module root `root`.
fn is_below(file: &str, root: &str) -> bool {
    let dir = if root == "lib.rs" {
        String::new()
    } else if let Some(d) = root.strip_suffix("/mod.rs") {
        format!("{d}/")
    } else {
        format!("{}/", root.trim_end_matches(".rs"))
    };
    file.starts_with(&dir) && file != root
}
