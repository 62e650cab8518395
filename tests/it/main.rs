//! The CLI package's tests, one binary (burn is linked once): each module was a test file of its own; its
//! `//!` header says what it covers. `tests/mpi.rs` (the `mpi` feature) stays a binary of its own; the models
//! crate's own tests (layouts, forward, LoRA, resharding without the binary) are in `neuron-spec-models/tests/it/`.

mod bad_input;
mod ci_steps;
mod cli;
mod cli_edges;
mod cli_verdicts;
#[path = "../common/mod.rs"]
mod common;
mod configs;
mod families;
mod generate;
mod memory_bound;
mod module_dag;
mod on_ckpt;
mod phi3;
mod pipeline;
mod plan_bytes;
mod train;
mod train_text;
