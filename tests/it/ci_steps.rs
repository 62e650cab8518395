//! CI runs what the README claims (issue 14, item 8): the fuzz bodies are a workspace member (so `cargo test
//! --workspace`, step 20, replays the seed corpus), and the steps that check the fuzz package, run
//! `quickstart` and run `check_peft_adapter.py` exist and call them. A step quietly dropped or emptied fails here.
//! Issue 22: step 36 builds the mdBook in `docs/`, whose Rust pages are doctests of the library crates.

use std::path::Path;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The lines of a shell script that run something (comments and blank lines dropped).
fn commands(rel: &str) -> Vec<String> {
    read(rel).lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

fn runs(rel: &str, what: &str) {
    assert!(commands(rel).iter().any(|l| l.contains(what)), "{rel} does not run {what:?}");
}

#[test]
fn the_fuzz_corpus_replay_is_part_of_cargo_test_workspace() {
    let manifest = read("Cargo.toml");
    let members = manifest.lines().find(|l| l.trim_start().starts_with("members = [")).expect("workspace members");
    assert!(members.contains("\"fuzz/bodies\""), "{members}");
    assert!(read("fuzz/bodies/tests/replay.rs").contains("#[test]"));
    runs(".ci/steps/20-test.sh", "cargo test --workspace");
}

#[test]
fn ci_checks_the_fuzz_package_runs_quickstart_and_the_peft_check() {
    runs(".ci/steps/25-fuzz-check.sh", "cargo check --manifest-path fuzz/Cargo.toml");
    runs(".ci/steps/40-quickstart.sh", "neuron-spec -- quickstart");
    runs(".ci/steps/50-peft-check.sh", "tests/check_peft_adapter.py");
    // The examples a user copies run in CI, each of them (issue 20).
    runs(".ci/steps/45-examples.sh", "cargo run --example \"$example\"");
    let examples = read(".ci/steps/45-examples.sh");
    for name in ["custom_model", "train_loop"] {
        assert!(examples.contains(name), "45-examples.sh runs {name}");
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs")).is_file(), "{name}");
    }
    // .ci/run runs every step in name order and stops at the first failure.
    let run = commands(".ci/run");
    assert!(run.iter().any(|l| l.starts_with("for step in .ci/steps/*.sh")), "{run:?}");
    assert!(run.iter().any(|l| l.contains("bash \"$step\"")), "{run:?}");
}

/// Issue 18: a step decided whether to install libclang-dev by globbing for `libclang*.so*`, which the image's
/// LLVM 14 (`libclang-cpp.so.14`) satisfied, so bindgen found no `libclang.so` on a fresh machine. Debian
/// packages are now checked by their status in the package database (`.ci/lib/apt.sh`'s `ensure_debs`),
/// never guessed from file names, and the MPI step asks for every package its build and tests need.
#[test]
fn ci_installs_debian_packages_by_package_status_not_by_file_names() {
    let apt = read(".ci/lib/apt.sh");
    assert!(apt.contains("dpkg-query -W -f='${db:Status-Status}'"), "ensure_debs must ask dpkg for the status");
    let mpi = commands(".ci/steps/60-mpi.sh");
    let ensure = mpi.iter().find(|l| l.starts_with("ensure_debs ")).expect("60-mpi installs through ensure_debs");
    for pkg in ["openmpi-bin", "libopenmpi-dev", "libclang-dev"] {
        assert!(ensure.split_whitespace().any(|w| w == pkg), "60-mpi does not ensure {pkg}: {ensure}");
    }
    runs(".ci/steps/10-rsvg.sh", "ensure_debs librsvg2-bin");
    // No step guards an install by looking for files or commands that another package could provide.
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/steps")).unwrap() {
        let rel = format!(".ci/steps/{}", entry.unwrap().file_name().to_string_lossy());
        for line in commands(&rel) {
            let guessed = line.contains("ls /usr/lib") || line.contains("libclang*");
            assert!(!guessed && !line.starts_with("apt-get install"), "{rel}: {line}");
        }
    }
}

/// Issue 22: the docs are an mdBook in `docs/`. Step 36 builds it (installing mdbook when missing), every page
/// of its table of contents exists, every page holding Rust code is included as a doctest by a library crate
/// (so step 20's `cargo test --workspace` compiles and runs its snippets), and the README stays short and links
/// only to pages that exist.
#[test]
fn ci_builds_the_book_and_its_rust_snippets_are_doctests() {
    runs(".ci/steps/36-book.sh", "mdbook build docs");
    runs(".ci/steps/36-book.sh", "cargo install mdbook --locked --no-default-features");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(read("docs/book.toml").contains("[book]"));
    assert!(read(".gitignore").lines().any(|l| l.trim() == "/docs/book"), "the built book is not ignored");
    let summary = read("docs/src/SUMMARY.md");
    let pages: Vec<&str> = summary.split("](").skip(1).filter_map(|l| l.split(')').next()).collect();
    assert!(pages.len() >= 10, "{pages:?}");
    for page in &pages {
        assert!(root.join("docs/src").join(page).is_file(), "SUMMARY.md links to a missing page {page}");
    }
    let includes = read("neuron-spec/src/lib.rs") + &read("neuron-spec-models/src/lib.rs");
    for page in &pages {
        if read(&format!("docs/src/{page}")).contains("```rust") {
            let inc = format!("#[doc = include_str!(\"../../docs/src/{page}\")]");
            assert!(includes.contains(&inc), "docs/src/{page} holds Rust code but no crate includes it as a doctest");
        }
    }
    let readme = read("README.md");
    assert!(readme.lines().count() < 200, "the README is {} lines", readme.lines().count());
    for link in readme.split("](docs/").skip(1).filter_map(|l| l.split([')', '#']).next()) {
        assert!(root.join("docs").join(link).is_file(), "the README links to a missing docs/{link}");
    }
}
