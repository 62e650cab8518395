//! `adapt_peft_config` / `to_original_peft_config`: `target_modules` in HF names ↔ in the TP model's names
//! (q_proj, k_proj, v_proj → qkv_proj; gate_proj, up_proj → gate_up_proj), per spec and for a whole model.

use super::config::{suffix_match, LoraConfig, TargetModules, LAYOUT_KEY};
use super::LoraImportOptions;
use crate::error::{Error, Result};
use crate::spec::metadata::CheckpointMetadata;
use crate::spec::{FuseAxis, Spec};
use indexmap::IndexMap;

/// The fused layer of a spec: its name, the HF modules it replaces (its members, or the one packed module)
/// and its fuse axis (see [`Spec::lora_group`]).
pub fn lora_group(spec: &Spec) -> (&str, Vec<String>, FuseAxis) {
    let (fused, members, axis) = spec.lora_group();
    (fused, members.into_iter().map(|(m, _)| m).collect(), axis)
}

/// One config or a map from adapter name to config (the reference accepts both).
pub trait PeftConfigs: Clone {
    /// Calls `f` on every config.
    fn try_for_each(&mut self, f: &mut dyn FnMut(&mut LoraConfig) -> Result<()>) -> Result<()>;
}

impl PeftConfigs for LoraConfig {
    fn try_for_each(&mut self, f: &mut dyn FnMut(&mut LoraConfig) -> Result<()>) -> Result<()> {
        f(self)
    }
}

impl PeftConfigs for IndexMap<String, LoraConfig> {
    fn try_for_each(&mut self, f: &mut dyn FnMut(&mut LoraConfig) -> Result<()>) -> Result<()> {
        self.values_mut().try_for_each(f)
    }
}

/// Which members of the spec at `module` the list targets; errors under the all-or-none rule.
fn check_group(spec: &Spec, module: &str, list: &[String], opts: &LoraImportOptions) -> Result<bool> {
    let (_, members, _) = lora_group(spec);
    let targeted: Vec<bool> =
        members.iter().map(|m| list.iter().any(|e| suffix_match(e, &format!("{module}.{m}")))).collect();
    if !targeted.iter().any(|t| *t) {
        return Ok(false);
    }
    if !opts.allow_partial && !targeted.iter().all(|t| *t) {
        let pick = |want: bool| -> Vec<String> {
            members.iter().zip(&targeted).filter(|(_, t)| **t == want).map(|(m, _)| m.to_string()).collect()
        };
        return Err(Error::PartialLoraGroup {
            module: module.to_string(),
            spec: spec.class_name().to_string(),
            present: pick(true),
            missing: pick(false),
        });
    }
    Ok(true)
}

/// Replaces the entries that name the spec's members by the fused layer's name.
fn rewrite_to_fused(spec: &Spec, module: &str, list: &[String]) -> Vec<String> {
    let (fused, members, _) = lora_group(spec);
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for e in list {
        let hit = members.iter().find(|m| suffix_match(e, &format!("{module}.{m}")) && e.ends_with(m.as_str()));
        let entry = match hit {
            Some(m) => format!("{}{fused}", &e[..e.len() - m.len()]),
            None => e.clone(),
        };
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out
}

/// Replaces the entries that name the fused layer by its members' names.
fn rewrite_to_members(spec: &Spec, module: &str, list: &[String]) -> Vec<String> {
    let (fused, members, _) = lora_group(spec);
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for e in list {
        let entries: Vec<String> = if suffix_match(e, &format!("{module}.{fused}")) && e.ends_with(fused) {
            let stem = &e[..e.len() - fused.len()];
            members.iter().map(|m| format!("{stem}{m}")).collect()
        } else {
            vec![e.clone()]
        };
        for x in entries {
            if !out.contains(&x) {
                out.push(x);
            }
        }
    }
    out
}

/// The spec's `target_modules` translation for one config (reference: `adapt_peft_config`), in place. A regex
/// is resolved against the whole model by [`adapt_peft_config_for_model`]; here it is an error.
pub fn adapt_peft_config(spec: &Spec, module: &str, config: &mut LoraConfig, opts: &LoraImportOptions) -> Result<()> {
    match &config.target_modules {
        TargetModules::AllLinear => Ok(()),
        TargetModules::Regex(r) => Err(Error::lora(
            "config",
            format!(
                "target_modules regex {r:?} can only be translated for a whole model (adapt_peft_config_for_model)"
            ),
        )),
        TargetModules::List(list) => {
            if check_group(spec, module, list, opts)? {
                config.target_modules = TargetModules::List(rewrite_to_fused(spec, module, list));
            }
            Ok(())
        }
    }
}

/// The inverse translation for one config (reference: `to_original_peft_config`), in place. Our layout section,
/// meaningful only to the TP model, is dropped.
pub fn to_original_peft_config(spec: &Spec, module: &str, config: &mut LoraConfig) -> Result<()> {
    if let TargetModules::List(list) = &config.target_modules {
        config.target_modules = TargetModules::List(rewrite_to_members(spec, module, list));
    }
    config.extra.shift_remove(LAYOUT_KEY);
    Ok(())
}

/// The HF module paths of the plain (spec-less) parameters `<path>.weight` of a layout.
pub(crate) fn plain_modules(meta: &CheckpointMetadata) -> Vec<String> {
    let produced: std::collections::HashSet<String> =
        meta.specs().flat_map(|(m, s)| s.local_parameter_names(m)).collect();
    meta.parameters
        .keys()
        .filter(|n| !produced.contains(*n))
        .filter_map(|n| n.strip_suffix(".weight"))
        .map(str::to_string)
        .collect()
}

/// Every HF linear module path a regex could name: spec members, the GQA output projections, plain modules.
fn hf_module_paths(meta: &CheckpointMetadata) -> Vec<String> {
    let mut v = Vec::new();
    for (m, s) in meta.specs() {
        let (_, members, _) = lora_group(s);
        v.extend(members.iter().map(|x| format!("{m}.{x}")));
        if let Spec::GqaQkv(g) = s {
            v.push(format!("{m}.{}", g.output_projection_name));
        }
    }
    v.extend(plain_modules(meta));
    v
}

/// `adapt_peft_config` of every spec of a model, for one config or a map of them. The all-or-none rule is
/// checked against the original names for every fused layer before anything is rewritten. A regex
/// `target_modules` becomes the explicit list of the modules it matches in this model.
pub fn adapt_peft_config_for_model<C: PeftConfigs>(
    meta: &CheckpointMetadata,
    configs: &C,
    opts: &LoraImportOptions,
) -> Result<C> {
    let mut out = configs.clone();
    out.try_for_each(&mut |c| {
        if let TargetModules::Regex(r) = &c.target_modules {
            let mut list = Vec::new();
            for p in hf_module_paths(meta) {
                if super::full_match(r, &p)? {
                    list.push(p);
                }
            }
            c.target_modules = TargetModules::List(list);
        }
        let TargetModules::List(original) = &c.target_modules else { return Ok(()) };
        let original = original.clone();
        let mut list = original.clone();
        for (m, s) in meta.specs() {
            if check_group(s, m, &original, opts)? {
                list = rewrite_to_fused(s, m, &list);
            }
        }
        c.target_modules = TargetModules::List(list);
        Ok(())
    })?;
    Ok(out)
}

/// `to_original_peft_config` of every spec of a model, for one config or a map of them.
pub fn to_original_peft_config_for_model<C: PeftConfigs>(meta: &CheckpointMetadata, configs: &C) -> Result<C> {
    let mut out = configs.clone();
    out.try_for_each(&mut |c| {
        for (m, s) in meta.specs() {
            to_original_peft_config(s, m, c)?;
        }
        Ok(())
    })?;
    Ok(out)
}
