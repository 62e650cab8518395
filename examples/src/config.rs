//! Which family a `config.json` is (its `model_type`), refusing what no family implements, and the model
//! configuration read from it.

use crate::config_fields::{check_keys, reads};
use crate::granite::{GraniteScales, GRANITE_FIELDS};
use crate::llama::{LlamaConfig, LLAMA_FIELDS};
use crate::qwen3::QWEN3_FIELDS;
use crate::qwen3_moe::{MoeConfig, QWEN3_MOE_FIELDS};
use crate::rope::{RopeConfig, RopeScaling};
use neuron_spec::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// A model family, from `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// llama, mistral, qwen2.
    Llama,
    /// qwen3: per-head q_norm / k_norm.
    Qwen3,
    /// granite: embedding, residual, attention and logits multipliers.
    Granite,
    /// qwen3_moe: Qwen3 attention, sparse (router + experts) and dense MLPs.
    Qwen3Moe,
}

/// The `model_type`s implemented.
pub const MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "granite", "qwen3_moe"];

impl Family {
    /// The family of a `model_type`, refused by name when nothing implements it.
    pub fn of(model_type: Option<&str>, path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        match model_type {
            Some("llama" | "mistral" | "qwen2") => Ok(Family::Llama),
            Some("qwen3") => Ok(Family::Qwen3),
            Some("granite") => Ok(Family::Granite),
            Some("qwen3_moe") => Ok(Family::Qwen3Moe),
            Some(other) => Err(Error::spec(
                &file,
                "model_type",
                format!("model_type {other:?} is not implemented (implemented: {})", MODEL_TYPES.join(", ")),
            )),
            None => Err(Error::spec(
                &file,
                "model_type",
                format!("missing: the family cannot be told (implemented: {})", MODEL_TYPES.join(", ")),
            )),
        }
    }

    /// The keys of transformers' read set this family implements beyond
    /// [`IMPLEMENTED_ANY_FAMILY`](crate::config_fields::IMPLEMENTED_ANY_FAMILY).
    fn fields(self) -> &'static [&'static str] {
        match self {
            Family::Llama => LLAMA_FIELDS,
            Family::Qwen3 => QWEN3_FIELDS,
            Family::Granite => GRANITE_FIELDS,
            Family::Qwen3Moe => QWEN3_MOE_FIELDS,
        }
    }
}

/// The model configuration: the HF `config.json` fields the weights and the forward pass depend on.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Sizes, heads, norms, RoPE base, biases, tying.
    pub llama: LlamaConfig,
    /// The family.
    pub family: Family,
    /// The RoPE tables' parameters.
    pub rope: RopeConfig,
    /// An active sliding window (Mistral; Qwen2/3 with `use_sliding_window`): longer sequences are refused,
    /// not windowed.
    pub sliding_window: Option<usize>,
    /// Granite's multipliers (all 1 elsewhere).
    pub scales: GraniteScales,
    /// Qwen3-MoE's routing and experts.
    pub moe: Option<MoeConfig>,
}

impl From<LlamaConfig> for ModelConfig {
    /// A plain Llama with default RoPE.
    fn from(llama: LlamaConfig) -> Self {
        let rope = RopeConfig {
            theta: llama.rope_theta,
            dim: llama.head_dim(),
            max_position_embeddings: llama.max_position_embeddings,
            original_max_position_embeddings: None,
            scaling: RopeScaling::Default,
        };
        Self { llama, family: Family::Llama, rope, sliding_window: None, scales: GraniteScales::default(), moe: None }
    }
}

impl ModelConfig {
    /// Reads `config.json`, refusing an unknown `model_type` and any field its family does not implement.
    pub fn read(path: &Path) -> Result<Self> {
        let mut llama = LlamaConfig::read(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), reason: e.to_string() })?;
        let family = Family::of(llama.model_type.as_deref(), path)?;
        check_keys(&v, path, family.fields())?;
        // A key transformers does not read for this model_type has no effect there, so none here either
        // (e.g. `mlp_bias` on qwen3, `attention_bias` on mistral and qwen2).
        let ty = llama.model_type.clone().unwrap_or_default();
        llama.attention_bias &= reads(&ty, "attention_bias");
        llama.mlp_bias &= reads(&ty, "mlp_bias");
        if family == Family::Qwen3 && llama.head_dim.is_none() {
            llama.head_dim = Some(128); // Qwen3Config's default, not hidden / heads
        }
        let scales = if family == Family::Granite { GraniteScales::read(&v, path)? } else { GraniteScales::default() };
        let moe =
            if family == Family::Qwen3Moe { Some(MoeConfig::read(&v, path, llama.num_hidden_layers)?) } else { None };
        let rope = RopeConfig {
            theta: llama.rope_theta,
            dim: llama.head_dim(),
            max_position_embeddings: llama.max_position_embeddings,
            original_max_position_embeddings: v.get("original_max_position_embeddings").and_then(Value::as_f64),
            scaling: RopeScaling::parse(v.get("rope_scaling"))?,
        };
        let window = v.get("sliding_window").and_then(Value::as_u64).map(|w| w as usize);
        let sliding_layers = v
            .get("layer_types")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t.as_str() == Some("sliding_attention")));
        // Mistral never reads use_sliding_window: its window is always on.
        let use_window = sliding_layers
            || if reads(&ty, "use_sliding_window") {
                v.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false)
            } else {
                ty == "mistral"
            };
        Ok(Self { llama, family, rope, sliding_window: window.filter(|_| use_window), scales, moe })
    }

    /// Reads `<dir>/config.json`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        Self::read(&dir.join("config.json"))
    }
}

/// The `model_type` in `dir/config.json` (`None` when it cannot be read: the family's reader then says why).
/// Phi-3 is its own model (`crate::phi3`); every other family goes through [`ModelConfig`].
pub fn model_type_of(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("model_type")?.as_str().map(str::to_string)
}
