#![allow(dead_code)]
use neuron_spec::format::{HfCheckpoint, SafetensorsFile};
use neuron_spec::{CheckpointMetadata, TensorSource};
use neuron_spec_models::{layout_of_dir, ForwardOutput, QkvLayout};
use std::path::PathBuf;

/// `tests/fixtures/<rel>` of the workspace: the CLI package is its root, the models crate (which includes this
/// file too) one folder below.
pub fn fixture(rel: &str) -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = if here.join("tests/fixtures").is_dir() { here } else { here.join("..") };
    root.join("tests/fixtures").join(rel)
}

pub fn layout(dir: &str, tp: usize, fuse: bool) -> CheckpointMetadata {
    layout_of_dir(&fixture(dir), tp, QkvLayout::gqa(fuse)).unwrap()
}

pub fn hf(dir: &str) -> HfCheckpoint {
    HfCheckpoint::open(&fixture(dir)).unwrap()
}

pub fn open(rel: &str) -> SafetensorsFile {
    SafetensorsFile::open(&fixture(rel)).unwrap()
}

/// Asserts every tensor of `a` equals the same-named tensor of `b`, byte for byte, and the name sets match.
pub fn assert_same_tensors(a: &dyn TensorSource, b: &dyn TensorSource, what: &str) {
    let mut an = a.names();
    let mut bn = b.names();
    an.sort();
    bn.sort();
    assert_eq!(an, bn, "{what}: tensor names differ");
    for n in &an {
        let x = a.tensor(n).unwrap();
        let y = b.tensor(n).unwrap();
        assert_eq!(x.dtype(), y.dtype(), "{what}: {n} dtype");
        assert_eq!(x.shape(), y.shape(), "{what}: {n} shape");
        assert!(x.bytes() == y.bytes(), "{what}: {n} bytes differ");
    }
}

/// The forward goldens' tolerance: max |Δ| of logits and hidden states (f32, eager attention).
pub const GOLDEN_TOL: f32 = 1e-4;

/// A forward golden (`tests/fixtures/<dir>/golden.safetensors`, transformers'): the input ids, the logits and
/// the first two hidden states.
pub struct Golden {
    pub input_ids: Vec<Vec<i64>>,
    pub logits: Vec<f32>,
    pub hidden_0: Vec<f32>,
    pub hidden_1: Vec<f32>,
}

/// The forward golden of fixture `dir`.
pub fn golden(dir: &str) -> Golden {
    let f = SafetensorsFile::open(&fixture(dir).join("golden.safetensors")).unwrap();
    let ids = f.tensor("input_ids").unwrap();
    let s = ids.shape()[1];
    Golden {
        input_ids: ids.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect(),
        logits: f.tensor("logits").unwrap().to_f32_vec(),
        hidden_0: f.tensor("hidden_0").unwrap().to_f32_vec(),
        hidden_1: f.tensor("hidden_1").unwrap().to_f32_vec(),
    }
}

/// Max |a − b|, NaN- and Inf-aware: any non-finite value on either side fails the test.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    neuron_spec::compare::max_abs_diff(a, b).unwrap_or_else(|m| panic!("{m}"))
}

/// Checks logits and both hidden states within [`GOLDEN_TOL`]; returns the logits' max |Δ|.
pub fn check_golden(out: &ForwardOutput, g: &Golden, what: &str) -> f32 {
    assert_eq!(out.logits.len(), g.logits.len(), "{what}: logits size");
    let dl = max_abs_diff(&out.logits, &g.logits);
    let d0 = max_abs_diff(&out.hidden_0, &g.hidden_0);
    let d1 = max_abs_diff(out.hidden_1.as_deref().unwrap(), &g.hidden_1);
    eprintln!("{what}: max |Δ| logits {dl:.2e}, hidden_0 {d0:.2e}, hidden_1 {d1:.2e}");
    assert!(
        dl <= GOLDEN_TOL && d0 <= GOLDEN_TOL && d1 <= GOLDEN_TOL,
        "{what}: logits {dl}, hidden_0 {d0}, hidden_1 {d1}"
    );
    dl
}
