//! A trained checkpoint's optimizer state on disk, without burn: `optimizer/state.json` (step,
//! hyperparameters, the adapter of a LoRA run), and the moments with HF names (`consolidate --optimizer`):
//!
//! ```text
//! <out>/optimizer/exp_avg.safetensors      first moments, one tensor per trained HF parameter
//! <out>/optimizer/exp_avg_sq.safetensors   second moments
//! <out>/optimizer/state.json               step and hyperparameters (as in the sharded checkpoint),
//!                                          `parameters`: the HF names the moments have, and for full
//!                                          training `skipped_steps` under HF names (steps at which a
//!                                          parameter got no gradient: its own AdamW step is step − count)
//! ```
//!
//! Full training names them as `model.safetensors` does (`model.layers.0.self_attn.q_proj.weight`); a LoRA
//! run as `adapter_model.safetensors` does (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`,
//! each member of a fused group at its own rank). kv heads tiled over ranks are checked (or picked) as the
//! weights are. These are the tensors `torch.optim.AdamW` keeps as `state[p]["exp_avg"]` /
//! `["exp_avg_sq"]`.

use crate::checkpoint::adapters::ShardedAdapter;
use crate::checkpoint::{natural_cmp, KvReplicas, ShardedCheckpoint};
use crate::error::{Error, Result};
use crate::format::{write_file_synced, write_state_dict};
use crate::lora::{LoraConfig, ADAPTER_CONFIG};
use crate::spec::compile::{consolidate_tensor, consolidation_plan};
use crate::spec::metadata::CheckpointMetadata;
use crate::tensor::StateDict;
use crate::tensor::{TensorInfo, TensorSource};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The optimizer directory of a trained checkpoint.
pub const OPTIMIZER_DIR: &str = "optimizer";
/// The optimizer's step count and hyperparameters, in [`OPTIMIZER_DIR`].
pub const STATE_JSON: &str = "state.json";

/// Whether a sharded checkpoint holds optimizer state.
pub fn has_optimizer_state(dir: &Path) -> bool {
    dir.join(OPTIMIZER_DIR).join(STATE_JSON).is_file()
}

/// `optimizer/state.json` of a trained checkpoint, parsed.
pub fn read_state_json(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join(OPTIMIZER_DIR).join(STATE_JSON);
    if !p.is_file() {
        return Err(Error::Checkpoint(format!(
            "{}: no optimizer state ({} missing): cannot resume training from it",
            dir.display(),
            p.display()
        )));
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: p.clone(), reason: e.to_string() })
}

/// The adapter a trained checkpoint's optimizer state belongs to: `Some(name)` for a LoRA run, `None` for
/// full training.
pub fn optimizer_adapter(dir: &Path) -> Result<Option<String>> {
    let v = read_state_json(dir)?;
    match v.get("adapter") {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::Json {
            path: dir.join(OPTIMIZER_DIR).join(STATE_JSON),
            reason: "`adapter` is not a string".into(),
        }),
    }
}

/// Writes `out/optimizer/` from the optimizer state of the trained checkpoint `dir` (whose base layout is
/// `base`); returns the files written. A checkpoint without optimizer state is an error naming it.
pub fn consolidate_optimizer(
    dir: &Path,
    base: &CheckpointMetadata,
    out: &Path,
    replicas: KvReplicas,
) -> Result<Vec<PathBuf>> {
    let mut state = read_state_json(dir)?;
    let adapter = optimizer_adapter(dir)?;
    let dst = out.join(OPTIMIZER_DIR);
    std::fs::create_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
    let mut files = Vec::new();
    let mut names = Vec::new();
    // Rank tensors that got no gradient at some steps (`skipped_steps`): renamed to the HF names they make.
    let skipped: BTreeMap<String, u64> = match state.get("skipped_steps") {
        None => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::Json {
            path: dir.join(OPTIMIZER_DIR).join(STATE_JSON),
            reason: format!("`skipped_steps` must map tensor names to step counts: {e}"),
        })?,
    };
    let mut hf_skipped = BTreeMap::new();
    for what in ["exp_avg", "exp_avg_sq"] {
        let src = dir.join(OPTIMIZER_DIR).join(what);
        let ck = ShardedCheckpoint::open(&src)?;
        let moments = match &adapter {
            Some(name) => {
                let config = LoraConfig::read(&src.join(ADAPTER_CONFIG))?;
                let a = ShardedAdapter { name: name.clone(), config, checkpoint: ck };
                a.export(base, replicas)?.tensors
            }
            None => {
                let sources = ck.sources();
                let (_, inverse) = consolidation_plan(&ck.metadata, &sources)?;
                let mut sd = StateDict::new();
                for t in &inverse {
                    sd.insert(t.name.clone(), consolidate_tensor(t, &sources, replicas)?);
                    if let Some(k) = t.blocks.iter().find_map(|b| skipped.get(&b.src.name)) {
                        hf_skipped.insert(t.name.clone(), *k);
                    }
                }
                sd
            }
        };
        let mut infos: Vec<TensorInfo> = moments.keys().filter_map(|n| moments.info(n)).collect();
        infos.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        names = infos.iter().map(|i| i.name.clone()).collect();
        let path = dst.join(format!("{what}.safetensors"));
        write_state_dict(&path, &moments)?;
        files.push(path);
    }
    if let Some(o) = state.as_object_mut() {
        o.insert("parameters".into(), serde_json::json!(names));
        if adapter.is_none() && !skipped.is_empty() {
            o.insert("skipped_steps".into(), serde_json::json!(hf_skipped));
        }
    }
    let path = dst.join(STATE_JSON);
    let text = serde_json::to_string_pretty(&state).map_err(|e| Error::Serialization(format!("{STATE_JSON}: {e}")))?;
    write_file_synced(&path, text.as_bytes())?;
    files.push(path);
    Ok(files)
}
