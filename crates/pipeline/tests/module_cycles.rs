//! The pipeline's modules form no import cycle: each top-level module of `src/` (a file, or a
//! directory with its files) may use those below it, never one that uses it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`usage/reporter.rs` → `usage`); `lib` for `lib.rs`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a path")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first path segment of each item of a `{a::B, c}` group, `text` starting after the `{`.
fn group_heads(text: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                heads.push(ident(text[start..i].trim_start()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(ident(text[start..i].trim_start()));
                start = i + 1;
            }
            _ => {}
        }
    }
    heads.into_iter().filter(|h| !h.is_empty()).collect()
}

/// The first segment of every `crate::…` path in `code` (comments left out).
fn crate_heads(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut heads = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let preceded = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded {
            continue; // `billing_bridge_crate::…`, not this crate
        }
        match rest.strip_prefix('{') {
            Some(group) => heads.extend(group_heads(group).into_iter().map(str::to_owned)),
            None => heads.push(ident(rest).to_owned()),
        }
    }
    heads
}

/// The module each name `lib.rs` re-exports comes from (`pub use bridge::{Bridge, …}`).
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for line in lib.lines().map(str::trim) {
        let Some(path) = line
            .strip_prefix("pub use ")
            .and_then(|p| p.strip_suffix(';'))
        else {
            continue;
        };
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.rsplit("::").next().unwrap_or_default().trim();
            let name = name.rsplit(" as ").next().unwrap_or(name).trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

/// Which modules each module uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let reexported = reexports(&lib);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(src, file);
        let code = std::fs::read_to_string(file).expect("a source file");
        for head in crate_heads(&code) {
            let to = if modules.contains(&head) {
                head
            } else if let Some(module) = reexported.get(&head) {
                module.clone()
            } else {
                // Defined in lib.rs itself (`Pipeline`): lib uses every module.
                "lib".to_owned()
            };
            if to != from {
                uses.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // lib.rs declares and assembles every module; a module using lib's own items closes a cycle.
    uses.entry("lib".into())
        .or_default()
        .extend(modules.iter().filter(|m| *m != "lib").cloned());
    uses
}

/// A cycle, as the modules along it, if there is one.
fn find_cycle(uses: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in uses.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, uses, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    uses.keys()
        .find_map(|start| visit(start, uses, &mut Vec::new(), &mut done))
}

#[test]
fn pipeline_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let uses = graph(&src);
    assert!(
        uses.get("usage").is_some_and(|u| u.contains("bridge")),
        "the reader sees `use crate::Bridge` in usage/: {uses:?}"
    );
    if let Some(cycle) = find_cycle(&uses) {
        panic!(
            "import cycle in crates/pipeline/src: {}\nevery module's uses: {uses:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn a_cycle_is_found() {
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    uses.entry("a".into()).or_default().insert("b".into());
    uses.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&uses), None);
    uses.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&uses).map(|c| c.join(" -> ")).as_deref(),
        Some("a -> b -> c -> a")
    );
    assert_eq!(
        crate_heads(
            "use crate::{Bridge, metrics::{A, B}};\nlet x = crate::trace::f();\n// crate::hidden\nbilling_bridge_crate::no"
        ),
        ["Bridge", "metrics", "trace"]
    );
}
