//! Which `config.json` keys a family accepts, by transformers' own rule: a key changes the math only if
//! transformers reads it when it builds and runs that family. [`READ_SETS`] (generated from transformers 4.57.1
//! by `tests/fixtures/make/config_read_sets.py`) lists those keys per `model_type`. A key it reads that we do
//! not implement is refused by name; `quantization_config` is refused for every family; a key it never reads
//! (`_name_or_path`, `unk_token_id`, a tool's note, ...) cannot change the math: it is accepted and listed as
//! ignored ([`ignored_keys`], printed by `plan`). Every refused key of a config is named in one error.

pub use crate::config_read_sets::READ_SETS;
use neuron_spec::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// Keys of the read sets that every family here implements: read by our config readers (sizes, heads, norms,
/// RoPE, tying, biases, the sliding window), or unable to change the logits or the training math.
pub const IMPLEMENTED_ANY_FAMILY: &[&str] = &[
    // read by the config readers (`LlamaConfig`, `ModelConfig`, `RopeConfig`, `Phi3Config`)
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_hidden_layers",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "max_position_embeddings",
    "original_max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
    "layer_types",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    // the compute dtype of from_pretrained(dtype="auto"): the weights keep their file's dtype, math is in f32
    "dtype",
    "torch_dtype",
    // which outputs are returned and whether a KV cache is kept: the logits are the same
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    // nn.Embedding's padding_idx: no effect on the forward pass
    "pad_token_id",
];

/// Keys of the read sets accepted only at the value that leaves the math unchanged; `Err` says why another
/// value is refused.
fn neutral_value(key: &str, v: &Value) -> Option<std::result::Result<(), String>> {
    let ok = match key {
        // dropout: none in eval, but training would differ from transformers'
        "attention_dropout" | "resid_pdrop" => v.as_f64() == Some(0.0),
        "partial_rotary_factor" => v.as_f64() == Some(1.0),
        "is_encoder_decoder" | "tie_encoder_decoder" | "torchscript" => v.as_bool() == Some(false),
        "pruned_heads" => v.as_object().is_some_and(Map::is_empty),
        "loss_type" => v.as_str() == Some("ForCausalLM"),
        // the load-balancing loss added to the training loss
        "output_router_logits" => v.as_bool() == Some(false),
        _ => return None,
    };
    Some(if ok { Ok(()) } else { Err(format!("{v} changes the model and is not implemented")) })
}

/// The keys transformers reads for `model_type` (empty for a model_type it does not know).
pub fn read_set(model_type: &str) -> &'static [&'static str] {
    READ_SETS.iter().find(|(t, _)| *t == model_type).map(|(_, k)| *k).unwrap_or(&[])
}

/// Whether transformers reads `key` for `model_type`.
pub fn reads(model_type: &str, key: &str) -> bool {
    read_set(model_type).contains(&key)
}

/// The verdict on a config's keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyVerdict {
    /// Keys transformers never reads for this `model_type`: accepted, without effect.
    pub ignored: Vec<String>,
    /// Keys refused, each with the reason.
    pub refused: Vec<(String, String)>,
}

/// Sorts every key of `config` into accepted, ignored and refused; `implemented` lists the keys of the read set
/// the family implements beyond [`IMPLEMENTED_ANY_FAMILY`]. A `null` value is transformers' "not set" and is
/// accepted.
pub fn classify_keys(config: &Map<String, Value>, implemented: &[&str]) -> KeyVerdict {
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
    let mut verdict = KeyVerdict::default();
    for (k, val) in config {
        let refuse = |reason: String| (k.clone(), reason);
        if k == "quantization_config" {
            if !val.is_null() {
                verdict.refused.push(refuse("quantized checkpoints are not implemented".into()));
            }
            continue;
        }
        if k == "model_type" {
            continue;
        }
        if !reads(model_type, k) {
            verdict.ignored.push(k.clone());
            continue;
        }
        if val.is_null() {
            continue;
        }
        match neutral_value(k, val) {
            Some(Ok(())) => {}
            Some(Err(reason)) => verdict.refused.push(refuse(reason)),
            None if IMPLEMENTED_ANY_FAMILY.contains(&k.as_str()) || implemented.contains(&k.as_str()) => {}
            None => verdict.refused.push(refuse(format!(
                "read by transformers' {model_type:?} model and not implemented (refused rather than ignored: it \
                 may change the math)"
            ))),
        }
    }
    if let Some(act) = config.get("hidden_act").and_then(Value::as_str).filter(|_| reads(model_type, "hidden_act")) {
        if act != "silu" {
            verdict.refused.push(("hidden_act".into(), format!("only silu (SwiGLU) is implemented, found {act:?}")));
        }
    }
    if let Some(types) = config.get("layer_types").and_then(Value::as_array) {
        if let Some(t) = types.iter().find(|t| !matches!(t.as_str(), Some("full_attention" | "sliding_attention"))) {
            verdict.refused.push(("layer_types".into(), format!("layer type {t} is not implemented")));
        }
    }
    verdict
}

/// Refuses, all in one error, every key of the config `v` (read from `path`) that transformers reads and the
/// family does not implement (see [`classify_keys`]); returns the ignored keys.
pub fn check_keys(v: &Value, path: &Path, implemented: &[&str]) -> Result<Vec<String>> {
    let m = v.as_object().ok_or_else(|| Error::Json { path: path.to_path_buf(), reason: "not an object".into() })?;
    let verdict = classify_keys(m, implemented);
    if verdict.refused.is_empty() {
        return Ok(verdict.ignored);
    }
    Err(Error::RefusedConfigKeys {
        file: path.to_path_buf(),
        model_type: m.get("model_type").and_then(Value::as_str).unwrap_or("?").to_string(),
        keys: verdict.refused,
    })
}

/// The keys of `dir/config.json` that transformers never reads for its `model_type` (accepted, without effect).
pub fn ignored_keys(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), reason: e.to_string() })?;
    let m = v.as_object().ok_or_else(|| Error::Json { path: path.to_path_buf(), reason: "not an object".into() })?;
    Ok(classify_keys(m, &[]).ignored)
}
