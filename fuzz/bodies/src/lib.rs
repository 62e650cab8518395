//! The bodies of the cargo-fuzz targets in `fuzz/fuzz_targets/`, one module per target, each a
//! `run(data: &[u8])` that panics on a finding. The targets call them under libFuzzer; `tests/replay.rs` runs
//! the committed seed corpus (`fuzz/corpus/<target>/`) through them in plain `cargo test`.

pub mod hf_index;
pub mod metadata_json;
pub mod pickle;
pub mod safetensors_header;
pub mod spec_plan;
pub mod train_data;

/// A target's body: panics on a finding.
pub type Body = fn(&[u8]);

/// Every body by target name.
pub const TARGETS: &[(&str, Body)] = &[
    ("hf_index", hf_index::run),
    ("metadata_json", metadata_json::run),
    ("pickle", pickle::run),
    ("safetensors_header", safetensors_header::run),
    ("spec_plan", spec_plan::run),
    ("train_data", train_data::run),
];
