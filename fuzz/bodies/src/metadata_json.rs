//! `CheckpointMetadata::from_json` on arbitrary text: never panics; what parses survives a serialize/parse
//! round trip unchanged, and its tp size, spec validation and re-targeting (`metadata_for_tp`) return
//! errors instead of panicking.

use neuron_spec::ops::reshard::metadata_for_tp;
use neuron_spec::CheckpointMetadata;
use std::path::Path;

/// The target's body.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("shards/mp_metadata_pp_rank_0.json");
    let Ok(meta) = CheckpointMetadata::from_json(text, path) else { return };
    let json = meta.to_json().expect("parsed metadata serializes");
    let again = CheckpointMetadata::from_json(&json, path).expect("serialized metadata parses");
    assert_eq!(again, meta, "metadata round trip");
    let Ok(tp) = meta.tp_size(path) else { return };
    for (_, spec) in meta.specs() {
        let _ = spec.validate(tp);
    }
    for new_tp in [1, 2, tp, tp.saturating_mul(2)] {
        if let Ok(m) = metadata_for_tp(&meta, new_tp) {
            let _ = m.tp_size(path);
        }
    }
}
