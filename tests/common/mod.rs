#![allow(dead_code)]
use neuron_spec::format::{HfCheckpoint, SafetensorsFile};
use neuron_spec::{CheckpointMetadata, TensorSource};
use neuron_spec_models::{layout_of_dir, QkvLayout};
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
