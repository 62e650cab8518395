//! One pipeline stage of a sharded checkpoint, opened on its own: `shards/mp_metadata_pp_rank_<P>.json` and
//! the stage's TP rank files `dp_rank_00_tp_rank_<TT>_pp_rank_<PP>.*`, nothing of the other stages. A stage
//! is self-contained, so a process (or a thread group) that runs one stage reads only that stage's bytes;
//! `checkpoint::ShardedCheckpoint` is every stage opened this way.

use crate::checkpoint::rank::StageFile;
use crate::error::{Error, Result};
use crate::format::pt::PtRankFile;
use crate::format::SafetensorsFile;
use crate::spec::metadata::{CheckpointMetadata, RankFileEntry};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Rank files directory, relative to the checkpoint directory.
pub const RANKS_DIR: &str = "shards/model";

/// The format of a sharded checkpoint's rank files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankFormat {
    /// Ours: `.safetensors`.
    Safetensors,
    /// optimum-neuron's `.pt`, plain or xser (read only).
    Pt,
}

impl RankFormat {
    /// The rank files' extension.
    pub fn ext(self) -> &'static str {
        match self {
            RankFormat::Safetensors => "safetensors",
            RankFormat::Pt => "pt",
        }
    }
}

/// Stage `stage`'s metadata file, relative to the checkpoint directory.
pub fn metadata_path(stage: usize) -> String {
    format!("shards/mp_metadata_pp_rank_{stage}.json")
}

/// The file name of TP rank `rank`'s shard in pipeline stage `stage`, with extension `ext`.
pub fn stage_rank_file_name(rank: usize, stage: usize, ext: &str) -> String {
    format!("dp_rank_00_tp_rank_{rank:02}_pp_rank_{stage:02}.{ext}")
}

/// The number of pipeline stages of `dir`: its `shards/mp_metadata_pp_rank_<N>.json` files (names only, none
/// read), which must be numbered 0 … P-1 with no gap.
pub fn stage_count(dir: &Path) -> Result<usize> {
    let sdir = dir.join("shards");
    let mut found = BTreeSet::new();
    for e in std::fs::read_dir(&sdir).map_err(|e| Error::io(&sdir, e))? {
        let name = e.map_err(|e| Error::io(&sdir, e))?.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("mp_metadata_pp_rank_").and_then(|r| r.strip_suffix(".json")) {
            let stage: usize = n.parse().map_err(|_| Error::Metadata {
                path: sdir.join(&name),
                reason: "not a stage metadata file name (mp_metadata_pp_rank_<N>.json)".into(),
            })?;
            found.insert(stage);
        }
    }
    let pp = found.len();
    if pp > crate::spec::pipeline::MAX_PP {
        return Err(Error::RankFiles {
            dir: sdir,
            reason: format!("{pp} stage metadata files (at most {})", crate::spec::pipeline::MAX_PP),
        });
    }
    if pp == 0 {
        return Err(Error::Metadata { path: dir.join(metadata_path(0)), reason: "no stage metadata".into() });
    }
    if let Some(gap) = (0..pp).find(|s| !found.contains(s)) {
        return Err(Error::RankFiles {
            dir: sdir,
            reason: format!("stage metadata {} is missing", metadata_path(gap)),
        });
    }
    Ok(pp)
}

/// The rank files present in `rdir` (`.safetensors`, or `.pt` without xser's companions) and their format.
pub(crate) fn rank_files_present(rdir: &Path) -> Result<(BTreeSet<String>, RankFormat)> {
    let mut present = BTreeSet::new();
    for e in std::fs::read_dir(rdir).map_err(|e| Error::io(rdir, e))? {
        let name = e.map_err(|e| Error::io(rdir, e))?.file_name().to_string_lossy().to_string();
        // xser's companions (`<file>.pt.info.pt`, `<file>.pt.tensors/`) belong to their rank file.
        if name.ends_with(".safetensors") || (name.ends_with(".pt") && !name.ends_with(".info.pt")) {
            present.insert(name);
        }
    }
    let has = |ext: &str| present.iter().any(|n| n.ends_with(ext));
    let format = match (has(".safetensors"), has(".pt")) {
        (_, false) => RankFormat::Safetensors,
        (false, true) => RankFormat::Pt,
        (true, true) => {
            return Err(Error::RankFiles {
                dir: rdir.to_path_buf(),
                reason: "both .safetensors and .pt rank files are present: which is the checkpoint?".into(),
            })
        }
    };
    Ok((present, format))
}

/// One stage of a sharded checkpoint: its metadata and its TP ranks' files, memory-mapped.
pub struct StageCheckpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// This stage.
    pub stage: usize,
    /// The checkpoint's number of stages.
    pub pp: usize,
    /// This stage's metadata (its parameters and specs only).
    pub metadata: CheckpointMetadata,
    /// The TP size.
    pub tp: usize,
    /// This stage's rank files, in TP rank order.
    pub files: Vec<StageFile>,
    /// The rank files' format.
    pub format: RankFormat,
}

impl StageCheckpoint {
    /// Opens stage `stage` of `dir` and verifies its rank files' sizes and checksums where its metadata
    /// records them. No other stage's metadata or rank file is read.
    pub fn open(dir: &Path, stage: usize) -> Result<Self> {
        let s = Self::open_unverified(dir, stage)?;
        s.verify()?;
        Ok(s)
    }

    /// [`StageCheckpoint::open`] without hashing the rank files (a header that does not parse is still checked
    /// against its recorded checksum, so that damage is reported as damage).
    pub fn open_unverified(dir: &Path, stage: usize) -> Result<Self> {
        let pp = stage_count(dir)?;
        if stage >= pp {
            return Err(Error::Stage(format!("{}: no pipeline stage {stage} (pp is {pp})", dir.display())));
        }
        let mpath = dir.join(metadata_path(stage));
        let metadata = CheckpointMetadata::read(&mpath)?;
        let tp = metadata.tp_size(&mpath)?;
        let rdir = dir.join(RANKS_DIR);
        let (present, format) = rank_files_present(&rdir)?;
        let names: Vec<String> = (0..tp).map(|r| stage_rank_file_name(r, stage, format.ext())).collect();
        let missing: Vec<&str> = names.iter().filter(|n| !present.contains(*n)).map(String::as_str).collect();
        if !missing.is_empty() {
            return Err(Error::RankFiles {
                dir: rdir,
                reason: format!("metadata of stage {stage} says tp {tp}, missing rank files: {}", missing.join(", ")),
            });
        }
        check_rank_entries(&rdir, &metadata, tp, stage)?;
        let files = names
            .iter()
            .enumerate()
            .map(|(r, n)| open_rank_file(&rdir.join(n), format, metadata.rank_files.get(r)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { dir: dir.to_path_buf(), stage, pp, metadata, tp, files, format })
    }

    /// Whether this is the first stage.
    pub fn is_first(&self) -> bool {
        self.stage == 0
    }

    /// Whether this is the last stage.
    pub fn is_last(&self) -> bool {
        self.stage + 1 == self.pp
    }

    /// Checks each rank file's size and xxh3-64 against the metadata (when it records them).
    pub fn verify(&self) -> Result<()> {
        for (f, entry) in self.files.iter().zip(&self.metadata.rank_files) {
            if let StageFile::Safetensors(s) = f {
                check_rank_file(s.path(), entry, s.xxh3())?;
            }
        }
        Ok(())
    }
}

/// Opens one rank file; a safetensors header that does not parse is reported as damage when its recorded
/// checksum disagrees.
pub(crate) fn open_rank_file(path: &Path, format: RankFormat, entry: Option<&RankFileEntry>) -> Result<StageFile> {
    if format == RankFormat::Pt {
        return PtRankFile::open(path).map(StageFile::Pt);
    }
    SafetensorsFile::open(path).map(StageFile::Safetensors).map_err(|e| match entry {
        Some(entry) => match crate::format::file_xxh3(path).and_then(|w| check_rank_file(path, entry, w)) {
            Err(damage @ Error::Checksum { .. }) => damage,
            _ => e,
        },
        None => e,
    })
}

/// The metadata's list of rank files: one per rank of `tp`, in rank order. Metadata written by this crate
/// (with a `format_version`) always records them, so an empty list there is an error, never a skipped check;
/// the reference's metadata (no `format_version`) has no checksums to verify.
pub(crate) fn check_rank_entries(rdir: &Path, metadata: &CheckpointMetadata, tp: usize, stage: usize) -> Result<()> {
    let entries = &metadata.rank_files;
    if entries.is_empty() {
        if let Some(v) = metadata.format_version {
            return Err(Error::RankFiles {
                dir: rdir.to_path_buf(),
                reason: format!(
                    "the metadata (format_version {v}) records no rank_files, so the rank files' sizes and checksums cannot be verified (edited or truncated metadata?)"
                ),
            });
        }
        return Ok(());
    }
    if entries.len() != tp {
        return Err(Error::RankFiles {
            dir: rdir.to_path_buf(),
            reason: format!("metadata lists {} rank files for tp {tp}", entries.len()),
        });
    }
    for (r, e) in entries.iter().enumerate() {
        if e.file != stage_rank_file_name(r, stage, "safetensors") {
            return Err(Error::RankFiles {
                dir: rdir.to_path_buf(),
                reason: format!("metadata of stage {stage} lists {} as rank {r}", e.file),
            });
        }
    }
    Ok(())
}

/// `found` (a rank file's size and hash) against what the metadata recorded for it.
pub(crate) fn check_rank_file(path: &Path, e: &RankFileEntry, found: crate::format::Written) -> Result<()> {
    let path = path.to_path_buf();
    if found.size != e.size {
        return Err(Error::Checksum { path, reason: format!("expected {} bytes, found {}", e.size, found.size) });
    }
    let hex = format!("{:016x}", found.xxh3);
    if hex != e.xxh3_64 {
        return Err(Error::Checksum { path, reason: format!("expected xxh3-64 {}, found {hex}", e.xxh3_64) });
    }
    Ok(())
}
