//! neuron-spec: move model weights between the Hugging Face layout and tensor-parallel modules.
//!
//! Specs ([`specs`]) describe how a custom module's weights relate to the HF ones; for a TP size and rank
//! they compile into [`plan`]s of raw-byte block copies, which sharding, consolidation and reports all run.
//!
//! ```no_run
//! use neuron_spec::io::HfCheckpoint;
//! use neuron_spec::llama::{llama_layout, LlamaConfig};
//! use neuron_spec::{adapt_state_dict, PlanOptions};
//! use std::path::Path;
//!
//! # fn main() -> neuron_spec::Result<()> {
//! let dir = Path::new("tests/fixtures/llama-gqa");
//! let cfg = LlamaConfig::read(&dir.join("config.json"))?;
//! let meta = llama_layout(&cfg, 4, true)?; // specs + parameter metadata at tp 4, fused qkv
//! let hf = HfCheckpoint::open(dir)?; // memory-mapped: model.safetensors or the index
//! let rank1 = adapt_state_dict(&meta, &hf, 4, 1, PlanOptions::default())?; // tp and rank are arguments
//! assert!(rank1.contains_key("model.layers.0.self_attn.qkv_proj.weight_qkv"));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod compare;
pub mod dtype;
pub mod error;
pub mod io;
#[cfg(feature = "burn")]
pub mod layers;
pub mod llama;
pub mod lora;
pub mod metadata;
pub mod model;
#[cfg(feature = "burn")]
pub mod module;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod pt;
pub mod rank_source;
pub mod reshard;
pub mod sharding;
pub mod specs;
pub mod stages;
pub mod staging;
pub mod synthetic;
pub mod tensor;

// The derive emits `::neuron_spec::...` paths; this makes them resolve inside this crate too.
extern crate self as neuron_spec;

pub use neuron_spec_derive::CustomModule;

/// Types the derive's generated code names, so a model crate needs no direct `burn`/`indexmap` dependency.
#[doc(hidden)]
#[cfg(feature = "burn")]
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
