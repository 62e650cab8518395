// Mock layers for the derive's tests: they return real specs and parameter names but hold no tensors,
// so the tests do not depend on the real parallel layers. Included by `tests/it/main.rs` (as a module)
// and by the trybuild pass cases (`include!`), hence no inner attributes or doc comments here.

use indexmap::IndexMap;
use neuron_spec::spec::contract::Device;
use neuron_spec::spec::contract::{join_path, CustomModule, FusedLinearLayer, GqaQkvLayer, TpContext};
use neuron_spec::spec::ModelWeightTransformationSpecs;
use neuron_spec::{
    DType, FuseAxis, FusedLinearsSpec, GqaQkvColumnParallelLinearSpec, HostTensor, ParameterMetadata, Result, Spec,
    StateDict, TensorSource,
};

/// A column-parallel linear with one `weight`; it can stand for fused linears.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub tp: TpContext,
    /// The prefix `load_rank_tensors` was called with.
    pub loaded_from: Option<String>,
}

/// A GQA q/k/v layer with fused `weight_qkv`, built for 8 heads, 2 kv heads, head size 8.
#[derive(Debug, Clone, PartialEq)]
pub struct Qkv {
    pub tp: TpContext,
    pub loaded_from: Option<String>,
}

impl Linear {
    pub fn new(tp: usize) -> Self {
        Self { tp: TpContext { size: tp, rank: 0 }, loaded_from: None }
    }
}

impl Qkv {
    pub fn new(tp: usize) -> Self {
        Self { tp: TpContext { size: tp, rank: 0 }, loaded_from: None }
    }
}

/// The CustomModule of a leaf layer whose parameters are `params` (sharded on dim 0).
macro_rules! leaf_module {
    ($ty:ty, $($param:literal),+) => {
        impl CustomModule for $ty {
            fn collect_specs(&self, _: &str, _: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
                Ok(())
            }
            fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
                $(out.insert(join_path(prefix, $param), ParameterMetadata::parallel(0, 1, self.tp.size));)+
                Ok(())
            }
            fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
                out.push(self.tp);
            }
            fn load_rank_tensors(mut self, prefix: &str, src: &dyn TensorSource, _: &Device) -> Result<Self> {
                $(src.tensor(&join_path(prefix, $param))?;)+
                self.loaded_from = Some(prefix.to_string());
                Ok(self)
            }
            fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
                $(out.insert(join_path(prefix, $param), HostTensor::zeros(DType::F32, vec![1]));)+
                Ok(())
            }
        }
    };
}

leaf_module!(Linear, "weight");
leaf_module!(Qkv, "weight_qkv");

impl FusedLinearLayer for Linear {
    fn fused_linears_spec(&self, fused_linear_name: &str, linear_names: &[&str]) -> Result<Spec> {
        Ok(Spec::FusedLinears(FusedLinearsSpec {
            fused_linear_name: fused_linear_name.to_string(),
            linear_names: linear_names.iter().map(|n| n.to_string()).collect(),
            bias: false,
            fuse_axis: FuseAxis::Column,
            original_dims: vec![16; linear_names.len()],
            tp_size: self.tp.size,
            peft_type: None,
            packed_linear_name: None,
        }))
    }
}

impl GqaQkvLayer for Qkv {
    fn gqa_qkv_spec(&self, name: &str, q: &str, k: &str, v: &str, o: &str) -> Result<Spec> {
        let mut spec = GqaQkvColumnParallelLinearSpec::new(8, 2, 8, true, false, false, self.tp.size)?;
        spec.gqa_qkv_projection_name = name.to_string();
        spec.query_projection_name = q.to_string();
        spec.key_projection_name = k.to_string();
        spec.value_projection_name = v.to_string();
        spec.output_projection_name = o.to_string();
        Ok(Spec::GqaQkv(spec))
    }
}

/// Something that is not a module (a cache, a config): never recursed into.
#[derive(Debug, Clone, PartialEq)]
pub struct NotAModule {
    pub value: u32,
}
