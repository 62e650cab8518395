//! An MLP that tp does not divide (intermediate 64 at tp 3 and 6): gate and up are padded per member on every
//! rank (like the vocabulary) and stripped on export. Forward equals transformers' golden, shard → consolidate is
//! byte-exact, reshard equals direct sharding (`llama-uneven-mlp`, made by tests/fixtures/make/).

use crate::common;
use common::*;
use neuron_spec::checkpoint::{ShardedCheckpoint, WriteOptions};
use neuron_spec::format::{HfCheckpoint, SafetensorsFile};
use neuron_spec::ops::reshard::reshard;
use neuron_spec::TensorSource;
use neuron_spec::{consolidate, shard};
use neuron_spec_models::ModelConfig;

const DIR: &str = "llama-uneven-mlp";

fn cfg() -> ModelConfig {
    ModelConfig::read(&fixture(DIR).join("config.json")).unwrap()
}

#[test]
fn forward_matches_the_golden_at_tp_1_3_6() {
    let f = SafetensorsFile::open(&fixture(DIR).join("golden.safetensors")).unwrap();
    let ids = f.tensor("input_ids").unwrap();
    let ids: Vec<Vec<i64>> = ids.to_i64_vec().unwrap().chunks(ids.shape()[1]).map(<[i64]>::to_vec).collect();
    let (logits, h1) = (f.tensor("logits").unwrap().to_f32_vec(), f.tensor("hidden_1").unwrap().to_f32_vec());
    let src = hf(DIR);
    for tp in [1, 3, 6] {
        for fuse in [true, false] {
            let out = neuron_spec_models::run(
                &neuron_spec_models::Source::tensors(&src, cfg().clone()).fuse_qkv(fuse),
                &neuron_spec_models::Transport::threads(tp),
                &neuron_spec_models::Forward::new(ids.to_vec()),
            )
            .unwrap();
            let dl = neuron_spec::compare::max_abs_diff(&out.logits, &logits).unwrap();
            let d1 = neuron_spec::compare::max_abs_diff(out.hidden_1.as_deref().unwrap(), &h1).unwrap();
            eprintln!("{DIR} tp {tp} fuse_qkv {fuse}: max |Δ| logits {dl:.2e}, hidden_1 {d1:.2e}");
            assert!(dl <= 1e-4 && d1 <= 1e-4, "tp {tp} fuse {fuse}: {dl} {d1}");
        }
    }
}

#[test]
fn members_are_padded_per_member_and_metadata_keeps_the_true_shape() {
    let meta = neuron_spec_models::layout(&cfg(), 3, neuron_spec_models::QkvLayout::gqa(true)).unwrap();
    assert_eq!(meta.parameters["model.layers.0.mlp.gate_up_proj.weight"].shape, Some(vec![128, 48]));
    let tmp = tempfile::tempdir().unwrap();
    shard(&fixture(DIR), &tmp.path().join("s"), &meta, 3, &WriteOptions::default()).unwrap();
    let ck = ShardedCheckpoint::open(&tmp.path().join("s")).unwrap();
    let hf = hf(DIR);
    let gate = hf.tensor("model.layers.0.mlp.gate_proj.weight").unwrap();
    let up = hf.tensor("model.layers.0.mlp.up_proj.weight").unwrap();
    // 64 rows over 3 ranks: 22, 22 and 20 + 2 rows of zeros, for gate and for up.
    let last = ck.ranks[2].tensor("model.layers.0.mlp.gate_up_proj.weight").unwrap();
    assert_eq!(last.shape(), &[44, 48]);
    let row = |t: &neuron_spec::HostTensor, r: usize| t.narrow(0, r, 1).unwrap().bytes().to_vec();
    assert_eq!(row(&last, 0), row(&gate, 44));
    assert_eq!(row(&last, 19), row(&gate, 63));
    assert!(row(&last, 20).iter().chain(&row(&last, 21)).all(|b| *b == 0));
    assert_eq!(row(&last, 22), row(&up, 44));
    assert!(row(&last, 43).iter().all(|b| *b == 0));
}

#[test]
fn shard_consolidate_is_byte_exact_and_reshard_equals_direct_sharding() {
    for (n, m, fuse) in [(3, 6, true), (6, 3, false), (1, 3, true), (6, 1, true)] {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, out, direct) =
            (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("hf"), tmp.path().join("direct"));
        shard(
            &fixture(DIR),
            &a,
            &neuron_spec_models::layout(&cfg(), n, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap(),
            n,
            &WriteOptions::default(),
        )
        .unwrap();
        consolidate(&a, &out, &WriteOptions::default()).unwrap();
        assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf(DIR), &format!("{DIR} tp {n}"));
        reshard(&a, &b, m, &WriteOptions::default()).unwrap();
        shard(
            &fixture(DIR),
            &direct,
            &neuron_spec_models::layout(&cfg(), m, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap(),
            m,
            &WriteOptions::default(),
        )
        .unwrap();
        let (rb, rd) = (ShardedCheckpoint::open(&b).unwrap(), ShardedCheckpoint::open(&direct).unwrap());
        for r in 0..m {
            assert_same_tensors(&rb.ranks[r], &rd.ranks[r], &format!("{DIR} {n}->{m} rank {r}"));
        }
    }
}
