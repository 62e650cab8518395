//! A Llama-family model (Llama, Mistral, Qwen2) on `neuron_spec`'s tensor-parallel burn layers, loaded rank by
//! rank straight from an HF checkpoint (or from a sharded checkpoint) and run on threads.
//!
//! GQA (including MQA, whose single kv head every rank replicates), tied embeddings (the logits use the
//! vocab-parallel embedding weight), RMSNorm, RoPE with HF's `rotate_half` convention, SwiGLU MLP, causal
//! eager attention in f32. bf16/f16 checkpoints are widened to f32 when loaded.
//!
//! # The annotated model
//!
//! This is the model tree users write: burn's `Module` for the forward pass, `#[derive(CustomModule)]` for the
//! HF layout. The two attributes say which HF linears a layer replaces; every number (heads, sizes, TP size
//! and rank) comes from the layers themselves. Field names are HF module names, so parameter paths are HF
//! paths.
//!
//! ```ignore
//! use burn::module::Module;
//! use burn::nn::RmsNorm;
//! use neuron_spec::layers::{
//!     ColumnParallelLinear, GqaQkvColumnParallelLinear, ParallelEmbedding, RowParallelLinear,
//! };
//! use neuron_spec::CustomModule;
//!
//! #[derive(Module, Debug, CustomModule)]
//! pub struct LlamaForCausalLM {
//!     pub model: LlamaModel,
//!     /// `None` when tied to `model.embed_tokens`.
//!     pub lm_head: Option<ColumnParallelLinear>,
//! }
//!
//! #[derive(Module, Debug, CustomModule)]
//! pub struct LlamaModel {
//!     pub embed_tokens: ParallelEmbedding,
//!     pub layers: Vec<LlamaDecoderLayer>,
//!     pub norm: RmsNorm,
//! }
//!
//! #[derive(Module, Debug, CustomModule)]
//! pub struct LlamaDecoderLayer {
//!     pub self_attn: LlamaAttention,
//!     pub mlp: LlamaMlp,
//!     pub input_layernorm: RmsNorm,
//!     pub post_attention_layernorm: RmsNorm,
//! }
//!
//! #[derive(Module, Debug, CustomModule)]
//! pub struct LlamaAttention {
//!     /// One layer for HF's q_proj, k_proj and v_proj; o_proj follows its head permutation.
//!     #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
//!     pub qkv_proj: GqaQkvColumnParallelLinear,
//!     pub o_proj: RowParallelLinear,
//!     /// Constants are not part of the HF tree.
//!     pub rope_theta: f64,
//!     pub sliding_window: Option<usize>,
//! }
//!
//! #[derive(Module, Debug, CustomModule)]
//! pub struct LlamaMlp {
//!     /// One layer for HF's gate_proj and up_proj, in that order.
//!     #[fused_linears(gate_proj, up_proj)]
//!     pub gate_up_proj: ColumnParallelLinear,
//!     pub down_proj: RowParallelLinear,
//! }
//! ```
//!
//! Loading and running (one model per rank; [`run_tp_forward`] does this on threads):
//!
//! ```ignore
//! let model = LlamaForCausalLM::new(&cfg.llama, TpContext::new(tp, rank)?, fuse_qkv, None, &device)?
//!     .load_hf_rank(&checkpoint, &device, PlanOptions::default())?;
//! let out = model.forward(input_ids, &communicator)?;
//! ```
//!
//! # More than one device
//!
//! The layers talk to other ranks only through `neuron_spec::layers::Communicator` (all-reduce and
//! all-gather). To run ranks on separate devices or processes, implement it over the device collective
//! library (NCCL, MPI, ...) and pass it to `forward` instead of the `LocalCommunicator`; see that trait's
//! module docs for the two requirements (bitwise identical results on every rank, and failing instead of
//! hanging when a rank dies). No such implementation ships here: burn 0.22's own all-reduce only covers CUDA
//! and Remote devices, and burn-collective 0.21 does not build with burn 0.22.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

mod model;
mod run;
mod train;

pub use model::{LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMlp, LlamaModel, LlamaOutput};
pub use run::{
    load_hf_rank_model, model_metadata, run_ranks, run_sharded_forward, run_sharded_forward_with_adapters,
    run_tp_forward, run_tp_forward_dir, run_tp_forward_with_adapters, ForwardOutput, ModelConfig,
};
pub use train::{load_sharded_rank_model, train_ranks, TrainRun};
