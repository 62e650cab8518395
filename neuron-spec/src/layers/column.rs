//! Column-parallel linear: the output features are split across ranks (HF weight rows, dim 0).

use super::{check_fused, check_last_dim, lazy_zeros, parallel_meta, pname};
use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::plan::split::per_partition_size;
use crate::spec::contract::{CustomModule, FusedLinearLayer, TpContext};
use crate::spec::metadata::ParameterMetadata;
use crate::spec::{FuseAxis, ModelWeightTransformationSpecs, Spec};
use crate::tensor::StateDict;
use crate::tensor::TensorSource;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};
use indexmap::IndexMap;

/// How to build a [`ColumnParallelLinear`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnParallelLinearConfig {
    /// Input features.
    pub in_features: usize,
    /// Global output features (for a fused layer, the sum of its members).
    pub out_features: usize,
    /// Whether the layer has a bias (split like the outputs).
    pub bias: bool,
    /// Gather the outputs of all ranks after the matmul (an lm_head), truncating padding.
    pub gather_output: bool,
    /// For a layer standing for several fused HF linears: each member's output size, in order.
    pub fused_dims: Option<Vec<usize>>,
}

impl ColumnParallelLinearConfig {
    /// A plain layer without bias whose outputs stay split.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self { in_features, out_features, bias: false, gather_output: false, fused_dims: None }
    }

    /// Sets the bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Gathers the outputs (lm_head).
    pub fn with_gather_output(mut self, gather: bool) -> Self {
        self.gather_output = gather;
        self
    }

    /// Fuses `members` HF linears of equal size (gate_proj + up_proj: 2).
    pub fn with_fused_members(mut self, members: usize) -> Self {
        self.fused_dims = Some(self.out_features.checked_div(members).map(|d| vec![d; members]).unwrap_or_default());
        self
    }

    /// Fuses HF linears of the given output sizes.
    pub fn with_fused_dims(mut self, dims: Vec<usize>) -> Self {
        self.fused_dims = Some(dims);
        self
    }

    /// The layer of rank `tp.rank`, with lazily allocated parameters (to be loaded).
    pub fn init(&self, tp: TpContext, device: &Device) -> Result<ColumnParallelLinear> {
        let tp = TpContext::new(tp.size, tp.rank)?;
        let c = "ColumnParallelLinear";
        if self.in_features == 0 || self.out_features == 0 {
            return Err(Error::spec(
                c,
                "out_features",
                format!("sizes must be positive, got in {} out {}", self.in_features, self.out_features),
            ));
        }
        let local_out = match &self.fused_dims {
            Some(d) => {
                check_fused(c, d, self.out_features, tp.size)?;
                if self.gather_output {
                    return Err(Error::spec(
                        c,
                        "gather_output",
                        "a fused layer's gathered outputs would interleave its members",
                    ));
                }
                d.iter().map(|x| x.div_ceil(tp.size)).sum()
            }
            None => per_partition_size(self.out_features, tp.size),
        };
        let linear = Linear {
            weight: lazy_zeros([self.in_features, local_out], device),
            bias: self.bias.then(|| lazy_zeros([local_out], device)),
        };
        Ok(ColumnParallelLinear {
            linear,
            lora: Vec::new(),
            tp,
            in_features: self.in_features,
            out_features: self.out_features,
            local_out_features: local_out,
            gather_output: self.gather_output,
            fused_dims: self.fused_dims.clone(),
        })
    }
}

/// `Y = X·Wᵀ + b` with `W`'s rows (outputs) split across ranks; burn's [`Linear`] holds the local
/// `[in, out_local]` weight.
#[derive(Module, Debug)]
pub struct ColumnParallelLinear {
    /// The rank-local linear.
    pub linear: Linear,
    /// LoRA adapters (A replicated, B split like the outputs), attached by `load_rank_tensors`.
    pub lora: Vec<super::LoraBranch>,
    /// TP size and rank.
    #[module(skip)]
    pub tp: TpContext,
    /// Input features.
    #[module(skip)]
    pub in_features: usize,
    /// Global output features, unpadded.
    #[module(skip)]
    pub out_features: usize,
    /// This rank's output features (padded to `ceil(out / tp)` when unfused).
    #[module(skip)]
    pub local_out_features: usize,
    /// Whether the forward pass gathers the outputs.
    #[module(skip)]
    pub gather_output: bool,
    /// Member sizes when the layer fuses several HF linears.
    #[module(skip)]
    pub fused_dims: Option<Vec<usize>>,
}

impl ColumnParallelLinear {
    /// NxD's `partition_stride`: the number of fused members (their shards interleave), else 1.
    pub fn partition_stride(&self) -> usize {
        self.fused_dims.as_ref().map_or(1, |d| d.len().max(1))
    }

    /// Whether the layer has a bias.
    pub fn has_bias(&self) -> bool {
        self.linear.bias.is_some()
    }

    /// The local outputs, or all outputs (truncated to `out_features`) when `gather_output` is set.
    pub fn forward<const D: usize, C: Communicator>(&self, x: Tensor<D>, comm: &C) -> Result<Tensor<D>> {
        let y = self.forward_local(x, comm)?;
        if !self.gather_output {
            return Ok(y);
        }
        let y = comm.all_gather(y, D - 1)?;
        let n = y.dims()[D - 1];
        Ok(if n > self.out_features { y.narrow(D - 1, 0, self.out_features) } else { y })
    }
}

impl ColumnParallelLinear {
    /// This rank's outputs, never gathered (the vocab-parallel loss reads an lm_head's this way).
    ///
    /// For training, the replicated input passes [`copy_to_tp_region`](crate::comm::copy_to_tp_region) (its
    /// gradient is summed over ranks); a LoRA branch takes the input before that copy and copies `x·A`
    /// instead, so that A (replicated) gets the whole gradient and the input's gradient counts it once.
    pub fn forward_local<const D: usize, C: Communicator>(&self, x: Tensor<D>, comm: &C) -> Result<Tensor<D>> {
        check_last_dim(&x, self.in_features, "ColumnParallelLinear input")?;
        let xc = crate::comm::copy_to_tp_region(x.clone(), comm)?;
        let mut y =
            super::linear(xc, self.linear.weight.val(), self.linear.bias.as_ref().map(|b| b.val()), self.tp.size);
        for b in &self.lora {
            let h = crate::comm::copy_to_tp_region(b.down(x.clone()), comm)?;
            y = y + b.up(h);
        }
        Ok(y)
    }
}

impl CustomModule for ColumnParallelLinear {
    fn collect_specs(&self, _prefix: &str, _out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        Ok(())
    }

    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        let s = self.partition_stride();
        out.insert(
            pname(prefix, "weight"),
            parallel_meta(0, s, self.tp.size, vec![self.out_features, self.in_features]),
        );
        if self.has_bias() {
            out.insert(pname(prefix, "bias"), parallel_meta(0, s, self.tp.size, vec![self.out_features]));
        }
        Ok(())
    }

    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        out.push(self.tp);
    }

    fn load_rank_tensors(mut self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        (self.linear, self.lora) =
            super::load_linear_and_lora(self.linear, prefix, src, (self.local_out_features, self.in_features), device)?;
        Ok(self)
    }

    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        super::save_linear_and_lora(&self.linear, &self.lora, prefix, out)
    }
}

impl FusedLinearLayer for ColumnParallelLinear {
    fn fused_linears_spec(&self, fused_linear_name: &str, linear_names: &[&str]) -> Result<Spec> {
        super::fused_linears_spec(
            fused_linear_name,
            linear_names,
            (self.has_bias(), !self.lora.is_empty()),
            FuseAxis::Column,
            (self.fused_dims.as_deref(), self.out_features),
            self.tp.size,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::LocalCommunicator;
    use crate::tensor::HostTensor;

    #[test]
    fn loads_hf_out_in_into_burn_in_out_and_saves_it_back() {
        let d = Device::default();
        let tp = TpContext::new(1, 0).unwrap();
        let layer = ColumnParallelLinearConfig::new(3, 2).with_bias(true).init(tp, &d).unwrap();
        let mut src = StateDict::new();
        // HF [out=2, in=3]: row o holds the weights of output o.
        src.insert("p.weight".into(), HostTensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap());
        src.insert("p.bias".into(), HostTensor::from_f32(vec![2], &[0.5, -0.5]).unwrap());
        let layer = layer.load_rank_tensors("p", &src, &d).unwrap();
        assert_eq!(layer.linear.weight.val().dims(), [3, 2]);
        let (_, w) = crate::layers::tensor_to_f32(layer.linear.weight.val(), "w").unwrap();
        assert_eq!(w, vec![1., 4., 2., 5., 3., 6.]);
        // y = W x + b with x = [1, 0, 0] picks column 0 of the HF weight.
        let comm = LocalCommunicator::group(1).unwrap().remove(0);
        let x = Tensor::<2>::from_data(burn::tensor::TensorData::new(vec![1f32, 0., 0.], [1, 3]), &d);
        let (_, y) = crate::layers::tensor_to_f32(layer.forward(x, &comm).unwrap(), "y").unwrap();
        assert_eq!(y, vec![1.5, 3.5]);
        let mut saved = StateDict::new();
        layer.save_rank_tensors("p", &mut saved).unwrap();
        assert_eq!(saved, src);
    }

    #[test]
    fn wrong_or_missing_tensors_name_the_tensor_and_shapes() {
        let d = Device::default();
        let tp = TpContext::new(2, 1).unwrap();
        let layer = ColumnParallelLinearConfig::new(4, 6).init(tp, &d).unwrap();
        let mut src = StateDict::new();
        src.insert("q.weight".into(), HostTensor::from_f32(vec![2, 4], &[0.; 8]).unwrap());
        let e = layer.clone().load_rank_tensors("q", &src, &d).unwrap_err();
        assert!(
            matches!(&e, Error::ShapeMismatch { tensor, expected, found, .. }
                if tensor == "q.weight" && expected == &[3, 4] && found == &[2, 4]),
            "{e:?}"
        );
        let e = layer.load_rank_tensors("r", &src, &d).unwrap_err();
        assert!(
            matches!(&e, Error::KeyMismatch { missing, .. } if missing.iter().any(|(n, _)| n == "r.weight")),
            "{e:?}"
        );
    }

    #[test]
    fn fused_layer_has_stride_and_spec() {
        let d = Device::default();
        let layer = ColumnParallelLinearConfig::new(8, 12)
            .with_fused_members(2)
            .init(TpContext::new(2, 0).unwrap(), &d)
            .unwrap();
        let mut m = IndexMap::new();
        layer.collect_parameter_metadata("mlp.gate_up_proj", &mut m).unwrap();
        assert_eq!(m["mlp.gate_up_proj.weight"].partition_stride, Some(2));
        let Spec::FusedLinears(s) = layer.fused_linears_spec("gate_up_proj", &["gate_proj", "up_proj"]).unwrap() else {
            panic!()
        };
        assert_eq!(s.original_dims, vec![6, 6]);
        // Fused members that tp does not divide are padded per member: 3 rows each become 2 per rank.
        let padded =
            ColumnParallelLinearConfig::new(8, 6).with_fused_members(2).init(TpContext::new(2, 0).unwrap(), &d);
        assert_eq!(padded.unwrap().local_out_features, 4);
    }
}
