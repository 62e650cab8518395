//! Sharded checkpoints on disk, in the reference's layout with safetensors instead of pickles:
//!
//! ```text
//! <dir>/config.json
//! <dir>/shards/mp_metadata_pp_rank_0.json
//! <dir>/shards/model/dp_rank_00_tp_rank_XX_pp_rank_00.safetensors
//! ```

pub mod adapters;
pub mod atomic;
pub mod optimizer;
pub mod rank;
mod read;
pub mod reference_adapters;
mod side_files;
pub mod stage;
mod write;

pub use read::{is_sharded_dir, RankCheckpoint, ShardedCheckpoint};
pub(crate) use side_files::copy_side_files;
pub use side_files::{side_files, SIDE_DIRS};
pub use write::RankFileWriter;
pub(crate) use write::{plan_unexpected, with_global_infos, write_sharded, write_staged};

pub use crate::checkpoint::stage::{metadata_path, stage_rank_file_name, RankFormat, StageCheckpoint, RANKS_DIR};
pub use crate::spec::compile::KvReplicas;
use crate::spec::metadata::CheckpointMetadata;
use std::path::PathBuf;

/// Metadata file, relative to the checkpoint directory.
pub const METADATA_PATH: &str = "shards/mp_metadata_pp_rank_0.json";

/// The file name of TP rank `rank`'s shard.
pub fn rank_file_name(rank: usize) -> String {
    stage_rank_file_name(rank, 0, "safetensors")
}

/// What a write did, for the CLI's report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Files written (final paths).
    pub files: Vec<PathBuf>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub bytes_written: u64,
    /// Per rank, bytes read from the input.
    pub bytes_read_per_rank: Vec<usize>,
    /// Input tensors left unused.
    pub unexpected: Vec<String>,
    /// Adapter files written (final paths), not counted in `files`.
    pub adapter_files: Vec<PathBuf>,
    /// Adapter tensors written, not counted in `tensors`.
    pub adapter_tensors: usize,
    /// Bytes of adapter tensor data written, not counted in `bytes_written`.
    pub adapter_bytes: u64,
    /// Non-weight files carried over ([`side_files`]), relative to the output directory.
    pub side_files: Vec<PathBuf>,
}

/// Options of [`shard`](crate::shard()) and [`consolidate`](crate::consolidate()).
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Replica handling on consolidation.
    pub kv_replicas: KvReplicas,
    /// Where written bytes are reported (nothing by default).
    pub progress: crate::progress::ProgressSink,
    /// Replace an existing destination (only once the new output is complete).
    pub force: bool,
    /// Accept input tensors no parameter uses (left out of the output).
    pub allow_unexpected: bool,
    /// Largest HF output file, in bytes (consolidation).
    pub max_shard_size: Option<u64>,
    /// Consolidation: cast floating-point tensors to this dtype (round to nearest even, as torch's `.to()`;
    /// integer tensors are kept), and record it as `dtype` / `torch_dtype` in `config.json`.
    pub dtype: Option<crate::tensor::DType>,
    /// Consolidation: write only the base tensors whose name this matches (a search, like grep).
    pub only: Option<regex::Regex>,
    /// Pipeline stages of the output (shard: one when `None`; reshard: the input's when `None`).
    pub pp: Option<usize>,
    /// Reshard: the layout of the output at the new tp (e.g. another qkv layout), instead of the input's own
    /// layout at the new tp. Its HF tensors must be the input's.
    pub layout: Option<CheckpointMetadata>,
}

/// Orders names as people read them: `layers.2` before `layers.10`.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<(u64, String)> {
        s.split('.').map(|p| p.parse::<u64>().map_or((u64::MAX, p.to_string()), |n| (n, String::new()))).collect()
    };
    key(a).cmp(&key(b))
}
