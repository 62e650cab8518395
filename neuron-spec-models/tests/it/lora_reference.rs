//! LoRA mean mode (the reference's semantics: a fused group's LoRA A is the mean of its members' A) against
//! optimum-neuron 0.4.5's own output on `llama-gqa-lora` (`tests/fixtures/tp-ref-lora/`, made by
//! `tests/fixtures/scripts/make_tp_ref_lora.py`): the adapted config, the rank shards of `adapt_state_dict` byte
//! for byte, the TP attributes of `create_parameter_metadata`, and `to_original_weights` of those shards.

use crate::common;
use common::*;
use neuron_spec::checkpoint::adapters::imported_rank_adapter;
use neuron_spec::checkpoint::WriteOptions;
use neuron_spec::format::{HfCheckpoint, SafetensorsFile};
use neuron_spec::lora::{
    adapt_peft_config_for_model, export_adapter, import_adapter, remove_adapter_name, ImportedAdapter, LoraConfig,
    LoraImportOptions, LoraMode, PeftAdapter, TargetModules,
};
use neuron_spec::{consolidate_with_adapters, shard_with_adapters, AdapterOptions, StateDict, TensorSource};
use neuron_spec_models::ModelConfig;

/// The reference's LoRA names carry peft's prefix; ours are the TP model's names.
const PREFIX: &str = "base_model.model.";

fn cfg() -> ModelConfig {
    ModelConfig::read(&fixture("llama-gqa").join("config.json")).unwrap()
}

fn mean() -> LoraImportOptions {
    LoraImportOptions { mode: LoraMode::Mean, allow_partial: false }
}

fn layout(fuse: bool) -> &'static str {
    if fuse {
        "fused"
    } else {
        "unfused"
    }
}

fn reference_dir(tp: usize) -> std::path::PathBuf {
    fixture("tp-ref-lora/llama-gqa-lora").join(format!("tp{tp}"))
}

fn import(tp: usize, fuse: bool) -> ImportedAdapter {
    let meta = neuron_spec_models::layout(&cfg(), tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
    import_adapter(&meta, &PeftAdapter::open(&fixture("llama-gqa-lora")).unwrap(), "default", mean()).unwrap()
}

/// A reference rank file in our names: `base_model.model.` dropped, and with fuse_qkv the fused B renamed from
/// `qkv_proj.lora_B.weight` (what the reference's adapt emits, its finding 4) to `qkv_proj.lora_B.weight_qkv`
/// (the parameter's name, which its own `to_original_weights` reads).
fn reference_rank(tp: usize, fuse: bool, rank: usize) -> StateDict {
    let f = SafetensorsFile::open(&reference_dir(tp).join(format!("{}_rank{rank}.safetensors", layout(fuse)))).unwrap();
    let mut out = StateDict::new();
    for n in f.names() {
        let mut name = n.strip_prefix(PREFIX).unwrap_or_else(|| panic!("{n}: no {PREFIX}")).to_string();
        if name.ends_with("qkv_proj.lora_B.weight") {
            assert!(fuse, "{n} in an unfused rank file");
            name.push_str("_qkv");
        }
        out.insert(name, f.tensor(n).unwrap());
    }
    out
}

fn reference_consolidated(tp: usize, fuse: bool) -> SafetensorsFile {
    SafetensorsFile::open(&reference_dir(tp).join(format!("consolidated_{}.safetensors", layout(fuse)))).unwrap()
}

#[test]
fn mean_mode_config_translation_is_the_reference_adapt_peft_config() {
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tp-ref-lora/llama-gqa-lora/adapter_config_adapted.json")).unwrap(),
    )
    .unwrap();
    let mut want: Vec<String> =
        want["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    want.sort();
    let orig = LoraConfig::read(&fixture("llama-gqa-lora")).unwrap();
    for (tp, fuse) in [(2, true), (4, false), (8, true)] {
        let meta = neuron_spec_models::layout(&cfg(), tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
        let TargetModules::List(mut got) = adapt_peft_config_for_model(&meta, &orig, &mean()).unwrap().target_modules
        else {
            panic!("not a list")
        };
        got.sort();
        assert_eq!(got, want, "tp {tp}");
    }
}

#[test]
fn mean_mode_rank_shards_are_the_reference_adapt_state_dict_byte_for_byte() {
    for tp in [2, 4, 8] {
        for fuse in [true, false] {
            let meta = neuron_spec_models::layout(&cfg(), tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
            let a = import(tp, fuse);
            assert_eq!(a.warnings.len(), 1, "said once: {:?}", a.warnings);
            assert!(a.warnings[0].contains("mean mode"), "{}", a.warnings[0]);
            for rank in 0..tp {
                let ours = imported_rank_adapter(&meta, &a, tp, rank).unwrap();
                let what = format!("tp {tp} {} rank {rank}", layout(fuse));
                assert_same_tensors(&ours.tensors, &reference_rank(tp, fuse, rank), &what);
            }
        }
    }
}

/// The TP attributes of the LoRA parameters equal the reference's `create_parameter_metadata` on its LoRA model,
/// except `gate_up_proj.lora_B`'s stride (see the comment inside).
#[test]
fn mean_mode_parameter_metadata_has_the_reference_tp_attributes() {
    for tp in [2, 4, 8] {
        for fuse in [true, false] {
            let a = import(tp, fuse);
            let path = reference_dir(tp).join(format!("metadata_{}.json", layout(fuse)));
            let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let want = want["parameters"].as_object().unwrap();
            let lora: Vec<(String, &serde_json::Value)> = want
                .iter()
                .filter(|(n, _)| n.contains(".lora_"))
                .map(|(n, v)| (remove_adapter_name(n.strip_prefix(PREFIX).unwrap()), v))
                .collect();
            assert_eq!(lora.len(), a.metadata.parameters.len(), "tp {tp}: parameter count");
            for (name, v) in lora {
                let p = a.metadata.parameters.get(&name).unwrap_or_else(|| panic!("tp {tp}: no {name}"));
                let tmp = v["tensor_model_parallel"].as_bool().unwrap();
                assert_eq!(p.tensor_model_parallel, tmp, "tp {tp} {name}");
                if tmp {
                    assert_eq!(p.partition_dim, v["partition_dim"].as_u64().map(|x| x as usize), "tp {tp} {name}");
                    assert_eq!(p.num_partitions, v["num_partitions"].as_u64().map(|x| x as usize), "{name}");
                    // The reference's lora_B of gate_up_proj is a fresh ColumnParallelLinear (stride 1) holding
                    // [gate block R; up block R]; ours records the fused weight's stride 2, which is what that
                    // layout is in NxD terms. Its consolidation ignores the stride of LoRA parameters.
                    let stride = if name.ends_with("gate_up_proj.lora_B.weight") { 2 } else { 1 };
                    assert_eq!(v["partition_stride"].as_u64(), Some(1), "{name}");
                    assert_eq!(p.partition_stride, Some(stride), "tp {tp} {name}");
                }
            }
        }
    }
}

/// Our consolidation of the reference's own rank shards, exported in peft's terms, equals the reference's
/// `to_original_weights` (via `consolidate_tensor_parallel_checkpoints`) byte for byte.
#[test]
fn our_consolidation_of_the_reference_shards_is_its_to_original_weights() {
    for tp in [2, 4, 8] {
        for fuse in [true, false] {
            let meta = neuron_spec_models::layout(&cfg(), tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
            let a = import(tp, fuse);
            let ranks: Vec<StateDict> = (0..tp).map(|r| reference_rank(tp, fuse, r)).collect();
            let sources: Vec<&dyn TensorSource> = ranks.iter().map(|r| r as &dyn TensorSource).collect();
            let full = neuron_spec::to_original_weights(&a.metadata, &sources).unwrap();
            let ex = export_adapter(&meta, &a.config, &full).unwrap();
            let what = format!("tp {tp} {}", layout(fuse));
            assert_same_tensors(&ex.tensors, &reference_consolidated(tp, fuse), &what);
        }
    }
}

/// The same through the files: `shard --lora-mode mean` then `consolidate` writes the reference's
/// `to_original_weights` output, and the base weights come back.
#[test]
fn mean_mode_shard_then_consolidate_writes_the_reference_to_original_weights() {
    for (tp, fuse) in [(2, false), (4, true), (8, false)] {
        let tmp = tempfile::tempdir().unwrap();
        let meta = neuron_spec_models::layout(&cfg(), tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
        let s = tmp.path().join("sharded");
        shard_with_adapters(&fixture("llama-gqa"), &s, &meta, tp, &[import(tp, fuse)], &WriteOptions::default())
            .unwrap();
        let out = tmp.path().join("out");
        consolidate_with_adapters(&s, &out, &WriteOptions::default(), &AdapterOptions::default()).unwrap();
        let got = SafetensorsFile::open(&out.join("default/adapter_model.safetensors")).unwrap();
        assert_same_tensors(&got, &reference_consolidated(tp, fuse), &format!("tp {tp} {}", layout(fuse)));
        assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf("llama-gqa"), "base weights");
    }
}

/// Mean mode is lossy, as the reference is: the averaged A's differ from peft's (0.11–0.16 here), and the logits
/// with the mean-mode adapter are far from peft's golden.
#[test]
fn mean_mode_is_lossy_like_the_reference() {
    let orig = SafetensorsFile::open(&fixture("llama-gqa-lora/adapter_model.safetensors")).unwrap();
    let back = reference_consolidated(4, true);
    let mut worst = 0f32;
    for n in orig.names() {
        let d = neuron_spec::compare::max_abs_diff(
            &orig.tensor(n).unwrap().to_f32_vec(),
            &back.tensor(n).unwrap().to_f32_vec(),
        )
        .unwrap();
        let averaged =
            ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"].iter().any(|m| n.contains(&format!("{m}.lora_A")));
        assert_eq!(d > 0.1, averaged, "{n}: {d}");
        worst = worst.max(d);
    }
    eprintln!("reference round trip, averaged A's: max |Δ| {worst:.3}");
    let g = SafetensorsFile::open(&fixture("llama-gqa-lora/golden_lora.safetensors")).unwrap();
    let ids = g.tensor("input_ids").unwrap();
    let s = ids.shape()[1];
    let ids: Vec<Vec<i64>> = ids.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect();
    let out = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&hf("llama-gqa"), cfg().clone())
            .fuse_qkv(true)
            .with_imported(&[import(2, true)]),
        &neuron_spec_models::Transport::threads(2),
        &neuron_spec_models::Forward::new(ids.to_vec()),
    )
    .unwrap();
    let d = neuron_spec::compare::max_abs_diff(&out.logits, &g.tensor("logits").unwrap().to_f32_vec()).unwrap();
    eprintln!("tp 2 mean mode: max |Δ logits| vs peft {d:.3}");
    assert!(d > 0.1, "{d}");
}
