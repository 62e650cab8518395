//! Full-rank factors (consolidated from the ranks) → an HF PEFT adapter that peft loads unchanged, and merging
//! an adapter into the base weights.

use super::config::{LoraConfig, TargetModules, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use super::names::peft_key;
use super::peft::{lora_group, plain_modules, to_original_peft_config_for_model};
use super::LoraModule;
use crate::error::{Error, Result};
use crate::format::{write_file_synced, write_state_dict};
use crate::spec::metadata::CheckpointMetadata;
use crate::spec::Spec;
use crate::tensor::TensorSource;
use crate::tensor::{HostTensor, StateDict};
use indexmap::IndexMap;
use std::path::Path;

/// An adapter in peft's terms, ready to write.
#[derive(Debug, Clone)]
pub struct ExportedAdapter {
    /// `adapter_config.json`: original target modules, `rank_pattern` / `alpha_pattern` where a rank changed.
    pub config: LoraConfig,
    /// `adapter_model.safetensors`, peft's key names.
    pub tensors: StateDict,
    /// Per HF module: its rank and scaling.
    pub modules: IndexMap<String, (usize, f64)>,
}

fn err(reason: impl Into<String>) -> Error {
    Error::lora("export", reason)
}

/// Whether every element of `t` outside indices `[off, off + len)` along `dim` (0 or 1 of a matrix) is zero.
fn zero_outside(t: &HostTensor, dim: usize, off: usize, len: usize) -> Result<bool> {
    let [rows, cols] = <[usize; 2]>::try_from(t.shape())
        .map_err(|_| err(format!("LoRA factor of shape {:?} is not a matrix", t.shape())))?;
    let v = t.to_f32_vec();
    Ok(v.iter().enumerate().all(|(i, x)| {
        let idx = if dim == 0 { i / cols } else { i % cols };
        let _ = rows;
        (off..off + len).contains(&idx) || *x == 0.0
    }))
}

/// Indices `[off, off + len)` along `dim` of a matrix, as a compact tensor.
fn slice(t: &HostTensor, dim: usize, off: usize, len: usize) -> Result<HostTensor> {
    let s = t.narrow(dim, off, len)?;
    // A view of a larger buffer would still be correct; copy it so the written bytes are exactly the slice.
    HostTensor::new(s.dtype(), s.shape().to_vec(), s.bytes().to_vec())
}

/// The adapter of `config` (adapted, with our layout section) in peft's terms, from its full-rank factors
/// `full` (the inverse plan's output). A fused member whose factors are still zero outside its own block is
/// written at its own rank (so an untrained exact import comes back byte for byte); otherwise at the fused rank
/// R with the shared factor duplicated, and `rank_pattern` / `alpha_pattern` give it the same scaling. A member
/// the import left absent and that is still zero is left out, as are its target modules.
pub fn export_adapter(
    base: &CheckpointMetadata,
    config: &LoraConfig,
    full: &dyn TensorSource,
) -> Result<ExportedAdapter> {
    let layout = config.layout()?.ok_or_else(|| {
        err(format!("the config has no {} section: it is not an adapter imported by neuron-spec", super::LAYOUT_KEY))
    })?;
    let mut tensors = StateDict::new();
    let mut modules: IndexMap<String, (usize, f64)> = IndexMap::new();
    let mut put = |path: &str, a: HostTensor, b: HostTensor, rank: usize, scaling: f64| {
        tensors.insert(peft_key(path, "lora_A"), a);
        tensors.insert(peft_key(path, "lora_B"), b);
        modules.insert(path.to_string(), (rank, scaling));
    };
    for (path, LoraModule { rank, scaling, group }) in &layout.modules {
        let Some(g) = group else {
            let a = full.tensor(&format!("{path}.lora_A.weight"))?;
            let b = full.tensor(&format!("{path}.lora_B.weight"))?;
            put(path, a, b, *rank, *scaling);
            continue;
        };
        let (module, fused) = path.rsplit_once('.').ok_or_else(|| err(format!("fused module path {path}")))?;
        // Column group: shared A, member B (blocks along B's columns). Row group: member A (blocks along A's
        // rows), shared B.
        let (shared_f, own_f, block_dim) =
            if g.fuse_axis == 0 { ("lora_A", "lora_B", 1) } else { ("lora_B", "lora_A", 0) };
        let shared = full.tensor(&format!("{module}.{fused}.{shared_f}.weight"))?;
        // The shared factor's rank dimension: rows of A, columns of B.
        let shared_dim = 1 - block_dim;
        for m in &g.members {
            let member = format!("{module}.{}", m.name);
            let own = full.tensor(&format!("{member}.{own_f}.weight"))?;
            let (own_r, shared_r) = (own.shape().get(block_dim), shared.shape().get(shared_dim));
            if own.shape().len() != 2 || shared.shape().len() != 2 || own_r != Some(rank) || shared_r != Some(rank) {
                return Err(Error::ShapeMismatch {
                    tensor: format!("{member}.{own_f}.weight"),
                    expected: vec![*rank],
                    found: own.shape().to_vec(),
                    file: None,
                });
            }
            if zero_outside(&own, block_dim, m.offset, m.rank)? {
                if m.rank == 0 {
                    continue;
                }
                let own_part = slice(&own, block_dim, m.offset, m.rank)?;
                let shared_part = slice(&shared, shared_dim, m.offset, m.rank)?;
                let (a, b) = if g.fuse_axis == 0 { (shared_part, own_part) } else { (own_part, shared_part) };
                put(&member, a, b, m.rank, *scaling);
            } else {
                let (a, b) = if g.fuse_axis == 0 { (shared.clone(), own) } else { (own, shared.clone()) };
                put(&member, a, b, *rank, *scaling);
            }
        }
    }
    let mut out = to_original_peft_config_for_model(base, config)?;
    if let Some(t) = layout.original_target_modules {
        let mut orig = out.clone();
        orig.target_modules = t;
        if names_exactly(base, &orig, &modules)? {
            out = orig;
        }
    }
    fix_target_modules(base, &mut out, &modules)?;
    fix_patterns(&mut out, &modules)?;
    Ok(ExportedAdapter { config: out, tensors, modules })
}

/// Every HF module that could carry LoRA in this layout.
fn hf_modules(base: &CheckpointMetadata) -> Vec<String> {
    let mut v = Vec::new();
    for (m, s) in base.specs() {
        let (_, members, _) = lora_group(s);
        v.extend(members.iter().map(|x| format!("{m}.{x}")));
        if let Spec::GqaQkv(g) = s {
            v.push(format!("{m}.{}", g.output_projection_name));
        }
    }
    v.extend(plain_modules(base));
    v
}

fn last(p: &str) -> &str {
    p.rsplit('.').next().unwrap_or(p)
}

/// Whether `config.target_modules` targets exactly `modules` among the layout's HF modules.
fn names_exactly(
    base: &CheckpointMetadata,
    config: &LoraConfig,
    modules: &IndexMap<String, (usize, f64)>,
) -> Result<bool> {
    for p in hf_modules(base) {
        let targeted = match &config.target_modules {
            // all-linear leaves out the output layer.
            TargetModules::AllLinear => p != "lm_head",
            t => t.matches(&p)?,
        };
        if targeted != modules.contains_key(&p) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Makes `target_modules` name exactly the exported modules: short names where a name is exported everywhere
/// it occurs, full paths otherwise. Left as it is when it already does.
fn fix_target_modules(
    base: &CheckpointMetadata,
    config: &mut LoraConfig,
    modules: &IndexMap<String, (usize, f64)>,
) -> Result<()> {
    if names_exactly(base, config, modules)? {
        return Ok(());
    }
    let all = hf_modules(base);
    let mut list: Vec<String> = Vec::new();
    for p in modules.keys() {
        let short = last(p);
        let everywhere = all.iter().filter(|q| last(q) == short).all(|q| modules.contains_key(q));
        let entry = if everywhere { short.to_string() } else { p.clone() };
        if !list.contains(&entry) {
            list.push(entry);
        }
    }
    config.target_modules = TargetModules::List(list);
    Ok(())
}

/// Adds `rank_pattern` / `alpha_pattern` entries (first, so they win) for modules whose exported rank or scaling
/// the config would not give, then checks every module resolves to its rank and scaling.
fn fix_patterns(config: &mut LoraConfig, modules: &IndexMap<String, (usize, f64)>) -> Result<()> {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-30);
    let mut ranks: IndexMap<String, usize> = IndexMap::new();
    let mut alphas: IndexMap<String, f64> = IndexMap::new();
    for (p, (rank, scaling)) in modules {
        let (r, alpha) = config.rank_and_alpha(p)?;
        if r != *rank {
            ranks.insert(p.clone(), *rank);
        }
        // The configured alpha is kept when it already gives this scaling at the exported rank.
        if !close(config.scaling(*rank, alpha), *scaling) {
            alphas.insert(p.clone(), config.alpha_for(*rank, *scaling));
        }
    }
    let compact = |entries: IndexMap<String, f64>| -> IndexMap<String, f64> {
        let mut out = IndexMap::new();
        for (p, v) in &entries {
            let short = last(p);
            let uniform =
                modules.keys().filter(|q| last(q) == short).all(|q| entries.get(q).is_some_and(|w| close(*w, *v)));
            let key = if uniform { short.to_string() } else { p.clone() };
            out.entry(key).or_insert(*v);
        }
        out
    };
    let ranks: IndexMap<String, usize> = compact(ranks.into_iter().map(|(k, v)| (k, v as f64)).collect())
        .into_iter()
        .map(|(k, v)| (k, v as usize))
        .collect();
    let alphas = compact(alphas);
    let mut rp = ranks;
    for (k, v) in config.rank_pattern.drain(..) {
        rp.entry(k).or_insert(v);
    }
    config.rank_pattern = rp;
    let mut ap = alphas;
    for (k, v) in config.alpha_pattern.drain(..) {
        ap.entry(k).or_insert(v);
    }
    config.alpha_pattern = ap;
    for (p, (rank, scaling)) in modules {
        let (r, alpha) = config.rank_and_alpha(p)?;
        if r != *rank || !close(config.scaling(r, alpha), *scaling) {
            return Err(err(format!(
                "{p}: the exported config gives rank {r} and scaling {}, the factors need rank {rank} and scaling {scaling}",
                config.scaling(r, alpha)
            )));
        }
    }
    Ok(())
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (which must exist).
pub fn write_adapter_dir(dir: &Path, adapter: &ExportedAdapter) -> Result<()> {
    write_file_synced(&dir.join(ADAPTER_CONFIG), adapter.config.to_json()?.as_bytes())?;
    write_state_dict(&dir.join(ADAPTER_WEIGHTS), &adapter.tensors)?;
    Ok(())
}

/// A weight delta `scaling · B·A` in f32, row-major, with its `[out, in]` shape.
pub type MergeDelta = (Vec<f32>, [usize; 2]);

/// `scaling · B·A` for every module of `adapter`, keyed by the base weight name (`<module>.weight`), in f32;
/// [`apply_delta`] adds one to a weight (peft's `merge_and_unload`).
pub fn merge_deltas(adapter: &ExportedAdapter) -> Result<IndexMap<String, MergeDelta>> {
    let mut out = IndexMap::new();
    for (path, (_, scaling)) in &adapter.modules {
        let a = adapter.tensors.tensor(&peft_key(path, "lora_A"))?;
        let b = adapter.tensors.tensor(&peft_key(path, "lora_B"))?;
        let ([r, inp], [o, r2]) = (
            <[usize; 2]>::try_from(a.shape()).map_err(|_| err(format!("{path}: lora_A is not a matrix")))?,
            <[usize; 2]>::try_from(b.shape()).map_err(|_| err(format!("{path}: lora_B is not a matrix")))?,
        );
        if r != r2 {
            return Err(err(format!("{path}: lora_A {:?} and lora_B {:?} disagree on the rank", a.shape(), b.shape())));
        }
        let (av, bv) = (a.to_f32_vec(), b.to_f32_vec());
        let s = *scaling as f32;
        let mut d = vec![0f32; o * inp];
        for i in 0..o {
            let row = &mut d[i * inp..(i + 1) * inp];
            for k in 0..r {
                let c = s * bv[i * r + k];
                if c != 0.0 {
                    for (x, y) in row.iter_mut().zip(&av[k * inp..(k + 1) * inp]) {
                        *x += c * y;
                    }
                }
            }
        }
        out.insert(format!("{path}.weight"), (d, [o, inp]));
    }
    Ok(out)
}

/// `w + delta` in `w`'s dtype (the delta from [`merge_deltas`]); `name` for errors.
pub fn apply_delta(name: &str, w: &HostTensor, delta: &MergeDelta) -> Result<HostTensor> {
    if w.shape() != delta.1.as_slice() {
        return Err(Error::ShapeMismatch {
            tensor: format!("{name} (merging a LoRA delta)"),
            expected: delta.1.to_vec(),
            found: w.shape().to_vec(),
            file: None,
        });
    }
    let v: Vec<f32> = w.to_f32_vec().iter().zip(&delta.0).map(|(x, d)| x + d).collect();
    HostTensor::from_f32_as(w.dtype(), w.shape().to_vec(), &v)
}
