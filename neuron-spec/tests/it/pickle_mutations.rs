//! What the `pickle` fuzz target checks, on this machine without cargo-fuzz: the pickle machine and the zip
//! directory reader never panic on mutated and truncated copies of the seed corpus (`fuzz/corpus/pickle/`),
//! and what the zip reader accepts lies inside the input.

use neuron_spec::format::pt::{pickle, zip};
use proptest::prelude::*;

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/pickle");
    let mut v: Vec<Vec<u8>> =
        std::fs::read_dir(dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    v.sort();
    v
}

fn check(data: &[u8]) {
    let _ = pickle::parse(data);
    if let Ok(records) = zip::records(data) {
        for r in &records {
            assert!(r.range.start <= r.range.end && r.range.end <= data.len());
            if r.name.ends_with("data.pkl") {
                let _ = pickle::parse(&data[r.range.clone()]);
            }
        }
    }
}

#[test]
fn seeds_parse() {
    let s = seeds();
    assert_eq!(s.len(), 6);
    for d in &s {
        check(d);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn mutated_seeds_never_panic(which in 0usize..6, flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let s = seeds();
        let mut d = s[which % s.len()].clone();
        for (at, b) in flips {
            let n = d.len();
            d[at % n] = b;
        }
        check(&d);
        let keep = cut % (d.len() + 1);
        check(&d[..keep]);
    }
}
