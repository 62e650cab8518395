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
pub mod reference_adapters;
pub mod stage;

use crate::checkpoint::rank::{RankSource, StageFile};
use crate::checkpoint::stage::{check_rank_entries, check_rank_file, open_rank_file, rank_files_present, stage_count};
pub use crate::checkpoint::stage::{metadata_path, stage_rank_file_name, RankFormat, StageCheckpoint, RANKS_DIR};
use crate::error::{Error, Result};
use crate::format::{safetensors_order, write_file_synced, write_safetensors, SafetensorsFile};
use crate::plan::prefetch::with_prefetch;
use crate::plan::{ShardPlan, TensorPlan};
pub use crate::spec::compile::KvReplicas;
use crate::spec::metadata::{CheckpointMetadata, RankFileEntry, FORMAT_VERSION};
use crate::spec::pipeline::StageAssignment;
use crate::tensor::{TensorInfo, TensorSource};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// neuronx-distributed's bookkeeping markers in an optimum-neuron checkpoint: not part of an HF folder.
const REFERENCE_MARKERS: [&str; 2] = ["checkpoint", "done"];

/// Is `name` a weight file or index (any format), an adapter's file, a reference checkpoint marker or hidden?
/// Those never travel as side files.
fn is_weight_or_adapter_file(name: &str) -> bool {
    const WEIGHT_SUFFIXES: [&str; 11] =
        [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".npz", ".index.json"];
    name.starts_with('.')
        || WEIGHT_SUFFIXES.iter().any(|s| name.ends_with(s))
        || name == crate::lora::ADAPTER_CONFIG
        || name.starts_with("adapter_model.")
        || REFERENCE_MARKERS.contains(&name)
}

/// Sub-directories of an HF model folder that hold non-weight files and travel whole (transformers' extra
/// chat templates).
pub const SIDE_DIRS: [&str; 1] = ["additional_chat_templates"];

/// The non-weight files of an HF model folder or a sharded checkpoint (`config.json`, `tokenizer*.json`,
/// `tokenizer.model`, `special_tokens_map.json`, `generation_config.json`, chat templates, model card, ...),
/// relative to `dir`: every top-level regular file (symlinks followed, as in the HF cache) except weight files
/// and indexes of any format (so goldens and stray checkpoints are never mixed in), adapter files and hidden
/// files, plus the files of [`SIDE_DIRS`].
pub fn side_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        let is_file = std::fs::metadata(e.path()).map(|m| m.is_file()).unwrap_or(false);
        if is_file && !is_weight_or_adapter_file(&name) {
            out.push(PathBuf::from(name));
        } else if SIDE_DIRS.contains(&name.as_str()) && e.path().is_dir() {
            let sub = e.path();
            for f in std::fs::read_dir(&sub).map_err(|e| Error::io(&sub, e))? {
                let f = f.map_err(|e| Error::io(&sub, e))?;
                let n = f.file_name().to_string_lossy().to_string();
                if !n.starts_with('.') && std::fs::metadata(f.path()).map(|m| m.is_file()).unwrap_or(false) {
                    out.push(Path::new(&name).join(n));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Rewrites `config.json`'s bytes (consolidation to another dtype).
pub(crate) type ConfigEdit<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>>;

/// Copies the [`side_files`] of `src_dir` into `dst_dir` byte for byte; `config_edit` may rewrite
/// `config.json` (consolidation to another dtype). Returns the files copied (relative paths).
pub(crate) fn copy_side_files(
    src_dir: &Path,
    dst_dir: &Path,
    config_edit: Option<ConfigEdit<'_>>,
) -> Result<Vec<PathBuf>> {
    if src_dir == dst_dir {
        return Ok(vec![]);
    }
    let files = side_files(src_dir)?;
    for rel in &files {
        let src = src_dir.join(rel);
        let mut bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
        if let (Some(edit), true) = (config_edit, rel == Path::new("config.json")) {
            bytes = edit(&bytes)?;
        }
        let dst = dst_dir.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        write_file_synced(&dst, &bytes)?;
    }
    Ok(files)
}

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
    let file_name = |rank: usize| stage_rank_file_name(rank, stage, "safetensors");
    let ranks_dir = root.join(RANKS_DIR);
    std::fs::create_dir_all(&ranks_dir).map_err(|e| Error::io(&ranks_dir, e))?;
    let mut report = Report { bytes_read_per_rank: plan.bytes_read_per_rank(), ..Default::default() };
    let rank_meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
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
            order.push(*by_name.get(i.name.as_str()).ok_or_else(|| Error::Invalid(format!("no plan for {}", i.name)))?);
        }
    }
    with_prefetch(&order, &|t| t.pieces(sources), |next| {
        for (rank, infos) in per_rank.iter().enumerate() {
            let path = ranks_dir.join(file_name(rank));
            let w = write_safetensors(&path, infos, &rank_meta, &mut |info| {
                let out = next(info)?;
                bar.inc(out.iter().map(|p| p.bytes().len() as u64).sum());
                Ok(out)
            })?;
            report.bytes_written += w.size;
            meta.rank_files.push(RankFileEntry {
                file: file_name(rank),
                size: w.size,
                xxh3_64: format!("{:016x}", w.xxh3),
            });
            report.tensors += infos.len();
            report.files.push(out_dir.join(RANKS_DIR).join(file_name(rank)));
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
                let r = h.join().map_err(|_| Error::Invalid("checksum thread failed".into()))?;
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
                Err(_) => Err(Error::Invalid("checksum thread failed".into())),
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
            return Err(Error::Invalid(format!(
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

/// Orders names as people read them: `layers.2` before `layers.10`.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<(u64, String)> {
        s.split('.').map(|p| p.parse::<u64>().map_or((u64::MAX, p.to_string()), |n| (n, String::new()))).collect()
    };
    key(a).cmp(&key(b))
}
