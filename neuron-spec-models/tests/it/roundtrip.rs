//! Our own shard → consolidate round trip, on disk, reproduces the input byte for byte.

use crate::common;
use common::*;
use neuron_spec::checkpoint::{ShardedCheckpoint, WriteOptions};
use neuron_spec::format::{HfCheckpoint, SafetensorsFile};
use neuron_spec::{consolidate, shard};
use neuron_spec::{DType, TensorSource};
use neuron_spec_models::{layout_of_dir, QkvLayout};

fn roundtrip(dir: &str, tp: usize, fuse: bool) -> (tempfile::TempDir, HfCheckpoint) {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("sharded");
    let out = tmp.path().join("hf");
    let meta = layout(dir, tp, fuse);
    shard(&fixture(dir), &sharded, &meta, tp, &WriteOptions::default()).unwrap();
    consolidate(&sharded, &out, &WriteOptions::default()).unwrap();
    let back = HfCheckpoint::open(&out).unwrap();
    assert_same_tensors(&back, &hf(dir), &format!("{dir} tp{tp} fuse={fuse}"));
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(fixture(dir).join("config.json")).unwrap(),
        "config.json is copied along"
    );
    (tmp, back)
}

#[test]
fn llama_gqa_roundtrips_at_every_tp() {
    for tp in [1, 2, 4, 8] {
        for fuse in [true, false] {
            roundtrip("llama-gqa", tp, fuse);
        }
    }
}

#[test]
fn llama_gqa_from_fourteen_files_roundtrips() {
    let (_tmp, back) = roundtrip("llama-gqa-sharded", 4, true);
    assert_same_tensors(&back, &hf("llama-gqa"), "sharded input vs single-file");
}

#[test]
fn bf16_bits_are_kept() {
    for tp in [2, 8] {
        let (_tmp, back) = roundtrip("llama-gqa-bf16", tp, true);
        for n in back.names() {
            assert_eq!(back.info(&n).unwrap().dtype, DType::BF16, "{n}");
        }
    }
}

#[test]
fn uneven_vocab_is_padded_on_ranks_and_stripped_on_output() {
    for tp in [4, 8] {
        let tmp = tempfile::tempdir().unwrap();
        let sharded = tmp.path().join("sharded");
        // 4 heads cannot be split over 8 ranks: at tp 8 the attention uses the plain (padded) layout.
        let qkv = if tp == 8 { QkvLayout::Plain } else { QkvLayout::Fused };
        shard(
            &fixture("llama-mha-tied"),
            &sharded,
            &layout_of_dir(&fixture("llama-mha-tied"), tp, qkv).unwrap(),
            tp,
            &WriteOptions::default(),
        )
        .unwrap();
        let ck = ShardedCheckpoint::open(&sharded).unwrap();
        let rows = 250usize.div_ceil(tp);
        let full = hf("llama-mha-tied").tensor("model.embed_tokens.weight").unwrap();
        let row_bytes = 32 * 4;
        for (r, f) in ck.ranks.iter().enumerate() {
            let t = f.tensor("model.embed_tokens.weight").unwrap();
            assert_eq!(t.shape(), &[rows, 32], "every rank has the same shape");
            let start = (r * rows).min(250);
            let end = ((r + 1) * rows).min(250);
            let real = (end - start) * row_bytes;
            assert!(t.bytes()[..real] == full.bytes()[start * row_bytes..end * row_bytes], "rank {r} rows");
            assert!(t.bytes()[real..].iter().all(|b| *b == 0), "rank {r} padding is zeros");
            assert!(f.info("lm_head.weight").is_none(), "tied: no lm_head on ranks");
        }
        let p = &ck.metadata.parameters["model.embed_tokens.weight"];
        assert_eq!(p.shape.as_deref(), Some(&[250usize, 32][..]), "the true size is recorded");
        let out = tmp.path().join("hf");
        consolidate(&sharded, &out, &WriteOptions::default()).unwrap();
        let back = HfCheckpoint::open(&out).unwrap();
        assert_same_tensors(&back, &hf("llama-mha-tied"), &format!("mha-tied tp{tp}"));
        assert!(back.info("lm_head.weight").is_none());
    }
}

#[test]
fn sharded_checkpoint_mirrors_the_reference_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("s");
    shard(&fixture("llama-gqa"), &sharded, &layout("llama-gqa", 4, true), 4, &WriteOptions::default()).unwrap();
    assert!(sharded.join("config.json").exists());
    assert!(sharded.join("shards/mp_metadata_pp_rank_0.json").exists());
    for r in 0..4 {
        let f = SafetensorsFile::open(
            &sharded.join(format!("shards/model/dp_rank_00_tp_rank_{r:02}_pp_rank_00.safetensors")),
        )
        .unwrap();
        assert!(f.info("model.layers.0.self_attn.qkv_proj.weight_qkv").is_some());
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
    }
    // Nothing but the destination is left in the parent directory.
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("s")]);
}

#[test]
fn tiny_max_shard_size_writes_several_files_and_an_index() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("s");
    let out = tmp.path().join("hf");
    shard(&fixture("llama-gqa"), &sharded, &layout("llama-gqa", 2, true), 2, &WriteOptions::default()).unwrap();
    let opts = WriteOptions { max_shard_size: Some(40_000), ..Default::default() };
    let report = consolidate(&sharded, &out, &opts).unwrap();
    assert!(report.files.len() > 3, "several files: {:?}", report.files);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], 361728);
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 21);
    let back = HfCheckpoint::open(&out).unwrap();
    assert_same_tensors(&back, &hf("llama-gqa"), "multi-file output");
    for f in back.files() {
        let name = f.path().file_name().unwrap().to_string_lossy().to_string();
        let n = back.files().len();
        assert!((1..=n).any(|k| name == format!("model-{k:05}-of-{n:05}.safetensors")), "{name}");
        let bytes: usize = f.names().map(|n| f.info(n).unwrap().nbytes()).sum();
        assert!(bytes <= 40_000 || f.names().count() == 1, "{name} holds {bytes} bytes");
    }
}

#[test]
fn heads_not_divisible_by_tp_is_a_spec_error() {
    let e = layout_of_dir(&fixture("llama-mha-tied"), 8, QkvLayout::Fused).unwrap_err().to_string();
    assert!(e.contains("num_attention_heads") && e.contains("not divisible by tp 8"), "{e}");
}
