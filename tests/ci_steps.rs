//! CI runs what the README claims (issue 14, item 8): the fuzz bodies are a workspace member (so `cargo test
//! --workspace`, step 20, replays the seed corpus), and the steps that check the fuzz package, run
//! `quickstart` and run `check_peft_adapter.py` exist and call them. A step quietly dropped or emptied fails here.

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
    // .ci/run runs every step in name order and stops at the first failure.
    let run = commands(".ci/run");
    assert!(run.iter().any(|l| l.starts_with("for step in .ci/steps/*.sh")), "{run:?}");
    assert!(run.iter().any(|l| l.contains("bash \"$step\"")), "{run:?}");
}
