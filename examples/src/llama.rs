//! The Llama family (`model_type` llama). The model is the decoder of `model.rs` with nothing added: GQA attention with RoPE (every `rope_scaling` type of
//! `rope.rs`), SwiGLU MLP, RMSNorm, optional tied embeddings, `attention_bias` / `mlp_bias`.

use crate::config::{no_extras, Family, Variants};
use crate::config_fields::{check_fields, FIELDS_ANY_FAMILY};
use neuron_spec::Result;
use serde_json::Value;
use std::path::Path;

/// The fields a Llama (Mistral, Qwen2) config may hold beyond [`FIELDS_ANY_FAMILY`].
pub const LLAMA_FIELDS: &[&str] =
    &["mlp_bias", "pretraining_tp", "sliding_window", "use_sliding_window", "max_window_layers"];

/// Checks a Llama-family config: every field is known, and those that change the math are implemented.
pub fn check_llama(v: &Value, path: &Path) -> Result<()> {
    check_fields(v, path, &[FIELDS_ANY_FAMILY, LLAMA_FIELDS])
}

/// Llama: the shared decoder as it is.
pub const LLAMA: Family =
    Family { model_type: "llama", fields: LLAMA_FIELDS, variants: Variants::LLAMA, read: no_extras };
