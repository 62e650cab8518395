//! What a model crate needs, in one import: `use neuron_spec::prelude::*;`.
//!
//! - the derive **and** the trait [`CustomModule`] (the same name in the macro and type namespaces, like
//!   serde's `Serialize`): the trait's provided methods (`transformation_specs`, `create_parameter_metadata`,
//!   ...) resolve only with the trait in scope; [`HfWeights`] (`load_hf_rank`, `adapt_state_dict`,
//!   `to_original_weights`) and [`PeftConfigForModel`] (`adapt_peft_config`, `to_original_peft_config`), the
//!   whole-model methods, provided for every `CustomModule`;
//! - [`TpContext`], the explicit TP size and rank each layer is built for;
//! - the parallel layers and their configs, [`Communicator`] and [`LocalCommunicator`] for the forward,
//!   [`HfRankStore`] for burn-store's `load_from` / `save_into` (which also need `burn_store::ModuleSnapshot`
//!   in scope);
//! - [`PlanOptions`], [`Result`] and [`Error`].

pub use crate::comm::{Communicator, LocalCommunicator};
pub use crate::layers::{
    ColumnParallelLinear, ColumnParallelLinearConfig, GqaQkvColumnParallelLinear, GqaQkvColumnParallelLinearConfig,
    HfRankStore, ParallelEmbedding, ParallelEmbeddingConfig, RowParallelLinear, RowParallelLinearConfig,
};
pub use crate::lora::PeftConfigForModel;
pub use crate::spec::compile::{HfWeights, PlanOptions};
pub use crate::spec::contract::{CustomModule, TpContext};
pub use crate::{Error, Result};
pub use neuron_spec_derive::CustomModule;
