//! [`HfRankStore`]: burn-store's `ModuleStore` over an HF checkpoint at one TP size and rank, so that
//! `model.load_from(&mut store)` loads a rank and `model.save_into(&mut store)` writes one.
//!
//! # Path mapping
//!
//! Model field names follow HF names, so a burn parameter path is the HF rank-local name except for:
//! * a `Linear` inside a [`ColumnParallelLinear`](super::ColumnParallelLinear) or
//!   [`RowParallelLinear`](super::RowParallelLinear): burn's `…gate_up_proj.linear.weight` is HF's
//!   `…gate_up_proj.weight` (the `linear` field is dropped); likewise `.bias`;
//! * every linear weight (burn `Linear.weight`, the GQA layer's `weight_*`): burn holds `[in, out]`, HF
//!   `[out, in]`, so tensors are transposed on the way in and out;
//! * burn's `RmsNorm.gamma` is HF's `weight`.
//!
//! Loading adapts the HF checkpoint with the model's own specs and parameter metadata (captured by
//! [`HfRankStore::for_model`]), converts to f32 and checks every shape before applying anything. Saving
//! collects F32 rank tensors named by HF path ([`HfRankStore::saved`]), and writes them to a safetensors
//! rank file when [`HfRankStore::with_output`] is set.

use super::{tensor_to_f32, transpose_2d};
use crate::error::{Error, Result};
use crate::format::write_state_dict;
use crate::spec::compile::{adapt_state_dict, PlanOptions};
use crate::spec::contract::{CustomModule, TpContext};
use crate::spec::metadata::CheckpointMetadata;
use crate::tensor::TensorSource;
use crate::tensor::{HostTensor, StateDict};
use burn::module::{ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{bridge, ApplyResult, ModuleSnapshot, ModuleStore};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Errors of [`HfRankStore`]: the crate's own error.
pub type HfRankStoreError = Error;

/// A `ModuleStore` for one TP rank of an HF checkpoint (see the module docs for the path mapping).
pub struct HfRankStore<'a> {
    source: Option<&'a dyn TensorSource>,
    metadata: CheckpointMetadata,
    tp: TpContext,
    opts: PlanOptions,
    output: Option<PathBuf>,
    saved: StateDict,
    cache: Option<BTreeMap<String, PackTensor>>,
}

/// One float parameter met while walking a module.
struct Visited {
    path: Vec<String>,
    containers: Vec<String>,
    shape: Vec<usize>,
    values: Option<Vec<f32>>,
}

/// Records the path, owning module types and shape (and, when saving, the values) of every float parameter.
struct Walker {
    path: Vec<String>,
    containers: Vec<String>,
    read_values: bool,
    found: Vec<Visited>,
    error: Option<Error>,
}

impl ModuleVisitor for Walker {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // LoRA factors are not HF checkpoint weights: adapters load through `load_rank_tensors`.
        if self.containers.iter().any(|c| c == "Struct:LoraBranch" || c == "Struct:GqaLoraBranch") {
            return;
        }
        let (shape, values) = if self.read_values {
            match tensor_to_f32(param.val(), &self.path.join(".")) {
                Ok((s, v)) => (s, Some(v)),
                Err(e) => {
                    self.error.get_or_insert(e);
                    return;
                }
            }
        } else {
            (param.lazy_shape().to_vec(), None)
        };
        self.found.push(Visited { path: self.path.clone(), containers: self.containers.clone(), shape, values });
    }
}

fn walk<M: ModuleSnapshot>(module: &M, read_values: bool) -> Result<Vec<Visited>> {
    let mut w = Walker { path: vec![], containers: vec![], read_values, found: vec![], error: None };
    module.visit(&mut w);
    match w.error {
        Some(e) => Err(e),
        None => Ok(w.found),
    }
}

/// The HF name of a burn parameter, and whether its data is transposed between the two.
pub(crate) fn hf_name(path: &[String], containers: &[String]) -> (String, bool) {
    // A burn enum module adds its variant name as a path segment; HF paths have none.
    let (path, containers): (Vec<String>, Vec<String>) = path
        .iter()
        .zip(containers)
        .filter(|(_, c)| !c.starts_with("Enum:"))
        .map(|(p, c)| (p.clone(), c.clone()))
        .unzip();
    let n = path.len();
    let owner = containers.last().map(String::as_str).unwrap_or("");
    let parent = if n >= 2 { containers.get(n - 2).map(String::as_str).unwrap_or("") } else { "" };
    let param = path.last().map(String::as_str).unwrap_or("");
    let mut p: Vec<&str> = path.iter().map(String::as_str).collect();
    let mut transpose = false;
    match owner {
        "Struct:Linear" => {
            if matches!(parent, "Struct:ColumnParallelLinear" | "Struct:RowParallelLinear") && n >= 2 {
                p.remove(n - 2);
            }
            transpose = param == "weight";
        }
        "Struct:GqaQkvColumnParallelLinear" => transpose = param.starts_with("weight_"),
        "Struct:RmsNorm" | "Struct:LayerNorm" | "Struct:GroupNorm" | "Struct:InstanceNorm" | "Struct:PRelu"
            if matches!(param, "gamma" | "beta" | "alpha") =>
        {
            if let Some(l) = p.last_mut() {
                *l = if param == "beta" { "bias" } else { "weight" };
            }
        }
        _ => {}
    }
    (p.join("."), transpose)
}

/// HF orientation of a burn shape.
fn hf_shape(shape: &[usize], transpose: bool) -> Vec<usize> {
    if transpose && shape.len() == 2 {
        vec![shape[1], shape[0]]
    } else {
        shape.to_vec()
    }
}

impl<'a> HfRankStore<'a> {
    /// A store over `source` (an HF checkpoint) laid out by `metadata` for rank `tp.rank` of `tp.size`.
    pub fn new(source: &'a dyn TensorSource, metadata: CheckpointMetadata, tp: TpContext) -> Self {
        Self {
            source: Some(source),
            metadata,
            tp,
            opts: PlanOptions::default(),
            output: None,
            saved: StateDict::new(),
            cache: None,
        }
    }

    /// A store for `model`'s layout and TP context (its specs and parameter metadata).
    pub fn for_model<M: CustomModule>(model: &M, source: &'a dyn TensorSource) -> Result<Self> {
        Ok(Self::new(source, model.create_parameter_metadata()?, model.tp_context()?))
    }

    /// A store that only saves (no checkpoint to load from).
    pub fn for_saving<M: CustomModule>(model: &M) -> Result<Self> {
        Ok(Self {
            source: None,
            metadata: model.create_parameter_metadata()?,
            tp: model.tp_context()?,
            opts: PlanOptions::default(),
            output: None,
            saved: StateDict::new(),
            cache: None,
        })
    }

    /// Planning options (e.g. accept checkpoint tensors the model does not use).
    pub fn with_plan_options(mut self, opts: PlanOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Also write saved rank tensors to this safetensors file.
    pub fn with_output(mut self, path: impl Into<PathBuf>) -> Self {
        self.output = Some(path.into());
        self
    }

    /// The metadata the store lays the rank out with.
    pub fn metadata(&self) -> &CheckpointMetadata {
        &self.metadata
    }

    /// The rank tensors of the last save, by HF name, F32.
    pub fn saved(&self) -> &StateDict {
        &self.saved
    }

    fn source(&self) -> Result<&'a dyn TensorSource> {
        self.source.ok_or_else(|| {
            Error::Argument("this HfRankStore was made for saving only; it has no checkpoint to load".into())
        })
    }

    /// This rank's tensors, adapted from the checkpoint (HF names and orientation, source dtype).
    fn local(&self) -> Result<StateDict> {
        adapt_state_dict(&self.metadata, self.source()?, self.tp.size, self.tp.rank, self.opts)
    }

    fn ensure_cache(&mut self) -> Result<&BTreeMap<String, PackTensor>> {
        if self.cache.is_none() {
            let mut map = BTreeMap::new();
            let tensors: Vec<(String, HostTensor)> = if self.source.is_some() {
                self.local()?.into_iter().collect()
            } else {
                self.saved.clone().into_iter().collect()
            };
            for (name, t) in tensors {
                let data = TensorData::new(t.to_f32_vec(), t.shape().to_vec());
                map.insert(name.clone(), bridge::from_data(data, name, None));
            }
            self.cache = Some(map);
        }
        self.cache.as_ref().ok_or_else(|| Error::Plan("tensor cache".into()))
    }
}

impl ModuleStore for HfRankStore<'_> {
    type Error = Error;

    fn collect_from<M: ModuleSnapshot>(&mut self, module: &M) -> Result<()> {
        let mut out = StateDict::new();
        for v in walk(module, true)? {
            let (name, transpose) = hf_name(&v.path, &v.containers);
            let values = v.values.unwrap_or_default();
            let values =
                if transpose && v.shape.len() == 2 { transpose_2d(&values, v.shape[0], v.shape[1])? } else { values };
            out.insert(name, HostTensor::from_f32(hf_shape(&v.shape, transpose), &values)?);
        }
        if let Some(path) = &self.output {
            write_state_dict(path, &out)?;
        }
        self.saved = out;
        self.cache = None;
        Ok(())
    }

    fn apply_to<M: ModuleSnapshot>(&mut self, module: &mut M) -> Result<ApplyResult> {
        let local = self.local()?;
        let mut tensors = Vec::new();
        let mut missing = Vec::new();
        let mut used = std::collections::HashSet::new();
        for v in walk(module, false)? {
            let (name, transpose) = hf_name(&v.path, &v.containers);
            let Some(t) = local.get(&name) else {
                missing.push(name);
                continue;
            };
            let expected = hf_shape(&v.shape, transpose);
            if t.shape() != expected.as_slice() {
                return Err(Error::ShapeMismatch { tensor: name, expected, found: t.shape().to_vec(), file: None });
            }
            let values = t.to_f32_vec();
            let values = if transpose { transpose_2d(&values, expected[0], expected[1])? } else { values };
            tensors.push(bridge::from_data(TensorData::new(values, v.shape.clone()), v.path.join("."), None));
            used.insert(name);
        }
        let unexpected: Vec<String> = local.keys().filter(|n| !used.contains(*n)).cloned().collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            let c: Vec<&str> = local.keys().map(String::as_str).collect();
            return Err(Error::key_mismatch(
                format!("tp rank {} of {}", self.tp.rank, self.tp.size),
                missing,
                unexpected,
                &c,
            ));
        }
        let result = module.apply(tensors, None, None, false);
        if !result.errors.is_empty() || !result.missing.is_empty() {
            return Err(Error::Checkpoint(format!("applying rank tensors: {result}")));
        }
        Ok(result)
    }

    fn get_tensor(&mut self, name: &str) -> Result<Option<&PackTensor>> {
        Ok(self.ensure_cache()?.get(name))
    }

    fn get_all_tensors(&mut self) -> Result<&BTreeMap<String, PackTensor>> {
        self.ensure_cache()
    }

    fn keys(&mut self) -> Result<Vec<String>> {
        Ok(self.ensure_cache()?.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn burn_paths_map_to_hf_names() {
        let c = s(&["Struct:M", "Struct:Mlp", "Struct:ColumnParallelLinear", "Struct:Linear"]);
        assert_eq!(
            hf_name(&s(&["model", "mlp", "gate_up_proj", "linear", "weight"])[1..], &c),
            ("mlp.gate_up_proj.weight".into(), true)
        );
        assert_eq!(
            hf_name(&s(&["mlp", "gate_up_proj", "linear", "bias"]), &c),
            ("mlp.gate_up_proj.bias".into(), false)
        );
        let c = s(&["Struct:M", "Struct:RmsNorm"]);
        assert_eq!(hf_name(&s(&["norm", "gamma"]), &c), ("norm.weight".into(), false));
        let c = s(&["Struct:A", "Struct:GqaQkvColumnParallelLinear"]);
        assert_eq!(hf_name(&s(&["qkv_proj", "weight_qkv"]), &c), ("qkv_proj.weight_qkv".into(), true));
        assert_eq!(hf_name(&s(&["qkv_proj", "bias_q"]), &c), ("qkv_proj.bias_q".into(), false));
        // A plain burn Linear keeps its path but is still transposed.
        let c = s(&["Struct:M", "Struct:Linear"]);
        assert_eq!(hf_name(&s(&["head", "weight"]), &c), ("head.weight".into(), true));
    }
}
