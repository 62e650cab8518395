//! Opening a sharded checkpoint (ours or the reference's): its metadata merged over the stages, and every
//! rank as a tensor source with its files' sizes and checksums verified.

use super::stage::{metadata_path, stage_rank_file_name, RankFormat, RANKS_DIR};
use super::METADATA_PATH;
use crate::checkpoint::rank::{RankSource, StageFile};
use crate::checkpoint::stage::{check_rank_entries, check_rank_file, open_rank_file, rank_files_present, stage_count};
use crate::error::{Error, Result};
use crate::format::SafetensorsFile;
use crate::plan::ShardPlan;
use crate::spec::metadata::{CheckpointMetadata, RankFileEntry};
use crate::tensor::TensorSource;
use std::path::{Path, PathBuf};

/// A sharded checkpoint opened for reading: its metadata (every stage's, merged) and, per TP rank, its
/// memory-mapped files across the pipeline stages.
pub struct ShardedCheckpoint {
    /// The directory.
    pub dir: PathBuf,
    /// The metadata of all stages merged: every stage's parameters and specs, in stage order.
    pub metadata: CheckpointMetadata,
    /// Each stage's own metadata (`shards/mp_metadata_pp_rank_<P>.json`).
    pub stages: Vec<CheckpointMetadata>,
    /// The TP size.
    pub tp: usize,
    /// Rank sources, in TP rank order (each spanning every stage).
    pub ranks: Vec<RankSource>,
    /// The rank files' format.
    pub format: RankFormat,
}

/// Whether `dir` looks like a sharded checkpoint (ours or optimum-neuron's): it has stage 0's metadata.
pub fn is_sharded_dir(dir: &Path) -> bool {
    dir.join(METADATA_PATH).is_file()
}

/// The stage metadata files of `dir`: `mp_metadata_pp_rank_0.json` … `_<P-1>.json`, with no gap.
fn stage_metadata(dir: &Path) -> Result<Vec<(PathBuf, CheckpointMetadata)>> {
    let pp = stage_count(dir)?;
    (0..pp)
        .map(|s| {
            let p = dir.join(metadata_path(s));
            CheckpointMetadata::read(&p).map(|m| (p, m))
        })
        .collect()
}

/// Every stage's parameters and specs in one metadata (a parameter in several stages must agree).
fn merge_stages(stages: &[(PathBuf, CheckpointMetadata)], tp: usize) -> Result<CheckpointMetadata> {
    let mut merged = CheckpointMetadata {
        format_version: stages.iter().filter_map(|(_, m)| m.format_version).max(),
        tp_size: stages.iter().find_map(|(_, m)| m.tp_size).map(|_| tp),
        parameters: Default::default(),
        model_weight_transformation_specs: vec![],
        rank_files: vec![],
    };
    for (path, m) in stages {
        for (n, p) in &m.parameters {
            match merged.parameters.get(n) {
                Some(q) if q != p => {
                    return Err(Error::Metadata {
                        path: path.clone(),
                        reason: format!("parameter {n} is described differently in another stage"),
                    })
                }
                Some(_) => {}
                None => {
                    merged.parameters.insert(n.clone(), p.clone());
                }
            }
        }
        for spec in &m.model_weight_transformation_specs {
            if !merged.model_weight_transformation_specs.contains(spec) {
                merged.model_weight_transformation_specs.push(spec.clone());
            }
        }
    }
    Ok(merged)
}

impl ShardedCheckpoint {
    /// Opens `dir`, checking that exactly the rank files of its TP size are present and, when the metadata
    /// records them, that their sizes and checksums match.
    pub fn open(dir: &Path) -> Result<Self> {
        let ck = Self::open_unverified(dir)?;
        ck.verify(2)?;
        Ok(ck)
    }

    /// The number of pipeline stages.
    pub fn pp(&self) -> usize {
        self.stages.len()
    }

    /// [`ShardedCheckpoint::open`] without hashing the rank files, for callers that verify them while they
    /// work ([`ShardedCheckpoint::while_verifying`]). A rank file whose header does not parse is still checked
    /// against its recorded checksum, so that damage is reported as damage.
    ///
    /// The rank files are ours (`.safetensors`) or optimum-neuron's (`.pt`, plain or xser), detected from
    /// the files present; there is one metadata file per pipeline stage.
    pub fn open_unverified(dir: &Path) -> Result<Self> {
        let staged = stage_metadata(dir)?;
        let mut tp = None;
        for (p, m) in &staged {
            let t = m.tp_size(p)?;
            match tp {
                Some(first) if first != t => {
                    return Err(Error::Metadata {
                        path: p.clone(),
                        reason: format!("tp {t}, another stage says tp {first}"),
                    })
                }
                _ => tp = Some(t),
            }
        }
        let (Some(tp), pp) = (tp, staged.len()) else {
            return Err(Error::Metadata { path: dir.join(METADATA_PATH), reason: "no stage metadata".into() });
        };
        let metadata = merge_stages(&staged, tp)?;
        let rdir = dir.join(RANKS_DIR);
        let (present, format) = rank_files_present(&rdir)?;
        let ext = format.ext();
        let expected: Vec<Vec<String>> =
            (0..pp).map(|s| (0..tp).map(|r| stage_rank_file_name(r, s, ext)).collect()).collect();
        let all: Vec<&String> = expected.iter().flatten().collect();
        let missing: Vec<&str> = all.iter().filter(|n| !present.contains(**n)).map(|n| n.as_str()).collect();
        if !missing.is_empty() {
            return Err(Error::RankFiles {
                dir: rdir,
                reason: format!("metadata says tp {tp} and pp {pp}, missing rank files: {}", list(&missing)),
            });
        }
        let wanted: std::collections::HashSet<&str> = all.iter().map(|n| n.as_str()).collect();
        let extra: Vec<&str> = present.iter().map(String::as_str).filter(|n| !wanted.contains(n)).collect();
        if !extra.is_empty() {
            return Err(Error::RankFiles {
                dir: rdir,
                reason: format!(
                    "metadata says tp {tp} and pp {pp}, but extra rank files are present (another tp or pp size?): {}",
                    list(&extra)
                ),
            });
        }
        for (s, (_, m)) in staged.iter().enumerate() {
            check_rank_entries(&rdir, m, tp, s)?;
        }
        let open = |s: usize, r: usize, n: &str| open_rank_file(&rdir.join(n), format, staged[s].1.rank_files.get(r));
        let ranks = (0..tp)
            .map(|r| {
                let files = (0..pp).map(|s| open(s, r, &expected[s][r])).collect::<Result<Vec<_>>>()?;
                Ok(RankSource::new(files))
            })
            .collect::<Result<Vec<_>>>()?;
        let stages = staged.into_iter().map(|(_, m)| m).collect();
        Ok(Self { dir: dir.to_path_buf(), metadata, stages, tp, ranks, format })
    }

    /// Fails when a tensor held by several stages (a tied embedding's copy) differs between them.
    pub fn check_stage_copies(&self) -> Result<()> {
        self.ranks.iter().try_for_each(RankSource::check_stage_copies)
    }

    /// Checks each rank file's size and xxh3-64 against its stage's metadata (when it records them), on up to
    /// `threads` threads; the first damage found wins.
    pub fn verify(&self, threads: usize) -> Result<()> {
        let mut jobs: Vec<(&SafetensorsFile, &RankFileEntry)> = Vec::new();
        for (s, m) in self.stages.iter().enumerate() {
            for (r, entry) in m.rank_files.iter().enumerate() {
                if let Some(StageFile::Safetensors(f)) = self.ranks.get(r).and_then(|k| k.files().get(s)) {
                    jobs.push((f, entry));
                }
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let jobs = &jobs;
        let check = |i: usize| -> Result<()> {
            match jobs.get(i) {
                Some((file, entry)) => check_rank_file(file.path(), entry, file.xxh3()),
                None => Ok(()),
            }
        };
        let threads = threads.clamp(1, jobs.len());
        std::thread::scope(|s| {
            let handles: Vec<_> =
                (1..threads).map(|t| s.spawn(move || (t..jobs.len()).step_by(threads).try_for_each(check))).collect();
            let first = (0..jobs.len()).step_by(threads).try_for_each(check);
            handles.into_iter().try_fold(first, |acc, h| {
                let r = h.join().map_err(|_| Error::Thread("checksum thread failed".into()))?;
                Ok(acc.and(r))
            })?
        })
    }

    /// Runs `work` while one helper thread verifies the rank files (the other core writes); damage found by
    /// the check wins over `work`'s own result, so nothing built from a damaged file is ever returned.
    pub fn while_verifying<R>(&self, work: impl FnOnce() -> Result<R>) -> Result<R> {
        std::thread::scope(|s| {
            let check = s.spawn(|| self.verify(1));
            let out = work();
            match check.join() {
                Ok(Ok(())) => out,
                Ok(Err(damage)) => Err(damage),
                Err(_) => Err(Error::Thread("checksum thread failed".into())),
            }
        })
    }

    /// The rank files as tensor sources.
    pub fn sources(&self) -> Vec<&dyn TensorSource> {
        self.ranks.iter().map(|r| r as &dyn TensorSource).collect()
    }

    /// Fails, naming the file and the tensors, when a rank file holds tensors the metadata does not describe:
    /// consolidating or resharding would silently leave them out (`allow_unexpected` accepts that).
    pub fn check_all_described(&self, forward: &ShardPlan) -> Result<()> {
        let sources = self.sources();
        for (rank, names) in crate::spec::compile::undescribed_rank_tensors(forward, &sources).into_iter().enumerate() {
            if !names.is_empty() {
                let context = format!(
                    "{} holds tensors the metadata does not describe, which the output would lack (--allow-unexpected drops them)",
                    self.ranks[rank].path().display()
                );
                return Err(Error::key_mismatch(context, vec![], names, &[]));
            }
        }
        Ok(())
    }
}

/// `a, b, c`, or the first eight and how many more.
fn list(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    if names.len() <= SHOWN {
        names.join(", ")
    } else {
        format!("{} and {} more", names[..SHOWN].join(", "), names.len() - SHOWN)
    }
}

/// One rank's view of a sharded checkpoint: the metadata and that rank's file only, for a process that runs
/// one rank (MPI). Other ranks' files are never opened, so they may live on other hosts.
pub struct RankCheckpoint {
    /// The directory.
    pub dir: PathBuf,
    /// The metadata.
    pub metadata: CheckpointMetadata,
    /// The TP size.
    pub tp: usize,
    /// This rank.
    pub rank: usize,
    /// This rank's file: ours (`.safetensors`, verified against the metadata's size and xxh3-64 when
    /// recorded) or optimum-neuron's (`.pt`, plain or xser), detected from the files present.
    pub file: StageFile,
}

impl RankCheckpoint {
    /// Opens rank `rank`'s file of the checkpoint in `dir` and verifies it; fails when `rank` is not below the
    /// checkpoint's tp.
    pub fn open(dir: &Path, rank: usize) -> Result<Self> {
        let mpath = dir.join(METADATA_PATH);
        let metadata = CheckpointMetadata::read(&mpath)?;
        let tp = metadata.tp_size(&mpath)?;
        let rdir = dir.join(RANKS_DIR);
        if rank >= tp {
            return Err(Error::RankFiles { dir: rdir, reason: format!("metadata says tp {tp}, no rank {rank}") });
        }
        if dir.join(metadata_path(1)).exists() {
            return Err(Error::Stage(format!(
                "{}: a checkpoint with pipeline stages: one process per rank runs only pp 1 (reshard it with --pp 1)",
                dir.display()
            )));
        }
        check_rank_entries(&rdir, &metadata, tp, 0)?;
        let (_, format) = rank_files_present(&rdir)?;
        let path = rdir.join(stage_rank_file_name(rank, 0, format.ext()));
        let entry = metadata.rank_files.get(rank);
        let file = open_rank_file(&path, format, entry)?;
        if let (StageFile::Safetensors(f), Some(entry)) = (&file, entry) {
            check_rank_file(&path, entry, f.xxh3())?;
        }
        Ok(Self { dir: dir.to_path_buf(), metadata, tp, rank, file })
    }
}
