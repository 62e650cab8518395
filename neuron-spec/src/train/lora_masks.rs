//! Exact-mode LoRA keeps fused factors block-structured while training: a fused group's B (column group) or
//! A (row group) holds each member's factor in its own block and zeros elsewhere. The off-block entries get
//! gradients in the fused layer, so they are masked out; then training the fused factors equals peft
//! training the members' separate adapters, and export gives each member its own factors back.

use super::LoraMasks;
use crate::checkpoint::adapters::imported_rank_adapter;
use crate::error::{Error, Result};
use crate::lora::{insert_adapter_name, ImportedAdapter, LoraMode};
use crate::spec::metadata::CheckpointMetadata;
use crate::tensor::HostTensor;

/// The masks of `adapter`'s fused factors on rank `rank` of `tp`, keyed by the trainer's rank tensor names
/// (`<module>.lora_B.<adapter>.weight_q`). Mean mode (one shared A) has none.
pub fn exact_lora_masks(
    base: &CheckpointMetadata,
    adapter: &ImportedAdapter,
    tp: usize,
    rank: usize,
) -> Result<LoraMasks> {
    if adapter.layout.mode != LoraMode::Exact {
        return Ok(LoraMasks::new());
    }
    let mut ones = adapter.clone();
    for t in ones.tensors.values_mut() {
        *t = HostTensor::from_f32(t.shape().to_vec(), &vec![1.0; t.numel()])?;
    }
    for (module, m) in &adapter.layout.modules {
        let Some(group) = &m.group else { continue };
        let parent = module.rsplit_once('.').map_or("", |(p, _)| p);
        for member in group.members.iter() {
            let factor = if group.fuse_axis == 0 { "lora_B" } else { "lora_A" };
            let name = crate::spec::contract::join_path(parent, &format!("{}.{factor}.weight", member.name));
            let Some(t) = ones.tensors.get_mut(&name) else {
                if member.present {
                    return Err(Error::lora(&adapter.name, format!("no {name} for the fused group {module}")));
                }
                continue;
            };
            let shape = t.shape().to_vec();
            let (rows, cols) = (shape.first().copied().unwrap_or(0), shape.get(1).copied().unwrap_or(0));
            let block = member.offset..member.offset + member.rank;
            let mut v = vec![0f32; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    // B [dim, Σr]: the member's columns; A [Σr, dim]: its rows.
                    let k = if group.fuse_axis == 0 { c } else { r };
                    if block.contains(&k) {
                        v[r * cols + c] = 1.0;
                    }
                }
            }
            *t = HostTensor::from_f32(shape, &v)?;
        }
    }
    let local = imported_rank_adapter(base, &ones, tp, rank)?;
    let mut out = LoraMasks::new();
    for (name, t) in &local.tensors {
        let v = t.to_f32_vec();
        if v.contains(&0.0) {
            out.insert(insert_adapter_name(name, &adapter.name), v);
        }
    }
    Ok(out)
}
