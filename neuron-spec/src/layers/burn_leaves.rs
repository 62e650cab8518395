//! burn's own parameter-holding modules as replicated leaves of a model tree, under their PyTorch/HF names:
//! `Linear` (`weight` stored `[out, in]` as in HF, so transposed like the parallel layers), `Embedding`,
//! `LayerNorm` / `GroupNorm` / `InstanceNorm` (`gamma` → `weight`, `beta` → `bias`), `PRelu` (`alpha` →
//! `weight`) and the convolutions (`weight`, `bias`; burn and PyTorch agree on their layout). `RmsNorm` is in
//! `rms_norm.rs`. Every tensor is copied whole to every rank. None has a LoRA branch: LoRA factors for one of
//! them (e.g. an adapter on a MoE router, `mlp.gate`) are refused by name, never dropped.

use super::{load_linear_weight, load_same, pname, replicated_meta, save_linear_weight, save_same};
use crate::error::{Error, Result};
use crate::spec::contract::{CustomModule, TpContext};
use crate::spec::metadata::ParameterMetadata;
use crate::spec::ModelWeightTransformationSpecs;
use crate::tensor::StateDict;
use crate::tensor::TensorSource;
use burn::module::Param;
use burn::nn::conv::{Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d};
use burn::nn::{Embedding, GroupNorm, InstanceNorm, LayerNorm, Linear, PRelu};
use burn::tensor::{Device, Tensor};
use indexmap::IndexMap;

fn meta<const D: usize>(p: &Param<Tensor<D>>, name: String, out: &mut IndexMap<String, ParameterMetadata>) {
    out.insert(name, replicated_meta(p.lazy_shape().to_vec()));
}

fn load<const D: usize>(
    p: &Param<Tensor<D>>,
    src: &dyn TensorSource,
    name: &str,
    device: &Device,
) -> Result<Param<Tensor<D>>> {
    let shape: [usize; D] = p.lazy_shape().dims();
    load_same(src, name, p, shape, device)
}

/// Refuses LoRA factors the source holds for the leaf at `prefix` (it would load its weight and drop them:
/// peft's output would differ with no error).
fn refuse_lora(prefix: &str, src: &dyn TensorSource, kind: &str) -> Result<()> {
    for adapter in src.lora_adapters() {
        if src.info(&format!("{prefix}.lora_A.{adapter}.weight")).is_some() {
            return Err(Error::Lora {
                adapter,
                reason: format!(
                    "it has LoRA factors for {prefix}, a replicated {kind} without a LoRA branch (e.g. a MoE \
                     router): LoRA on it is not implemented"
                ),
            });
        }
    }
    Ok(())
}

/// Implements `CustomModule` for a burn module whose parameters keep their layout: `(field, HF name)` pairs
/// for required parameters, then `opt (field, HF name)` for optional ones.
macro_rules! same_layout_leaf {
    ($ty:ty, [$(($f:ident, $n:literal)),*], [$(($of:ident, $on:literal)),*]) => {
        impl CustomModule for $ty {
            fn collect_specs(&self, _: &str, _: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
                Ok(())
            }
            fn collect_parameter_metadata(
                &self,
                prefix: &str,
                out: &mut IndexMap<String, ParameterMetadata>,
            ) -> Result<()> {
                $(meta(&self.$f, pname(prefix, $n), out);)*
                $(if let Some(p) = &self.$of { meta(p, pname(prefix, $on), out); })*
                Ok(())
            }
            /// Replicated: no TP context of its own.
            fn collect_tp_contexts(&self, _: &mut Vec<TpContext>) {}
            #[allow(unused_mut)]
            fn load_rank_tensors(mut self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
                refuse_lora(prefix, src, stringify!($ty))?;
                $(self.$f = load(&self.$f, src, &pname(prefix, $n), device)?;)*
                $(if let Some(p) = &self.$of { self.$of = Some(load(p, src, &pname(prefix, $on), device)?); })*
                Ok(self)
            }
            fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
                $(save_same(&self.$f, &pname(prefix, $n), out)?;)*
                $(if let Some(p) = &self.$of { save_same(p, &pname(prefix, $on), out)?; })*
                Ok(())
            }
        }
    };
}

same_layout_leaf!(Embedding, [(weight, "weight")], []);
same_layout_leaf!(LayerNorm, [(gamma, "weight")], [(beta, "bias")]);
same_layout_leaf!(GroupNorm, [], [(gamma, "weight"), (beta, "bias")]);
same_layout_leaf!(InstanceNorm, [], [(gamma, "weight"), (beta, "bias")]);
same_layout_leaf!(PRelu, [(alpha, "weight")], []);
same_layout_leaf!(Conv1d, [(weight, "weight")], [(bias, "bias")]);
same_layout_leaf!(Conv2d, [(weight, "weight")], [(bias, "bias")]);
same_layout_leaf!(Conv3d, [(weight, "weight")], [(bias, "bias")]);
same_layout_leaf!(ConvTranspose1d, [(weight, "weight")], [(bias, "bias")]);
same_layout_leaf!(ConvTranspose2d, [(weight, "weight")], [(bias, "bias")]);
same_layout_leaf!(ConvTranspose3d, [(weight, "weight")], [(bias, "bias")]);

/// A replicated `Linear`: HF's `weight` is `[out, in]`, burn's `[in, out]`.
impl CustomModule for Linear {
    fn collect_specs(&self, _: &str, _: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        Ok(())
    }

    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        let [i, o] = self.weight.lazy_shape().dims();
        out.insert(pname(prefix, "weight"), replicated_meta(vec![o, i]));
        if let Some(b) = &self.bias {
            meta(b, pname(prefix, "bias"), out);
        }
        Ok(())
    }

    /// Replicated: no TP context of its own.
    fn collect_tp_contexts(&self, _: &mut Vec<TpContext>) {}

    fn load_rank_tensors(mut self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        refuse_lora(prefix, src, "Linear")?;
        let [i, o] = self.weight.lazy_shape().dims();
        self.weight = load_linear_weight(src, &pname(prefix, "weight"), &self.weight, o, i, device)?;
        if let Some(b) = &self.bias {
            self.bias = Some(load(b, src, &pname(prefix, "bias"), device)?);
        }
        Ok(self)
    }

    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        save_linear_weight(&self.weight, &pname(prefix, "weight"), out)?;
        if let Some(b) = &self.bias {
            save_same(b, &pname(prefix, "bias"), out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{GroupNormConfig, PReluConfig};

    fn round_trip<M: CustomModule>(m: M, src: &StateDict) -> StateDict {
        let d = Device::default();
        let m = m.load_rank_tensors("m", src, &d).unwrap();
        let mut out = StateDict::new();
        m.save_rank_tensors("m", &mut out).unwrap();
        out
    }

    #[test]
    fn conv_group_norm_and_prelu_keep_their_torch_names_and_layout() {
        let d = Device::default();
        let conv = Conv2dConfig::new([2, 3], [1, 1]).init(&d);
        let mut meta = IndexMap::new();
        conv.collect_parameter_metadata("m", &mut meta).unwrap();
        assert_eq!(meta["m.weight"].shape.as_deref(), Some(&[3, 2, 1, 1][..]));
        assert!(meta.contains_key("m.bias") && !meta["m.weight"].tensor_model_parallel);
        let mut src = StateDict::new();
        let w: Vec<f32> = (0..6).map(|i| i as f32).collect();
        src.insert("m.weight".into(), crate::tensor::HostTensor::from_f32(vec![3, 2, 1, 1], &w).unwrap());
        src.insert("m.bias".into(), crate::tensor::HostTensor::from_f32(vec![3], &[1., 2., 3.]).unwrap());
        assert_eq!(round_trip(conv, &src), src);
        let gn = GroupNormConfig::new(1, 2).init(&d);
        let mut src = StateDict::new();
        src.insert("m.weight".into(), crate::tensor::HostTensor::from_f32(vec![2], &[2., 3.]).unwrap());
        src.insert("m.bias".into(), crate::tensor::HostTensor::from_f32(vec![2], &[0.5, 0.25]).unwrap());
        assert_eq!(round_trip(gn, &src), src);
        let prelu = PReluConfig::new().init(&d);
        let mut src = StateDict::new();
        src.insert("m.weight".into(), crate::tensor::HostTensor::from_f32(vec![1], &[0.2]).unwrap());
        assert_eq!(round_trip(prelu, &src), src);
    }
}
