//! One training step (forward, backward, AdamW) on two Llama shapes, side by side with torch doing the same
//! step on CPU (`bench/torch_train_step.py`) with the same thread count:
//!
//! * `wide`: ~112M parameters, 10 layers, hidden 768, vocab 32000, batch [4, 256] (matmul-bound);
//! * `deep`: SmolLM-135M's shape, 30 layers, hidden 576, 9/3 heads, vocab 49152, tied embeddings, batch
//!   [4, 128] (per-layer overheads, the optimizer over every parameter and the embedding gradient show).
//!
//! Every configuration runs in a child process (the bench binary re-executed with `train-child`): it loads the
//! model, takes `STEPS` steps, and reports its best step after the first (wall and process CPU time), the
//! per-phase profile of that step ([`neuron_spec::train::StepProfile`]), an inference forward pass over the
//! same batch, and its peak RSS. The backend is picked with `BURN_DEVICE` (`flex`, `ndarray`).

use neuron_spec::comm::{Communicator, LocalCommunicator};
use neuron_spec::train::{AdamWConfig, RankTrainer, StepProfile, TrainMode, TrainOptions};
use neuron_spec::{HostTensor, StateDict};
use neuron_spec_models::{ModelConfig, Source};
use std::process::Command;
use std::time::Instant;

pub type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Steps each child takes; the first warms up.
const STEPS: usize = 3;

/// A Llama shape and its batch.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub inter: usize,
    pub vocab: usize,
    pub tied: bool,
    pub batch: usize,
    pub seq: usize,
}

/// The bench's shapes by name (`--small` shrinks both).
pub fn shape(name: &str, small: bool) -> Res<Shape> {
    Ok(match (name, small) {
        ("wide", false) => Shape {
            name: "wide",
            hidden: 768,
            layers: 10,
            heads: 12,
            kv_heads: 4,
            inter: 2048,
            vocab: 32000,
            tied: false,
            batch: 4,
            seq: 256,
        },
        ("deep", false) => Shape {
            name: "deep",
            hidden: 576,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            inter: 1536,
            vocab: 49152,
            tied: true,
            batch: 4,
            seq: 128,
        },
        ("wide", true) => Shape {
            name: "wide",
            hidden: 256,
            layers: 2,
            heads: 8,
            kv_heads: 4,
            inter: 512,
            vocab: 4096,
            tied: false,
            batch: 2,
            seq: 64,
        },
        ("deep", true) => Shape {
            name: "deep",
            hidden: 192,
            layers: 6,
            heads: 3,
            kv_heads: 3,
            inter: 512,
            vocab: 8192,
            tied: true,
            batch: 2,
            seq: 32,
        },
        _ => return Err(format!("unknown shape {name}").into()),
    })
}

/// transformers' config.json of `s`.
pub fn config(s: &Shape) -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": s.hidden,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
        "head_dim": s.hidden / s.heads, "intermediate_size": s.inter, "vocab_size": s.vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": s.tied,
        "attention_bias": false, "mlp_bias": false, "max_position_embeddings": 4096, "initializer_range": 0.02,
        "torch_dtype": "float32"
    })
}

/// Deterministic pseudo-random weights, uniform in ±0.035 (xorshift), norms at 1; no `lm_head` when tied.
pub fn weights(s: &Shape) -> Res<StateDict> {
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07
            })
            .collect()
    };
    let (h, kv, d) = (s.hidden, s.kv_heads * (s.hidden / s.heads), s.inter);
    let mut sd = StateDict::new();
    let mut put =
        |name: String, shape: Vec<usize>, v: Vec<f32>| HostTensor::from_f32(shape, &v).map(|t| sd.insert(name, t));
    put("model.embed_tokens.weight".into(), vec![s.vocab, h], rnd(s.vocab * h))?;
    if !s.tied {
        put("lm_head.weight".into(), vec![s.vocab, h], rnd(s.vocab * h))?;
    }
    put("model.norm.weight".into(), vec![h], vec![1.0; h])?;
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.self_attn.q_proj.weight"), vec![h, h], rnd(h * h))?;
        put(format!("{p}.self_attn.k_proj.weight"), vec![kv, h], rnd(kv * h))?;
        put(format!("{p}.self_attn.v_proj.weight"), vec![kv, h], rnd(kv * h))?;
        put(format!("{p}.self_attn.o_proj.weight"), vec![h, h], rnd(h * h))?;
        put(format!("{p}.mlp.gate_proj.weight"), vec![d, h], rnd(d * h))?;
        put(format!("{p}.mlp.up_proj.weight"), vec![d, h], rnd(d * h))?;
        put(format!("{p}.mlp.down_proj.weight"), vec![h, d], rnd(h * d))?;
        put(format!("{p}.input_layernorm.weight"), vec![h], vec![1.0; h])?;
        put(format!("{p}.post_attention_layernorm.weight"), vec![h], vec![1.0; h])?;
    }
    Ok(sd)
}

/// The bench's token ids, as the torch script makes them.
pub fn ids(s: &Shape) -> Vec<Vec<i64>> {
    (0..s.batch).map(|b| (0..s.seq).map(|t| ((b * 7919 + t * 104729) % s.vocab) as i64).collect()).collect()
}

/// This process's peak resident set in bytes.
pub fn vm_hwm() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).ok_or("no VmHWM")?;
    Ok(kb.trim().trim_end_matches("kB").trim().parse::<u64>()? * 1024)
}

/// User + system CPU seconds of this process (every thread) so far.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

pub fn model_config(s: &Shape) -> Res<ModelConfig> {
    let dir = std::env::temp_dir().join(format!("neuron-spec-train-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("config.json"), config(s).to_string())?;
    let cfg = ModelConfig::read(&dir.join("config.json"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(cfg?)
}

/// One rank's steps: (wall, cpu, profile) of each step after the first, and its inference forward seconds.
type RankTimes = (Vec<(f64, f64, StepProfile)>, f64);

fn rank_steps(comm: &LocalCommunicator, s: &Shape, cfg: &ModelConfig, sd: &StateDict) -> Res<RankTimes> {
    let options = TrainOptions {
        adamw: AdamWConfig { lr: 1e-4, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 },
        grad_clip: None,
        mode: TrainMode::Full,
    };
    let batch = ids(s);
    let ctx = comm.context();
    let device = burn::tensor::Device::default().autodiff();
    let model = Source::tensors(sd, cfg.clone()).fuse_qkv(true).load(ctx, &device)?;
    let mut t = RankTrainer::new(model, &StateDict::new(), options, &device)?;
    let mut out = Vec::new();
    for k in 0..STEPS {
        let (w, c) = (Instant::now(), cpu_seconds());
        t.step(comm, |m, c| m.causal_lm_loss(&batch, c))?;
        if k > 0 {
            out.push((w.elapsed().as_secs_f64(), cpu_seconds() - c, t.last_profile));
        }
    }
    drop(t);
    // Inference: the same batch's loss on a plain device (no autodiff graph).
    let plain = burn::tensor::Device::default();
    let model = Source::tensors(sd, cfg.clone()).fuse_qkv(true).load(ctx, &plain)?;
    let w = Instant::now();
    let l = model.causal_lm_loss(&batch, comm)?;
    let _ = l.into_data();
    Ok((out, w.elapsed().as_secs_f64()))
}

/// The child: `train-child SHAPE TP [--small]`.
pub fn child(args: &[String]) -> Res<()> {
    // As the CLI's `train` does.
    neuron_spec::train::keep_freed_memory();
    let small = args.iter().any(|a| a == "--small");
    let s = shape(args.first().ok_or("train-child SHAPE TP")?, small)?;
    let tp: usize = args.get(1).ok_or("train-child SHAPE TP")?.parse()?;
    let cfg = model_config(&s)?;
    let sd = weights(&s)?;
    let params: usize = sd.values().map(|t| t.numel()).sum();
    let comms = LocalCommunicator::group(tp)?;
    let results: Vec<Res<RankTimes>> = std::thread::scope(|sc| {
        let hs: Vec<_> = comms
            .iter()
            .map(|comm| {
                let (cfg, sd) = (&cfg, &sd);
                sc.spawn(move || {
                    let r = rank_steps(comm, &s, cfg, sd).map_err(|e| e.to_string());
                    if let Err(e) = &r {
                        comm.abort(e);
                    }
                    r
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| match h.join() {
                Ok(r) => r.map_err(|e| e.into()),
                Err(_) => Err("a rank panicked".into()),
            })
            .collect()
    });
    let mut ranks = Vec::new();
    for r in results {
        ranks.push(r?);
    }
    let (steps, fwd) = ranks.into_iter().next().ok_or("no ranks")?;
    let best = steps.iter().min_by(|a, b| a.0.total_cmp(&b.0)).ok_or("no step")?;
    let p = best.2;
    let secs = |d: std::time::Duration| d.as_secs_f64();
    println!("PARAMS {params}\nSTEP {}\nCPU {}\nFORWARD {fwd}", best.0, best.1);
    println!(
        "PHASES {} {} {} {} {} {}",
        secs(p.forward),
        secs(p.backward),
        secs(p.all_reduce),
        secs(p.gradients),
        secs(p.optimizer),
        secs(p.reload)
    );
    println!("VmHWM {}", vm_hwm()?);
    Ok(())
}

pub fn parse(out: &str, key: &str) -> Option<f64> {
    out.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
}

fn parse_list(out: &str, key: &str) -> Vec<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// The thread count both sides use: this machine's parallelism (`RAYON_NUM_THREADS`, torch's
/// `set_num_threads`).
pub fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

struct Ours {
    params: f64,
    step: f64,
    cpu: f64,
    forward: f64,
    phases: Vec<f64>,
    rss: f64,
}

fn run_ours(s: &Shape, tp: usize, backend: &str, small: bool) -> Res<Ours> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["train-child", s.name, &tp.to_string()]);
    if small {
        cmd.arg("--small");
    }
    cmd.env("BURN_DEVICE", backend).env("RAYON_NUM_THREADS", threads().to_string());
    let o = cmd.output()?;
    if !o.status.success() {
        return Err(format!("{} tp {tp} {backend}: {}", s.name, String::from_utf8_lossy(&o.stderr)).into());
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let get = |k: &str| parse(&out, k).ok_or_else(|| format!("the child printed no {k}"));
    Ok(Ours {
        params: get("PARAMS")?,
        step: get("STEP")?,
        cpu: get("CPU")?,
        forward: get("FORWARD")?,
        phases: parse_list(&out, "PHASES"),
        rss: get("VmHWM")?,
    })
}

/// torch's step (wall, cpu, forward, rss), or why it was skipped.
fn run_torch(s: &Shape, python: &str) -> std::result::Result<(f64, f64, f64, f64), String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("torch_train_step.py");
    let cfg_path = std::env::temp_dir().join(format!("neuron-spec-train-bench-cfg-{}.json", std::process::id()));
    std::fs::write(&cfg_path, config(s).to_string()).map_err(|e| e.to_string())?;
    let o = Command::new(python)
        .arg(&script)
        .arg(&cfg_path)
        .args([s.batch.to_string(), s.seq.to_string(), STEPS.to_string(), threads().to_string()])
        .output();
    let _ = std::fs::remove_file(&cfg_path);
    match o {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            let get = |k: &str| parse(&out, k).ok_or(format!("torch printed no {k}"));
            Ok((get("STEP")?, get("CPU")?, get("FORWARD")?, get("VmHWM")?))
        }
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string()),
        Err(e) => Err(format!("{python}: {e}")),
    }
}

/// Runs the train bench on `shapes`; returns the missed targets.
pub fn report(shapes: &[&str], small: bool, python: &str) -> Res<Vec<String>> {
    let mut missed = Vec::new();
    let mib = |b: f64| b / 1048576.0;
    for name in shapes {
        let s = shape(name, small)?;
        let torch = run_torch(&s, python);
        // The wide shape's heads divide tp 2 and 4; the deep one's 9/3 heads divide tp 3 only.
        let tps: &[usize] = if s.heads % 4 == 0 && s.kv_heads % 2 == 0 { &[1, 2, 4] } else { &[1, 3] };
        let mut rows: Vec<(String, usize, Ours)> = Vec::new();
        for backend in ["flex", "ndarray"] {
            rows.push((backend.into(), 1, run_ours(&s, 1, backend, small)?));
        }
        let default = "flex";
        for &tp in &tps[1..] {
            rows.push((default.into(), tp, run_ours(&s, tp, default, small)?));
        }
        println!();
        println!(
            "train step, {} shape: hidden {} layers {} heads {}/{} intermediate {} vocab {}{}, batch {} x {}, f32, {} threads",
            s.name,
            s.hidden,
            s.layers,
            s.heads,
            s.kv_heads,
            s.inter,
            s.vocab,
            if s.tied { " tied" } else { "" },
            s.batch,
            s.seq,
            threads()
        );
        println!(
            "| run | params | step (wall) | / torch | step (CPU) | / torch CPU | forward (inference) | peak RSS |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        match &torch {
            Ok((t, c, f, rss)) => println!(
                "| torch (torch.optim.AdamW, eager attention) | | {t:.2} s | 1.00 | {c:.2} s | 1.00 | {f:.2} s | {:.0} MiB |",
                mib(*rss)
            ),
            Err(e) => println!("| torch: SKIPPED ({e}) | | | | | | | |"),
        }
        for (backend, tp, o) in &rows {
            let (rw, rc) = match &torch {
                Ok((t, c, _, _)) => (format!("{:.2}", o.step / t), format!("{:.2}", o.cpu / c)),
                Err(_) => ("-".into(), "-".into()),
            };
            println!(
                "| ours {backend} tp {tp} | {:.1}M | {:.2} s | {rw} | {:.2} s | {rc} | {:.2} s | {:.0} MiB |",
                o.params / 1e6,
                o.step,
                o.cpu,
                o.forward,
                mib(o.rss)
            );
        }
        println!();
        println!("where the step goes (rank 0, seconds): forward, backward (all-reduce inside), all-reduce, gradients read back, AdamW, reload");
        println!("| run | forward | backward | all-reduce | gradients | optimizer | reload |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for (backend, tp, o) in &rows {
            let cells: Vec<String> = o.phases.iter().map(|x| format!("{x:.3}")).collect();
            println!("| ours {backend} tp {tp} | {} |", cells.join(" | "));
        }
        let tp1 = rows.iter().find(|(b, tp, _)| b == default && *tp == 1).map(|r| r.2.step).unwrap_or(f64::MAX);
        if let Ok((t, _, _, _)) = torch {
            if tp1 > t {
                missed.push(format!("{} train step at tp 1 ≤ 1.0 × torch ({:.2})", s.name, tp1 / t));
            }
        }
        for (_, tp, o) in rows.iter().filter(|(b, tp, _)| b == default && *tp > 1) {
            if o.step > 1.3 * tp1 {
                missed.push(format!("{} train step at tp {tp} ≤ 1.3 × tp 1 ({:.2})", s.name, o.step / tp1));
            }
        }
    }
    Ok(missed)
}
