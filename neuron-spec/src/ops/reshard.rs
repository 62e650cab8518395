//! TP N → TP M without an HF round trip: the consolidation plan of N ranks composed with the sharding plan of
//! M ranks gives one plan whose blocks read the N rank files directly.

use crate::checkpoint::atomic::Staging;
use crate::checkpoint::{write_sharded, Report, ShardedCheckpoint, WriteOptions};
use crate::error::{Error, Result};
use crate::plan::{Block, ShardPlan, TensorPlan};
use crate::spec::compile::{consolidation_plan, original_infos, plan_shards, PlanOptions};
use crate::spec::metadata::CheckpointMetadata;
use crate::tensor::HostTensor;
use crate::tensor::{TensorInfo, TensorSource};
use std::collections::BTreeMap;

/// The metadata of the same model at TP size `tp`: specs and partition counts recomputed.
pub fn metadata_for_tp(meta: &CheckpointMetadata, tp: usize) -> Result<CheckpointMetadata> {
    let mut m = meta.clone();
    m.tp_size = Some(tp);
    m.rank_files.clear();
    for s in &mut m.model_weight_transformation_specs {
        s.specs = s.specs.iter().map(|x| x.for_tp(tp)).collect::<Result<_>>()?;
    }
    for p in m.parameters.values_mut() {
        if p.tensor_model_parallel {
            p.num_partitions = Some(tp);
        }
    }
    Ok(m)
}

/// Shape-only source of the original tensors.
struct Infos(Vec<TensorInfo>);

impl TensorSource for Infos {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.0.iter().find(|i| i.name == name).cloned()
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        Err(Error::Plan(format!("tensor {name}: shape-only source")))
    }
    fn names(&self) -> Vec<String> {
        self.0.iter().map(|i| i.name.clone()).collect()
    }
}

/// Composes `forward` (originals → M ranks) with `inverse` (N ranks → originals): M-rank plans reading N-rank
/// tensors.
pub fn compose(forward: &ShardPlan, inverse: &[TensorPlan]) -> Result<ShardPlan> {
    let by_name: BTreeMap<&str, &TensorPlan> = inverse.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut ranks = Vec::with_capacity(forward.ranks.len());
    for tensors in &forward.ranks {
        let mut out = Vec::with_capacity(tensors.len());
        for t in tensors {
            let mut blocks = Vec::new();
            for fb in &t.blocks {
                let inv = by_name
                    .get(fb.src.name.as_str())
                    .ok_or_else(|| Error::Plan(format!("tensor {}: no consolidation plan", fb.src.name)))?;
                for ib in &inv.blocks {
                    if ib.dim != fb.dim {
                        return Err(Error::Plan(format!(
                            "tensor {}: sharded along dim {} in the input and dim {} in the output",
                            fb.src.name, ib.dim, fb.dim
                        )));
                    }
                    let start = fb.src_offset.max(ib.dst_offset);
                    let end = (fb.src_offset + fb.len).min(ib.dst_offset + ib.len);
                    if start < end {
                        crate::plan::push_block(
                            &mut blocks,
                            Block {
                                src: ib.src.clone(),
                                dim: fb.dim,
                                src_offset: ib.src_offset + (start - ib.dst_offset),
                                dst_offset: fb.dst_offset + (start - fb.src_offset),
                                len: end - start,
                            },
                        );
                    }
                }
            }
            out.push(TensorPlan { blocks, replicas: vec![], ..t.clone() });
        }
        ranks.push(out);
    }
    Ok(ShardPlan { tp: forward.tp, originals: forward.originals.clone(), ranks })
}

/// The reshard plan of a sharded checkpoint to TP size `tp`, and the new metadata.
pub fn reshard_plan(ck: &ShardedCheckpoint, tp: usize) -> Result<(ShardPlan, CheckpointMetadata)> {
    let (_, inverse) = consolidation_plan(&ck.metadata, &ck.sources())?;
    compose_for_tp(ck, &inverse, tp, None)
}

/// The sharding plan at TP size `tp` composed with the checkpoint's consolidation plan `inverse`.
fn compose_for_tp(
    ck: &ShardedCheckpoint,
    inverse: &[TensorPlan],
    tp: usize,
    layout: Option<&CheckpointMetadata>,
) -> Result<(ShardPlan, CheckpointMetadata)> {
    let sources = ck.sources();
    let rank0 = sources.first().ok_or_else(|| Error::Checkpoint("a sharded checkpoint without rank files".into()))?;
    let originals = original_infos(&ck.metadata, *rank0, ck.tp)?;
    let new_meta = match layout {
        Some(m) => {
            if m.tp_size.is_some_and(|t| t != tp) {
                return Err(Error::Argument(format!(
                    "the target layout is for tp {:?}, resharding to tp {tp}",
                    m.tp_size
                )));
            }
            m.clone()
        }
        None => metadata_for_tp(&ck.metadata, tp)?,
    };
    // A target layout must describe the same HF tensors: planning reports any missing or unexpected one.
    let forward = plan_shards(&new_meta, &Infos(originals), tp, PlanOptions::default()).map_err(|e| {
        if layout.is_some() {
            Error::Argument(format!("the target layout does not fit the checkpoint: {e}"))
        } else {
            e
        }
    })?;
    Ok((compose(&forward, inverse)?, new_meta))
}

/// Writes the checkpoint in `src_dir` at TP size `tp` into `out_dir`.
pub fn reshard(src_dir: &std::path::Path, out_dir: &std::path::Path, tp: usize, opts: &WriteOptions) -> Result<Report> {
    if opts.kv_replicas == crate::checkpoint::KvReplicas::Mean {
        return Err(Error::Argument(
            "reshard copies one replica of each kv head; to average them, consolidate with --kv-replicas mean and shard the result".into(),
        ));
    }
    let ck = ShardedCheckpoint::open_unverified(src_dir)?;
    let (report, staging) = ck.while_verifying(|| reshard_staged(&ck, src_dir, out_dir, tp, opts))?;
    staging.commit()?;
    Ok(report)
}

/// Everything [`reshard`] writes, in a staging directory not yet committed.
fn reshard_staged(
    ck: &ShardedCheckpoint,
    src_dir: &std::path::Path,
    out_dir: &std::path::Path,
    tp: usize,
    opts: &WriteOptions,
) -> Result<(Report, Staging)> {
    let sources = ck.sources();
    let (forward, inverse) = consolidation_plan(&ck.metadata, &sources)?;
    let (plan, meta) = compose_for_tp(ck, &inverse, tp, opts.layout.as_ref())?;
    if !opts.allow_unexpected {
        ck.check_all_described(&forward)?;
    }
    // The composed plan reads each kv head from its lowest rank: check first that the other replicas agree
    // (as consolidation does), unless told to keep the first copy.
    if opts.kv_replicas != crate::checkpoint::KvReplicas::First {
        for t in inverse.iter().filter(|t| !t.replicas.is_empty()) {
            crate::spec::compile::consolidate_tensor(t, &sources, crate::checkpoint::KvReplicas::Check)?;
        }
    }
    if opts.kv_replicas != crate::checkpoint::KvReplicas::First {
        ck.check_stage_copies()?;
    }
    // Shapes of the new rank-local tensors (a replicated spec output such as weight_qkv changes with tp).
    let meta = crate::checkpoint::with_global_infos(&meta, &plan);
    let pp = opts.pp.unwrap_or(ck.pp());
    let stages = crate::spec::pipeline::StageAssignment::for_metadata(&meta, pp)?;
    let adapters = crate::checkpoint::adapters::sharded_adapters(src_dir)?;
    if opts.layout.is_some() && !adapters.is_empty() {
        return Err(Error::Argument(
            "a checkpoint with adapters is resharded in its own layout (--layout would leave the adapters' layout behind)".into(),
        ));
    }
    let staging = Staging::new(out_dir, opts.force)?;
    let mut report = crate::checkpoint::write_staged(
        staging.path(),
        out_dir,
        &plan,
        &meta,
        &sources,
        src_dir,
        &opts.progress,
        &stages,
    )
    .map_err(|e| staging.describe(e))?;
    // Adapters are resharded with the base weights, each from its own rank files.
    for a in adapters {
        let (plan, meta) = reshard_plan(&a.checkpoint, tp)?;
        let name = crate::checkpoint::adapters::adapter_dir_name(&a.name);
        let dir = staging.path().join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let r = write_sharded(&dir, &out_dir.join(&name), &plan, meta, &a.checkpoint.sources(), &dir, &opts.progress)?;
        crate::format::write_file_synced(&dir.join(crate::lora::ADAPTER_CONFIG), a.config.to_json()?.as_bytes())?;
        report.files.extend(r.files);
        report.tensors += r.tensors;
        report.bytes_written += r.bytes_written;
    }
    Ok((report, staging))
}
