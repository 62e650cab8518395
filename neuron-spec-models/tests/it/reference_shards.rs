//! Byte equality with optimum-neuron 0.4.5's own rank shards, query indices and metadata.

use crate::common;
use common::*;
use neuron_spec::spec::compile::{to_original_weights, PlanOptions};
use neuron_spec::{adapt_state_dict, CheckpointMetadata, GqaQkvColumnParallelLinearSpec, TensorSource};

fn check_ranks(src_dir: &str, tp: usize, fuse: bool) {
    let meta = layout("llama-gqa", tp, fuse);
    let src = hf(src_dir);
    for rank in 0..tp {
        let ours = adapt_state_dict(&meta, &src, tp, rank, PlanOptions::default()).unwrap();
        let reference = open(&format!("tp-ref/llama-gqa/tp{tp}/rank{rank}.safetensors"));
        // The reference file holds both qkv layouts; ours holds one, and every one of ours must match.
        assert_eq!(ours.len(), if fuse { 15 } else { 19 }, "tensor count");
        for (name, t) in &ours {
            let r = reference.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.shape(), r.shape(), "tp{tp} rank{rank} {name} shape");
            assert_eq!(t.dtype(), r.dtype(), "tp{tp} rank{rank} {name} dtype");
            assert!(t.bytes() == r.bytes(), "tp{tp} rank{rank} fuse={fuse} {name}: bytes differ from the reference");
        }
    }
}

#[test]
fn rank_tensors_equal_reference_single_file() {
    for tp in [2, 4, 8] {
        for fuse in [true, false] {
            check_ranks("llama-gqa", tp, fuse);
        }
    }
}

#[test]
fn rank_tensors_equal_reference_from_fourteen_files() {
    for tp in [2, 4, 8] {
        for fuse in [true, false] {
            check_ranks("llama-gqa-sharded", tp, fuse);
        }
    }
}

#[test]
fn query_indices_equal_reference() {
    for tp in [2usize, 4, 8] {
        let f = open(&format!("tp-ref/llama-gqa/tp{tp}/query_indices.safetensors"));
        let mult = (tp / 2).max(1);
        for rank in 0..tp {
            let expected = f.tensor(&format!("rank{rank}")).unwrap().to_i64_vec().unwrap();
            let ours = GqaQkvColumnParallelLinearSpec::compute_query_indices_for_rank(tp, rank, 8, 2, mult).unwrap();
            let ours: Vec<i64> = ours.into_iter().map(|x| x as i64).collect();
            assert_eq!(ours, expected, "tp {tp} rank {rank}");
        }
    }
}

#[test]
fn layout_metadata_equals_reference_metadata() {
    for tp in [2, 4, 8] {
        for (fuse, file) in [(true, "metadata_fused.json"), (false, "metadata_unfused.json")] {
            let path = fixture(&format!("tp-ref/llama-gqa/tp{tp}/{file}"));
            let reference = CheckpointMetadata::read(&path).unwrap();
            let ours = layout("llama-gqa", tp, fuse);
            assert_eq!(
                ours.model_weight_transformation_specs, reference.model_weight_transformation_specs,
                "tp{tp} {file} specs"
            );
            // Our global shapes are extra (the layout comes from the model); the rest must be equal.
            let mut params = ours.parameters.clone();
            params.values_mut().for_each(|p| p.shape = None);
            assert_eq!(params, reference.parameters, "tp{tp} {file} parameters");
            // Our serialization keeps the reference's [class_name, fields] shape and field values.
            let ours_json: serde_json::Value = serde_json::from_str(&ours.to_json().unwrap()).unwrap();
            let ref_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(ours_json["model_weight_transformation_specs"], ref_json["model_weight_transformation_specs"]);
        }
    }
}

#[test]
fn reference_files_and_metadata_consolidate_to_the_hf_checkpoint() {
    let original = hf("llama-gqa");
    for tp in [2, 4, 8] {
        for file in ["metadata_fused.json", "metadata_unfused.json"] {
            let meta = CheckpointMetadata::read(&fixture(&format!("tp-ref/llama-gqa/tp{tp}/{file}"))).unwrap();
            let ranks: Vec<_> =
                (0..tp).map(|r| open(&format!("tp-ref/llama-gqa/tp{tp}/rank{r}.safetensors"))).collect();
            let sources: Vec<&dyn TensorSource> = ranks.iter().map(|r| r as &dyn TensorSource).collect();
            let out = to_original_weights(&meta, &sources).unwrap();
            assert_same_tensors(&out, &original, &format!("tp{tp} {file}"));
        }
    }
}

#[test]
fn bf16_rank_tensors_equal_the_reference_rounded_to_bf16() {
    // llama-gqa-bf16 is llama-gqa's f32 weights through torch's `.to(bfloat16)` (round to nearest even), so its
    // rank tensors must be the reference's f32 rank tensors rounded the same way, bit for bit.
    let src = hf("llama-gqa-bf16");
    for tp in [2, 4, 8] {
        for fuse in [true, false] {
            let meta = layout("llama-gqa-bf16", tp, fuse);
            for rank in 0..tp {
                let ours = adapt_state_dict(&meta, &src, tp, rank, PlanOptions::default()).unwrap();
                let reference = open(&format!("tp-ref/llama-gqa/tp{tp}/rank{rank}.safetensors"));
                for (name, t) in &ours {
                    let r = reference.tensor(name).unwrap();
                    assert_eq!(t.dtype(), neuron_spec::DType::BF16, "{name}");
                    assert_eq!(t.shape(), r.shape(), "tp{tp} rank{rank} {name} shape");
                    let want: Vec<u8> =
                        r.to_f32_vec().iter().flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes()).collect();
                    assert!(
                        t.bytes() == want.as_slice(),
                        "tp{tp} rank{rank} fuse={fuse} {name}: not the rounded reference"
                    );
                }
            }
        }
    }
}
