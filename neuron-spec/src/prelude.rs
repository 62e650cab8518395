//! What a model crate needs, in one import: `use neuron_spec::prelude::*;`.
//!
//! - the derive **and** the trait [`CustomModule`] (the same name in the macro and type namespaces, like
//!   serde's `Serialize`): the trait's provided methods (`transformation_specs`, `create_parameter_metadata`,
//!   `load_hf_rank`, ...) resolve only with the trait in scope;
//! - [`TpContext`], the explicit TP size and rank each layer is built for;
//! - the parallel layers and their configs, [`Communicator`] and [`LocalCommunicator`] for the forward,
//!   [`HfRankStore`] for burn-store's `load_from` / `save_into` (which also need `burn_store::ModuleSnapshot`
//!   in scope);
//! - [`PlanOptions`], [`Result`] and [`Error`].

pub use crate::layers::{
    ColumnParallelLinear, ColumnParallelLinearConfig, Communicator, GqaQkvColumnParallelLinear,
    GqaQkvColumnParallelLinearConfig, HfRankStore, LocalCommunicator, ParallelEmbedding, ParallelEmbeddingConfig,
    RowParallelLinear, RowParallelLinearConfig,
};
pub use crate::model::PlanOptions;
pub use crate::module::{CustomModule, TpContext};
pub use crate::{Error, Result};
pub use neuron_spec_derive::CustomModule;
