//! The modules of each crate form a DAG: no file reaches, through `crate::` / `super::` paths, a file that
//! reaches it back. A module's own submodules (`mod x;` in `x`'s parent) are not edges; doc comments are
//! ignored. The library's folders are layered besides: a folder never imports one listed after it in
//! [`LIBRARY_LAYERS`] (the order of the module map in `neuron-spec/src/lib.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`lora::disk`, `lib`) → file, for every `.rs` file under `root`.
fn modules(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|l| l == "mod") {
                    parts.pop();
                }
                let name = if parts == ["lib"] || parts == ["main"] { "lib".to_string() } else { parts.join("::") };
                out.insert(name, p);
            }
        }
    }
    out
}

/// Each module's dependencies on other modules of the same crate (tests modules excluded).
fn edges(files: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let path_re = regex::Regex::new(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z_0-9]*)+)").unwrap();
    let mut g = BTreeMap::new();
    for (name, file) in files {
        let text = std::fs::read_to_string(file).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let me: Vec<&str> = if name == "lib" { vec![] } else { name.split("::").collect() };
        let mut deps = BTreeSet::new();
        for c in path_re.captures_iter(&code) {
            let mut path: Vec<String> = match &c[1] {
                "crate" => vec![],
                // `super`: the parent module (of `a/b.rs` and of `a/b/mod.rs` alike).
                _ => me[..me.len().saturating_sub(1)].iter().map(|s| s.to_string()).collect(),
            };
            let mut best = None;
            for seg in c[2].split("::").skip(1) {
                path.push(seg.to_string());
                let key = path.join("::");
                if files.contains_key(&key) {
                    best = Some(key);
                } else {
                    break;
                }
            }
            if let Some(b) = best.filter(|b| b != name) {
                deps.insert(b);
            }
        }
        g.insert(name.clone(), deps);
    }
    g
}

/// One cycle of `g`, if any (depth-first search).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(v.to_string(), 1);
        stack.push(v.to_string());
        for w in g.get(v).into_iter().flatten() {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == w).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(w.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(w, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in g.keys() {
        if state.get(v.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(v, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn every_crates_modules_form_a_dag() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in ["neuron-spec/src", "neuron-spec-derive/src", "neuron-spec-models/src", "src", "fuzz/bodies/src"] {
        let files = modules(&root.join(src));
        assert!(files.len() > 1, "{src}: no modules found");
        if let Some(c) = find_cycle(&edges(&files)) {
            panic!("{src}: modules import each other: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_check_sees_a_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(find_cycle(&g), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    // and the real edges are found: checkpoint/mod.rs uses the compiler
    let files = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("neuron-spec/src"));
    assert!(edges(&files)["checkpoint"].contains("spec::compile"));
}

/// The library's top modules from the bottom up: each may import the ones on its own line or above, never
/// one below. Same order as the module map in `neuron-spec/src/lib.rs`.
const LIBRARY_LAYERS: &[&[&str]] = &[
    &["error", "progress", "compare"],
    &["tensor"],
    &["format"],
    &["plan"],
    &["spec"],
    &["lora"],
    &["checkpoint"],
    &["ops"],
    &["comm"],
    &["layers"],
    &["train"],
    &["prelude", "lib"],
];

/// Imports that go up a layer, as `file: from -> to`. A `crate::` path whose first segment is no top module
/// (a root re-export such as `crate::DType`) counts as an import of `lib`, the top.
fn upward_imports(files: &BTreeMap<String, PathBuf>, layers: &[&[&str]]) -> Vec<String> {
    let rank = |m: &str| layers.iter().position(|l| l.contains(&m));
    let path_re = regex::Regex::new(r"\bcrate::([A-Za-z_][A-Za-z_0-9]*)").unwrap();
    let mut out = Vec::new();
    for (name, file) in files {
        let top = name.split("::").next().unwrap_or(name);
        let Some(mine) = rank(top) else {
            out.push(format!("{}: top module `{top}` is in no layer", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        for c in path_re.captures_iter(&code) {
            let to = if files.contains_key(&c[1]) { &c[1] } else { "lib" };
            if rank(to).is_some_and(|r| r > mine) {
                out.push(format!("{}: {top} -> {to}", file.display()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn library_folders_are_layered() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("neuron-spec/src");
    let files = modules(&root);
    let up = upward_imports(&files, LIBRARY_LAYERS);
    assert!(up.is_empty(), "a lower folder imports a higher one:\n{}", up.join("\n"));
    // lib.rs's module map lists the same layers in the same order: `//! N. [`a`], `b`: ...`.
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let item = regex::Regex::new(r"`([a-z_]+)`").unwrap();
    let map = lib.split("//! # Module map").nth(1).expect("lib.rs has a module map");
    let mapped: Vec<Vec<String>> = map
        .lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .filter(|l| l.split_once(". ").is_some_and(|(n, _)| n.parse::<usize>().is_ok()))
        .map(|l| {
            let head = l.split_once(':').map_or(l, |(h, _)| h);
            item.captures_iter(head).map(|c| c[1].to_string()).collect()
        })
        .collect();
    let expected: Vec<Vec<String>> =
        LIBRARY_LAYERS.iter().map(|l| l.iter().filter(|m| **m != "lib").map(|m| m.to_string()).collect()).collect();
    assert_eq!(mapped, expected, "lib.rs's module map and LIBRARY_LAYERS differ");
}

#[test]
fn the_layer_check_sees_an_upward_import() {
    let dir = std::env::temp_dir().join(format!("neuron-spec-layers-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("low")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod low;\npub mod high;\n").unwrap();
    std::fs::write(dir.join("low/mod.rs"), "use crate::high::X;\n/// crate::high in a doc is no import\n").unwrap();
    std::fs::write(dir.join("high.rs"), "pub struct X;\nuse crate::low;\nuse crate::Y;\n").unwrap();
    let files = modules(&dir);
    let up = upward_imports(&files, &[&["low"], &["high"], &["lib"]]);
    std::fs::remove_dir_all(&dir).unwrap();
    let up: Vec<String> = up.iter().map(|l| l.rsplit(": ").next().unwrap().to_string()).collect();
    assert_eq!(up, ["high -> lib", "low -> high"]);
}
