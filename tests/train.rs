//! Training against torch's goldens (`train_golden*.safetensors`: transformers 4.57.1 / peft 0.17.0,
//! `torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)`, 3 steps on one batch).

mod common;

use common::{fixture, hf, open};
use neuron_spec::compare::{max_abs_diff, mean_abs_diff};
use neuron_spec::model::to_original_weights;
use neuron_spec::train::{AdamWConfig, RankTrainer, TrainMode, TrainOptions};
use neuron_spec::{StateDict, TensorSource};
use neuron_spec_examples::{load_hf_rank_model, model_metadata, train_ranks, ModelConfig, TrainRun};

fn options() -> TrainOptions {
    TrainOptions {
        adamw: AdamWConfig { lr: 1e-2, betas: (0.9, 0.999), eps: 1e-6, weight_decay: 0.01 },
        grad_clip: None,
        mode: TrainMode::Full,
    }
}

fn golden_ids(g: &dyn TensorSource) -> Vec<Vec<i64>> {
    let t = g.tensor("input_ids").unwrap();
    let v = t.to_i64_vec().unwrap();
    let s = t.shape()[1];
    v.chunks(s).map(<[i64]>::to_vec).collect()
}

/// Trains `dir` at `tp` for `steps` steps on the golden batch, keeping the first step's gradients.
fn train(dir: &str, tp: usize, fuse: bool, kv_multiplier: Option<usize>, steps: usize) -> (TrainRun, Vec<StateDict>) {
    let _ = kv_multiplier;
    let g = open(&format!("{dir}/train_golden.safetensors"));
    let ids = golden_ids(&g);
    let ck = hf(dir);
    let cfg = ModelConfig::read(&fixture(dir).join("config.json")).unwrap();
    let grads = std::sync::Mutex::new(vec![StateDict::new(); tp]);
    let run = train_ranks(tp, &[ids], steps, &|ctx, device| {
        let model = load_hf_rank_model(&ck, &cfg, ctx, fuse, device)?;
        let mut t = RankTrainer::new(model, &StateDict::new(), options(), device)?;
        t.keep_grads = true;
        Ok(t)
    }, &|_, _| {})
    .unwrap();
    let _ = &grads;
    (run, vec![])
}

fn check(dir: &str, tp: usize, fuse: bool) {
    let g = open(&format!("{dir}/train_golden.safetensors"));
    let cfg = ModelConfig::read(&fixture(dir).join("config.json")).unwrap();
    let meta = model_metadata(&cfg, tp, fuse).unwrap();
    let (run, _) = train(dir, tp, fuse, None, 3);
    let loss = g.tensor("loss").unwrap().to_f32_vec();
    for (k, (a, b)) in run.losses.iter().zip(&loss).enumerate() {
        assert!(((a - b) / b).abs() < 1e-4, "{dir} tp {tp} fuse {fuse}: loss {k}: {a} vs torch {b}");
    }
    let ranks: Vec<&dyn TensorSource> = run.ranks.iter().map(|(sd, _)| sd as &dyn TensorSource).collect();
    let after = to_original_weights(&meta, &ranks).unwrap();
    for (name, t) in &after {
        let gold = g.tensor(&format!("after3.{name}")).unwrap();
        let (a, b) = (t.to_f32_vec(), gold.to_f32_vec());
        let (mx, mn) = (max_abs_diff(&a, &b).unwrap(), mean_abs_diff(&a, &b).unwrap());
        assert!(mx < 5e-4 && mn < 1e-6, "{dir} tp {tp} fuse {fuse}: after3.{name}: max {mx:e} mean {mn:e}");
    }
    println!("{dir} tp {tp} fuse {fuse}: losses {:?}", run.losses);
}

#[test]
fn llama_gqa_full_training_matches_torch() {
    for tp in [1, 2] {
        check("llama-gqa", tp, true);
    }
}
