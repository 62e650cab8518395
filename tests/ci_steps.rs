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
