//! The Llama family (`model_type` llama). The model is the decoder of `model.rs` with nothing added: GQA attention with RoPE (every `rope_scaling` type of
//! `rope.rs`), SwiGLU MLP, RMSNorm, optional tied embeddings, `attention_bias` / `mlp_bias`.

use crate::config::{no_extras, Family, Variants};

/// The keys of transformers' read sets a Llama/Mistral/Qwen2 config may set beyond
/// [`crate::config_fields::IMPLEMENTED_ANY_FAMILY`] (none).
pub const LLAMA_FIELDS: &[&str] = &[];

/// Llama: the shared decoder as it is.
pub const LLAMA: Family =
    Family { model_type: "llama", fields: LLAMA_FIELDS, variants: Variants::LLAMA, read: no_extras };
