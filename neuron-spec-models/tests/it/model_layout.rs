//! The example model's own layout against the reference: parameter metadata, rank tensors loaded through
//! the burn model, consolidation back to the HF checkpoint, and burn-store loading.

use crate::common;
use burn::tensor::Device;
use burn_store::ModuleSnapshot;
use common::*;
use neuron_spec::layers::HfRankStore;
use neuron_spec::spec::compile::to_original_weights;
use neuron_spec::spec::contract::{CustomModule, TpContext};
use neuron_spec::{CheckpointMetadata, StateDict, TensorSource};
use neuron_spec_models::{LlamaForCausalLM, ModelConfig};

fn cfg(dir: &str) -> ModelConfig {
    ModelConfig::read(&fixture(dir).join("config.json")).unwrap()
}

fn empty_model(dir: &str, tp: usize, rank: usize, fuse: bool) -> LlamaForCausalLM {
    LlamaForCausalLM::new(&cfg(dir).llama, TpContext::new(tp, rank).unwrap(), fuse, None, &Device::default()).unwrap()
}

/// Every rank's tensors, loaded from the HF checkpoint into the burn model and saved back.
fn saved_ranks(dir: &str, tp: usize, fuse: bool) -> Vec<StateDict> {
    let src = hf(dir);
    let c = cfg(dir);
    (0..tp)
        .map(|r| {
            let d = Device::default();
            let m = neuron_spec_models::Source::tensors(&src, c.clone())
                .fuse_qkv(fuse)
                .load(TpContext::new(tp, r).unwrap(), &d)
                .unwrap();
            let mut out = StateDict::new();
            m.save_rank_tensors("", &mut out).unwrap();
            out
        })
        .collect()
}

#[test]
fn model_metadata_equals_the_reference_metadata() {
    for tp in [2, 4, 8] {
        for (fuse, file) in [(true, "metadata_fused.json"), (false, "metadata_unfused.json")] {
            let path = fixture(&format!("tp-ref/llama-gqa/tp{tp}/{file}"));
            let reference = CheckpointMetadata::read(&path).unwrap();
            let ours = empty_model("llama-gqa", tp, 0, fuse).create_parameter_metadata().unwrap();
            assert_eq!(
                ours.model_weight_transformation_specs, reference.model_weight_transformation_specs,
                "tp{tp} {file}"
            );
            // Our optional global shape/dtype are extra; everything the reference records must be equal.
            let mut params = ours.parameters.clone();
            for p in params.values_mut() {
                assert!(p.shape.is_some(), "global shapes are recorded");
                p.shape = None;
                p.dtype = None;
            }
            assert_eq!(params, reference.parameters, "tp{tp} {file}");
            let ours_json: serde_json::Value = serde_json::from_str(&ours.to_json().unwrap()).unwrap();
            let ref_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(ours_json["model_weight_transformation_specs"], ref_json["model_weight_transformation_specs"]);
            // What the CLI shards with is this same model's metadata.
            assert_eq!(ours, layout("llama-gqa", tp, fuse));
        }
    }
}

#[test]
fn rank_tensors_loaded_through_the_model_equal_the_reference_rank_files() {
    for tp in [2, 4, 8] {
        for fuse in [true, false] {
            for (rank, ours) in saved_ranks("llama-gqa", tp, fuse).iter().enumerate() {
                let reference = open(&format!("tp-ref/llama-gqa/tp{tp}/rank{rank}.safetensors"));
                assert_eq!(ours.len(), if fuse { 15 } else { 19 });
                for (name, t) in ours {
                    let r = reference.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!((t.dtype(), t.shape()), (r.dtype(), r.shape()), "tp{tp} rank{rank} {name}");
                    assert!(t.bytes() == r.bytes(), "tp{tp} rank{rank} fuse={fuse} {name}: bytes differ");
                }
            }
        }
    }
}

fn round_trip(dir: &str, tp: usize, fuse: bool) {
    let ranks = saved_ranks(dir, tp, fuse);
    let meta = empty_model(dir, tp, 0, fuse).create_parameter_metadata().unwrap();
    let sources: Vec<&dyn TensorSource> = ranks.iter().map(|r| r as &dyn TensorSource).collect();
    let out = to_original_weights(&meta, &sources).unwrap();
    assert_same_tensors(&out, &hf(dir), &format!("{dir} tp{tp} fuse={fuse}"));
}

#[test]
fn load_save_consolidate_reproduces_the_hf_checkpoint_byte_for_byte() {
    for tp in [1, 2, 4, 8] {
        for fuse in [true, false] {
            round_trip("llama-gqa", tp, fuse);
        }
    }
    // Padded vocab (250 over 4 ranks) and tied embeddings: the padding never reaches the HF tensors.
    for tp in [2, 4] {
        round_trip("llama-mha-tied", tp, true);
    }
}

#[test]
fn padded_embedding_rank_holds_zero_tail_rows() {
    let ranks = saved_ranks("llama-mha-tied", 4, true);
    let last = ranks[3]["model.embed_tokens.weight"].to_f32_vec();
    assert_eq!(ranks[3]["model.embed_tokens.weight"].shape(), &[63, 32]);
    assert!(last[61 * 32..].iter().all(|v| *v == 0.0));
    assert!(last[..61 * 32].iter().any(|v| *v != 0.0));
}

#[test]
fn burn_store_loads_and_saves_a_rank() {
    let src = hf("llama-gqa");
    let c = cfg("llama-gqa");
    for (tp, fuse) in [(4, true), (2, false)] {
        for rank in 0..tp {
            let mut model = empty_model("llama-gqa", tp, rank, fuse);
            let mut store = HfRankStore::for_model(&model, &src).unwrap();
            let result = model.load_from(&mut store).unwrap();
            assert!(result.errors.is_empty() && result.missing.is_empty(), "{result}");
            // Same tensors as the CustomModule path, through burn-store's save.
            let mut out = HfRankStore::for_saving(&model).unwrap();
            model.save_into(&mut out).unwrap();
            let d = Device::default();
            let direct = neuron_spec_models::Source::tensors(&src, c.clone())
                .fuse_qkv(fuse)
                .load(TpContext::new(tp, rank).unwrap(), &d)
                .unwrap();
            let mut expected = StateDict::new();
            direct.save_rank_tensors("", &mut expected).unwrap();
            assert_same_tensors(out.saved(), &expected, &format!("burn-store tp{tp} rank{rank}"));
            // And both equal the reference rank file.
            let reference = open(&format!("tp-ref/llama-gqa/tp{tp}/rank{rank}.safetensors"));
            for (name, t) in out.saved() {
                assert!(t.bytes() == reference.tensor(name).unwrap().bytes(), "{name}");
            }
        }
    }
}

#[test]
fn burn_store_writes_a_rank_file_and_reports_wrong_shapes() {
    let src = hf("llama-gqa");
    let c = cfg("llama-gqa");
    let d = Device::default();
    let model = neuron_spec_models::Source::tensors(&src, c.clone())
        .fuse_qkv(true)
        .load(TpContext::new(2, 1).unwrap(), &d)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("rank1.safetensors");
    let mut store = HfRankStore::for_saving(&model).unwrap().with_output(&path);
    model.save_into(&mut store).unwrap();
    let written = neuron_spec::format::SafetensorsFile::open(&path).unwrap();
    assert_same_tensors(&written, store.saved(), "written rank file");
    // A model built for tp 4 cannot take tp 2's layout: the store names the tensor and both shapes.
    let mut wrong = empty_model("llama-gqa", 4, 0, true);
    let meta = empty_model("llama-gqa", 2, 0, true).create_parameter_metadata().unwrap();
    let mut store = HfRankStore::new(&src, meta, TpContext::new(2, 0).unwrap());
    let e = wrong.load_from(&mut store).unwrap_err().to_string();
    assert!(e.contains("expected shape") && e.contains("found"), "{e}");
}
