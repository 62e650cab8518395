//! Training the TP model: Megatron's vocab-parallel loss, AdamW with torch's semantics, the gradient
//! bookkeeping of replicated parameters, and one rank's trainer. The differentiable collectives are in
//! [`crate::layers`] (`copy_to_tp_region`, `reduce_from_tp_region`).

mod adamw;
mod checkpoint;
mod lora_checkpoint;
mod lora_masks;
mod loss;
#[cfg(feature = "mpi")]
mod mpi_checkpoint;
mod replicas;
mod trainer;

pub use crate::train_state::{
    consolidate_optimizer, has_optimizer_state, optimizer_adapter, read_state_json, OPTIMIZER_DIR, STATE_JSON,
};
pub use adamw::AdamWConfig;
pub use checkpoint::{
    read_optimizer_state, reshard_trained, write_trained_checkpoint, write_trained_metadata, write_trained_rank,
    RankWritten,
};
pub use lora_checkpoint::{trained_adapter, write_lora_checkpoint, FrozenBase};
pub use lora_masks::exact_lora_masks;
pub use loss::vocab_parallel_causal_lm_loss;
#[cfg(feature = "mpi")]
pub use mpi_checkpoint::write_trained_checkpoint_mpi;
pub use replicas::{local_norm_sq, sum_kv_replicas, GradMap};
pub use trainer::{is_lora_name, LoraMasks, OptimizerState, RankTrainer, StepProfile, TrainMode, TrainOptions};
