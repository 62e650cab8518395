//! The CLI package's tests, one binary (burn is linked once): each module was a test file of its own; its
//! `//!` header says what it covers. `tests/mpi.rs` (the `mpi` feature) stays a binary of its own.

mod bad_input;
mod ci_steps;
mod cli;
mod cli_edges;
mod cli_verdicts;
#[path = "../common/mod.rs"]
mod common;
mod configs;
mod derive_burn;
mod families;
mod generate;
mod lora;
mod lora_reference;
mod memory_bound;
mod model_layout;
mod module_dag;
mod on_ckpt;
mod phi3;
mod pipeline;
mod plan_bytes;
mod reference_names;
mod reference_shards;
mod reshard;
mod root_module;
mod roundtrip;
mod synthetic_variants;
mod tp_forward;
mod train;
mod train_text;
mod uneven_mlp;
