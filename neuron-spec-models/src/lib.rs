//! Model families on `neuron_spec`'s tensor-parallel burn layers, and the [`runtime`] that runs them: a run
//! is a source (HF, sharded at any tp/pp, optimum-neuron `.pt`; with adapters) × a transport (threads or MPI
//! processes) × a task (forward, train, generate), executed by one [`run`]. The families: Llama (`llama.rs`),
//! Mistral (`mistral.rs`), Qwen2 (`qwen2.rs`), Qwen3 (`qwen3.rs`), Granite (`granite.rs`), Qwen3-MoE
//! (`qwen3_moe.rs`), Phi-3 (`phi3.rs`), Mixtral (`mixtral.rs`) and Gemma 3 text (`gemma3.rs`), all on the shared
//! decoder of `model.rs`, with the RoPE variants of `rope.rs`. Each family is one [`Family`] description in its
//! own file, chosen by `model_type` in the one family table ([`FAMILIES`], `family.rs`); `config.rs` reads
//! `config.json` through it, refusing what is not implemented, and the layout `shard`/`plan` use is the metadata
//! of the same (lazily built) model that runs `forward`.
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
//!     pub self_attn: SelfAttention, // enum: Gqa(LlamaAttention) | Packed(PackedAttention) | Plain(PlainAttention)
//!     pub mlp: Option<FeedForward>, // enum: Dense(LlamaMlp) | Packed(PackedMlp) | Sparse(Qwen3MoeSparseMoeBlock)
//!     pub block_sparse_moe: Option<MixtralSparseMoeBlock>, // Mixtral's, under its HF name
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
//!     /// Qwen3's per-head norms (`None` for Llama); RoPE and the other constants live in
//!     /// `LlamaForCausalLM::options` (`#[module(skip)]`, not part of the HF tree).
//!     pub q_norm: Option<RmsNorm>,
//!     pub k_norm: Option<RmsNorm>,
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
//! Phi-3's checkpoint packs q/k/v and gate/up: `PackedAttention` and `PackedMlp` are the same layers annotated
//! `#[gqa_qkv(packed = qkv_proj, o = o_proj)]` and `#[fused_linears(packed = gate_up_proj)]`.
//!
//! Loading and running one rank by hand (the [`runtime`] does this for every rank, on threads or MPI processes):
//!
//! ```ignore
//! let model = LlamaForCausalLM::from_config(&cfg, TpContext::new(tp, rank)?, QkvLayout::Fused, &device)?
//!     .load_hf_rank(&checkpoint, &device, PlanOptions::default())?;
//! let out = model.forward(input_ids, &communicator)?;
//! ```
//!
//! # More than one device
//!
//! The layers talk to other ranks only through `neuron_spec::comm::Communicator` (all-reduce and
//! all-gather). To run ranks on separate devices or processes, implement it over the device collective
//! library (NCCL, MPI, ...) and pass it to `forward` instead of the `LocalCommunicator`; see that trait's
//! module docs for the two requirements (bitwise identical results on every rank, and failing instead of
//! hanging when a rank dies). With the `mpi` feature, `runtime::Transport::Mpi` runs this process's rank with
//! `neuron_spec::comm::MpiCommunicator` (one process per rank). No device implementation ships: burn 0.22's
//! own all-reduce only covers CUDA and Remote devices, and burn-collective 0.21 does not build with burn 0.22.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

// The book's page whose Rust code uses this crate (docs/src/library.md), compiled as a doctest by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/src/library.md")]
mod book_library {}

pub mod config;
pub mod config_fields;
mod config_read_sets;
pub mod family;
pub mod gemma3;
pub mod generate;
pub mod granite;
pub mod llama;
mod loss;
pub mod mistral;
pub mod mixtral;
mod mlp;
mod model;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3_moe;
pub mod rope;
pub mod runtime;
mod stage;
pub mod synthetic;
pub mod text;

pub use config::{
    Activation, Family, GraniteScales, LlamaConfig, ModelConfig, MoeConfig, Packing, ReadExtras, Variants,
};
pub use config_fields::{ignored_keys, IMPLEMENTED_ANY_FAMILY, READ_SETS};
pub use family::{hf_tensor_infos, layout_of_dir, FAMILIES, MODEL_TYPES};
pub use generate::{
    choose_token, generate_text, rank_generate, GenerateOptions, Generated, Sampling, SplitMix64, TextModel,
};
pub use mixtral::{MixtralExpert, MixtralSparseMoeBlock};
pub use mlp::{LlamaMlp, PackedMlp};
pub use model::{
    layout, DecoderOptions, FeedForward, KvCache, LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel,
    LlamaOutput, PackedAttention, PlainAttention, QkvLayout, SelfAttention, MAX_LAYERS,
};
pub use qwen3_moe::Qwen3MoeSparseMoeBlock;
pub use rope::{RopeConfig, RopeScaling};
pub use runtime::{
    run, Activations, Adapter, Forward, ForwardOutput, Generate, Source, StageData, StageForward, StageRun, Train,
    TrainOutput, Transport,
};
pub use stage::{LlamaStage, StageInput, StageOutput};
pub use text::{eos_token_ids, TextStream, TextTokenizer};
