//! The safetensors header parser on arbitrary bytes: never panics, and what it accepts is consistent (every
//! tensor's byte range lies in the file, matches its dtype and shape, and ranges do not overlap). Small
//! accepted files are written back with `write_safetensors` and reopened: same tensors, same bytes.

use neuron_spec::format::{parse_safetensors, write_safetensors, SafetensorsFile};
use neuron_spec::{HostTensor, TensorSource};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("neuron-spec-fuzz-st-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

/// The target's body.
pub fn run(data: &[u8]) {
    let Ok(tensors) = parse_safetensors(data) else { return };
    let mut ranges: Vec<_> = tensors.iter().map(|(_, r)| r.clone()).collect();
    ranges.sort_by_key(|r| (r.start, r.end));
    for w in ranges.windows(2) {
        assert!(w[0].end <= w[1].start || w[1].is_empty(), "overlapping ranges {w:?}");
    }
    let mut by_name = BTreeMap::new();
    for (info, range) in &tensors {
        assert!(range.start <= range.end && range.end <= data.len(), "{range:?} outside {} bytes", data.len());
        let t = HostTensor::new(info.dtype, info.shape.clone(), data[range.clone()].to_vec())
            .expect("accepted tensors have the bytes their dtype and shape need");
        assert_eq!(t.numel() * info.dtype.size(), info.nbytes());
        if let Some(len) = info.shape.first() {
            let _ = t.narrow(0, len / 2, len - len / 2);
        }
        by_name.insert(info.name.clone(), t);
    }
    if data.len() > 1 << 16 {
        return;
    }
    let path = scratch().join("roundtrip.safetensors");
    let infos: Vec<_> = tensors.iter().map(|(i, _)| i.clone()).collect();
    let meta = BTreeMap::new();
    write_safetensors(&path, &infos, &meta, &mut |i| Ok(vec![by_name[&i.name].clone()])).expect("write back");
    let back = SafetensorsFile::open(&path).expect("reopen what we wrote");
    assert_eq!(TensorSource::names(&back).len(), by_name.len());
    for (name, t) in &by_name {
        assert!(&back.tensor(name).expect("tensor written") == t, "{name} changed in the round trip");
    }
}
