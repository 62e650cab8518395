//! Plans from arbitrary spec fields: a `GqaQkvColumnParallelLinearSpec` and a `FusedLinearsSpec` built from
//! fuzzer-chosen numbers are validated, then planned for every rank against a state dict whose shapes match
//! what the spec says (shapes only when large). Nothing may panic; when everything is accepted and small,
//! sharding then consolidating is the identity.

use arbitrary::Arbitrary;
use indexmap::IndexMap;
use neuron_spec::spec::compile::{adapt_state_dict, plan_rank, to_original_weights, PlanOptions};
use neuron_spec::spec::metadata::ParameterMetadata;
use neuron_spec::spec::{
    FuseAxis, FusedLinearsSpec, GqaQkvColumnParallelLinearSpec, ModelWeightTransformationSpecs, Spec,
};
use neuron_spec::{CheckpointMetadata, DType, HostTensor, StateDict, TensorInfo, TensorSource};

/// Raw spec fields: mostly invalid, to check that validation and planning reject instead of panicking.
#[derive(Debug, Arbitrary)]
struct Gqa {
    num_attention_heads: u64,
    num_key_value_heads: u64,
    kv_size_multiplier: u64,
    q_output_size_per_partition: u64,
    kv_output_size_per_partition: u64,
    fuse_qkv: bool,
    bias: bool,
    qkv_bias: Option<bool>,
    o_bias: Option<bool>,
    tp_size: u64,
}

#[derive(Debug, Arbitrary)]
struct Fused {
    members: Vec<(u8, u64)>,
    bias: bool,
    row: bool,
    tp_size: u64,
}

/// Small, mostly valid configurations (heads a multiple of tp, dims multiples of tp), to reach the round trip;
/// `multiplier` tries kv multipliers other than the reference's, which validation must sort out.
#[derive(Debug, Arbitrary)]
struct SmallGqa {
    kv: u8,
    group: u8,
    head_dim: u8,
    fuse_qkv: bool,
    qkv_bias: bool,
    o_bias: bool,
    multiplier: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct SmallFused {
    members: Vec<u8>,
    bias: bool,
    row: bool,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Raw { tp: u64, gqa: Option<Gqa>, fused: Option<Fused>, hidden: u8 },
    Small { tp_pow: u8, gqa: Option<SmallGqa>, fused: Option<SmallFused>, hidden: u8 },
}

fn us(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

/// Shapes only: lets huge (but consistent) specs be planned without allocating their tensors.
struct Shapes(IndexMap<String, TensorInfo>);

impl TensorSource for Shapes {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.0.get(name).cloned()
    }
    fn tensor(&self, name: &str) -> neuron_spec::Result<HostTensor> {
        Err(neuron_spec::Error::Invalid(format!("{name}: shape-only source")))
    }
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

fn add(shapes: &mut IndexMap<String, TensorInfo>, name: String, shape: Vec<usize>) {
    shapes.insert(name.clone(), TensorInfo { name, dtype: DType::F32, shape });
}

fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d))
}

fn raw_gqa(g: &Gqa) -> GqaQkvColumnParallelLinearSpec {
    GqaQkvColumnParallelLinearSpec {
        gqa_qkv_projection_name: "qkv_proj".into(),
        query_projection_name: "q_proj".into(),
        key_projection_name: "k_proj".into(),
        value_projection_name: "v_proj".into(),
        output_projection_name: "o_proj".into(),
        num_attention_heads: us(g.num_attention_heads),
        num_key_value_heads: us(g.num_key_value_heads),
        kv_size_multiplier: us(g.kv_size_multiplier),
        q_output_size_per_partition: us(g.q_output_size_per_partition),
        kv_output_size_per_partition: us(g.kv_output_size_per_partition),
        fuse_qkv: g.fuse_qkv,
        bias: g.bias,
        tp_size: us(g.tp_size),
        qkv_bias: g.qkv_bias,
        o_bias: g.o_bias,
        peft_type: None,
        packed_projection_name: None,
    }
}

fn small_gqa(g: &SmallGqa, tp: usize) -> Option<GqaQkvColumnParallelLinearSpec> {
    let kv = usize::from(g.kv % 8) + 1;
    let mut heads = kv * (usize::from(g.group % 4) + 1);
    while heads % tp != 0 {
        heads += kv;
    }
    let hd = usize::from(g.head_dim % 4) + 1;
    let mut spec = GqaQkvColumnParallelLinearSpec::new(heads, kv, hd, g.fuse_qkv, g.qkv_bias, g.o_bias, tp).ok()?;
    if let Some(m) = g.multiplier {
        spec.kv_size_multiplier = usize::from(m % 8) + 1;
        spec.kv_output_size_per_partition = kv * spec.kv_size_multiplier * hd / tp;
    }
    Some(spec)
}

/// The target's body: `data` decoded as libFuzzer's typed targets do (`Arbitrary::arbitrary_take_rest`).
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else { return };
    let (tp, hidden, gqa, fused) = match &input {
        Input::Raw { tp, gqa, fused, hidden } => {
            let fused = fused.as_ref().map(|f| FusedLinearsSpec {
                fused_linear_name: "fused".into(),
                linear_names: f.members.iter().map(|(n, _)| format!("lin{}", n % 4)).collect(),
                bias: f.bias,
                fuse_axis: if f.row { FuseAxis::Row } else { FuseAxis::Column },
                original_dims: f.members.iter().map(|(_, d)| us(*d)).collect(),
                tp_size: us(f.tp_size),
                peft_type: None,
                packed_linear_name: None,
            });
            (us(*tp), *hidden, gqa.as_ref().map(raw_gqa), fused)
        }
        Input::Small { tp_pow, gqa, fused, hidden } => {
            let tp = 1usize << (tp_pow % 4);
            let gqa = match gqa {
                Some(g) => match small_gqa(g, tp) {
                    Some(s) => Some(s),
                    None => return,
                },
                None => None,
            };
            let fused = fused.as_ref().map(|f| FusedLinearsSpec {
                fused_linear_name: "fused".into(),
                linear_names: (0..f.members.len().min(4)).map(|i| format!("lin{i}")).collect(),
                bias: f.bias && !f.row,
                fuse_axis: if f.row { FuseAxis::Row } else { FuseAxis::Column },
                original_dims: f.members.iter().take(4).map(|d| (usize::from(d % 4) + 1) * tp).collect(),
                tp_size: tp,
                peft_type: None,
                packed_linear_name: None,
            });
            (tp, *hidden, gqa, fused)
        }
    };
    let hidden = usize::from(hidden % 4) + 1;
    let mut specs = Vec::new();
    let mut parameters = IndexMap::new();
    let mut shapes = IndexMap::new();
    let par = |dim, stride| ParameterMetadata::parallel(dim, stride, tp);

    if let Some(spec) = gqa {
        let _ = spec.validate(tp);
        let _ = spec.for_tp(tp.saturating_add(1));
        let hd = spec.head_dim().unwrap_or(1).max(1);
        let (h, k) = (spec.num_attention_heads, spec.num_key_value_heads);
        let m = "m.attn";
        let (Some(q_rows), Some(kv_rows)) = (h.checked_mul(hd), k.checked_mul(hd)) else { return };
        let mut params = vec!["weight"];
        if spec.has_qkv_bias() {
            params.push("bias");
        }
        for p in &params {
            let shape = |rows: usize| if *p == "weight" { vec![rows, hidden] } else { vec![rows] };
            add(&mut shapes, format!("{m}.q_proj.{p}"), shape(q_rows));
            add(&mut shapes, format!("{m}.k_proj.{p}"), shape(kv_rows));
            add(&mut shapes, format!("{m}.v_proj.{p}"), shape(kv_rows));
            if spec.fuse_qkv {
                parameters.insert(format!("{m}.qkv_proj.{p}_qkv"), ParameterMetadata::replicated());
            } else {
                for s in ["q", "k", "v"] {
                    parameters.insert(format!("{m}.qkv_proj.{p}_{s}"), par(0, 1));
                }
            }
        }
        add(&mut shapes, format!("{m}.o_proj.weight"), vec![hidden, q_rows]);
        parameters.insert(format!("{m}.o_proj.weight"), par(1, 1));
        if spec.has_o_bias() {
            add(&mut shapes, format!("{m}.o_proj.bias"), vec![hidden]);
            parameters.insert(format!("{m}.o_proj.bias"), ParameterMetadata::replicated());
        }
        specs.push(ModelWeightTransformationSpecs {
            module_fully_qualified_name: m.into(),
            specs: vec![Spec::GqaQkv(spec)],
        });
    }

    if let Some(spec) = fused {
        let _ = spec.validate(tp);
        let row = spec.fuse_axis == FuseAxis::Row;
        let m = "m.mlp";
        for (n, d) in spec.linear_names.iter().zip(&spec.original_dims) {
            let shape = if row { vec![hidden, *d] } else { vec![*d, hidden] };
            add(&mut shapes, format!("{m}.{n}.weight"), shape);
            if spec.bias {
                add(&mut shapes, format!("{m}.{n}.bias"), vec![*d]);
            }
        }
        let stride = spec.linear_names.len().max(1);
        parameters.insert(format!("{m}.fused.weight"), par(spec.fuse_axis.axis(), stride));
        if spec.bias {
            parameters.insert(format!("{m}.fused.bias"), par(0, stride));
        }
        specs.push(ModelWeightTransformationSpecs {
            module_fully_qualified_name: m.into(),
            specs: vec![Spec::FusedLinears(spec)],
        });
    }

    let meta = CheckpointMetadata {
        format_version: Some(neuron_spec::spec::metadata::FORMAT_VERSION),
        tp_size: Some(tp),
        parameters,
        model_weight_transformation_specs: specs,
        rank_files: vec![],
    };
    let _ = meta.to_json();

    // Small enough to hold in memory: real tensors and the round trip.
    let total = shapes.values().try_fold(0usize, |a, i| numel(&i.shape).and_then(|n| a.checked_add(n)));
    if total.is_some_and(|t| t <= 1 << 16) {
        if tp == 0 || tp > 64 {
            let _ = plan_rank(&meta, &Shapes(shapes), tp, 0, PlanOptions::default());
            return;
        }
        let mut sd = StateDict::new();
        let mut next = 0f32;
        for (name, info) in &shapes {
            let n = numel(&info.shape).unwrap_or(0);
            let v: Vec<f32> = (0..n).map(|i| next + i as f32).collect();
            next += n as f32;
            sd.insert(name.clone(), HostTensor::from_f32(info.shape.clone(), &v).expect("consistent tensor"));
        }
        let mut ranks = Vec::new();
        for r in 0..tp {
            match adapt_state_dict(&meta, &sd, tp, r, PlanOptions::default()) {
                Ok(local) => ranks.push(local),
                Err(_) => return,
            }
        }
        let sources: Vec<&dyn TensorSource> = ranks.iter().map(|r| r as &dyn TensorSource).collect();
        let back = to_original_weights(&meta, &sources).expect("consolidating what was just sharded");
        assert_eq!(back.len(), sd.len(), "tensor count after the round trip");
        for (name, t) in &sd {
            assert!(back.get(name) == Some(t), "{name} changed in the round trip");
        }
    } else {
        // Large: plan a few ranks from shapes alone.
        let src = Shapes(shapes);
        for r in [0, 1, tp.saturating_sub(1)] {
            let _ = plan_rank(&meta, &src, tp, r, PlanOptions::default());
        }
    }
}
