//! PEFT LoRA adapters both ways: an HF adapter (`adapter_config.json` + `adapter_model.safetensors`) becomes
//! rank-local LoRA factors of the fused TP layers, and rank-local factors become an adapter that peft loads on
//! the original HF model.
//!
//! # Fused groups
//!
//! A fused layer (q/k/v in `qkv_proj`, gate/up in `gate_up_proj`) has one LoRA A and one LoRA B. With `k`
//! members of ranks `r_i`:
//! * [`LoraMode::Exact`] (default): the fused A is the members' A stacked along the rank (`[Σr_i, in]`) and the
//!   fused B is block-diagonal (`[Σout_i, Σr_i]`, member i's B in column block i), so `B·A = [B_1·A_1; …]` and the
//!   TP layer computes exactly what peft computes, with the scaling kept at `alpha / r` (`/ sqrt(r)` with rslora).
//!   A row-fused group is the transpose: A block-diagonal, B stacked.
//! * [`LoraMode::Mean`]: the reference's algorithm, one A that is the mean of the members' A. Lossy unless they
//!   are equal; said once per import.
//!
//! # How it runs
//!
//! Importing builds, per module, "full-rank" factors in HF orientation ([`import::ImportedAdapter::tensors`]):
//! for a column group the fused A `<module>.<fused>.lora_A.weight` `[R, in]` and per member
//! `<module>.<member>.lora_B.weight` `[out_i, R]`. Their TP shards are then ordinary plans (the specs' LoRA paths:
//! B is planned exactly like the base weight rows, A replicated), so consolidation is the inverse plan, and export
//! ([`export`]) turns full-rank factors back into peft's per-member factors: at the member's original rank when B
//! is still zero outside the member's block (so an untrained exact import exports byte for byte), else at rank R
//! with `rank_pattern` / `alpha_pattern` keeping the scaling.

mod config;
pub mod export;
pub mod import;
mod names;
mod peft;
mod rank_source;
mod tp_metadata;

pub use config::{full_match, suffix_match, LoraConfig, TargetModules, ADAPTER_CONFIG, ADAPTER_WEIGHTS, LAYOUT_KEY};
pub use export::{export_adapter, merge_deltas, write_adapter_dir, ExportedAdapter};
pub use import::{import_adapter, ImportedAdapter, PeftAdapter};
pub use names::{
    check_adapter_name, get_adapter_name, insert_adapter_name, is_base_layer, is_lora_parameter, peft_key,
    remove_adapter_name, split_peft_key, strip_base_layer, PEFT_PREFIX,
};
pub use peft::{
    adapt_peft_config, adapt_peft_config_for_model, lora_group, to_original_peft_config,
    to_original_peft_config_for_model, PeftConfigs,
};
pub use rank_source::{LoraRankAdapter, LoraRankSource};
pub use tp_metadata::adapter_metadata_for_tp;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

pub use crate::spec::PEFT_TYPE_LORA;

/// How the LoRA A matrices of a fused group are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraMode {
    /// Stacked A, block-diagonal B: lossless.
    #[default]
    Exact,
    /// Mean of the A matrices (the reference): lossy unless they are equal.
    Mean,
}

impl std::str::FromStr for LoraMode {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "exact" => Ok(LoraMode::Exact),
            "mean" => Ok(LoraMode::Mean),
            other => Err(crate::error::Error::Argument(format!("LoRA mode must be exact or mean, found {other:?}"))),
        }
    }
}

/// Options of [`import_adapter`] and [`adapt_peft_config_for_model`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoraImportOptions {
    /// Exact or mean.
    pub mode: LoraMode,
    /// Accept a fused group the adapter targets in part: the absent members get a zero LoRA delta (so the TP
    /// model still computes what peft computes). Off by default: the reference's all-or-none rule.
    pub allow_partial: bool,
}

/// Our section of an adapted `adapter_config.json` ([`LAYOUT_KEY`]): what each TP module's LoRA factors are,
/// which export needs to give every HF module its own factors back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LoraLayout {
    /// How fused groups were combined.
    pub mode: LoraMode,
    /// Per TP module path (`model.layers.0.self_attn.qkv_proj`, `...o_proj`, ...).
    pub modules: IndexMap<String, LoraModule>,
    /// The imported config's `target_modules`, restored on export when they still name exactly the exported
    /// modules (the translation itself keeps the meaning, not the order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_target_modules: Option<TargetModules>,
}

/// One TP module's LoRA: its rank, its scaling, and for a fused layer its members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraModule {
    /// The rank of the module's factors (for an exact fused group, the sum of the members' ranks).
    pub rank: usize,
    /// The scaling applied to `B·A` (every member of a group has the same).
    pub scaling: f64,
    /// The fused group, for a fused layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<LoraGroup>,
}

/// A fused layer's members and where each one's factors sit in the fused rank dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraGroup {
    /// 0: column group (shared A, stacked B rows); 1: row group (stacked A columns, shared B).
    pub fuse_axis: usize,
    /// The members, in fusing order.
    pub members: Vec<LoraMember>,
}

/// One member of a fused group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraMember {
    /// The HF linear name (`q_proj`).
    pub name: String,
    /// Its output (column group) or input (row group) size.
    pub dim: usize,
    /// First index of its block along the fused rank.
    pub offset: usize,
    /// Its block's length: its own rank (exact), the shared rank (mean), 0 when absent (exact, partial mode).
    pub rank: usize,
    /// The member's own alpha in the imported adapter.
    pub lora_alpha: f64,
    /// Whether the imported adapter targeted it (partial mode leaves absent members at zero).
    pub present: bool,
}

/// A whole model's PEFT configs: provided for every [`CustomModule`](crate::spec::contract::CustomModule) (in
/// the prelude).
pub trait PeftConfigForModel: crate::spec::contract::CustomModule {
    /// The PEFT config (one, or a map from adapter name to config) in this model's terms: every spec rewrites
    /// `target_modules` for its fused layer (reference: `adapt_peft_config_for_model`).
    fn adapt_peft_config<C: PeftConfigs>(&self, configs: &C, opts: &LoraImportOptions) -> crate::error::Result<C> {
        adapt_peft_config_for_model(&self.create_parameter_metadata()?, configs, opts)
    }

    /// The inverse: the config in the HF model's terms (reference: `to_original_peft_config_for_model`).
    fn to_original_peft_config<C: PeftConfigs>(&self, configs: &C) -> crate::error::Result<C> {
        to_original_peft_config_for_model(&self.create_parameter_metadata()?, configs)
    }
}

impl<T: crate::spec::contract::CustomModule> PeftConfigForModel for T {}
