//! Phi-3 (transformers' `Phi3ForCausalLM`) on the parallel layers. Its HF checkpoint already stores q/k/v as
//! one `self_attn.qkv_proj` ([(h + 2·kv)·d, H], q rows then k then v) and gate/up as one `mlp.gate_up_proj`
//! ([2·I, H], gate then up): the `packed` attributes say so, and the rank-local layout is the same as the
//! other families' (query-head permutation, kv replication, gate/up shards per rank).
//!
//! The math is Llama's (RMSNorm, RoPE with `rotate_half`, SwiGLU, eager causal GQA attention). What this
//! model does not implement is refused, naming the config field: `rope_scaling` (longrope),
//! `partial_rotary_factor` other than 1, a `hidden_act` other than silu, a sliding window shorter than the
//! input.

use burn::module::Module;
use burn::nn::{RmsNorm, RmsNormConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use neuron_spec::layers::{
    ColumnParallelLinear, ColumnParallelLinearConfig, Communicator, GqaQkvColumnParallelLinear,
    GqaQkvColumnParallelLinearConfig, ParallelEmbedding, ParallelEmbeddingConfig, RowParallelLinear,
    RowParallelLinearConfig,
};
use neuron_spec::lora::{ImportedAdapter, LoraRankSource};
use neuron_spec::module::{CustomModule as _, TpContext};
use neuron_spec::CustomModule;
use neuron_spec::{Error, PlanOptions, Result, TensorSource};
use std::path::Path;

/// The `config.json` fields of a Phi-3 model that this implementation reads or refuses.
#[derive(Debug, Clone)]
pub struct Phi3Config {
    /// Must be `"phi3"`.
    pub model_type: String,
    /// Hidden size H.
    pub hidden_size: usize,
    /// MLP size I.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// kv heads (defaults to the query heads).
    pub num_key_value_heads: Option<usize>,
    /// Head size (defaults to `hidden_size / num_attention_heads`, as transformers does).
    pub head_dim: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base (default 10000).
    pub rope_theta: f64,
    /// RoPE scaling (longrope in the real Phi-3 configs): refused when set.
    pub rope_scaling: Option<serde_json::Value>,
    /// Fraction of head_dim that RoPE rotates (default 1): only 1 is implemented.
    pub partial_rotary_factor: f64,
    /// The MLP activation (default silu): only silu is implemented.
    pub hidden_act: String,
    /// The attention window; inputs longer than it are refused.
    pub sliding_window: Option<usize>,
    /// Whether lm_head is the embedding matrix.
    pub tie_word_embeddings: bool,
}

impl Phi3Config {
    /// Reads `config.json` and refuses what the model does not implement, naming the field.
    pub fn read(path: &Path) -> Result<Self> {
        let at = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| at(e.to_string()))?;
        crate::config_fields::check_keys(&v, path, &[])?;
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let int = |k: &str| -> Result<Option<usize>> {
            field(k)
                .map(|x| {
                    x.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| at(format!("{k} must be a non-negative integer, found {x}")))
                })
                .transpose()
        };
        let need = |k: &str| -> Result<usize> { int(k)?.ok_or_else(|| at(format!("missing {k}"))) };
        let float = |k: &str, d: f64| -> Result<f64> {
            field(k).map_or(Ok(d), |x| x.as_f64().ok_or_else(|| at(format!("{k} must be a number, found {x}"))))
        };
        let cfg = Self {
            model_type: field("model_type").and_then(|x| x.as_str()).unwrap_or("").to_string(),
            hidden_size: need("hidden_size")?,
            intermediate_size: need("intermediate_size")?,
            num_hidden_layers: need("num_hidden_layers")?,
            num_attention_heads: need("num_attention_heads")?,
            num_key_value_heads: int("num_key_value_heads")?,
            head_dim: int("head_dim")?,
            vocab_size: need("vocab_size")?,
            rms_norm_eps: float("rms_norm_eps", 1e-5)?,
            rope_theta: float("rope_theta", 10000.0)?,
            rope_scaling: field("rope_scaling").cloned(),
            partial_rotary_factor: float("partial_rotary_factor", 1.0)?,
            hidden_act: field("hidden_act").and_then(|x| x.as_str()).unwrap_or("silu").to_string(),
            sliding_window: int("sliding_window")?,
            tie_word_embeddings: field("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// kv heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head size.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size.checked_div(self.num_attention_heads).unwrap_or(0))
    }

    /// The refusals: every field that would change the math and is not implemented.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(Error::spec("config", field, reason));
        if self.model_type != "phi3" {
            return bad("model_type", format!("{:?} is not phi3", self.model_type));
        }
        if let Some(s) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return bad("rope_scaling", format!("{s} is not implemented for Phi-3 (only no scaling)"));
        }
        if self.partial_rotary_factor != 1.0 {
            return bad(
                "partial_rotary_factor",
                format!("{} is not implemented (only 1.0: RoPE over the whole head)", self.partial_rotary_factor),
            );
        }
        if self.hidden_act != "silu" {
            return bad("hidden_act", format!("{:?} is not implemented (only silu)", self.hidden_act));
        }
        if self.hidden_size == 0 || self.intermediate_size == 0 || self.vocab_size == 0 {
            return bad("hidden_size", "hidden_size, intermediate_size and vocab_size must be positive".into());
        }
        if self.num_attention_heads == 0 || self.kv_heads() == 0 || self.head_dim() == 0 || self.head_dim() % 2 == 1 {
            return bad("head_dim", "heads and kv heads must be positive and head_dim positive and even".into());
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return bad("rms_norm_eps", format!("must be positive, got {}", self.rms_norm_eps));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return bad("rope_theta", format!("must be positive, got {}", self.rope_theta));
        }
        Ok(())
    }
}

/// Causal LM: the decoder stack and the vocab-parallel head (`None` when tied).
#[derive(Module, CustomModule, Debug)]
pub struct Phi3ForCausalLM {
    /// The decoder stack.
    pub model: Phi3Model,
    /// Column-parallel over the vocabulary, gathered.
    pub lm_head: Option<ColumnParallelLinear>,
}

/// Embeddings, decoder layers and the final norm.
#[derive(Module, CustomModule, Debug)]
pub struct Phi3Model {
    /// Vocab-parallel token embeddings.
    pub embed_tokens: ParallelEmbedding,
    /// Decoder layers.
    pub layers: Vec<Phi3DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
}

/// One pre-norm decoder layer.
#[derive(Module, CustomModule, Debug)]
pub struct Phi3DecoderLayer {
    /// Self-attention.
    pub self_attn: Phi3Attention,
    /// SwiGLU MLP.
    pub mlp: Phi3Mlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

/// Attention whose HF q/k/v are one packed tensor.
#[derive(Module, CustomModule, Debug)]
pub struct Phi3Attention {
    /// This rank's q/k/v heads, read from HF's packed `qkv_proj`.
    #[gqa_qkv(packed = qkv_proj, o = o_proj)]
    pub qkv_proj: GqaQkvColumnParallelLinear,
    /// Output projection, row-parallel over the heads.
    pub o_proj: RowParallelLinear,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest input attended in full.
    pub sliding_window: Option<usize>,
}

/// SwiGLU MLP whose HF gate/up are one packed tensor.
#[derive(Module, CustomModule, Debug)]
pub struct Phi3Mlp {
    /// `[gate_local | up_local]`, read from HF's packed `gate_up_proj`.
    #[fused_linears(packed = gate_up_proj)]
    pub gate_up_proj: ColumnParallelLinear,
    /// Row-parallel down projection.
    pub down_proj: RowParallelLinear,
}

/// Logits and the residual stream of one forward pass.
#[derive(Debug, Clone)]
pub struct Phi3Output {
    /// `[batch, seq, vocab]`, identical on every rank.
    pub logits: Tensor<3>,
    /// The embedding output, then each decoder layer's raw output.
    pub hidden_states: Vec<Tensor<3>>,
}

fn rms_norm(d: usize, eps: f64, device: &Device) -> RmsNorm {
    RmsNormConfig::new(d).with_epsilon(eps).init(device)
}

impl Phi3ForCausalLM {
    /// Rank `tp.rank`'s model with lazily allocated weights; `fuse_qkv` picks `weight_qkv` or `weight_q/_k/_v`.
    pub fn new(cfg: &Phi3Config, tp: TpContext, fuse_qkv: bool, device: &Device) -> Result<Self> {
        cfg.check()?;
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        let (heads, kv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let layer = || -> Result<Phi3DecoderLayer> {
            Ok(Phi3DecoderLayer {
                self_attn: Phi3Attention {
                    qkv_proj: GqaQkvColumnParallelLinearConfig::new(h, heads, kv, hd)
                        .with_fuse_qkv(fuse_qkv)
                        .init(tp, device)?,
                    o_proj: RowParallelLinearConfig::new(heads * hd, h).init(tp, device)?,
                    rope_theta: cfg.rope_theta,
                    sliding_window: cfg.sliding_window,
                },
                mlp: Phi3Mlp {
                    gate_up_proj: ColumnParallelLinearConfig::new(h, 2 * i)
                        .with_fused_dims(vec![i, i])
                        .init(tp, device)?,
                    down_proj: RowParallelLinearConfig::new(i, h).init(tp, device)?,
                },
                input_layernorm: rms_norm(h, eps, device),
                post_attention_layernorm: rms_norm(h, eps, device),
            })
        };
        let layers = (0..cfg.num_hidden_layers).map(|_| layer()).collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(ColumnParallelLinearConfig::new(h, cfg.vocab_size).with_gather_output(true).init(tp, device)?)
        };
        Ok(Self {
            model: Phi3Model {
                embed_tokens: ParallelEmbeddingConfig::new(cfg.vocab_size, h).init(tp, device)?,
                layers,
                norm: rms_norm(h, eps, device),
            },
            lm_head,
        })
    }

    /// `[batch, seq]` ids → logits and hidden states (every rank runs this with its own communicator).
    pub fn forward<C: Communicator>(&self, input_ids: Tensor<2, Int>, comm: &C) -> Result<Phi3Output> {
        let [_, seq] = input_ids.dims();
        if seq == 0 {
            return Err(Error::Invalid("empty sequence".into()));
        }
        let device = input_ids.device();
        let mut x = self.model.embed_tokens.forward(input_ids, comm)?;
        let mask = causal_mask(seq, &device);
        let mut hidden_states = vec![x.clone()];
        for layer in &self.model.layers {
            let a = &layer.self_attn;
            let rope = Rope::new(seq, a.qkv_proj.head_dim, a.rope_theta, &device);
            let h = a.forward(layer.input_layernorm.forward(x.clone()), &rope, &mask, comm)?;
            x = x + h;
            let h = layer.mlp.forward(layer.post_attention_layernorm.forward(x.clone()), comm)?;
            x = x + h;
            hidden_states.push(x.clone());
        }
        let x = self.model.norm.forward(x);
        let logits = match &self.lm_head {
            Some(head) => head.forward(x, comm)?,
            None => self.model.embed_tokens.attend(x, comm)?,
        };
        Ok(Phi3Output { logits, hidden_states })
    }
}

/// RoPE tables `[seq, head_dim]` (HF's `cat(freqs, freqs)` layout, computed in f32 as HF does).
struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Rope {
    fn new(seq: usize, head_dim: usize, theta: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        let (mut cos, mut sin) = (Vec::with_capacity(seq * head_dim), Vec::with_capacity(seq * head_dim));
        for p in 0..seq {
            for j in 0..head_dim {
                let f = p as f32 * inv[j % half.max(1)];
                cos.push(f.cos());
                sin.push(f.sin());
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [seq, head_dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [seq, head_dim]), device),
        }
    }

    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, d] = x.dims();
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone().unsqueeze::<4>() + rotated * self.sin.clone().unsqueeze::<4>()
    }
}

fn causal_mask(seq: usize, device: &Device) -> Tensor<2, Bool> {
    let v: Vec<bool> = (0..seq).flat_map(|i| (0..seq).map(move |j| j > i)).collect();
    Tensor::from_bool(TensorData::new(v, [seq, seq]), device)
}

impl Phi3Attention {
    fn forward<C: Communicator>(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        mask: &Tensor<2, Bool>,
        comm: &C,
    ) -> Result<Tensor<3>> {
        let [b, s, _] = x.dims();
        if let Some(w) = self.sliding_window.filter(|w| s > *w) {
            return Err(Error::spec(
                "config",
                "sliding_window",
                format!("{s} tokens exceed the window {w}, which this model does not apply"),
            ));
        }
        let p = &self.qkv_proj;
        let (hq, hkv, hd) = (p.local_heads(), p.local_kv_heads(), p.head_dim);
        if hkv == 0 || hq % hkv != 0 {
            return Err(Error::Invalid(format!("{hq} local query heads cannot share {hkv} local kv heads")));
        }
        let qkv = p.forward(x)?;
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let q = rope.apply(heads(qkv.q, hq));
        let k = rope.apply(heads(qkv.k, hkv));
        let v = heads(qkv.v, hkv);
        let g = hq / hkv;
        let expand = |t: Tensor<4>| t.unsqueeze_dim::<5>(2).expand([b, hkv, g, s, hd]).reshape([b, hq, s, hd]);
        let (k, v) = (expand(k), expand(v));
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
        let scores = scores.mask_fill(mask.clone().unsqueeze::<4>().expand([b, hq, s, s]), f32::NEG_INFINITY);
        let out = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, s, hq * hd]);
        self.o_proj.forward(out, comm)
    }
}

impl Phi3Mlp {
    fn forward<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        let tp = self.gate_up_proj.tp.size;
        // Each member is padded to ceil(I / tp) rows per rank.
        let local = match &self.gate_up_proj.fused_dims {
            Some(d) if d.len() == 2 => d[0].div_ceil(tp),
            _ => return Err(Error::Invalid("gate_up_proj must fuse exactly gate and up".into())),
        };
        let y = self.gate_up_proj.forward(x, comm)?;
        let gate = y.clone().narrow(2, 0, local);
        let up = y.narrow(2, local, local);
        self.down_proj.forward(up * silu(gate), comm)
    }
}

/// Rank 0's logits and first two hidden states, flattened.
#[derive(Debug, Clone)]
pub struct Phi3Forward {
    /// `[batch, seq, vocab]` logits.
    pub logits: Vec<f32>,
    /// The embedding output.
    pub hidden_0: Vec<f32>,
    /// Decoder layer 0's output.
    pub hidden_1: Vec<f32>,
}

fn flat(t: Tensor<3>, what: &str) -> Result<Vec<f32>> {
    t.try_into_data()
        .map_err(|e| Error::Invalid(format!("{what}: {e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| Error::Invalid(format!("{what}: {e:?}")))
}

/// One rank's Phi-3 forward pass with any communicator (threads here, processes in `mpi_run`).
pub(crate) fn phi3_rank_forward<C: neuron_spec::layers::Communicator>(
    comm: &C,
    input_ids: &[Vec<i64>],
    load: &dyn Fn(TpContext, &Device) -> Result<Phi3ForCausalLM>,
) -> Result<Phi3Forward> {
    let (b, s) = (input_ids.len(), input_ids.first().map_or(0, Vec::len));
    let ids: Vec<i64> = input_ids.iter().flatten().copied().collect();
    let device = Device::default();
    let model = load(comm.context(), &device)?;
    let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, s]), &device);
    let out = model.forward(t, comm)?;
    let mut hs = out.hidden_states.into_iter();
    let h0 = hs.next().ok_or_else(|| Error::Invalid("no hidden states".into()))?;
    let h1 = hs.next().ok_or_else(|| Error::Invalid("no decoder layer".into()))?;
    Ok(Phi3Forward {
        logits: flat(out.logits, "logits")?,
        hidden_0: flat(h0, "hidden_0")?,
        hidden_1: flat(h1, "hidden_1")?,
    })
}

/// Runs `tp` ranks on threads, each loading its model with `load`; checks every rank computed rank 0's logits.
pub fn run_phi3_ranks(
    tp: usize,
    input_ids: &[Vec<i64>],
    load: &(dyn Fn(TpContext, &Device) -> Result<Phi3ForCausalLM> + Sync),
) -> Result<Phi3Forward> {
    let outs = crate::run::on_rank_threads(tp, &|comm| phi3_rank_forward(comm, input_ids, load))?;
    let mut outs = outs.into_iter();
    let first = outs.next().ok_or_else(|| Error::Invalid("no ranks ran".into()))?;
    for (r, o) in outs.enumerate() {
        if o.logits.iter().zip(&first.logits).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(Error::Invalid(format!("rank {} computed other logits than rank 0", r + 1)));
        }
    }
    Ok(first)
}

/// Runs Phi-3 at `tp` straight from an HF checkpoint, with `adapters` (imported for this model's layout at
/// `tp`) all active.
pub fn run_phi3_forward(
    src: &(dyn TensorSource + Sync),
    cfg: &Phi3Config,
    tp: usize,
    fuse_qkv: bool,
    adapters: &[ImportedAdapter],
    input_ids: &[Vec<i64>],
) -> Result<Phi3Forward> {
    run_phi3_ranks(tp, input_ids, &|ctx, device| load_phi3_hf_rank(src, cfg, ctx, fuse_qkv, adapters, device))
}

/// Rank `ctx.rank`'s Phi-3 from its own slices of the HF checkpoint `src`, with `adapters` active.
pub fn load_phi3_hf_rank(
    src: &dyn TensorSource,
    cfg: &Phi3Config,
    ctx: TpContext,
    fuse_qkv: bool,
    adapters: &[ImportedAdapter],
    device: &Device,
) -> Result<Phi3ForCausalLM> {
    let model = Phi3ForCausalLM::new(cfg, ctx, fuse_qkv, device)?;
    if adapters.is_empty() {
        return model.load_hf_rank(src, device, PlanOptions::default());
    }
    let meta = model.create_parameter_metadata()?;
    let local = neuron_spec::model::adapt_state_dict(&meta, src, ctx.size, ctx.rank, PlanOptions::default())?;
    let ras = adapters
        .iter()
        .map(|a| neuron_spec::lora::disk::imported_rank_adapter(&meta, a, ctx.size, ctx.rank))
        .collect::<Result<Vec<_>>>()?;
    model.load_rank_tensors("", &LoraRankSource::new(&local, ras)?, device)
}

/// The TP layout of Phi-3 at `tp`: the metadata of its lazily built rank-0 model (no weight allocated).
/// `QkvLayout::Plain` is refused: the packed `qkv_proj` is split by heads only.
pub fn phi3_layout(cfg: &Phi3Config, tp: usize, qkv: crate::QkvLayout) -> Result<neuron_spec::CheckpointMetadata> {
    let fuse_qkv = match qkv {
        crate::QkvLayout::Fused => true,
        crate::QkvLayout::Separate => false,
        crate::QkvLayout::Plain => {
            return Err(Error::Invalid(
                "--plain-attention is not implemented for phi3 (its packed qkv_proj is split by heads)".into(),
            ))
        }
    };
    Phi3ForCausalLM::new(cfg, TpContext::new(tp, 0)?, fuse_qkv, &Device::default())?.create_parameter_metadata()
}

/// Runs the sharded Phi-3 checkpoint in `dir` at its own tp, each rank from its own rank file. A checkpoint
/// that carries adapters is refused (run the HF checkpoint with `--adapter` instead).
pub fn run_phi3_sharded(dir: &Path, cfg: &Phi3Config, input_ids: &[Vec<i64>]) -> Result<Phi3Forward> {
    let ck = neuron_spec::checkpoint::ShardedCheckpoint::open(dir)?;
    if !neuron_spec::lora::disk::sharded_adapters(dir)?.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: Phi-3 runs a sharded checkpoint's base weights only; it holds adapters (run the HF checkpoint with --adapter)",
            dir.display()
        )));
    }
    run_phi3_ranks(ck.tp, input_ids, &|ctx, device| {
        let rank =
            ck.ranks.get(ctx.rank).ok_or_else(|| Error::Invalid(format!("no rank file for rank {}", ctx.rank)))?;
        load_phi3_rank_file(dir, &ck.metadata, rank, cfg, ctx, device)
    })
}

/// Rank `ctx.rank`'s Phi-3 from its own rank file `rank` of the sharded checkpoint in `dir` (metadata
/// `metadata`), reading no other rank's file.
pub fn load_phi3_rank_file(
    dir: &Path,
    metadata: &neuron_spec::CheckpointMetadata,
    rank: &dyn TensorSource,
    cfg: &Phi3Config,
    ctx: TpContext,
    device: &Device,
) -> Result<Phi3ForCausalLM> {
    let fused = metadata.specs().any(|(_, s)| matches!(s, neuron_spec::Spec::GqaQkv(g) if g.fuse_qkv));
    let model = Phi3ForCausalLM::new(cfg, ctx, fused, device)?;
    if model.create_parameter_metadata()?.model_weight_transformation_specs
        != metadata.model_weight_transformation_specs
    {
        return Err(Error::Metadata {
            path: dir.join(neuron_spec::checkpoint::METADATA_PATH),
            reason: "the checkpoint's layout differs from this Phi-3 config's".into(),
        });
    }
    model.load_rank_tensors("", rank, device)
}
