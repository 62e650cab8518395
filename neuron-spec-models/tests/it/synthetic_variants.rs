//! Variants without HF goldens (MQA, Qwen2 q/k/v biases, Llama attention and MLP biases, padded untied
//! vocab): random checkpoints whose TP forward must agree with tp 1, and whose rank tensors must consolidate
//! back byte for byte.

use crate::common;
use burn::tensor::Device;
use common::assert_same_tensors;
use neuron_spec::format::{write_hf_checkpoint, HfCheckpoint};
use neuron_spec::spec::compile::to_original_weights;
use neuron_spec::spec::contract::{CustomModule, TpContext};
use neuron_spec::{HostTensor, StateDict, TensorInfo, TensorSource};
use neuron_spec_models::{layout, LlamaForCausalLM, ModelConfig, QkvLayout};
use std::path::Path;

/// A deterministic value stream in [-0.1, 0.1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    }
}

/// Writes config.json and a random model.safetensors for `config` into `dir`.
fn write_model(dir: &Path, config: serde_json::Value, seed: u64) -> ModelConfig {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let cfg = ModelConfig::read(&dir.join("config.json")).unwrap();
    let c = &cfg.llama;
    let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
    let (q, kv) = (c.num_attention_heads * hd, c.kv_heads() * hd);
    let mut shapes: Vec<(String, Vec<usize>, bool)> =
        vec![("model.embed_tokens.weight".into(), vec![c.vocab_size, h], false)];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (n, s) in
            [("self_attn.q_proj", vec![q, h]), ("self_attn.k_proj", vec![kv, h]), ("self_attn.v_proj", vec![kv, h])]
        {
            shapes.push((format!("{p}.{n}.weight"), s.clone(), false));
            if cfg.qkv_bias {
                shapes.push((format!("{p}.{n}.bias"), vec![s[0]], false));
            }
        }
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q], false));
        if cfg.o_bias {
            shapes.push((format!("{p}.self_attn.o_proj.bias"), vec![h], false));
        }
        for (n, s) in [("mlp.gate_proj", vec![i, h]), ("mlp.up_proj", vec![i, h]), ("mlp.down_proj", vec![h, i])] {
            shapes.push((format!("{p}.{n}.weight"), s.clone(), false));
            if c.mlp_bias {
                shapes.push((format!("{p}.{n}.bias"), vec![s[0]], false));
            }
        }
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h], true));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![h], true));
    }
    shapes.push(("model.norm.weight".into(), vec![h], true));
    if !c.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![c.vocab_size, h], false));
    }
    let mut rng = Lcg(seed);
    let mut sd = StateDict::new();
    for (n, s, norm) in &shapes {
        let count: usize = s.iter().product();
        // Norms in 1 ± 0.3 and weights in ±0.5: large enough that attention is far from uniform.
        let v: Vec<f32> = (0..count).map(|_| if *norm { 1.0 + 3.0 * rng.next() } else { 5.0 * rng.next() }).collect();
        sd.insert(n.clone(), HostTensor::from_f32(s.clone(), &v).unwrap());
    }
    let infos: Vec<TensorInfo> =
        sd.iter().map(|(n, t)| TensorInfo { name: n.clone(), dtype: t.dtype(), shape: t.shape().to_vec() }).collect();
    write_hf_checkpoint(dir, &infos, None, &mut |i| Ok(vec![sd.tensor(&i.name)?])).unwrap();
    cfg
}

fn base(model_type: &str, heads: usize, kv: usize, vocab: usize) -> serde_json::Value {
    serde_json::json!({
        "model_type": model_type, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": 8, "num_hidden_layers": 2, "vocab_size": vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": false
    })
}

fn check_variant(name: &str, config: serde_json::Value, tps: &[usize]) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_model(tmp.path(), config, 7);
    let src = HfCheckpoint::open(tmp.path()).unwrap();
    let ids = [vec![1, 17, 42, 9, 3, 27, 44, 0], vec![5, 0, 8, 23, 11, 7, 36, 2]];
    let reference = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&src, cfg.clone()).fuse_qkv(false),
        &neuron_spec_models::Transport::threads(1),
        &neuron_spec_models::Forward::new(ids.to_vec()),
    )
    .unwrap();
    let spread = reference.logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(spread > 0.1, "{name}: degenerate logits");
    for &tp in tps {
        for fuse in [true, false] {
            let out = neuron_spec_models::run(
                &neuron_spec_models::Source::tensors(&src, cfg.clone()).fuse_qkv(fuse),
                &neuron_spec_models::Transport::threads(tp),
                &neuron_spec_models::Forward::new(ids.to_vec()),
            )
            .unwrap();
            let d = neuron_spec::compare::max_abs_diff(&out.logits, &reference.logits)
                .unwrap_or_else(|m| panic!("{name}: {m}"));
            eprintln!("{name} tp {tp} fuse_qkv {fuse}: max |Δ| vs tp 1 {d:.2e} (max |logit| {spread:.2})");
            assert!(d <= 1e-5, "{name} tp {tp} fuse {fuse}: {d}");
            // Rank tensors through the model consolidate back to the checkpoint.
            let ranks: Vec<StateDict> = (0..tp)
                .map(|r| {
                    let dev = Device::default();
                    let m = neuron_spec_models::Source::tensors(&src, cfg.clone())
                        .fuse_qkv(fuse)
                        .load(TpContext::new(tp, r).unwrap(), &dev)
                        .unwrap();
                    let mut sd = StateDict::new();
                    m.save_rank_tensors("", &mut sd).unwrap();
                    sd
                })
                .collect();
            let meta = layout(&cfg, tp, QkvLayout::gqa(fuse)).unwrap();
            let sources: Vec<&dyn TensorSource> = ranks.iter().map(|r| r as &dyn TensorSource).collect();
            let back = to_original_weights(&meta, &sources).unwrap();
            assert_same_tensors(&back, &src, &format!("{name} tp {tp} fuse {fuse}"));
        }
    }
}

#[test]
fn mqa_single_kv_head_is_replicated_on_every_rank() {
    check_variant("mqa", base("llama", 4, 1, 64), &[2, 4]);
}

#[test]
fn qwen2_qkv_biases_without_o_bias() {
    check_variant("qwen2", base("qwen2", 4, 2, 64), &[2, 4]);
}

#[test]
fn llama_attention_and_mlp_biases_with_padded_untied_vocab() {
    let mut c = base("llama", 4, 2, 50);
    c["attention_bias"] = true.into();
    c["mlp_bias"] = true.into();
    // Vocab 50 over 4 ranks: 13 rows each, the lm_head's gathered logits are truncated to 50.
    check_variant("llama-bias", c, &[2, 4]);
}

#[test]
fn unsupported_configs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = base("llama", 4, 2, 64);
    c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
    std::fs::write(tmp.path().join("config.json"), c.to_string()).unwrap();
    let e = ModelConfig::read(&tmp.path().join("config.json")).unwrap_err().to_string();
    assert!(e.contains("rope_scaling"), "{e}");
    let mut c = base("llama", 4, 2, 64);
    c["rms_norm_eps"] = 0.0.into();
    std::fs::write(tmp.path().join("config.json"), c.to_string()).unwrap();
    let cfg = ModelConfig::read(&tmp.path().join("config.json")).unwrap();
    let e =
        LlamaForCausalLM::new(&cfg.llama, TpContext::new(1, 0).unwrap(), true, None, &Device::default()).unwrap_err();
    assert!(e.to_string().contains("rms_norm_eps"), "{e}");
}
