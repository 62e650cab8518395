//! Model families against transformers 4.57.1's goldens (`llama3-rope`, `qwen3`, `granite`, `qwen3-moe`,
//! `qwen3-moe-h6`, `qwen3-moe-e8`, `gemma3`, and our `qwen2`, `mistral`, `gemma3-softcap`, `gemma3-attn-softcap`,
//! `gemma3-window`):
//! the TP forward at every tp the heads allow, fused and separate qkv; shard → consolidate byte for byte;
//! reshard equal to direct sharding; RoPE `inv_freq` and attention scaling of every rope_type against
//! transformers'; and the refusals (unknown model_type, unimplemented fields and rope types).

use crate::common;
use burn::module::Module;
use burn::nn::{EmbeddingConfig, LayerNormConfig, LinearConfig};
use burn::tensor::Device;
use common::*;
use neuron_spec::checkpoint::{ShardedCheckpoint, WriteOptions};
use neuron_spec::format::{HfCheckpoint, SafetensorsFile};
use neuron_spec::ops::reshard::reshard;
use neuron_spec::spec::contract::CustomModule;
use neuron_spec::{consolidate, shard};
use neuron_spec::{CustomModule as DeriveCustomModule, HostTensor, StateDict};
use neuron_spec_models::{layout, layout_of_dir, ModelConfig, QkvLayout, RopeConfig, RopeScaling};

fn cfg(dir: &str) -> ModelConfig {
    ModelConfig::read(&fixture(dir).join("config.json")).unwrap()
}

/// Forward at every `tp`, fused and separate qkv, against the golden.
fn forward_matches(dir: &str, model_type: &str, tps: &[usize]) {
    let c = cfg(dir);
    assert_eq!(c.family.model_type, model_type);
    let g = golden(dir);
    let src = hf(dir);
    for &tp in tps {
        for fuse in [true, false] {
            let out = neuron_spec_models::run(
                &neuron_spec_models::Source::tensors(&src, c.clone()).fuse_qkv(fuse),
                &neuron_spec_models::Transport::threads(tp),
                &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
            )
            .unwrap();
            check_golden(&out, &g, &format!("{dir} tp {tp} fuse_qkv {fuse}"));
        }
    }
}

/// Shard at `tp`, consolidate: byte for byte; reshard `tp → to` equals sharding at `to` directly; the
/// resharded checkpoint runs and matches the golden.
fn round_trips(dir: &str, tp: usize, to: usize) {
    for fuse in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, direct, out) =
            (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("direct"), tmp.path().join("hf"));
        let qkv = QkvLayout::gqa(fuse);
        shard(&fixture(dir), &a, &layout_of_dir(&fixture(dir), tp, qkv).unwrap(), tp, &WriteOptions::default())
            .unwrap();
        consolidate(&a, &out, &WriteOptions::default()).unwrap();
        assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf(dir), &format!("{dir} tp {tp} fuse {fuse}"));
        reshard(&a, &b, to, &WriteOptions::default()).unwrap();
        shard(&fixture(dir), &direct, &layout_of_dir(&fixture(dir), to, qkv).unwrap(), to, &WriteOptions::default())
            .unwrap();
        let (rb, rd) = (ShardedCheckpoint::open(&b).unwrap(), ShardedCheckpoint::open(&direct).unwrap());
        assert_eq!(rb.tp, to);
        for r in 0..to {
            assert_same_tensors(&rb.ranks[r], &rd.ranks[r], &format!("{dir} {tp}->{to} fuse {fuse} rank {r}"));
        }
        assert_eq!(rb.metadata.model_weight_transformation_specs, rd.metadata.model_weight_transformation_specs);
        if fuse {
            check_golden(
                &neuron_spec_models::Source::open(&b)
                    .and_then(|s| {
                        neuron_spec_models::run(
                            &s,
                            &neuron_spec_models::Transport::threads_at_source_tp(),
                            &neuron_spec_models::Forward::new(golden(dir).input_ids.to_vec()),
                        )
                    })
                    .unwrap(),
                &golden(dir),
                &format!("{dir} resharded to {to}"),
            );
        }
    }
}

#[test]
fn llama3_rope_matches_golden_at_tp_1_2_4() {
    // 4 query heads, 2 kv heads: tp 8 (or 3, 6) cannot hold whole heads.
    let c = cfg("llama3-rope");
    assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { .. }), "{:?}", c.rope.scaling);
    forward_matches("llama3-rope", "llama", &[1, 2, 4]);
}

#[test]
fn qwen3_matches_golden_at_tp_1_2_4_8() {
    forward_matches("qwen3", "qwen3", &[1, 2, 4, 8]);
}

#[test]
fn granite_matches_golden_at_tp_1_2_4_8() {
    forward_matches("granite", "granite", &[1, 2, 4, 8]);
}

/// Our fixtures (`tests/fixtures/make/make_qwen2_mistral.py`): Qwen2's q/k/v biases (no o bias) and tied
/// embeddings; Mistral's sliding window (16, longer than the input: active, and exact).
#[test]
fn qwen2_and_mistral_match_golden_at_tp_1_2_4_8() {
    let c = cfg("qwen2");
    assert!(c.qkv_bias && !c.o_bias && c.sliding_window.is_none());
    forward_matches("qwen2", "qwen2", &[1, 2, 4, 8]);
    let c = cfg("mistral");
    assert!(!c.qkv_bias && c.sliding_window == Some(16));
    forward_matches("mistral", "mistral", &[1, 2, 4, 8]);
}

#[test]
fn qwen3_moe_matches_golden_at_tp_1_2_4_8() {
    let c = cfg("qwen3-moe");
    let moe = c.moe.as_ref().unwrap();
    assert_eq!(moe.sparse_layers, vec![true, false]);
    assert!(moe.norm_topk_prob);
    forward_matches("qwen3-moe", "qwen3_moe", &[1, 2, 4, 8]);
}

#[test]
fn qwen3_moe_6_heads_without_norm_topk_prob_matches_golden_at_tp_1_3_6() {
    // Our fixture (tests/fixtures/qwen3-moe-h6/make.py): 6 heads / 3 kv heads, layer 0 dense and layer 1 sparse
    // (decoder_sparse_step 2), top-2 weights not renormalised; tp 6 replicates each kv head twice (tp 2: 3 kv heads do not split).
    let c = cfg("qwen3-moe-h6");
    let moe = c.moe.as_ref().unwrap();
    assert_eq!(moe.sparse_layers, vec![false, true]);
    assert!(!moe.norm_topk_prob);
    forward_matches("qwen3-moe-h6", "qwen3_moe", &[1, 3, 6]);
    round_trips("qwen3-moe-h6", 3, 6);
}

#[test]
fn qwen3_moe_8_experts_without_norm_topk_prob_matches_golden_at_tp_1_2_4() {
    // Our fixture (tests/fixtures/make/make_qwen3_moe_e8.py): 8 experts, top 2 not renormalised, both layers
    // sparse, 8 heads / 4 kv heads (tp 4: one kv head per rank), each expert's 16 columns split at tp 4.
    let c = cfg("qwen3-moe-e8");
    let moe = c.moe.as_ref().unwrap();
    assert_eq!((moe.num_experts, moe.num_experts_per_tok), (8, 2));
    assert_eq!(moe.sparse_layers, vec![true, true]);
    assert!(!moe.norm_topk_prob);
    forward_matches("qwen3-moe-e8", "qwen3_moe", &[1, 2, 4]);
    round_trips("qwen3-moe-e8", 2, 4);
}

#[test]
fn qwen3_moe_without_norm_topk_prob_changes_the_answer() {
    // No golden exists for norm_topk_prob false: this shows the flag is read, not ignored.
    let mut c = cfg("qwen3-moe");
    c.moe.as_mut().unwrap().norm_topk_prob = false;
    let g = golden("qwen3-moe");
    let out = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&hf("qwen3-moe"), c.clone()).fuse_qkv(true),
        &neuron_spec_models::Transport::threads(2),
        &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
    )
    .unwrap();
    assert!(max_abs_diff(&out.logits, &g.logits) > 1e-3);
    // hidden_1 is layer 0 (sparse); the first hidden state does not depend on routing.
    assert!(max_abs_diff(&out.hidden_0, &g.hidden_0) <= GOLDEN_TOL);
}

/// Mixtral (the shared `mixtral` fixture: 8 heads / 2 kv heads, every layer a `block_sparse_moe` of 4 experts,
/// top 2 renormalised, experts' w1/w3 fused column-parallel and w2 row-parallel): the forward at every tp the
/// heads allow, the round trips, and its layout under Mixtral's HF names.
#[test]
fn mixtral_matches_golden_at_tp_1_2_4_8_and_round_trips() {
    let c = cfg("mixtral");
    let moe = c.moe.as_ref().unwrap();
    assert_eq!((moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size), (4, 2, 96));
    assert_eq!(moe.sparse_layers, vec![true, true]);
    assert!(moe.norm_topk_prob && c.sliding_window.is_none());
    forward_matches("mixtral", "mixtral", &[1, 2, 4, 8]);
    round_trips("mixtral", 2, 8);
    round_trips("mixtral", 4, 1);
    let m = layout(&c, 2, QkvLayout::Fused).unwrap();
    let gate = &m.parameters["model.layers.1.block_sparse_moe.gate.weight"];
    assert!(!gate.tensor_model_parallel);
    assert_eq!(gate.shape.as_deref(), Some(&[4, 64][..]));
    assert!(m.parameters["model.layers.0.block_sparse_moe.experts.3.gate_up_proj.weight"].tensor_model_parallel);
    assert!(m.parameters["model.layers.0.block_sparse_moe.experts.3.w2.weight"].tensor_model_parallel);
    assert!(!m.parameters.keys().any(|n| n.contains(".mlp.")), "no dense MLP");
    let modules: Vec<&str> =
        m.model_weight_transformation_specs.iter().map(|s| s.module_fully_qualified_name.as_str()).collect();
    assert!(modules.contains(&"model.layers.1.block_sparse_moe.experts.2"), "{modules:?}");
}

/// Mixtral applies its `sliding_window` whenever it is set (transformers' Mixtral picks the sliding-window mask
/// on `sliding_window` alone): within the window the forward is the golden's, beyond it the run is refused.
#[test]
fn mixtral_sliding_window_is_computed_within_it_and_refused_beyond() {
    let edited = |w: usize| {
        let tmp = tempfile::tempdir().unwrap();
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("mixtral").join("config.json")).unwrap()).unwrap();
        v["sliding_window"] = w.into();
        v["use_sliding_window"] = false.into(); // not read by transformers' Mixtral
        let p = tmp.path().join("config.json");
        std::fs::write(&p, v.to_string()).unwrap();
        ModelConfig::read(&p).unwrap()
    };
    let g = golden("mixtral");
    let c = edited(7);
    assert_eq!(c.sliding_window, Some(7));
    check_golden(
        &neuron_spec_models::run(
            &neuron_spec_models::Source::tensors(&hf("mixtral"), c.clone()).fuse_qkv(true),
            &neuron_spec_models::Transport::threads(2),
            &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
        )
        .unwrap(),
        &g,
        "mixtral window 7, 7 tokens",
    );
    let e = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&hf("mixtral"), edited(4).clone()).fuse_qkv(true),
        &neuron_spec_models::Transport::threads(2),
        &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
    )
    .unwrap_err()
    .to_string();
    assert_names(&e, &["sliding window", "7 tokens"]);
}

#[test]
fn families_round_trip_and_reshard() {
    round_trips("llama3-rope", 2, 4);
    round_trips("qwen3", 4, 8);
    round_trips("granite", 8, 2);
    round_trips("qwen3-moe", 2, 8);
}

/// Sharded at pp 2 (layer 0 in stage 0, layer 1 in stage 1), run stage by stage: Qwen3's head norms,
/// Granite's multipliers (embedding in stage 0, logits scaling in stage 1), Qwen3-MoE's sparse layers and
/// tied embeddings (the last stage's copy) all match the goldens.
#[test]
fn families_run_stage_by_stage_at_pp_2() {
    for dir in ["qwen3", "granite", "qwen3-moe", "llama3-rope"] {
        for tp in [1, 2] {
            let tmp = tempfile::tempdir().unwrap();
            let s = tmp.path().join("s");
            let opts = WriteOptions { pp: Some(2), ..Default::default() };
            shard(&fixture(dir), &s, &layout_of_dir(&fixture(dir), tp, QkvLayout::Fused).unwrap(), tp, &opts).unwrap();
            assert_eq!(ShardedCheckpoint::open(&s).unwrap().pp(), 2);
            check_golden(
                &neuron_spec_models::Source::open(&s)
                    .and_then(|s| {
                        neuron_spec_models::run(
                            &s,
                            &neuron_spec_models::Transport::threads_at_source_tp(),
                            &neuron_spec_models::Forward::new(golden(dir).input_ids.to_vec()),
                        )
                    })
                    .unwrap(),
                &golden(dir),
                &format!("{dir} tp {tp} pp 2"),
            );
        }
    }
}

#[test]
fn qwen3_layout_has_replicated_head_norms_and_moe_layout_has_router_and_experts() {
    let m = layout(&cfg("qwen3"), 4, QkvLayout::Fused).unwrap();
    let q = &m.parameters["model.layers.0.self_attn.q_norm.weight"];
    assert!(!q.tensor_model_parallel);
    assert_eq!(q.shape.as_deref(), Some(&[16][..]));
    let m = layout(&cfg("qwen3-moe"), 2, QkvLayout::Fused).unwrap();
    let gate = &m.parameters["model.layers.0.mlp.gate.weight"];
    assert!(!gate.tensor_model_parallel);
    assert_eq!(gate.shape.as_deref(), Some(&[4, 64][..]));
    assert!(m.parameters["model.layers.0.mlp.experts.3.gate_up_proj.weight"].tensor_model_parallel);
    assert!(m.parameters.contains_key("model.layers.1.mlp.gate_up_proj.weight"), "layer 1 is dense");
    assert!(!m.parameters.contains_key("model.layers.1.mlp.gate.weight"));
    let modules: Vec<&str> =
        m.model_weight_transformation_specs.iter().map(|s| s.module_fully_qualified_name.as_str()).collect();
    assert!(modules.contains(&"model.layers.0.mlp.experts.0"), "{modules:?}");
}

/// transformers' `inv_freq` and attention scaling for every rope_type (`tests/fixtures/rope/make.py`).
#[test]
fn rope_inv_freq_equals_transformers_for_every_rope_type() {
    let dir = fixture("rope");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let f = SafetensorsFile::open(&dir.join("inv_freq.safetensors")).unwrap();
    let mut n = 0;
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let c = &case["config"];
        let rope = RopeConfig {
            theta: c["rope_theta"].as_f64().unwrap(),
            dim: c["head_dim"].as_u64().unwrap() as usize,
            max_position_embeddings: c["max_position_embeddings"].as_f64(),
            original_max_position_embeddings: c.get("original_max_position_embeddings").and_then(|v| v.as_f64()),
            scaling: RopeScaling::parse(c.get("rope_scaling")).unwrap(),
        };
        rope.validate().unwrap();
        let seq = case["seq_len"].as_u64().unwrap() as usize;
        let (inv, scaling) = rope.inv_freq(seq);
        let expected = f.tensor(&format!("{name}.inv_freq")).unwrap().to_f32_vec();
        let expected_scaling = f.tensor(&format!("{name}.attention_scaling")).unwrap().to_f32_vec()[0];
        // Relative: inv_freq spans many orders of magnitude.
        let rel = inv.iter().zip(&expected).map(|(a, b)| ((a - b) / b).abs()).fold(0f32, f32::max);
        eprintln!("{name}: max relative |Δ inv_freq| {rel:.2e}, scaling {scaling} vs {expected_scaling}");
        assert_eq!(inv.len(), expected.len(), "{name}");
        assert!(rel <= 1e-6, "{name}: {rel}");
        assert!((scaling as f32 - expected_scaling).abs() <= 1e-6, "{name}: {scaling} vs {expected_scaling}");
        n += 1;
    }
    assert!(n >= 8, "{n} cases");
}

// ---------------------------------------------------------------------------------------------------------
// Refusals: never a silently wrong answer.

/// Writes `edit(config of dir)` to a temporary copy of `dir`'s config.json; returns the error of reading it.
fn config_error(dir: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("config.json")).unwrap()).unwrap();
    edit(&mut v);
    let p = tmp.path().join("config.json");
    std::fs::write(&p, v.to_string()).unwrap();
    ModelConfig::read(&p).unwrap_err().to_string()
}

fn assert_names(e: &str, words: &[&str]) {
    for w in words {
        assert!(e.contains(w), "{w:?} not in: {e}");
    }
}

#[test]
fn an_unknown_model_type_is_refused_naming_it() {
    assert_names(
        &config_error("llama-gqa", |c| c["model_type"] = "falcon".into()),
        &["model_type", "\"falcon\"", "not implemented"],
    );
    assert_names(
        &config_error("llama-gqa", |c| {
            c.as_object_mut().unwrap().remove("model_type");
        }),
        &["model_type", "missing"],
    );
}

#[test]
fn unimplemented_fields_are_refused_naming_them() {
    for (dir, field, value) in [
        ("llama-gqa", "partial_rotary_factor", serde_json::json!(0.5)),
        ("llama-gqa", "quantization_config", serde_json::json!({"quant_method": "gptq"})),
        // Keys transformers reads for these families and we do not implement (the generated read sets). Keys it
        // never reads for the model_type (qwen3's mlp_bias, a Granite multiplier on a Llama, qwen2_moe's
        // shared_expert_intermediate_size on qwen3_moe) are accepted and ignored instead: tests/it/configs.rs.
        ("qwen3", "torchscript", serde_json::json!(true)),
        ("qwen3-moe", "output_router_logits", serde_json::json!(true)),
        ("mixtral", "output_router_logits", serde_json::json!(true)),
        // Mixtral's training-time noise on the router's input
        ("mixtral", "router_jitter_noise", serde_json::json!(0.1)),
        ("llama-gqa", "attention_chunk_size", serde_json::json!(16)),
        ("granite", "pruned_heads", serde_json::json!({"0": [1]})),
    ] {
        assert_names(&config_error(dir, |c| c[field] = value), &[field, "config.json"]);
    }
    assert_names(&config_error("llama-gqa", |c| c["hidden_act"] = "gelu".into()), &["hidden_act", "gelu"]);
    assert_names(
        &config_error("qwen3", |c| c["layer_types"] = serde_json::json!(["full_attention", "chunked_attention"])),
        &["layer_types", "chunked_attention"],
    );
}

#[test]
fn unknown_rope_types_and_missing_rope_keys_are_refused() {
    let e = config_error("llama-gqa", |c| c["rope_scaling"] = serde_json::json!({"rope_type": "su", "factor": 2.0}));
    assert_names(&e, &["rope_scaling.rope_type", "\"su\"", "not implemented"]);
    let e = config_error("llama3-rope", |c| {
        c["rope_scaling"].as_object_mut().unwrap().remove("low_freq_factor");
    });
    assert_names(&e, &["rope_scaling.low_freq_factor", "required"]);
    let e = config_error("llama3-rope", |c| c["rope_scaling"]["beta_fast"] = 32.0.into());
    assert_names(&e, &["rope_scaling.beta_fast", "llama3"]);
}

#[test]
fn shard_and_plan_refuse_what_is_not_implemented_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(fixture("llama-gqa/model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama-gqa/config.json")).unwrap()).unwrap();
    v["model_type"] = "gpt_neox".into();
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    let e = layout_of_dir(&dir, 2, QkvLayout::Fused).unwrap_err().to_string();
    assert_names(&e, &["model_type", "gpt_neox"]);
    let out = tmp.path().join("out");
    for args in [
        vec!["shard", dir.to_str().unwrap(), out.to_str().unwrap(), "--tp", "2"],
        vec!["plan", dir.to_str().unwrap(), "--tp", "2"],
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_neuron-spec")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_names(&err, &["model_type", "gpt_neox"]);
        assert!(!out.exists());
    }
}

#[test]
fn the_cli_runs_each_family_from_its_config() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in ["qwen3", "granite", "qwen3-moe", "llama3-rope"] {
        let out = tmp.path().join(dir);
        let bin = env!("CARGO_BIN_EXE_neuron-spec");
        let f = fixture(dir);
        let o = std::process::Command::new(bin)
            .args(["shard", f.to_str().unwrap(), out.to_str().unwrap(), "--tp", "2", "--fuse-qkv", "-q"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{dir}: {}", String::from_utf8_lossy(&o.stderr));
        let golden = f.join("golden.safetensors");
        let o = std::process::Command::new(bin)
            .args(["forward", out.to_str().unwrap(), "--golden", golden.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{dir}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn a_longer_sequence_than_an_active_sliding_window_is_refused() {
    let mut c = cfg("qwen3");
    c.sliding_window = Some(4);
    let g = golden("qwen3");
    let e = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&hf("qwen3"), c.clone()).fuse_qkv(true),
        &neuron_spec_models::Transport::threads(1),
        &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
    )
    .unwrap_err()
    .to_string();
    assert_names(&e, &["sliding window", "7 tokens"]);
}

#[test]
fn a_layout_allocates_no_weights() {
    // A 70B-shaped Llama at tp 32: only shapes are built (lazy parameters), so this is quick and small.
    let v = serde_json::json!({"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
        "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80, "vocab_size": 128256});
    let c = ModelConfig::from(serde_json::from_value::<neuron_spec_models::LlamaConfig>(v).unwrap());
    let m = layout(&c, 32, QkvLayout::Fused).unwrap();
    assert_eq!(m.model_weight_transformation_specs.len(), 160);
}

// ---------------------------------------------------------------------------------------------------------
// burn's own modules as replicated leaves.

#[derive(Module, DeriveCustomModule, Debug)]
struct Leaves {
    proj: burn::nn::Linear,
    norm: burn::nn::LayerNorm,
    wte: burn::nn::Embedding,
}

#[test]
fn burn_linear_layer_norm_and_embedding_are_replicated_leaves_with_hf_names() {
    let d = Device::default();
    let m = Leaves {
        proj: LinearConfig::new(3, 2).with_bias(true).init(&d),
        norm: LayerNormConfig::new(2).init(&d),
        wte: EmbeddingConfig::new(4, 2).init(&d),
    };
    let meta = m.create_parameter_metadata().unwrap();
    let names: Vec<&str> = meta.parameters.keys().map(String::as_str).collect();
    assert_eq!(names, ["norm.bias", "norm.weight", "proj.bias", "proj.weight", "wte.weight"]);
    assert!(meta.parameters.values().all(|p| !p.tensor_model_parallel));
    assert_eq!(meta.parameters["proj.weight"].shape.as_deref(), Some(&[2, 3][..]), "HF [out, in]");
    // HF tensors in, the same tensors out (the Linear weight transposed both ways).
    let mut src = StateDict::new();
    let t = |shape: Vec<usize>, v: &[f32]| HostTensor::from_f32(shape, v).unwrap();
    src.insert("proj.weight".into(), t(vec![2, 3], &[1., 2., 3., 4., 5., 6.]));
    src.insert("proj.bias".into(), t(vec![2], &[0.5, -0.5]));
    src.insert("norm.weight".into(), t(vec![2], &[2., 3.]));
    src.insert("norm.bias".into(), t(vec![2], &[0.1, 0.2]));
    src.insert("wte.weight".into(), t(vec![4, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]));
    let m = m.load_rank_tensors("", &src, &d).unwrap();
    // burn's [in, out] weight: x = [1, 0, 0] gives column 0 of HF's [out, in], i.e. [1, 4] (+ bias).
    let x = burn::tensor::Tensor::<2>::from_data(burn::tensor::TensorData::new(vec![1f32, 0., 0.], [1, 3]), &d);
    let y = m.proj.forward(x).into_data().try_into_vec::<f32>().unwrap();
    assert_eq!(y, vec![1.5, 3.5]);
    let mut out = StateDict::new();
    m.save_rank_tensors("", &mut out).unwrap();
    assert_same_tensors(&out, &src, "leaves");
}

#[test]
fn burn_store_loads_the_moe_model_through_its_enums_and_router() {
    use burn_store::ModuleSnapshot;
    use neuron_spec::layers::HfRankStore;
    use neuron_spec::spec::contract::TpContext;
    let (c, src, d) = (cfg("qwen3-moe"), hf("qwen3-moe"), Device::default());
    let ctx = TpContext::new(2, 1).unwrap();
    let mut model = neuron_spec_models::LlamaForCausalLM::from_config(&c, ctx, QkvLayout::Fused, &d).unwrap();
    let mut store = HfRankStore::for_model(&model, &src).unwrap();
    let result = model.load_from(&mut store).unwrap();
    assert!(result.errors.is_empty() && result.missing.is_empty(), "{result}");
    let mut via_store = StateDict::new();
    model.save_rank_tensors("", &mut via_store).unwrap();
    let direct = neuron_spec_models::Source::tensors(&src, c.clone()).fuse_qkv(true).load(ctx, &d).unwrap();
    let mut expected = StateDict::new();
    direct.save_rank_tensors("", &mut expected).unwrap();
    assert!(expected.contains_key("model.layers.0.mlp.gate.weight"));
    assert_same_tensors(&via_store, &expected, "qwen3-moe through burn-store");
}

// ---------------------------------------------------------------------------------------------------------
// A new family with a PEFT LoRA adapter, end to end (tests/fixtures/qwen3-lora/make.py).

fn qwen3_lora(tp: usize, fuse: bool) -> neuron_spec::lora::ImportedAdapter {
    use neuron_spec::lora::{import_adapter, LoraImportOptions, LoraMode, PeftAdapter};
    let meta = layout(&cfg("qwen3"), tp, QkvLayout::gqa(fuse)).unwrap();
    let o = LoraImportOptions { mode: LoraMode::Exact, allow_partial: false };
    import_adapter(&meta, &PeftAdapter::open(&fixture("qwen3-lora")).unwrap(), "default", o).unwrap()
}

#[test]
fn qwen3_with_a_lora_adapter_matches_peft_at_tp_1_2_4_8() {
    let f = SafetensorsFile::open(&fixture("qwen3-lora/golden_lora.safetensors")).unwrap();
    let g = Golden {
        input_ids: f.tensor("input_ids").unwrap().to_i64_vec().unwrap().chunks(7).map(<[i64]>::to_vec).collect(),
        logits: f.tensor("logits").unwrap().to_f32_vec(),
        hidden_0: f.tensor("hidden_0").unwrap().to_f32_vec(),
        hidden_1: f.tensor("hidden_1").unwrap().to_f32_vec(),
    };
    // The adapter moves the logits far from the base model's: a dropped adapter cannot pass.
    assert!(max_abs_diff(&golden("qwen3").logits, &g.logits) > 0.1);
    for tp in [1, 2, 4, 8] {
        for fuse in [true, false] {
            let a = qwen3_lora(tp, fuse);
            let out = neuron_spec_models::run(
                &neuron_spec_models::Source::tensors(&hf("qwen3"), cfg("qwen3").clone())
                    .fuse_qkv(fuse)
                    .with_imported(&[a]),
                &neuron_spec_models::Transport::threads(tp),
                &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
            )
            .unwrap();
            check_golden(&out, &g, &format!("qwen3-lora tp {tp} fuse_qkv {fuse}"));
        }
    }
}

#[test]
fn qwen3_lora_shard_consolidate_gives_the_adapter_back_byte_for_byte() {
    use neuron_spec::{consolidate_with_adapters, shard_with_adapters, AdapterOptions};
    let tmp = tempfile::tempdir().unwrap();
    let (s, out) = (tmp.path().join("sharded"), tmp.path().join("out"));
    let meta = layout(&cfg("qwen3"), 4, QkvLayout::Fused).unwrap();
    shard_with_adapters(&fixture("qwen3"), &s, &meta, 4, &[qwen3_lora(4, true)], &WriteOptions::default()).unwrap();
    consolidate_with_adapters(&s, &out, &WriteOptions::default(), &AdapterOptions::default()).unwrap();
    // The default adapter sits beside the base weights or in its own folder, depending on the export layout.
    let dir = if out.join("adapter_model.safetensors").exists() { out.clone() } else { out.join("default") };
    let same = |a: &std::path::Path, b: &std::path::Path| {
        assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "{} differs", a.display())
    };
    same(&dir.join("adapter_model.safetensors"), &fixture("qwen3-lora/adapter_model.safetensors"));
    assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf("qwen3"), "qwen3 base weights");
}

// ---------------------------------------------------------------------------------------------------------
// Gemma 3 text (`gemma3`: the shared fixture; `gemma3-softcap`, `gemma3-attn-softcap`, `gemma3-window`: ours,
// tests/fixtures/make/make_gemma3.py). 4 query heads / 2 kv heads: tp 1, 2 and 4.

#[test]
fn gemma3_matches_golden_at_tp_1_2_4() {
    let c = cfg("gemma3");
    assert_eq!(c.layer_windows, [Some(4), None]);
    assert!(c.llama.tie_word_embeddings && c.sliding_window.is_none());
    forward_matches("gemma3", "gemma3_text", &[1, 2, 4]);
}

/// `final_logit_softcapping` 1.5 (the raw logits reach 4.1: the cap binds).
#[test]
fn gemma3_final_logit_softcapping_matches_golden_at_tp_1_2_4() {
    assert_eq!(cfg("gemma3-softcap").final_logit_softcapping, Some(1.5));
    forward_matches("gemma3-softcap", "gemma3_text", &[1, 2, 4]);
}

/// `attn_logit_softcapping` 0.5: transformers 4.57.1's Gemma 3 stores it and never applies it (its golden
/// equals the uncapped logits; capping as Gemma 2 does would move them by 1.1), so it is accepted as ignored.
#[test]
fn gemma3_attn_logit_softcapping_is_ignored_as_transformers_ignores_it() {
    let ignored = neuron_spec_models::ignored_keys(&fixture("gemma3-attn-softcap")).unwrap();
    assert!(ignored.contains(&"attn_logit_softcapping".to_string()), "{ignored:?}");
    forward_matches("gemma3-attn-softcap", "gemma3_text", &[1, 2, 4]);
}

/// A second pattern: layer_types [full, sliding, sliding], a window of 3 (the golden's 7 tokens are longer: the
/// window binds), local RoPE base 100 on the sliding layers, linear rope_scaling on the full one, and
/// query_pre_attn_scalar 24.
#[test]
fn gemma3_window_pattern_matches_golden_at_tp_1_2_4() {
    let c = cfg("gemma3-window");
    assert_eq!(c.layer_windows, [None, Some(3), Some(3)]);
    assert!(matches!(c.rope.scaling, RopeScaling::Linear { .. }));
    assert!(golden("gemma3-window").input_ids[0].len() > 3);
    forward_matches("gemma3-window", "gemma3_text", &[1, 2, 4]);
}

#[test]
fn gemma3_round_trips_reshards_and_runs_in_two_stages() {
    round_trips("gemma3", 2, 4);
    round_trips("gemma3-window", 4, 1);
    for dir in ["gemma3", "gemma3-window", "gemma3-softcap"] {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path().join("s");
        let opts = WriteOptions { pp: Some(2), ..Default::default() };
        shard(&fixture(dir), &s, &layout_of_dir(&fixture(dir), 2, QkvLayout::Separate).unwrap(), 2, &opts).unwrap();
        check_golden(
            &neuron_spec_models::Source::open(&s)
                .and_then(|s| {
                    neuron_spec_models::run(
                        &s,
                        &neuron_spec_models::Transport::threads_at_source_tp(),
                        &neuron_spec_models::Forward::new(golden(dir).input_ids.to_vec()),
                    )
                })
                .unwrap(),
            &golden(dir),
            &format!("{dir} tp 2 pp 2"),
        );
    }
}

/// Without `layer_types` (older Gemma 3 configs), transformers derives them from `sliding_window_pattern`
/// (default 6): every layer slides but each pattern-th.
#[test]
fn gemma3_layer_types_default_to_the_sliding_window_pattern() {
    let read = |edit: &dyn Fn(&mut serde_json::Value)| {
        let tmp = tempfile::tempdir().unwrap();
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("gemma3-window/config.json")).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("layer_types");
        edit(&mut v);
        std::fs::write(tmp.path().join("config.json"), v.to_string()).unwrap();
        ModelConfig::read_dir(tmp.path()).unwrap()
    };
    assert_eq!(read(&|_| {}).layer_windows, [Some(3); 3]);
    assert_eq!(read(&|v| v["sliding_window_pattern"] = 2.into()).layer_windows, [Some(3), None, Some(3)]);
}

#[test]
fn gemma3_refuses_what_it_does_not_implement_by_name() {
    assert_names(
        &config_error("gemma3", |c| c["use_bidirectional_attention"] = true.into()),
        &["use_bidirectional_attention", "config.json"],
    );
    assert_names(
        &config_error("gemma3", |c| c["hidden_activation"] = "gelu".into()),
        &["hidden_activation", "gelu_pytorch_tanh", "\"gelu\""],
    );
    assert_names(
        &config_error("gemma3", |c| c["layer_types"] = serde_json::json!(["sliding_attention"])),
        &["layer_types", "num_hidden_layers"],
    );
    assert_names(&config_error("gemma3", |c| c["final_logit_softcapping"] = 0.into()), &["final_logit_softcapping"]);
    // The vision-language checkpoint (its config nests the text config under text_config).
    assert_names(
        &config_error("gemma3", |c| {
            c["model_type"] = "gemma3".into();
            c["architectures"] = serde_json::json!(["Gemma3ForConditionalGeneration"]);
        }),
        &["model_type", "Gemma3ForConditionalGeneration", "gemma3_text"],
    );
}

fn gemma3_lora(tp: usize, fuse: bool) -> neuron_spec::lora::ImportedAdapter {
    use neuron_spec::lora::{import_adapter, LoraImportOptions, LoraMode, PeftAdapter};
    let meta = layout(&cfg("gemma3"), tp, QkvLayout::gqa(fuse)).unwrap();
    let o = LoraImportOptions { mode: LoraMode::Exact, allow_partial: false };
    import_adapter(&meta, &PeftAdapter::open(&fixture("gemma3-lora")).unwrap(), "default", o).unwrap()
}

/// peft's adapter on all seven linears of Gemma 3 (`tests/fixtures/make/make_gemma3_lora.py`).
#[test]
fn gemma3_with_a_lora_adapter_matches_peft_at_tp_1_2_4() {
    let f = SafetensorsFile::open(&fixture("gemma3-lora/golden_lora.safetensors")).unwrap();
    let g = Golden {
        input_ids: f.tensor("input_ids").unwrap().to_i64_vec().unwrap().chunks(7).map(<[i64]>::to_vec).collect(),
        logits: f.tensor("logits").unwrap().to_f32_vec(),
        hidden_0: f.tensor("hidden_0").unwrap().to_f32_vec(),
        hidden_1: f.tensor("hidden_1").unwrap().to_f32_vec(),
    };
    assert!(max_abs_diff(&golden("gemma3").logits, &g.logits) > 0.1, "the adapter moves the logits");
    for tp in [1, 2, 4] {
        for fuse in [true, false] {
            let a = gemma3_lora(tp, fuse);
            let out = neuron_spec_models::run(
                &neuron_spec_models::Source::tensors(&hf("gemma3"), cfg("gemma3").clone())
                    .fuse_qkv(fuse)
                    .with_imported(&[a]),
                &neuron_spec_models::Transport::threads(tp),
                &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
            )
            .unwrap();
            check_golden(&out, &g, &format!("gemma3-lora tp {tp} fuse_qkv {fuse}"));
        }
    }
}

/// peft's adapters on all seven linears of Mistral, Qwen2 and Granite (`tests/fixtures/make/make_family_lora.py`):
/// the adapted logits and hidden states equal peft's at tp 2, fused and separate q/k/v.
#[test]
fn family_lora_adapters_match_peft_at_tp_2() {
    use neuron_spec::lora::{import_adapter, LoraImportOptions, LoraMode, PeftAdapter};
    for model in ["mistral", "qwen2", "granite"] {
        let dir = format!("{model}-lora");
        let f = SafetensorsFile::open(&fixture(&format!("{dir}/golden_lora.safetensors"))).unwrap();
        let g = Golden {
            input_ids: f.tensor("input_ids").unwrap().to_i64_vec().unwrap().chunks(7).map(<[i64]>::to_vec).collect(),
            logits: f.tensor("logits").unwrap().to_f32_vec(),
            hidden_0: f.tensor("hidden_0").unwrap().to_f32_vec(),
            hidden_1: f.tensor("hidden_1").unwrap().to_f32_vec(),
        };
        let plain = neuron_spec_models::run(
            &neuron_spec_models::Source::tensors(&hf(model), cfg(model)),
            &neuron_spec_models::Transport::threads(1),
            &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
        )
        .unwrap();
        assert!(max_abs_diff(&plain.logits, &g.logits) > 0.05, "{dir}: the adapter moves the logits");
        for fuse in [true, false] {
            let meta = layout(&cfg(model), 2, QkvLayout::gqa(fuse)).unwrap();
            let o = LoraImportOptions { mode: LoraMode::Exact, allow_partial: false };
            let a = import_adapter(&meta, &PeftAdapter::open(&fixture(&dir)).unwrap(), "default", o).unwrap();
            let out = neuron_spec_models::run(
                &neuron_spec_models::Source::tensors(&hf(model), cfg(model)).fuse_qkv(fuse).with_imported(&[a]),
                &neuron_spec_models::Transport::threads(2),
                &neuron_spec_models::Forward::new(g.input_ids.to_vec()),
            )
            .unwrap();
            check_golden(&out, &g, &format!("{dir} tp 2 fuse_qkv {fuse}"));
        }
    }
}

/// The README's capability table ("What runs where") has one row per family of the family table, and no other:
/// a family added without its row (or a row left for a family that is gone) fails here.
#[test]
fn the_readme_capability_table_has_a_row_per_family() {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme.split("## What runs where").nth(1).expect("README has a \"What runs where\" section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut rows: Vec<&str> =
        section.lines().filter_map(|l| l.strip_prefix("| `")).filter_map(|l| l.split('`').next()).collect();
    let header = section.lines().find(|l| l.starts_with("| model_type")).expect("the table's header");
    for column in ["forward", "train", "LoRA train", "resume after reshard", "`--pp`", "MPI", "`.pt` source"] {
        assert!(header.contains(column), "the table has no {column} column: {header}");
    }
    rows.sort_unstable();
    let mut families: Vec<&str> = neuron_spec_models::MODEL_TYPES.to_vec();
    families.sort_unstable();
    assert_eq!(rows, families, "README rows vs FAMILIES");
    // Every cell says ✓ or why not.
    for l in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), header.trim_matches('|').split('|').count(), "{l}");
        assert!(cells[1..].iter().all(|c| !c.is_empty()), "an empty cell: {l}");
    }
}
