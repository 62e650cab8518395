//! Training data files (`neuron_spec::train::data`) from arbitrary bytes, read as safetensors or JSONL:
//! reading and batching return errors, never panic; what is accepted is rectangular and inside the vocabulary;
//! text lines pack into whole rows.

/// The target body.
pub fn run(data: &[u8]) {
    let Ok(dir) = std::env::temp_dir().canonicalize() else { return };
    let path = dir.join(format!("neuron-spec-fuzz-train-data-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(rows) = neuron_spec::train::data::read_rows(&path) {
        for bs in [None, Some(1), Some(2)] {
            if let Ok(batches) = neuron_spec::train::data::batches(&path, rows.clone(), bs, 128) {
                for b in &batches {
                    assert!(b.iter().all(|r| r.len() == b[0].len() && r.len() >= 2), "ragged batch accepted");
                    assert!(b.iter().flatten().all(|t| (0..128).contains(t)), "id outside the vocabulary accepted");
                }
            }
        }
    }
    if let Ok(neuron_spec::train::data::TrainData::Documents(docs)) = neuron_spec::train::data::read_data(&path) {
        // Bytes stand in for token ids: packing keeps every id, in order, in whole rows.
        let ids: Vec<Vec<i64>> = docs.iter().map(|d| d.bytes().map(i64::from).collect()).collect();
        for seq in [1, 3, 8] {
            let rows = neuron_spec::train::data::pack_documents(&ids, -1, seq);
            let total: usize = ids.iter().map(|d| d.len() + 1).sum();
            assert_eq!(rows.len(), total / seq, "rows of a packing");
            assert!(rows.iter().all(|r| r.len() == seq), "a packed row of another length");
        }
    }
    let _ = std::fs::remove_file(&path);
}
