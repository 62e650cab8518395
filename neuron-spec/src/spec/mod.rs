//! What a model says about its weights: the transformation specs (how a custom module's weights relate to
//! the HF weights it replaces) and their layouts, the parameter [`metadata`] of a sharded checkpoint, the
//! pipeline-stage assignment ([`pipeline`]), the [`contract`] that `#[derive(CustomModule)]` implements, and
//! the compiler ([`compile`]) from specs to plans.
//!
//! A spec is pure data. For a given TP size and rank it compiles into plans (see [`crate::plan`]); loading,
//! consolidation and the dry-run report all run those plans.

pub mod compile;
pub mod contract;
mod fused_linears;
mod gqa_qkv;
pub mod layout;
pub mod metadata;
pub mod pipeline;
mod query_heads;
#[cfg(feature = "burn")]
pub mod reference_names;

pub use fused_linears::{FuseAxis, FusedLinearsSpec};
pub use gqa_qkv::{GqaQkvColumnParallelLinearSpec, QueryOrOutput};
pub use query_heads::MAX_HEADS;

use crate::error::{Error, Result};
use crate::plan::TensorPlan;
use crate::tensor::{TensorInfo, TensorSource};
use serde::{Deserialize, Serialize};

/// The PEFT type a spec carries when its module has LoRA (reference: `peft_type = "lora"`).
pub const PEFT_TYPE_LORA: &str = "lora";

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
        self.peft_type() == Some(crate::spec::PEFT_TYPE_LORA)
    }

    /// The spec's rank-local tensors as data (its LoRA factors for a LoRA spec), for its own TP size: what
    /// every name, plan and shape below is derived from.
    pub fn layout(&self, module: &str) -> layout::Layout {
        match self {
            Spec::FusedLinears(s) => s.layout(module),
            Spec::GqaQkv(s) => s.layout(module),
        }
    }

    /// The same spec reading its members from one packed HF tensor `packed` (Phi-3's `qkv_proj`,
    /// `gate_up_proj`), in member order along the fuse axis. The member names become `packed`: it is the one HF
    /// module (and PEFT target) left. A fused-linears spec built with no names gets one per member this way.
    pub fn with_packed_source(self, packed: &str) -> Result<Spec> {
        if packed.is_empty() || packed.contains('.') {
            return Err(Error::spec(self.class_name(), "packed", format!("{packed:?} is not a module name")));
        }
        Ok(match self {
            Spec::FusedLinears(mut s) => {
                s.linear_names = vec![packed.to_string(); s.original_dims.len()];
                s.packed_linear_name = Some(packed.to_string());
                s.validate(s.tp_size)?;
                Spec::FusedLinears(s)
            }
            Spec::GqaQkv(mut s) => {
                s.query_projection_name = packed.to_string();
                s.key_projection_name = packed.to_string();
                s.value_projection_name = packed.to_string();
                s.packed_projection_name = Some(packed.to_string());
                Spec::GqaQkv(s)
            }
        })
    }

    /// The PEFT target group: the fused layer's name, the HF modules it replaces with their sizes along the fuse
    /// axis (one packed module, or the members), and the axis. Derived from the layout's weight parts.
    pub fn lora_group(&self) -> (&str, Vec<(String, usize)>, FuseAxis) {
        let (fused, axis) = match self {
            Spec::FusedLinears(s) => (s.fused_linear_name.as_str(), s.fuse_axis),
            Spec::GqaQkv(s) => (s.gqa_qkv_projection_name.as_str(), FuseAxis::Column),
        };
        let mut plain = self.clone();
        plain.set_peft_type(None);
        let mut members: Vec<(String, usize)> = Vec::new();
        let own = format!("{fused}.");
        for t in plain.layout("").groups.iter().flat_map(|g| &g.tensors).filter(|t| t.name.starts_with(&own)) {
            for p in &t.parts {
                let Some(module) = p.original.strip_suffix(".weight") else { continue };
                let len = p.map.member_len().unwrap_or(0);
                let len = p.packing.map_or(len, |k| k.total);
                if !members.iter().any(|(m, _)| m == module) {
                    members.push((module.to_string(), len));
                }
            }
        }
        (fused, members, axis)
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
    if tp > crate::plan::split::MAX_TP {
        return Err(Error::spec(
            class,
            "tp_size",
            format!("tp {tp} is above the supported maximum {}", crate::plan::split::MAX_TP),
        ));
    }
    if spec_tp != tp {
        return Err(Error::spec(class, "tp_size", format!("the spec was built for tp {spec_tp}, asked for tp {tp}")));
    }
    Ok(())
}

/// The concrete specs' own entry points, all through [`Spec`] (and so through their layout).
macro_rules! delegate_to_spec {
    ($ty:ty, $variant:ident) => {
        impl $ty {
            /// The rank-local parameters (see [`Spec::local_parameter_names`]).
            pub fn local_parameter_names(&self, module: &str) -> Vec<String> {
                self.layout(module).local_names()
            }
            /// The HF parameters (see [`Spec::original_parameter_names`]).
            pub fn original_parameter_names(&self, module: &str) -> Vec<String> {
                self.layout(module).original_names()
            }
            /// The originals' shapes from one rank's tensors (see [`Spec::original_infos`]).
            pub fn original_infos(&self, module: &str, local: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
                Spec::$variant(self.clone()).original_infos(module, local, tp)
            }
            /// Rank `rank`'s plans (see [`Spec::plan_rank`]).
            pub fn plan_rank(
                &self,
                module: &str,
                src: &dyn TensorSource,
                part: usize,
                tp: usize,
                rank: usize,
            ) -> Result<Vec<TensorPlan>> {
                Spec::$variant(self.clone()).plan_rank(module, src, part, None, tp, rank)
            }
        }
    };
}
delegate_to_spec!(FusedLinearsSpec, FusedLinears);
delegate_to_spec!(GqaQkvColumnParallelLinearSpec, GqaQkv);
