//! neuron-spec: move model weights between the Hugging Face layout and tensor-parallel modules.
//!
//! Specs ([`specs`]) describe how a custom module's weights relate to the HF ones; for a TP size and rank
//! they compile into [`plan`]s of raw-byte block copies, which sharding, consolidation and reports all run.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod dtype;
pub mod error;
pub mod io;
pub mod llama;
pub mod metadata;
pub mod model;
pub mod module;
pub mod plan;
pub mod sharding;
pub mod specs;
pub mod staging;
pub mod tensor;

// The derive emits `::neuron_spec::...` paths; this makes them resolve inside this crate too.
extern crate self as neuron_spec;

pub use neuron_spec_derive::CustomModule;

/// Types the derive's generated code names, so a model crate needs no direct `burn`/`indexmap` dependency.
#[doc(hidden)]
pub mod __private {
    pub use burn::tensor::Device;
    pub use indexmap::IndexMap;
}

pub use dtype::DType;
pub use error::{Error, Result};
pub use metadata::{CheckpointMetadata, ParameterMetadata};
pub use model::{adapt_state_dict, to_original_weights, PlanOptions};
pub use plan::{Block, ShardPlan, Source, TensorInfo, TensorPlan, TensorSource};
pub use sharding::{create_local_fused_weight, create_local_weight_with_padding};
pub use specs::{FuseAxis, FusedLinearsSpec, GqaQkvColumnParallelLinearSpec, ModelWeightTransformationSpecs, Spec};
pub use tensor::{HostTensor, StateDict};
