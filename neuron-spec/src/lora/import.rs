//! HF PEFT adapter → full-rank factors of the TP model's modules (see the [module docs](super)).

use super::config::{LoraConfig, ADAPTER_WEIGHTS, LAYOUT_KEY};
use super::names::split_peft_key;
use super::peft::{adapt_peft_config_for_model, lora_group, plain_modules};
use super::tp_metadata::adapter_metadata_for_tp;
use super::{LoraGroup, LoraImportOptions, LoraLayout, LoraMember, LoraMode, LoraModule};
use crate::error::{Error, Result};
use crate::format::SafetensorsFile;
use crate::spec::metadata::CheckpointMetadata;
use crate::spec::{FuseAxis, Spec};
use crate::tensor::DType;
use crate::tensor::{HostTensor, StateDict};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};

/// An HF PEFT adapter directory: its config and its memory-mapped weights.
pub struct PeftAdapter {
    /// The directory.
    pub dir: PathBuf,
    /// `adapter_config.json`.
    pub config: LoraConfig,
    /// `adapter_model.safetensors`.
    pub file: SafetensorsFile,
}

impl PeftAdapter {
    /// Opens `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = LoraConfig::read(&dir.join(super::ADAPTER_CONFIG))?;
        let file = SafetensorsFile::open(&dir.join(ADAPTER_WEIGHTS))?;
        Ok(Self { dir: dir.to_path_buf(), config, file })
    }
}

/// An adapter imported for the TP model: full-rank factors (HF orientation, see the module docs), the
/// adapted config and the layout of the rank-local factors.
#[derive(Debug, Clone)]
pub struct ImportedAdapter {
    /// The adapter name (`default`, ...).
    pub name: String,
    /// The config in the TP model's terms (fused target modules), with our [`LoraLayout`] section.
    pub config: LoraConfig,
    /// Per TP module: rank, scaling, fused members.
    pub layout: LoraLayout,
    /// The rank-local LoRA parameters (names without the adapter) with TP attributes, and the LoRA specs.
    pub metadata: CheckpointMetadata,
    /// The full-rank factors the rank-local ones are planned from.
    pub tensors: StateDict,
    /// Things the user should know, said once per import (mean mode's loss).
    pub warnings: Vec<String>,
    /// The folder it was read from: its non-weight files (peft's `README.md` model card, ...) travel with the
    /// adapter into every checkpoint and folder written from it.
    pub source_dir: Option<std::path::PathBuf>,
}

/// One HF module's factors in the adapter file.
struct Factors {
    a: HostTensor,
    b: HostTensor,
    r: usize,
    scaling: f64,
    alpha: f64,
}

fn err(adapter: &Path, reason: impl Into<String>) -> Error {
    Error::lora(adapter.display().to_string(), reason)
}

/// Reads every module's factors, checking shapes, dtypes and ranks against the config.
fn read_factors(adapter: &PeftAdapter) -> Result<IndexMap<String, Factors>> {
    let p = &adapter.dir;
    let c = &adapter.config;
    if c.extra.get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        return Err(err(p, "DoRA adapters (use_dora) are not supported"));
    }
    if c.fan_in_fan_out {
        return Err(err(p, "fan_in_fan_out (Conv1D base layers) is not supported"));
    }
    if c.bias != "none" {
        return Err(err(p, format!("bias {:?} trains base biases, which is not supported (only \"none\")", c.bias)));
    }
    let mut pairs: IndexMap<String, (Option<HostTensor>, Option<HostTensor>)> = IndexMap::new();
    for key in adapter.file.names() {
        let Some((module, factor, param)) = split_peft_key(key) else {
            return Err(err(
                p,
                format!("tensor {key} is not a LoRA factor (modules_to_save and trainable tokens are not supported)"),
            ));
        };
        if param != "weight" {
            return Err(err(p, format!("tensor {key}: LoRA biases (lora_bias) are not supported")));
        }
        let t = adapter.file.tensor(key)?;
        let e = pairs.entry(module).or_default();
        match factor.as_str() {
            "lora_A" => e.0 = Some(t),
            "lora_B" => e.1 = Some(t),
            _ => return Err(err(p, format!("tensor {key}: embedding LoRA is not supported"))),
        }
    }
    let mut out = IndexMap::new();
    for (module, (a, b)) in pairs {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(err(p, format!("module {module} has only one of lora_A and lora_B")));
        };
        let (ash, bsh) = (a.shape().to_vec(), b.shape().to_vec());
        if ash.len() != 2 || bsh.len() != 2 || ash[0] != bsh[1] || ash[0] == 0 {
            return Err(Error::ShapeMismatch {
                tensor: format!("{module}.lora_B.weight"),
                expected: vec![bsh.first().copied().unwrap_or(0), ash.first().copied().unwrap_or(0)],
                found: bsh,
                file: Some(adapter.file.path().to_path_buf()),
            });
        }
        if !a.dtype().is_float() || a.dtype() != b.dtype() {
            return Err(Error::DtypeMismatch {
                tensor: format!("{module}.lora_B.weight"),
                expected: a.dtype().to_string(),
                found: b.dtype().to_string(),
                file: Some(adapter.file.path().to_path_buf()),
            });
        }
        let r = ash[0];
        let (cfg_r, alpha) = c.rank_and_alpha(&module)?;
        if cfg_r != r {
            return Err(err(
                p,
                format!("module {module}: the config gives rank {cfg_r} (r / rank_pattern), its lora_A has rank {r}"),
            ));
        }
        out.insert(module, Factors { scaling: c.scaling(r, alpha), a, b, r, alpha });
    }
    Ok(out)
}

/// A zero `[rows, cols]` tensor with each `(src, row, col)` copied in at that offset.
pub(crate) fn place(
    dtype: DType,
    rows: usize,
    cols: usize,
    blocks: &[(&HostTensor, usize, usize)],
) -> Result<HostTensor> {
    let es = dtype.size();
    let mut out = vec![0u8; rows * cols * es];
    for (t, r0, c0) in blocks {
        let [sr, sc] = <[usize; 2]>::try_from(t.shape())
            .map_err(|_| Error::Tensor(format!("LoRA factor of shape {:?} is not a matrix", t.shape())))?;
        if t.dtype() != dtype || r0 + sr > rows || c0 + sc > cols {
            return Err(Error::Tensor(format!(
                "LoRA block {:?} {} at ({r0}, {c0}) does not fit [{rows}, {cols}] {dtype}",
                t.shape(),
                t.dtype()
            )));
        }
        let b = t.bytes();
        for i in 0..sr {
            let d = ((r0 + i) * cols + c0) * es;
            out[d..d + sc * es].copy_from_slice(&b[i * sc * es..(i + 1) * sc * es]);
        }
    }
    HostTensor::new(dtype, vec![rows, cols], out)
}

/// The elementwise mean, computed in f32 (sum in order, then divide), in the inputs' dtype.
pub(crate) fn mean(ts: &[&HostTensor]) -> Result<HostTensor> {
    let first = ts.first().ok_or_else(|| Error::Tensor("mean of no tensors".into()))?;
    let mut acc = first.to_f32_vec();
    for t in &ts[1..] {
        if t.shape() != first.shape() {
            return Err(Error::ShapeMismatch {
                tensor: "LoRA A (mean mode)".into(),
                expected: first.shape().to_vec(),
                found: t.shape().to_vec(),
                file: None,
            });
        }
        for (a, b) in acc.iter_mut().zip(t.to_f32_vec()) {
            *a += b;
        }
    }
    let n = ts.len() as f32;
    let v: Vec<f32> = acc.into_iter().map(|x| x / n).collect();
    HostTensor::from_f32_as(first.dtype(), first.shape().to_vec(), &v)
}

/// The member sizes of a spec's group along its fuse axis (outputs of a column group, inputs of a row group).
fn member_dims(spec: &Spec) -> Result<Vec<usize>> {
    Ok(spec.lora_group().1.into_iter().map(|(_, d)| d).collect())
}

/// Builds a fused group's full-rank factors into `out`; returns its layout entry.
#[allow(clippy::too_many_arguments)]
fn import_group(
    adapter: &Path,
    module: &str,
    spec: &Spec,
    factors: &IndexMap<String, Factors>,
    mode: LoraMode,
    out: &mut StateDict,
    mean_groups: &mut Vec<(String, f32)>,
) -> Result<LoraModule> {
    let (fused, members, axis) = lora_group(spec);
    let dims = member_dims(spec)?;
    let present: Vec<Option<&Factors>> = members.iter().map(|m| factors.get(&format!("{module}.{m}"))).collect();
    let first = present.iter().flatten().next().ok_or_else(|| err(adapter, format!("{module}: empty group")))?;
    let dtype = first.a.dtype();
    // Every member must be scaled alike: the fused layer has one scaling.
    for (m, f) in members.iter().zip(&present) {
        if let Some(f) = f {
            if (f.scaling - first.scaling).abs() > 1e-12 * first.scaling.abs() || f.a.dtype() != dtype {
                return Err(err(
                    adapter,
                    format!(
                        "{module}: members of the fused {fused} need one scaling and dtype; {m} has {} ({}), another {} ({})",
                        f.scaling,
                        f.a.dtype(),
                        first.scaling,
                        dtype
                    ),
                ));
            }
        }
    }
    // Member i's sizes: a column group shares A's inputs (B rows are the member's outputs); a row group shares
    // B's outputs (A columns are the member's inputs).
    type Size = fn(&Factors) -> usize;
    let (shared_of, own_of): (Size, Size) = match axis {
        FuseAxis::Column => (|f| f.a.shape()[1], |f| f.b.shape()[0]),
        FuseAxis::Row => (|f| f.b.shape()[0], |f| f.a.shape()[1]),
    };
    let shared = shared_of(first);
    for ((m, f), d) in members.iter().zip(&present).zip(&dims) {
        if let Some(f) = f {
            if shared_of(f) != shared || own_of(f) != *d {
                return Err(err(
                    adapter,
                    format!(
                        "{module}.{m}: lora_A {:?} / lora_B {:?} do not fit the fused {fused} (member size {d}, shared size {shared})",
                        f.a.shape(),
                        f.b.shape()
                    ),
                ));
            }
        }
    }
    let mut layout_members = Vec::new();
    let rank;
    match mode {
        LoraMode::Exact => {
            let mut off = 0;
            for ((m, f), d) in members.iter().zip(&present).zip(&dims) {
                let r = f.map_or(0, |f| f.r);
                layout_members.push(LoraMember {
                    name: m.to_string(),
                    dim: *d,
                    offset: off,
                    rank: r,
                    lora_alpha: f.map_or(0.0, |f| f.alpha),
                    present: f.is_some(),
                });
                off += r;
            }
            rank = off;
        }
        LoraMode::Mean => {
            if axis == FuseAxis::Row {
                return Err(err(
                    adapter,
                    format!("{module}.{fused}: mean mode is not defined for a row-fused group (use exact)"),
                ));
            }
            rank = first.r;
            for ((m, f), d) in members.iter().zip(&present).zip(&dims) {
                if let Some(f) = f {
                    if f.r != rank {
                        return Err(err(adapter, format!("{module}: mean mode needs equal ranks, {m} has {}", f.r)));
                    }
                }
                layout_members.push(LoraMember {
                    name: m.to_string(),
                    dim: *d,
                    offset: 0,
                    rank: if f.is_some() { rank } else { 0 },
                    lora_alpha: f.map_or(0.0, |f| f.alpha),
                    present: f.is_some(),
                });
            }
        }
    }
    match axis {
        FuseAxis::Column => {
            let a = match mode {
                LoraMode::Exact => {
                    let blocks: Vec<(&HostTensor, usize, usize)> = present
                        .iter()
                        .zip(&layout_members)
                        .filter_map(|(f, lm)| f.map(|f| (&f.a, lm.offset, 0)))
                        .collect();
                    place(dtype, rank, shared, &blocks)?
                }
                LoraMode::Mean => {
                    let a_list: Vec<&HostTensor> = present.iter().flatten().map(|f| &f.a).collect();
                    let m = mean(&a_list)?;
                    let mv = m.to_f32_vec();
                    let dev = a_list
                        .iter()
                        .flat_map(|a| a.to_f32_vec().into_iter().zip(mv.iter()).map(|(x, y)| (x - y).abs()))
                        .fold(0f32, f32::max);
                    mean_groups.push((format!("{module}.{fused}"), dev));
                    m
                }
            };
            out.insert(format!("{module}.{fused}.lora_A.weight"), a);
            for (f, lm) in present.iter().zip(&layout_members) {
                let blocks: Vec<(&HostTensor, usize, usize)> = f.iter().map(|f| (&f.b, 0, lm.offset)).collect();
                out.insert(format!("{module}.{}.lora_B.weight", lm.name), place(dtype, lm.dim, rank, &blocks)?);
            }
        }
        FuseAxis::Row => {
            let blocks: Vec<(&HostTensor, usize, usize)> =
                present.iter().zip(&layout_members).filter_map(|(f, lm)| f.map(|f| (&f.b, 0, lm.offset))).collect();
            out.insert(format!("{module}.{fused}.lora_B.weight"), place(dtype, shared, rank, &blocks)?);
            for (f, lm) in present.iter().zip(&layout_members) {
                let blocks: Vec<(&HostTensor, usize, usize)> = f.iter().map(|f| (&f.a, lm.offset, 0)).collect();
                out.insert(format!("{module}.{}.lora_A.weight", lm.name), place(dtype, rank, lm.dim, &blocks)?);
            }
        }
    }
    Ok(LoraModule {
        rank,
        scaling: first.scaling,
        group: Some(LoraGroup { fuse_axis: axis.axis(), members: layout_members }),
    })
}

/// Imports `adapter` for the TP layout `base` (its specs and parameters). Fused groups follow `opts.mode`;
/// a group the adapter targets in part is refused unless `opts.allow_partial`.
pub fn import_adapter(
    base: &CheckpointMetadata,
    adapter: &PeftAdapter,
    name: &str,
    opts: LoraImportOptions,
) -> Result<ImportedAdapter> {
    super::check_adapter_name(name)?;
    let p = adapter.dir.as_path();
    // The config translation applies (and reports) the all-or-none rule first, in the config's own terms.
    let mut config = adapt_peft_config_for_model(base, &adapter.config, &opts)?;
    let factors = read_factors(adapter)?;
    let mut used: std::collections::HashSet<String> = Default::default();
    let mut tensors = StateDict::new();
    let mut layout = LoraLayout {
        mode: opts.mode,
        modules: IndexMap::new(),
        original_target_modules: Some(adapter.config.target_modules.clone()),
    };
    let mut mean_groups = Vec::new();
    for (module, spec) in base.specs() {
        let (fused, members, _) = lora_group(spec);
        let paths: Vec<String> = members.iter().map(|m| format!("{module}.{m}")).collect();
        let present: Vec<bool> = paths.iter().map(|x| factors.contains_key(x)).collect();
        if present.iter().any(|x| *x) {
            if !opts.allow_partial && !present.iter().all(|x| *x) {
                let pick = |want: bool| -> Vec<String> {
                    members.iter().zip(&present).filter(|(_, t)| **t == want).map(|(m, _)| m.to_string()).collect()
                };
                return Err(Error::PartialLoraGroup {
                    module: module.to_string(),
                    spec: spec.class_name().to_string(),
                    present: pick(true),
                    missing: pick(false),
                });
            }
            let entry = import_group(p, module, spec, &factors, opts.mode, &mut tensors, &mut mean_groups)?;
            layout.modules.insert(format!("{module}.{fused}"), entry);
            used.extend(paths);
        }
        if let Spec::GqaQkv(g) = spec {
            let o = format!("{module}.{}", g.output_projection_name);
            if let Some(f) = factors.get(&o) {
                tensors.insert(format!("{o}.lora_A.weight"), f.a.clone());
                tensors.insert(format!("{o}.lora_B.weight"), f.b.clone());
                layout.modules.insert(o.clone(), LoraModule { rank: f.r, scaling: f.scaling, group: None });
                used.insert(o);
            }
        }
    }
    let plain: std::collections::HashSet<String> = plain_modules(base).into_iter().collect();
    for (module, f) in &factors {
        if used.contains(module) {
            continue;
        }
        if !plain.contains(module) {
            return Err(err(
                p,
                format!("it has LoRA factors for {module}, which the TP layout has neither as a linear nor in a fused group"),
            ));
        }
        tensors.insert(format!("{module}.lora_A.weight"), f.a.clone());
        tensors.insert(format!("{module}.lora_B.weight"), f.b.clone());
        layout.modules.insert(module.clone(), LoraModule { rank: f.r, scaling: f.scaling, group: None });
    }
    let mut warnings = Vec::new();
    if !mean_groups.is_empty() {
        let worst = mean_groups.iter().map(|(_, d)| *d).fold(0f32, f32::max);
        warnings.push(format!(
            "adapter {name}: mean mode averaged the LoRA A matrices of {} fused groups (largest |A_member - mean| \
             {worst:.3e}); the TP model no longer computes what peft computes (use --lora-mode exact for a lossless import)",
            mean_groups.len()
        ));
    }
    let layout_value =
        serde_json::to_value(&layout).map_err(|e| Error::Serialization(format!("LoRA layout of {name}: {e}")))?;
    config.extra.insert(LAYOUT_KEY.to_string(), layout_value);
    let metadata = adapter_metadata_for_tp(base, &layout)?;
    let source_dir = Some(adapter.dir.clone());
    Ok(ImportedAdapter { name: name.to_string(), config, layout, metadata, tensors, warnings, source_dir })
}
