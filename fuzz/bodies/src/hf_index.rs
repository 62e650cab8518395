//! The HF index (`model.safetensors.index.json`) on arbitrary text: `parse_index` never panics and only
//! accepts plain file names; `HfCheckpoint::open` on a directory holding that index and two small
//! safetensors files (`a.safetensors`, `b.safetensors`) never panics, and what it opens is readable.

use neuron_spec::format::{parse_index, write_safetensors, HfCheckpoint, INDEX_FILE};
use neuron_spec::{DType, HostTensor, TensorInfo, TensorSource};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A directory with `a.safetensors` (tensors `x`, `y`) and `b.safetensors` (tensor `z`).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("neuron-spec-fuzz-index-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        let info = |n: &str, shape: Vec<usize>| TensorInfo { name: n.into(), dtype: DType::F32, shape };
        let fill = &mut |i: &TensorInfo| Ok(vec![HostTensor::zeros(i.dtype, i.shape.clone())]);
        let meta = BTreeMap::new();
        write_safetensors(&d.join("a.safetensors"), &[info("x", vec![2, 3]), info("y", vec![4])], &meta, fill)
            .expect("a.safetensors");
        write_safetensors(&d.join("b.safetensors"), &[info("z", vec![1])], &meta, fill).expect("b.safetensors");
        d
    })
}

/// The target's body.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let d = dir();
    let index_path = d.join(INDEX_FILE);
    let Ok(map) = parse_index(text, &index_path) else { return };
    for f in map.values() {
        assert!(!f.is_empty() && !f.contains('/') && f != ".." && f != ".", "accepted file name {f:?}");
    }
    std::fs::write(&index_path, text).expect("write index");
    let Ok(ck) = HfCheckpoint::open(d) else { return };
    for name in ck.names() {
        let info = ck.info(&name).expect("indexed tensors have an info");
        let t = ck.tensor(&name).expect("indexed tensors are readable");
        assert_eq!(t.shape(), info.shape.as_slice());
        assert!(ck.file_of(&name).is_some());
    }
    let _ = ck.total_bytes();
}
