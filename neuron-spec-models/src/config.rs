//! The model configuration ([`ModelConfig`]: the shared fields of [`LlamaConfig`] and what the families add) and
//! the description of a family ([`Family`]: its fields, its decoder [`Variants`], its own config reading). The
//! families' descriptions are in their files, the table choosing one by `model_type` in `family.rs` (which
//! also reads a `config.json` through it: `ModelConfig::read`).

use crate::rope::RopeConfig;
use neuron_spec::{Error, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The fields of an HF `config.json` that every family here reads (sizes, heads, norms, RoPE base, biases,
/// tying).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// `model_type` (one of `crate::MODEL_TYPES`).
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
    /// The positions RoPE was trained for (dynamic, yarn and longrope RoPE read it).
    #[serde(default)]
    pub max_position_embeddings: Option<f64>,
    /// The embedding's `padding_idx` (transformers passes it to `nn.Embedding`): that row gets no gradient from
    /// the token lookup (the forward pass is unchanged).
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}

impl LlamaConfig {
    /// Reads `config.json` (the shared fields only; [`crate::ModelConfig::read`] checks the rest).
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
}

/// Granite's multipliers; [`Default`] is what the other families compute (no scaling, softmax scale
/// `1/√head_dim`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraniteScales {
    /// Multiplies the embedding output.
    pub embedding_multiplier: f64,
    /// Multiplies the attention and MLP outputs before each residual add.
    pub residual_multiplier: f64,
    /// The softmax scale; `None`: `1/√head_dim`.
    pub attention_multiplier: Option<f64>,
    /// Divides the logits.
    pub logits_scaling: f64,
}

impl Default for GraniteScales {
    fn default() -> Self {
        Self { embedding_multiplier: 1.0, residual_multiplier: 1.0, attention_multiplier: None, logits_scaling: 1.0 }
    }
}

/// Routing and expert sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoeConfig {
    /// Experts per sparse layer.
    pub num_experts: usize,
    /// Experts per token.
    pub num_experts_per_tok: usize,
    /// Each expert's MLP size.
    pub moe_intermediate_size: usize,
    /// Renormalise the top-k weights to sum to 1.
    pub norm_topk_prob: bool,
    /// Which layers are sparse.
    pub sparse_layers: Vec<bool>,
}

/// How an HF checkpoint stores a group of linears that one rank-local layer replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// One HF tensor per linear (`q_proj`, `k_proj`, `v_proj`; `gate_proj`, `up_proj`).
    Separate,
    /// One HF tensor for the group (Phi-3's `qkv_proj`, `gate_up_proj`).
    Packed,
}

/// The variants of the shared decoder a family is built from (the rest comes from its config: Granite's
/// multipliers, Qwen3-MoE's sparse layers, the RoPE type, the biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variants {
    /// How the checkpoint stores q/k/v: `SelfAttention::Gqa` (separate) or `SelfAttention::Packed`.
    pub qkv: Packing,
    /// How it stores the MLP's gate/up: `FeedForward::Dense` (separate) or `FeedForward::Packed`.
    pub gate_up: Packing,
    /// Per-head `q_norm` / `k_norm` before RoPE (Qwen3).
    pub head_norms: bool,
    /// Whether a `sliding_window` is active without `use_sliding_window` / `layer_types` saying so (Mistral,
    /// Phi-3: their attention always applies it).
    pub sliding_window_by_default: bool,
    /// RMSNorm weights stored as offsets from 1: `x / rms(x) · (1 + w)` (Gemma), every norm of the model.
    pub norm_offset: bool,
    /// Four norms per layer (Gemma): `post_attention_layernorm` normalises the attention output before its
    /// residual add, `pre_feedforward_layernorm` the MLP input and `post_feedforward_layernorm` its output.
    pub sandwich_norms: bool,
    /// The sliding window is applied per layer as a window mask on the sliding layers, with their own RoPE
    /// ([`ModelConfig::layer_windows`], [`ModelConfig::local_rope`]); otherwise an active window refuses longer
    /// sequences.
    pub window_mask: bool,
    /// Whether the sparse layers are Mixtral's `block_sparse_moe` (experts' `w1`/`w3`/`w2`) rather than
    /// Qwen3-MoE's `mlp` (experts' `gate_proj`/`up_proj`/`down_proj`).
    pub block_sparse_moe: bool,
}

impl Variants {
    /// Llama's decoder: separate q/k/v and gate/up, no head norms, no window unless asked for.
    pub const LLAMA: Variants = Variants {
        qkv: Packing::Separate,
        gate_up: Packing::Separate,
        head_norms: false,
        sliding_window_by_default: false,
        norm_offset: false,
        sandwich_norms: false,
        window_mask: false,
        block_sparse_moe: false,
    };
}

/// The MLP's activation (`hidden_act` / Gemma's `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// SwiGLU: `silu(gate) · up`.
    #[default]
    Silu,
    /// GeGLU with torch's tanh-approximated GELU (`gelu_pytorch_tanh`): `gelu_tanh(gate) · up`.
    GeluTanh,
}

/// What a family reads from its `config.json` beyond the shared fields, once these are read and every field is
/// checked against the family's list: its own defaults, knobs and refusals (before RoPE is derived).
pub type ReadExtras = fn(&Value, &Path, &mut ModelConfig) -> Result<()>;

/// A family: one `model_type`, described as data.
#[derive(Debug)]
pub struct Family {
    /// The `model_type` of its configs.
    pub model_type: &'static str,
    /// The keys of transformers' read set for this `model_type` that it implements beyond
    /// [`IMPLEMENTED_ANY_FAMILY`](crate::config_fields::IMPLEMENTED_ANY_FAMILY) (any other read key is refused
    /// by name; keys transformers never reads are ignored).
    pub fields: &'static [&'static str],
    /// The variants of the shared decoder it is built from.
    pub variants: Variants,
    /// Its own config reading.
    pub read: ReadExtras,
}

impl PartialEq for Family {
    fn eq(&self, other: &Self) -> bool {
        self.model_type == other.model_type
    }
}

/// A [`ReadExtras`] for a family that reads nothing of its own.
pub fn no_extras(_: &Value, _: &Path, _: &mut ModelConfig) -> Result<()> {
    Ok(())
}

/// The model configuration: the HF `config.json` fields the weights and the forward pass depend on.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Sizes, heads, norms, RoPE base, biases, tying.
    pub llama: LlamaConfig,
    /// The family (its entry in the family table).
    pub family: &'static Family,
    /// The RoPE tables' parameters.
    pub rope: RopeConfig,
    /// An active sliding window (Mistral; Qwen2/3 with `use_sliding_window`): longer sequences are refused,
    /// not windowed.
    pub sliding_window: Option<usize>,
    /// Granite's multipliers (all 1 elsewhere).
    pub scales: GraniteScales,
    /// Qwen3-MoE's and Mixtral's routing and experts.
    pub moe: Option<MoeConfig>,
    /// Biases on q, k and v (`attention_bias`; Qwen2 always).
    pub qkv_bias: bool,
    /// A bias on o (`attention_bias`; never in Qwen2).
    pub o_bias: bool,
    /// The MLP's activation.
    pub activation: Activation,
    /// Per layer, the window of a sliding layer (`Some`: the window mask and [`Self::local_rope`]); empty
    /// unless the family's [`Variants::window_mask`] is set.
    pub layer_windows: Vec<Option<usize>>,
    /// The RoPE of the sliding layers (Gemma 3: `rope_local_base_freq`, no scaling); `None`: [`Self::rope`].
    pub local_rope: Option<RopeConfig>,
    /// Gemma's `final_logit_softcapping`: the logits become `c · tanh(logits / c)`.
    pub final_logit_softcapping: Option<f64>,
}
