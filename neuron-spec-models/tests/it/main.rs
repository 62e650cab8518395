//! The models crate's tests, one binary: each module was a test file of its own (its `//!` header says what it
//! covers); fixtures are the workspace's `tests/fixtures/`.

// The workspace's one test support module, shared with the CLI package's tests.
#[path = "../../../tests/common/mod.rs"]
mod common;
mod derive_burn;
mod lora;
mod lora_reference;
mod model_layout;
mod reference_names;
mod reference_shards;
mod reshard;
mod root_module;
mod roundtrip;
mod synthetic_variants;
mod tp_forward;
mod uneven_mlp;
