//! Training the TP model: the training data files ([`data`], without burn) and, with the feature `burn`,
//! Megatron's vocab-parallel loss, AdamW with torch's semantics, the gradient bookkeeping of replicated
//! parameters, one rank's trainer and trained checkpoints. The differentiable collectives are in
//! [`crate::comm`] (`copy_to_tp_region`, `reduce_from_tp_region`).

#[cfg(feature = "burn")]
mod adamw;
mod allocator;
pub mod data;
#[cfg(feature = "burn")]
mod lora_masks;
#[cfg(feature = "burn")]
mod loss;
#[cfg(feature = "burn")]
mod replicas;
#[cfg(feature = "burn")]
mod save;
#[cfg(feature = "burn")]
mod save_lora;
#[cfg(feature = "mpi")]
mod save_mpi;
#[cfg(feature = "burn")]
mod trainer;

#[cfg(feature = "burn")]
pub use crate::checkpoint::optimizer::{
    consolidate_optimizer, has_optimizer_state, optimizer_adapter, read_state_json, OPTIMIZER_DIR, STATE_JSON,
};
#[cfg(feature = "burn")]
pub use adamw::AdamWConfig;
pub use allocator::keep_freed_memory;
#[cfg(feature = "burn")]
pub use lora_masks::exact_lora_masks;
#[cfg(feature = "burn")]
pub use loss::vocab_parallel_causal_lm_loss;
#[cfg(feature = "burn")]
pub use replicas::{local_norm_sq, sum_kv_replicas, GradMap};
#[cfg(feature = "burn")]
pub use save::{
    read_optimizer_state, reshard_trained, write_trained_checkpoint, write_trained_metadata, write_trained_rank,
    RankWritten,
};
#[cfg(feature = "burn")]
pub use save_lora::{trained_adapter, write_lora_checkpoint, FrozenBase};
#[cfg(feature = "mpi")]
pub use save_mpi::write_trained_checkpoint_mpi;
#[cfg(feature = "burn")]
pub use trainer::{is_lora_name, LoraMasks, OptimizerState, RankTrainer, StepProfile, TrainMode, TrainOptions};
