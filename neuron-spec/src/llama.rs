//! The Llama-family layout (Llama, Mistral, Qwen2) from an HF `config.json`: the specs and parameter
//! metadata of the reference's custom Llama, so an HF checkpoint can be sharded without building a model.

use crate::error::{Error, Result};
use crate::metadata::{CheckpointMetadata, ParameterMetadata, FORMAT_VERSION};
use crate::specs::{FuseAxis, FusedLinearsSpec, GqaQkvColumnParallelLinearSpec, ModelWeightTransformationSpecs, Spec};
use indexmap::IndexMap;
use serde::Deserialize;
use std::path::Path;

/// The fields of an HF Llama/Mistral/Qwen2 `config.json` that shape the weights.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// `model_type` ("llama", "mistral", "qwen2").
    #[serde(default)]
    pub model_type: Option<String>,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP size.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// kv heads (defaults to the query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head size (defaults to hidden / heads).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Whether lm_head shares embed_tokens.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// q/k/v/o biases (Llama's flag).
    #[serde(default)]
    pub attention_bias: bool,
    /// MLP biases.
    #[serde(default)]
    pub mlp_bias: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}

impl LlamaConfig {
    /// Reads `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// kv heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head size.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Qwen2 has q/k/v biases and no o bias; Llama's `attention_bias` puts a bias on all four.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type.as_deref() == Some("qwen2")
    }

    /// Whether o_proj has a bias.
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.model_type.as_deref() != Some("qwen2")
    }
}

/// The largest `num_hidden_layers` accepted (the layout lists every layer's parameters up front).
pub const MAX_LAYERS: usize = 1 << 14;

/// How the attention projections are laid out on the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    /// GQA spec, one `qkv_proj.weight_qkv` per rank.
    Fused,
    /// GQA spec, `qkv_proj.weight_q/_k/_v`.
    Separate,
    /// No spec: q/k/v column-parallel and o row-parallel under their HF names, zero-padded where tp does
    /// not divide them. A storage layout for any tp (heads may straddle ranks), not a runnable one.
    Plain,
}

impl QkvLayout {
    /// `Fused` or `Separate`.
    pub fn gqa(fuse_qkv: bool) -> Self {
        if fuse_qkv {
            QkvLayout::Fused
        } else {
            QkvLayout::Separate
        }
    }
}

/// Specs and parameter metadata of the custom Llama at TP size `tp`, with a fused or separate GQA layer.
pub fn llama_layout(cfg: &LlamaConfig, tp: usize, fuse_qkv: bool) -> Result<CheckpointMetadata> {
    llama_layout_with(cfg, tp, QkvLayout::gqa(fuse_qkv))
}

/// Specs and parameter metadata of the custom Llama at TP size `tp`.
pub fn llama_layout_with(cfg: &LlamaConfig, tp: usize, qkv: QkvLayout) -> Result<CheckpointMetadata> {
    let fuse_qkv = qkv == QkvLayout::Fused;
    crate::sharding::check_tp(tp, 0)?;
    if cfg.num_hidden_layers > MAX_LAYERS {
        return Err(Error::spec(
            "config",
            "num_hidden_layers",
            format!("{} is above the supported maximum {MAX_LAYERS}", cfg.num_hidden_layers),
        ));
    }
    let mut parameters = IndexMap::new();
    let mut specs = Vec::new();
    let par = |dim, stride| ParameterMetadata::parallel(dim, stride, tp);
    parameters.insert("model.embed_tokens.weight".to_string(), par(0, 1));
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let qkv_params: &[&str] = if cfg.qkv_bias() { &["weight", "bias"] } else { &["weight"] };
        for param in qkv_params {
            if qkv == QkvLayout::Plain {
                for s in ["q_proj", "k_proj", "v_proj"] {
                    parameters.insert(format!("{p}.self_attn.{s}.{param}"), par(0, 1));
                }
            } else if fuse_qkv {
                // NxD wraps the concatenation in a fresh parameter without TP attributes.
                parameters.insert(format!("{p}.self_attn.qkv_proj.{param}_qkv"), ParameterMetadata::replicated());
            } else {
                for s in ["q", "k", "v"] {
                    parameters.insert(format!("{p}.self_attn.qkv_proj.{param}_{s}"), par(0, 1));
                }
            }
        }
        parameters.insert(format!("{p}.self_attn.o_proj.weight"), par(1, 1));
        if cfg.o_bias() {
            parameters.insert(format!("{p}.self_attn.o_proj.bias"), ParameterMetadata::replicated());
        }
        parameters.insert(format!("{p}.mlp.gate_up_proj.weight"), par(0, 2));
        if cfg.mlp_bias {
            parameters.insert(format!("{p}.mlp.gate_up_proj.bias"), par(0, 2));
        }
        parameters.insert(format!("{p}.mlp.down_proj.weight"), par(1, 1));
        if cfg.mlp_bias {
            parameters.insert(format!("{p}.mlp.down_proj.bias"), ParameterMetadata::replicated());
        }
        parameters.insert(format!("{p}.input_layernorm.weight"), ParameterMetadata::replicated());
        parameters.insert(format!("{p}.post_attention_layernorm.weight"), ParameterMetadata::replicated());
        if qkv != QkvLayout::Plain {
            let gqa = GqaQkvColumnParallelLinearSpec::new(
                cfg.num_attention_heads,
                cfg.kv_heads(),
                cfg.head_dim(),
                fuse_qkv,
                cfg.qkv_bias(),
                cfg.o_bias(),
                tp,
            )?;
            specs.push(ModelWeightTransformationSpecs {
                module_fully_qualified_name: format!("{p}.self_attn"),
                specs: vec![Spec::GqaQkv(gqa)],
            });
        }
        let fused = FusedLinearsSpec {
            fused_linear_name: "gate_up_proj".into(),
            linear_names: vec!["gate_proj".into(), "up_proj".into()],
            bias: cfg.mlp_bias,
            fuse_axis: FuseAxis::Column,
            original_dims: vec![cfg.intermediate_size, cfg.intermediate_size],
            tp_size: tp,
            peft_type: None,
            packed_linear_name: None,
        };
        fused.validate(tp)?;
        specs.push(ModelWeightTransformationSpecs {
            module_fully_qualified_name: format!("{p}.mlp"),
            specs: vec![Spec::FusedLinears(fused)],
        });
    }
    parameters.insert("model.norm.weight".to_string(), ParameterMetadata::replicated());
    if !cfg.tie_word_embeddings {
        parameters.insert("lm_head.weight".to_string(), par(0, 1));
    }
    parameters.sort_keys();
    Ok(CheckpointMetadata {
        format_version: Some(FORMAT_VERSION),
        tp_size: Some(tp),
        parameters,
        model_weight_transformation_specs: specs,
        rank_files: vec![],
    })
}
