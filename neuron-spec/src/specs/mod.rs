//! Transformation specs: how a custom module's weights relate to the HF weights it replaces.
//!
//! A spec is pure data. For a given TP size and rank it compiles into plans (see [`crate::plan`]); loading,
//! consolidation and the dry-run report all run those plans.

mod fused_linears;
mod gqa_qkv;
pub mod layout;

pub use fused_linears::{FuseAxis, FusedLinearsSpec};
pub use gqa_qkv::{GqaQkvColumnParallelLinearSpec, QueryOrOutput, MAX_HEADS};

use crate::error::{Error, Result};
use crate::plan::{TensorInfo, TensorPlan, TensorSource};
use serde::{Deserialize, Serialize};

/// One transformation spec, serialized as the reference's `[class_name, fields]` pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "(String, serde_json::Value)", into = "(String, serde_json::Value)")]
pub enum Spec {
    /// `FusedLinearsSpec`.
    FusedLinears(FusedLinearsSpec),
    /// `GQAQKVColumnParallelLinearSpec`.
    GqaQkv(GqaQkvColumnParallelLinearSpec),
}

impl TryFrom<(String, serde_json::Value)> for Spec {
    type Error = String;
    fn try_from((class, fields): (String, serde_json::Value)) -> std::result::Result<Self, String> {
        match class.as_str() {
            FusedLinearsSpec::CLASS_NAME => serde_json::from_value(fields).map(Spec::FusedLinears),
            GqaQkvColumnParallelLinearSpec::CLASS_NAME => serde_json::from_value(fields).map(Spec::GqaQkv),
            other => {
                return Err(format!(
                    "unknown spec class {other:?} (known: {}, {})",
                    FusedLinearsSpec::CLASS_NAME,
                    GqaQkvColumnParallelLinearSpec::CLASS_NAME
                ))
            }
        }
        .map_err(|e| format!("{class}: {e}"))
    }
}

impl From<Spec> for (String, serde_json::Value) {
    fn from(s: Spec) -> Self {
        let (name, v) = match &s {
            Spec::FusedLinears(f) => (FusedLinearsSpec::CLASS_NAME, serde_json::to_value(f)),
            Spec::GqaQkv(g) => (GqaQkvColumnParallelLinearSpec::CLASS_NAME, serde_json::to_value(g)),
        };
        (name.to_string(), v.unwrap_or(serde_json::Value::Null))
    }
}

impl Spec {
    /// The reference's class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Spec::FusedLinears(_) => FusedLinearsSpec::CLASS_NAME,
            Spec::GqaQkv(_) => GqaQkvColumnParallelLinearSpec::CLASS_NAME,
        }
    }

    /// Checks every field against `tp`, naming the field and the reason.
    pub fn validate(&self, tp: usize) -> Result<()> {
        match self {
            Spec::FusedLinears(s) => s.validate(tp),
            Spec::GqaQkv(s) => s.validate(tp),
        }
    }

    /// The TP size the spec was built for.
    pub fn tp_size(&self) -> usize {
        match self {
            Spec::FusedLinears(s) => s.tp_size,
            Spec::GqaQkv(s) => s.tp_size,
        }
    }

    /// The same spec for another TP size (tp-dependent fields recomputed).
    pub fn for_tp(&self, tp: usize) -> Result<Spec> {
        Ok(match self {
            Spec::FusedLinears(s) => Spec::FusedLinears(FusedLinearsSpec { tp_size: tp, ..s.clone() }),
            Spec::GqaQkv(s) => Spec::GqaQkv(s.for_tp(tp)?),
        })
    }

    /// Every parameter name the spec touches, local and original (reference: `get_relevant_parameter_names`).
    pub fn relevant_parameter_names(&self, module: &str) -> Vec<String> {
        let mut v = self.local_parameter_names(module);
        v.extend(self.original_parameter_names(module));
        v
    }

    /// The PEFT type of the module (`"lora"` when it carries LoRA adapters; reference: `peft_type`).
    pub fn peft_type(&self) -> Option<&str> {
        match self {
            Spec::FusedLinears(s) => s.peft_type.as_deref(),
            Spec::GqaQkv(s) => s.peft_type.as_deref(),
        }
    }

    /// Sets the PEFT type: a `"lora"` spec plans the module's LoRA factors instead of its weights.
    pub fn set_peft_type(&mut self, peft_type: Option<String>) {
        match self {
            Spec::FusedLinears(s) => s.peft_type = peft_type,
            Spec::GqaQkv(s) => s.peft_type = peft_type,
        }
    }

    /// Whether the spec plans LoRA factors (`peft_type == "lora"`).
    pub fn is_lora(&self) -> bool {
        self.peft_type() == Some(crate::lora::PEFT_TYPE_LORA)
    }

    /// The spec's rank-local tensors as data (its LoRA factors for a LoRA spec), for its own TP size: what
    /// every name, plan and shape below is derived from.
    pub fn layout(&self, module: &str) -> layout::Layout {
        match self {
            Spec::FusedLinears(s) => s.layout(module),
            Spec::GqaQkv(s) => s.layout(module),
        }
    }

    /// The rank-local parameters this spec produces (its LoRA factors for a LoRA spec).
    pub fn local_parameter_names(&self, module: &str) -> Vec<String> {
        self.layout(module).local_names()
    }

    /// The HF parameters this spec consumes (the full-rank LoRA factors for a LoRA spec; see [`crate::lora`]).
    pub fn original_parameter_names(&self, module: &str) -> Vec<String> {
        self.layout(module).original_names()
    }

    /// Plans of rank `rank`'s LoRA factors, for the parts of the module whose full-rank factors `src` holds
    /// (reference: `_lora_adapt_state_dict`, exact instead of averaged).
    pub fn plan_rank_lora(
        &self,
        module: &str,
        src: &dyn TensorSource,
        part: usize,
        tp: usize,
        rank: usize,
    ) -> Result<Vec<TensorPlan>> {
        self.validate(tp)?;
        self.layout(module).plan(self.class_name(), src, part, tp, rank)
    }

    /// Shapes of the full-rank LoRA factors, from one rank's LoRA tensors (the parts that rank holds).
    pub fn lora_original_infos(&self, module: &str, local: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
        self.original_infos(module, local, tp)
    }

    /// Plans of rank `rank`'s local tensors, reading the originals from `src` (source set `part`).
    pub fn plan_rank(
        &self,
        module: &str,
        src: &dyn TensorSource,
        part: usize,
        partition_dim: Option<usize>,
        tp: usize,
        rank: usize,
    ) -> Result<Vec<TensorPlan>> {
        self.validate(tp)?;
        if let Spec::FusedLinears(s) = self {
            s.check_partition_dim(partition_dim)?;
        }
        self.layout(module).plan(self.class_name(), src, part, tp, rank)
    }

    /// Dtypes and shapes of the original tensors, inferred from one rank's local tensors.
    pub fn original_infos(&self, module: &str, local: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
        self.validate(tp)?;
        self.layout(module).original_infos(self.class_name(), local, tp)
    }
}

/// The specs of one module, with its fully qualified HF path (reference: `ModelWeightTransformationSpecs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelWeightTransformationSpecs {
    /// The module path, e.g. `model.layers.3.self_attn`.
    pub module_fully_qualified_name: String,
    /// Its specs.
    pub specs: Vec<Spec>,
}

/// Looks up a tensor's info, or reports it missing with the names it could have meant.
pub(crate) fn require(src: &dyn TensorSource, name: &str) -> Result<TensorInfo> {
    src.info(name).ok_or_else(|| {
        let names = src.names();
        let c: Vec<&str> = names.iter().map(String::as_str).collect();
        Error::key_mismatch("checkpoint", vec![name.to_string()], vec![], &c)
    })
}

/// Checks a spec's stored `tp_size` against the TP size it is asked to plan for.
pub(crate) fn check_spec_tp(class: &str, spec_tp: usize, tp: usize) -> Result<()> {
    if tp == 0 {
        return Err(Error::spec(class, "tp_size", "must be at least 1"));
    }
    if tp > crate::sharding::MAX_TP {
        return Err(Error::spec(
            class,
            "tp_size",
            format!("tp {tp} is above the supported maximum {}", crate::sharding::MAX_TP),
        ));
    }
    if spec_tp != tp {
        return Err(Error::spec(class, "tp_size", format!("the spec was built for tp {spec_tp}, asked for tp {tp}")));
    }
    Ok(())
}
