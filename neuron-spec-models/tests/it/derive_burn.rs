//! `#[derive(CustomModule)]` alongside burn's `Module` derive: `#[module(skip)]` fields and burn constants
//! are out of the HF tree, and the pair compiles without warnings. (Moved here from neuron-spec-derive's
//! trybuild pass cases, which build without burn.)
#![deny(warnings)]

use burn::module::Module;
use burn::tensor::Device;
use indexmap::IndexMap;
use neuron_spec::spec::contract::{join_path, CustomModule, FusedLinearLayer, TpContext};
use neuron_spec::spec::ModelWeightTransformationSpecs;
use neuron_spec::{FuseAxis, FusedLinearsSpec, ParameterMetadata, Result, Spec, StateDict, TensorSource};

/// A burn module standing in for a parallel linear.
#[derive(Module, Debug)]
struct BurnLinear {
    weight: burn::module::Param<burn::tensor::Tensor<2>>,
    #[module(skip)]
    tp: TpContext,
}

impl CustomModule for BurnLinear {
    fn collect_specs(&self, _: &str, _: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        Ok(())
    }
    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        out.insert(join_path(prefix, "weight"), ParameterMetadata::parallel(0, 1, self.tp.size));
        Ok(())
    }
    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        out.push(self.tp);
    }
    fn load_rank_tensors(self, _: &str, _: &dyn TensorSource, _: &Device) -> Result<Self> {
        Ok(self)
    }
    fn save_rank_tensors(&self, _: &str, _: &mut StateDict) -> Result<()> {
        Ok(())
    }
}

impl FusedLinearLayer for BurnLinear {
    fn fused_linears_spec(&self, fused_linear_name: &str, linear_names: &[&str]) -> Result<Spec> {
        Ok(Spec::FusedLinears(FusedLinearsSpec {
            fused_linear_name: fused_linear_name.into(),
            linear_names: linear_names.iter().map(|n| n.to_string()).collect(),
            bias: false,
            fuse_axis: FuseAxis::Column,
            original_dims: vec![2; linear_names.len()],
            tp_size: self.tp.size,
            peft_type: None,
            packed_linear_name: None,
        }))
    }
}

#[derive(Debug, Clone)]
struct MlpConfig {
    act: String,
}

#[derive(Module, Debug, neuron_spec::CustomModule)]
struct Mlp {
    #[fused_linears(gate_proj, up_proj)]
    gate_up_proj: BurnLinear,
    down_proj: BurnLinear,
    #[module(skip)]
    config: MlpConfig,
    hidden_size: usize,
}

fn linear(device: &Device) -> BurnLinear {
    let weight = burn::tensor::Tensor::<2>::zeros([2, 2], device);
    BurnLinear { weight: burn::module::Param::from_tensor(weight), tp: TpContext { size: 1, rank: 0 } }
}

#[test]
fn burn_module_skip_and_constants_are_out_of_the_hf_tree() {
    let device = Device::default();
    let mlp = Mlp {
        gate_up_proj: linear(&device),
        down_proj: linear(&device),
        config: MlpConfig { act: "silu".into() },
        hidden_size: 2,
    };
    assert_eq!(mlp.config.act, "silu");
    assert_eq!(mlp.hidden_size, 2);
    let metadata = mlp.create_parameter_metadata().unwrap();
    let names: Vec<&str> = metadata.parameters.keys().map(String::as_str).collect();
    assert_eq!(names, ["down_proj.weight", "gate_up_proj.weight"]);
    assert_eq!(metadata.model_weight_transformation_specs.len(), 1);
}
