//! cargo-fuzz target; the body (and what it checks) is `neuron_spec_fuzz_bodies::train_data`, shared with the
//! corpus replay test (`fuzz/bodies/tests/replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| neuron_spec_fuzz_bodies::train_data::run(data));
