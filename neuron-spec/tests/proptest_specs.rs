//! Property tests over random head counts, tp sizes, multipliers and fused dims.

use indexmap::IndexMap;
use neuron_spec::metadata::ParameterMetadata;
use neuron_spec::model::{adapt_state_dict, to_original_weights, PlanOptions};
use neuron_spec::specs::{
    FuseAxis, FusedLinearsSpec, GqaQkvColumnParallelLinearSpec, ModelWeightTransformationSpecs, Spec,
};
use neuron_spec::{CheckpointMetadata, HostTensor, StateDict, TensorSource};
use proptest::prelude::*;

/// A valid GQA configuration: (heads, kv heads, head_dim, tp).
fn gqa_config() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    (0u32..4, 0u32..4, 1usize..4, 1usize..4).prop_map(|(tp_pow, kv_pow, group, hd)| {
        let tp = 1usize << tp_pow;
        let kv = 1usize << kv_pow;
        // heads = kv × group, scaled so that tp divides heads.
        let mut heads = kv * group;
        while !heads.is_multiple_of(tp) {
            heads += kv;
        }
        (heads, kv, hd, tp)
    })
}

fn tensor(shape: Vec<usize>, seed: f32) -> HostTensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| seed * 1000.0 + i as f32).collect();
    HostTensor::from_f32(shape, &v).unwrap()
}

/// An HF-like attention + MLP block.
fn state_dict(heads: usize, kv: usize, hd: usize, inter: &[usize], bias: bool) -> StateDict {
    let hidden = 6;
    let mut sd = StateDict::new();
    sd.insert("m.attn.q_proj.weight".into(), tensor(vec![heads * hd, hidden], 1.0));
    sd.insert("m.attn.k_proj.weight".into(), tensor(vec![kv * hd, hidden], 2.0));
    sd.insert("m.attn.v_proj.weight".into(), tensor(vec![kv * hd, hidden], 3.0));
    sd.insert("m.attn.o_proj.weight".into(), tensor(vec![hidden, heads * hd], 4.0));
    if bias {
        sd.insert("m.attn.q_proj.bias".into(), tensor(vec![heads * hd], 5.0));
        sd.insert("m.attn.k_proj.bias".into(), tensor(vec![kv * hd], 6.0));
        sd.insert("m.attn.v_proj.bias".into(), tensor(vec![kv * hd], 7.0));
    }
    for (i, d) in inter.iter().enumerate() {
        sd.insert(format!("m.mlp.lin{i}.weight"), tensor(vec![*d, hidden], 10.0 + i as f32));
    }
    sd
}

/// The block and its metadata.
fn model(
    heads: usize,
    kv: usize,
    hd: usize,
    tp: usize,
    fuse: bool,
    inter: &[usize],
    bias: bool,
) -> (StateDict, CheckpointMetadata) {
    let sd = state_dict(heads, kv, hd, inter, bias);
    let names: Vec<String> = (0..inter.len()).map(|i| format!("lin{i}")).collect();
    let gqa = GqaQkvColumnParallelLinearSpec::new(heads, kv, hd, fuse, bias, false, tp).unwrap();
    let fused = FusedLinearsSpec {
        fused_linear_name: "fused".into(),
        linear_names: names,
        bias: false,
        fuse_axis: FuseAxis::Column,
        original_dims: inter.to_vec(),
        tp_size: tp,
        peft_type: None,
        packed_linear_name: None,
    };
    let mut parameters = IndexMap::new();
    for n in gqa.local_parameter_names("m.attn") {
        parameters.insert(n, ParameterMetadata::replicated());
    }
    parameters.insert("m.mlp.fused.weight".into(), ParameterMetadata::parallel(0, inter.len(), tp));
    let meta = CheckpointMetadata {
        format_version: Some(1),
        tp_size: Some(tp),
        parameters,
        model_weight_transformation_specs: vec![
            ModelWeightTransformationSpecs {
                module_fully_qualified_name: "m.attn".into(),
                specs: vec![Spec::GqaQkv(gqa)],
            },
            ModelWeightTransformationSpecs {
                module_fully_qualified_name: "m.mlp".into(),
                specs: vec![Spec::FusedLinears(fused)],
            },
        ],
        rank_files: vec![],
    };
    (sd, meta)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn roundtrip_is_identity_and_ranks_have_equal_shapes(
        (heads, kv, hd, tp) in gqa_config(),
        fuse in any::<bool>(),
        bias in any::<bool>(),
        inter in prop::collection::vec(1usize..4, 1..4),
    ) {
        let inter: Vec<usize> = inter.iter().map(|d| d * tp).collect();
        let (sd, meta) = model(heads, kv, hd, tp, fuse, &inter, bias);
        let ranks: Vec<StateDict> = (0..tp).map(|r| adapt_state_dict(&meta, &sd, tp, r, PlanOptions::default()).unwrap()).collect();
        for r in &ranks[1..] {
            for (n, t) in r {
                prop_assert_eq!(t.shape(), ranks[0][n].shape(), "{}", n);
            }
        }
        let sources: Vec<&dyn TensorSource> = ranks.iter().map(|r| r as &dyn TensorSource).collect();
        let back = to_original_weights(&meta, &sources).unwrap();
        prop_assert_eq!(back.len(), sd.len());
        for (n, t) in &sd {
            prop_assert!(back[n] == *t, "{} differs", n);
        }
    }

    #[test]
    fn qkv_bias_elements_follow_their_weight_rows((heads, kv, hd, tp) in gqa_config(), fuse in any::<bool>()) {
        let (mut sd, meta) = model(heads, kv, hd, tp, fuse, &[tp], true);
        // Tag each weight row and bias element with the same value: row i of projection p holds tag+i.
        for (p, rows, tag) in [("q", heads * hd, 1000.0), ("k", kv * hd, 2000.0), ("v", kv * hd, 3000.0)] {
            let w: Vec<f32> = (0..rows).flat_map(|i| std::iter::repeat_n(tag + i as f32, 6)).collect();
            let b: Vec<f32> = (0..rows).map(|i| tag + i as f32).collect();
            sd.insert(format!("m.attn.{p}_proj.weight"), HostTensor::from_f32(vec![rows, 6], &w).unwrap());
            sd.insert(format!("m.attn.{p}_proj.bias"), HostTensor::from_f32(vec![rows], &b).unwrap());
        }
        for r in 0..tp {
            let local = adapt_state_dict(&meta, &sd, tp, r, PlanOptions::default()).unwrap();
            let pairs: Vec<(String, String)> = if fuse {
                vec![("m.attn.qkv_proj.weight_qkv".into(), "m.attn.qkv_proj.bias_qkv".into())]
            } else {
                ["q", "k", "v"].iter().map(|s| (format!("m.attn.qkv_proj.weight_{s}"), format!("m.attn.qkv_proj.bias_{s}"))).collect()
            };
            for (wn, bn) in pairs {
                let w = local[&wn].to_f32_vec();
                let b = local[&bn].to_f32_vec();
                prop_assert_eq!(w.len(), b.len() * 6);
                for (j, bj) in b.iter().enumerate() {
                    prop_assert_eq!(w[j * 6], *bj, "rank {} {} row {}", r, wn, j);
                }
            }
        }
    }

    #[test]
    fn invalid_configurations_are_errors_not_panics(
        heads in 0usize..40, kv in 0usize..12, mult in 0usize..10, tp in 0usize..20, hd in 0usize..5, rank in 0usize..20,
    ) {
        let spec = GqaQkvColumnParallelLinearSpec {
            gqa_qkv_projection_name: "qkv_proj".into(),
            query_projection_name: "q_proj".into(),
            key_projection_name: "k_proj".into(),
            value_projection_name: "v_proj".into(),
            output_projection_name: "o_proj".into(),
            num_attention_heads: heads,
            num_key_value_heads: kv,
            kv_size_multiplier: mult,
            q_output_size_per_partition: (heads * hd).checked_div(tp).unwrap_or(0),
            kv_output_size_per_partition: (kv * mult * hd).checked_div(tp).unwrap_or(0),
            fuse_qkv: true,
            bias: false,
            tp_size: tp,
            qkv_bias: None,
            o_bias: None,
            peft_type: None,
            packed_projection_name: None,
        };
        let _ = spec.validate(tp);
        let _ = GqaQkvColumnParallelLinearSpec::compute_query_indices_for_rank(tp, rank, heads, kv, mult);
        let _ = GqaQkvColumnParallelLinearSpec::new(heads, kv, hd, true, false, false, tp);
        let fused = FusedLinearsSpec {
            fused_linear_name: "f".into(), linear_names: vec!["a".into(), "b".into()], bias: false,
            fuse_axis: FuseAxis::Column, original_dims: vec![heads, kv], tp_size: tp, peft_type: None, packed_linear_name: None,
        };
        let _ = fused.validate(tp);
        // A spec that validates also plans every rank of a checkpoint of matching shapes.
        if spec.validate(tp).is_ok() && hd > 0 {
            let sd = state_dict(heads, kv, hd, &[tp], false);
            for r in 0..tp {
                prop_assert!(spec.plan_rank("m.attn", &sd, 0, tp, r).is_ok());
            }
        }
    }
}

#[test]
fn fused_dims_that_do_not_sum_are_rejected() {
    // The fused tensor of a rank must be sum(original_dims)/tp: a rank file with 5 rows for dims [4, 4] at tp 2.
    let spec = FusedLinearsSpec {
        fused_linear_name: "gate_up".into(),
        linear_names: vec!["gate".into(), "up".into()],
        bias: false,
        fuse_axis: FuseAxis::Column,
        original_dims: vec![4, 4],
        tp_size: 2,
        peft_type: None,
        packed_linear_name: None,
    };
    let mut local = StateDict::new();
    local.insert("m.gate_up.weight".into(), tensor(vec![5, 3], 0.0));
    let e = spec.original_infos("m", &local, 2).unwrap_err().to_string();
    assert!(e.contains("m.gate_up.weight") && e.contains("[4, 3]") && e.contains("[5, 3]"), "{e}");
    let bad = FusedLinearsSpec { original_dims: vec![4], ..spec };
    assert!(bad.validate(2).unwrap_err().to_string().contains("original_dims"));
}
