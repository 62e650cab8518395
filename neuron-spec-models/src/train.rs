//! Training the example model: the vocab-parallel causal-LM loss, and a loop that runs every rank on its
//! own thread (one [`RankTrainer`] per rank, joined by a [`LocalCommunicator`](neuron_spec::comm::LocalCommunicator)).
//!
//! ```no_run
//! use burn::tensor::Device;
//! use neuron_spec::format::HfCheckpoint;
//! use neuron_spec::train::{AdamWConfig, RankTrainer, TrainMode, TrainOptions};
//! use neuron_spec::StateDict;
//! use neuron_spec_models::{load_hf_rank_model, train_ranks, ModelConfig};
//! use std::path::Path;
//!
//! # fn main() -> neuron_spec::Result<()> {
//! let dir = Path::new("tests/fixtures/llama-gqa");
//! let cfg = ModelConfig::read(&dir.join("config.json"))?;
//! let hf = HfCheckpoint::open(dir)?;
//! let options = TrainOptions {
//!     adamw: AdamWConfig { lr: 1e-2, betas: (0.9, 0.999), eps: 1e-6, weight_decay: 0.01 },
//!     grad_clip: None,
//!     mode: TrainMode::Full,
//! };
//! let batch = vec![vec![1i64, 17, 42, 99, 3, 127, 64], vec![5, 0, 88, 23, 111, 7, 56]];
//! // tp 4: each rank loads its own slices of the HF checkpoint on an autodiff device.
//! let run = train_ranks(4, &[batch], 3, &|ctx, device| {
//!     let model = load_hf_rank_model(&hf, &cfg, ctx, true, device)?;
//!     RankTrainer::new(model, &StateDict::new(), options, device)
//! }, &|step, loss| println!("step {step} loss {loss}"))?;
//! // run.ranks[r]: rank r's trained tensors and AdamW state, ready for a sharded checkpoint.
//! # let _ = Device::default();
//! # Ok(())
//! # }
//! ```

use crate::config::ModelConfig;
use crate::model::LlamaForCausalLM;
/// The device ranks train on (`Device::default().autodiff()`), for code that builds trainers without
/// depending on burn itself.
pub use burn::tensor::Device;
use burn::tensor::{Int, Tensor, TensorData};
use neuron_spec::checkpoint::ShardedCheckpoint;
use neuron_spec::comm::Communicator;
use neuron_spec::spec::contract::CustomModule;
use neuron_spec::spec::contract::TpContext;
use neuron_spec::train::{vocab_parallel_causal_lm_loss, OptimizerState, RankTrainer};
use neuron_spec::{CheckpointMetadata, Error, Result, Spec, StateDict, TensorSource};
use std::path::Path;

impl LlamaForCausalLM {
    /// The mean next-token cross-entropy over `input_ids` (`[batch][seq]`), as transformers'
    /// `labels=input_ids`; vocab-parallel (the logits are never gathered), the same on every rank.
    pub fn causal_lm_loss<C: Communicator>(&self, input_ids: &[Vec<i64>], comm: &C) -> Result<Tensor<1>> {
        let b = input_ids.len();
        let s = input_ids.first().map_or(0, Vec::len);
        if b == 0 || s == 0 || input_ids.iter().any(|r| r.len() != s) {
            return Err(Error::Invalid("a batch must hold equally long, non-empty sequences".into()));
        }
        let device = self.model.embed_tokens.weight.val().device();
        let vocab = self.model.embed_tokens.num_embeddings;
        if let Some(bad) = input_ids.iter().flatten().find(|t| **t < 0 || **t as usize >= vocab) {
            return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary [0, {vocab})")));
        }
        let flat: Vec<i64> = input_ids.iter().flatten().copied().collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, s]), &device);
        let (x, _) = self.final_hidden(ids, comm)?;
        let (logits, start) = match &self.lm_head {
            Some(h) => (h.forward_local(x, comm)?, comm.context().rank * h.local_out_features),
            None => (self.model.embed_tokens.attend_local(x, comm)?, self.model.embed_tokens.vocab_start()),
        };
        vocab_parallel_causal_lm_loss(self.scale_logits(logits), input_ids, start, vocab, comm)
    }
}

/// The result of [`train_ranks`].
#[derive(Debug, Clone)]
pub struct TrainRun {
    /// The loss before each step (rank 0's; every rank computes the same).
    pub losses: Vec<f32>,
    /// Each rank's trained rank tensors and AdamW state, in rank order.
    pub ranks: Vec<(StateDict, OptimizerState)>,
    /// Each rank's last gradients, where its trainer kept them (`keep_grads`).
    pub grads: Vec<Option<StateDict>>,
}

/// Rank `ctx.rank`'s model from a sharded checkpoint (trained or sharded by `neuron-spec shard`), on `device`.
pub fn load_sharded_rank_model(
    ck: &ShardedCheckpoint,
    cfg: &ModelConfig,
    ctx: TpContext,
    device: &Device,
) -> Result<LlamaForCausalLM> {
    let rank = ck.ranks.get(ctx.rank).ok_or_else(|| Error::Invalid(format!("no rank file for rank {}", ctx.rank)))?;
    load_rank_file_model(&ck.dir, &ck.metadata, ck.tp, rank, cfg, ctx, device)
}

/// Rank `ctx.rank`'s model from its own rank file `rank` of the sharded checkpoint in `dir` (metadata
/// `metadata`, at tp `tp`), on `device`: what one process per rank loads, reading no other rank's file.
pub fn load_rank_file_model(
    dir: &Path,
    metadata: &CheckpointMetadata,
    tp: usize,
    rank: &dyn TensorSource,
    cfg: &ModelConfig,
    ctx: TpContext,
    device: &Device,
) -> Result<LlamaForCausalLM> {
    let fuse_qkv = metadata.specs().any(|(_, s)| matches!(s, Spec::GqaQkv(g) if g.fuse_qkv));
    let model = LlamaForCausalLM::from_config(cfg, ctx, crate::QkvLayout::gqa(fuse_qkv), device)?;
    let ours = model.create_parameter_metadata()?;
    if ours.model_weight_transformation_specs != metadata.model_weight_transformation_specs || tp != ctx.size {
        return Err(Error::Metadata {
            path: dir.join(neuron_spec::checkpoint::METADATA_PATH),
            reason: "the checkpoint's layout differs from this model's (other config or tp?)".into(),
        });
    }
    model.load_rank_tensors("", rank, device)
}

/// One rank's result of training: its losses, trained tensors, AdamW state and kept gradients.
#[derive(Debug, Clone)]
pub struct RankTrained {
    /// The loss before each step (the same on every rank).
    pub losses: Vec<f32>,
    /// The trained rank tensors, as the rank file stores them.
    pub tensors: StateDict,
    /// The AdamW state.
    pub state: OptimizerState,
    /// The last gradients, where the trainer kept them (`keep_grads`).
    pub grads: Option<StateDict>,
}

/// Builds the trainer of one rank on the given autodiff device, from that rank's own data.
pub type RankInit<'a> = dyn Fn(TpContext, &Device) -> Result<RankTrainer<LlamaForCausalLM>> + 'a;

/// Trains this rank of `comm`'s group (threads or processes alike) for `steps` steps, batch `k % batches.len()`
/// at step `k`: builds its trainer with `init` on an autodiff device, and calls `on_step(k, loss)` on rank 0
/// after each step (1-based). Every rank of the group calls it together.
pub fn train_rank<C: Communicator>(
    comm: &C,
    batches: &[Vec<Vec<i64>>],
    steps: usize,
    init: &RankInit<'_>,
    on_step: &dyn Fn(usize, f32),
) -> Result<RankTrained> {
    if batches.is_empty() {
        return Err(Error::Invalid("no training data".into()));
    }
    let device = Device::default().autodiff();
    let mut t = init(comm.context(), &device)?;
    let mut losses = Vec::with_capacity(steps);
    for k in 0..steps {
        let batch = &batches[k % batches.len()];
        let l = t.step(comm, |m, c| m.causal_lm_loss(batch, c))?;
        if comm.context().rank == 0 {
            on_step(t.state.step as usize, l);
        }
        losses.push(l);
    }
    Ok(RankTrained { losses, tensors: t.rank_tensors()?, state: t.state, grads: t.last_grads })
}

/// Trains `tp` ranks on threads ([`train_rank`] on each) for `steps` steps, batch `k % batches.len()` at step
/// `k`. `init` builds a rank's trainer on the given autodiff device (from its own data: ranks share no
/// tensors); `on_step(k, loss)` is called by rank 0 after each step (1-based).
pub fn train_ranks(
    tp: usize,
    batches: &[Vec<Vec<i64>>],
    steps: usize,
    init: &(dyn Fn(TpContext, &Device) -> Result<RankTrainer<LlamaForCausalLM>> + Sync),
    on_step: &(dyn Fn(usize, f32) + Sync),
) -> Result<TrainRun> {
    if batches.is_empty() {
        return Err(Error::Invalid("no training data".into()));
    }
    let results = crate::run::on_rank_threads(tp, &|comm| train_rank(comm, batches, steps, init, on_step))?;
    let mut ranks = Vec::with_capacity(tp);
    let mut losses = Vec::new();
    let mut grads = Vec::with_capacity(tp);
    for (r, t) in results.into_iter().enumerate() {
        if r == 0 {
            losses = t.losses;
        }
        ranks.push((t.tensors, t.state));
        grads.push(t.grads);
    }
    Ok(TrainRun { losses, ranks, grads })
}
