//! Writing a sharded checkpoint: every rank file of every stage from one plan, staged and checksummed.

use super::side_files::copy_side_files;
use super::stage::{metadata_path, stage_rank_file_name, RANKS_DIR};
use super::Report;
use crate::error::{Error, Result};
use crate::format::{pt_metadata, safetensors_order, write_file_synced, write_safetensors};
use crate::plan::prefetch::with_prefetch;
use crate::plan::{ShardPlan, TensorPlan};
use crate::spec::metadata::{CheckpointMetadata, RankFileEntry, FORMAT_VERSION};
use crate::spec::pipeline::StageAssignment;
use crate::tensor::{HostTensor, StateDict, TensorInfo, TensorSource};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Records each parameter's global (unpadded) shape and dtype in the metadata, from the plan.
pub(crate) fn with_global_infos(meta: &CheckpointMetadata, plan: &ShardPlan) -> CheckpointMetadata {
    let mut m = meta.clone();
    m.format_version = Some(FORMAT_VERSION);
    m.tp_size = Some(plan.tp);
    let originals: BTreeMap<&str, &TensorInfo> = plan.originals.iter().map(|i| (i.name.as_str(), i)).collect();
    for t in plan.ranks.first().into_iter().flatten() {
        if let Some(p) = m.parameters.get_mut(&t.name) {
            p.dtype = Some(t.dtype);
            p.shape = Some(match originals.get(t.name.as_str()) {
                Some(o) => o.shape.clone(),
                // Spec-produced tensors: the unpadded concatenation over ranks.
                None => {
                    let mut s = t.shape.clone();
                    if let (true, Some(d)) = (p.tensor_model_parallel, p.partition_dim) {
                        if let Some(x) = s.get_mut(d) {
                            *x *= plan.tp;
                        }
                    }
                    s
                }
            });
        }
    }
    m
}

/// Writes the rank files of `plan` (reading `sources`), then the metadata with their checksums and the
/// config from `config_dir`, under `root` (a staging directory that becomes `out_dir`).
pub(crate) fn write_sharded(
    root: &Path,
    out_dir: &Path,
    plan: &ShardPlan,
    meta: CheckpointMetadata,
    sources: &[&dyn TensorSource],
    config_dir: &Path,
    progress: &crate::progress::ProgressSink,
) -> Result<Report> {
    let mut r = write_stage(root, out_dir, plan, meta, sources, progress, 0)?;
    r.side_files = copy_side_files(config_dir, root, None)?;
    Ok(r)
}

/// [`write_sharded`] over the pipeline stages of `stages`: each stage's rank files hold only its tensors
/// (read only from their bytes of the sources), beside a metadata file with only its parameters and specs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_staged(
    root: &Path,
    out_dir: &Path,
    plan: &ShardPlan,
    meta: &CheckpointMetadata,
    sources: &[&dyn TensorSource],
    config_dir: &Path,
    progress: &crate::progress::ProgressSink,
    stages: &StageAssignment,
) -> Result<Report> {
    if stages.pp() == 1 {
        return write_sharded(root, out_dir, plan, meta.clone(), sources, config_dir, progress);
    }
    let metas = stages.split_metadata(meta)?;
    let mut report = Report { bytes_read_per_rank: plan.bytes_read_per_rank(), ..Default::default() };
    for (s, m) in metas.into_iter().enumerate() {
        let keep = |name: &str| stages.stages_of(name).map(|v| v.contains(&s));
        let mut ranks = Vec::with_capacity(plan.ranks.len());
        for ts in &plan.ranks {
            let mut kept = Vec::new();
            for t in ts {
                if keep(&t.name)? {
                    kept.push(t.clone());
                }
            }
            ranks.push(kept);
        }
        let mut originals = Vec::new();
        for o in &plan.originals {
            if keep(&o.name).unwrap_or(true) {
                originals.push(o.clone());
            }
        }
        let sp = ShardPlan { tp: plan.tp, originals, ranks };
        let r = write_stage(root, out_dir, &sp, m, sources, progress, s)?;
        report.files.extend(r.files);
        report.tensors += r.tensors;
        report.bytes_written += r.bytes_written;
    }
    report.side_files = copy_side_files(config_dir, root, None)?;
    Ok(report)
}

/// Writes stage `stage`'s rank files of `plan` and its metadata file.
fn write_stage(
    root: &Path,
    out_dir: &Path,
    plan: &ShardPlan,
    mut meta: CheckpointMetadata,
    sources: &[&dyn TensorSource],
    progress: &crate::progress::ProgressSink,
    stage: usize,
) -> Result<Report> {
    let writer = RankFileWriter::new(root, stage)?;
    let mut report = Report { bytes_read_per_rank: plan.bytes_read_per_rank(), ..Default::default() };
    meta.rank_files.clear();
    let total: usize = plan.ranks.iter().flatten().map(TensorPlan::nbytes).sum();
    let bar = progress;
    bar.start("writing ranks", total as u64);
    // Every rank file's tensors in the order the writer asks for them, so one helper thread can compute
    // them one ahead of the writes, across file boundaries.
    let per_rank: Vec<Vec<TensorInfo>> = plan
        .ranks
        .iter()
        .map(|ts| {
            let mut infos: Vec<TensorInfo> = ts.iter().map(TensorPlan::info).collect();
            safetensors_order(&mut infos);
            infos
        })
        .collect();
    let mut order = Vec::new();
    for (infos, tensors) in per_rank.iter().zip(&plan.ranks) {
        let by_name: BTreeMap<&str, &TensorPlan> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        for i in infos {
            order.push(*by_name.get(i.name.as_str()).ok_or_else(|| Error::Plan(format!("no plan for {}", i.name)))?);
        }
    }
    with_prefetch(&order, &|t| t.pieces(sources), |next| {
        for (rank, infos) in per_rank.iter().enumerate() {
            let entry = writer.write(rank, infos, &mut |info| {
                let out = next(info)?;
                bar.inc(out.iter().map(|p| p.bytes().len() as u64).sum());
                Ok(out)
            })?;
            report.bytes_written += entry.size;
            report.tensors += infos.len();
            report.files.push(out_dir.join(RANKS_DIR).join(&entry.file));
            meta.rank_files.push(entry);
        }
        Ok(())
    })?;
    bar.finish();
    write_file_synced(&root.join(metadata_path(stage)), meta.to_json()?.as_bytes())?;
    Ok(report)
}

pub(crate) fn plan_unexpected(src: &dyn TensorSource, plan: &ShardPlan) -> Vec<String> {
    let used: std::collections::HashSet<&str> = plan.originals.iter().map(|o| o.name.as_str()).collect();
    src.names().into_iter().filter(|n| !used.contains(n.as_str())).collect()
}

/// The one writer of rank files: stage `stage`'s `<root>/shards/model/dp_rank_00_tp_rank_XX_pp_rank_YY.safetensors`,
/// each with `format: pt`, returning the entry (file, size, xxh3-64) the checkpoint metadata records. Sharding,
/// resharding, adapters and trained checkpoints (threads or one MPI process per rank) all write through it.
pub struct RankFileWriter {
    dir: PathBuf,
    stage: usize,
}

impl RankFileWriter {
    /// A writer into `root`'s rank directory (created) for pipeline stage `stage`.
    pub fn new(root: &Path, stage: usize) -> Result<Self> {
        let dir = root.join(RANKS_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self { dir, stage })
    }

    /// Rank `rank`'s file name in this stage.
    pub fn file_name(&self, rank: usize) -> String {
        stage_rank_file_name(rank, self.stage, "safetensors")
    }

    /// Writes rank `rank`'s file, asking `fill` for one tensor of `infos` at a time.
    pub fn write(
        &self,
        rank: usize,
        infos: &[TensorInfo],
        fill: &mut dyn FnMut(&TensorInfo) -> Result<Vec<HostTensor>>,
    ) -> Result<RankFileEntry> {
        let file = self.file_name(rank);
        let w = write_safetensors(&self.dir.join(&file), infos, &pt_metadata(), fill)?;
        Ok(RankFileEntry { file, size: w.size, xxh3_64: format!("{:016x}", w.xxh3) })
    }

    /// Writes the tensors of `sd` as rank `rank`'s file.
    pub fn write_state_dict(&self, rank: usize, sd: &StateDict) -> Result<RankFileEntry> {
        let infos: Vec<TensorInfo> = sd.keys().filter_map(|n| sd.info(n)).collect();
        self.write(rank, &infos, &mut |i| Ok(vec![sd.tensor(&i.name)?]))
    }
}
