//! The Phi-3 family (`model_type` phi3, transformers' `Phi3ForCausalLM`): the decoder of `model.rs` built from
//! its packed variants. The HF checkpoint stores q/k/v as one `self_attn.qkv_proj` ([(h + 2·kv)·d, H], q rows
//! then k then v: `SelfAttention::Packed`) and gate/up as one `mlp.gate_up_proj` ([2·I, H], gate then up:
//! `FeedForward::Packed`); the rank-local layout is the same as the other families' (query-head permutation,
//! kv replication, gate/up shards per rank). No biases (Phi-3's linears have none, whatever `attention_bias`
//! says); `rms_norm_eps` defaults to 1e-5; the `sliding_window` is always active (longer inputs are refused).
//!
//! Refused by name: `rope_scaling` (longrope, in the real Phi-3 configs), `partial_rotary_factor` other than 1
//! and a `hidden_act` other than silu (both by `config_fields.rs`), `--plain-attention` (the packed q/k/v is
//! split by heads only).

use crate::config::{Family, ModelConfig, Packing, Variants};
use neuron_spec::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The keys of transformers' read set a Phi-3 config may set beyond `IMPLEMENTED_ANY_FAMILY` (none:
/// `resid_pdrop` is accepted at 0 only, by `config_fields`).
pub const PHI3_FIELDS: &[&str] = &[];

/// Phi-3: packed q/k/v and gate/up.
pub const PHI3: Family = Family {
    model_type: "phi3",
    fields: PHI3_FIELDS,
    variants: Variants {
        qkv: Packing::Packed,
        gate_up: Packing::Packed,
        sliding_window_by_default: true,
        ..Variants::LLAMA
    },
    read: read_phi3,
};

fn read_phi3(v: &Value, path: &Path, cfg: &mut ModelConfig) -> Result<()> {
    if let Some(s) = v.get("rope_scaling").filter(|s| !s.is_null()) {
        return Err(Error::spec(
            &path.display().to_string(),
            "rope_scaling",
            format!("{s} is not implemented for Phi-3 (only no scaling)"),
        ));
    }
    if v.get("rms_norm_eps").is_none_or(Value::is_null) {
        cfg.llama.rms_norm_eps = 1e-5; // Phi3Config's default
    }
    (cfg.qkv_bias, cfg.o_bias, cfg.llama.mlp_bias) = (false, false, false);
    Ok(())
}
