//! The Gemma 3 text family (`model_type` gemma3_text, transformers' `Gemma3ForCausalLM`): the decoder of
//! `model.rs` with Gemma's variants. Embeddings times `√hidden_size` (rounded to f32, the weights' dtype here:
//! weights are f32 once loaded); every RMSNorm as `x / rms(x) · (1 + w)`; `q_norm`/`k_norm`; four norms per layer
//! (input, post-attention, pre- and post-feed-forward); a GELU-tanh gated MLP (`hidden_activation`); the
//! softmax scale `query_pre_attn_scalar^-0.5`; `layer_types` (or, without it, `sliding_window_pattern`): sliding
//! layers see the last `sliding_window` positions and use RoPE of base `rope_local_base_freq` without scaling,
//! full layers see every position with `rope_theta` and `rope_scaling`; `final_logit_softcapping`; tied
//! embeddings by default. Gemma3TextConfig's defaults apply to absent keys.
//!
//! `attn_logit_softcapping` is ignored, as transformers 4.57.1 ignores it for Gemma 3 (its attention stores it
//! and never applies it; the read set lists it as unread). Refused by name: `use_bidirectional_attention: true`,
//! a `hidden_activation` other than `gelu_pytorch_tanh`, and the vision-language model (`model_type` gemma3,
//! `Gemma3ForConditionalGeneration`).

use crate::config::{Activation, Family, ModelConfig, Variants};
use crate::rope::{RopeConfig, RopeScaling};
use neuron_spec::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The keys of transformers' read set a Gemma 3 config may set beyond `IMPLEMENTED_ANY_FAMILY`.
pub const GEMMA3_FIELDS: &[&str] = &[
    "query_pre_attn_scalar",
    "final_logit_softcapping",
    "hidden_activation",
    "rope_local_base_freq",
    "sliding_window_pattern",
    "use_bidirectional_attention",
];

/// Gemma 3 (text).
pub const GEMMA3_TEXT: Family = Family {
    model_type: "gemma3_text",
    fields: GEMMA3_FIELDS,
    variants: Variants {
        head_norms: true,
        norm_offset: true,
        sandwich_norms: true,
        window_mask: true,
        ..Variants::LLAMA
    },
    read: read_gemma3,
};

/// The vision-language Gemma 3's `model_type`, refused with this reason.
pub const VISION: (&str, &str) = (
    "gemma3",
    "it is Gemma3ForConditionalGeneration (vision and text); only its text model is implemented (model_type \
     gemma3_text, Gemma3ForCausalLM)",
);

fn read_gemma3(v: &Value, path: &Path, cfg: &mut ModelConfig) -> Result<()> {
    let file = path.display().to_string();
    let bad = |k: &str, reason: String| Error::spec(&file, k, reason);
    // A key Gemma3TextConfig defaults when absent; null is not a value its model runs with.
    let given = |k: &str| -> Result<Option<&Value>> {
        match v.get(k) {
            None => Ok(None),
            Some(Value::Null) => Err(bad(k, "null is not a value Gemma 3 runs with".into())),
            Some(x) => Ok(Some(x)),
        }
    };
    let positive = |k: &str, default: f64| -> Result<f64> {
        match given(k)? {
            None => Ok(default),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| bad(k, format!("must be a positive number, found {x}"))),
        }
    };
    let count = |k: &str, default: usize| -> Result<usize> {
        match given(k)? {
            None => Ok(default),
            Some(x) => x
                .as_u64()
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| bad(k, format!("must be a positive integer, found {x}"))),
        }
    };

    // Gemma3TextConfig's defaults where LlamaConfig's differ.
    let c = &mut cfg.llama;
    c.head_dim = Some(count("head_dim", 256)?);
    c.num_key_value_heads = Some(count("num_key_value_heads", 4)?);
    c.rope_theta = positive("rope_theta", 1_000_000.0)?;
    if v.get("tie_word_embeddings").is_none() {
        c.tie_word_embeddings = true;
    }
    if v.get("pad_token_id").is_none() {
        c.pad_token_id = Some(0);
    }
    if v.get("max_position_embeddings").is_none() {
        c.max_position_embeddings = Some(131_072.0);
    }

    if v.get("use_bidirectional_attention").and_then(Value::as_bool) == Some(true) {
        return Err(bad("use_bidirectional_attention", "true is not implemented (only causal attention)".into()));
    }
    cfg.activation = match given("hidden_activation")?.map(|a| (a, a.as_str())) {
        None | Some((_, Some("gelu_pytorch_tanh"))) => Activation::GeluTanh,
        Some((a, _)) => {
            return Err(bad("hidden_activation", format!("only gelu_pytorch_tanh is implemented, found {a}")))
        }
    };
    // Softmax scale query_pre_attn_scalar^-0.5; embeddings times √hidden_size, as a float32 scalar.
    cfg.scales.attention_multiplier = Some(positive("query_pre_attn_scalar", 256.0)?.powf(-0.5));
    cfg.scales.embedding_multiplier = f64::from((cfg.llama.hidden_size as f64).powf(0.5) as f32);
    cfg.final_logit_softcapping = match v.get("final_logit_softcapping") {
        None | Some(Value::Null) => None,
        Some(_) => Some(positive("final_logit_softcapping", 1.0)?),
    };

    // Which layers slide: layer_types, or (older configs) every layer but each sliding_window_pattern-th.
    let layers = cfg.llama.num_hidden_layers;
    let sliding: Vec<bool> = match v.get("layer_types").filter(|t| !t.is_null()) {
        Some(t) => {
            let t = t.as_array().ok_or_else(|| bad("layer_types", format!("must be a list, found {t}")))?;
            if t.len() != layers {
                return Err(bad("layer_types", format!("has {} entries, num_hidden_layers is {layers}", t.len())));
            }
            t.iter().map(|t| t.as_str() == Some("sliding_attention")).collect()
        }
        None => {
            let p = count("sliding_window_pattern", 6)?;
            (0..layers).map(|i| (i + 1) % p != 0).collect()
        }
    };
    let window = if sliding.contains(&true) { Some(count("sliding_window", 4096)?) } else { None };
    cfg.layer_windows = sliding.iter().map(|s| window.filter(|_| *s)).collect();
    cfg.local_rope = Some(RopeConfig {
        theta: positive("rope_local_base_freq", 10_000.0)?,
        dim: cfg.llama.head_dim(),
        max_position_embeddings: cfg.llama.max_position_embeddings,
        original_max_position_embeddings: None,
        scaling: RopeScaling::Default,
    });
    Ok(())
}
