//! The family table: one [`Family`] description per `model_type`, each in its own file, chosen here and nowhere
//! else. A description gives the config fields the family may hold, what it reads from them beyond the shared
//! fields (its defaults, knobs and refusals), and the variants of the shared decoder (`model.rs`) it is built
//! from; the annotated burn model of `model.rs` then gives its layout. Adding a family is one file with its
//! `Family` plus one line in [`FAMILIES`].
//!
//! Also here: the layout (`shard` / `plan`) of an HF checkpoint directory, whatever its family, and the HF
//! tensor list of a config, both read off the lazily built model.

use crate::config::GraniteScales;
use crate::config::{Activation, Family, LlamaConfig, ModelConfig};
use crate::config_fields::{check_keys, reads};
use crate::model::{layout, QkvLayout};
use crate::rope::{RopeConfig, RopeScaling};
use neuron_spec::{CheckpointMetadata, DType, Error, HostTensor, Result, TensorInfo, TensorSource};
use serde_json::Value;
use std::path::Path;

/// Every family, by `model_type`: the one place a `model_type` is looked up.
pub const FAMILIES: [&Family; 9] = [
    &crate::llama::LLAMA,
    &crate::mistral::MISTRAL,
    &crate::qwen2::QWEN2,
    &crate::qwen3::QWEN3,
    &crate::granite::GRANITE,
    &crate::qwen3_moe::QWEN3_MOE,
    &crate::phi3::PHI3,
    &crate::mixtral::MIXTRAL,
    &crate::gemma3::GEMMA3_TEXT,
];

/// `model_type`s near a family of the table but not implemented, each with what to say when it is refused.
const NOT_IMPLEMENTED: &[(&str, &str)] = &[crate::gemma3::VISION];

const MODEL_TYPE_LIST: [&str; FAMILIES.len()] = {
    let mut out = [""; FAMILIES.len()];
    let mut i = 0;
    while i < FAMILIES.len() {
        out[i] = FAMILIES[i].model_type;
        i += 1;
    }
    out
};

/// The `model_type`s implemented (those of [`FAMILIES`]).
pub const MODEL_TYPES: &[&str] = &MODEL_TYPE_LIST;

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
        let (qkv_bias, o_bias) = (llama.attention_bias, llama.attention_bias);
        Self {
            llama,
            family: &crate::llama::LLAMA,
            rope,
            sliding_window: None,
            scales: GraniteScales::default(),
            moe: None,
            qkv_bias,
            o_bias,
            activation: Activation::Silu,
            layer_windows: Vec::new(),
            local_rope: None,
            final_logit_softcapping: None,
        }
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
        check_keys(&v, path, family.fields)?;
        // A key transformers does not read for this model_type has no effect there, so none here either
        // (e.g. `mlp_bias` on qwen3, `attention_bias` on mistral and qwen2).
        let ty = family.model_type;
        llama.attention_bias &= reads(ty, "attention_bias");
        llama.mlp_bias &= reads(ty, "mlp_bias");
        let mut cfg = Self { family, ..Self::from(llama) };
        (family.read)(&v, path, &mut cfg)?;
        let llama = &cfg.llama;
        cfg.rope = RopeConfig {
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
        // A family whose transformers code never reads use_sliding_window (Mistral, Phi-3) applies its window
        // whatever that key says.
        let use_window = sliding_layers
            || if reads(ty, "use_sliding_window") {
                v.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false)
            } else {
                family.variants.sliding_window_by_default
            };
        // A family that masks the window per layer (Gemma 3) refuses no sequence length: its layers' windows
        // were read with the family's own fields.
        cfg.sliding_window = window.filter(|_| use_window && !family.variants.window_mask);
        Ok(cfg)
    }

    /// Reads `<dir>/config.json`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        Self::read(&dir.join("config.json"))
    }
}

impl Family {
    /// The family of a `model_type` (read from `path`), refused by name when nothing implements it.
    pub fn of(model_type: Option<&str>, path: &Path) -> Result<&'static Family> {
        let file = path.display().to_string();
        let implemented = MODEL_TYPES.join(", ");
        match model_type {
            Some(t) => FAMILIES.iter().copied().find(|f| f.model_type == t).ok_or_else(|| {
                let why = NOT_IMPLEMENTED.iter().find(|(n, _)| *n == t).map(|(_, w)| format!(": {w}"));
                Error::spec(
                    &file,
                    "model_type",
                    format!(
                        "model_type {t:?} is not implemented{} (implemented: {implemented})",
                        why.unwrap_or_default()
                    ),
                )
            }),
            None => Err(Error::spec(
                &file,
                "model_type",
                format!("missing: the family cannot be told (implemented: {implemented})"),
            )),
        }
    }
}

/// [`layout`] of the HF checkpoint directory `dir` (its `config.json`).
pub fn layout_of_dir(dir: &Path, tp: usize, qkv: QkvLayout) -> Result<CheckpointMetadata> {
    layout(&ModelConfig::read_dir(dir)?, tp, qkv)
}

/// Rank-local shapes without data: what [`hf_tensor_infos`] feeds the inverse layout.
struct Shapes(Vec<TensorInfo>);

impl TensorSource for Shapes {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.0.iter().find(|i| i.name == name).cloned()
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        Err(Error::Plan(format!("{name}: a shape-only source holds no data")))
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
        let shape = p.shape.clone().ok_or_else(|| Error::Plan(format!("{name}: the layout records no shape")))?;
        local.push(TensorInfo { name: name.clone(), dtype, shape });
    }
    neuron_spec::spec::compile::original_infos(&meta, &Shapes(local), 1)
}
