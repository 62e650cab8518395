//! The decoder every family here shares, built from the parallel layers. Field names follow the HF module
//! names, so burn paths are HF paths (see `neuron_spec::layers::HfRankStore` for the exceptions). What the
//! families add is chosen from their description (`family.rs`) and their config: Phi-3's packed q/k/v and
//! gate/up, Qwen3's `q_norm`/`k_norm`, Granite's multipliers, Qwen3-MoE's sparse blocks (`qwen3_moe.rs`),
//! Mixtral's `block_sparse_moe` (`mixtral.rs`), the RoPE variant (`rope.rs`), Gemma 3's `(1 + w)` norms, four
//! norms per layer, GELU-tanh MLP, sliding layers (window mask, own RoPE) and final logit softcapping.

use crate::config::{LlamaConfig, ModelConfig, Packing};
use crate::mixtral::MixtralSparseMoeBlock;
use crate::mlp::{LlamaMlp, PackedMlp};
use crate::qwen3_moe::Qwen3MoeSparseMoeBlock;
use crate::rope::{Rope, RopeConfig};
use burn::module::Module;
use burn::nn::{LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use neuron_spec::comm::Communicator;
use neuron_spec::layers::{
    ColumnParallelLinear, ColumnParallelLinearConfig, GqaQkvColumnParallelLinear, GqaQkvColumnParallelLinearConfig,
    ParallelEmbedding, ParallelEmbeddingConfig, RowParallelLinear, RowParallelLinearConfig,
};
use neuron_spec::spec::contract::{CustomModule as _, TpContext};
use neuron_spec::spec::MAX_HEADS;
use neuron_spec::{CheckpointMetadata, CustomModule, Error, Result};

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

/// The constants of the forward pass (not part of the HF tree).
#[derive(Debug, Clone)]
pub struct DecoderOptions {
    /// RoPE.
    pub rope: RopeConfig,
    /// Longest sequence attended over in full (an active sliding window); longer inputs are refused.
    pub sliding_window: Option<usize>,
    /// Granite's `embedding_multiplier` (1 elsewhere).
    pub embedding_multiplier: f64,
    /// Granite's `residual_multiplier` (1 elsewhere).
    pub residual_multiplier: f64,
    /// The softmax scale (`1/√head_dim`, or Granite's `attention_multiplier`).
    pub attention_scale: f64,
    /// Granite's `logits_scaling` (1 elsewhere).
    pub logits_scaling: f64,
    /// `pad_token_id`, torch's `padding_idx`: the token lookup passes no gradient to that embedding row.
    pub padding_idx: Option<usize>,
    /// Gemma: every RMSNorm weight is an offset from 1 (`x / rms(x) · (1 + w)`).
    pub norm_offset: bool,
    /// The RoPE of the sliding layers, when not `rope` (Gemma 3's `rope_local_base_freq`).
    pub local_rope: Option<RopeConfig>,
    /// Gemma's `final_logit_softcapping` `c`: the logits become `c · tanh(logits / c)`.
    pub final_logit_softcapping: Option<f64>,
}

impl DecoderOptions {
    /// The RMSNorm `n` of `x` (with Gemma's `1 +` offset on the weight when set).
    pub(crate) fn norm<const D: usize>(&self, n: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
        if !self.norm_offset {
            return n.forward(x);
        }
        let rms = (x.clone().square().mean_dim(D - 1) + n.epsilon).sqrt();
        (x / rms) * (n.gamma.val() + 1.0).unsqueeze()
    }

    /// Granite's `logits / logits_scaling`, then Gemma's softcapping (the identity elsewhere); elementwise, so
    /// it applies to a rank's vocab shard as well as to the gathered logits.
    pub(crate) fn finish_logits(&self, logits: Tensor<3>) -> Tensor<3> {
        let s = self.logits_scaling;
        let logits = if s == 1.0 { logits } else { logits / s };
        match self.final_logit_softcapping {
            Some(c) => (logits / c).tanh() * c,
            None => logits,
        }
    }
}

/// Causal LM: the decoder stack and the vocab-parallel head (`None` when tied to `embed_tokens`).
#[derive(Module, CustomModule, Debug)]
pub struct LlamaForCausalLM {
    /// The decoder stack.
    pub model: LlamaModel,
    /// The lm_head, column-parallel over the vocabulary with gathered outputs; absent when tied.
    pub lm_head: Option<ColumnParallelLinear>,
    /// Forward-pass constants.
    #[module(skip)]
    pub options: DecoderOptions,
}

/// Embeddings, decoder layers and the final norm.
#[derive(Module, CustomModule, Debug)]
pub struct LlamaModel {
    /// Vocab-parallel token embeddings.
    pub embed_tokens: ParallelEmbedding,
    /// Decoder layers.
    pub layers: Vec<LlamaDecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
}

/// One pre-norm decoder layer.
#[derive(Module, CustomModule, Debug)]
pub struct LlamaDecoderLayer {
    /// Self-attention.
    pub self_attn: SelfAttention,
    /// SwiGLU MLP, or a sparse MoE block (`None` on Mixtral's layers).
    pub mlp: Option<FeedForward>,
    /// Mixtral's sparse block, under its HF name (`None` elsewhere).
    pub block_sparse_moe: Option<MixtralSparseMoeBlock>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP (Gemma's sandwich norms: of the attention output, before its residual add).
    pub post_attention_layernorm: RmsNorm,
    /// Gemma: the norm before the MLP.
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    /// Gemma: the norm of the MLP output, before its residual add.
    pub post_feedforward_layernorm: Option<RmsNorm>,
    /// A sliding layer's window `w` (Gemma 3's `layer_types`): each query sees the last `w` positions, itself
    /// included, rotated by the sliding layers' RoPE; `None`: every earlier position.
    #[module(skip)]
    pub sliding_window: Option<usize>,
}

/// Eager causal GQA attention with RoPE; q/k/v/o are split by heads across ranks.
#[derive(Module, CustomModule, Debug)]
pub struct LlamaAttention {
    /// q/k/v of this rank's heads (the HF q_proj, k_proj, v_proj).
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    pub qkv_proj: GqaQkvColumnParallelLinear,
    /// Output projection, row-parallel over the heads.
    pub o_proj: RowParallelLinear,
    /// Qwen3: RMSNorm over head_dim of every query head, before RoPE (replicated).
    pub q_norm: Option<RmsNorm>,
    /// Qwen3: the same for the key heads.
    pub k_norm: Option<RmsNorm>,
}

/// [`LlamaAttention`] whose HF checkpoint stores q, k and v as one `qkv_proj` tensor (q rows, then k, then v):
/// Phi-3.
#[derive(Module, CustomModule, Debug)]
pub struct PackedAttention {
    /// q/k/v of this rank's heads, read from HF's packed `qkv_proj`.
    #[gqa_qkv(packed = qkv_proj, o = o_proj)]
    pub qkv_proj: GqaQkvColumnParallelLinear,
    /// Output projection, row-parallel over the heads.
    pub o_proj: RowParallelLinear,
    /// Per-head query norm (`None` for Phi-3).
    pub q_norm: Option<RmsNorm>,
    /// Per-head key norm (`None` for Phi-3).
    pub k_norm: Option<RmsNorm>,
}

/// q/k/v/o as plain column/row-parallel tensors under their HF names (`--plain-attention`): a storage
/// layout for a tp that does not divide the heads; it does not run.
#[derive(Module, CustomModule, Debug)]
pub struct PlainAttention {
    /// HF q_proj, split by rows.
    pub q_proj: ColumnParallelLinear,
    /// HF k_proj, split by rows.
    pub k_proj: ColumnParallelLinear,
    /// HF v_proj, split by rows.
    pub v_proj: ColumnParallelLinear,
    /// HF o_proj, split by columns.
    pub o_proj: RowParallelLinear,
    /// Qwen3's q_norm (replicated).
    pub q_norm: Option<RmsNorm>,
    /// Qwen3's k_norm (replicated).
    pub k_norm: Option<RmsNorm>,
}

/// The attention of a layer, in one of the layouts of [`QkvLayout`].
#[allow(clippy::large_enum_variant)]
#[derive(Module, CustomModule, Debug)]
pub enum SelfAttention {
    /// The GQA layer (fused or separate q/k/v).
    Gqa(LlamaAttention),
    /// The GQA layer read from a packed HF `qkv_proj`.
    Packed(PackedAttention),
    /// Plain column/row-parallel q/k/v/o.
    Plain(PlainAttention),
}

/// The MLP of a layer.
// One per layer, built once: boxing would buy nothing (and burn's Module is not implemented for Box).
#[allow(clippy::large_enum_variant)]
#[derive(Module, CustomModule, Debug)]
pub enum FeedForward {
    /// A dense SwiGLU MLP.
    Dense(LlamaMlp),
    /// A dense SwiGLU MLP read from a packed HF `gate_up_proj`.
    Packed(PackedMlp),
    /// Qwen3-MoE's router and experts.
    Sparse(Qwen3MoeSparseMoeBlock),
}

/// The outputs of one forward pass on one rank.
#[derive(Debug, Clone)]
pub struct LlamaOutput {
    /// `[batch, seq, vocab]` logits (gathered, identical on every rank).
    pub logits: Tensor<3>,
    /// The residual stream: the embedding output, then the raw output of each decoder layer (before the
    /// final norm).
    pub hidden_states: Vec<Tensor<3>>,
}

/// One rank's keys and values of the positions seen so far, per decoder layer (`[batch, local kv heads, past,
/// head_dim]`, after RoPE and the head norms, before the GQA expansion): what
/// [`LlamaForCausalLM::forward_cached`] appends to. After an error its contents are unspecified: start a new one.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Checks what the model supports, naming the config field; sizes are bounded so that no product overflows.
fn check_config(cfg: &LlamaConfig) -> Result<()> {
    let bad = |field: &str, reason: String| Err(Error::spec("config", field, reason));
    if cfg.hidden_size == 0 || cfg.intermediate_size == 0 || cfg.vocab_size == 0 {
        return bad("hidden_size", "hidden_size, intermediate_size and vocab_size must be positive".into());
    }
    if cfg.num_attention_heads == 0 || cfg.kv_heads() == 0 || cfg.head_dim() == 0 {
        return bad("num_attention_heads", "heads, kv heads and head_dim must be positive".into());
    }
    if cfg.num_attention_heads > MAX_HEADS || cfg.kv_heads() > MAX_HEADS {
        return bad(
            "num_attention_heads",
            format!("{} is above the supported maximum {MAX_HEADS}", cfg.num_attention_heads.max(cfg.kv_heads())),
        );
    }
    if cfg.num_hidden_layers > MAX_LAYERS {
        return bad(
            "num_hidden_layers",
            format!("{} is above the supported maximum {MAX_LAYERS}", cfg.num_hidden_layers),
        );
    }
    const MAX_DIM: usize = 1 << 24;
    for (f, v) in [
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("head_dim", cfg.head_dim()),
        ("vocab_size", cfg.vocab_size),
    ] {
        if v > MAX_DIM {
            return bad(f, format!("{v} is above the supported maximum {MAX_DIM}"));
        }
    }
    if cfg.head_dim() % 2 == 1 {
        return bad("head_dim", format!("RoPE needs an even head_dim, got {}", cfg.head_dim()));
    }
    if cfg.rms_norm_eps.is_nan() || cfg.rms_norm_eps <= 0.0 {
        return bad("rms_norm_eps", format!("must be positive, got {}", cfg.rms_norm_eps));
    }
    if cfg.rope_theta.is_nan() || cfg.rope_theta <= 0.0 {
        return bad("rope_theta", format!("must be positive, got {}", cfg.rope_theta));
    }
    padding_idx(cfg)?;
    Ok(())
}

/// `pad_token_id` as an embedding row (negative counts from the end, as torch's `padding_idx`); outside the
/// vocabulary it is refused, as `nn.Embedding` refuses it.
fn padding_idx(cfg: &LlamaConfig) -> Result<Option<usize>> {
    let Some(p) = cfg.pad_token_id else { return Ok(None) };
    let vocab = cfg.vocab_size as i64;
    let row = if p < 0 { p + vocab } else { p };
    if !(0..vocab).contains(&row) {
        return Err(Error::spec(
            "config",
            "pad_token_id",
            format!("{p} is outside the vocabulary (vocab_size {vocab})"),
        ));
    }
    Ok(Some(row as usize))
}

fn rms_norm(d: usize, eps: f64, device: &Device) -> RmsNorm {
    RmsNormConfig::new(d).with_epsilon(eps).init(device)
}

/// Builds the parts of the model of a config at one TP rank (the whole model, or a pipeline stage's share).
pub(crate) struct Builder<'a> {
    cfg: &'a ModelConfig,
    tp: TpContext,
    qkv: QkvLayout,
    device: &'a Device,
}

impl<'a> Builder<'a> {
    /// Checks the config (sizes, RoPE) once for every part.
    pub(crate) fn new(cfg: &'a ModelConfig, tp: TpContext, qkv: QkvLayout, device: &'a Device) -> Result<Self> {
        check_config(&cfg.llama)?;
        cfg.rope.validate()?;
        Ok(Self { cfg, tp, qkv, device })
    }

    fn dense(&self, i: usize) -> Result<LlamaMlp> {
        let (c, tp, device) = (&self.cfg.llama, self.tp, self.device);
        let h = c.hidden_size;
        Ok(LlamaMlp {
            gate_up_proj: ColumnParallelLinearConfig::new(h, 2 * i)
                .with_bias(c.mlp_bias)
                .with_fused_dims(vec![i, i])
                .init(tp, device)?,
            down_proj: RowParallelLinearConfig::new(i, h).with_bias(c.mlp_bias).init(tp, device)?,
            activation: self.cfg.activation,
        })
    }

    /// The dense MLP of the family's variant.
    fn dense_mlp(&self) -> Result<FeedForward> {
        let m = self.dense(self.cfg.llama.intermediate_size)?;
        Ok(match self.cfg.family.variants.gate_up {
            Packing::Separate => FeedForward::Dense(m),
            Packing::Packed => FeedForward::Packed(PackedMlp {
                gate_up_proj: m.gate_up_proj,
                down_proj: m.down_proj,
                activation: m.activation,
            }),
        })
    }

    /// Decoder layer `l` (its index in the whole model: Qwen3-MoE's sparse layers depend on it).
    pub(crate) fn layer(&self, l: usize) -> Result<LlamaDecoderLayer> {
        let (cfg, tp, qkv, device) = (self.cfg, self.tp, self.qkv, self.device);
        let c = &cfg.llama;
        let (h, eps, hd) = (c.hidden_size, c.rms_norm_eps, c.head_dim());
        let (heads, kv) = (c.num_attention_heads, c.kv_heads());
        let variants = cfg.family.variants;
        let norm = || variants.head_norms.then(|| rms_norm(hd, eps, device));
        let o_proj = RowParallelLinearConfig::new(heads * hd, h).with_bias(cfg.o_bias).init(tp, device)?;
        let self_attn = match (qkv, variants.qkv) {
            (QkvLayout::Plain, Packing::Packed) => {
                return Err(Error::spec(
                    "config",
                    "model_type",
                    format!(
                        "--plain-attention is not implemented for {} (its packed qkv_proj is split by heads)",
                        cfg.family.model_type
                    ),
                ))
            }
            (QkvLayout::Plain, Packing::Separate) => {
                let col = |out: usize| ColumnParallelLinearConfig::new(h, out).with_bias(cfg.qkv_bias).init(tp, device);
                SelfAttention::Plain(PlainAttention {
                    q_proj: col(heads * hd)?,
                    k_proj: col(kv * hd)?,
                    v_proj: col(kv * hd)?,
                    o_proj,
                    q_norm: norm(),
                    k_norm: norm(),
                })
            }
            (_, packing) => {
                let qkv_proj = GqaQkvColumnParallelLinearConfig::new(h, heads, kv, hd)
                    .with_fuse_qkv(qkv == QkvLayout::Fused)
                    .with_biases(cfg.qkv_bias, cfg.o_bias)
                    .init(tp, device)?;
                let (q_norm, k_norm) = (norm(), norm());
                match packing {
                    Packing::Separate => SelfAttention::Gqa(LlamaAttention { qkv_proj, o_proj, q_norm, k_norm }),
                    Packing::Packed => SelfAttention::Packed(PackedAttention { qkv_proj, o_proj, q_norm, k_norm }),
                }
            }
        };
        let (mlp, block_sparse_moe) = match &cfg.moe {
            Some(m) if m.sparse_layers.get(l).copied().unwrap_or(false) => {
                let gate = LinearConfig::new(h, m.num_experts).with_bias(false).init(device);
                let experts = (0..m.num_experts).map(|_| self.dense(m.moe_intermediate_size)).collect::<Result<_>>()?;
                let k = m.num_experts_per_tok;
                if variants.block_sparse_moe {
                    (None, Some(MixtralSparseMoeBlock::new(gate, experts, k)))
                } else {
                    let block = Qwen3MoeSparseMoeBlock { gate, experts, top_k: k, norm_topk_prob: m.norm_topk_prob };
                    (Some(FeedForward::Sparse(block)), None)
                }
            }
            _ => (Some(self.dense_mlp()?), None),
        };
        let sandwich = || variants.sandwich_norms.then(|| rms_norm(h, eps, device));
        Ok(LlamaDecoderLayer {
            self_attn,
            mlp,
            block_sparse_moe,
            input_layernorm: rms_norm(h, eps, device),
            post_attention_layernorm: rms_norm(h, eps, device),
            pre_feedforward_layernorm: sandwich(),
            post_feedforward_layernorm: sandwich(),
            sliding_window: cfg.layer_windows.get(l).copied().flatten(),
        })
    }

    /// The vocab-parallel token embedding.
    pub(crate) fn embedding(&self) -> Result<ParallelEmbedding> {
        let c = &self.cfg.llama;
        ParallelEmbeddingConfig::new(c.vocab_size, c.hidden_size).init(self.tp, self.device)
    }

    /// The final norm.
    pub(crate) fn final_norm(&self) -> RmsNorm {
        let c = &self.cfg.llama;
        rms_norm(c.hidden_size, c.rms_norm_eps, self.device)
    }

    /// The lm_head (`None` when tied to the embedding).
    pub(crate) fn lm_head(&self) -> Result<Option<ColumnParallelLinear>> {
        let c = &self.cfg.llama;
        if c.tie_word_embeddings {
            return Ok(None);
        }
        Ok(Some(
            ColumnParallelLinearConfig::new(c.hidden_size, c.vocab_size)
                .with_gather_output(true)
                .init(self.tp, self.device)?,
        ))
    }

    /// Whether the lm_head is the embedding.
    pub(crate) fn tied(&self) -> bool {
        self.cfg.llama.tie_word_embeddings
    }

    /// The forward-pass constants.
    pub(crate) fn options(&self) -> Result<DecoderOptions> {
        let (cfg, s) = (self.cfg, &self.cfg.scales);
        Ok(DecoderOptions {
            rope: cfg.rope.clone(),
            sliding_window: cfg.sliding_window,
            embedding_multiplier: s.embedding_multiplier,
            residual_multiplier: s.residual_multiplier,
            attention_scale: s.attention_multiplier.unwrap_or(1.0 / (cfg.llama.head_dim() as f64).sqrt()),
            logits_scaling: s.logits_scaling,
            padding_idx: padding_idx(&cfg.llama)?,
            norm_offset: cfg.family.variants.norm_offset,
            local_rope: cfg.local_rope.clone(),
            final_logit_softcapping: cfg.final_logit_softcapping,
        })
    }
}

impl LlamaForCausalLM {
    /// A Llama (default RoPE from `rope_theta`) at rank `tp.rank`, with lazily allocated weights (load them with
    /// `load_hf_rank` or `load_rank_tensors`). `fuse_qkv` picks the `weight_qkv` or `weight_q/_k/_v` layout.
    pub fn new(
        cfg: &LlamaConfig,
        tp: TpContext,
        fuse_qkv: bool,
        sliding_window: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let cfg = ModelConfig { sliding_window, ..ModelConfig::from(cfg.clone()) };
        Self::from_config(&cfg, tp, QkvLayout::gqa(fuse_qkv), device)
    }

    /// The model of any family at rank `tp.rank`, weights lazily allocated (a layout costs no weight memory).
    pub fn from_config(cfg: &ModelConfig, tp: TpContext, qkv: QkvLayout, device: &Device) -> Result<Self> {
        let b = Builder::new(cfg, tp, qkv, device)?;
        let layers = (0..cfg.llama.num_hidden_layers).map(|l| b.layer(l)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            model: LlamaModel { embed_tokens: b.embedding()?, layers, norm: b.final_norm() },
            lm_head: b.lm_head()?,
            options: b.options()?,
        })
    }

    /// `[batch, seq]` token ids → logits and hidden states. Every rank of the group runs this with its
    /// own communicator, on the same ids.
    pub fn forward<C: Communicator>(&self, input_ids: Tensor<2, Int>, comm: &C) -> Result<LlamaOutput> {
        let (x, hidden_states) = self.final_hidden(input_ids, comm)?;
        let logits = match &self.lm_head {
            Some(head) => head.forward(x, comm)?,
            None => self.model.embed_tokens.attend(x, comm)?,
        };
        Ok(LlamaOutput { logits: self.options.finish_logits(logits), hidden_states })
    }

    /// The next-token logits `[batch, 1, vocab]` after `input_ids` (`[batch, new]`, at positions `cache.len()..`),
    /// attending over the cached positions and the new ones; appends the new keys and values to `cache`. The
    /// first call (the prompt, an empty cache) uses the causal mask; a single new token needs none. Every rank
    /// runs this with its own cache and communicator, on the same ids.
    pub fn forward_cached<C: Communicator>(
        &self,
        input_ids: Tensor<2, Int>,
        cache: &mut KvCache,
        comm: &C,
    ) -> Result<Tensor<3>> {
        let [_, s] = input_ids.dims();
        let past = cache.len;
        if s == 0 {
            return Err(Error::InputData("forward_cached: no new token".into()));
        }
        check_seq(past + s, &self.options)?;
        let o = &self.options;
        let mut x = embed(&self.model.embed_tokens, input_ids, o, comm)?;
        let device = x.device();
        let masks = Masks::new(&self.model.layers, o, past, s, &device)?;
        cache.layers.resize_with(self.model.layers.len(), || None);
        for (layer, kv) in self.model.layers.iter().zip(cache.layers.iter_mut()) {
            let (rope, mask) = masks.of(layer);
            x = layer.forward(x, rope, mask, o, comm, Some(kv))?;
        }
        cache.len = past + s;
        let x = o.norm(&self.model.norm, x.narrow(1, s - 1, 1));
        let logits = match &self.lm_head {
            Some(head) => head.forward(x, comm)?,
            None => self.model.embed_tokens.attend(x, comm)?,
        };
        Ok(o.finish_logits(logits))
    }

    /// Granite's logits scaling and Gemma's softcapping ([`DecoderOptions::finish_logits`]).
    pub(crate) fn scale_logits(&self, logits: Tensor<3>) -> Tensor<3> {
        self.options.finish_logits(logits)
    }

    /// The final-normed hidden states (the lm_head's input) and the residual stream.
    pub(crate) fn final_hidden<C: Communicator>(
        &self,
        input_ids: Tensor<2, Int>,
        comm: &C,
    ) -> Result<(Tensor<3>, Vec<Tensor<3>>)> {
        check_seq(input_ids.dims()[1], &self.options)?;
        let mut x = embed(&self.model.embed_tokens, input_ids, &self.options, comm)?;
        let mut hidden_states = vec![x.clone()];
        x = run_layers(&self.model.layers, x, &self.options, comm, &mut hidden_states)?;
        Ok((self.options.norm(&self.model.norm, x), hidden_states))
    }
}

/// The token embedding (Granite: times `embedding_multiplier`): `[batch, seq]` ids → `[batch, seq, hidden]`.
/// The rows of `padding_idx` tokens are detached: as torch's `nn.Embedding(padding_idx=..)`, the lookup gives
/// that embedding row no gradient (the values are the same).
pub(crate) fn embed<C: Communicator>(
    embed_tokens: &ParallelEmbedding,
    input_ids: Tensor<2, Int>,
    o: &DecoderOptions,
    comm: &C,
) -> Result<Tensor<3>> {
    let pad = o.padding_idx.map(|p| input_ids.clone().equal_elem(p as i64));
    let x = embed_tokens.forward(input_ids, comm)?;
    let x = match pad {
        Some(mask) => {
            let mask = mask.unsqueeze_dim::<3>(2).expand(x.dims());
            x.clone().mask_where(mask, x.detach())
        }
        None => x,
    };
    Ok(if o.embedding_multiplier != 1.0 { x * o.embedding_multiplier } else { x })
}

/// Refuses an empty sequence, and one longer than an active sliding window.
pub(crate) fn check_seq(seq: usize, o: &DecoderOptions) -> Result<()> {
    if seq == 0 {
        return Err(Error::InputData("empty sequence".into()));
    }
    match o.sliding_window {
        Some(w) if seq > w => Err(Error::InputData(format!(
            "sequence of {seq} tokens is longer than the sliding window ({w}), which this model does not apply"
        ))),
        _ => Ok(()),
    }
}

/// `layers` in order over the residual stream `x` (`[batch, seq, hidden]`), each output pushed to `hidden_states`.
pub(crate) fn run_layers<C: Communicator>(
    layers: &[LlamaDecoderLayer],
    mut x: Tensor<3>,
    o: &DecoderOptions,
    comm: &C,
    hidden_states: &mut Vec<Tensor<3>>,
) -> Result<Tensor<3>> {
    let [_, seq, _] = x.dims();
    check_seq(seq, o)?;
    let device = x.device();
    let masks = Masks::new(layers, o, 0, seq, &device)?;
    for layer in layers {
        let (rope, mask) = masks.of(layer);
        x = layer.forward(x, rope, mask, o, comm, None)?;
        hidden_states.push(x.clone());
    }
    Ok(x)
}

/// The RoPE tables and masks of `seq` new positions after `past` cached ones: the full layers' (causal; none for
/// a single new position) and, when some layer slides, the sliding layers' (their RoPE, the window mask).
struct Masks {
    rope: Rope,
    causal: Option<Tensor<2, Bool>>,
    sliding: Option<(Rope, Tensor<2, Bool>)>,
}

impl Masks {
    fn new(layers: &[LlamaDecoderLayer], o: &DecoderOptions, past: usize, seq: usize, device: &Device) -> Result<Self> {
        let window = layers.iter().find_map(|l| l.sliding_window);
        if let Some(l) = layers.iter().find(|l| l.sliding_window.is_some_and(|w| Some(w) != window)) {
            return Err(Error::Argument(format!("sliding windows {:?} and {window:?} in one model", l.sliding_window)));
        }
        let rope = Rope::at(&o.rope, past, seq, device)?;
        let sliding = match window {
            Some(w) => Some((
                Rope::at(o.local_rope.as_ref().unwrap_or(&o.rope), past, seq, device)?,
                window_mask(past, seq, w, device),
            )),
            None => None,
        };
        Ok(Self { rope, causal: (seq > 1).then(|| causal_mask(past, seq, device)), sliding })
    }

    fn of(&self, layer: &LlamaDecoderLayer) -> (&Rope, Option<&Tensor<2, Bool>>) {
        match (&self.sliding, layer.sliding_window) {
            (Some((rope, mask)), Some(_)) => (rope, Some(mask)),
            _ => (&self.rope, self.causal.as_ref()),
        }
    }
}

impl LlamaDecoderLayer {
    fn forward<C: Communicator>(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        mask: Option<&Tensor<2, Bool>>,
        o: &DecoderOptions,
        comm: &C,
        kv: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Result<Tensor<3>> {
        let scale = |h: Tensor<3>| if o.residual_multiplier != 1.0 { h * o.residual_multiplier } else { h };
        let attn = match &self.self_attn {
            SelfAttention::Gqa(a) => {
                Attention { qkv_proj: &a.qkv_proj, o_proj: &a.o_proj, q_norm: &a.q_norm, k_norm: &a.k_norm }
            }
            SelfAttention::Packed(a) => {
                Attention { qkv_proj: &a.qkv_proj, o_proj: &a.o_proj, q_norm: &a.q_norm, k_norm: &a.k_norm }
            }
            SelfAttention::Plain(_) => {
                return Err(Error::Argument(
                    "the plain q/k/v layout stores weights for any tp and does not run; shard with the GQA layout"
                        .into(),
                ))
            }
        };
        let h = attn.forward(o.norm(&self.input_layernorm, x.clone()), rope, mask, o, comm, kv)?;
        let mlp = |y: Tensor<3>| match (&self.mlp, &self.block_sparse_moe) {
            (Some(FeedForward::Dense(m)), None) => m.forward(y, comm),
            (Some(FeedForward::Packed(m)), None) => m.forward(y, comm),
            (Some(FeedForward::Sparse(m)), None) => m.forward(y, comm),
            (None, Some(m)) => m.forward(y, comm),
            _ => Err(Error::Argument("a decoder layer needs exactly one of mlp and block_sparse_moe".into())),
        };
        match (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            // Gemma: each branch normed on its way in and on its way out.
            (Some(pre), Some(post)) => {
                let x = x + scale(o.norm(&self.post_attention_layernorm, h));
                let h = mlp(o.norm(pre, x.clone()))?;
                Ok(x + scale(o.norm(post, h)))
            }
            (None, None) => {
                let x = x + scale(h);
                let h = mlp(o.norm(&self.post_attention_layernorm, x.clone()))?;
                Ok(x + scale(h))
            }
            _ => Err(Error::Argument("a decoder layer has one of the two feed-forward norms, not both".into())),
        }
    }
}

/// `[seq, past + seq]`: `true` where the new query `i` (at position `past + i`) may not see key `j` (`j > past + i`).
fn causal_mask(past: usize, seq: usize, device: &Device) -> Tensor<2, Bool> {
    let t = past + seq;
    let v: Vec<bool> = (0..seq).flat_map(|i| (0..t).map(move |j| j > past + i)).collect();
    Tensor::from_bool(TensorData::new(v, [seq, t]), device)
}

/// [`causal_mask`] with a sliding window of `w` positions, as transformers' `sliding_window_causal_mask_function`:
/// query `q = past + i` sees key `j` when `q - w < j <= q`.
fn window_mask(past: usize, seq: usize, w: usize, device: &Device) -> Tensor<2, Bool> {
    let t = past + seq;
    let v: Vec<bool> = (0..seq).flat_map(|i| (0..t).map(move |j| j > past + i || j + w <= past + i)).collect();
    Tensor::from_bool(TensorData::new(v, [seq, t]), device)
}

/// What the attention forward reads of a layer, whichever way its HF checkpoint stores q/k/v.
struct Attention<'a> {
    qkv_proj: &'a GqaQkvColumnParallelLinear,
    o_proj: &'a RowParallelLinear,
    q_norm: &'a Option<RmsNorm>,
    k_norm: &'a Option<RmsNorm>,
}

impl Attention<'_> {
    fn forward<C: Communicator>(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        mask: Option<&Tensor<2, Bool>>,
        o: &DecoderOptions,
        comm: &C,
        kv: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Result<Tensor<3>> {
        let [b, s, _] = x.dims();
        let scale = o.attention_scale;
        let p = self.qkv_proj;
        let (hq, hkv, hd) = (p.local_heads(), p.local_kv_heads(), p.head_dim);
        if hkv == 0 || hq % hkv != 0 {
            return Err(Error::Argument(format!("{hq} local query heads cannot share {hkv} local kv heads")));
        }
        let qkv = p.forward_with(x, comm)?;
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        // Qwen3's and Gemma's q/k norms: burn's RmsNorm formula, with the replicated weight passed through
        // `copy_to_tp_region` (identity forward, all-reduce backward): each rank applies it to its own heads
        // only, so its gradient is the sum over the ranks.
        let norm = |t: Tensor<4>, n: &Option<RmsNorm>| -> Result<Tensor<4>> {
            match n {
                Some(n) => {
                    let w = neuron_spec::comm::copy_to_tp_region(n.gamma.val(), comm)?;
                    let w = if o.norm_offset { w + 1.0 } else { w };
                    let rms = (t.clone().square().mean_dim(3) + n.epsilon).sqrt();
                    Ok((t / rms) * w.unsqueeze::<4>())
                }
                None => Ok(t),
            }
        };
        let q = rope.apply(norm(heads(qkv.q, hq), self.q_norm)?);
        let k = rope.apply(norm(heads(qkv.k, hkv), self.k_norm)?);
        let v = heads(qkv.v, hkv);
        // With a cache: the cached positions' keys and values, then the new ones.
        let (k, v) = match kv {
            Some(slot) => {
                let kv = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
                    None => (k, v),
                };
                *slot = Some(kv.clone());
                kv
            }
            None => (k, v),
        };
        let t = k.dims()[2];
        // Local kv head j serves the consecutive local query heads [j·g, (j+1)·g).
        let g = hq / hkv;
        let expand = |x: Tensor<4>| x.unsqueeze_dim::<5>(2).expand([b, hkv, g, t, hd]).reshape([b, hq, t, hd]);
        let (k, v) = (expand(k), expand(v));
        let scores = q.matmul(k.swap_dims(2, 3)) * scale;
        let scores = match mask {
            Some(m) => scores.mask_fill(m.clone().unsqueeze::<4>().expand([b, hq, s, t]), f32::NEG_INFINITY),
            None => scores,
        };
        let out = softmax(scores, 3).matmul(v);
        let out = out.swap_dims(1, 2).reshape([b, s, hq * hd]);
        self.o_proj.forward(out, comm)
    }
}

/// The TP layout (specs and parameter metadata) of the model at `tp`: the metadata of its lazily built rank-0
/// model, with no weight allocated.
pub fn layout(cfg: &ModelConfig, tp: usize, qkv: QkvLayout) -> Result<CheckpointMetadata> {
    let d = Device::default();
    LlamaForCausalLM::from_config(cfg, TpContext::new(tp, 0)?, qkv, &d)?.create_parameter_metadata()
}
