//! What the derived impl does on a model tree: module paths, spec order, parameter names, rank tensors.
// `Device` is a unit struct here (neuron-spec without burn) but not with burn: `Device::default()` is the
// form that builds with both.
#![allow(clippy::default_constructed_unit_structs)]

use crate::mocks::{Linear, NotAModule, Qkv};
use neuron_spec::spec::contract::Device;
use neuron_spec::spec::contract::{CustomModule, TpContext};
use neuron_spec::{Spec, StateDict};

#[derive(neuron_spec::CustomModule)]
struct Attention {
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    qkv_proj: Qkv,
    o_proj: Linear,
}

#[derive(neuron_spec::CustomModule)]
struct Mlp {
    #[fused_linears(gate_proj, up_proj)]
    gate_up_proj: Linear,
    down_proj: Linear,
}

#[derive(neuron_spec::CustomModule)]
struct Decoder {
    #[hf(rename = "self_attn")]
    attention: Attention,
    mlp: Mlp,
    /// Stands for a `#[module(skip)]` field of a burn model.
    #[hf(skip)]
    cache: NotAModule,
    /// A constant burn does not treat as a module: out of the HF tree without an attribute.
    layer_idx: usize,
}

#[derive(neuron_spec::CustomModule)]
struct Model {
    layers: Vec<Decoder>,
    norm: Option<Linear>,
}

#[derive(neuron_spec::CustomModule)]
struct ForCausalLm {
    model: Model,
    lm_head: Linear,
    #[hf(skip)]
    config: NotAModule,
}

/// Two spec fields in one struct: one entry, specs in field order.
#[derive(neuron_spec::CustomModule)]
struct FusedBlock {
    #[fused_linears(w1, w3)]
    w13: Linear,
    #[hf(rename = "attn_qkv")]
    #[gqa_qkv(q = wq, k = wk, v = wv, o = wo)]
    qkv: Qkv,
    #[hf(rename = "wo")]
    out: Linear,
    inner: Mlp,
}

/// A generic struct: the derive bounds the field types that mention `L`.
#[derive(neuron_spec::CustomModule)]
struct Wrapper<L> {
    #[fused_linears(a, b, c)]
    fused: L,
    rest: Vec<L>,
}

/// An enum: each variant delegates to its module under the same prefix.
#[derive(neuron_spec::CustomModule)]
enum FeedForward {
    Fused(Mlp),
    Plain(Linear),
}

/// A pipeline stage of `ForCausalLm`: fields under dotted HF paths, layers numbered from a sibling field.
#[derive(neuron_spec::CustomModule)]
struct Stage {
    #[hf(rename = "model.embed_tokens")]
    embed_tokens: Option<Linear>,
    #[hf(rename = "model.layers", index_offset = first_layer)]
    layers: Vec<Decoder>,
    #[hf(rename = "model.norm")]
    norm: Option<Linear>,
    lm_head: Option<Linear>,
    first_layer: usize,
}

fn decoder(i: usize, tp: usize) -> Decoder {
    Decoder {
        attention: Attention { qkv_proj: Qkv::new(tp), o_proj: Linear::new(tp) },
        mlp: Mlp { gate_up_proj: Linear::new(tp), down_proj: Linear::new(tp) },
        cache: NotAModule { value: i as u32 },
        layer_idx: i,
    }
}

fn model(tp: usize, norm: bool) -> ForCausalLm {
    ForCausalLm {
        model: Model { layers: vec![decoder(0, tp), decoder(1, tp)], norm: norm.then(|| Linear::new(tp)) },
        lm_head: Linear::new(tp),
        config: NotAModule { value: 7 },
    }
}

fn paths(m: &impl CustomModule) -> Vec<String> {
    m.transformation_specs().unwrap().into_iter().map(|s| s.module_fully_qualified_name).collect()
}

#[test]
fn specs_are_listed_per_module_with_fully_qualified_paths() {
    assert_eq!(
        paths(&model(4, true)),
        ["model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.1.self_attn", "model.layers.1.mlp"]
    );
}

#[test]
fn specs_carry_the_hf_names_from_the_attributes() {
    let specs = model(4, true).transformation_specs().unwrap();
    let Spec::GqaQkv(gqa) = &specs[2].specs[0] else { panic!("expected a GQA spec, got {:?}", specs[2]) };
    assert_eq!(gqa.gqa_qkv_projection_name, "qkv_proj");
    assert_eq!(
        [&gqa.query_projection_name, &gqa.key_projection_name, &gqa.value_projection_name, &gqa.output_projection_name],
        ["q_proj", "k_proj", "v_proj", "o_proj"]
    );
    assert_eq!(gqa.tp_size, 4);
    let Spec::FusedLinears(fused) = &specs[3].specs[0] else { panic!("expected a fused spec, got {:?}", specs[3]) };
    assert_eq!(fused.fused_linear_name, "gate_up_proj");
    assert_eq!(fused.linear_names, ["gate_proj", "up_proj"]);
    assert!(specs.iter().all(|s| s.specs.len() == 1));
}

#[test]
fn a_struct_with_several_spec_fields_has_one_entry_before_its_children() {
    let block = FusedBlock {
        w13: Linear::new(2),
        qkv: Qkv::new(2),
        out: Linear::new(2),
        inner: Mlp { gate_up_proj: Linear::new(2), down_proj: Linear::new(2) },
    };
    let specs = block.transformation_specs().unwrap();
    let paths: Vec<&str> = specs.iter().map(|s| s.module_fully_qualified_name.as_str()).collect();
    assert_eq!(paths, ["", "inner"]);
    let names: Vec<(&str, String)> = specs[0]
        .specs
        .iter()
        .map(|s| match s {
            Spec::FusedLinears(f) => (s.class_name(), format!("{}<-{}", f.fused_linear_name, f.linear_names.join("+"))),
            Spec::GqaQkv(g) => (
                s.class_name(),
                format!("{}<-{}/{}", g.gqa_qkv_projection_name, g.query_projection_name, g.output_projection_name),
            ),
        })
        .collect();
    assert_eq!(
        names,
        [
            ("FusedLinearsSpec", "w13<-w1+w3".to_string()),
            ("GQAQKVColumnParallelLinearSpec", "attn_qkv<-wq/wo".to_string())
        ]
    );
}

#[test]
fn parameter_metadata_uses_hf_paths_and_skips_non_modules() {
    let metadata = model(2, true).create_parameter_metadata().unwrap();
    assert_eq!(metadata.tp_size, Some(2));
    let names: Vec<&str> = metadata.parameters.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "lm_head.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.mlp.gate_up_proj.weight",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.self_attn.qkv_proj.weight_qkv",
            "model.layers.1.mlp.down_proj.weight",
            "model.layers.1.mlp.gate_up_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.self_attn.qkv_proj.weight_qkv",
            "model.norm.weight",
        ]
    );
    assert_eq!(metadata.model_weight_transformation_specs, model(2, true).transformation_specs().unwrap());
}

#[test]
fn an_absent_option_contributes_nothing() {
    let metadata = model(2, false).create_parameter_metadata().unwrap();
    assert!(!metadata.parameters.contains_key("model.norm.weight"));
    assert_eq!(metadata.parameters.len(), 9);
}

#[test]
fn tp_contexts_come_from_every_layer() {
    let mut all = Vec::new();
    model(4, true).collect_tp_contexts(&mut all);
    assert_eq!(all.len(), 2 * 4 + 2);
    assert_eq!(model(4, true).tp_context().unwrap(), TpContext { size: 4, rank: 0 });

    let mut mixed = model(4, true);
    mixed.lm_head = Linear::new(2);
    assert!(mixed.tp_context().is_err());
}

#[test]
fn saved_tensors_load_back_under_the_same_names_and_skipped_fields_move_over() {
    let m = model(2, true);
    let mut saved = StateDict::new();
    m.save_rank_tensors("", &mut saved).unwrap();
    let metadata = m.create_parameter_metadata().unwrap();
    let mut saved_names: Vec<&String> = saved.keys().collect();
    saved_names.sort();
    assert_eq!(saved_names, metadata.parameters.keys().collect::<Vec<_>>());

    let loaded = m.load_rank_tensors("", &saved, &Device::default()).unwrap();
    assert_eq!(loaded.lm_head.loaded_from.as_deref(), Some("lm_head"));
    assert_eq!(loaded.model.norm.as_ref().and_then(|n| n.loaded_from.as_deref()), Some("model.norm"));
    let layer = &loaded.model.layers[1];
    assert_eq!(layer.attention.qkv_proj.loaded_from.as_deref(), Some("model.layers.1.self_attn.qkv_proj"));
    assert_eq!(layer.mlp.down_proj.loaded_from.as_deref(), Some("model.layers.1.mlp.down_proj"));
    assert_eq!((layer.cache.value, layer.layer_idx), (1, 1));
    assert_eq!(loaded.config, NotAModule { value: 7 });
}

#[test]
fn loading_reports_a_missing_tensor() {
    let mut saved = StateDict::new();
    model(2, true).save_rank_tensors("", &mut saved).unwrap();
    saved.shift_remove("model.layers.1.mlp.down_proj.weight");
    assert!(model(2, true).load_rank_tensors("", &saved, &Device::default()).is_err());
}

#[test]
fn prefixes_nest_under_a_caller_given_root() {
    let mlp = Mlp { gate_up_proj: Linear::new(1), down_proj: Linear::new(1) };
    let mut out = Vec::new();
    mlp.collect_specs("base.blocks.3", &mut out).unwrap();
    assert_eq!(out[0].module_fully_qualified_name, "base.blocks.3");
}

#[test]
fn generic_structs_get_field_bounds() {
    let w = Wrapper { fused: Linear::new(1), rest: vec![Linear::new(1), Linear::new(1)] };
    let specs = w.transformation_specs().unwrap();
    assert_eq!(specs.len(), 1);
    let Spec::FusedLinears(f) = &specs[0].specs[0] else { panic!("expected a fused spec") };
    assert_eq!(f.linear_names, ["a", "b", "c"]);
    let names: Vec<String> = w.create_parameter_metadata().unwrap().parameters.into_keys().collect();
    assert_eq!(names, ["fused.weight", "rest.0.weight", "rest.1.weight"]);
}

fn mlp() -> Mlp {
    Mlp { gate_up_proj: Linear::new(2), down_proj: Linear::new(2) }
}

/// Spec paths, specs, parameter names, TP contexts and saved tensor names.
type Report = (Vec<String>, Vec<Spec>, Vec<String>, Vec<TpContext>, Vec<String>);

/// Everything the derived methods report under `prefix`.
fn report(m: &impl CustomModule, prefix: &str) -> Report {
    let mut specs = Vec::new();
    m.collect_specs(prefix, &mut specs).unwrap();
    let mut metadata = indexmap::IndexMap::new();
    m.collect_parameter_metadata(prefix, &mut metadata).unwrap();
    let mut contexts = Vec::new();
    m.collect_tp_contexts(&mut contexts);
    let mut saved = StateDict::new();
    m.save_rank_tensors(prefix, &mut saved).unwrap();
    (
        specs.iter().map(|s| s.module_fully_qualified_name.clone()).collect(),
        specs.into_iter().flat_map(|s| s.specs).collect(),
        metadata.into_keys().collect(),
        contexts,
        saved.into_keys().collect(),
    )
}

#[test]
fn an_enum_reports_what_its_variant_module_reports_under_the_same_prefix() {
    let prefix = "model.layers.0.mlp";
    assert_eq!(report(&FeedForward::Fused(mlp()), prefix), report(&mlp(), prefix));
    assert_eq!(report(&FeedForward::Plain(Linear::new(2)), prefix), report(&Linear::new(2), prefix));
    assert_eq!(report(&FeedForward::Fused(mlp()), prefix).0, [prefix]);
}

#[test]
fn an_enum_loads_its_variant_module_and_keeps_the_variant() {
    let mut saved = StateDict::new();
    mlp().save_rank_tensors("mlp", &mut saved).unwrap();
    let loaded = FeedForward::Fused(mlp()).load_rank_tensors("mlp", &saved, &Device::default()).unwrap();
    let FeedForward::Fused(m) = loaded else { panic!("the variant changed") };
    assert_eq!(m.down_proj.loaded_from.as_deref(), Some("mlp.down_proj"));
    assert!(FeedForward::Plain(Linear::new(2)).load_rank_tensors("mlp", &saved, &Device::default()).is_err());
}

fn stage(first_layer: usize, layers: usize) -> Stage {
    Stage {
        embed_tokens: None,
        layers: (0..layers).map(|i| decoder(first_layer.wrapping_add(i), 2)).collect(),
        norm: Some(Linear::new(2)),
        lm_head: Some(Linear::new(2)),
        first_layer,
    }
}

#[test]
fn a_stage_reports_its_part_of_the_whole_model_under_the_whole_models_paths() {
    let whole = ForCausalLm {
        model: Model { layers: (0..4).map(|i| decoder(i, 2)).collect(), norm: Some(Linear::new(2)) },
        lm_head: Linear::new(2),
        config: NotAModule { value: 7 },
    };
    let whole_specs = whole.transformation_specs().unwrap();
    let stage_specs = stage(2, 2).transformation_specs().unwrap();
    assert_eq!(stage_specs, whole_specs[4..]);
    assert_eq!(stage_specs[0].module_fully_qualified_name, "model.layers.2.self_attn");

    let in_stage = |name: &&String| !name.starts_with("model.layers.0.") && !name.starts_with("model.layers.1.");
    let whole_names: Vec<String> = whole.create_parameter_metadata().unwrap().parameters.into_keys().collect();
    let stage_names: Vec<String> = stage(2, 2).create_parameter_metadata().unwrap().parameters.into_keys().collect();
    assert_eq!(stage_names, whole_names.iter().filter(in_stage).cloned().collect::<Vec<_>>());

    let mut first = stage(0, 1);
    first.embed_tokens = Some(Linear::new(2));
    let names: Vec<String> = first.create_parameter_metadata().unwrap().parameters.into_keys().collect();
    assert!(names.contains(&"model.embed_tokens.weight".to_string()));
    assert!(names.contains(&"model.layers.0.mlp.down_proj.weight".to_string()));
}

#[test]
fn a_stage_loads_its_layers_from_their_global_names() {
    let s = stage(3, 2);
    let mut saved = StateDict::new();
    s.save_rank_tensors("", &mut saved).unwrap();
    assert!(saved.contains_key("model.layers.4.self_attn.qkv_proj.weight_qkv"));
    let loaded = s.load_rank_tensors("", &saved, &Device::default()).unwrap();
    assert_eq!(loaded.first_layer, 3);
    let layer = &loaded.layers[1];
    assert_eq!(layer.attention.qkv_proj.loaded_from.as_deref(), Some("model.layers.4.self_attn.qkv_proj"));
    assert_eq!(layer.layer_idx, 4);
    assert_eq!(loaded.norm.and_then(|n| n.loaded_from).as_deref(), Some("model.norm"));
}

#[test]
fn an_index_offset_that_overflows_is_an_error() {
    let s = stage(usize::MAX, 2);
    let err = s.create_parameter_metadata().unwrap_err().to_string();
    assert!(err.contains("Stage.first_layer"), "{err}");
    let s = stage(usize::MAX, 1);
    assert!(s
        .create_parameter_metadata()
        .unwrap()
        .parameters
        .contains_key(&format!("model.layers.{}.mlp.down_proj.weight", usize::MAX)));
}
