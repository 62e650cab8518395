//! The Qwen3 family (`model_type` qwen3): the decoder of `model.rs` whose attention adds `q_norm` and `k_norm`,
//! an RMSNorm over head_dim applied to every query and key head before RoPE (replicated on every rank, like
//! the other norms). `head_dim` is explicit (q_proj's output need not be the hidden size; Qwen3Config's
//! default is 128), `attention_bias` puts a bias on q, k, v and o, and the MLP has no bias.

use crate::config::{Family, ModelConfig, Variants};
use neuron_spec::Result;
use serde_json::Value;
use std::path::Path;

/// The keys of transformers' read set a Qwen3 config may set beyond `IMPLEMENTED_ANY_FAMILY` (none).
pub const QWEN3_FIELDS: &[&str] = &[];

/// Qwen3: Llama with per-head q/k norms.
pub const QWEN3: Family = Family {
    model_type: "qwen3",
    fields: QWEN3_FIELDS,
    variants: Variants { head_norms: true, ..Variants::LLAMA },
    read: read_qwen3,
};

fn read_qwen3(_: &Value, _: &Path, cfg: &mut ModelConfig) -> Result<()> {
    if cfg.llama.head_dim.is_none() {
        cfg.llama.head_dim = Some(128); // Qwen3Config's default, not hidden / heads
    }
    Ok(())
}
