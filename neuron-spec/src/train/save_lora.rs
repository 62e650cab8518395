//! A LoRA-only run as a sharded checkpoint: the frozen base as `shard` writes it, the trained adapter in
//! `adapter_<name>/` as `shard --adapter` writes it, and the adapter's AdamW state.
//!
//! ```text
//! <dir>/config.json, shards/...          the base weights, unchanged (sharded from the HF model, or copied
//!                                        byte for byte from the checkpoint the run resumed)
//! <dir>/adapter_<name>/                  the trained adapter: rank files, metadata, adapter_config.json
//! <dir>/optimizer/state.json             step, hyperparameters, "mode": "lora", "adapter": "<name>"
//! <dir>/optimizer/exp_avg/, exp_avg_sq/  the moments, laid out as the adapter (+ its adapter_config.json)
//! ```
//!
//! `consolidate` then writes the adapter as a PEFT directory (and, with `--optimizer`, the moments with
//! peft's names); `train` on such a directory resumes the LoRA run.

use super::save::write_optimizer;
use super::{AdamWConfig, OptimizerState};
use crate::checkpoint::adapters::{sharded_adapters, write_sharded_adapter};
use crate::checkpoint::atomic::Staging;
use crate::checkpoint::{rank_file_name, write_sharded, KvReplicas, ShardedCheckpoint, METADATA_PATH, RANKS_DIR};
use crate::error::{Error, Result};
use crate::format::{write_file_synced, HfCheckpoint};
use crate::lora::{adapter_metadata_for_tp, get_adapter_name, remove_adapter_name, ImportedAdapter};
use crate::spec::compile::{plan_shards, to_original_weights, PlanOptions};
use crate::spec::metadata::CheckpointMetadata;
use crate::tensor::StateDict;
use crate::tensor::TensorSource;
use std::path::Path;

/// Where the frozen base weights of a LoRA run come from.
#[derive(Debug, Clone, Copy)]
pub enum FrozenBase<'a> {
    /// An HF checkpoint directory: sharded as `shard` does (dtype kept).
    Hf(&'a Path),
    /// The sharded checkpoint the run resumed: its base files are copied byte for byte.
    Sharded(&'a Path),
}

/// Writes a LoRA run to `out_dir` (staged, then renamed: nothing is left at `out_dir` on failure): the base
/// from `base` in the layout `meta`, `adapter` (its config and layout; its factors replaced by the trained
/// ones of `ranks`) and the ranks' AdamW state.
pub fn write_lora_checkpoint(
    out_dir: &Path,
    base: FrozenBase<'_>,
    meta: &CheckpointMetadata,
    adapter: &ImportedAdapter,
    ranks: &[(StateDict, OptimizerState)],
    adamw: &AdamWConfig,
    force: bool,
) -> Result<()> {
    let tp = ranks.len();
    let staging = Staging::new(out_dir, force)?;
    let root = staging.path().to_path_buf();
    let r = (|| {
        match base {
            FrozenBase::Hf(dir) => {
                let hf = HfCheckpoint::open(dir)?;
                let plan = plan_shards(meta, &hf, tp, PlanOptions::default()).map_err(|e| e.in_checkpoint(dir))?;
                let m = crate::checkpoint::with_global_infos(meta, &plan);
                write_sharded(&root, out_dir, &plan, m, &[&hf], dir, &Default::default())?;
            }
            FrozenBase::Sharded(dir) => copy_base(dir, &root, tp)?,
        }
        let own = |sd: &StateDict| -> StateDict {
            sd.iter()
                .filter(|(n, _)| get_adapter_name(n) == Some(adapter.name.as_str()))
                .map(|(n, t)| (remove_adapter_name(n), t.clone()))
                .collect()
        };
        let factors: Vec<StateDict> = ranks.iter().map(|(w, _)| own(w)).collect();
        if factors.iter().any(StateDict::is_empty) {
            return Err(Error::lora(&adapter.name, "a rank holds none of the adapter's factors"));
        }
        let srcs: Vec<&dyn TensorSource> = factors.iter().map(|s| s as &dyn TensorSource).collect();
        let trained = ImportedAdapter { tensors: to_original_weights(&adapter.metadata, &srcs)?, ..adapter.clone() };
        write_sharded_adapter(&root, out_dir, &trained, tp, &Default::default())?;
        let config = adapter.config.to_json()?;
        write_optimizer(&root, &adapter.metadata, ranks, adamw, Some((&adapter.name, config.as_bytes())))
    })();
    r.map_err(|e| staging.describe(e))?;
    staging.commit()
}

/// Copies a sharded checkpoint's base (metadata, rank files, side files) into `root`.
fn copy_base(dir: &Path, root: &Path, tp: usize) -> Result<()> {
    let ck = ShardedCheckpoint::open(dir)?;
    if ck.tp != tp || ck.pp() != 1 {
        return Err(Error::Checkpoint(format!(
            "{}: the base is at tp {}, pp {}; the run is at tp {tp}, pp 1",
            dir.display(),
            ck.tp,
            ck.pp()
        )));
    }
    let mut files = vec![METADATA_PATH.to_string()];
    files.extend((0..tp).map(|r| format!("{RANKS_DIR}/{}", rank_file_name(r))));
    for f in files {
        let (from, to) = (dir.join(&f), root.join(&f));
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
        let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
        write_file_synced(&to, &bytes)?;
    }
    crate::checkpoint::copy_side_files(dir, root, None)?;
    Ok(())
}

/// The adapter a LoRA run in the trained checkpoint `dir` trains, as an import for the base layout `meta`
/// (its factors consolidated from the ranks): what the resumed run loads and writes back.
pub fn trained_adapter(dir: &Path, name: &str, meta: &CheckpointMetadata) -> Result<ImportedAdapter> {
    let all = sharded_adapters(dir)?;
    let names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
    let a = all.iter().find(|a| a.name == name).ok_or_else(|| {
        Error::lora(name, format!("{} has no adapter_{name}/ (it has: {})", dir.display(), names.join(", ")))
    })?;
    if all.len() > 1 {
        return Err(Error::Checkpoint(format!(
            "{} holds several adapters ({}): training one beside others is not implemented",
            dir.display(),
            names.join(", ")
        )));
    }
    let layout = a.config.layout()?.ok_or_else(|| Error::lora(name, "its config has no layout section"))?;
    Ok(ImportedAdapter {
        name: name.to_string(),
        config: a.config.clone(),
        metadata: adapter_metadata_for_tp(meta, &layout)?,
        layout,
        tensors: a.consolidate(KvReplicas::Check)?,
        warnings: vec![],
        source_dir: Some(dir.join(crate::checkpoint::adapters::adapter_dir_name(name))),
    })
}
