//! The Qwen2 family (`model_type` qwen2): Llama's decoder with biases on q, k and v and none on o (whatever
//! `attention_bias` says); a sliding window only with `use_sliding_window` (or `layer_types`).

use crate::config::{Family, ModelConfig, Variants};
use crate::llama::LLAMA_FIELDS;
use neuron_spec::Result;
use serde_json::Value;
use std::path::Path;

/// Qwen2: Llama with q/k/v biases.
pub const QWEN2: Family =
    Family { model_type: "qwen2", fields: LLAMA_FIELDS, variants: Variants::LLAMA, read: read_qwen2 };

fn read_qwen2(_: &Value, _: &Path, cfg: &mut ModelConfig) -> Result<()> {
    (cfg.qkv_bias, cfg.o_bias) = (true, false);
    Ok(())
}
