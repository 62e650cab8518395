//! File formats, below any notion of TP: safetensors read ([`safetensors`]) and write ([`safetensors_writer`]), HF
//! checkpoint directories ([`hf`]), the writers' file-system calls and fault-injection hooks ([`fs`]),
//! optimum-neuron's `.pt` rank files ([`pt`]), and synthetic HF checkpoints for benchmarks ([`synthetic`]).

pub mod fs;
pub mod hf;
pub mod pt;
pub mod safetensors;
pub mod safetensors_writer;
pub mod synthetic;

pub use fs::{file_xxh3, write_file_synced, Written, FAIL_AFTER_BYTES_ENV, SLOW_WRITE_MS_ENV};
pub use hf::{hf_file_groups, parse_index, parse_size, write_hf_checkpoint, HfCheckpoint, INDEX_FILE, SINGLE_FILE};
pub use safetensors::{parse_safetensors, SafetensorsFile};
pub use safetensors_writer::{
    pt_metadata, safetensors_order, write_safetensors, write_safetensors_with, write_state_dict, Checksum,
};
