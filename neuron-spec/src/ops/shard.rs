//! `shard`: an HF checkpoint (and its LoRA adapters) to a sharded checkpoint at a TP size, each rank reading
//! only its own slices.

use crate::checkpoint::atomic::Staging;
use crate::checkpoint::{plan_unexpected, with_global_infos, write_staged, Report, WriteOptions};
use crate::error::Result;
use crate::format::HfCheckpoint;
use crate::spec::compile::{plan_shards, PlanOptions};
use crate::spec::metadata::CheckpointMetadata;
use crate::spec::pipeline::StageAssignment;
use std::path::Path;

/// Shards the HF checkpoint in `hf_dir` into `out_dir` at TP size `tp`. Each rank reads only its own slices.
pub fn shard(
    hf_dir: &Path,
    out_dir: &Path,
    meta: &CheckpointMetadata,
    tp: usize,
    opts: &WriteOptions,
) -> Result<Report> {
    shard_with_adapters(hf_dir, out_dir, meta, tp, &[], opts)
}

/// [`shard`], plus each imported LoRA adapter sharded beside the base weights in `out_dir/adapter_<name>/`
/// (its own rank files, metadata and `adapter_config.json` in the TP model's terms). All or nothing. With
/// pipeline stages, an adapter stays one checkpoint at the same tp (small, and read whole by every stage, which
/// takes its own modules' factors).
pub fn shard_with_adapters(
    hf_dir: &Path,
    out_dir: &Path,
    meta: &CheckpointMetadata,
    tp: usize,
    adapters: &[crate::lora::ImportedAdapter],
    opts: &WriteOptions,
) -> Result<Report> {
    let hf = HfCheckpoint::open(hf_dir)?;
    let plan = plan_shards(meta, &hf, tp, PlanOptions { allow_unexpected: opts.allow_unexpected })
        .map_err(|e| e.in_checkpoint(hf_dir))?;
    let pp = opts.pp.unwrap_or(1);
    let stages = StageAssignment::for_metadata(meta, pp)?;
    let staging = Staging::new(out_dir, opts.force)?;
    let mut report = write_staged(
        staging.path(),
        out_dir,
        &plan,
        &with_global_infos(meta, &plan),
        &[&hf],
        hf_dir,
        &opts.progress,
        &stages,
    )
    .map_err(|e| staging.describe(e))?;
    report.unexpected = plan_unexpected(&hf, &plan);
    for a in adapters {
        let r = crate::checkpoint::adapters::write_sharded_adapter(staging.path(), out_dir, a, tp, &opts.progress)?;
        report.adapter_files.extend(r.files);
        report.adapter_tensors += r.tensors;
        report.adapter_bytes += r.bytes_written;
    }
    staging.commit()?;
    Ok(report)
}
