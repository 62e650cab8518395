//! neuron-spec: move model weights between the Hugging Face layout and tensor-parallel (TP) modules.
//!
//! Built on burn `=0.22.1` with `default-features = false` and the features `std`, `flex` (the default CPU
//! backend), `ndarray`, `simd` and `rayon` (add `autodiff` and `optim` to train); loading through burn-store (`=0.22.1`, features `std`, `safetensors`).
//! This crate's own feature `burn` (on by default) holds the parallel layers ([`layers`]); without it the
//! crate is the I/O, spec and plan runtime plus the module contract ([`module`], with a stand-in `Device`).
//!
//! # From an annotated model to rank files and back
//!
//! 1. **Annotate** a burn model: `#[derive(Module, CustomModule)]` on each struct, field names as HF module
//!    names, and on each fused layer the HF linears it replaces (`#[fused_linears(..)]`, `#[gqa_qkv(..)]`,
//!    `#[hf(rename = "..")]`, `#[hf(skip)]`: the attribute reference is on the derive itself,
//!    [`CustomModule`](derive@CustomModule)). The derive generates the spec, metadata and load/save methods,
//!    not a constructor or a `forward`: those are the model's own. Every number (heads, sizes, TP size and rank) is read from the
//!    layers.
//! 2. **Build one rank**: each layer gets a [`TpContext`](module::TpContext) (an explicit value, no globals).
//! 3. **Ask the model**: `transformation_specs()` (the reference's specs, by module path) and
//!    `create_parameter_metadata()` (what a sharded checkpoint records; its JSON is what
//!    `neuron-spec shard --layout FILE` takes).
//! 4. **Load a rank** from an HF checkpoint (`load_hf_rank`, the reference's `adapt_state_dict` then a load),
//!    or through burn-store: `model.load_from(&mut HfRankStore::for_model(&model, &hf)?)`.
//! 5. **Save**: `save_rank_tensors` gives the rank's tensors by HF name; [`shard()`] writes every
//!    rank of an HF folder to disk with the model's metadata, [`consolidate()`] writes the HF folder
//!    back and [`reshard::reshard`] changes the TP size.
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
//! // An HF checkpoint: here in memory; `neuron_spec::io::HfCheckpoint::open(dir)?` maps a folder.
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
//! use neuron_spec::io::HfCheckpoint;
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
//! One line per top module; each module's own docs say what it owns.
//!
//! - [`checkpoint`]: sharded checkpoints on disk (the reference's layout, safetensors instead of pickles).
//! - [`compare`]: computed values against golden ones (numpy's `allclose`; NaN and infinity fail).
//! - [`consolidate`](mod@consolidate): a sharded checkpoint back to an HF folder, one tensor at a time.
//! - [`dtype`]: element types of checkpoint tensors, and casts (round to nearest even).
//! - [`error`]: the crate's typed error.
//! - [`io`]: safetensors in and out: memory-mapped reads, streaming writes, HF folders and indexes.
//! - [`layers`]: the tensor-parallel burn layers and the communicators (feature `burn`).
//! - [`lora`]: PEFT LoRA adapters both ways (import, export, the fused-group modes).
//! - [`metadata`]: the parameter metadata that makes a sharded checkpoint self-describing.
//! - [`model`]: model-level entry points: HF → one rank (`adapt_state_dict`), ranks → HF, the plan compiler.
//! - [`module`]: the module-tree contract that `#[derive(CustomModule)]` implements.
//! - [`pipeline`]: a helper thread that computes the next tensor while the current one is written.
//! - [`plan`]: plans as data: which slices of which source tensors land where.
//! - [`prelude`]: what a model crate imports (feature `burn`).
//! - [`progress`]: byte counts for long operations (the CLI draws the bar).
//! - [`pt`]: optimum-neuron's `.pt` rank files, plain and xser.
//! - [`rank_source`]: one TP rank of a sharded checkpoint as one tensor source, across pipeline stages.
//! - [`reference_names`]: the reference's `guess_peft_type` and `get_tensor_model_parallel_attributes` (feature `burn`).
//! - [`reshard`]: TP N → TP M without an HF round trip.
//! - [`shard`](mod@shard): an HF checkpoint (and its adapters) to a sharded checkpoint.
//! - [`sharding`]: the reference's sharding helpers, as plans, with zero padding for uneven splits.
//! - [`specs`]: transformation specs and their layouts.
//! - [`stage_checkpoint`]: one pipeline stage of a sharded checkpoint, opened on its own.
//! - [`stages`]: pipeline-parallel stage assignment.
//! - [`staging`]: outputs built in a temporary sibling and renamed into place when complete.
//! - [`synthetic`]: synthetic checkpoints for benchmarks and memory tests.
//! - [`tensor`]: host tensors that keep the checkpoint's bytes (bf16 stays bf16).
//! - [`train`]: training the TP model: the loss, AdamW, the gradient all-reduce, trained checkpoints (feature `burn`).
//! - [`train_data`]: training data files (safetensors, JSONL, text).
//! - [`train_state`]: a trained checkpoint's optimizer state on disk, without burn.
//!
//! The user guide is the mdBook in `docs/` (`mdbook build docs`); its pages with Rust code are doctests here.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod compare;
pub mod consolidate;
pub mod dtype;
pub mod error;
pub mod io;
#[cfg(feature = "burn")]
pub mod layers;
pub mod lora;
pub mod metadata;
pub mod model;
pub mod module;
pub mod pipeline;
pub mod plan;
#[cfg(feature = "burn")]
pub mod prelude;
pub mod progress;
pub mod pt;
pub mod rank_source;
#[cfg(feature = "burn")]
pub mod reference_names;
pub mod reshard;
pub mod shard;
pub mod sharding;
pub mod specs;
pub mod stage_checkpoint;
pub mod stages;
pub mod staging;
pub mod synthetic;
pub mod tensor;
#[cfg(feature = "burn")]
pub mod train;
pub mod train_data;
pub mod train_state;

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
    pub use crate::module::Device;
    pub use indexmap::IndexMap;
}

pub use consolidate::{
    consolidate, consolidate_with_adapters, consolidate_with_optimizer, write_hf_folder, AdapterOptions,
};
pub use dtype::DType;
pub use error::{Error, Result};
pub use metadata::{CheckpointMetadata, ParameterMetadata};
pub use model::{adapt_state_dict, to_original_weights, PlanOptions};
pub use plan::{Block, ShardPlan, Source, TensorInfo, TensorPlan, TensorSource};
pub use shard::{shard, shard_with_adapters};
pub use sharding::{create_local_fused_weight, create_local_weight_with_padding};
pub use specs::{FuseAxis, FusedLinearsSpec, GqaQkvColumnParallelLinearSpec, ModelWeightTransformationSpecs, Spec};
pub use tensor::{HostTensor, StateDict};
