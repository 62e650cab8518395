//! `guess_peft_type` and `get_tensor_model_parallel_attributes` against what the reference returns for the
//! same modules: the reference's parameter metadata (`tp-ref/llama-gqa/tpN/metadata_*.json`, which optimum-neuron
//! writes from `get_tensor_model_parallel_attributes` of each parameter), and `"lora"` / `None` for a fused
//! layer with / without LoRA (optimum-neuron's `guess_peft_type` checks for peft's `ParallelLinear` there).

use crate::common;
use burn::tensor::Device;
use common::*;
use neuron_spec::checkpoint::adapters::sharded_adapters;
use neuron_spec::checkpoint::{ShardedCheckpoint, WriteOptions};
use neuron_spec::lora::{import_adapter, LoraImportOptions, LoraRankSource, PeftAdapter};
use neuron_spec::shard_with_adapters;
use neuron_spec::spec::contract::{CustomModule, TpContext};
use neuron_spec::spec::reference_names::{get_tensor_model_parallel_attributes, guess_peft_type};
use neuron_spec::{CheckpointMetadata, Error};
use neuron_spec_models::{LlamaForCausalLM, ModelConfig};

fn cfg() -> ModelConfig {
    ModelConfig::read(&fixture("llama-gqa/config.json")).unwrap()
}

#[test]
fn tp_attributes_equal_the_reference_metadata_for_every_parameter() {
    for tp in [2, 4, 8] {
        for (fuse, file) in [(true, "metadata_fused.json"), (false, "metadata_unfused.json")] {
            let reference = CheckpointMetadata::read(&fixture(&format!("tp-ref/llama-gqa/tp{tp}/{file}"))).unwrap();
            let model =
                LlamaForCausalLM::new(&cfg().llama, TpContext::new(tp, 0).unwrap(), fuse, None, &Device::default())
                    .unwrap();
            for (name, want) in &reference.parameters {
                let got = get_tensor_model_parallel_attributes(&model, name).unwrap();
                assert_eq!(&got, want, "{name} at tp {tp}, fuse {fuse}");
            }
        }
    }
    let model =
        LlamaForCausalLM::new(&cfg().llama, TpContext::new(2, 0).unwrap(), true, None, &Device::default()).unwrap();
    let e = get_tensor_model_parallel_attributes(&model, "model.layers.0.mlp.gate_proj.weight").unwrap_err();
    assert!(
        matches!(&e, Error::KeyMismatch { missing, .. } if missing.iter().any(|(n, s)| n == "model.layers.0.mlp.gate_proj.weight"
            && s.as_deref().is_some_and(|s| s.contains("gate_up_proj")))),
        "{e:?}"
    );
}

#[test]
fn guess_peft_type_is_lora_exactly_where_a_layer_carries_an_adapter() {
    let tp = 2;
    let meta = neuron_spec_models::layout(&cfg(), tp, neuron_spec_models::QkvLayout::gqa(true)).unwrap();
    let d = Device::default();
    let plain = LlamaForCausalLM::new(&cfg().llama, TpContext::new(tp, 1).unwrap(), true, None, &d).unwrap();
    let specs = plain.transformation_specs().unwrap();
    for g in &specs {
        for s in &g.specs {
            assert_eq!(guess_peft_type(s, &plain, &g.module_fully_qualified_name).unwrap(), None);
        }
    }
    // The q/v adapter (partial mode) targets attention only: attention layers carry LoRA, the MLPs none.
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("s");
    let opts = LoraImportOptions { allow_partial: true, ..Default::default() };
    let a = import_adapter(&meta, &PeftAdapter::open(&fixture("llama-gqa-lora-qv")).unwrap(), "default", opts).unwrap();
    shard_with_adapters(&fixture("llama-gqa"), &s, &meta, tp, &[a], &WriteOptions::default()).unwrap();
    let ck = ShardedCheckpoint::open(&s).unwrap();
    let ras: Vec<_> = sharded_adapters(&s).unwrap().iter().map(|a| a.rank_adapter(1).unwrap()).collect();
    let src = LoraRankSource::new(&ck.ranks[1], ras).unwrap();
    let with = LlamaForCausalLM::new(&cfg().llama, TpContext::new(tp, 1).unwrap(), true, None, &d)
        .unwrap()
        .load_rank_tensors("", &src, &d)
        .unwrap();
    for g in &specs {
        for sp in &g.specs {
            let want = g.module_fully_qualified_name.ends_with("self_attn").then(|| "lora".to_string());
            assert_eq!(
                guess_peft_type(sp, &with, &g.module_fully_qualified_name).unwrap(),
                want,
                "{}",
                g.module_fully_qualified_name
            );
        }
    }
    let e = guess_peft_type(&specs[0].specs[0], &with, "model.layers.9.self_attn").unwrap_err();
    assert!(matches!(&e, Error::Argument(m) if m.contains("model.layers.9.self_attn")), "{e:?}");
}
