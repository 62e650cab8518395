//! Declarative layouts: what a spec says about its tensors, as data.
//!
//! A rank-local tensor is a list of [`Part`]s concatenated along one dimension; each part names an original
//! (HF) tensor and an [`IndexMap`] saying which of its indices the rank holds (a contiguous shard, the query
//! heads of the rank, the kv heads tiled, the whole tensor). An original may be *packed*: the member is a
//! range of a larger HF tensor (Phi-3's `qkv_proj`, `gate_up_proj`). Everything else is derived here, once,
//! for every spec: the local and original names, the rank plans (blocks of [`crate::plan`]), and the shape
//! inverse (the originals' shapes from one rank's tensors). LoRA factors are layouts too (see the specs'
//! `lora_layout`), so their plans, names and shapes come from the same code.
//!
//! The design follows mistral.rs's `PackedOutputLayout` and Megatron's `ShardedTensorFactory`: a sharded
//! tensor is described by how it is built from the global ones, not by code that builds it.

use super::require;
use crate::error::{Error, Result};
use crate::plan::split::{check_tp, per_partition_size};
use crate::plan::{push_block, Block, Source, TensorPlan};
use crate::tensor::{TensorInfo, TensorSource};

/// Which indices of an original (member) tensor a rank holds, along the part's dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexMap {
    /// All of it, on every rank (a replicated tensor; its size is read from the tensor).
    Whole,
    /// A contiguous shard of `ceil(len / tp)` indices, zero-padded on the last ranks where `tp` does not divide
    /// `len` (NxD's `create_local_weight` with stride 1, plus padding).
    Split {
        /// The member's full length.
        len: usize,
    },
    /// The query heads `compute_query_indices_for_rank` gives the rank, `head_dim` indices each.
    QueryHeads {
        /// Query heads.
        num_heads: usize,
        /// kv heads.
        num_kv_heads: usize,
        /// kv replication factor.
        multiplier: usize,
        /// Indices per head.
        head_dim: usize,
    },
    /// Indices `[rank·per_rank, (rank+1)·per_rank)` of the member tiled `multiplier` times (kv replication).
    Tiled {
        /// The member's full length.
        len: usize,
        /// How many times it is tiled.
        multiplier: usize,
        /// Indices per rank.
        per_rank: usize,
    },
}

impl IndexMap {
    /// The member's full length (`None` for [`IndexMap::Whole`], whose length comes from the tensor).
    pub fn member_len(&self) -> Option<usize> {
        match self {
            IndexMap::Whole => None,
            IndexMap::Split { len } | IndexMap::Tiled { len, .. } => Some(*len),
            IndexMap::QueryHeads { num_heads, head_dim, .. } => num_heads.checked_mul(*head_dim),
        }
    }

    /// The part's length in the rank-local tensor (`whole` is the member length for [`IndexMap::Whole`]).
    pub fn local_len(&self, tp: usize, whole: usize) -> usize {
        match self {
            IndexMap::Whole => whole,
            IndexMap::Split { len } => per_partition_size(*len, tp),
            IndexMap::QueryHeads { num_heads, head_dim, .. } => num_heads / tp.max(1) * head_dim,
            IndexMap::Tiled { per_rank, .. } => *per_rank,
        }
    }

    /// `(member offset, local offset, len)` runs of rank `rank`; local indices no run covers are padding.
    pub fn runs(&self, tp: usize, rank: usize, whole: usize) -> Result<Vec<(usize, usize, usize)>> {
        check_tp(tp, rank)?;
        Ok(match self {
            IndexMap::Whole => vec![(0, 0, whole)],
            IndexMap::Split { len } => {
                let per = per_partition_size(*len, tp);
                let start = (rank * per).min(*len);
                let end = ((rank + 1) * per).min(*len);
                vec![(start, 0, end - start)]
            }
            IndexMap::QueryHeads { num_heads, num_kv_heads, multiplier, head_dim } => {
                let idx = super::query_heads::query_indices_for_rank(tp, rank, *num_heads, *num_kv_heads, *multiplier)?;
                idx.iter().enumerate().map(|(j, h)| (h * head_dim, j * head_dim, *head_dim)).collect()
            }
            IndexMap::Tiled { len, multiplier, per_rank } => {
                let (len, out) = (*len, *per_rank);
                if len == 0 || out == 0 || (rank + 1).saturating_mul(out) > len.saturating_mul(*multiplier) {
                    return Err(Error::spec(
                        super::query_heads::CLASS_NAME,
                        "kv_output_size_per_partition",
                        format!("{out} rows per rank at rank {rank} exceed {len} rows × multiplier {multiplier}"),
                    ));
                }
                let mut v = Vec::new();
                let mut t = rank * out;
                let end = t + out;
                while t < end {
                    let r = t % len;
                    let n = (len - r).min(end - t);
                    v.push((r, t - rank * out, n));
                    t += n;
                }
                v
            }
        })
    }
}

/// A member that is a range of a larger HF tensor (a pre-fused checkpoint tensor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    /// Where the member starts in the packed tensor, along the part's dimension.
    pub offset: usize,
    /// The packed tensor's full length along that dimension.
    pub total: usize,
}

/// One part of a rank-local tensor: indices of an original tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The HF tensor read.
    pub original: String,
    /// Set when the member is a range of `original`.
    pub packing: Option<Packing>,
    /// The indices the rank holds.
    pub map: IndexMap,
}

impl Part {
    /// A part that reads a whole HF tensor (`packing` none).
    pub fn new(original: String, map: IndexMap) -> Self {
        Self { original, packing: None, map }
    }

    /// The original's full length along the part's dimension, given the member length.
    fn original_len(&self, member: usize) -> usize {
        self.packing.map_or(member, |p| p.total)
    }
}

/// One rank-local tensor: its parts, concatenated along `dim` in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTensor {
    /// The rank-local name.
    pub name: String,
    /// The dimension the parts are concatenated along (and sharded along).
    pub dim: usize,
    /// The parts.
    pub parts: Vec<Part>,
}

/// Tensors planned together. In an optional group (LoRA factors), the group is planned only when the source
/// holds its first part's original (and its shapes inferred only when a rank holds its first tensor).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Group {
    /// The tensors.
    pub tensors: Vec<LocalTensor>,
    /// Whether the group may be absent.
    pub optional: bool,
}

/// A spec's layout: its groups of rank-local tensors, for one TP size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// The groups.
    pub groups: Vec<Group>,
}

/// `module.name`, or `name` at the root module (path `""`).
pub fn join(module: &str, name: &str) -> String {
    if module.is_empty() {
        name.to_string()
    } else {
        format!("{module}.{name}")
    }
}

impl Layout {
    /// Every rank-local tensor name.
    pub fn local_names(&self) -> Vec<String> {
        self.groups.iter().flat_map(|g| g.tensors.iter().map(|t| t.name.clone())).collect()
    }

    /// Every original tensor name, once each, in order of first use.
    pub fn original_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.groups.iter().flat_map(|g| &g.tensors) {
            for p in &t.parts {
                if !out.contains(&p.original) {
                    out.push(p.original.clone());
                }
            }
        }
        out
    }

    /// Rank `rank`'s plans, reading the originals from `src` (source set `part`).
    pub fn plan(
        &self,
        class: &str,
        src: &dyn TensorSource,
        part: usize,
        tp: usize,
        rank: usize,
    ) -> Result<Vec<TensorPlan>> {
        check_tp(tp, rank)?;
        let mut plans = Vec::new();
        for g in &self.groups {
            let first = g.tensors.first().and_then(|t| t.parts.first());
            if g.optional && first.is_some_and(|p| src.info(&p.original).is_none()) {
                continue;
            }
            for t in &g.tensors {
                plans.push(plan_tensor(class, t, src, part, tp, rank)?);
            }
        }
        Ok(plans)
    }

    /// The originals' dtypes and shapes, from one rank's local tensors.
    pub fn original_infos(&self, class: &str, local: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
        let mut out: Vec<TensorInfo> = Vec::new();
        for g in &self.groups {
            if g.optional && g.tensors.first().is_some_and(|t| local.info(&t.name).is_none()) {
                continue;
            }
            for t in &g.tensors {
                for i in tensor_original_infos(class, t, local, tp)? {
                    match out.iter().find(|o| o.name == i.name) {
                        Some(o) if *o != i => {
                            return Err(Error::ShapeMismatch {
                                tensor: i.name,
                                expected: o.shape.clone(),
                                found: i.shape,
                                file: None,
                            })
                        }
                        Some(_) => {}
                        None => out.push(i),
                    }
                }
            }
        }
        Ok(out)
    }
}

fn with_dim(shape: &[usize], dim: usize, v: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(x) = s.get_mut(dim) {
        *x = v;
    }
    s
}

impl LocalTensor {
    /// Rank `rank`'s plan of this tensor, reading the originals from `src` (source set `part`).
    pub fn plan(&self, class: &str, src: &dyn TensorSource, part: usize, tp: usize, rank: usize) -> Result<TensorPlan> {
        plan_tensor(class, self, src, part, tp, rank)
    }
}

fn plan_tensor(
    class: &str,
    t: &LocalTensor,
    src: &dyn TensorSource,
    part: usize,
    tp: usize,
    rank: usize,
) -> Result<TensorPlan> {
    let dim = t.dim;
    let mut blocks = Vec::new();
    let mut first: Option<TensorInfo> = None;
    let mut offset = 0usize;
    for p in &t.parts {
        let info = require(src, &p.original)?;
        let Some(&have) = info.shape.get(dim) else {
            return Err(Error::Tensor(format!(
                "tensor {}: no dimension {dim} in {:?} (read for {})",
                info.name, info.shape, t.name
            )));
        };
        let member = p.map.member_len().unwrap_or(have);
        let want = p.original_len(member);
        if have != want {
            return Err(Error::ShapeMismatch {
                tensor: format!("{} (read for {}, dim {dim})", info.name, t.name),
                expected: with_dim(&info.shape, dim, want),
                found: info.shape.clone(),
                file: None,
            });
        }
        if let Some(f) = &first {
            if info.dtype != f.dtype {
                return Err(Error::DtypeMismatch {
                    tensor: info.name.clone(),
                    expected: f.dtype.to_string(),
                    found: info.dtype.to_string(),
                    file: None,
                });
            }
            if with_dim(&info.shape, dim, 0) != with_dim(&f.shape, dim, 0) {
                return Err(Error::ShapeMismatch {
                    tensor: info.name.clone(),
                    expected: with_dim(&f.shape, dim, have),
                    found: info.shape.clone(),
                    file: None,
                });
            }
        }
        let base = p.packing.map_or(0, |k| k.offset);
        for (s, d, len) in p.map.runs(tp, rank, member)? {
            push_block(
                &mut blocks,
                Block {
                    src: Source { part, name: p.original.clone() },
                    dim,
                    src_offset: base + s,
                    dst_offset: offset + d,
                    len,
                },
            );
        }
        offset += p.map.local_len(tp, member);
        if first.is_none() {
            first = Some(info);
        }
    }
    let first = first.ok_or_else(|| Error::spec(class, "linear_names", format!("{} has no parts", t.name)))?;
    Ok(TensorPlan {
        name: t.name.clone(),
        dtype: first.dtype,
        shape: with_dim(&first.shape, dim, offset),
        blocks,
        replicas: vec![],
    })
}

fn tensor_original_infos(class: &str, t: &LocalTensor, local: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
    let info = require(local, &t.name)?;
    let dim = t.dim;
    let Some(&have) = info.shape.get(dim) else {
        return Err(Error::Tensor(format!("tensor {}: no dimension {dim} in {:?}", t.name, info.shape)));
    };
    let whole_parts = t.parts.iter().filter(|p| p.map.member_len().is_none()).count();
    let fixed = t
        .parts
        .iter()
        .filter_map(|p| p.map.member_len().map(|m| p.map.local_len(tp, m)))
        .try_fold(0usize, |a, b| a.checked_add(b));
    let Some(fixed) = fixed else {
        return Err(Error::spec(class, "original_dims", format!("the sizes of {} overflow", t.name)));
    };
    // A whole part takes what the sized parts leave (at most one per tensor).
    let whole = have.checked_sub(fixed);
    if !matches!((whole_parts, whole), (0, Some(0)) | (1, Some(_))) {
        return Err(Error::spec(
            class,
            "original_dims",
            format!(
                "at tp {tp} each rank's {} should be {:?}, found {:?}",
                t.name,
                with_dim(&info.shape, dim, fixed),
                info.shape
            ),
        ));
    }
    let mut out = Vec::new();
    for p in &t.parts {
        let member = p.map.member_len().unwrap_or(whole.unwrap_or(0));
        let shape = with_dim(&info.shape, dim, p.original_len(member));
        let i = TensorInfo { name: p.original.clone(), dtype: info.dtype, shape };
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_pads_the_last_rank() {
        let m = IndexMap::Split { len: 10 };
        assert_eq!(m.local_len(4, 0), 3);
        assert_eq!(m.runs(4, 3, 0).unwrap(), vec![(9, 0, 1)]);
        assert_eq!(m.runs(4, 0, 0).unwrap(), vec![(0, 0, 3)]);
    }

    #[test]
    fn tiled_wraps_around() {
        let m = IndexMap::Tiled { len: 4, multiplier: 2, per_rank: 3 };
        assert_eq!(m.runs(2, 1, 0).unwrap(), vec![(3, 0, 1), (0, 1, 2)]);
    }

    #[test]
    fn root_names_have_no_leading_dot() {
        assert_eq!(join("", "gate_proj.weight"), "gate_proj.weight");
        assert_eq!(join("mlp", "gate_proj.weight"), "mlp.gate_proj.weight");
    }
}
