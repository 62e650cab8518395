//! Pipeline stages: `shard --tp T --pp P` → consolidate is byte-exact, each stage holds only its layers,
//! forward from a staged checkpoint matches the golden, reshard between (tp, pp) pairs equals direct
//! sharding, multi-file HF sources work, and bad stage requests fail clearly.

mod common;
use common::*;
use neuron_spec::checkpoint::{ShardedCheckpoint, WriteOptions};
use neuron_spec::reshard::reshard;
use neuron_spec::stages::layer_index;
use neuron_spec::{consolidate, shard};
use std::fs;
use std::path::Path;

fn opts(pp: usize) -> WriteOptions {
    WriteOptions { pp: Some(pp), ..Default::default() }
}

fn golden_ids_and_logits(dir: &str) -> (Vec<Vec<i64>>, Vec<f32>) {
    let f = open(&format!("{dir}/golden.safetensors"));
    let ids = f.tensor("input_ids").unwrap();
    let s = ids.shape()[1];
    let ids = ids.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect();
    (ids, f.tensor("logits").unwrap().to_f32_vec())
}

fn forward_diff(dir: &Path, golden: &str) -> f32 {
    let (ids, logits) = golden_ids_and_logits(golden);
    let out = neuron_spec_examples::run_sharded_forward(dir, &ids).unwrap();
    neuron_spec::compare::max_abs_diff(&out.logits, &logits).unwrap()
}

#[test]
fn shard_with_stages_then_consolidate_is_byte_exact_and_forward_matches() {
    let want = fs::read(fixture("llama-gqa/model.safetensors")).unwrap();
    for tp in [2, 4, 8] {
        let tmp = tempfile::tempdir().unwrap();
        let (s, out) = (tmp.path().join("s"), tmp.path().join("hf"));
        shard(&fixture("llama-gqa"), &s, &layout("llama-gqa", tp, true), tp, &opts(2)).unwrap();
        for stage in 0..2 {
            assert!(s.join(format!("shards/mp_metadata_pp_rank_{stage}.json")).is_file());
            for r in 0..tp {
                assert!(s
                    .join(format!("shards/model/dp_rank_00_tp_rank_{r:02}_pp_rank_{stage:02}.safetensors"))
                    .is_file());
            }
        }
        let ck = ShardedCheckpoint::open(&s).unwrap();
        assert_eq!((ck.tp, ck.pp()), (tp, 2));
        // Stage 0: embed_tokens and layer 0; stage 1: layer 1, norm and lm_head. Metadata and files alike.
        for (stage, m) in ck.stages.iter().enumerate() {
            for n in m.parameters.keys() {
                let ok = match layer_index(n) {
                    Some(l) => l == stage,
                    None => (stage == 0) == n.starts_with("model.embed_tokens"),
                };
                assert!(ok, "stage {stage} lists {n}");
            }
            for spec in &m.model_weight_transformation_specs {
                assert_eq!(layer_index(&spec.module_fully_qualified_name), Some(stage));
            }
            for r in &ck.ranks {
                let names = r.files()[stage].source().names();
                let mut listed: Vec<&String> = m.parameters.keys().collect();
                let mut held: Vec<&String> = names.iter().collect();
                listed.sort();
                held.sort();
                assert_eq!(listed, held, "tp {tp} stage {stage}");
            }
        }
        consolidate(&s, &out, &WriteOptions::default()).unwrap();
        assert!(fs::read(out.join("model.safetensors")).unwrap() == want, "tp {tp} pp 2");
        let d = forward_diff(&s, "llama-gqa");
        eprintln!("tp {tp} pp 2: max |Δ| logits {d:.2e}");
        assert!(d <= 1e-4, "tp {tp}: {d}");
    }
}

#[test]
fn fewer_layers_than_stages_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("s");
    let e = shard(&fixture("llama-gqa"), &s, &layout("llama-gqa", 2, true), 2, &opts(3)).unwrap_err().to_string();
    assert!(e.contains("2 decoder layers") && e.contains("3 pipeline stages"), "{e}");
    assert!(!s.exists());
}

#[test]
fn reshard_2_2_to_4_1_equals_direct_sharding_at_tp_4() {
    for fuse in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, direct) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("d"));
        shard(&fixture("llama-gqa"), &a, &layout("llama-gqa", 2, fuse), 2, &opts(2)).unwrap();
        reshard(&a, &b, 4, &opts(1)).unwrap();
        shard(&fixture("llama-gqa"), &direct, &layout("llama-gqa", 4, fuse), 4, &WriteOptions::default()).unwrap();
        let (rb, rd) = (ShardedCheckpoint::open(&b).unwrap(), ShardedCheckpoint::open(&direct).unwrap());
        assert_eq!((rb.tp, rb.pp()), (4, 1));
        for r in 0..4 {
            assert_same_tensors(&rb.ranks[r], &rd.ranks[r], &format!("fuse {fuse} rank {r}"));
        }
        assert_eq!(rb.stages[0], rd.stages[0], "fuse {fuse}: metadata (with checksums) equals direct sharding's");
        // And back: (4, 1) → (2, 2) equals the first sharding.
        let c = tmp.path().join("c");
        reshard(&direct, &c, 2, &opts(2)).unwrap();
        let (rc, ra) = (ShardedCheckpoint::open(&c).unwrap(), ShardedCheckpoint::open(&a).unwrap());
        assert_eq!(rc.stages, ra.stages);
    }
}

#[test]
fn multi_file_hf_source_works_with_stages() {
    let want = fs::read(fixture("llama-gqa/model.safetensors")).unwrap();
    for tp in [2, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let (s, out) = (tmp.path().join("s"), tmp.path().join("hf"));
        shard(&fixture("llama-gqa-sharded"), &s, &layout("llama-gqa-sharded", tp, true), tp, &opts(2)).unwrap();
        consolidate(&s, &out, &WriteOptions::default()).unwrap();
        assert!(fs::read(out.join("model.safetensors")).unwrap() == want, "tp {tp}");
        assert!(forward_diff(&s, "llama-gqa") <= 1e-4);
    }
}

#[test]
fn tied_embeddings_across_stages_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, out) = (tmp.path().join("s"), tmp.path().join("hf"));
    shard(&fixture("llama-mha-tied"), &s, &layout("llama-mha-tied", 2, true), 2, &opts(2)).unwrap();
    let ck = ShardedCheckpoint::open(&s).unwrap();
    // The last stage holds the copy its output projection uses.
    assert!(ck.stages[1].parameters.contains_key("model.embed_tokens.weight"));
    drop(ck);
    consolidate(&s, &out, &WriteOptions::default()).unwrap();
    assert_same_tensors(&neuron_spec::io::HfCheckpoint::open(&out).unwrap(), &hf("llama-mha-tied"), "tied pp 2");
    assert!(forward_diff(&s, "llama-mha-tied") <= 1e-4);

    // One element of stage 1's copy changed (checksum refreshed, so only the copy check can see it).
    let f = s.join("shards/model/dp_rank_00_tp_rank_01_pp_rank_01.safetensors");
    let st = neuron_spec::io::SafetensorsFile::open(&f).unwrap();
    let t = st.tensor("model.embed_tokens.weight").unwrap();
    let mut bytes = fs::read(&f).unwrap();
    let at = bytes.windows(16).position(|w| w == &t.bytes()[..16]).unwrap();
    drop((t, st));
    bytes[at] ^= 1;
    fs::write(&f, &bytes).unwrap();
    let mpath = s.join("shards/mp_metadata_pp_rank_1.json");
    let mut m: serde_json::Value = serde_json::from_str(&fs::read_to_string(&mpath).unwrap()).unwrap();
    let w = neuron_spec::io::file_xxh3(&f).unwrap();
    m["rank_files"][1]["xxh3_64"] = format!("{:016x}", w.xxh3).into();
    fs::write(&mpath, serde_json::to_string(&m).unwrap()).unwrap();
    let out2 = tmp.path().join("hf2");
    let e = consolidate(&s, &out2, &WriteOptions::default()).unwrap_err().to_string();
    assert!(e.contains("model.embed_tokens.weight") && e.contains("stage 1") && e.contains("differs"), "{e}");
    assert!(!out2.exists());
}
