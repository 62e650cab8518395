//! optimum-neuron's own adapter checkpoints, read as a sharded adapter: what 0.4.5's
//! `NeuronPeftModel.save_pretrained` writes (neuronx-distributed's `save_checkpoint`, tag `adapter_shards`):
//!
//! ```text
//! adapter_<name>/adapter_config.json                        the PEFT config in the original model's modules
//! adapter_<name>/adapter_shards/mp_metadata_pp_rank_0.json  create_parameter_metadata of the PEFT model
//! adapter_<name>/adapter_shards/model/dp_rank_00_tp_rank_<TT>_pp_rank_00.pt   plain or xser
//! ```
//!
//! Each rank file is peft's `get_peft_model_state_dict`: `base_model.model.<module>.lora_A.weight`, ... (no
//! adapter name). The reference fuses a group's LoRA A by averaging the members' A (our [`LoraMode::Mean`]), so
//! the adapter is read in mean mode: exporting it gives every member the shared (mean) A, which is what the
//! reference's `to_original_weights` returns.

use crate::checkpoint::rank::{RankSource, StageFile};
use crate::checkpoint::stage::{rank_files_present, stage_rank_file_name, RankFormat};
use crate::checkpoint::ShardedCheckpoint;
use crate::error::{Error, Result};
use crate::format::pt::PtRankFile;
use crate::lora::adapt_peft_config_for_model;
use crate::lora::adapter_metadata_for_tp;
use crate::lora::{insert_adapter_name, is_lora_parameter, strip_base_layer};
use crate::lora::{LoraConfig, ADAPTER_CONFIG, LAYOUT_KEY};
use crate::lora::{LoraGroup, LoraImportOptions, LoraLayout, LoraMember, LoraMode, LoraModule};
use crate::spec::metadata::CheckpointMetadata;
use crate::spec::{FuseAxis, ModelWeightTransformationSpecs};
use crate::tensor::TensorSource;
use indexmap::IndexMap;
use std::path::Path;

/// The folder optimum-neuron writes an adapter's rank files and metadata to, inside `adapter_<name>/`.
pub const REFERENCE_ADAPTER_SHARDS: &str = "adapter_shards";

/// peft's prefix on the names of a PEFT model's parameters.
const PREFIX: &str = "base_model.model.";

fn err(dir: &Path, reason: impl Into<String>) -> Error {
    Error::lora(dir.display().to_string(), reason)
}

/// The base model's layout from the PEFT model's metadata: names without peft's prefix and `base_layer.`, the
/// LoRA parameters left out, the specs without their `peft_type`.
fn base_layout(meta: &CheckpointMetadata, path: &Path) -> Result<CheckpointMetadata> {
    let strip = |n: &str| {
        n.strip_prefix(PREFIX).map(str::to_string).ok_or_else(|| Error::Metadata {
            path: path.to_path_buf(),
            reason: format!("{n} does not start with {PREFIX} (not a PEFT model's metadata)"),
        })
    };
    let mut parameters = IndexMap::new();
    for (n, p) in &meta.parameters {
        if !is_lora_parameter(n) {
            parameters.insert(strip_base_layer(&strip(n)?), p.clone());
        }
    }
    let mut specs = Vec::new();
    for g in &meta.model_weight_transformation_specs {
        let mut kept = g.specs.clone();
        kept.iter_mut().for_each(|s| s.set_peft_type(None));
        specs.push(ModelWeightTransformationSpecs {
            module_fully_qualified_name: strip(&g.module_fully_qualified_name)?,
            specs: kept,
        });
    }
    Ok(CheckpointMetadata {
        format_version: None,
        tp_size: meta.tp_size,
        parameters,
        model_weight_transformation_specs: specs,
        rank_files: vec![],
    })
}

/// The layout of the adapter's TP modules (`modules`, each with its LoRA A's rank) in mean mode, the ranks and
/// alphas from the original config.
fn mean_layout(
    dir: &Path,
    base: &CheckpointMetadata,
    config: &LoraConfig,
    modules: &IndexMap<String, usize>,
) -> Result<LoraLayout> {
    let targeted = |path: &str, rank: usize| -> Result<(usize, f64)> {
        if !config.target_modules.matches(path)? {
            return Err(err(
                dir,
                format!("the rank files have LoRA factors for {path}, which {ADAPTER_CONFIG} does not target"),
            ));
        }
        let (r, alpha) = config.rank_and_alpha(path)?;
        if r != rank {
            return Err(err(
                dir,
                format!("{path}: {ADAPTER_CONFIG} gives rank {r}, the rank files' lora_A has rank {rank}"),
            ));
        }
        Ok((r, alpha))
    };
    let mut out = IndexMap::new();
    for (module, &rank) in modules {
        let group = base.specs().find_map(|(m, spec)| {
            let (fused, members, axis) = spec.lora_group();
            (format!("{m}.{fused}") == *module).then(|| (m.to_string(), members, axis))
        });
        let entry = match group {
            Some((m, members, axis)) => {
                if axis == FuseAxis::Row {
                    return Err(err(
                        dir,
                        format!("{module}: a row-fused group's LoRA (the reference's mean mode does not define it)"),
                    ));
                }
                let mut scaling = None;
                let mut list = Vec::new();
                for (name, dim) in members {
                    let (r, alpha) = targeted(&format!("{m}.{name}"), rank)?;
                    let s = config.scaling(r, alpha);
                    if scaling.is_some_and(|x: f64| (x - s).abs() > 1e-12 * x.abs()) {
                        return Err(err(dir, format!("{module}: its members need one scaling, {name} has {s}")));
                    }
                    scaling = Some(s);
                    list.push(LoraMember { name, dim, offset: 0, rank, lora_alpha: alpha, present: true });
                }
                LoraModule {
                    rank,
                    scaling: scaling.ok_or_else(|| err(dir, format!("{module}: a fused group without members")))?,
                    group: Some(LoraGroup { fuse_axis: axis.axis(), members: list }),
                }
            }
            None => {
                let (r, alpha) = targeted(module, rank)?;
                LoraModule { rank, scaling: config.scaling(r, alpha), group: None }
            }
        };
        out.insert(module.clone(), entry);
    }
    Ok(LoraLayout { mode: LoraMode::Mean, modules: out, original_target_modules: Some(config.target_modules.clone()) })
}

/// Opens optimum-neuron's adapter `name` in `dir` (`adapter_<name>/`): its config in the TP model's terms
/// (with our layout section, mean mode) and its rank files as a sharded checkpoint in our names.
pub fn open_reference_adapter(dir: &Path, name: &str) -> Result<(LoraConfig, ShardedCheckpoint)> {
    let sdir = dir.join(REFERENCE_ADAPTER_SHARDS);
    let mut stages = Vec::new();
    for e in std::fs::read_dir(&sdir).map_err(|e| Error::io(&sdir, e))? {
        let n = e.map_err(|e| Error::io(&sdir, e))?.file_name().to_string_lossy().to_string();
        if n.starts_with("mp_metadata_pp_rank_") {
            stages.push(n);
        }
    }
    let mpath = sdir.join("mp_metadata_pp_rank_0.json");
    if stages.len() > 1 || !mpath.is_file() {
        return Err(err(
            &sdir,
            format!(
                "expected one stage's metadata, mp_metadata_pp_rank_0.json; found {:?} (pipeline-parallel adapter shards are not read yet)",
                stages
            ),
        ));
    }
    let reference = CheckpointMetadata::read(&mpath)?;
    let tp = reference.tp_size(&mpath)?;
    let base = base_layout(&reference, &mpath)?;
    let original = LoraConfig::read(&dir.join(ADAPTER_CONFIG))?;

    let rdir = sdir.join("model");
    let (present, format) = rank_files_present(&rdir)?;
    let expected: Vec<String> = (0..tp).map(|r| stage_rank_file_name(r, 0, "pt")).collect();
    let wanted: std::collections::BTreeSet<String> = expected.iter().cloned().collect();
    if format != RankFormat::Pt || present != wanted {
        return Err(Error::RankFiles {
            dir: rdir,
            reason: format!("the metadata says tp {tp}: expected exactly {}, found {:?}", expected.join(", "), present),
        });
    }
    let files = expected
        .iter()
        .map(|n| {
            let p = rdir.join(n);
            PtRankFile::open(&p)?.renamed(|k| {
                k.strip_prefix(PREFIX).map(str::to_string).ok_or_else(|| {
                    err(&p, format!("tensor {k} does not start with {PREFIX} (not peft's get_peft_model_state_dict)"))
                })
            })
        })
        .collect::<Result<Vec<_>>>()?;

    // The TP modules with LoRA and their rank, from rank 0's lora_A (replicated or split along its inputs).
    let mut modules = IndexMap::new();
    for n in files[0].names() {
        if let Some(m) = n.strip_suffix(".lora_A.weight") {
            let shape = files[0].info(&n).map(|i| i.shape).unwrap_or_default();
            let rank = match shape.as_slice() {
                [r, _] => *r,
                s => return Err(err(files[0].path(), format!("{n} has shape {s:?}, expected [rank, inputs]"))),
            };
            let known = base.parameters.contains_key(&format!("{m}.weight"))
                || base.specs().any(|(s, spec)| format!("{s}.{}", spec.lora_group().0) == m);
            if !known {
                return Err(err(
                    files[0].path(),
                    format!("tensor {PREFIX}{n}: the PEFT model's metadata has no module {PREFIX}{m}"),
                ));
            }
            modules.insert(m.to_string(), rank);
        }
    }
    let layout = mean_layout(dir, &base, &original, &modules)?;
    let opts = LoraImportOptions { mode: LoraMode::Mean, allow_partial: false };
    let mut config = adapt_peft_config_for_model(&base, &original, &opts)?;
    let value =
        serde_json::to_value(&layout).map_err(|e| Error::Serialization(format!("LoRA layout of {name}: {e}")))?;
    config.extra.insert(LAYOUT_KEY.to_string(), value);
    let metadata = adapter_metadata_for_tp(&base, &layout)?;

    // Our parameters are the reference's LoRA parameters, split alike, and the rank files hold exactly them.
    for (n, p) in &metadata.parameters {
        let theirs = insert_adapter_name(&format!("{PREFIX}{n}"), name);
        let q = reference.parameters.get(&theirs).ok_or_else(|| Error::Metadata {
            path: mpath.clone(),
            reason: format!("no parameter {theirs} (the LoRA parameter of {n})"),
        })?;
        let dim = |x: &crate::spec::metadata::ParameterMetadata| x.tensor_model_parallel.then_some(x.partition_dim);
        if dim(p) != dim(q) {
            return Err(Error::Metadata {
                path: mpath.clone(),
                reason: format!("{theirs} is split along {:?}, its spec gives {:?}", dim(q), dim(p)),
            });
        }
    }
    for f in &files {
        let names = f.names();
        let missing: Vec<String> = metadata.parameters.keys().filter(|k| !names.contains(k)).cloned().collect();
        let unexpected: Vec<String> =
            names.iter().filter(|k| !metadata.parameters.contains_key(*k)).map(|k| format!("{PREFIX}{k}")).collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            let missing = missing.into_iter().map(|k| format!("{PREFIX}{k}")).collect();
            let candidates: Vec<&str> = vec![];
            return Err(Error::key_mismatch(f.path().display().to_string(), missing, unexpected, &candidates));
        }
    }
    let ranks = files.into_iter().map(|f| RankSource::new(vec![StageFile::Pt(f)])).collect();
    let checkpoint = ShardedCheckpoint {
        dir: dir.to_path_buf(),
        metadata: metadata.clone(),
        stages: vec![metadata],
        tp,
        ranks,
        format: RankFormat::Pt,
    };
    Ok((config, checkpoint))
}
