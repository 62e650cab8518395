//! `consolidate`: a sharded checkpoint (ours or the reference's) back to an HF directory, one tensor at a time,
//! with its adapters as PEFT directories.

use crate::checkpoint::atomic::Staging;
use crate::checkpoint::{copy_side_files, natural_cmp, KvReplicas, Report, ShardedCheckpoint, WriteOptions};
use crate::error::{Error, Result};
use crate::format::{hf_file_groups, write_hf_checkpoint};
use crate::plan::prefetch::with_prefetch;
use crate::plan::TensorPlan;
use crate::spec::compile::consolidation_plan;
use crate::tensor::TensorInfo;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Writes `state` (e.g. what [`to_original_weights`](crate::to_original_weights) returns) as an HF model
/// folder `dir` in one call: `model.safetensors` (or `model-0000K-of-0000N.safetensors` and an index above
/// `max_shard_size` bytes), each tensor in its own dtype, plus the non-weight files of `side_files_from`
/// (`config.json`, tokenizer, generation config, chat templates, ...; see
/// [`side_files`](crate::checkpoint::side_files)) byte for byte. Staged, then renamed: nothing is left at `dir` on
/// failure, and an existing `dir` is replaced only with `force`. Returns the files written, relative to `dir`.
///
/// ```
/// use neuron_spec::tensor::{HostTensor, StateDict};
/// # fn main() -> neuron_spec::Result<()> {
/// let tmp = std::env::temp_dir().join(format!("neuron-spec-doc-write-hf-{}", std::process::id()));
/// let (model, out) = (tmp.join("model"), tmp.join("out"));
/// std::fs::create_dir_all(&model).map_err(|e| neuron_spec::Error::io(&model, e))?;
/// std::fs::write(model.join("config.json"), b"{\"model_type\": \"llama\"}").map_err(|e| neuron_spec::Error::io(&model, e))?;
/// // e.g. `let state = neuron_spec::to_original_weights(&meta, &ranks)?;`
/// let mut state = StateDict::new();
/// state.insert("model.norm.weight".into(), HostTensor::from_f32(vec![4], &[1.0; 4])?);
/// let files = neuron_spec::write_hf_folder(&out, &state, Some(&model), None, false)?;
/// assert!(files.iter().any(|f| f.ends_with("config.json")));
/// let back = neuron_spec::format::HfCheckpoint::open(&out)?;
/// assert_eq!(neuron_spec::TensorSource::names(&back), vec!["model.norm.weight".to_string()]);
/// # std::fs::remove_dir_all(&tmp).ok();
/// # Ok(())
/// # }
/// ```
pub fn write_hf_folder(
    dir: &Path,
    state: &crate::tensor::StateDict,
    side_files_from: Option<&Path>,
    max_shard_size: Option<u64>,
    force: bool,
) -> Result<Vec<PathBuf>> {
    let staging = Staging::new(dir, force)?;
    let r = (|| {
        let infos: Vec<TensorInfo> = state
            .iter()
            .map(|(n, t)| TensorInfo { name: n.clone(), dtype: t.dtype(), shape: t.shape().to_vec() })
            .collect();
        let written = write_hf_checkpoint(staging.path(), &infos, max_shard_size, &mut |info| {
            let t =
                state.get(&info.name).ok_or_else(|| Error::Plan(format!("{}: not in the state dict", info.name)))?;
            Ok(vec![t.clone()])
        })?;
        let mut files: Vec<PathBuf> =
            written.iter().filter_map(|p| p.strip_prefix(staging.path()).ok().map(Path::to_path_buf)).collect();
        if let Some(src) = side_files_from {
            files.extend(copy_side_files(src, staging.path(), None)?);
        }
        Ok(files)
    })();
    let files = r.map_err(|e| staging.describe(e))?;
    staging.commit()?;
    Ok(files)
}

/// Which adapters [`consolidate_with_adapters`] writes, and which one it merges.
#[derive(Debug, Clone, Default)]
pub struct AdapterOptions {
    /// Write only these adapters (all when `None`; none when merging, unless listed).
    pub only: Option<Vec<String>>,
    /// Fold this adapter into the base weights (a plain HF checkpoint) instead of writing it.
    pub merge: Option<String>,
}

/// Consolidates the sharded checkpoint in `sharded_dir` into an HF directory `out_dir`, one tensor at a time,
/// with its adapters as PEFT directories (see [`consolidate_with_adapters`]).
pub fn consolidate(sharded_dir: &Path, out_dir: &Path, opts: &WriteOptions) -> Result<Report> {
    consolidate_with_adapters(sharded_dir, out_dir, opts, &AdapterOptions::default())
}

/// Consolidates the base weights into `out_dir` and writes each adapter as peft's `save_pretrained` does: the
/// `default` adapter beside the base weights (`out_dir/adapter_config.json`, `adapter_model.safetensors`), any
/// other in `out_dir/<name>/`. `adapters.merge` folds one adapter into the base weights instead.
pub fn consolidate_with_adapters(
    sharded_dir: &Path,
    out_dir: &Path,
    opts: &WriteOptions,
    adapters: &AdapterOptions,
) -> Result<Report> {
    consolidate_with_optimizer(sharded_dir, out_dir, opts, adapters, false)
}

/// [`consolidate_with_adapters`]; with `optimizer`, a trained checkpoint's AdamW state goes along in
/// `out_dir/optimizer/` with HF names ([`crate::checkpoint::optimizer::consolidate_optimizer`]). A checkpoint without optimizer state is then an error, and nothing is written.
pub fn consolidate_with_optimizer(
    sharded_dir: &Path,
    out_dir: &Path,
    opts: &WriteOptions,
    adapters: &AdapterOptions,
    optimizer: bool,
) -> Result<Report> {
    if optimizer && !crate::checkpoint::optimizer::has_optimizer_state(sharded_dir) {
        return Err(Error::Checkpoint(format!(
            "--optimizer: {} has no optimizer state ({}/{} missing; only `neuron-spec train` writes one)",
            sharded_dir.display(),
            crate::checkpoint::optimizer::OPTIMIZER_DIR,
            crate::checkpoint::optimizer::STATE_JSON
        )));
    }
    let ck = ShardedCheckpoint::open_unverified(sharded_dir)?;
    let (report, staging) = ck.while_verifying(|| consolidate_staged(&ck, sharded_dir, out_dir, opts, adapters))?;
    if optimizer {
        crate::checkpoint::optimizer::consolidate_optimizer(
            sharded_dir,
            &ck.metadata,
            staging.path(),
            opts.kv_replicas,
        )
        .map_err(|e| staging.describe(e))?;
    }
    staging.commit()?;
    Ok(report)
}

/// Everything [`consolidate_with_adapters`] writes, in a staging directory not yet committed.
fn consolidate_staged(
    ck: &ShardedCheckpoint,
    sharded_dir: &Path,
    out_dir: &Path,
    opts: &WriteOptions,
    adapters: &AdapterOptions,
) -> Result<(Report, Staging)> {
    let sources = ck.sources();
    let (forward, inverse) = consolidation_plan(&ck.metadata, &sources)?;
    if !opts.allow_unexpected {
        ck.check_all_described(&forward)?;
    }
    if opts.kv_replicas != KvReplicas::First {
        ck.check_stage_copies()?;
    }
    let all = crate::checkpoint::adapters::sharded_adapters(sharded_dir)?;
    let names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
    for n in adapters.only.iter().flatten().chain(adapters.merge.iter()) {
        if !names.contains(&n.as_str()) {
            return Err(Error::lora(
                n,
                format!("{} has no such adapter (it has: {})", sharded_dir.display(), names.join(", ")),
            ));
        }
    }
    let merged = match &adapters.merge {
        Some(m) => {
            let a = all.iter().find(|a| &a.name == m).ok_or_else(|| Error::lora(m, "no such adapter"))?;
            crate::lora::merge_deltas(&a.export(&ck.metadata, opts.kv_replicas)?)?
        }
        None => Default::default(),
    };
    let selected: Vec<&crate::checkpoint::adapters::ShardedAdapter> = all
        .iter()
        .filter(|a| match &adapters.only {
            Some(only) => only.contains(&a.name),
            None => adapters.merge.is_none(),
        })
        .filter(|a| adapters.merge.as_ref() != Some(&a.name))
        .collect();
    let exported: Vec<(String, crate::lora::ExportedAdapter)> = selected
        .iter()
        .map(|a| Ok((a.name.clone(), a.export(&ck.metadata, opts.kv_replicas)?)))
        .collect::<Result<_>>()?;
    let inverse: Vec<TensorPlan> = match &opts.only {
        Some(re) => {
            let kept: Vec<TensorPlan> = inverse.into_iter().filter(|t| re.is_match(&t.name)).collect();
            if kept.is_empty() {
                return Err(Error::Argument(format!(
                    "--only {}: no tensor of {} matches",
                    re.as_str(),
                    sharded_dir.display()
                )));
            }
            kept
        }
        None => inverse,
    };
    let cast_to = |d: crate::tensor::DType| match opts.dtype {
        Some(t) if d.is_float() => t,
        _ => d,
    };
    let staging = Staging::new(out_dir, opts.force)?;
    let mut infos: Vec<TensorInfo> =
        inverse.iter().map(|t| TensorInfo { dtype: cast_to(t.dtype), ..t.info() }).collect();
    infos.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    let by_name: BTreeMap<&str, &TensorPlan> = inverse.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut report = Report { tensors: infos.len(), ..Default::default() };
    let bar = &opts.progress;
    bar.start("consolidating", infos.iter().map(|i| i.nbytes() as u64).sum());
    let order = hf_file_groups(&infos, opts.max_shard_size)
        .into_iter()
        .flatten()
        .map(|i| by_name.get(i.name.as_str()).copied().ok_or_else(|| Error::Plan(format!("no plan for {}", i.name))))
        .collect::<Result<Vec<_>>>()?;
    // A tensor with a merged LoRA delta or a cast is assembled; every other one is written as pieces.
    let compute = |t: &TensorPlan| match (merged.get(&t.name), cast_to(t.dtype)) {
        (Some(delta), to) => {
            let out = crate::spec::compile::consolidate_tensor(t, &sources, opts.kv_replicas)?;
            Ok(vec![crate::lora::export::apply_delta(&t.name, &out, delta)?.cast(to)?])
        }
        (None, to) if to != t.dtype => {
            let out = crate::spec::compile::consolidate_tensor(t, &sources, opts.kv_replicas)?;
            Ok(vec![out.cast(to)?])
        }
        (None, _) => crate::spec::compile::consolidate_pieces(t, &sources, opts.kv_replicas),
    };
    let files = with_prefetch(&order, &compute, |next| {
        write_hf_checkpoint(staging.path(), &infos, opts.max_shard_size, &mut |info| {
            let out = next(info)?;
            bar.inc(out.iter().map(|p| p.bytes().len() as u64).sum());
            Ok(out)
        })
    })
    .map_err(|e| staging.describe(e))?;
    bar.finish();
    if let Some(missing) = merged.keys().find(|k| opts.only.is_none() && !by_name.contains_key(k.as_str())) {
        return Err(Error::lora(
            adapters.merge.as_deref().unwrap_or_default(),
            format!("cannot merge: the base checkpoint has no weight {missing}"),
        ));
    }
    report.bytes_written = infos.iter().map(|i| i.nbytes() as u64).sum();
    report.files = files.iter().filter_map(|f| f.file_name()).map(|n| out_dir.join(n)).collect();
    // Every adapter in its own folder, so that transformers loads OUT as the base model; its
    // `base_model_name_or_path` is OUT's absolute path (peft resolves a relative one against the working
    // directory, not the adapter's folder).
    let base_path = std::path::absolute(out_dir).map_err(|e| Error::io(out_dir, e))?;
    for (name, a) in &exported {
        let (dir, shown) = (staging.path().join(name), out_dir.join(name));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut a = a.clone();
        a.config.base_model_name_or_path = Some(base_path.to_string_lossy().into_owned());
        crate::lora::export::write_adapter_dir(&dir, &a)?;
        // The adapter folder's non-weight files (peft's README.md model card, ...) come back beside it.
        let src = sharded_dir.join(crate::checkpoint::adapters::adapter_dir_name(name));
        if src.is_dir() {
            copy_side_files(&src, &dir, None).map_err(|e| staging.describe(e))?;
        }
        report.adapter_files.push(shown.join(crate::lora::ADAPTER_WEIGHTS));
        report.adapter_tensors += a.tensors.len();
        report.adapter_bytes += a.tensors.iter().map(|(_, t)| t.bytes().len() as u64).sum::<u64>();
    }
    let edit = |bytes: &[u8]| -> Result<Vec<u8>> { set_config_dtype(bytes, opts.dtype) };
    report.side_files = copy_side_files(sharded_dir, staging.path(), Some(&edit)).map_err(|e| staging.describe(e))?;
    Ok((report, staging))
}

/// `config.json` with its `dtype` / `torch_dtype` (transformers 4.56+ writes `dtype`, older versions
/// `torch_dtype`) set to `dtype`'s torch name, the rest of the text kept byte for byte; unchanged without one.
fn set_config_dtype(bytes: &[u8], dtype: Option<crate::tensor::DType>) -> Result<Vec<u8>> {
    let Some(d) = dtype else { return Ok(bytes.to_vec()) };
    let name = match d {
        crate::tensor::DType::BF16 => "bfloat16",
        crate::tensor::DType::F16 => "float16",
        crate::tensor::DType::F32 => "float32",
        crate::tensor::DType::F64 => "float64",
        other => return Err(Error::Argument(format!("--dtype {other}: only floating-point dtypes"))),
    };
    let bad = |reason: String| Error::Json { path: PathBuf::from("config.json"), reason };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
    let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let re = regex::Regex::new(r#"("(?:torch_)?dtype"\s*:\s*)"[^"]*""#).map_err(|e| bad(e.to_string()))?;
    let replaced = re.replace_all(text, |c: &regex::Captures| format!("{}\"{name}\"", &c[1]));
    if replaced != text || re.is_match(text) {
        return Ok(replaced.into_owned().into_bytes());
    }
    if let Some(obj) = v.as_object_mut() {
        obj.insert("dtype".into(), serde_json::Value::String(name.into()));
    }
    let mut out = serde_json::to_string_pretty(&v).map_err(|e| bad(e.to_string()))?;
    out.push('\n');
    Ok(out.into_bytes())
}
