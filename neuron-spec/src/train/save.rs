//! A trained model as a sharded checkpoint, with its AdamW state, and the state read back for resuming.
//!
//! ```text
//! <dir>/config.json, shards/mp_metadata_pp_rank_0.json, shards/model/<rank files>   the trained weights
//! <dir>/optimizer/state.json                       step, hyperparameters, the moments' parameter names
//! <dir>/optimizer/exp_avg/                         a sharded checkpoint of the first moments
//! <dir>/optimizer/exp_avg_sq/                      and of the second moments
//! ```
//!
//! Each moment directory is laid out as the weights are: the same rank-tensor names, shapes and a metadata
//! file describing each moment with its parameter's layout (restricted to the trained parameters), so
//! `consolidate` turns a moment directory into HF names and the moments follow the parameters' plans.
//! A LoRA run ([`super::write_lora_checkpoint`]) lays its moments out as its adapter instead, and
//! `state.json` names the adapter (`"mode": "lora", "adapter": NAME`).

use super::{AdamWConfig, OptimizerState};
use crate::checkpoint::atomic::Staging;
use crate::checkpoint::optimizer::{
    has_optimizer_state, optimizer_adapter, read_state_json, OPTIMIZER_DIR, STATE_JSON,
};
use crate::checkpoint::{RankCheckpoint, RankFileWriter, METADATA_PATH};
use crate::error::{Error, Result};
use crate::format::write_file_synced;
use crate::spec::metadata::{CheckpointMetadata, RankFileEntry, FORMAT_VERSION};
use crate::tensor::DType;
use crate::tensor::StateDict;
use std::collections::BTreeMap;
use std::path::Path;

/// The moment directories under [`OPTIMIZER_DIR`], in the order [`RankWritten::moments`] holds them.
const MOMENTS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

/// What one rank wrote of a trained checkpoint: its rank file of the weights and of each moment directory
/// (sizes and checksums for the metadata), and its step count. Serializable, so ranks in other processes can
/// send it to the rank that writes the metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RankWritten {
    /// The rank.
    pub rank: usize,
    /// Its rank file of the weights.
    pub weights: RankFileEntry,
    /// Its rank files of `exp_avg` and `exp_avg_sq`.
    pub moments: [RankFileEntry; 2],
    /// Its optimizer step count.
    pub step: u64,
}

/// Writes rank tensors (every rank's `StateDict`, the same names) as a sharded checkpoint under `root`.
pub(super) fn write_ranks(root: &Path, meta: &CheckpointMetadata, ranks: &[&StateDict]) -> Result<()> {
    let first = ranks.first().ok_or_else(|| Error::Argument("no ranks to write".into()))?;
    let entries = ranks.iter().enumerate().map(|(r, sd)| write_rank_file(root, r, sd)).collect::<Result<Vec<_>>>()?;
    write_rank_metadata(root, meta, first, entries)
}

/// Writes one rank's tensors as its rank file under `root` (a sharded checkpoint's directory).
fn write_rank_file(root: &Path, rank: usize, sd: &StateDict) -> Result<RankFileEntry> {
    RankFileWriter::new(root, 0)?.write_state_dict(rank, sd)
}

/// Writes the metadata of a sharded checkpoint under `root` whose rank files are `entries` (in rank order)
/// and whose tensors are named as `names` (rank 0's).
fn write_rank_metadata(
    root: &Path,
    meta: &CheckpointMetadata,
    names: &StateDict,
    entries: Vec<RankFileEntry>,
) -> Result<()> {
    let mut meta = meta.clone();
    meta.format_version = Some(FORMAT_VERSION);
    meta.tp_size = Some(entries.len());
    meta.rank_files = entries;
    meta.parameters.retain(|n, _| names.contains_key(n));
    for p in meta.parameters.values_mut() {
        p.dtype = Some(DType::F32);
    }
    let m = root.join(METADATA_PATH);
    if let Some(p) = m.parent() {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    write_file_synced(&m, meta.to_json()?.as_bytes())
}

/// Writes rank `rank`'s part of a trained checkpoint under `root` (a staging directory): its rank file of the
/// weights and of each moment. Every rank calls it, in any process; then one calls [`write_trained_metadata`].
pub fn write_trained_rank(
    root: &Path,
    rank: usize,
    weights: &StateDict,
    state: &OptimizerState,
) -> Result<RankWritten> {
    let opt = root.join(OPTIMIZER_DIR);
    Ok(RankWritten {
        rank,
        weights: write_rank_file(root, rank, weights)?,
        moments: [
            write_rank_file(&opt.join(MOMENTS[0]), rank, &state.exp_avg)?,
            write_rank_file(&opt.join(MOMENTS[1]), rank, &state.exp_avg_sq)?,
        ],
        step: state.step,
    })
}

/// Writes what a trained checkpoint holds besides the rank files, under `root`: the metadata of the weights
/// and of each moment directory (from `written`, every rank's report in rank order), `config_dir`'s non-weight
/// files ([`side_files`](crate::checkpoint::side_files): config, tokenizer, ...) and the optimizer's `state.json`. `rank0` is rank 0's trained tensors and state (their names
/// go into the metadata).
pub fn write_trained_metadata(
    root: &Path,
    config_dir: &Path,
    meta: &CheckpointMetadata,
    rank0: (&StateDict, &OptimizerState),
    written: &[RankWritten],
    adamw: &AdamWConfig,
) -> Result<()> {
    if written.is_empty() {
        return Err(Error::Argument("no ranks to write".into()));
    }
    if let Some((r, w)) = written.iter().enumerate().find(|(r, w)| w.rank != *r) {
        return Err(Error::RanksDiffer(format!("rank {r}'s report names rank {}", w.rank)));
    }
    let steps: Vec<u64> = written.iter().map(|w| w.step).collect();
    if steps.iter().any(|s| *s != steps[0]) {
        return Err(Error::RanksDiffer(format!("ranks disagree on the step count: {steps:?}")));
    }
    let (weights, state) = rank0;
    write_rank_metadata(root, meta, weights, written.iter().map(|w| w.weights.clone()).collect())?;
    // Every non-weight file of the input (config, tokenizer, generation config, chat template, ...), as `shard`
    // carries them.
    crate::checkpoint::copy_side_files(config_dir, root, None)?;
    let opt = root.join(OPTIMIZER_DIR);
    for (i, (m, names)) in MOMENTS.iter().zip([&state.exp_avg, &state.exp_avg_sq]).enumerate() {
        write_rank_metadata(&opt.join(m), meta, names, written.iter().map(|w| w.moments[i].clone()).collect())?;
    }
    let names: Vec<String> = state.exp_avg.keys().cloned().collect();
    write_state_json(&opt, steps[0], &state.skipped, adamw, names, None)
}

/// `state.json`: the step, the AdamW hyperparameters, the moments' parameter names, for a LoRA run its
/// adapter (`"mode": "lora", "adapter": NAME`), and when some rank tensors got no gradient at some steps
/// (experts no token reached), `"skipped_steps": {rank tensor name: count}` (their own AdamW step is
/// `step − count`).
fn write_state_json(
    opt: &Path,
    step: u64,
    skipped: &BTreeMap<String, u64>,
    adamw: &AdamWConfig,
    names: Vec<String>,
    adapter: Option<&str>,
) -> Result<()> {
    let mut state = serde_json::json!({
        "format_version": 1,
        "optimizer": "AdamW",
        "step": step,
        "lr": adamw.lr,
        "betas": [adamw.betas.0, adamw.betas.1],
        "eps": adamw.eps,
        "weight_decay": adamw.weight_decay,
        "mode": if adapter.is_some() { "lora" } else { "full" },
        "parameters": names,
    });
    if let (Some(name), Some(o)) = (adapter, state.as_object_mut()) {
        o.insert("adapter".into(), serde_json::Value::String(name.to_string()));
    }
    if let (false, Some(o)) = (skipped.is_empty(), state.as_object_mut()) {
        o.insert("skipped_steps".into(), serde_json::json!(skipped));
    }
    write_file_synced(&opt.join(STATE_JSON), state.to_string().as_bytes())
}

/// Writes the trained rank tensors and their AdamW state (every rank's, in rank order) to `out_dir` (staged,
/// then renamed: nothing is left at `out_dir` on failure). `meta` is the model's layout; `config_dir`'s
/// non-weight files are copied along. With one process per rank, each writes its own part with
/// [`write_trained_rank`] and one writes [`write_trained_metadata`] (`write_trained_checkpoint_mpi`, feature `mpi`).
pub fn write_trained_checkpoint(
    out_dir: &Path,
    config_dir: &Path,
    meta: &CheckpointMetadata,
    ranks: &[(StateDict, OptimizerState)],
    adamw: &AdamWConfig,
    force: bool,
) -> Result<()> {
    let staging = Staging::new(out_dir, force)?;
    let root = staging.path().to_path_buf();
    let r = (|| {
        let (w0, s0) = ranks.first().ok_or_else(|| Error::Argument("no ranks to write".into()))?;
        let written = ranks
            .iter()
            .enumerate()
            .map(|(r, (w, s))| write_trained_rank(&root, r, w, s))
            .collect::<Result<Vec<_>>>()?;
        write_trained_metadata(&root, config_dir, meta, (w0, s0), &written, adamw)
    })();
    r.map_err(|e| staging.describe(e))?;
    staging.commit()
}

/// Writes `root/optimizer/`: the moments of every rank (laid out by `meta`) and `state.json`. For a LoRA
/// run, `adapter` names the adapter and its directory's `adapter_config.json`: the moments are stored without
/// the adapter name (as its factors are in `adapter_<name>/`), beside a copy of that config.
pub(super) fn write_optimizer(
    root: &Path,
    meta: &CheckpointMetadata,
    ranks: &[(StateDict, OptimizerState)],
    adamw: &AdamWConfig,
    adapter: Option<(&str, &[u8])>,
) -> Result<()> {
    let opt = root.join(OPTIMIZER_DIR);
    let steps: Vec<u64> = ranks.iter().map(|(_, s)| s.step).collect();
    if steps.iter().any(|s| Some(s) != steps.first()) {
        return Err(Error::RanksDiffer(format!("ranks disagree on the step count: {steps:?}")));
    }
    let strip = |sd: &StateDict| -> StateDict {
        match adapter {
            Some(_) => sd.iter().map(|(n, t)| (crate::lora::remove_adapter_name(n), t.clone())).collect(),
            None => sd.clone(),
        }
    };
    let m1: Vec<StateDict> = ranks.iter().map(|(_, s)| strip(&s.exp_avg)).collect();
    let m2: Vec<StateDict> = ranks.iter().map(|(_, s)| strip(&s.exp_avg_sq)).collect();
    for (what, m) in MOMENTS.iter().zip([&m1, &m2]) {
        let dir = opt.join(what);
        write_ranks(&dir, meta, &m.iter().collect::<Vec<_>>())?;
        if let Some((_, config)) = adapter {
            write_file_synced(&dir.join(crate::lora::ADAPTER_CONFIG), config)?;
        }
    }
    let names = m1.first().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let skipped = ranks.first().map(|(_, s)| s.skipped.clone()).unwrap_or_default();
    write_state_json(&opt, steps.first().copied().unwrap_or(0), &skipped, adamw, names, adapter.map(|(n, _)| n))
}

/// Rank `rank`'s AdamW state from a trained checkpoint (its own rank file of each moment, checksum verified). A checkpoint without one is an
/// error naming the directory.
pub fn read_optimizer_state(dir: &Path, rank: usize) -> Result<OptimizerState> {
    let v = read_state_json(dir)?;
    let p = dir.join(OPTIMIZER_DIR).join(STATE_JSON);
    let step = v
        .get("step")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| Error::Json { path: p.clone(), reason: "no integer `step`".into() })?;
    let adapter = optimizer_adapter(dir)?;
    // Only this rank's file of each moment directory is opened (the others may live on other hosts).
    let read = |what: &str| -> Result<StateDict> {
        let ck = RankCheckpoint::open(&dir.join(OPTIMIZER_DIR).join(what), rank)?;
        let mut sd = StateDict::new();
        for n in ck.file.source().names() {
            let t = ck.file.source().tensor(&n)?;
            // A LoRA run stores its moments as its adapter's factors, without the adapter name.
            let name = match &adapter {
                Some(a) => crate::lora::insert_adapter_name(&n, a),
                None => n,
            };
            sd.insert(name, t);
        }
        Ok(sd)
    };
    let skipped = match v.get("skipped_steps") {
        None => BTreeMap::new(),
        Some(s) => serde_json::from_value::<BTreeMap<String, u64>>(s.clone()).map_err(|e| Error::Json {
            path: p.clone(),
            reason: format!("`skipped_steps` must map tensor names to step counts: {e}"),
        })?,
    };
    Ok(OptimizerState { step, skipped, exp_avg: read(MOMENTS[0])?, exp_avg_sq: read(MOMENTS[1])? })
}

/// `reshard` for a trained checkpoint: the weights, then each moment directory with the same plan
/// composition (the moments follow their parameters' layouts), and the optimizer's `state.json`. Returns the
/// weights' report.
pub fn reshard_trained(
    src: &Path,
    dst: &Path,
    tp: usize,
    opts: &crate::checkpoint::WriteOptions,
) -> Result<crate::checkpoint::Report> {
    if !has_optimizer_state(src) {
        return Err(Error::Checkpoint(format!("{}: no optimizer state to reshard", src.display())));
    }
    let report = crate::ops::reshard::reshard(src, dst, tp, opts)?;
    let r = (|| {
        let staging = Staging::new(&dst.join(OPTIMIZER_DIR), false)?;
        for m in ["exp_avg", "exp_avg_sq"] {
            let o = crate::checkpoint::WriteOptions { force: false, ..opts.clone() };
            let (from, to) = (src.join(OPTIMIZER_DIR).join(m), staging.path().join(m));
            crate::ops::reshard::reshard(&from, &to, tp, &o)?;
            // A LoRA run's moments carry their adapter's config (not a side file: reshard leaves it).
            let config = from.join(crate::lora::ADAPTER_CONFIG);
            if config.is_file() {
                let bytes = std::fs::read(&config).map_err(|e| Error::io(&config, e))?;
                write_file_synced(&to.join(crate::lora::ADAPTER_CONFIG), &bytes)?;
            }
        }
        let s = src.join(OPTIMIZER_DIR).join(STATE_JSON);
        let bytes = std::fs::read(&s).map_err(|e| Error::io(&s, e))?;
        write_file_synced(&staging.path().join(STATE_JSON), &bytes)?;
        staging.commit()
    })();
    if r.is_err() {
        // Nothing half-made: without its optimizer state the resharded weights are not what was asked for.
        let _ = std::fs::remove_dir_all(dst);
    }
    r.map(|()| report)
}
