//! burn's `RmsNorm` as a replicated leaf: HF's `weight` is burn's `gamma`.

use super::{load_same, pname, replicated_meta, save_same};
use crate::error::Result;
use crate::spec::contract::{CustomModule, TpContext};
use crate::spec::metadata::ParameterMetadata;
use crate::spec::ModelWeightTransformationSpecs;
use crate::tensor::StateDict;
use crate::tensor::TensorSource;
use burn::nn::RmsNorm;
use burn::tensor::Device;
use indexmap::IndexMap;

impl CustomModule for RmsNorm {
    fn collect_specs(&self, _prefix: &str, _out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        Ok(())
    }

    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        out.insert(pname(prefix, "weight"), replicated_meta(self.gamma.lazy_shape().to_vec()));
        Ok(())
    }

    /// Replicated: no TP context of its own.
    fn collect_tp_contexts(&self, _out: &mut Vec<TpContext>) {}

    fn load_rank_tensors(mut self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        let [d] = self.gamma.lazy_shape().dims();
        self.gamma = load_same(src, &pname(prefix, "weight"), &self.gamma, [d], device)?;
        Ok(self)
    }

    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        save_same(&self.gamma, &pname(prefix, "weight"), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::HostTensor;
    use burn::nn::RmsNormConfig;

    #[test]
    fn hf_weight_is_burn_gamma_and_bf16_is_widened() {
        let d = Device::default();
        let norm = RmsNormConfig::new(3).init(&d);
        let mut src = StateDict::new();
        let bf: Vec<u8> = [1.5f32, -2.0, 0.25].iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect();
        src.insert("n.weight".into(), HostTensor::new(crate::tensor::DType::BF16, vec![3], bf).unwrap());
        let norm = norm.load_rank_tensors("n", &src, &d).unwrap();
        let mut out = StateDict::new();
        norm.save_rank_tensors("n", &mut out).unwrap();
        assert_eq!(out["n.weight"], HostTensor::from_f32(vec![3], &[1.5, -2.0, 0.25]).unwrap());
        let mut m = IndexMap::new();
        norm.collect_parameter_metadata("n", &mut m).unwrap();
        assert!(!m["n.weight"].tensor_model_parallel);
    }
}
