//! An adapter's rank-local parameters in a TP layout: their partition attributes and the specs of the
//! modules that carry LoRA (what a sharded adapter's metadata records).

use super::peft::lora_group;
use super::{LoraLayout, PEFT_TYPE_LORA};
use crate::error::{Error, Result};
use crate::spec::metadata::{CheckpointMetadata, ParameterMetadata};
use crate::spec::{FuseAxis, ModelWeightTransformationSpecs, Spec};
use indexmap::IndexMap;

/// A parameter with the partition attributes of `base`'s parameter `from` (replicated when absent).
fn like(base: &CheckpointMetadata, from: &str) -> ParameterMetadata {
    let mut p = base.parameters.get(from).cloned().unwrap_or_else(ParameterMetadata::replicated);
    p.shape = None;
    p.dtype = None;
    p
}

/// The rank-local LoRA parameters of `layout` in the TP layout `base`, with their TP attributes (reference: on a
/// column-parallel base A is replicated and B sharded like the weight; on a row-parallel base A is sharded like
/// the weight and B replicated), and the specs of the modules with LoRA marked `peft_type = "lora"`.
pub fn adapter_metadata_for_tp(base: &CheckpointMetadata, layout: &LoraLayout) -> Result<CheckpointMetadata> {
    let mut parameters = IndexMap::new();
    let mut specs = Vec::new();
    let rep = ParameterMetadata::replicated;
    let mut handled: std::collections::HashSet<String> = Default::default();
    for group in &base.model_weight_transformation_specs {
        let module = group.module_fully_qualified_name.as_str();
        let mut kept = Vec::new();
        for spec in &group.specs {
            let (fused, _, axis) = lora_group(spec);
            let f = format!("{module}.{fused}");
            let mut has = false;
            if layout.modules.contains_key(&f) {
                has = true;
                handled.insert(f.clone());
                match (spec, axis) {
                    (Spec::GqaQkv(g), _) => {
                        parameters.insert(format!("{f}.lora_A.weight"), rep());
                        let suffixes: &[&str] = if g.fuse_qkv { &["qkv"] } else { &["q", "k", "v"] };
                        for s in suffixes {
                            parameters.insert(format!("{f}.lora_B.weight_{s}"), like(base, &format!("{f}.weight_{s}")));
                        }
                    }
                    (_, FuseAxis::Column) => {
                        parameters.insert(format!("{f}.lora_A.weight"), rep());
                        parameters.insert(format!("{f}.lora_B.weight"), like(base, &format!("{f}.weight")));
                    }
                    (_, FuseAxis::Row) => {
                        parameters.insert(format!("{f}.lora_A.weight"), like(base, &format!("{f}.weight")));
                        parameters.insert(format!("{f}.lora_B.weight"), rep());
                    }
                }
            }
            if let Spec::GqaQkv(g) = spec {
                let o = format!("{module}.{}", g.output_projection_name);
                if layout.modules.contains_key(&o) {
                    has = true;
                    handled.insert(o.clone());
                    parameters.insert(format!("{o}.lora_A.weight"), like(base, &format!("{o}.weight")));
                    parameters.insert(format!("{o}.lora_B.weight"), rep());
                }
            }
            if has {
                let mut s = spec.clone();
                s.set_peft_type(Some(PEFT_TYPE_LORA.to_string()));
                kept.push(s);
            }
        }
        if !kept.is_empty() {
            specs.push(ModelWeightTransformationSpecs { module_fully_qualified_name: module.to_string(), specs: kept });
        }
    }
    for module in layout.modules.keys().filter(|m| !handled.contains(*m)) {
        let w = format!("{module}.weight");
        let Some(bp) = base.parameters.get(&w) else {
            return Err(Error::lora("layout", format!("module {module} has no weight {w} in the TP layout")));
        };
        let (a, b) = match (bp.tensor_model_parallel, bp.partition_dim) {
            (true, Some(1)) => (like(base, &w), rep()),
            (true, _) => (rep(), like(base, &w)),
            _ => (rep(), rep()),
        };
        parameters.insert(format!("{module}.lora_A.weight"), a);
        parameters.insert(format!("{module}.lora_B.weight"), b);
    }
    Ok(CheckpointMetadata {
        format_version: base.format_version,
        tp_size: base.tp_size,
        parameters,
        model_weight_transformation_specs: specs,
        rank_files: vec![],
    })
}
