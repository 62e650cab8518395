//! PEFT LoRA adapters against the fixtures: exact import matches peft's logits at every tp, shard → consolidate
//! gives the adapter back byte for byte, merge, partial groups, several adapters with hyphenated names, row-fused
//! groups, LoRA on MoE experts (peft's logits) and on a MoE router (refused by name). Mean mode against the
//! reference's own output is `neuron-spec-models/tests/it/lora_reference.rs`.

use crate::common;
use common::*;
use neuron_spec::checkpoint::adapters::{imported_rank_adapter, sharded_adapters};
use neuron_spec::checkpoint::WriteOptions;
use neuron_spec::format::{HfCheckpoint, SafetensorsFile};
use neuron_spec::lora::{
    adapt_peft_config_for_model, export_adapter, import_adapter, to_original_peft_config_for_model, LoraConfig,
    LoraImportOptions, LoraMode, LoraRankSource, PeftAdapter, TargetModules,
};
use neuron_spec::spec::contract::{CustomModule, TpContext};
use neuron_spec::spec::metadata::ParameterMetadata;
use neuron_spec::spec::{FuseAxis, FusedLinearsSpec};
use neuron_spec::{consolidate_with_adapters, shard_with_adapters, AdapterOptions, Error};
use neuron_spec::{CheckpointMetadata, HostTensor, ModelWeightTransformationSpecs, Spec, StateDict, TensorSource};
use neuron_spec_models::{LlamaForCausalLM, ModelConfig};

const TOL: f32 = 1e-4;

fn cfg() -> ModelConfig {
    ModelConfig::read(&fixture("llama-gqa").join("config.json")).unwrap()
}

fn golden(dir: &str) -> (Vec<Vec<i64>>, Vec<f32>) {
    let f = SafetensorsFile::open(&fixture(dir).join("golden_lora.safetensors")).unwrap();
    let ids = f.tensor("input_ids").unwrap();
    let s = ids.shape()[1];
    let ids = ids.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect();
    (ids, f.tensor("logits").unwrap().to_f32_vec())
}

/// NaN- and Inf-aware: any non-finite value on either side fails the test.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    neuron_spec::compare::max_abs_diff(a, b).unwrap_or_else(|m| panic!("{m}"))
}

fn opts(mode: LoraMode, allow_partial: bool) -> LoraImportOptions {
    LoraImportOptions { mode, allow_partial }
}

fn import(dir: &str, tp: usize, fuse: bool, o: LoraImportOptions) -> neuron_spec::lora::ImportedAdapter {
    let meta = neuron_spec_models::layout(&cfg(), tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
    import_adapter(&meta, &PeftAdapter::open(&fixture(dir)).unwrap(), "default", o).unwrap()
}

/// Logits of the TP model with `dir`'s adapter imported with `o`; returns the max abs diff to its golden.
fn lora_diff(dir: &str, tp: usize, fuse: bool, o: LoraImportOptions) -> f32 {
    let (ids, g) = golden(dir);
    let a = import(dir, tp, fuse, o);
    let out = neuron_spec_models::run(
        &neuron_spec_models::Source::tensors(&hf("llama-gqa"), cfg().clone()).fuse_qkv(fuse).with_imported(&[a]),
        &neuron_spec_models::Transport::threads(tp),
        &neuron_spec_models::Forward::new(ids.to_vec()),
    )
    .unwrap();
    max_abs_diff(&out.logits, &g)
}

/// LoRA on every expert of `qwen3-moe-e8` (each expert's gate/up a fused group, down_proj row-parallel) equals
/// peft's logits; LoRA on the routers (`mlp.gate`, a replicated burn `Linear` without a LoRA branch) is
/// refused by name instead of being dropped (peft's logits differ by 0.62 with it).
#[test]
fn moe_expert_lora_matches_peft_and_router_lora_is_refused_by_name() {
    let c = ModelConfig::read(&fixture("qwen3-moe-e8").join("config.json")).unwrap();
    let src = hf("qwen3-moe-e8");
    for tp in [1, 2, 4] {
        let meta = neuron_spec_models::layout(&c, tp, neuron_spec_models::QkvLayout::gqa(true)).unwrap();
        let (ids, g) = golden("qwen3-moe-e8-lora-experts");
        let peft = PeftAdapter::open(&fixture("qwen3-moe-e8-lora-experts")).unwrap();
        let a = import_adapter(&meta, &peft, "default", opts(LoraMode::Exact, false)).unwrap();
        let out = neuron_spec_models::run(
            &neuron_spec_models::Source::tensors(&src, c.clone()).fuse_qkv(true).with_imported(&[a]),
            &neuron_spec_models::Transport::threads(tp),
            &neuron_spec_models::Forward::new(ids.to_vec()),
        )
        .unwrap();
        let d = max_abs_diff(&out.logits, &g);
        assert!(d <= TOL, "experts lora tp {tp}: {d}");
        let (ids, _) = golden("qwen3-moe-e8-lora-router");
        let peft = PeftAdapter::open(&fixture("qwen3-moe-e8-lora-router")).unwrap();
        let a = import_adapter(&meta, &peft, "default", opts(LoraMode::Exact, false)).unwrap();
        match neuron_spec_models::run(
            &neuron_spec_models::Source::tensors(&src, c.clone()).fuse_qkv(true).with_imported(&[a]),
            &neuron_spec_models::Transport::threads(tp),
            &neuron_spec_models::Forward::new(ids.to_vec()),
        ) {
            Err(neuron_spec::Error::Lora { adapter, reason }) => {
                assert_eq!(adapter, "default");
                assert!(reason.contains("model.layers.0.mlp.gate") && reason.contains("not implemented"), "{reason}");
            }
            other => panic!("router lora at tp {tp}: {:?}", other.map(|o| o.logits.len())),
        }
    }
}

/// Mixtral with peft's adapter on q/k/v/o and every expert's w1/w2/w3 (`mixtral-lora`,
/// `make/make_mixtral_lora.py`: w1/w3 a fused column-parallel group, w2 row-parallel, inside each
/// `block_sparse_moe` expert) equals peft's logits at every tp the heads allow, fused and separate qkv.
#[test]
fn mixtral_lora_on_attention_and_experts_matches_peft_at_tp_1_2_4_8() {
    let c = ModelConfig::read(&fixture("mixtral").join("config.json")).unwrap();
    let (src, (ids, g)) = (hf("mixtral"), golden("mixtral-lora"));
    let peft = PeftAdapter::open(&fixture("mixtral-lora")).unwrap();
    for tp in [1, 2, 4, 8] {
        for fuse in [true, false] {
            let meta = neuron_spec_models::layout(&c, tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
            let a = import_adapter(&meta, &peft, "default", opts(LoraMode::Exact, false)).unwrap();
            let out = neuron_spec_models::run(
                &neuron_spec_models::Source::tensors(&src, c.clone()).fuse_qkv(fuse).with_imported(&[a]),
                &neuron_spec_models::Transport::threads(tp),
                &neuron_spec_models::Forward::new(ids.to_vec()),
            )
            .unwrap();
            let d = max_abs_diff(&out.logits, &g);
            eprintln!("mixtral-lora tp {tp} fuse_qkv {fuse}: max |Δ logits| {d:.2e}");
            assert!(d <= TOL, "mixtral lora tp {tp} fuse {fuse}: {d}");
        }
    }
}

#[test]
fn exact_lora_matches_golden_at_tp_1_2_4_8_fused_and_separate_qkv() {
    for tp in [1, 2, 4, 8] {
        for fuse in [true, false] {
            let d = lora_diff("llama-gqa-lora", tp, fuse, opts(LoraMode::Exact, false));
            eprintln!("llama-gqa-lora exact tp {tp} fuse_qkv {fuse}: max |Δ logits| {d:.2e}");
            assert!(d <= TOL, "tp {tp} fuse {fuse}: {d}");
        }
    }
}

/// Shards `llama-gqa` with the given adapters at `tp`, then consolidates with `adapters`.
fn shard_and_consolidate(
    tp: usize,
    fuse: bool,
    list: &[(&str, &str, LoraImportOptions)],
    adapters: AdapterOptions,
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let meta = neuron_spec_models::layout(&cfg(), tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
    let imported: Vec<_> = list
        .iter()
        .map(|(dir, name, o)| import_adapter(&meta, &PeftAdapter::open(&fixture(dir)).unwrap(), name, *o).unwrap())
        .collect();
    let s = tmp.path().join("sharded");
    shard_with_adapters(&fixture("llama-gqa"), &s, &meta, tp, &imported, &WriteOptions::default()).unwrap();
    consolidate_with_adapters(&s, &tmp.path().join("out"), &WriteOptions::default(), &adapters).unwrap();
    tmp
}

fn same_bytes(a: &std::path::Path, b: &std::path::Path) {
    assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "{} differs from {}", a.display(), b.display());
}

/// The exported `adapter_config.json` in `out/<name>/` equals the fixture's byte for byte, except that
/// `base_model_name_or_path` is `out`'s absolute path (so that the adapter finds its base offline).
fn same_config_but_base(out: &std::path::Path, name: &str, fixture_dir: &str) {
    let got = std::fs::read_to_string(out.join(name).join("adapter_config.json")).unwrap();
    let want = std::fs::read_to_string(fixture(fixture_dir).join("adapter_config.json")).unwrap();
    let base = std::path::absolute(out).unwrap();
    let field = |v: &str| format!("\"base_model_name_or_path\": {}", serde_json::to_string(v).unwrap());
    let orig: serde_json::Value = serde_json::from_str(&want).unwrap();
    let orig_base = orig["base_model_name_or_path"].as_str().unwrap();
    assert!(got.contains(&field(base.to_str().unwrap())), "{got}");
    assert_eq!(got.replace(&field(base.to_str().unwrap()), &field(orig_base)), want);
}

#[test]
fn exact_import_shard_consolidate_gives_the_adapter_back_byte_for_byte() {
    for (tp, fuse) in [(2, true), (4, false), (8, true)] {
        let e = opts(LoraMode::Exact, false);
        let tmp = shard_and_consolidate(tp, fuse, &[("llama-gqa-lora", "default", e)], AdapterOptions::default());
        let out = tmp.path().join("out");
        // The base model at the top of OUT, every adapter in OUT/<name>/ (default included).
        assert!(!out.join("adapter_config.json").exists() && !out.join("adapter_model.safetensors").exists());
        same_bytes(
            &out.join("default/adapter_model.safetensors"),
            &fixture("llama-gqa-lora/adapter_model.safetensors"),
        );
        // The config keeps its meaning and its bytes, pointing at OUT as its base model.
        let mut back = LoraConfig::read(&out.join("default")).unwrap();
        let orig = LoraConfig::read(&fixture("llama-gqa-lora")).unwrap();
        back.base_model_name_or_path = orig.base_model_name_or_path.clone();
        assert_eq!(back, orig);
        same_config_but_base(&out, "default", "llama-gqa-lora");
        assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf("llama-gqa"), "base weights");
    }
}

#[test]
fn merge_on_export_matches_the_golden_lora_logits_as_a_plain_model() {
    let e = opts(LoraMode::Exact, false);
    let merge = AdapterOptions { only: None, merge: Some("default".into()) };
    let tmp = shard_and_consolidate(4, true, &[("llama-gqa-lora", "default", e)], merge);
    let out = tmp.path().join("out");
    assert!(
        !out.join("adapter_config.json").exists() && !out.join("default").exists(),
        "a merged adapter is not written"
    );
    let (ids, g) = golden("llama-gqa-lora");
    for tp in [1, 2] {
        let o = neuron_spec_models::run(
            &neuron_spec_models::Source::tensors(&HfCheckpoint::open(&out).unwrap(), cfg().clone()).fuse_qkv(true),
            &neuron_spec_models::Transport::threads(tp),
            &neuron_spec_models::Forward::new(ids.to_vec()),
        )
        .unwrap();
        let d = max_abs_diff(&o.logits, &g);
        eprintln!("merged adapter, plain model tp {tp}: max |Δ logits| {d:.2e}");
        assert!(d <= TOL, "{d}");
    }
}

#[test]
fn qv_adapter_all_or_none_names_k_proj_and_partial_mode_matches_its_golden() {
    let meta = neuron_spec_models::layout(&cfg(), 4, neuron_spec_models::QkvLayout::gqa(true)).unwrap();
    let peft = PeftAdapter::open(&fixture("llama-gqa-lora-qv")).unwrap();
    for mode in [LoraMode::Exact, LoraMode::Mean] {
        let e = import_adapter(&meta, &peft, "default", opts(mode, false)).unwrap_err();
        assert!(
            matches!(&e, Error::PartialLoraGroup { module, missing, .. }
                if module.contains("self_attn") && missing.first().is_some_and(|m| m == "k_proj")),
            "{e:?}"
        );
    }
    for (tp, fuse) in [(1, true), (2, false), (4, true), (8, false)] {
        let d = lora_diff("llama-gqa-lora-qv", tp, fuse, opts(LoraMode::Exact, true));
        eprintln!("llama-gqa-lora-qv partial exact tp {tp} fuse_qkv {fuse}: max |Δ logits| {d:.2e}");
        assert!(d <= TOL, "tp {tp}: {d}");
    }
    // The absent k_proj stays out of the exported adapter.
    let p = opts(LoraMode::Exact, true);
    let tmp = shard_and_consolidate(4, false, &[("llama-gqa-lora-qv", "default", p)], AdapterOptions::default());
    same_bytes(
        &tmp.path().join("out/default/adapter_model.safetensors"),
        &fixture("llama-gqa-lora-qv/adapter_model.safetensors"),
    );
    same_config_but_base(&tmp.path().join("out"), "default", "llama-gqa-lora-qv");
}

#[test]
fn several_adapters_side_by_side_with_hyphenated_names() {
    let e = opts(LoraMode::Exact, false);
    let p = opts(LoraMode::Exact, true);
    let list = [("llama-gqa-lora", "default", e), ("llama-gqa-lora-qv", "qv-adapter-2", p)];
    // Written beside each other; `--adapter` picks one.
    let tmp = shard_and_consolidate(2, true, &list, AdapterOptions::default());
    let s = tmp.path().join("sharded");
    let names: Vec<String> = sharded_adapters(&s).unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["default", "qv-adapter-2"]);
    same_bytes(
        &tmp.path().join("out/qv-adapter-2/adapter_model.safetensors"),
        &fixture("llama-gqa-lora-qv/adapter_model.safetensors"),
    );
    same_bytes(
        &tmp.path().join("out/default/adapter_model.safetensors"),
        &fixture("llama-gqa-lora/adapter_model.safetensors"),
    );
    // Resharding carries the adapters along: 2 → 4 → consolidate gives them back byte for byte.
    let r4 = tmp.path().join("tp4");
    neuron_spec::ops::reshard::reshard(&s, &r4, 4, &WriteOptions::default()).unwrap();
    let back = tmp.path().join("back");
    consolidate_with_adapters(&r4, &back, &WriteOptions::default(), &AdapterOptions::default()).unwrap();
    same_bytes(
        &back.join("qv-adapter-2/adapter_model.safetensors"),
        &fixture("llama-gqa-lora-qv/adapter_model.safetensors"),
    );
    same_bytes(&back.join("default/adapter_model.safetensors"), &fixture("llama-gqa-lora/adapter_model.safetensors"));
    let only = tempfile::tempdir().unwrap();
    let o = only.path().join("o");
    let sel = AdapterOptions { only: Some(vec!["qv-adapter-2".into()]), merge: None };
    consolidate_with_adapters(&s, &o, &WriteOptions::default(), &sel).unwrap();
    assert!(o.join("qv-adapter-2/adapter_model.safetensors").exists() && !o.join("default").exists());
    // In the model, both adapters' factors carry their names, and save back to the same rank tensors.
    let meta = neuron_spec_models::layout(&cfg(), 2, neuron_spec_models::QkvLayout::gqa(true)).unwrap();
    let ck = neuron_spec::checkpoint::ShardedCheckpoint::open(&s).unwrap();
    let adapters = sharded_adapters(&s).unwrap();
    let ras: Vec<_> = adapters.iter().map(|a| a.rank_adapter(1).unwrap()).collect();
    let src = LoraRankSource::new(&ck.ranks[1], ras.clone()).unwrap();
    let d = burn::tensor::Device::default();
    let model = LlamaForCausalLM::new(&cfg().llama, TpContext::new(2, 1).unwrap(), true, None, &d)
        .unwrap()
        .load_rank_tensors("", &src, &d)
        .unwrap();
    let mut saved = StateDict::new();
    model.save_rank_tensors("", &mut saved).unwrap();
    assert!(saved.contains_key("model.layers.0.self_attn.qkv_proj.lora_B.qv-adapter-2.weight_qkv"));
    assert!(saved.contains_key("model.layers.1.mlp.down_proj.lora_A.default.weight"));
    for ra in &ras {
        let mine: StateDict = saved
            .iter()
            .filter(|(n, _)| neuron_spec::lora::get_adapter_name(n) == Some(ra.name.as_str()))
            .map(|(n, t)| (neuron_spec::lora::remove_adapter_name(n), t.clone()))
            .collect();
        assert_same_tensors(&mine, &ra.tensors, &ra.name);
    }
    let base: StateDict = saved
        .iter()
        .filter(|(n, _)| !neuron_spec::lora::is_lora_parameter(n))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    assert_same_tensors(&base, &ck.ranks[1], "base tensors");
    // The base metadata stays LoRA-free; the spec knows the layer carries LoRA.
    assert!(model.create_parameter_metadata().unwrap().specs().all(|(_, s)| s.peft_type().is_none()));
    assert!(model
        .specialize_transformation_specs_for_model()
        .unwrap()
        .iter()
        .flat_map(|m| &m.specs)
        .all(Spec::is_lora));
    assert_eq!(
        meta.model_weight_transformation_specs,
        model.create_parameter_metadata().unwrap().model_weight_transformation_specs
    );
}

#[test]
fn a_trained_fused_member_exports_at_the_fused_rank_with_rank_and_alpha_patterns() {
    let meta = neuron_spec_models::layout(&cfg(), 2, neuron_spec_models::QkvLayout::gqa(true)).unwrap();
    let mut a = import("llama-gqa-lora", 2, true, opts(LoraMode::Exact, false));
    // "Training" fills q_proj's B outside its own column block in layer 0.
    let name = "model.layers.0.self_attn.q_proj.lora_B.weight";
    let b = a.tensors.get(name).unwrap().clone();
    let v: Vec<f32> =
        b.to_f32_vec().iter().enumerate().map(|(i, x)| if i % 12 >= 4 { 0.01 * (i % 7) as f32 } else { *x }).collect();
    a.tensors.insert(name.into(), HostTensor::from_f32(b.shape().to_vec(), &v).unwrap());
    let ex = export_adapter(&meta, &a.config, &a.tensors).unwrap();
    let q0 = "base_model.model.model.layers.0.self_attn.q_proj";
    assert_eq!(ex.tensors[&format!("{q0}.lora_A.weight")].shape(), &[12, 64]);
    assert_eq!(ex.tensors[&format!("{q0}.lora_B.weight")].shape(), &[64, 12]);
    assert_eq!(ex.tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape(), &[4, 64]);
    // peft resolves rank 12 with alpha 24 (scaling 2) for that module only, rank 4 / alpha 8 elsewhere.
    let c = &ex.config;
    assert_eq!(c.rank_and_alpha("model.layers.0.self_attn.q_proj").unwrap(), (12, 24.0));
    assert_eq!(c.rank_and_alpha("model.layers.1.self_attn.q_proj").unwrap(), (4, 8.0));
    assert_eq!(c.rank_and_alpha("model.layers.0.self_attn.k_proj").unwrap(), (4, 8.0));
    // The exported factors give the same delta as the full-rank ones: s·B_full·A_full.
    // Set this to write the exported adapter out and load it with peft (tests/check_peft_adapter.py checks the
    // untrained one; peft 0.17 resolves this one to r 12 / scaling 2 for layer 0's q_proj, r 4 elsewhere).
    if let Ok(dir) = std::env::var("NEURON_SPEC_DUMP_TRAINED_ADAPTER") {
        std::fs::create_dir_all(&dir).unwrap();
        neuron_spec::lora::write_adapter_dir(std::path::Path::new(&dir), &ex).unwrap();
    }
    let deltas = neuron_spec::lora::merge_deltas(&ex).unwrap();
    let (d, _) = &deltas["model.layers.0.self_attn.q_proj.weight"];
    let af = a.tensors["model.layers.0.self_attn.qkv_proj.lora_A.weight"].to_f32_vec();
    let mut maxd = 0f32;
    for i in 0..64 {
        for j in 0..64 {
            let full: f32 = (0..12).map(|k| 2.0 * v[i * 12 + k] * af[k * 64 + j]).sum();
            maxd = maxd.max((full - d[i * 64 + j]).abs());
        }
    }
    assert!(maxd < 1e-5, "{maxd}");
}

#[test]
fn peft_config_translation_per_model_for_lists_all_linear_regex_and_maps() {
    let meta = neuron_spec_models::layout(&cfg(), 4, neuron_spec_models::QkvLayout::gqa(true)).unwrap();
    let orig = LoraConfig::read(&fixture("llama-gqa-lora")).unwrap();
    let o = opts(LoraMode::Exact, false);
    let adapted = adapt_peft_config_for_model(&meta, &orig, &o).unwrap();
    let TargetModules::List(l) = &adapted.target_modules else { panic!() };
    let mut l = l.clone();
    l.sort();
    assert_eq!(l, ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]);
    let back = to_original_peft_config_for_model(&meta, &adapted).unwrap();
    let (TargetModules::List(x), TargetModules::List(y)) = (&back.target_modules, &orig.target_modules) else {
        panic!()
    };
    let (mut x, mut y) = (x.clone(), y.clone());
    x.sort();
    y.sort();
    assert_eq!(x, y);
    // all-linear translates to itself (the reference crashes on it).
    let mut all = orig.clone();
    all.target_modules = TargetModules::AllLinear;
    assert_eq!(adapt_peft_config_for_model(&meta, &all, &o).unwrap().target_modules, TargetModules::AllLinear);
    // A regex becomes the modules it matches, in the TP model's names; the all-or-none rule applies to it too.
    let mut re = orig.clone();
    re.target_modules = TargetModules::Regex(r".*\.layers\.1\..*_proj".into());
    let t = adapt_peft_config_for_model(&meta, &re, &o).unwrap().target_modules;
    let TargetModules::List(t) = t else { panic!() };
    assert!(t.contains(&"model.layers.1.self_attn.qkv_proj".to_string()) && t.len() == 4, "{t:?}");
    re.target_modules = TargetModules::Regex(r".*\.(q|v)_proj".into());
    let e = adapt_peft_config_for_model(&meta, &re, &o).unwrap_err();
    assert!(matches!(&e, Error::PartialLoraGroup { missing, .. } if missing.iter().any(|m| m == "k_proj")), "{e:?}");
    // A map of configs, one per adapter.
    let map: indexmap::IndexMap<String, LoraConfig> =
        [("default".to_string(), orig.clone()), ("my-adapter".to_string(), all)].into_iter().collect();
    let m = adapt_peft_config_for_model(&meta, &map, &o).unwrap();
    assert_eq!(m["my-adapter"].target_modules, TargetModules::AllLinear);
    assert_eq!(m["default"].target_modules, adapted.target_modules);
    // Unknown fields survive.
    assert_eq!(adapted.extra.get("megatron_core"), orig.extra.get("megatron_core"));
}

/// A row-fused group (members fused along their inputs) with its own tiny layout: exact import, TP shards that
/// add up to peft's delta, and an export that is the input byte for byte (and at the fused rank once trained).
#[test]
fn row_fused_group_imports_exactly_and_exports_back() {
    let tp = 2;
    let spec = FusedLinearsSpec {
        fused_linear_name: "xy_proj".into(),
        linear_names: vec!["x_proj".into(), "y_proj".into()],
        bias: false,
        fuse_axis: FuseAxis::Row,
        original_dims: vec![4, 6],
        tp_size: tp,
        peft_type: None,
        packed_linear_name: None,
    };
    let mut parameters = indexmap::IndexMap::new();
    parameters.insert("m.xy_proj.weight".to_string(), ParameterMetadata::parallel(1, 2, tp));
    let base = CheckpointMetadata {
        format_version: Some(1),
        tp_size: Some(tp),
        parameters,
        model_weight_transformation_specs: vec![ModelWeightTransformationSpecs {
            module_fully_qualified_name: "m".into(),
            specs: vec![Spec::FusedLinears(spec)],
        }],
        rank_files: vec![],
    };
    let vals = |n: usize, seed: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect() };
    let mut sd = StateDict::new();
    let shapes = [("x_proj", 2, 4), ("y_proj", 3, 6)];
    for (k, (m, r, inp)) in shapes.iter().enumerate() {
        sd.insert(
            format!("base_model.model.m.{m}.lora_A.weight"),
            HostTensor::from_f32(vec![*r, *inp], &vals(r * inp, k as f32)).unwrap(),
        );
        sd.insert(
            format!("base_model.model.m.{m}.lora_B.weight"),
            HostTensor::from_f32(vec![5, *r], &vals(5 * r, 10. + k as f32)).unwrap(),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let infos: Vec<_> = sd.names().iter().map(|n| sd.info(n).unwrap()).collect();
    let meta = [("format".to_string(), "pt".to_string())].into();
    let weights = tmp.path().join("adapter_model.safetensors");
    neuron_spec::format::write_safetensors(&weights, &infos, &meta, &mut |i| Ok(vec![sd.tensor(&i.name)?])).unwrap();
    let mut config = LoraConfig::read(&fixture("llama-gqa-lora")).unwrap();
    config.target_modules = TargetModules::List(vec!["x_proj".into(), "y_proj".into()]);
    (config.r, config.lora_alpha) = (2, 4.0);
    config.rank_pattern = [("y_proj".to_string(), 3)].into_iter().collect();
    config.alpha_pattern = [("y_proj".to_string(), 6.0)].into_iter().collect(); // both scale by 2
    std::fs::write(tmp.path().join("adapter_config.json"), config.to_json().unwrap()).unwrap();
    let peft = PeftAdapter::open(tmp.path()).unwrap();
    let e = import_adapter(&base, &peft, "default", opts(LoraMode::Mean, false)).unwrap_err();
    assert!(matches!(&e, Error::Lora { reason, .. } if reason.contains("row-fused")), "{e:?}");
    let a = import_adapter(&base, &peft, "default", opts(LoraMode::Exact, false)).unwrap();
    // TP: Σ_ranks B·A_local·x_local equals Σ_members B_i·A_i·x_i, with x = [x_x | x_y].
    let x: Vec<f32> = vals(10, 3.0);
    let peft_y: Vec<f32> = (0..5)
        .map(|o| {
            let mut acc = 0.0;
            for (k, (m, r, inp)) in shapes.iter().enumerate() {
                let av = sd[&format!("base_model.model.m.{m}.lora_A.weight")].to_f32_vec();
                let bv = sd[&format!("base_model.model.m.{m}.lora_B.weight")].to_f32_vec();
                let xs = &x[if k == 0 { 0..4 } else { 4..10 }];
                for j in 0..*r {
                    let ax: f32 = (0..*inp).map(|i| av[j * inp + i] * xs[i]).sum();
                    acc += 2.0 * bv[o * r + j] * ax;
                }
            }
            acc
        })
        .collect();
    let mut tp_y = vec![0f32; 5];
    let mut ranks = Vec::new();
    for rank in 0..tp {
        let local = imported_rank_adapter(&base, &a, tp, rank).unwrap().tensors;
        let al = local["m.xy_proj.lora_A.weight"].to_f32_vec(); // [5, 5]: x's 2 columns then y's 3
        let bl = local["m.xy_proj.lora_B.weight"].to_f32_vec(); // [5, 5] replicated
        let xl: Vec<f32> = [&x[rank * 2..rank * 2 + 2], &x[4 + rank * 3..4 + rank * 3 + 3]].concat();
        for (o, y) in tp_y.iter_mut().enumerate() {
            for j in 0..5 {
                let ax: f32 = (0..5).map(|i| al[j * 5 + i] * xl[i]).sum();
                *y += 2.0 * bl[o * 5 + j] * ax;
            }
        }
        ranks.push(local);
    }
    assert!(max_abs_diff(&tp_y, &peft_y) < 1e-5, "{tp_y:?} vs {peft_y:?}");
    let sources: Vec<&dyn TensorSource> = ranks.iter().map(|r| r as &dyn TensorSource).collect();
    let full = neuron_spec::to_original_weights(&a.metadata, &sources).unwrap();
    let ex = export_adapter(&base, &a.config, &full).unwrap();
    assert_same_tensors(&ex.tensors, &sd, "row-fused export");
    assert_eq!(ex.config.rank_pattern, config.rank_pattern);
    // Trained: x's A gets weight outside its rows; it comes back at rank 5 with alpha 10.
    let mut full = full;
    let ax = full["m.x_proj.lora_A.weight"].clone();
    let mut v = ax.to_f32_vec();
    v[4 * 4] = 0.5;
    full.insert("m.x_proj.lora_A.weight".into(), HostTensor::from_f32(ax.shape().to_vec(), &v).unwrap());
    let ex = export_adapter(&base, &a.config, &full).unwrap();
    assert_eq!(ex.tensors["base_model.model.m.x_proj.lora_B.weight"].shape(), &[5, 5]);
    assert_eq!(ex.config.rank_and_alpha("m.x_proj").unwrap(), (5, 10.0));
    assert_eq!(ex.config.rank_and_alpha("m.y_proj").unwrap(), (3, 6.0));
}
