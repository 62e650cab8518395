//! The Llama family (`model_type` llama, mistral, qwen2): the config reader. The model is the decoder of
//! `model.rs` with nothing added: GQA attention with RoPE (every `rope_scaling` type of `rope.rs`), SwiGLU MLP,
//! RMSNorm, optional tied embeddings; Qwen2 has q/k/v biases and no o bias, Mistral a sliding window.

use crate::config_fields::check_keys;
use neuron_spec::{Error, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The fields of an HF `config.json` that every family here reads (sizes, heads, norms, RoPE base, biases,
/// tying).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// `model_type` ("llama", "mistral", "qwen2", "qwen3", "granite", "qwen3_moe").
    #[serde(default)]
    pub model_type: Option<String>,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP size.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// kv heads (defaults to the query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head size (defaults to hidden / heads).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Whether lm_head shares embed_tokens.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// q/k/v/o biases (Llama's flag).
    #[serde(default)]
    pub attention_bias: bool,
    /// MLP biases.
    #[serde(default)]
    pub mlp_bias: bool,
    /// The positions RoPE was trained for (dynamic, yarn and longrope RoPE read it).
    #[serde(default)]
    pub max_position_embeddings: Option<f64>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}

impl LlamaConfig {
    /// Reads `config.json` (the shared fields only; [`crate::ModelConfig::read`] checks the rest).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// kv heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head size.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Qwen2 has q/k/v biases and no o bias; `attention_bias` puts a bias on all four.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type.as_deref() == Some("qwen2")
    }

    /// Whether o_proj has a bias.
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.model_type.as_deref() != Some("qwen2")
    }
}

/// The keys of transformers' read sets a Llama/Mistral/Qwen2 config may set beyond
/// [`crate::config_fields::IMPLEMENTED_ANY_FAMILY`] (none).
pub const LLAMA_FIELDS: &[&str] = &[];

/// Checks a Llama-family config: every key transformers reads for its `model_type` is implemented; returns
/// the keys it never reads.
pub fn check_llama(v: &Value, path: &Path) -> Result<Vec<String>> {
    check_keys(v, path, LLAMA_FIELDS)
}
