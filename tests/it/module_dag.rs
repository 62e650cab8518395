//! The modules of each crate form a DAG: no file reaches, through `crate::` / `super::` paths, a file that
//! reaches it back. A module's own submodules (`mod x;` in `x`'s parent) are not edges; doc comments are
//! ignored.

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
    // and the real edges are found: checkpoint.rs uses model.rs
    let files = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("neuron-spec/src"));
    assert!(edges(&files)["checkpoint"].contains("model"));
}
