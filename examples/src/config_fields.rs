//! The `config.json` fields a family may hold: every other field is refused by name, so a knob that changes the
//! math is never silently ignored.

use neuron_spec::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Fields every family reads or that do not change the forward pass (bookkeeping, generation defaults,
/// training-only knobs such as dropout and initialisation).
pub const FIELDS_ANY_FAMILY: &[&str] = &[
    // read by every family
    "model_type",
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
    "tie_word_embeddings",
    "attention_bias",
    "hidden_act",
    "max_position_embeddings",
    "layer_types",
    "original_max_position_embeddings",
    // no effect on the weights or the eval-mode forward pass
    "architectures",
    "_name_or_path",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "use_cache",
    "initializer_range",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "id2label",
    "label2id",
    "problem_type",
    "finetuning_task",
    "tokenizer_class",
    "prefix",
    "task_specific_params",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "is_decoder",
    "cross_attention_hidden_size",
    "bad_words_ids",
    "begin_suppress_tokens",
    "suppress_tokens",
    "diversity_penalty",
    "do_sample",
    "early_stopping",
    "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "length_penalty",
    "max_length",
    "min_length",
    "no_repeat_ngram_size",
    "num_beam_groups",
    "num_beams",
    "num_return_sequences",
    "output_scores",
    "remove_invalid_values",
    "repetition_penalty",
    "return_dict_in_generate",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
];

/// Fields accepted only at the value that leaves the math unchanged.
fn neutral_value(key: &str, v: &Value) -> Option<bool> {
    Some(match key {
        "pruned_heads" => v.as_object().is_some_and(|m| m.is_empty()) || v.is_null(),
        "add_cross_attention" | "is_encoder_decoder" | "tie_encoder_decoder" => v.as_bool() == Some(false),
        "chunk_size_feed_forward" => v.as_u64() == Some(0),
        "partial_rotary_factor" => v.as_f64() == Some(1.0),
        _ => return None,
    })
}

/// Refuses a config field that none of `allowed` lists (naming it), and fields whose value changes the math.
pub fn check_fields(v: &Value, path: &Path, allowed: &[&[&str]]) -> Result<()> {
    let file = path.display().to_string();
    let m = v.as_object().ok_or_else(|| Error::Json { path: path.to_path_buf(), reason: "not an object".into() })?;
    for (k, val) in m {
        if allowed.iter().any(|a| a.contains(&k.as_str())) {
            continue;
        }
        match neutral_value(k, val) {
            Some(true) => continue,
            Some(false) => {
                return Err(Error::spec(&file, k, format!("{val} changes the model and is not implemented")))
            }
            None => {
                let ty = m.get("model_type").and_then(Value::as_str).unwrap_or("?");
                return Err(Error::spec(
                    &file,
                    k,
                    format!(
                        "not implemented for model_type {ty:?} (refused rather than ignored: it may change the math)"
                    ),
                ));
            }
        }
    }
    if let Some(act) = m.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            return Err(Error::spec(&file, "hidden_act", format!("only silu (SwiGLU) is implemented, found {act:?}")));
        }
    }
    if let Some(types) = m.get("layer_types").and_then(Value::as_array) {
        if let Some(t) = types.iter().find(|t| !matches!(t.as_str(), Some("full_attention" | "sliding_attention"))) {
            return Err(Error::spec(&file, "layer_types", format!("layer type {t} is not implemented")));
        }
    }
    Ok(())
}
