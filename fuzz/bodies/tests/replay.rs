//! Replays the committed seed corpus of every fuzz target (`fuzz/corpus/<target>/`) through the targets' bodies,
//! so `cargo test` checks what `.ci/fuzz` starts from, with no cargo-fuzz or nightly flags. Every target in
//! `fuzz/fuzz_targets/` must have a body here and a non-empty corpus.

use std::path::Path;

#[test]
fn every_seed_of_every_target_passes_its_body() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut targets: Vec<String> = std::fs::read_dir(fuzz.join("fuzz_targets"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    targets.sort();
    assert!(!targets.is_empty());
    for t in &targets {
        let Some((_, body)) = neuron_spec_fuzz_bodies::TARGETS.iter().find(|(n, _)| n == t) else {
            panic!("fuzz target {t} has no body in fuzz/bodies (move it there so its corpus is replayed)");
        };
        let dir = fuzz.join("corpus").join(t);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "{}: no seeds", dir.display());
        for seed in &seeds {
            let data = std::fs::read(seed).unwrap();
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                panic!("{t}: seed {} fails the target's body", seed.display());
            }
        }
        eprintln!("{t}: {} seeds replayed", seeds.len());
    }
}
