//! The TP forward pass of the example Llama model against the HF goldens (eager attention, f32).

use crate::common;
use common::*;
use neuron_spec::checkpoint::WriteOptions;
use neuron_spec::shard;
use neuron_spec::spec::contract::{CustomModule, TpContext};
use neuron_spec::TensorSource;
use neuron_spec_models::{LlamaForCausalLM, ModelConfig};

fn run_dir(dir: &str, golden_dir: &str, tps: &[usize], fuses: &[bool]) {
    let g = golden(golden_dir);
    let cfg = ModelConfig::read(&fixture(dir).join("config.json")).unwrap();
    let src = hf(dir);
    for &tp in tps {
        for &fuse in fuses {
            let out = neuron_spec_models::run(
                &neuron_spec_models::Source::tensors(&src, cfg.clone()).fuse_qkv(fuse),
                &neuron_spec_models::Transport::threads(tp),
                &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
            )
            .unwrap();
            assert_eq!(out.logits_shape, [2, 7, cfg.llama.vocab_size]);
            check_golden(&out, &g, &format!("{dir} tp {tp} fuse_qkv {fuse}"));
        }
    }
}

#[test]
fn llama_gqa_matches_golden_at_tp_1_2_4_8_fused_and_separate_qkv() {
    run_dir("llama-gqa", "llama-gqa", &[1, 2, 4, 8], &[true, false]);
}

#[test]
fn llama_gqa_sharded_hf_files_match_golden() {
    run_dir("llama-gqa-sharded", "llama-gqa", &[4], &[true]);
    run_dir("llama-gqa-sharded", "llama-gqa", &[8], &[false]);
}

#[test]
fn llama_gqa_bf16_weights_run_in_f32_and_match_their_golden() {
    run_dir("llama-gqa-bf16", "llama-gqa-bf16", &[1, 4], &[true]);
}

#[test]
fn llama_mha_tied_with_padded_vocab_matches_golden_at_tp_1_2_4() {
    // Vocab 250: tp 4 gives 63 rows per rank, the last rank padded with 2 zero rows.
    run_dir("llama-mha-tied", "llama-mha-tied", &[1, 2, 4], &[true, false]);
}

#[test]
fn sharded_checkpoint_directory_runs_and_matches_golden() {
    let g = golden("llama-gqa");
    let cfg = ModelConfig::read(&fixture("llama-gqa").join("config.json")).unwrap();
    for (tp, fuse) in [(4, true), (2, false)] {
        let d = burn::tensor::Device::default();
        let model = LlamaForCausalLM::new(&cfg.llama, TpContext::new(tp, 0).unwrap(), fuse, None, &d).unwrap();
        let meta = model.create_parameter_metadata().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out_dir = tmp.path().join("sharded");
        shard(&fixture("llama-gqa"), &out_dir, &meta, tp, &WriteOptions::default()).unwrap();
        let out = neuron_spec_models::Source::open(&out_dir)
            .and_then(|s| {
                neuron_spec_models::run(
                    &s,
                    &neuron_spec_models::Transport::threads_at_source_tp(),
                    &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
                )
            })
            .unwrap();
        check_golden(&out, &g, &format!("sharded dir tp {tp} fuse_qkv {fuse}"));
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let cfg = ModelConfig::read(&fixture("llama-gqa").join("config.json")).unwrap();
    let src = hf("llama-gqa");
    let e = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&src, cfg.clone()).fuse_qkv(true),
        &neuron_spec_models::Transport::threads(2),
        &neuron_spec_models::Forward::new([vec![1, 256]].to_vec()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("256") && e.contains("vocabulary"), "{e}");
    let e = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&src, cfg.clone()).fuse_qkv(true),
        &neuron_spec_models::Transport::threads(2),
        &neuron_spec_models::Forward::new([vec![1, 2], vec![3]].to_vec()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("row 1"), "{e}");
    // 8 heads do not split over 3 ranks: every rank fails at build time, none hangs.
    let e = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&src, cfg.clone()).fuse_qkv(true),
        &neuron_spec_models::Transport::threads(3),
        &neuron_spec_models::Forward::new([vec![1, 2]].to_vec()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("num_attention_heads") || e.contains("tp 3"), "{e}");
    // A checkpoint lacking a tensor names it.
    struct Without<'a>(&'a neuron_spec::format::HfCheckpoint, &'a str);
    impl TensorSource for Without<'_> {
        fn info(&self, n: &str) -> Option<neuron_spec::TensorInfo> {
            (n != self.1).then(|| self.0.info(n)).flatten()
        }
        fn tensor(&self, n: &str) -> neuron_spec::Result<neuron_spec::HostTensor> {
            self.0.tensor(n)
        }
        fn names(&self) -> Vec<String> {
            self.0.names().into_iter().filter(|n| n != self.1).collect()
        }
    }
    let w = Without(&src, "model.layers.1.mlp.up_proj.weight");
    let e = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&w, cfg.clone()).fuse_qkv(true),
        &neuron_spec_models::Transport::threads(2),
        &neuron_spec_models::Forward::new([vec![1, 2]].to_vec()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");
}
