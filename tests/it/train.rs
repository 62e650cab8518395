//! Training against torch's goldens (`train_golden*.safetensors`: transformers 4.57.1 / peft 0.17.0,
//! `torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)`, 3 steps on one batch;
//! `loss` is the loss before each step, `grad.*` the gradients of step 1, `after1.*` / `after3.*` the
//! parameters after steps 1 and 3).
//!
//! Each case trains 1 step from the HF checkpoint, writes a trained sharded checkpoint (weights + AdamW
//! state), consolidates it on disk and compares `after1`; then resumes from that checkpoint for 2 more steps
//! (step count and moments read back) and compares `after3` from the consolidated output. Every family of the
//! table trains so (`FAMILY_CASES`); through the CLI, full and LoRA runs (Phi-3's adapter on its packed modules
//! included) train, resume, and keep their AdamW state across `reshard`.

use crate::common;

use common::{fixture, hf, open};
use neuron_spec::checkpoint::WriteOptions;
use neuron_spec::compare::{max_abs_diff, mean_abs_diff};
use neuron_spec::consolidate;
use neuron_spec::format::HfCheckpoint;
use neuron_spec::spec::compile::to_original_weights;
use neuron_spec::train::{reshard_trained, write_trained_checkpoint, AdamWConfig, TrainMode, TrainOptions};
use neuron_spec::{StateDict, TensorSource};
use neuron_spec_models::{Adapter, ModelConfig, Source, Train, Transport};
use std::path::Path;

const ADAMW: AdamWConfig = AdamWConfig { lr: 1e-2, betas: (0.9, 0.999), eps: 1e-6, weight_decay: 0.01 };

fn options() -> TrainOptions {
    TrainOptions { adamw: ADAMW, grad_clip: None, mode: TrainMode::Full }
}

fn golden_ids(g: &dyn TensorSource) -> Vec<Vec<i64>> {
    let t = g.tensor("input_ids").unwrap();
    let s = t.shape()[1];
    t.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect()
}

fn close(what: &str, a: &[f32], b: &[f32], max_tol: f32, mean_tol: f64) {
    let (mx, mn) = (max_abs_diff(a, b).unwrap(), mean_abs_diff(a, b).unwrap());
    assert!(mx < max_tol && mn < mean_tol, "{what}: max {mx:e} mean {mn:e}");
}

fn check_losses(what: &str, ours: &[f32], torch: &[f32]) {
    for (a, b) in ours.iter().zip(torch) {
        assert!(((a - b) / b).abs() < 1e-4, "{what}: loss {a} vs torch {b} (all: {ours:?} vs {torch:?})");
    }
}

/// Consolidates `dir` on disk and compares every tensor with `prefix.<name>` of the golden.
fn check_consolidated(what: &str, dir: &Path, g: &dyn TensorSource, prefix: &str, n_expected: usize) {
    let out = dir.with_extension("hf");
    consolidate(dir, &out, &WriteOptions::default()).unwrap();
    let hf = HfCheckpoint::open(&out).unwrap();
    let names = hf.names();
    assert_eq!(names.len(), n_expected, "{what}: consolidated tensors");
    // Max per tensor, mean over all parameters together (the float-noise figures, torch f32 vs f64,
    // are model-wide: 1.2e-4 max, 8e-8 mean; a missing weight decay shows as 2.5e-5 mean). A per-tensor mean
    // would fail on float noise alone: Qwen3's k_norm has a gradient element of 6.5e-7, below AdamW's eps, where
    // the first update lr·g/(|g|+eps) amplifies a 6e-8 gradient difference 3700-fold, in a 16-element tensor.
    let (mut sum, mut count, mut worst) = (0f64, 0usize, 0f32);
    for name in names {
        let gold = g.tensor(&format!("{prefix}.{name}")).unwrap().to_f32_vec();
        let ours = hf.tensor(&name).unwrap().to_f32_vec();
        close(&format!("{what}: {prefix}.{name}"), &ours, &gold, 5e-4, f64::INFINITY);
        sum += mean_abs_diff(&ours, &gold).unwrap() * ours.len() as f64;
        count += ours.len();
        worst = worst.max(max_abs_diff(&ours, &gold).unwrap());
    }
    let mean = sum / count.max(1) as f64;
    eprintln!("{what}: {prefix}.*: max abs diff {worst:.2e}, mean {mean:.2e}");
    assert!(mean < 1e-6, "{what}: {prefix}.*: mean abs diff over all parameters {mean:e}");
}

/// 1 step from HF at `tp` → checkpoint → consolidate (after1, grads); resume at `tp` (or after a reshard to
/// `resume_tp`) for 2 steps → consolidate (after3).
fn case(dir: &str, tp: usize, fuse: bool, resume_tp: usize) {
    case_with(dir, "train_golden.safetensors", options(), tp, fuse, resume_tp)
}

/// [`case`] against the golden `golden` of `dir`, trained with `options`.
fn case_with(dir: &str, golden: &str, options: TrainOptions, tp: usize, fuse: bool, resume_tp: usize) {
    let options = || options;
    let what = format!("{dir}/{golden} tp {tp} fuse {fuse} resume at tp {resume_tp}");
    let g = open(&format!("{dir}/{golden}"));
    let ids = golden_ids(&g);
    let loss = g.tensor("loss").unwrap().to_f32_vec();
    let cfg = ModelConfig::read(&fixture(dir).join("config.json")).unwrap();
    let meta = neuron_spec_models::layout(&cfg, tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
    let ck = hf(dir);
    let n_tensors = ck.names().len();
    let tmp = tempfile::tempdir().unwrap();

    let source = Source::tensors(&ck, cfg.clone()).fuse_qkv(fuse);
    let task = Train::new(vec![ids.clone()], 1, options().adamw).grad_clip(options().grad_clip).keep_grads();
    let run = neuron_spec_models::run(&source, &Transport::threads(tp), &task).unwrap();
    check_losses(&what, &run.losses, &loss[..1]);
    // Gradients gathered to HF names (kv replicas must agree: the consolidation checks them).
    let grads: Vec<StateDict> = run.grads.iter().map(|g| g.clone().unwrap()).collect();
    let gs: Vec<&dyn TensorSource> = grads.iter().map(|s| s as &dyn TensorSource).collect();
    let grads = to_original_weights(&meta, &gs).unwrap();
    assert_eq!(grads.len(), n_tensors);
    // A gradient absent from the golden (an expert no token reached: torch's grad is None) counts as zero.
    let (mut absent, mut worst) = (Vec::new(), 0f32);
    for (name, t) in &grads {
        let ours = t.to_f32_vec();
        let gold = match g.tensor(&format!("grad.{name}")) {
            Ok(gold) => gold.to_f32_vec(),
            Err(_) => {
                absent.push(name.clone());
                vec![0.0; ours.len()]
            }
        };
        close(&format!("{what}: grad.{name}"), &ours, &gold, 1e-4, f64::INFINITY);
        worst = worst.max(max_abs_diff(&ours, &gold).unwrap());
    }
    eprintln!("{what}: grad.*: max abs diff {worst:e}; absent from the golden (zero here): {absent:?}");
    // The MoE router (Qwen3-MoE's mlp.gate, Mixtral's block_sparse_moe.gate) is replicated: its gradient is the
    // same on every rank, bit for bit.
    for name in run.grads[0].as_ref().unwrap().keys().filter(|n| n.ends_with(".gate.weight")) {
        let first = run.grads[0].as_ref().unwrap()[name].to_f32_vec();
        assert!(first.iter().any(|x| *x != 0.0), "{what}: {name} got no gradient");
        for (r, gr) in run.grads.iter().enumerate() {
            assert_eq!(gr.as_ref().unwrap()[name].to_f32_vec(), first, "{what}: rank {r}'s {name} gradient");
        }
    }
    // Padded vocabulary rows got no gradient and stay zero (weight decay keeps zeros at zero).
    let vocab = cfg.llama.vocab_size;
    let rows = vocab.div_ceil(tp);
    if rows * tp > vocab {
        let last = &run.ranks[tp - 1].0["model.embed_tokens.weight"].to_f32_vec();
        let pad_from = (vocab - rows * (tp - 1)) * cfg.llama.hidden_size;
        assert!(last[pad_from..].iter().all(|x| *x == 0.0), "{what}: padded rows moved");
    }
    let one = tmp.path().join("step1");
    write_trained_checkpoint(&one, &fixture(dir), &meta, &run.ranks, &ADAMW, false).unwrap();
    check_consolidated(&what, &one, &g, "after1", n_tensors);
    // torch's AdamW skips a parameter without gradient: not even weight decay moves it.
    let after1 = HfCheckpoint::open(&one.with_extension("hf")).unwrap();
    for name in &absent {
        let (a, b) = (after1.tensor(name).unwrap().to_f32_vec(), ck.tensor(name).unwrap().to_f32_vec());
        assert!(a == b, "{what}: {name} got no gradient but moved");
    }
    // The moments consolidate to HF names like the weights (first moment after 1 step: (1 − β1)·grad, the
    // gradient scaled by clip_grad_norm_'s coefficient from torch's step-1 norm when clipping).
    let coef = match options().grad_clip {
        Some(c) => (c / (g.tensor("grad_norm").unwrap().to_f32_vec()[0] as f64 + 1e-6)).min(1.0) as f32,
        None => 1.0,
    };
    let m1 = tmp.path().join("m1");
    consolidate(&one.join("optimizer/exp_avg"), &m1, &WriteOptions::default()).unwrap();
    let m1 = HfCheckpoint::open(&m1).unwrap();
    for (name, t) in &grads {
        let expected: Vec<f32> = t.to_f32_vec().iter().map(|x| 0.1f32 * coef * x).collect();
        close(&format!("{what}: exp_avg.{name}"), &m1.tensor(name).unwrap().to_f32_vec(), &expected, 1e-6, 1e-7);
    }

    let from = if resume_tp == tp {
        one.clone()
    } else {
        let r = tmp.path().join("resharded");
        reshard_trained(&one, &r, resume_tp, &WriteOptions::default()).unwrap();
        r
    };
    let task = Train::new(vec![ids.clone()], 2, options().adamw).grad_clip(options().grad_clip);
    let run = neuron_spec_models::run(&Source::open(&from).unwrap(), &Transport::threads(resume_tp), &task).unwrap();
    check_losses(&what, &run.losses, &loss[1..]);
    assert!(run.ranks.iter().all(|(_, s)| s.step == 3), "{what}: the step count continues");
    let three = tmp.path().join("step3");
    let meta = neuron_spec_models::layout(&cfg, resume_tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
    write_trained_checkpoint(&three, &fixture(dir), &meta, &run.ranks, &ADAMW, false).unwrap();
    check_consolidated(&what, &three, &g, "after3", n_tensors);
}

#[test]
fn llama_gqa_full_training_matches_torch_at_every_tp_fused_and_separate() {
    // tp 4 and 8 tile the 2 kv heads (kv multiplier 2 and 4).
    for tp in [1, 2, 4, 8] {
        for fuse in [true, false] {
            case("llama-gqa", tp, fuse, tp);
        }
    }
}

#[test]
fn llama_mha_tied_padded_vocab_training_matches_torch() {
    // vocab 250: padded rows at tp 4 (they get no gradient and stay zero; 4 heads stop at tp 4); tied
    // embeddings get both uses' gradients.
    for tp in [1, 2, 4] {
        case("llama-mha-tied", tp, true, tp);
    }
}

#[test]
fn one_step_at_tp4_reshard_to_tp2_two_more_equals_torch() {
    case("llama-gqa", 4, true, 2);
}

/// Gradient clipping by global norm (`train_golden_clip.safetensors`: the same recipe with
/// `torch.nn.utils.clip_grad_norm_(params, 0.5)`, which clips at every step): each unique parameter entry
/// counted once, kv replicas once (tp 4 tiles the 2 kv heads twice).
#[test]
fn grad_clipping_matches_torch_clip_grad_norm() {
    let g = open("llama-gqa/train_golden_clip.safetensors");
    let norms = g.tensor("grad_norm").unwrap().to_f32_vec();
    assert!(norms.iter().all(|n| *n > 0.5), "the golden clips at every step: {norms:?}");
    let opts = TrainOptions { grad_clip: Some(0.5), ..options() };
    for (tp, fuse) in [(1, true), (2, false), (4, true)] {
        case_with("llama-gqa", "train_golden_clip.safetensors", opts, tp, fuse, tp);
    }
}

/// Qwen3: q/k norms are replicated parameters inside the attention; tied embeddings.
#[test]
fn qwen3_training_matches_torch() {
    for tp in [1, 2, 4] {
        case("qwen3", tp, true, tp);
    }
}

/// Qwen3-MoE (`qwen3-moe`: 4 experts, top 2, `norm_topk_prob`; layer 0 sparse): the routing weights are the
/// router's probabilities in the graph, so `mlp.gate.weight` gets torch's gradient (issue 19).
#[test]
fn qwen3_moe_training_trains_the_router_like_torch() {
    for tp in [1, 2, 4] {
        for fuse in [true, false] {
            case("qwen3-moe", tp, fuse, tp);
        }
    }
}

/// Mixtral (the shared `mixtral` fixture: every layer a `block_sparse_moe` of 4 experts, top 2 renormalised):
/// the routers `block_sparse_moe.gate` get torch's gradient (the golden's `grad.*gate*`), at tp 1, 2 and 4, fused
/// and separate, and through a resume across a reshard (1 step at one tp, 2 more at another).
#[test]
fn mixtral_training_trains_the_router_like_torch() {
    let g = open("mixtral/train_golden.safetensors");
    for l in 0..2 {
        let router = g.tensor(&format!("grad.model.layers.{l}.block_sparse_moe.gate.weight")).unwrap().to_f32_vec();
        assert!(router.iter().any(|x| *x != 0.0), "the golden's layer {l} router gradient");
    }
    for tp in [1, 2, 4] {
        for fuse in [true, false] {
            case("mixtral", tp, fuse, tp);
        }
    }
    case("mixtral", 4, true, 2);
    case("mixtral", 1, false, 4);
}

/// `(tp, fused qkv, tp resumed at)`.
type TrainCase = (usize, bool, usize);

/// Every family of the table trains like torch (each fixture's `train_golden.safetensors`): per family, the
/// `(tp, fused qkv, resume tp)` cases run. All at tp 2 fused; each at one more tp and the separate layout, resumed
/// after a reshard to the third number's tp (1 step, reshard, 2 more: the 3-step golden); Phi-3
/// (whose checkpoint packs q/k/v) in both rank layouts and resumed after a reshard; Gemma 3 at tp 1, 2 and 4, each
/// resumed after a reshard, and our two Gemma 3 configs (final logit softcapping; a window shorter than the
/// batch). llama-gqa and qwen3 have their own tests above. Qwen3-MoE has its own tests above (router, skipped
/// experts).
const FAMILY_CASES: &[(&str, &[TrainCase])] = &[
    ("llama3-rope", &[(2, true, 2), (4, false, 4)]),
    ("qwen2", &[(2, true, 2), (1, false, 2)]),
    ("mistral", &[(2, true, 2), (4, false, 2)]),
    ("qwen3", &[(2, false, 1)]),
    ("granite", &[(2, true, 2), (4, false, 2)]),
    ("phi3", &[(1, true, 1), (2, true, 2), (2, false, 2), (4, false, 2)]),
    ("gemma3", &[(1, true, 1), (2, false, 4), (4, true, 2)]),
    ("gemma3-softcap", &[(2, true, 2)]),
    ("gemma3-window", &[(4, false, 1)]),
];

#[test]
fn every_family_trains_like_torch() {
    for (dir, cases) in FAMILY_CASES {
        for &(tp, fuse, resume_tp) in *cases {
            case(dir, tp, fuse, resume_tp);
        }
    }
}

/// Qwen3-MoE with 8 experts, top 2 not renormalised, both layers sparse (`qwen3-moe-e8`, our fixture): at step 1
/// no token reaches layer 1's expert 5 (no gradient in torch: it must get none here and not move), and experts
/// skipped at step 2 are reached again at step 3 (AdamW's per-parameter step count, as torch's).
#[test]
fn qwen3_moe_8_experts_training_matches_torch() {
    let g = open("qwen3-moe-e8/train_golden.safetensors");
    assert!(g.tensor("grad.model.layers.1.mlp.experts.5.up_proj.weight").is_err(), "the golden's unreached expert");
    for tp in [1, 2, 4] {
        for fuse in [true, false] {
            case("qwen3-moe-e8", tp, fuse, tp);
        }
    }
}

/// The CLI on `qwen3-moe-e8`: after step 1, `state.json` counts one skipped step for layer 1's expert 5 (no token
/// reached it), by rank tensor name; `consolidate --optimizer` renames the count to its HF parameters, whose
/// moments are zero.
#[test]
fn cli_moe_skipped_experts_are_recorded_and_consolidated_by_hf_name() {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (one, hf1) = (tmp.path().join("one"), tmp.path().join("hf1"));
    let data = fixture("qwen3-moe-e8/train_golden.safetensors");
    let mut args = vec!["train".to_string(), s(&fixture("qwen3-moe-e8")), s(&one), "--tp".into(), "2".into()];
    args.extend(["--data".into(), s(&data), "--steps".into(), "1".into()]);
    args.extend(HP.iter().map(|x| x.to_string()));
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("optimizer/state.json")).unwrap()).unwrap()
    };
    let e5 = "model.layers.1.mlp.experts.5";
    let expected = serde_json::json!({format!("{e5}.down_proj.weight"): 1, format!("{e5}.gate_up_proj.weight"): 1});
    assert_eq!(read(&one)["skipped_steps"], expected);
    let out = bin(&["consolidate", &s(&one), &s(&hf1), "--optimizer"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names = ["down_proj", "gate_proj", "up_proj"].map(|m| format!("{e5}.{m}.weight"));
    let expected: serde_json::Map<String, serde_json::Value> = names.iter().map(|n| (n.clone(), 1.into())).collect();
    assert_eq!(read(&hf1)["skipped_steps"], serde_json::Value::Object(expected));
    let m1 = open_abs(&hf1.join("optimizer/exp_avg.safetensors"));
    for n in &names {
        assert!(m1.tensor(n).unwrap().to_f32_vec().iter().all(|x| *x == 0.0), "{n}");
    }
}

/// A MoE run moves to another tp through `reshard_trained` after 1 step (the moments and the experts' skipped
/// steps follow), then 2 more steps: torch's 3 steps.
#[test]
fn qwen3_moe_one_step_reshard_two_more_equals_torch() {
    case("qwen3-moe", 4, true, 2);
    case("qwen3-moe-e8", 1, false, 4);
    case("qwen3-moe-e8", 4, true, 2);
}

fn bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_neuron-spec")).args(args).output().unwrap()
}

fn step_losses(stdout: &[u8]) -> Vec<f32> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("step ").and_then(|r| r.split(" loss ").nth(1)).map(|x| x.parse().unwrap()))
        .collect()
}

const HP: [&str; 8] = ["--lr", "1e-2", "--betas", "0.9,0.999", "--eps", "1e-6", "--weight-decay", "0.01"];

/// `neuron-spec train FROM OUT --data DATA --steps STEPS` with the goldens' hyperparameters and `extra` (`--tp`,
/// `--fuse-qkv`, `--adapter`, ...); asserts success and returns the step losses it printed and its stdout.
fn cli_train(what: &str, from: &Path, out: &Path, data: &Path, steps: usize, extra: &[String]) -> (Vec<f32>, String) {
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec!["train".to_string(), p(from), p(out), "--data".into(), p(data), "--steps".into()];
    args.push(steps.to_string());
    args.extend(extra.iter().cloned());
    args.extend(HP.iter().map(|x| x.to_string()));
    let o = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    (step_losses(&o.stdout), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn cli_trains_resumes_and_consolidates_like_torch() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    let data = fixture("llama-gqa/train_golden.safetensors"); // input_ids; the other tensors are ignored
    let g = open("llama-gqa/train_golden.safetensors");
    let loss = g.tensor("loss").unwrap().to_f32_vec();
    let (one, three, hf3) = (tmp.path().join("one"), tmp.path().join("three"), tmp.path().join("hf3"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec!["train".to_string(), s(&model), s(&one), "--tp".into(), "4".into(), "--fuse-qkv".into()];
    args.extend(["--data".to_string(), s(&data), "--steps".into(), "1".into()]);
    args.extend(HP.iter().map(|x| x.to_string()));
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_losses("cli step 1", &step_losses(&out.stdout), &loss[..1]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"));
    // consolidate --optimizer: torch's AdamW moments after 1 step are (1 − β1)·g and (1 − β2)·g² of the
    // golden gradients (tp 4: the kv heads tiled twice, their moments identical and written once).
    let hf1 = tmp.path().join("hf1");
    let out = bin(&["consolidate", &s(&one), &s(&hf1), "--optimizer"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_moments_after_one_step("cli full", &hf1.join("optimizer"), &g, "", 21);
    // Resume: tp, step and moments from the checkpoint.
    let mut args =
        vec!["train".to_string(), s(&one), s(&three), "--data".into(), s(&data), "--steps".into(), "2".into()];
    args.extend(HP.iter().map(|x| x.to_string()));
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let losses = step_losses(&out.stdout);
    check_losses("cli resumed", &losses, &loss[1..]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("step 2 "));
    let out = bin(&["consolidate", &s(&three), &s(&hf3)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hf = HfCheckpoint::open(&hf3).unwrap();
    for name in hf.names() {
        let gold = g.tensor(&format!("after3.{name}")).unwrap().to_f32_vec();
        close(&format!("cli after3.{name}"), &hf.tensor(&name).unwrap().to_f32_vec(), &gold, 5e-4, 1e-6);
    }
}

/// `neuron-spec reshard` carries a trained checkpoint's AdamW state (full and LoRA runs): `train` 1 step at tp 4,
/// `reshard --tp 2`, `train` 2 more steps equals torch's 3 steps (llama-gqa, Phi-3, and the llama-gqa-lora
/// adapter against peft). `consolidate` without `--optimizer` says that it leaves the state out.
#[test]
fn cli_reshard_keeps_the_optimizer_state_and_training_resumes_like_torch() {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for (model, golden, adapter, fuse) in [
        ("llama-gqa", "llama-gqa/train_golden.safetensors", None, true),
        ("phi3", "phi3/train_golden.safetensors", None, false),
        ("llama-gqa", "llama-gqa-lora/train_golden_lora.safetensors", Some("llama-gqa-lora"), true),
    ] {
        let what = format!("cli reshard {golden}");
        let g = open(golden);
        let loss = g.tensor("loss").unwrap().to_f32_vec();
        let data = fixture(golden);
        let tmp = tempfile::tempdir().unwrap();
        let (one, two, three, hf3) =
            (tmp.path().join("one"), tmp.path().join("two"), tmp.path().join("three"), tmp.path().join("hf3"));
        let mut extra = vec!["--tp".to_string(), "4".into()];
        if fuse {
            extra.push("--fuse-qkv".into());
        }
        if let Some(a) = adapter {
            extra.extend(["--adapter".into(), s(&fixture(a))]);
        }
        check_losses(&what, &cli_train(&what, &fixture(model), &one, &data, 1, &extra).0, &loss[..1]);
        let out = bin(&["reshard", &s(&one), &s(&two), "--tp", "2"]);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("optimizer state resharded"), "{what}");
        assert!(two.join("optimizer/state.json").is_file(), "{what}: no optimizer state after reshard");
        let (losses, stdout) = cli_train(&what, &two, &three, &data, 2, &[]);
        check_losses(&what, &losses, &loss[1..]);
        assert!(stdout.starts_with("step 2 "), "{what}");
        let out = bin(&["consolidate", &s(&three), &s(&hf3)]);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("pass --optimizer"),
            "{what}: the state left out is said"
        );
        match adapter {
            Some(_) => check_adapter_file(&what, &hf3.join("default/adapter_model.safetensors"), &g, "after3", 28),
            None => {
                let hf = HfCheckpoint::open(&hf3).unwrap();
                for name in hf.names() {
                    let gold = g.tensor(&format!("after3.{name}")).unwrap().to_f32_vec();
                    close(
                        &format!("{what}: after3.{name}"),
                        &hf.tensor(&name).unwrap().to_f32_vec(),
                        &gold,
                        5e-4,
                        1e-6,
                    );
                }
            }
        }
    }
}

/// `DIR/optimizer/` of `consolidate --optimizer` after 1 step against the golden's step-1 gradients:
/// `exp_avg = (1 − β1)·g`, `exp_avg_sq = (1 − β2)·g²` (torch's AdamW state after one step), names
/// `prefix<HF name>`, the step in `state.json`.
fn check_moments_after_one_step(what: &str, dir: &Path, g: &dyn TensorSource, prefix: &str, n: usize) {
    let m1 = open_abs(&dir.join("exp_avg.safetensors"));
    let m2 = open_abs(&dir.join("exp_avg_sq.safetensors"));
    let names = TensorSource::names(&m1);
    assert_eq!(names.len(), n, "{what}: moments");
    assert_eq!(TensorSource::names(&m2), names, "{what}");
    let (mut worst1, mut worst2, mut peak2) = (0f32, 0f32, 0f32);
    for name in &names {
        let gold = g.tensor(&format!("grad.{prefix}{name}")).unwrap().to_f32_vec();
        let e1: Vec<f32> = gold.iter().map(|x| 0.1 * x).collect();
        let e2: Vec<f32> = gold.iter().map(|x| 0.001 * x * x).collect();
        let (a, b) = (m1.tensor(name).unwrap().to_f32_vec(), m2.tensor(name).unwrap().to_f32_vec());
        worst1 = worst1.max(max_abs_diff(&a, &e1).unwrap());
        worst2 = worst2.max(max_abs_diff(&b, &e2).unwrap());
        peak2 = peak2.max(e2.iter().fold(0f32, |m, x| m.max(*x)));
    }
    eprintln!("{what}: exp_avg max abs diff {worst1:e}, exp_avg_sq max abs diff {worst2:e} (largest {peak2:e})");
    assert!(worst1 < 1e-6, "{what}: exp_avg max abs diff {worst1:e}");
    assert!(worst2 < 1e-8, "{what}: exp_avg_sq max abs diff {worst2:e}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 1, "{what}: {state}");
    assert_eq!(state["parameters"].as_array().map(Vec::len), Some(n), "{what}: {state}");
}

fn open_abs(p: &Path) -> neuron_spec::format::SafetensorsFile {
    neuron_spec::format::SafetensorsFile::open(p).unwrap()
}

/// Compares a PEFT adapter file (`n` tensors) with the golden's `prefix.*` (peft's names and shapes): max per
/// tensor, mean over all.
fn check_adapter_file(what: &str, file: &Path, g: &dyn TensorSource, prefix: &str, n: usize) {
    let f = open_abs(file);
    let names = TensorSource::names(&f);
    assert_eq!(names.len(), n, "{what}: adapter tensors");
    let (mut sum, mut count, mut worst) = (0f64, 0usize, 0f32);
    for name in names {
        let gold = g.tensor(&format!("{prefix}.{name}")).unwrap();
        let ours = f.tensor(&name).unwrap();
        assert_eq!(ours.shape(), gold.shape(), "{what}: {name}");
        let (a, b) = (ours.to_f32_vec(), gold.to_f32_vec());
        close(&format!("{what}: {prefix}.{name}"), &a, &b, 5e-4, f64::INFINITY);
        worst = worst.max(max_abs_diff(&a, &b).unwrap());
        sum += mean_abs_diff(&a, &b).unwrap() * a.len() as f64;
        count += a.len();
    }
    let mean = sum / count.max(1) as f64;
    eprintln!("{what}: {prefix}.*: max abs diff {worst:e}, mean abs diff {mean:e}");
    assert!(mean < 1e-6, "{what}: {prefix}.*: mean abs diff over all factors {mean:e}");
}

/// `train --adapter` (LoRA-only, exact mode) through the binary: 1 step from HF, consolidate (the PEFT
/// adapter against peft's `after1`, the moments against its gradients, the base unchanged), resume 2 steps
/// from the checkpoint, consolidate (`after3`).
#[test]
fn cli_lora_trains_resumes_and_consolidates_like_peft() {
    cli_lora_like_peft("llama-gqa", "llama-gqa-lora", &[(1, true), (4, true), (2, false)], 28);
}

/// Phi-3's adapter on the packed `qkv_proj` / `gate_up_proj` (and `o_proj`, `down_proj`), trained like peft
/// (`phi3-lora/train_golden_lora.safetensors`, `make/make_train_golden_phi3_lora.py`).
#[test]
fn cli_phi3_lora_trains_resumes_and_consolidates_like_peft() {
    cli_lora_like_peft("phi3", "phi3-lora", &[(2, true), (4, false)], 16);
}

/// Mixtral's adapter on q/k/v/o and every expert's w1/w2/w3 (`mixtral-lora/train_golden_lora.safetensors`,
/// `make/make_mixtral_lora.py`), trained like peft: 2 layers x (4 attention + 4 experts x 3) linears x (A, B).
#[test]
fn cli_mixtral_lora_trains_resumes_and_consolidates_like_peft() {
    cli_lora_like_peft("mixtral", "mixtral-lora", &[(1, false), (2, true), (4, false)], 64);
}

/// Gemma 3's adapter on all seven linears (`gemma3-lora/train_golden_lora.safetensors`,
/// `make/make_gemma3_lora.py`).
#[test]
fn cli_gemma3_lora_trains_resumes_and_consolidates_like_peft() {
    cli_lora_like_peft("gemma3", "gemma3-lora", &[(1, true), (2, false), (4, true)], 28);
}

/// The adapters of `make/make_family_lora.py` on all seven linears of Mistral, Qwen2 and Granite, and the shared
/// qwen3-lora adapter (its training golden by the same script): 1 step, consolidate, resume 2, like peft's 3 steps.
#[test]
fn cli_family_lora_trains_resumes_and_consolidates_like_peft() {
    for (model, fuse) in [("mistral", true), ("qwen2", false), ("granite", true), ("qwen3", false)] {
        cli_lora_like_peft(model, &format!("{model}-lora"), &[(2, fuse)], 28);
    }
}

/// [`cli_lora_trains_resumes_and_consolidates_like_peft`] for the HF model `model` and the adapter `adapter`
/// (with `factors` tensors, and its `train_golden_lora.safetensors`), at each `(tp, fused qkv)`.
fn cli_lora_like_peft(model: &str, adapter: &str, cases: &[(usize, bool)], factors: usize) {
    let g = open(&format!("{adapter}/train_golden_lora.safetensors"));
    let loss = g.tensor("loss").unwrap().to_f32_vec();
    let data = fixture(&format!("{adapter}/train_golden_lora.safetensors"));
    let base = hf(model);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for &(tp, fuse) in cases {
        let what = format!("cli {adapter} tp {tp} fuse {fuse}");
        let tmp = tempfile::tempdir().unwrap();
        let (one, three) = (tmp.path().join("one"), tmp.path().join("three"));
        let mut extra = vec!["--tp".to_string(), tp.to_string()];
        if fuse {
            extra.push("--fuse-qkv".into());
        }
        extra.extend(["--adapter".into(), s(&fixture(adapter)), "--lora-mode".into(), "exact".into()]);
        check_losses(&what, &cli_train(&what, &fixture(model), &one, &data, 1, &extra).0, &loss[..1]);
        assert!(one.join("adapter_default/adapter_config.json").is_file(), "{what}: shard --adapter's layout");
        let hf1 = tmp.path().join("hf1");
        let out = bin(&["consolidate", &s(&one), &s(&hf1), "--optimizer"]);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        check_adapter_file(&what, &hf1.join("default/adapter_model.safetensors"), &g, "after1", factors);
        check_moments_after_one_step(&what, &hf1.join("optimizer"), &g, "", factors);
        // The base is frozen: consolidated, it is the HF model's, bit for bit.
        let b = HfCheckpoint::open(&hf1).unwrap();
        assert_eq!(b.names().len(), base.names().len(), "{what}");
        for name in base.names() {
            assert_eq!(b.tensor(&name).unwrap().bytes(), base.tensor(&name).unwrap().bytes(), "{what}: {name}");
        }
        // Resume: tp, step, moments and the adapter from the checkpoint.
        let (losses, stdout) = cli_train(&what, &one, &three, &data, 2, &[]);
        check_losses(&what, &losses, &loss[1..]);
        assert!(stdout.starts_with("step 2 "), "{what}");
        let hf3 = tmp.path().join("hf3");
        let out = bin(&["consolidate", &s(&three), &s(&hf3)]);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        check_adapter_file(&what, &hf3.join("default/adapter_model.safetensors"), &g, "after3", factors);
    }
}

/// `train --adapter --lora-mode mean` (the reference's semantics: q/k/v and gate/up share one A, the mean of
/// the members') through the binary against torch training that shared A (`train_golden_lora_mean`): 1 step from
/// HF, consolidate (`after1`, the moments against torch's gradients), resume 2 steps, consolidate (`after3`).
#[test]
fn cli_lora_mean_mode_trains_the_shared_a_like_torch() {
    let g = open("llama-gqa-lora/train_golden_lora_mean.safetensors");
    let loss = g.tensor("loss").unwrap().to_f32_vec();
    let data = fixture("llama-gqa-lora/train_golden_lora_mean.safetensors");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for tp in [1, 4] {
        let what = format!("cli lora mean tp {tp} fuse true");
        let tmp = tempfile::tempdir().unwrap();
        let (one, three) = (tmp.path().join("one"), tmp.path().join("three"));
        let mut args = vec!["train".to_string(), s(&fixture("llama-gqa")), s(&one), "--tp".into(), tp.to_string()];
        args.extend(["--fuse-qkv".into(), "--adapter".into(), s(&fixture("llama-gqa-lora"))]);
        args.extend(["--lora-mode".into(), "mean".into(), "--data".into(), s(&data), "--steps".into(), "1".into()]);
        args.extend(HP.iter().map(|x| x.to_string()));
        let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        check_losses(&what, &step_losses(&out.stdout), &loss[..1]);
        let hf1 = tmp.path().join("hf1");
        let out = bin(&["consolidate", &s(&one), &s(&hf1), "--optimizer"]);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        check_adapter_file(&what, &hf1.join("default/adapter_model.safetensors"), &g, "after1", 28);
        // The shared A's moments, under each member's name, against torch's gradient of the one Parameter: the
        // sum over its uses (AdamW's update barely sees a 1/n scale of the gradient; the moments do).
        check_moments_after_one_step(&what, &hf1.join("optimizer"), &g, "", 28);
        let mut args =
            vec!["train".to_string(), s(&one), s(&three), "--data".into(), s(&data), "--steps".into(), "2".into()];
        args.extend(HP.iter().map(|x| x.to_string()));
        let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        check_losses(&what, &step_losses(&out.stdout), &loss[1..]);
        let hf3 = tmp.path().join("hf3");
        let out = bin(&["consolidate", &s(&three), &s(&hf3)]);
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        check_adapter_file(&what, &hf3.join("default/adapter_model.safetensors"), &g, "after3", 28);
    }
}

/// LoRA-only training of every expert of `qwen3-moe-e8` (`qwen3-moe-e8-lora-experts/train_golden_lora.safetensors`,
/// peft 0.17.0, the same AdamW recipe) through the CLI: 1 step at tp 2, resume for 2 more, = peft's 3 steps.
/// An adapter on the MoE routers (`mlp.gate`) is refused by name before anything is written.
#[test]
fn cli_lora_on_moe_experts_trains_like_peft_and_router_lora_is_refused() {
    let g = open("qwen3-moe-e8-lora-experts/train_golden_lora.safetensors");
    let loss = g.tensor("loss").unwrap().to_f32_vec();
    let data = fixture("qwen3-moe-e8-lora-experts/train_golden_lora.safetensors");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (one, three, hf3) = (tmp.path().join("one"), tmp.path().join("three"), tmp.path().join("hf3"));
    let base = s(&fixture("qwen3-moe-e8"));
    let mut args = vec!["train".to_string(), base.clone(), s(&one), "--tp".into(), "2".into(), "--adapter".into()];
    args.extend([s(&fixture("qwen3-moe-e8-lora-experts")), "--data".into(), s(&data), "--steps".into(), "1".into()]);
    args.extend(HP.iter().map(|x| x.to_string()));
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_losses("moe experts lora", &step_losses(&out.stdout), &loss[..1]);
    let mut args =
        vec!["train".to_string(), s(&one), s(&three), "--data".into(), s(&data), "--steps".into(), "2".into()];
    args.extend(HP.iter().map(|x| x.to_string()));
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_losses("moe experts lora", &step_losses(&out.stdout), &loss[1..]);
    let out = bin(&["consolidate", &s(&three), &s(&hf3)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // 2 layers x 8 experts x 3 linears x (A, B).
    check_adapter_file("moe experts lora", &hf3.join("default/adapter_model.safetensors"), &g, "after3", 96);
    let router = tmp.path().join("router");
    let mut args = vec!["train".to_string(), base, s(&router), "--tp".into(), "2".into(), "--adapter".into()];
    args.extend([s(&fixture("qwen3-moe-e8-lora-router")), "--data".into(), s(&data), "--steps".into(), "1".into()]);
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("LoRA factors for model.layers.0.mlp.gate") && err.lines().count() == 1, "{err}");
    assert!(!router.exists(), "output written");
}

/// A LoRA run moves to another tp: 1 step at tp 4 (CLI), `reshard_trained` to tp 2 (the adapter and its
/// moments follow the adapter's plans), 2 more steps (CLI) = peft's 3 steps.
#[test]
fn lora_run_reshards_and_resumes_like_peft() {
    let g = open("llama-gqa-lora/train_golden_lora.safetensors");
    let loss = g.tensor("loss").unwrap().to_f32_vec();
    let data = fixture("llama-gqa-lora/train_golden_lora.safetensors");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (one, two, three, hf3) =
        (tmp.path().join("one"), tmp.path().join("tp2"), tmp.path().join("three"), tmp.path().join("hf3"));
    let mut args = vec!["train".to_string(), s(&fixture("llama-gqa")), s(&one), "--tp".into(), "4".into()];
    args.extend(["--fuse-qkv".into(), "--adapter".into(), s(&fixture("llama-gqa-lora"))]);
    args.extend(["--data".into(), s(&data), "--steps".into(), "1".into()]);
    args.extend(HP.iter().map(|x| x.to_string()));
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    reshard_trained(&one, &two, 2, &WriteOptions::default()).unwrap();
    let mut args =
        vec!["train".to_string(), s(&two), s(&three), "--data".into(), s(&data), "--steps".into(), "2".into()];
    args.extend(HP.iter().map(|x| x.to_string()));
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_losses("lora reshard", &step_losses(&out.stdout), &loss[1..]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at tp 2"));
    let out = bin(&["consolidate", &s(&three), &s(&hf3)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_adapter_file("lora reshard", &hf3.join("default/adapter_model.safetensors"), &g, "after3", 28);
}

#[test]
fn cli_lora_bad_input_is_a_clear_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (gqa, lora) = (s(&fixture("llama-gqa")), s(&fixture("llama-gqa-lora")));
    let data = s(&fixture("llama-gqa-lora/train_golden_lora.safetensors"));
    let (full, run, sharded) = (tmp.path().join("full"), tmp.path().join("lora"), tmp.path().join("sharded"));
    let ok = |args: &[&str]| {
        let out = bin(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ok(&["train", &gqa, &s(&full), "--tp", "2", "--data", &data, "--steps", "1"]);
    ok(&["train", &gqa, &s(&run), "--tp", "2", "--adapter", &lora, "--data", &data, "--steps", "1"]);
    ok(&["shard", &gqa, &s(&sharded), "--tp", "2"]);
    let tied = s(&fixture("llama-mha-tied"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        // An adapter for another model.
        (vec![tied, "--tp".into(), "2".into(), "--adapter".into(), lora.clone()], "do not fit"),
        (vec![gqa.clone(), "--tp".into(), "2".into(), "--adapter".into(), s(&fixture("qwen3-lora"))], "do not fit"),
        // --adapter on a resume: of a full run, of a LoRA run.
        (vec![s(&full), "--adapter".into(), lora.clone()], "is a full-training checkpoint"),
        (vec![s(&run), "--adapter".into(), lora.clone()], "leave --adapter out"),
        // Not an adapter directory; a bad adapter name.
        (vec![gqa.clone(), "--tp".into(), "2".into(), "--adapter".into(), gqa.clone()], "adapter_config.json"),
        (
            vec![
                gqa.clone(),
                "--tp".into(),
                "2".into(),
                "--adapter".into(),
                lora.clone(),
                "--adapter-name".into(),
                "a.b".into(),
            ],
            "adapter name",
        ),
    ];
    for (i, (args, expected)) in cases.into_iter().enumerate() {
        let out_dir = tmp.path().join(format!("out{i}"));
        let mut a = vec!["train".to_string(), args[0].clone(), s(&out_dir)];
        a.extend(args[1..].iter().cloned());
        a.extend(["--data".into(), data.clone(), "--steps".into(), "1".into()]);
        let out = bin(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(err.contains(expected) && err.lines().count() == 1, "case {i}: {err}");
        assert!(!out_dir.exists(), "case {i}: output written");
    }
    // --adapter-name / --lora-mode without --adapter: a usage error.
    let out_dir = tmp.path().join("usage");
    let out = bin(&["train", &gqa, &s(&out_dir), "--tp", "2", "--adapter-name", "x", "--data", &data, "--steps", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out_dir.exists());
    // consolidate --optimizer on a checkpoint without optimizer state.
    let out_dir = tmp.path().join("hf");
    let out = bin(&["consolidate", &s(&sharded), &s(&out_dir), "--optimizer"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no optimizer state") && err.lines().count() == 1, "{err}");
    assert!(!out_dir.exists());
}

#[test]
fn cli_bad_training_input_is_a_clear_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let jsonl = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let sharded = tmp.path().join("sharded");
    assert!(bin(&["shard", &s(&model), &s(&sharded), "--tp", "2"]).status.success());
    let cases: Vec<(PathBufOr, &str)> = vec![
        (
            PathBufOr::Hf(jsonl("vocab.jsonl", "{\"input_ids\": [1, 2, 300]}\n")),
            "token id 300 is outside the vocabulary",
        ),
        (PathBufOr::Hf(jsonl("empty.jsonl", "\n")), "no training rows"),
        (PathBufOr::Hf(jsonl("ragged.jsonl", "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2]}\n")), "ragged"),
        (PathBufOr::Resume(jsonl("ok.jsonl", "{\"input_ids\": [1, 2, 3]}\n")), "no optimizer state"),
    ];
    for (i, (case, expected)) in cases.into_iter().enumerate() {
        let out_dir = tmp.path().join(format!("out{i}"));
        let (m, data) = match &case {
            PathBufOr::Hf(d) => (model.clone(), d.clone()),
            PathBufOr::Resume(d) => (sharded.clone(), d.clone()),
        };
        let out = bin(&["train", &s(&m), &s(&out_dir), "--tp", "2", "--data", &s(&data), "--steps", "1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(err.contains(expected) && err.lines().count() == 1, "case {i}: {err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
        assert!(!out_dir.exists(), "case {i}: output written");
    }
}

enum PathBufOr {
    Hf(std::path::PathBuf),
    Resume(std::path::PathBuf),
}

/// LoRA-only training of `llama-gqa-lora` (exact mode) for `steps` steps; returns the losses, the step-1
/// gradients and the trained adapter, both exported to peft's names.
fn lora_run(tp: usize, fuse: bool, steps: usize) -> (Vec<f32>, StateDict, StateDict) {
    use neuron_spec::lora::{
        adapter_metadata_for_tp, export_adapter, import_adapter, is_lora_parameter, remove_adapter_name,
        LoraImportOptions, LoraMode, PeftAdapter,
    };
    let g = open("llama-gqa-lora/train_golden_lora.safetensors");
    let ids = golden_ids(&g);
    let cfg = ModelConfig::read(&fixture("llama-gqa").join("config.json")).unwrap();
    let meta = neuron_spec_models::layout(&cfg, tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
    let peft = PeftAdapter::open(&fixture("llama-gqa-lora")).unwrap();
    let a = import_adapter(&meta, &peft, "default", LoraImportOptions { mode: LoraMode::Exact, allow_partial: false })
        .unwrap();
    let ck = hf("llama-gqa");
    let source = Source::tensors(&ck, cfg.clone()).fuse_qkv(fuse);
    let task = Train::new(vec![ids.clone()], steps, options().adamw)
        .grad_clip(options().grad_clip)
        .lora(Adapter::Imported(Box::new(a.clone())))
        .keep_grads();
    let run = neuron_spec_models::run(&source, &Transport::threads(tp), &task).unwrap();
    let ameta = adapter_metadata_for_tp(&meta, &a.layout).unwrap();
    let export = |ranks: Vec<StateDict>| {
        let ranks: Vec<StateDict> = ranks
            .into_iter()
            .map(|sd| {
                sd.into_iter()
                    .filter(|(n, _)| is_lora_parameter(n))
                    .map(|(n, t)| (remove_adapter_name(&n), t))
                    .collect()
            })
            .collect();
        let srcs: Vec<&dyn TensorSource> = ranks.iter().map(|s| s as &dyn TensorSource).collect();
        let full = to_original_weights(&ameta, &srcs).unwrap();
        export_adapter(&meta, &a.config, &full).unwrap().tensors
    };
    let grads = export(run.grads.iter().map(|g| g.clone().unwrap()).collect());
    let after = export(run.ranks.iter().map(|(sd, _)| sd.clone()).collect());
    (run.losses, grads, after)
}

#[test]
fn lora_only_exact_training_equals_peft_training_the_separate_adapters() {
    let g = open("llama-gqa-lora/train_golden_lora.safetensors");
    let loss = g.tensor("loss").unwrap().to_f32_vec();
    for (tp, fuse) in [(1, true), (2, false), (4, true), (8, false)] {
        let what = format!("lora tp {tp} fuse {fuse}");
        let (l1, grads, after1) = lora_run(tp, fuse, 1);
        check_losses(&what, &l1, &loss[..1]);
        assert_eq!(grads.len(), 28, "{what}");
        for (name, t) in &grads {
            let gold = g.tensor(&format!("grad.{name}")).unwrap().to_f32_vec();
            close(&format!("{what}: grad.{name}"), &t.to_f32_vec(), &gold, 1e-4, f64::INFINITY);
        }
        for (name, t) in &after1 {
            let gold = g.tensor(&format!("after1.{name}")).unwrap().to_f32_vec();
            close(&format!("{what}: after1.{name}"), &t.to_f32_vec(), &gold, 5e-4, 1e-6);
        }
        let (l3, _, after3) = lora_run(tp, fuse, 3);
        check_losses(&what, &l3, &loss);
        // Off-block entries stayed zero: every member is exported at its own rank, as peft's.
        assert_eq!(after3.len(), 28, "{what}");
        for (name, t) in &after3 {
            let gold = g.tensor(&format!("after3.{name}")).unwrap();
            assert_eq!(t.shape(), gold.shape(), "{what}: {name}");
            close(&format!("{what}: after3.{name}"), &t.to_f32_vec(), &gold.to_f32_vec(), 5e-4, 1e-6);
        }
    }
}

#[test]
fn conjugate_pairs_sum_gradients_over_ranks_and_keep_values() {
    use burn::tensor::{Device, Tensor, TensorData};
    use neuron_spec::comm::{copy_to_tp_region, reduce_from_tp_region, Communicator, LocalCommunicator};
    let vec = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().unwrap();
    // Rank r: y = copy(x)·(r + 1), z = reduce(y), loss_r = sum(z·10^r).
    let comms = LocalCommunicator::group(2).unwrap();
    let outs: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let d = Device::default().autodiff();
                    let r = c.context().rank as f32;
                    let x = Tensor::<1>::from_data(TensorData::new(vec![1f32, 2.0], [2]), &d).require_grad();
                    let y = copy_to_tp_region(x.clone(), &c).unwrap() * (r + 1.0);
                    let z = reduce_from_tp_region(y, &c).unwrap();
                    let zv = vec(z.clone().detach());
                    let g = (z * 10f32.powf(r)).sum().backward();
                    c.grad_reducer().unwrap().take_error().unwrap();
                    (zv, vec(x.grad(&g).unwrap()))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (z, gx) in outs {
        assert_eq!(z, vec![3.0, 6.0]); // x·1 + x·2 on both ranks
        assert_eq!(gx, vec![21.0, 21.0]); // Σ_r (r + 1)·10^r, the same on both ranks
    }
}
