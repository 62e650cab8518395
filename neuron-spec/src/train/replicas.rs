//! Which rank-local gradient entries are copies of one parameter: kv heads tiled `kv_size_multiplier`
//! times (their gradients are summed over the copies, so the copies stay identical and equal the HF
//! parameter's gradient), and replicated tensors (counted once in the global gradient norm).

use crate::comm::GradReducer;
use crate::error::Result;
use crate::spec::contract::TpContext;
use crate::spec::metadata::CheckpointMetadata;
use crate::spec::Spec;
use indexmap::IndexMap;

/// A rank-local gradient: shape and values (HF orientation, rows = output features).
pub type GradMap = IndexMap<String, (Vec<usize>, Vec<f32>)>;

/// One GQA layer's kv row layout on this rank.
struct KvLayout {
    prefix: String,
    q_rows: usize,
    kv_rows: usize,
    head_dim: usize,
    kv_heads: usize,
    multiplier: usize,
}

fn kv_layouts(meta: &CheckpointMetadata) -> Vec<KvLayout> {
    meta.specs()
        .filter_map(|(module, s)| match s {
            Spec::GqaQkv(g) if g.num_attention_heads > 0 && g.tp_size > 0 => {
                let head_dim = g.q_output_size_per_partition * g.tp_size / g.num_attention_heads;
                Some(KvLayout {
                    prefix: crate::spec::contract::join_path(module, &g.gqa_qkv_projection_name),
                    q_rows: g.q_output_size_per_partition,
                    kv_rows: g.kv_output_size_per_partition,
                    head_dim,
                    kv_heads: g.num_key_value_heads,
                    multiplier: g.kv_size_multiplier,
                })
            }
            _ => None,
        })
        .collect()
}

/// The kv row blocks (start row) of a tensor of a GQA layer, `None` when it has none (q-only, lora_A).
fn kv_blocks(l: &KvLayout, name: &str) -> Option<Vec<usize>> {
    let rest = name.strip_prefix(&l.prefix)?.strip_prefix('.')?;
    let last = rest.rsplit('.').next().unwrap_or(rest);
    if rest.contains("lora_A") {
        return None;
    }
    match last {
        "weight_qkv" | "bias_qkv" => Some(vec![l.q_rows, l.q_rows + l.kv_rows]),
        "weight_k" | "bias_k" | "weight_v" | "bias_v" => Some(vec![0]),
        _ => None,
    }
}

/// Sums the gradient of every kv head over its copies (ranks holding the same head), in place.
pub fn sum_kv_replicas(grads: &mut GradMap, meta: &CheckpointMetadata, tp: TpContext, r: &GradReducer) -> Result<()> {
    for l in kv_layouts(meta).iter().filter(|l| l.multiplier > 1 && l.head_dim > 0) {
        let local_heads = l.kv_rows / l.head_dim;
        for (name, (shape, g)) in grads.iter_mut() {
            let Some(blocks) = kv_blocks(l, name) else { continue };
            let rows = shape.first().copied().unwrap_or(1).max(1);
            let cols = g.len() / rows;
            for start in blocks {
                // One buffer per HF kv head: every rank adds its copies, the all-reduce sums them.
                let mut buf = vec![0f32; l.kv_heads * l.head_dim * cols];
                for j in 0..local_heads {
                    let head = (tp.rank * local_heads + j) % l.kv_heads;
                    let src = &g[(start + j * l.head_dim) * cols..(start + (j + 1) * l.head_dim) * cols];
                    let dst = &mut buf[head * l.head_dim * cols..(head + 1) * l.head_dim * cols];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
                }
                let sum = r.all_reduce_sum_f32(buf, &[l.kv_heads * l.head_dim, cols])?;
                for j in 0..local_heads {
                    let head = (tp.rank * local_heads + j) % l.kv_heads;
                    let src = &sum[head * l.head_dim * cols..(head + 1) * l.head_dim * cols];
                    g[(start + j * l.head_dim) * cols..(start + (j + 1) * l.head_dim) * cols].copy_from_slice(src);
                }
            }
        }
    }
    Ok(())
}

/// This rank's share of the squared global gradient norm: each HF parameter entry counted once over all
/// ranks (replicated tensors on rank 0 only, a kv head on the ranks holding its first copy).
pub fn local_norm_sq(grads: &GradMap, meta: &CheckpointMetadata, tp: TpContext) -> f64 {
    let layouts = kv_layouts(meta);
    let sq = |v: &[f32]| v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>();
    let mut total = 0f64;
    for (name, (shape, g)) in grads {
        if let Some(l) = layouts.iter().find(|l| name.starts_with(&format!("{}.", l.prefix))) {
            if name.contains(".lora_A.") {
                if tp.rank == 0 {
                    total += sq(g);
                }
                continue;
            }
            let rows = shape.first().copied().unwrap_or(1).max(1);
            let cols = g.len() / rows;
            let blocks = kv_blocks(l, name).unwrap_or_default();
            let local_heads = l.kv_rows / l.head_dim.max(1);
            let mut counted = vec![true; rows];
            for start in blocks {
                for j in 0..local_heads {
                    let first_copy = tp.rank * local_heads + j < l.kv_heads;
                    for row in start + j * l.head_dim..start + (j + 1) * l.head_dim {
                        if let Some(c) = counted.get_mut(row) {
                            *c = first_copy;
                        }
                    }
                }
            }
            for (row, c) in counted.iter().enumerate() {
                if *c {
                    total += sq(&g[row * cols..(row + 1) * cols]);
                }
            }
            continue;
        }
        let sharded = if let Some((module, rest)) = name.split_once(".lora_") {
            // A column-parallel layer's A is replicated and its B split; a row-parallel layer's the reverse.
            let dim = meta.parameters.get(&format!("{module}.weight")).and_then(|m| m.partition_dim);
            match (dim, rest.starts_with("A.")) {
                (Some(0), a) => !a,
                (Some(1), a) => a,
                _ => false,
            }
        } else {
            meta.parameters.get(name).is_some_and(|m| m.tensor_model_parallel)
        };
        if sharded || tp.rank == 0 {
            total += sq(g);
        }
    }
    total
}
