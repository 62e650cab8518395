//! The Qwen3 family (`model_type` qwen3): the decoder of `model.rs` whose attention adds `q_norm` and `k_norm`,
//! an RMSNorm over head_dim applied to every query and key head before RoPE (replicated on every rank, like
//! the other norms). `head_dim` is explicit (q_proj's output need not be the hidden size; Qwen3Config's
//! default is 128), `attention_bias` puts a bias on q, k, v and o, and the MLP has no bias.

/// The keys of transformers' read set a Qwen3 config may set beyond `IMPLEMENTED_ANY_FAMILY` (none).
pub const QWEN3_FIELDS: &[&str] = &[];
