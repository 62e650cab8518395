//! One training step (forward, backward, AdamW) of a ~112M-parameter Llama-shaped model, batch 4 × 256, at
//! tp 1, 2 and 4 (ranks on threads), side by side with torch doing the same step on CPU when it is installed
//! (`bench/torch_train_step.py`, run with `$NEURON_SPEC_BENCH_PYTHON` or `python3`).
//!
//! Each configuration runs in a child process (this binary re-executed with `--child TP`) that times its
//! second step (the first one warms up) and prints its own peak RSS (VmHWM).
//!
//! ```sh
//! cargo run --release -p neuron-spec-bench --bin train_step [-- --small]
//! ```

use neuron_spec::train::AdamWConfig;
use neuron_spec::{HostTensor, StateDict};
use neuron_spec_models::{run, ModelConfig, Source, Train, Transport};
use std::time::Instant;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Shape {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    inter: usize,
    vocab: usize,
    batch: usize,
    seq: usize,
}

fn shape(small: bool) -> Shape {
    if small {
        Shape { hidden: 256, layers: 2, heads: 8, kv_heads: 4, inter: 512, vocab: 4096, batch: 2, seq: 64 }
    } else {
        Shape { hidden: 768, layers: 10, heads: 12, kv_heads: 4, inter: 2048, vocab: 32000, batch: 4, seq: 256 }
    }
}

fn config(s: &Shape) -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": s.hidden,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
        "head_dim": s.hidden / s.heads, "intermediate_size": s.inter, "vocab_size": s.vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": false,
        "attention_bias": false, "mlp_bias": false, "max_position_embeddings": 4096, "initializer_range": 0.02
    })
}

/// Deterministic pseudo-random weights N(0, ~0.02) (xorshift), norms at 1.
fn weights(s: &Shape) -> Res<StateDict> {
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
    put("lm_head.weight".into(), vec![s.vocab, h], rnd(s.vocab * h))?;
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

fn ids(s: &Shape) -> Vec<Vec<i64>> {
    (0..s.batch).map(|b| (0..s.seq).map(|t| ((b * 7919 + t * 104729) % s.vocab) as i64).collect()).collect()
}

fn vm_hwm() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).ok_or("no VmHWM")?;
    Ok(kb.trim().trim_end_matches("kB").trim().parse::<u64>()? * 1024)
}

fn child(tp: usize, small: bool) -> Res<()> {
    let s = shape(small);
    let dir = std::env::temp_dir().join(format!("neuron-spec-train-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("config.json"), config(&s).to_string())?;
    let cfg = ModelConfig::read(&dir.join("config.json"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let sd = weights(&s)?;
    let params: usize = sd.values().map(|t| t.numel()).sum();
    let adamw = AdamWConfig { lr: 1e-4, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 };
    let times = std::sync::Mutex::new(Vec::new());
    let start = Instant::now();
    let task = Train::new(vec![ids(&s)], 2, adamw).on_step(|_, _| {
        if let Ok(mut t) = times.lock() {
            t.push(start.elapsed().as_secs_f64());
        }
    });
    run(&Source::tensors(&sd, cfg).fuse_qkv(true), &Transport::threads(tp), &task)?;
    let t = times.lock().map_err(|_| "lock")?.clone();
    let step = t.get(1).zip(t.first()).map(|(b, a)| b - a).ok_or("no step times")?;
    println!("PARAMS {params}\nSTEP {step}\nVmHWM {}", vm_hwm()?);
    Ok(())
}

fn parse(out: &str, key: &str) -> Option<f64> {
    out.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let small = args.iter().any(|a| a == "--small");
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let tp: usize = args.get(i + 1).ok_or("--child TP")?.parse()?;
        return child(tp, small);
    }
    let s = shape(small);
    let exe = std::env::current_exe()?;
    let mut torch: Option<(f64, f64)> = None;
    let py = std::env::var("NEURON_SPEC_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("torch_train_step.py");
    let cfg_path = std::env::temp_dir().join(format!("neuron-spec-train-bench-cfg-{}.json", std::process::id()));
    std::fs::write(&cfg_path, config(&s).to_string())?;
    let extra = [s.batch.to_string(), s.seq.to_string()];
    match std::process::Command::new(&py).arg(&script).arg(&cfg_path).args(&extra).output() {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            torch = parse(&out, "STEP").zip(parse(&out, "VmHWM"));
        }
        Ok(o) => eprintln!("torch step skipped: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
        Err(e) => eprintln!("torch step skipped: {py}: {e}"),
    }
    let _ = std::fs::remove_file(&cfg_path);
    println!("one training step, batch {} x {}, fused qkv, f32, ranks on threads (2-core machine)", s.batch, s.seq);
    println!("| run | params | step time | / torch | peak RSS (process) |");
    println!("| --- | --- | --- | --- | --- |");
    if let Some((t, rss)) = torch {
        println!("| torch CPU (torch.optim.AdamW) | | {t:.2} s | 1.00 | {:.0} MiB |", rss / 1048576.0);
    }
    for tp in [1, 2, 4] {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--child", &tp.to_string()]);
        if small {
            cmd.arg("--small");
        }
        let o = cmd.output()?;
        if !o.status.success() {
            return Err(format!("tp {tp}: {}", String::from_utf8_lossy(&o.stderr)).into());
        }
        let out = String::from_utf8_lossy(&o.stdout);
        let (p, t, rss) = (parse(&out, "PARAMS"), parse(&out, "STEP"), parse(&out, "VmHWM"));
        let (p, t, rss) = (p.ok_or("no PARAMS")?, t.ok_or("no STEP")?, rss.ok_or("no VmHWM")?);
        let ratio = torch.map_or("-".to_string(), |(tt, _)| format!("{:.2}", t / tt));
        println!("| ours tp {tp} | {:.1}M | {t:.2} s | {ratio} | {:.0} MiB |", p / 1e6, rss / 1048576.0);
    }
    Ok(())
}
