//! Spec attributes on the root module (path ""): names are `gate_proj.weight`, not `.gate_proj.weight`, and the
//! model loads through `load_hf_rank` and burn-store's `HfRankStore`, at the root and nested, for both specs; the
//! saved ranks consolidate back to the input.

use crate::common;
use burn::module::Module;
use burn::tensor::Device;
use burn_store::ModuleSnapshot;
use common::assert_same_tensors;
use neuron_spec::layers::{
    ColumnParallelLinear, ColumnParallelLinearConfig, GqaQkvColumnParallelLinear, GqaQkvColumnParallelLinearConfig,
    HfRankStore, RowParallelLinear, RowParallelLinearConfig,
};
use neuron_spec::spec::compile::{to_original_weights, HfWeights};
use neuron_spec::spec::contract::{CustomModule as _, TpContext};
use neuron_spec::tensor::{HostTensor, StateDict};
use neuron_spec::{CustomModule, PlanOptions, TensorSource};

#[derive(Module, CustomModule, Debug)]
struct Mlp {
    #[fused_linears(gate_proj, up_proj)]
    gate_up_proj: ColumnParallelLinear,
    down_proj: RowParallelLinear,
}

#[derive(Module, CustomModule, Debug)]
struct Attn {
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    qkv_proj: GqaQkvColumnParallelLinear,
    o_proj: RowParallelLinear,
}

#[derive(Module, CustomModule, Debug)]
struct Nested {
    mlp: Mlp,
    self_attn: Attn,
}

fn mlp(tp: TpContext, d: &Device) -> Mlp {
    Mlp {
        gate_up_proj: ColumnParallelLinearConfig::new(16, 16).with_fused_dims(vec![8, 8]).init(tp, d).unwrap(),
        down_proj: RowParallelLinearConfig::new(8, 16).init(tp, d).unwrap(),
    }
}

fn attn(tp: TpContext, d: &Device) -> Attn {
    Attn {
        qkv_proj: GqaQkvColumnParallelLinearConfig::new(16, 4, 2, 4).init(tp, d).unwrap(),
        o_proj: RowParallelLinearConfig::new(16, 16).init(tp, d).unwrap(),
    }
}

/// An HF state dict with distinct values: `(name, [out, in])` under `prefix`.
fn hf(prefix: &str, tensors: &[(&str, [usize; 2])]) -> StateDict {
    let mut sd = StateDict::new();
    for (i, (n, [o, k])) in tensors.iter().enumerate() {
        let v: Vec<f32> = (0..o * k).map(|j| (i * 1000 + j) as f32 * 0.001).collect();
        let name = if prefix.is_empty() { n.to_string() } else { format!("{prefix}.{n}") };
        sd.insert(name, HostTensor::from_f32(vec![*o, *k], &v).unwrap());
    }
    sd
}

const MLP: &[(&str, [usize; 2])] =
    &[("gate_proj.weight", [8, 16]), ("up_proj.weight", [8, 16]), ("down_proj.weight", [16, 8])];
const ATTN: &[(&str, [usize; 2])] =
    &[("q_proj.weight", [16, 16]), ("k_proj.weight", [8, 16]), ("v_proj.weight", [8, 16]), ("o_proj.weight", [16, 16])];

/// Loads every rank both ways, checks they agree, and consolidates the saved ranks back to `src`.
fn check<M: neuron_spec::spec::contract::CustomModule + ModuleSnapshot>(
    make: &dyn Fn(TpContext) -> M,
    src: &StateDict,
    what: &str,
) {
    let d = Device::default();
    for tp in [1, 2] {
        let meta = make(TpContext::new(tp, 0).unwrap()).create_parameter_metadata().unwrap();
        assert!(meta.parameters.keys().all(|n| !n.starts_with('.')), "{what}: {:?}", meta.parameters.keys());
        let mut ranks = Vec::new();
        for rank in 0..tp {
            let ctx = TpContext::new(tp, rank).unwrap();
            let loaded = make(ctx).load_hf_rank(src, &d, PlanOptions::default()).unwrap();
            let mut saved = StateDict::new();
            loaded.save_rank_tensors("", &mut saved).unwrap();
            let mut model = make(ctx);
            let mut store = HfRankStore::for_model(&model, src).unwrap();
            let result = model.load_from(&mut store).unwrap();
            assert!(result.errors.is_empty() && result.missing.is_empty(), "{what}: {result}");
            let mut via_store = StateDict::new();
            model.save_rank_tensors("", &mut via_store).unwrap();
            assert_same_tensors(&saved, &via_store, &format!("{what} tp {tp} rank {rank}"));
            ranks.push(saved);
        }
        let sources: Vec<&dyn TensorSource> = ranks.iter().map(|r| r as &dyn TensorSource).collect();
        assert_same_tensors(&to_original_weights(&meta, &sources).unwrap(), src, &format!("{what} tp {tp}"));
    }
}

#[test]
fn fused_linears_at_the_root_names_gate_proj_weight() {
    let d = Device::default();
    let spec_names = mlp(TpContext::new(2, 0).unwrap(), &d).transformation_specs().unwrap();
    let (module, spec) = (&spec_names[0].module_fully_qualified_name, &spec_names[0].specs[0]);
    assert_eq!(module, "");
    assert_eq!(spec.original_parameter_names(module), ["gate_proj.weight", "up_proj.weight"]);
    assert_eq!(spec.local_parameter_names(module), ["gate_up_proj.weight"]);
    check(&|tp| mlp(tp, &d), &hf("", MLP), "root mlp");
}

#[test]
fn gqa_qkv_at_the_root_names_q_proj_weight() {
    let d = Device::default();
    let specs = attn(TpContext::new(2, 0).unwrap(), &d).transformation_specs().unwrap();
    let spec = &specs[0].specs[0];
    assert_eq!(spec.original_parameter_names(""), ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"]);
    check(&|tp| attn(tp, &d), &hf("", ATTN), "root attention");
}

#[test]
fn both_specs_nested_load_the_same_way() {
    let d = Device::default();
    let mut src = hf("mlp", MLP);
    for (n, t) in hf("self_attn", ATTN) {
        src.insert(n, t);
    }
    check(&|tp| Nested { mlp: mlp(tp, &d), self_attn: attn(tp, &d) }, &src, "nested");
}
