//! The module-tree contract that `#[derive(CustomModule)]` implements: specs, parameter metadata and
//! rank-local tensors of a burn model, with fully qualified HF paths.
//!
//! TP size and rank live in the layers (explicit values, never global state), and every number a spec
//! needs (head counts, sizes, biases) is read from the layer instances.

use crate::error::{Error, Result};
use crate::spec::metadata::{CheckpointMetadata, ParameterMetadata, FORMAT_VERSION};
use crate::spec::{ModelWeightTransformationSpecs, Spec};
use crate::tensor::StateDict;
use crate::tensor::TensorSource;
use indexmap::IndexMap;

/// The device tensors are loaded onto: burn's `Device` with the `burn` feature (the default).
#[cfg(feature = "burn")]
pub type Device = burn::tensor::Device;

/// Without the `burn` feature, a stand-in for burn's `Device`, so this contract (and the derive's tests,
/// which use mock layers) compiles without building burn. Code meant for both builds names
/// `neuron_spec::spec::contract::Device` and uses only `Device::default()` and references.
#[cfg(not(feature = "burn"))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Device;

/// The TP size and rank a layer was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TpContext {
    /// Number of ranks.
    pub size: usize,
    /// This rank.
    pub rank: usize,
}

impl TpContext {
    /// A checked context.
    pub fn new(size: usize, rank: usize) -> Result<Self> {
        crate::plan::split::check_tp(size, rank)?;
        Ok(Self { size, rank })
    }
}

/// `prefix.name`, or `name` at the root.
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The HF path of element `i` of a list whose first element is numbered `offset` (`#[hf(index_offset)]`):
/// `prefix.name.<offset + i>`. `offset_field` names the offset for the error when that is no valid index.
pub fn offset_index_path<O>(prefix: &str, name: &str, offset: O, i: usize, offset_field: &str) -> Result<String>
where
    O: TryInto<usize> + Copy + std::fmt::Display,
{
    let index = offset.try_into().ok().and_then(|o: usize| o.checked_add(i)).ok_or_else(|| {
        Error::spec("index_offset", offset_field, format!("{offset} + element {i} is not a valid list index"))
    })?;
    Ok(join_path(&join_path(prefix, name), &index.to_string()))
}

/// A node of a model tree that knows its HF layout. Derived for structs and enums; implemented by the parallel
/// layers and by `Vec`/`Option` of nodes. What a whole model does with its specs (load an HF checkpoint, map
/// a PEFT config) is in extension traits higher up: [`HfWeights`](crate::spec::compile::HfWeights) and
/// [`PeftConfigForModel`](crate::lora::PeftConfigForModel), both in the prelude.
pub trait CustomModule: Sized {
    /// Appends the specs of this subtree; module paths are under `prefix`.
    fn collect_specs(&self, prefix: &str, out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()>;

    /// Appends this subtree's rank-local parameters with their TP attributes.
    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()>;

    /// Appends the TP contexts of this subtree's layers.
    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>);

    /// Replaces this subtree's parameters by the rank-local tensors named `prefix.*` in `src`.
    fn load_rank_tensors(self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self>;

    /// Appends this subtree's rank-local tensors, named by HF path.
    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()>;

    /// The TP context shared by every layer (tp 1, rank 0 for a model without parallel layers).
    fn tp_context(&self) -> Result<TpContext> {
        let mut all = Vec::new();
        self.collect_tp_contexts(&mut all);
        let first = all.first().copied().unwrap_or(TpContext { size: 1, rank: 0 });
        if let Some(other) = all.iter().find(|c| **c != first) {
            return Err(Error::RanksDiffer(format!(
                "layers disagree on the TP context: tp {} rank {} vs tp {} rank {}",
                first.size, first.rank, other.size, other.rank
            )));
        }
        Ok(first)
    }

    /// Every spec of the model, with fully qualified module paths.
    fn transformation_specs(&self) -> Result<Vec<ModelWeightTransformationSpecs>> {
        let mut out = Vec::new();
        self.collect_specs("", &mut out)?;
        Ok(out)
    }

    /// The specs with module paths and PEFT types set (reference: `specialize_transformation_specs_for_model`).
    /// Paths are set as they are collected; a layer that carries LoRA adapters reports `peft_type = "lora"` in
    /// its spec (the reference's `guess_peft_type`).
    fn specialize_transformation_specs_for_model(&self) -> Result<Vec<ModelWeightTransformationSpecs>> {
        self.transformation_specs()
    }

    /// The checkpoint metadata of the base weights: parameters with TP attributes and the specs (reference:
    /// `create_parameter_metadata`). Adapters are stored apart, each with its own metadata
    /// ([`crate::lora::adapter_metadata_for_tp`]), so the specs here carry no PEFT type.
    fn create_parameter_metadata(&self) -> Result<CheckpointMetadata> {
        let mut parameters = IndexMap::new();
        self.collect_parameter_metadata("", &mut parameters)?;
        parameters.sort_keys();
        let mut specs = self.specialize_transformation_specs_for_model()?;
        for s in specs.iter_mut().flat_map(|m| m.specs.iter_mut()) {
            s.set_peft_type(None);
        }
        Ok(CheckpointMetadata {
            format_version: Some(FORMAT_VERSION),
            tp_size: Some(self.tp_context()?.size),
            parameters,
            model_weight_transformation_specs: specs,
            rank_files: vec![],
        })
    }
}

/// A layer that can stand for several fused HF linears (`#[fused_linears(...)]`).
pub trait FusedLinearLayer {
    /// The spec for this layer named `fused_linear_name`, replacing `linear_names` in order.
    fn fused_linears_spec(&self, fused_linear_name: &str, linear_names: &[&str]) -> Result<Spec>;
}

/// A GQA q/k/v layer (`#[gqa_qkv(q = .., k = .., v = .., o = ..)]`).
pub trait GqaQkvLayer {
    /// The spec for this layer named `gqa_qkv_projection_name`; `o` is the sibling output projection.
    fn gqa_qkv_spec(&self, gqa_qkv_projection_name: &str, q: &str, k: &str, v: &str, o: &str) -> Result<Spec>;
}

impl<T: CustomModule> CustomModule for Vec<T> {
    fn collect_specs(&self, prefix: &str, out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        self.iter().enumerate().try_for_each(|(i, m)| m.collect_specs(&join_path(prefix, &i.to_string()), out))
    }
    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        self.iter()
            .enumerate()
            .try_for_each(|(i, m)| m.collect_parameter_metadata(&join_path(prefix, &i.to_string()), out))
    }
    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        self.iter().for_each(|m| m.collect_tp_contexts(out))
    }
    fn load_rank_tensors(self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        self.into_iter()
            .enumerate()
            .map(|(i, m)| m.load_rank_tensors(&join_path(prefix, &i.to_string()), src, device))
            .collect()
    }
    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        self.iter().enumerate().try_for_each(|(i, m)| m.save_rank_tensors(&join_path(prefix, &i.to_string()), out))
    }
}

impl<T: CustomModule> CustomModule for Option<T> {
    fn collect_specs(&self, prefix: &str, out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        self.as_ref().map_or(Ok(()), |m| m.collect_specs(prefix, out))
    }
    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        self.as_ref().map_or(Ok(()), |m| m.collect_parameter_metadata(prefix, out))
    }
    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        if let Some(m) = self {
            m.collect_tp_contexts(out)
        }
    }
    fn load_rank_tensors(self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        self.map(|m| m.load_rank_tensors(prefix, src, device)).transpose()
    }
    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        self.as_ref().map_or(Ok(()), |m| m.save_rank_tensors(prefix, out))
    }
}
