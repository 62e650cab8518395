//! neuron-spec: move model weights between the Hugging Face layout and tensor-parallel (TP) modules.
//!
//! Built on burn `=0.22.1` with `default-features = false` and the features `std`, `flex` (the default CPU
//! backend), `ndarray`, `simd` and `rayon` (add `autodiff` and `optim` to train); loading through burn-store (`=0.22.1`, features `std`, `safetensors`).
//! This crate's own feature `burn` (on by default) holds the parallel layers ([`layers`]); without it the
//! crate is the I/O, spec and plan runtime plus the module contract ([`spec::contract`], with a stand-in `Device`).
//!
//! # From an annotated model to rank files and back
//!
//! 1. **Annotate** a burn model: `#[derive(Module, CustomModule)]` on each struct, field names as HF module
//!    names, and on each fused layer the HF linears it replaces (`#[fused_linears(..)]`, `#[gqa_qkv(..)]`,
//!    `#[hf(rename = "..")]`, `#[hf(skip)]`: the attribute reference is on the derive itself,
//!    [`CustomModule`](derive@CustomModule)). The derive generates the spec, metadata and load/save methods,
//!    not a constructor or a `forward`: those are the model's own. Every number (heads, sizes, TP size and rank) is read from the
//!    layers.
//! 2. **Build one rank**: each layer gets a [`TpContext`](spec::contract::TpContext) (an explicit value, no globals).
//! 3. **Ask the model**: `transformation_specs()` (the reference's specs, by module path) and
//!    `create_parameter_metadata()` (what a sharded checkpoint records; its JSON is what
//!    `neuron-spec shard --layout FILE` takes).
//! 4. **Load a rank** from an HF checkpoint (`load_hf_rank`, the reference's `adapt_state_dict` then a load),
//!    or through burn-store: `model.load_from(&mut HfRankStore::for_model(&model, &hf)?)`.
//! 5. **Save**: `save_rank_tensors` gives the rank's tensors by HF name; [`shard()`] writes every
//!    rank of an HF folder to disk with the model's metadata, [`consolidate()`] writes the HF folder
//!    back and [`ops::reshard::reshard`] changes the TP size.
//!
//! ```
//! use burn::module::Module;
//! use neuron_spec::prelude::*;
//! use neuron_spec::{HostTensor, StateDict, TensorSource};
//!
//! #[derive(Module, CustomModule, Debug)]
//! pub struct Mlp {
//!     #[fused_linears(gate_proj, up_proj)]
//!     pub gate_up_proj: ColumnParallelLinear,
//!     pub down_proj: RowParallelLinear,
//! }
//!
//! #[derive(Module, CustomModule, Debug)]
//! pub struct Model {
//!     pub mlp: Mlp, // HF path `mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj`
//! }
//!
//! # fn main() -> neuron_spec::Result<()> {
//! let device = burn::tensor::Device::default();
//! let tp = TpContext::new(2, 1)?; // tp 2, rank 1
//! let model = Model {
//!     mlp: Mlp {
//!         gate_up_proj: ColumnParallelLinearConfig::new(8, 32).with_fused_members(2).init(tp, &device)?,
//!         down_proj: RowParallelLinearConfig::new(16, 8).init(tp, &device)?,
//!     },
//! };
//! let specs = model.transformation_specs()?;
//! assert_eq!(specs[0].module_fully_qualified_name, "mlp");
//! let meta = model.create_parameter_metadata()?; // meta.to_json()? is a `--layout` file
//! assert!(meta.parameters["mlp.down_proj.weight"].tensor_model_parallel);
//!
//! // An HF checkpoint: here in memory; `neuron_spec::format::HfCheckpoint::open(dir)?` maps a folder.
//! let mut hf = StateDict::new();
//! for (name, shape) in [("mlp.gate_proj.weight", [16, 8]), ("mlp.up_proj.weight", [16, 8]), ("mlp.down_proj.weight", [8, 16])] {
//!     hf.insert(name.to_string(), HostTensor::from_f32(shape.to_vec(), &[0.5; 128])?);
//! }
//! let model = model.load_hf_rank(&hf, &device, PlanOptions::default())?;
//! let mut rank = StateDict::new();
//! model.save_rank_tensors("", &mut rank)?; // rank 1's tensors by HF name
//! assert_eq!(rank.tensor("mlp.gate_up_proj.weight")?.shape(), &[16, 8]); // 8 rows of gate, 8 of up
//! assert_eq!(rank.tensor("mlp.down_proj.weight")?.shape(), &[8, 8]);
//! # Ok(())
//! # }
//! ```
//!
//! On disk, every rank at once (what `neuron-spec shard` does with a built-in layout):
//!
//! ```no_run
//! # use neuron_spec::prelude::*;
//! # fn main() -> neuron_spec::Result<()> {
//! # let meta: neuron_spec::CheckpointMetadata = todo!();
//! use neuron_spec::checkpoint::{ShardedCheckpoint, WriteOptions};
//! use neuron_spec::{consolidate, shard};
//! use std::path::Path;
//! shard(Path::new("hf_model"), Path::new("sharded"), &meta, 2, &WriteOptions::default())?;
//! let ck = ShardedCheckpoint::open(Path::new("sharded"))?; // checksums verified
//! let rank1 = &ck.ranks[1]; // a TensorSource: `model.load_rank_tensors("", rank1, &device)?`
//! # let _ = rank1;
//! consolidate(Path::new("sharded"), Path::new("hf_again"), &WriteOptions::default())?;
//! # Ok(())
//! # }
//! ```
//!
//! Without a model, the Llama-family layout comes from `config.json`:
//!
//! ```no_run
//! use neuron_spec::format::HfCheckpoint;
//! use neuron_spec::{adapt_state_dict, CheckpointMetadata, PlanOptions};
//! use std::path::Path;
//!
//! # fn main() -> neuron_spec::Result<()> {
//! let dir = Path::new("tests/fixtures/llama-gqa");
//! // Specs + parameter metadata at tp 4: a model's `create_parameter_metadata()` (see the examples crate's
//! // `layout`), here read back from a sharded checkpoint's metadata file.
//! let meta = CheckpointMetadata::read(Path::new("tests/fixtures/tp-ref/llama-gqa/tp4/metadata_fused.json"))?;
//! let hf = HfCheckpoint::open(dir)?; // memory-mapped: model.safetensors or the index
//! let rank1 = adapt_state_dict(&meta, &hf, 4, 1, PlanOptions::default())?; // tp and rank are arguments
//! assert!(rank1.contains_key("model.layers.0.self_attn.qkv_proj.weight_qkv"));
//! # Ok(())
//! # }
//! ```
//!
//! # Module map
//!
//! Folders by concern, in layers: a folder imports only the folders above it in this list (checked by the
//! workspace test `module_dag`, which holds the same order). Each folder's `mod.rs` says what it owns.
//!
//! 1. [`error`], [`progress`], [`compare`]: the crate's typed error, byte counts for long operations, and
//!    computed values against golden ones (numpy's `allclose`).
//! 2. [`tensor`]: element types, host tensors that keep the checkpoint's bytes, [`TensorSource`].
//! 3. [`format`](mod@format): safetensors read and write, HF folders, the writers' file-system calls, `.pt`
//!    rank files.
//! 4. [`plan`]: plans as data (which slices of which source tensors land where), the sharding helpers, the
//!    prefetch thread.
//! 5. [`spec`]: specs and layouts, parameter metadata, pipeline stages, the `CustomModule` contract, and the
//!    compiler from specs to plans (`adapt_state_dict`, the consolidation plan).
//! 6. [`lora`]: PEFT LoRA adapters in memory and in HF form (import, export, the fused-group modes).
//! 7. [`checkpoint`]: sharded checkpoints on disk: layout, rank files and their writer, stages, adapters,
//!    optimizer state, outputs staged in a temporary sibling.
//! 8. [`ops`]: shard, consolidate, reshard.
//! 9. `comm`: the collectives between ranks: local, MPI, the differentiable ones (feature `burn`).
//! 10. `layers`: the tensor-parallel burn layers (feature `burn`).
//! 11. [`train`]: training data files; with `burn`, the loss, AdamW, the gradient all-reduce, trained
//!     checkpoints.
//! 12. `prelude`: what a model crate imports (feature `burn`).
//!
//! The user guide is the mdBook in `docs/` (`mdbook build docs`); its pages with Rust code are doctests here.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod checkpoint;
#[cfg(feature = "burn")]
pub mod comm;
pub mod compare;
pub mod error;
pub mod format;
#[cfg(feature = "burn")]
pub mod layers;
pub mod lora;
pub mod ops;
pub mod plan;
#[cfg(feature = "burn")]
pub mod prelude;
pub mod progress;
pub mod spec;
pub mod tensor;
pub mod train;

// The book's pages that hold Rust code (docs/src/), compiled and run as doctests by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../../docs/src/architecture.md")]
mod book_architecture {}

// The derive emits `::neuron_spec::...` paths; this makes them resolve inside this crate too.
extern crate self as neuron_spec;

pub use neuron_spec_derive::CustomModule;

/// Types the derive's generated code names, so a model crate needs no direct `burn`/`indexmap` dependency.
#[doc(hidden)]
pub mod __private {
    pub use crate::spec::contract::Device;
    pub use indexmap::IndexMap;
}

pub use error::{Error, Result};
pub use ops::consolidate::{
    consolidate, consolidate_with_adapters, consolidate_with_optimizer, write_hf_folder, AdapterOptions,
};
pub use ops::shard::{shard, shard_with_adapters};
pub use plan::split::{create_local_fused_weight, create_local_weight_with_padding};
pub use plan::{Block, ShardPlan, Source, TensorPlan};
pub use spec::compile::{adapt_state_dict, to_original_weights, PlanOptions};
pub use spec::metadata::{CheckpointMetadata, ParameterMetadata};
pub use spec::{FuseAxis, FusedLinearsSpec, GqaQkvColumnParallelLinearSpec, ModelWeightTransformationSpecs, Spec};
pub use tensor::{DType, HostTensor, StateDict, TensorInfo, TensorSource};
