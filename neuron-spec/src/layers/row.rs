//! Row-parallel linear: the input features are split across ranks (HF weight columns, dim 1); the partial
//! products are summed over ranks.

use super::{check_fused, check_last_dim, lazy_zeros, parallel_meta, pname, replicated_meta};
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

/// How to build a [`RowParallelLinear`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowParallelLinearConfig {
    /// Global input features (for a fused layer, the sum of its members).
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the layer has a bias (replicated, added once after the all-reduce).
    pub bias: bool,
    /// For a layer standing for several HF linears fused along their inputs: each member's input size.
    pub fused_dims: Option<Vec<usize>>,
}

impl RowParallelLinearConfig {
    /// A layer without bias.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self { in_features, out_features, bias: false, fused_dims: None }
    }

    /// Sets the bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Fuses `members` HF linears of equal input size.
    pub fn with_fused_members(mut self, members: usize) -> Self {
        self.fused_dims = Some(self.in_features.checked_div(members).map(|d| vec![d; members]).unwrap_or_default());
        self
    }

    /// Fuses HF linears of the given input sizes.
    pub fn with_fused_dims(mut self, dims: Vec<usize>) -> Self {
        self.fused_dims = Some(dims);
        self
    }

    /// The layer of rank `tp.rank`, with lazily allocated parameters (to be loaded).
    pub fn init(&self, tp: TpContext, device: &Device) -> Result<RowParallelLinear> {
        let tp = TpContext::new(tp.size, tp.rank)?;
        let c = "RowParallelLinear";
        if self.in_features == 0 || self.out_features == 0 {
            return Err(Error::spec(
                c,
                "in_features",
                format!("sizes must be positive, got in {} out {}", self.in_features, self.out_features),
            ));
        }
        let local_in = match &self.fused_dims {
            Some(d) => {
                check_fused(c, d, self.in_features, tp.size)?;
                if self.bias {
                    return Err(Error::spec(c, "bias", "a row-fused linear has no per-member bias to split"));
                }
                d.iter().map(|x| x.div_ceil(tp.size)).sum()
            }
            None => per_partition_size(self.in_features, tp.size),
        };
        let linear = Linear {
            weight: lazy_zeros([local_in, self.out_features], device),
            bias: self.bias.then(|| lazy_zeros([self.out_features], device)),
        };
        Ok(RowParallelLinear {
            linear,
            lora: Vec::new(),
            tp,
            in_features: self.in_features,
            local_in_features: local_in,
            out_features: self.out_features,
            fused_dims: self.fused_dims.clone(),
        })
    }
}

/// `Y = Σ_ranks X_r·W_rᵀ + b`: each rank holds the columns of `W` for its slice of the inputs; the bias is
/// replicated and added once, after the all-reduce.
#[derive(Module, Debug)]
pub struct RowParallelLinear {
    /// The rank-local linear (`[in_local, out]` weight; its bias is the replicated one).
    pub linear: Linear,
    /// LoRA adapters (A split like the inputs, B replicated), attached by `load_rank_tensors`.
    pub lora: Vec<super::LoraBranch>,
    /// TP size and rank.
    #[module(skip)]
    pub tp: TpContext,
    /// Global input features, unpadded.
    #[module(skip)]
    pub in_features: usize,
    /// This rank's input features.
    #[module(skip)]
    pub local_in_features: usize,
    /// Output features.
    #[module(skip)]
    pub out_features: usize,
    /// Member sizes when the layer fuses several HF linears along their inputs.
    #[module(skip)]
    pub fused_dims: Option<Vec<usize>>,
}

impl RowParallelLinear {
    /// NxD's `partition_stride`: the number of fused members, else 1.
    pub fn partition_stride(&self) -> usize {
        self.fused_dims.as_ref().map_or(1, |d| d.len().max(1))
    }

    /// Whether the layer has a bias.
    pub fn has_bias(&self) -> bool {
        self.linear.bias.is_some()
    }

    /// `x` is this rank's slice of the inputs (a column-parallel layer's local outputs).
    pub fn forward<const D: usize, C: Communicator>(&self, x: Tensor<D>, comm: &C) -> Result<Tensor<D>> {
        check_last_dim(&x, self.local_in_features, "RowParallelLinear input")?;
        let partial = super::linear(x.clone(), self.linear.weight.val(), None, self.tp.size);
        let mut y = crate::comm::reduce_from_tp_region(partial, comm)?;
        // `x·A` is a partial sum (A holds this rank's input rows): reduced before the replicated B, so
        // that B's gradient is whole on every rank.
        for b in &self.lora {
            y = y + b.up(crate::comm::reduce_from_tp_region(b.down(x.clone()), comm)?);
        }
        Ok(match &self.linear.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        })
    }
}

impl CustomModule for RowParallelLinear {
    fn collect_specs(&self, _prefix: &str, _out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        Ok(())
    }

    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        out.insert(
            pname(prefix, "weight"),
            parallel_meta(1, self.partition_stride(), self.tp.size, vec![self.out_features, self.in_features]),
        );
        if self.has_bias() {
            out.insert(pname(prefix, "bias"), replicated_meta(vec![self.out_features]));
        }
        Ok(())
    }

    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        out.push(self.tp);
    }

    fn load_rank_tensors(mut self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        (self.linear, self.lora) =
            super::load_linear_and_lora(self.linear, prefix, src, (self.out_features, self.local_in_features), device)?;
        Ok(self)
    }

    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        super::save_linear_and_lora(&self.linear, &self.lora, prefix, out)
    }
}

impl FusedLinearLayer for RowParallelLinear {
    fn fused_linears_spec(&self, fused_linear_name: &str, linear_names: &[&str]) -> Result<Spec> {
        super::fused_linears_spec(
            fused_linear_name,
            linear_names,
            (self.has_bias(), !self.lora.is_empty()),
            FuseAxis::Row,
            (self.fused_dims.as_deref(), self.in_features),
            self.tp.size,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::LocalCommunicator;
    use crate::layers::tensor_to_f32;
    use crate::tensor::HostTensor;
    use burn::tensor::TensorData;

    #[test]
    fn two_ranks_sum_partials_and_add_the_bias_once() {
        // HF weight [out=2, in=4], bias [2]; x = [1, 2, 3, 4].
        let w = [1f32, 2., 3., 4., 5., 6., 7., 8.];
        let full = HostTensor::from_f32(vec![2, 4], &w).unwrap();
        let bias = HostTensor::from_f32(vec![2], &[100., 200.]).unwrap();
        let comms = LocalCommunicator::group(2).unwrap();
        let outs: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    let (full, bias) = (full.clone(), bias.clone());
                    s.spawn(move || {
                        let d = Device::default();
                        let r = c.context().rank;
                        let layer = RowParallelLinearConfig::new(4, 2).with_bias(true).init(c.context(), &d).unwrap();
                        let mut src = StateDict::new();
                        src.insert(
                            "o.weight".into(),
                            crate::plan::split::create_local_weight_with_padding(&full, 1, 1, 2, r).unwrap(),
                        );
                        src.insert("o.bias".into(), bias);
                        let layer = layer.load_rank_tensors("o", &src, &d).unwrap();
                        let xs = [[1f32, 2.], [3., 4.]][r].to_vec();
                        let x = Tensor::<2>::from_data(TensorData::new(xs, [1, 2]), &d);
                        tensor_to_f32(layer.forward(x, &c).unwrap(), "y").unwrap().1
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // W·x = [30, 70], + bias once.
        for o in outs {
            assert_eq!(o, vec![130., 270.]);
        }
    }
}
