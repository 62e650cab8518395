//! Which family a `config.json` is (its `model_type`), the checks that refuse what no family implements, and
//! the layout (`shard` / `plan`) and HF tensor list of a config, both read off the lazily built model.

use crate::granite::{GraniteScales, GRANITE_FIELDS};
use crate::llama::{LlamaConfig, LLAMA_FIELDS};
use crate::model::{LlamaForCausalLM, QkvLayout};
use crate::qwen3::QWEN3_FIELDS;
use crate::qwen3_moe::{MoeConfig, QWEN3_MOE_FIELDS};
use crate::rope::{RopeConfig, RopeScaling};
use burn::tensor::Device;
use neuron_spec::module::{CustomModule, TpContext};
use neuron_spec::{CheckpointMetadata, DType, Error, HostTensor, Result, TensorInfo, TensorSource};
use serde_json::Value;
use std::path::Path;

/// A model family, from `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// llama, mistral, qwen2.
    Llama,
    /// qwen3: per-head q_norm / k_norm.
    Qwen3,
    /// granite: embedding, residual, attention and logits multipliers.
    Granite,
    /// qwen3_moe: Qwen3 attention, sparse (router + experts) and dense MLPs.
    Qwen3Moe,
}

/// The `model_type`s implemented.
pub const MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "granite", "qwen3_moe"];

impl Family {
    /// The family of a `model_type`, refused by name when nothing implements it.
    pub fn of(model_type: Option<&str>, path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        match model_type {
            Some("llama" | "mistral" | "qwen2") => Ok(Family::Llama),
            Some("qwen3") => Ok(Family::Qwen3),
            Some("granite") => Ok(Family::Granite),
            Some("qwen3_moe") => Ok(Family::Qwen3Moe),
            Some(other) => Err(Error::spec(
                &file,
                "model_type",
                format!("model_type {other:?} is not implemented (implemented: {})", MODEL_TYPES.join(", ")),
            )),
            None => Err(Error::spec(
                &file,
                "model_type",
                format!("missing: the family cannot be told (implemented: {})", MODEL_TYPES.join(", ")),
            )),
        }
    }

    /// The fields this family's configs may hold beyond [`FIELDS_ANY_FAMILY`].
    fn fields(self) -> &'static [&'static str] {
        match self {
            Family::Llama => LLAMA_FIELDS,
            Family::Qwen3 => QWEN3_FIELDS,
            Family::Granite => GRANITE_FIELDS,
            Family::Qwen3Moe => QWEN3_MOE_FIELDS,
        }
    }
}

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

/// The model configuration: the HF `config.json` fields the weights and the forward pass depend on.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Sizes, heads, norms, RoPE base, biases, tying.
    pub llama: LlamaConfig,
    /// The family.
    pub family: Family,
    /// The RoPE tables' parameters.
    pub rope: RopeConfig,
    /// An active sliding window (Mistral; Qwen2/3 with `use_sliding_window`): longer sequences are refused,
    /// not windowed.
    pub sliding_window: Option<usize>,
    /// Granite's multipliers (all 1 elsewhere).
    pub scales: GraniteScales,
    /// Qwen3-MoE's routing and experts.
    pub moe: Option<MoeConfig>,
}

impl From<LlamaConfig> for ModelConfig {
    /// A plain Llama with default RoPE.
    fn from(llama: LlamaConfig) -> Self {
        let rope = RopeConfig {
            theta: llama.rope_theta,
            dim: llama.head_dim(),
            max_position_embeddings: llama.max_position_embeddings,
            original_max_position_embeddings: None,
            scaling: RopeScaling::Default,
        };
        Self { llama, family: Family::Llama, rope, sliding_window: None, scales: GraniteScales::default(), moe: None }
    }
}

impl ModelConfig {
    /// Reads `config.json`, refusing an unknown `model_type` and any field its family does not implement.
    pub fn read(path: &Path) -> Result<Self> {
        let mut llama = LlamaConfig::read(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), reason: e.to_string() })?;
        let family = Family::of(llama.model_type.as_deref(), path)?;
        check_fields(&v, path, &[FIELDS_ANY_FAMILY, family.fields()])?;
        if family == Family::Qwen3 && llama.head_dim.is_none() {
            llama.head_dim = Some(128); // Qwen3Config's default, not hidden / heads
        }
        let scales = if family == Family::Granite { GraniteScales::read(&v, path)? } else { GraniteScales::default() };
        let moe =
            if family == Family::Qwen3Moe { Some(MoeConfig::read(&v, path, llama.num_hidden_layers)?) } else { None };
        let rope = RopeConfig {
            theta: llama.rope_theta,
            dim: llama.head_dim(),
            max_position_embeddings: llama.max_position_embeddings,
            original_max_position_embeddings: v.get("original_max_position_embeddings").and_then(Value::as_f64),
            scaling: RopeScaling::parse(v.get("rope_scaling"))?,
        };
        let window = v.get("sliding_window").and_then(Value::as_u64).map(|w| w as usize);
        let sliding_layers = v
            .get("layer_types")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t.as_str() == Some("sliding_attention")));
        let use_window = sliding_layers
            || v.get("use_sliding_window")
                .and_then(Value::as_bool)
                .unwrap_or(llama.model_type.as_deref() == Some("mistral"));
        Ok(Self { llama, family, rope, sliding_window: window.filter(|_| use_window), scales, moe })
    }

    /// Reads `<dir>/config.json`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        Self::read(&dir.join("config.json"))
    }
}

/// The TP layout (specs and parameter metadata) of the model at `tp`: the metadata of its lazily built rank-0
/// model, with no weight allocated.
pub fn layout(cfg: &ModelConfig, tp: usize, qkv: QkvLayout) -> Result<CheckpointMetadata> {
    let d = Device::default();
    LlamaForCausalLM::from_config(cfg, TpContext::new(tp, 0)?, qkv, &d)?.create_parameter_metadata()
}

/// [`layout`] of the HF checkpoint directory `dir` (its `config.json`).
pub fn layout_of_dir(dir: &Path, tp: usize, qkv: QkvLayout) -> Result<CheckpointMetadata> {
    if model_type_of(dir).as_deref() == Some("phi3") {
        return crate::phi3::phi3_layout(&crate::Phi3Config::read(&dir.join("config.json"))?, tp, qkv);
    }
    layout(&ModelConfig::read_dir(dir)?, tp, qkv)
}

/// The `model_type` in `dir/config.json` (`None` when it cannot be read: the family's reader then says why).
/// Phi-3 is its own model (`crate::phi3`); every other family goes through [`ModelConfig`].
pub fn model_type_of(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("model_type")?.as_str().map(str::to_string)
}

/// Rank-local shapes without data: what [`hf_tensor_infos`] feeds the inverse layout.
struct Shapes(Vec<TensorInfo>);

impl TensorSource for Shapes {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.0.iter().find(|i| i.name == name).cloned()
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        Err(Error::Invalid(format!("{name}: a shape-only source holds no data")))
    }
    fn names(&self) -> Vec<String> {
        self.0.iter().map(|i| i.name.clone()).collect()
    }
}

/// The HF tensors (names and shapes, in `dtype`) a checkpoint of this config holds, derived from the model's
/// own layout at tp 1 (so a generator never keeps a second list of names).
pub fn hf_tensor_infos(cfg: &ModelConfig, dtype: DType) -> Result<Vec<TensorInfo>> {
    let meta = layout(cfg, 1, QkvLayout::Separate)?;
    let mut local = Vec::with_capacity(meta.parameters.len());
    for (name, p) in &meta.parameters {
        let shape = p.shape.clone().ok_or_else(|| Error::Invalid(format!("{name}: the layout records no shape")))?;
        local.push(TensorInfo { name: name.clone(), dtype, shape });
    }
    neuron_spec::model::original_infos(&meta, &Shapes(local), 1)
}
