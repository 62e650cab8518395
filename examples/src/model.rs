//! The Llama-family model (Llama, Mistral, Qwen2) built from the parallel layers. Field names follow the HF
//! module names, so burn paths are HF paths (see `neuron_spec::layers::HfRankStore` for the exceptions).

use burn::module::Module;
use burn::nn::{RmsNorm, RmsNormConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use neuron_spec::layers::{
    ColumnParallelLinear, ColumnParallelLinearConfig, Communicator, GqaQkvColumnParallelLinear,
    GqaQkvColumnParallelLinearConfig, ParallelEmbedding, ParallelEmbeddingConfig, RowParallelLinear,
    RowParallelLinearConfig,
};
use neuron_spec::llama::LlamaConfig;
use neuron_spec::module::TpContext;
use neuron_spec::{CustomModule, Error, Result};

/// Causal LM: the decoder stack and the vocab-parallel head (`None` when tied to `embed_tokens`).
#[derive(Module, CustomModule, Debug)]
pub struct LlamaForCausalLM {
    /// The decoder stack.
    pub model: LlamaModel,
    /// The lm_head, column-parallel over the vocabulary with gathered outputs; absent when tied.
    pub lm_head: Option<ColumnParallelLinear>,
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
    pub self_attn: LlamaAttention,
    /// SwiGLU MLP.
    pub mlp: LlamaMlp,
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
}

/// Eager causal GQA attention with RoPE; q/k/v/o are split by heads across ranks.
#[derive(Module, CustomModule, Debug)]
pub struct LlamaAttention {
    /// q/k/v of this rank's heads (the HF q_proj, k_proj, v_proj).
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    pub qkv_proj: GqaQkvColumnParallelLinear,
    /// Output projection, row-parallel over the heads.
    pub o_proj: RowParallelLinear,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest sequence the model attends over in full (Mistral's sliding window); longer inputs are refused.
    pub sliding_window: Option<usize>,
}

/// SwiGLU MLP with gate_proj and up_proj fused into one column-parallel layer.
#[derive(Module, CustomModule, Debug)]
pub struct LlamaMlp {
    /// `[gate_local | up_local]` outputs.
    #[fused_linears(gate_proj, up_proj)]
    pub gate_up_proj: ColumnParallelLinear,
    /// Row-parallel down projection.
    pub down_proj: RowParallelLinear,
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

/// Checks what the model supports, naming the config field.
fn check_config(cfg: &LlamaConfig) -> Result<()> {
    let bad = |field: &str, reason: String| Err(Error::spec("config", field, reason));
    if cfg.hidden_size == 0 || cfg.intermediate_size == 0 || cfg.vocab_size == 0 {
        return bad("hidden_size", "hidden_size, intermediate_size and vocab_size must be positive".into());
    }
    if cfg.num_attention_heads == 0 || cfg.kv_heads() == 0 || cfg.head_dim() == 0 {
        return bad("num_attention_heads", "heads, kv heads and head_dim must be positive".into());
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
    Ok(())
}

fn rms_norm(d: usize, eps: f64, device: &Device) -> RmsNorm {
    RmsNormConfig::new(d).with_epsilon(eps).init(device)
}

impl LlamaForCausalLM {
    /// The rank `tp.rank` model with lazily allocated weights (load them with `load_hf_rank` or
    /// `load_rank_tensors`). `fuse_qkv` picks the `weight_qkv` or `weight_q/_k/_v` layout.
    pub fn new(
        cfg: &LlamaConfig,
        tp: TpContext,
        fuse_qkv: bool,
        sliding_window: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        check_config(cfg)?;
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        let layer = || -> Result<LlamaDecoderLayer> {
            let qkv = GqaQkvColumnParallelLinearConfig::new(h, cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim())
                .with_fuse_qkv(fuse_qkv)
                .with_biases(cfg.qkv_bias(), cfg.o_bias());
            Ok(LlamaDecoderLayer {
                self_attn: LlamaAttention {
                    qkv_proj: qkv.init(tp, device)?,
                    o_proj: RowParallelLinearConfig::new(cfg.num_attention_heads * cfg.head_dim(), h)
                        .with_bias(cfg.o_bias())
                        .init(tp, device)?,
                    rope_theta: cfg.rope_theta,
                    sliding_window,
                },
                mlp: LlamaMlp {
                    gate_up_proj: ColumnParallelLinearConfig::new(h, 2 * i)
                        .with_bias(cfg.mlp_bias)
                        .with_fused_dims(vec![i, i])
                        .init(tp, device)?,
                    down_proj: RowParallelLinearConfig::new(i, h).with_bias(cfg.mlp_bias).init(tp, device)?,
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
            model: LlamaModel {
                embed_tokens: ParallelEmbeddingConfig::new(cfg.vocab_size, h).init(tp, device)?,
                layers,
                norm: rms_norm(h, eps, device),
            },
            lm_head,
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
        Ok(LlamaOutput { logits, hidden_states })
    }

    /// The final-normed hidden states (the lm_head's input) and the residual stream.
    pub(crate) fn final_hidden<C: Communicator>(
        &self,
        input_ids: Tensor<2, Int>,
        comm: &C,
    ) -> Result<(Tensor<3>, Vec<Tensor<3>>)> {
        let [_, seq] = input_ids.dims();
        if seq == 0 {
            return Err(Error::Invalid("empty sequence".into()));
        }
        let device = input_ids.device();
        let mut x = self.model.embed_tokens.forward(input_ids, comm)?;
        let rope = match self.model.layers.first() {
            Some(l) => Some(Rope::new(seq, l.self_attn.qkv_proj.head_dim, l.self_attn.rope_theta, &device)?),
            None => None,
        };
        let mask = causal_mask(seq, &device);
        let mut hidden_states = vec![x.clone()];
        for (layer, rope) in self.model.layers.iter().zip(std::iter::repeat(rope.as_ref())) {
            let rope = rope.ok_or_else(|| Error::Invalid("RoPE tables".into()))?;
            x = layer.forward(x, rope, &mask, comm)?;
            hidden_states.push(x.clone());
        }
        Ok((self.model.norm.forward(x), hidden_states))
    }
}

impl LlamaDecoderLayer {
    fn forward<C: Communicator>(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        mask: &Tensor<2, Bool>,
        comm: &C,
    ) -> Result<Tensor<3>> {
        let h = self.self_attn.forward(self.input_layernorm.forward(x.clone()), rope, mask, comm)?;
        let x = x + h;
        let h = self.mlp.forward(self.post_attention_layernorm.forward(x.clone()), comm)?;
        Ok(x + h)
    }
}

/// RoPE tables `[seq, head_dim]` for positions `0..seq`, with HF's layout (`cat(freqs, freqs)`).
struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Rope {
    fn new(seq: usize, head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        // As HF computes them in f32: inv_freq = 1 / theta^(2i / d), freqs = pos · inv_freq.
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        let mut cos = Vec::with_capacity(seq * head_dim);
        let mut sin = Vec::with_capacity(seq * head_dim);
        for p in 0..seq {
            for j in 0..head_dim {
                let f = p as f32 * inv[j % half];
                cos.push(f.cos());
                sin.push(f.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_data(TensorData::new(cos, [seq, head_dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [seq, head_dim]), device),
        })
    }

    /// `x·cos + rotate_half(x)·sin` for `x: [batch, heads, seq, head_dim]`.
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, d] = x.dims();
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone().unsqueeze::<4>() + rotated * self.sin.clone().unsqueeze::<4>()
    }
}

/// `true` where query `i` may not see key `j` (`j > i`).
fn causal_mask(seq: usize, device: &Device) -> Tensor<2, Bool> {
    let v: Vec<bool> = (0..seq).flat_map(|i| (0..seq).map(move |j| j > i)).collect();
    Tensor::from_bool(TensorData::new(v, [seq, seq]), device)
}

impl LlamaAttention {
    fn forward<C: Communicator>(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        mask: &Tensor<2, Bool>,
        comm: &C,
    ) -> Result<Tensor<3>> {
        let [b, s, _] = x.dims();
        if let Some(w) = self.sliding_window {
            if s > w {
                return Err(Error::Invalid(format!(
                    "sequence of {s} tokens is longer than the sliding window ({w}), which this model does not apply"
                )));
            }
        }
        let p = &self.qkv_proj;
        let (hq, hkv, hd) = (p.local_heads(), p.local_kv_heads(), p.head_dim);
        if hkv == 0 || hq % hkv != 0 {
            return Err(Error::Invalid(format!("{hq} local query heads cannot share {hkv} local kv heads")));
        }
        let qkv = p.forward_with(x, comm)?;
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let q = rope.apply(heads(qkv.q, hq));
        let k = rope.apply(heads(qkv.k, hkv));
        let v = heads(qkv.v, hkv);
        // Local kv head j serves the consecutive local query heads [j·g, (j+1)·g).
        let g = hq / hkv;
        let expand = |t: Tensor<4>| t.unsqueeze_dim::<5>(2).expand([b, hkv, g, s, hd]).reshape([b, hq, s, hd]);
        let (k, v) = (expand(k), expand(v));
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
        let scores = scores.mask_fill(mask.clone().unsqueeze::<4>().expand([b, hq, s, s]), f32::NEG_INFINITY);
        let out = softmax(scores, 3).matmul(v);
        let out = out.swap_dims(1, 2).reshape([b, s, hq * hd]);
        self.o_proj.forward(out, comm)
    }
}

impl LlamaMlp {
    fn forward<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        let tp = self.gate_up_proj.tp.size;
        let local: Vec<usize> = match &self.gate_up_proj.fused_dims {
            Some(d) if d.len() == 2 => d.iter().map(|x| x / tp).collect(),
            _ => return Err(Error::Invalid("gate_up_proj must fuse exactly gate_proj and up_proj".into())),
        };
        let y = self.gate_up_proj.forward(x, comm)?;
        let gate = y.clone().narrow(2, 0, local[0]);
        let up = y.narrow(2, local[0], local[1]);
        self.down_proj.forward(silu(gate) * up, comm)
    }
}
