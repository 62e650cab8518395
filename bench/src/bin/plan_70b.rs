//! Planning a 70B-shaped Llama (hidden 8192, 80 layers, 64 heads / 8 kv heads, intermediate 28672, vocab
//! 128256) at tp 32: build the annotated model for rank 0 (burn `Param`s initialise lazily, so no weight is
//! allocated), derive its layout (`create_parameter_metadata`), then plan every rank's tensors against the HF
//! shapes (no bytes) and invert the plan (consolidation). Prints the time of each step and the peak RSS.
//!
//! `cargo run --release -p neuron-spec-bench --bin plan_70b [-- --tp N]`

use neuron_spec::spec::compile::{plan_shards, PlanOptions};
use neuron_spec::spec::contract::{CustomModule, TpContext};
use neuron_spec::tensor::DType;
use neuron_spec::tensor::HostTensor;
use neuron_spec::{Error, Result, TensorInfo, TensorSource};
use neuron_spec_models::LlamaConfig;
use neuron_spec_models::LlamaForCausalLM;
use std::time::Instant;

/// HF tensor shapes without bytes (and an index by name).
struct Shapes(Vec<TensorInfo>, std::collections::HashMap<String, usize>);

impl TensorSource for Shapes {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.1.get(name).map(|i| self.0[*i].clone())
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        // Invalid: the bench's own check: no library failure kind fits.
        Err(Error::Invalid(format!("{name}: shapes only")))
    }
    fn names(&self) -> Vec<String> {
        self.0.iter().map(|i| i.name.clone()).collect()
    }
}

/// `VmHWM` of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let tp =
        args.iter().position(|a| a == "--tp").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(32);
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
        "num_key_value_heads": 8, "num_hidden_layers": 80, "vocab_size": 128256, "rope_theta": 500000.0
    }))
    // Invalid: the bench's own check: no library failure kind fits.
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let (h, i, v, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
    let bf16 = |name: String, shape: Vec<usize>| TensorInfo { name, dtype: DType::BF16, shape };
    let mut infos = vec![bf16("model.embed_tokens.weight".into(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("post_attention_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            infos.push(bf16(format!("{p}.{n}"), s));
        }
    }
    infos.push(bf16("model.norm.weight".into(), vec![h]));
    infos.push(bf16("lm_head.weight".into(), vec![v, h]));
    let params: usize = infos.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    let index = infos.iter().enumerate().map(|(k, t)| (t.name.clone(), k)).collect();
    let src = Shapes(infos, index);
    let rss0 = peak_rss_mib();

    let t = Instant::now();
    let device = burn::tensor::Device::default();
    let model = LlamaForCausalLM::new(&cfg, TpContext::new(tp, 0)?, true, None, &device)?;
    let build = t.elapsed();
    let t = Instant::now();
    let meta = model.create_parameter_metadata()?;
    let layout = t.elapsed();
    let rss_model = peak_rss_mib();
    let t = Instant::now();
    let plan = plan_shards(&meta, &src, tp, PlanOptions::default())?;
    let planning = t.elapsed();
    let t = Instant::now();
    let inverse = plan.invert()?;
    let inverting = t.elapsed();
    let blocks: usize = plan.ranks.iter().flatten().map(|t| t.blocks.len()).sum();
    let local_bytes: usize = plan.ranks.iter().flatten().map(|t| t.nbytes()).sum();

    println!(
        "70B-shaped Llama ({:.1}B parameters, bf16 {:.1} GiB) at tp {tp}",
        params as f64 / 1e9,
        (params * 2) as f64 / (1u64 << 30) as f64
    );
    println!("| step | time | peak RSS after |");
    println!("| --- | --- | --- |");
    println!("| start (shapes only) | | {rss0:.1} MiB |");
    println!("| build the rank-0 model (lazy params) | {:.1} ms | {rss_model:.1} MiB |", build.as_secs_f64() * 1e3);
    println!("| its layout (create_parameter_metadata) | {:.1} ms | |", layout.as_secs_f64() * 1e3);
    println!(
        "| plan all {tp} ranks ({} tensors, {blocks} blocks, {:.1} GiB of rank tensors) | {:.1} ms | |",
        plan.ranks.iter().map(Vec::len).sum::<usize>(),
        local_bytes as f64 / (1u64 << 30) as f64,
        planning.as_secs_f64() * 1e3
    );
    println!(
        "| invert (consolidation plan, {} tensors) | {:.1} ms | {:.1} MiB |",
        inverse.len(),
        inverting.as_secs_f64() * 1e3,
        peak_rss_mib()
    );
    let total = build + layout + planning + inverting;
    println!("total {:.3} s, peak RSS {:.1} MiB", total.as_secs_f64(), peak_rss_mib());
    Ok(())
}
