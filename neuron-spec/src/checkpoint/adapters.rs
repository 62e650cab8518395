//! Adapters in a sharded checkpoint: `<sharded_dir>/adapter_<name>/` holds the adapter's own rank files and
//! metadata (the base checkpoint's layout) and its `adapter_config.json` in the TP model's terms.

use crate::checkpoint::{with_global_infos, write_sharded, KvReplicas, Report, ShardedCheckpoint};
use crate::error::{Error, Result};
use crate::format::write_file_synced;
use crate::lora::ImportedAdapter;
use crate::lora::LoraRankAdapter;
use crate::lora::{export_adapter, ExportedAdapter};
use crate::lora::{LoraConfig, ADAPTER_CONFIG};
use crate::spec::compile::{consolidate_tensor, consolidation_plan, plan_shards, PlanOptions};
use crate::spec::metadata::CheckpointMetadata;
use crate::tensor::StateDict;
use crate::tensor::TensorSource;
use std::path::{Path, PathBuf};

/// The directory of adapter `name` inside a sharded checkpoint.
pub fn adapter_dir_name(name: &str) -> String {
    format!("adapter_{name}")
}

/// Writes `adapter` sharded at `tp` into `root/adapter_<name>/` (`root` is a staging directory that becomes
/// `out_dir`).
pub fn write_sharded_adapter(
    root: &Path,
    out_dir: &Path,
    adapter: &ImportedAdapter,
    tp: usize,
    progress: &crate::progress::ProgressSink,
) -> Result<Report> {
    let plan = plan_shards(&adapter.metadata, &adapter.tensors, tp, PlanOptions::default())?;
    let dir = root.join(adapter_dir_name(&adapter.name));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let meta = with_global_infos(&adapter.metadata, &plan);
    let report = write_sharded(
        &dir,
        &out_dir.join(adapter_dir_name(&adapter.name)),
        &plan,
        meta,
        &[&adapter.tensors],
        &dir,
        progress,
    )?;
    write_file_synced(&dir.join(ADAPTER_CONFIG), adapter.config.to_json()?.as_bytes())?;
    if let Some(src) = &adapter.source_dir {
        crate::checkpoint::copy_side_files(src, &dir, None)?;
    }
    Ok(report)
}

pub use super::reference_adapters::REFERENCE_ADAPTER_SHARDS;

/// An adapter of a sharded checkpoint.
pub struct ShardedAdapter {
    /// The adapter name.
    pub name: String,
    /// Its config in the TP model's terms.
    pub config: LoraConfig,
    /// Its rank files and metadata.
    pub checkpoint: ShardedCheckpoint,
}

/// The adapters of the sharded checkpoint in `dir`, by name.
pub fn sharded_adapters(dir: &Path) -> Result<Vec<ShardedAdapter>> {
    let mut out = Vec::new();
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let n = e.file_name().to_string_lossy().to_string();
        if let Some(name) = n.strip_prefix("adapter_") {
            if e.path().is_dir() {
                dirs.push((name.to_string(), e.path()));
            }
        }
    }
    dirs.sort();
    for (name, p) in dirs {
        crate::lora::check_adapter_name(&name)?;
        // optimum-neuron's adapter layout (`NeuronPeftModel.save_pretrained`), read in mean mode.
        if p.join(REFERENCE_ADAPTER_SHARDS).is_dir() {
            let (config, checkpoint) = super::reference_adapters::open_reference_adapter(&p, &name)?;
            out.push(ShardedAdapter { name, config, checkpoint });
            continue;
        }
        let config = LoraConfig::read(&p.join(ADAPTER_CONFIG))?;
        if config.layout()?.is_none() {
            return Err(Error::lora(
                p.display().to_string(),
                format!(
                    "{ADAPTER_CONFIG} has no {} section (not written by neuron-spec shard)",
                    crate::lora::LAYOUT_KEY
                ),
            ));
        }
        out.push(ShardedAdapter { name, config, checkpoint: ShardedCheckpoint::open(&p)? });
    }
    Ok(out)
}

impl ShardedAdapter {
    /// Rank `rank`'s factors and the scalings, for [`crate::lora::LoraRankSource`].
    pub fn rank_adapter(&self, rank: usize) -> Result<LoraRankAdapter> {
        let f = self.checkpoint.ranks.get(rank).ok_or_else(|| {
            Error::lora(&self.name, format!("no rank file for rank {rank} (tp {})", self.checkpoint.tp))
        })?;
        let mut tensors = StateDict::new();
        for n in f.names() {
            tensors.insert(n.to_string(), f.tensor(n)?);
        }
        rank_adapter(&self.name, &self.config, tensors)
    }

    /// The full-rank factors, consolidated from the ranks.
    pub fn consolidate(&self, replicas: KvReplicas) -> Result<StateDict> {
        let sources = self.checkpoint.sources();
        let (_, inverse) = consolidation_plan(&self.checkpoint.metadata, &sources)?;
        let mut out = StateDict::new();
        for t in &inverse {
            out.insert(t.name.clone(), consolidate_tensor(t, &sources, replicas)?);
        }
        Ok(out)
    }

    /// The adapter in peft's terms; `base` is the base checkpoint's metadata.
    pub fn export(&self, base: &CheckpointMetadata, replicas: KvReplicas) -> Result<ExportedAdapter> {
        let full = self.consolidate(replicas)?;
        export_adapter(base, &self.config, &full)
    }
}

/// A rank's adapter from its factors and the adapted config's layout.
pub fn rank_adapter(name: &str, config: &LoraConfig, tensors: StateDict) -> Result<LoraRankAdapter> {
    let layout = config
        .layout()?
        .ok_or_else(|| Error::lora(name, format!("the config has no {} section", crate::lora::LAYOUT_KEY)))?;
    let scalings = layout.modules.iter().map(|(k, m)| (k.clone(), m.scaling)).collect();
    Ok(LoraRankAdapter { name: name.to_string(), tensors, scalings })
}

/// Rank `rank`'s factors of an imported adapter for the TP layout `base` (at `base`'s tp).
pub fn imported_rank_adapter(
    base: &CheckpointMetadata,
    adapter: &ImportedAdapter,
    tp: usize,
    rank: usize,
) -> Result<LoraRankAdapter> {
    let meta = crate::lora::adapter_metadata_for_tp(base, &adapter.layout)?;
    let src: &dyn TensorSource = &adapter.tensors;
    let tensors = crate::spec::compile::adapt_state_dict(&meta, src, tp, rank, PlanOptions::default())?;
    rank_adapter(&adapter.name, &adapter.config, tensors)
}
