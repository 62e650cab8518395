//! Layouts as data: a plan lists which slices of which source tensors land where in which destination tensor.
//!
//! Every transformation (sharding, consolidation, resharding, the dry-run report) runs a plan. A block copies
//! `len` indices along one dimension, all other dimensions whole, so it moves contiguous runs of raw bytes and
//! never looks at values. The inverse of a plan (consolidation) is derived from it by swapping sources and
//! destinations: nothing is written twice.
//!
//! Also here: the reference's sharding helpers as plans ([`split`]) and the thread that computes the next
//! tensor while the current one is written ([`prefetch`]).

pub mod prefetch;
pub mod split;

use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tensor::{numel, HostTensor, TensorInfo, TensorSource};
use serde::Serialize;

/// A source tensor: `part` selects the source set (the rank for consolidation, 0 for an HF checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Source {
    /// Which source set (rank) holds the tensor.
    pub part: usize,
    /// The tensor name.
    pub name: String,
}

/// Copy `len` indices along `dim`, from `src_offset` in the source to `dst_offset` in the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    /// The source tensor.
    pub src: Source,
    /// The dimension the offsets refer to; all other dimensions are copied whole.
    pub dim: usize,
    /// Start index along `dim` in the source.
    pub src_offset: usize,
    /// Start index along `dim` in the destination.
    pub dst_offset: usize,
    /// Number of indices copied.
    pub len: usize,
}

/// One destination tensor and the blocks that fill it. Elements no block covers are zero (padding).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorPlan {
    /// Destination name.
    pub name: String,
    /// Destination dtype (every source has it too: bytes are moved, never converted).
    pub dtype: DType,
    /// Destination shape.
    pub shape: Vec<usize>,
    /// The copies, in order.
    pub blocks: Vec<Block>,
    /// Extra copies of regions already filled by `blocks` (kv-head replicas on other ranks), kept so that
    /// consolidation can check that replicas agree.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Block>,
}

/// Reads a block's source slice from the source set it names.
fn read_block(sources: &[&dyn TensorSource], b: &Block) -> Result<HostTensor> {
    let src = sources
        .get(b.src.part)
        .ok_or_else(|| Error::Plan(format!("no source set {} for {}", b.src.part, b.src.name)))?;
    let info = src.info(&b.src.name).ok_or_else(|| {
        let names = src.names();
        let c: Vec<&str> = names.iter().map(String::as_str).collect();
        Error::key_mismatch(format!("source {}", b.src.part), vec![b.src.name.clone()], vec![], &c)
    })?;
    if b.dim >= info.shape.len().max(1) || b.src_offset + b.len > info.shape.get(b.dim).copied().unwrap_or(1) {
        let mut expected = info.shape.clone();
        if let Some(x) = expected.get_mut(b.dim) {
            *x = b.src_offset + b.len;
        }
        return Err(Error::ShapeMismatch { tensor: b.src.name.clone(), expected, found: info.shape, file: None });
    }
    src.read_slice(&b.src.name, b.dim, b.src_offset, b.len)
}

impl TensorPlan {
    /// A plan that copies `src` whole into a destination of the same shape.
    pub fn whole(name: &str, info: &TensorInfo, part: usize) -> Self {
        // Scalars behave as shape [1].
        let blocks = vec![Block {
            src: Source { part, name: info.name.clone() },
            dim: 0,
            src_offset: 0,
            dst_offset: 0,
            len: info.shape.first().copied().unwrap_or(1),
        }];
        Self { name: name.to_string(), dtype: info.dtype, shape: info.shape.clone(), blocks, replicas: vec![] }
    }

    /// The destination's name, dtype and shape.
    pub fn info(&self) -> TensorInfo {
        TensorInfo { name: self.name.clone(), dtype: self.dtype, shape: self.shape.clone() }
    }

    /// Size of the destination in bytes.
    pub fn nbytes(&self) -> usize {
        numel(&self.shape) * self.dtype.size()
    }

    /// Bytes read from sources by this plan.
    pub fn bytes_read(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| {
                let other: usize =
                    self.shape.iter().enumerate().filter(|(d, _)| *d != b.dim).map(|(_, s)| *s).product();
                other * b.len * self.dtype.size()
            })
            .sum()
    }

    /// Runs the plan: reads each block's slice from `sources[block.src.part]` and copies it into place.
    pub fn execute(&self, sources: &[&dyn TensorSource]) -> Result<HostTensor> {
        let mut out = vec![0u8; self.nbytes()];
        let copied = self.blocks.iter().try_for_each(|b| {
            let piece = read_block(sources, b)?;
            let local = Block { src_offset: 0, ..b.clone() };
            copy_block(&piece, &b.src.name, &local, &mut out, &self.shape, self.dtype, &self.name)
        });
        release_sources(sources, &self.blocks);
        copied?;
        HostTensor::new(self.dtype, self.shape.clone(), out)
    }

    /// The destination as consecutive byte pieces, without assembling it: where the blocks tile the
    /// destination in order along a leading dimension, each piece is the block's source slice itself (a view of
    /// a memory-mapped file, written out directly); otherwise one assembled tensor.
    pub fn pieces(&self, sources: &[&dyn TensorSource]) -> Result<Vec<HostTensor>> {
        let leading = |b: &Block| self.shape.iter().take(b.dim).all(|s| *s == 1);
        let mut next = 0;
        let tiles = self.blocks.iter().all(|b| {
            let ok = leading(b) && b.dim == self.blocks[0].dim && b.dst_offset == next;
            next += b.len;
            ok
        }) && next == self.shape.get(self.blocks.first().map_or(0, |b| b.dim)).copied().unwrap_or(1);
        if !tiles || self.blocks.is_empty() {
            return Ok(vec![self.execute(sources)?]);
        }
        self.blocks
            .iter()
            .map(|b| {
                let piece = read_block(sources, b)?;
                if piece.dtype() != self.dtype {
                    return Err(Error::DtypeMismatch {
                        tensor: b.src.name.clone(),
                        expected: self.dtype.to_string(),
                        found: piece.dtype().to_string(),
                        file: None,
                    });
                }
                Ok(piece)
            })
            .collect()
    }

    /// The first replica that differs from the copy kept in `out`: `(max_abs_diff, replica rank, kept rank)`.
    pub fn replica_mismatch(
        &self,
        out: &HostTensor,
        sources: &[&dyn TensorSource],
    ) -> Result<Option<(f32, usize, usize)>> {
        for b in &self.replicas {
            let piece = read_block(sources, b)?;
            let kept = out.narrow(b.dim, b.dst_offset, b.len)?;
            let same = piece.bytes() == kept.bytes();
            release_sources(sources, std::slice::from_ref(b));
            if !same {
                let mut diff = 0f32;
                let values = out.to_f32_vec();
                let p = piece.to_f32_vec();
                region_indices(&self.shape, b.dim, b.dst_offset, b.len, |i, j| {
                    diff = diff.max((values[i] - p[j]).abs())
                });
                let primary = self
                    .blocks
                    .iter()
                    .find(|k| k.dst_offset < b.dst_offset + b.len && b.dst_offset < k.dst_offset + k.len);
                return Ok(Some((diff, b.src.part, primary.map_or(0, |k| k.src.part))));
            }
        }
        Ok(None)
    }

    /// `out` with every replicated region replaced by the mean of all its copies (floats only).
    pub fn average_replicas(&self, out: HostTensor, sources: &[&dyn TensorSource]) -> Result<HostTensor> {
        if self.replicas.is_empty() {
            return Ok(out);
        }
        let mut sum: Vec<f64> = out.to_f32_vec().into_iter().map(f64::from).collect();
        let mut count = vec![1u32; sum.len()];
        for b in &self.replicas {
            let p = read_block(sources, b)?.to_f32_vec();
            release_sources(sources, std::slice::from_ref(b));
            region_indices(&self.shape, b.dim, b.dst_offset, b.len, |i, j| {
                sum[i] += f64::from(p[j]);
                count[i] += 1;
            });
        }
        let mean: Vec<f32> = sum.iter().zip(&count).map(|(s, c)| (s / f64::from(*c)) as f32).collect();
        HostTensor::from_f32_as(self.dtype, self.shape.clone(), &mean)
    }
}

/// Releases every source tensor `blocks` read, once each.
fn release_sources(sources: &[&dyn TensorSource], blocks: &[Block]) {
    let mut done: Vec<(usize, &str)> = Vec::new();
    for b in blocks {
        let key = (b.src.part, b.src.name.as_str());
        if !done.contains(&key) {
            if let Some(src) = sources.get(b.src.part) {
                src.release(&b.src.name);
            }
            done.push(key);
        }
    }
}

/// Calls `f(index in the full tensor, index in the region)` for every element of a region along `dim`.
fn region_indices(shape: &[usize], dim: usize, offset: usize, len: usize, mut f: impl FnMut(usize, usize)) {
    let shape: Vec<usize> = if shape.is_empty() { vec![1] } else { shape.to_vec() };
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let full = shape[dim];
    for o in 0..outer {
        for k in 0..len {
            for i in 0..inner {
                f((o * full + offset + k) * inner + i, (o * len + k) * inner + i);
            }
        }
    }
}

/// Copies one block from `src` into `dst` (a buffer of `dst_shape`), checking every bound first.
pub(crate) fn copy_block(
    src: &HostTensor,
    src_name: &str,
    b: &Block,
    dst: &mut [u8],
    dst_shape: &[usize],
    dtype: DType,
    dst_name: &str,
) -> Result<()> {
    let s_shape = src.shape();
    // Scalars behave as shape [1].
    let s_shape_v: Vec<usize> = if s_shape.is_empty() { vec![1] } else { s_shape.to_vec() };
    let d_shape_v: Vec<usize> = if dst_shape.is_empty() { vec![1] } else { dst_shape.to_vec() };
    if src.dtype() != dtype {
        return Err(Error::DtypeMismatch {
            tensor: src_name.to_string(),
            expected: dtype.to_string(),
            found: src.dtype().to_string(),
            file: None,
        });
    }
    let same_rank = s_shape_v.len() == d_shape_v.len() && b.dim < d_shape_v.len();
    let others_match =
        same_rank && s_shape_v.iter().zip(&d_shape_v).enumerate().all(|(d, (a, c))| d == b.dim || a == c);
    let in_bounds = same_rank
        && b.src_offset.checked_add(b.len).is_some_and(|e| e <= s_shape_v[b.dim])
        && b.dst_offset.checked_add(b.len).is_some_and(|e| e <= d_shape_v[b.dim]);
    if !others_match || !in_bounds {
        let mut expected = d_shape_v.clone();
        if b.dim < expected.len() {
            expected[b.dim] = s_shape_v.get(b.dim).copied().unwrap_or(0).max(b.src_offset + b.len);
        }
        return Err(Error::ShapeMismatch {
            tensor: format!("{src_name} (read for {dst_name}, dim {})", b.dim),
            expected,
            found: s_shape.to_vec(),
            file: None,
        });
    }
    let esize = dtype.size();
    let outer: usize = d_shape_v[..b.dim].iter().product();
    let inner: usize = d_shape_v[b.dim + 1..].iter().product::<usize>() * esize;
    let src_stride = s_shape_v[b.dim] * inner;
    let dst_stride = d_shape_v[b.dim] * inner;
    let run = b.len * inner;
    let sb = src.bytes();
    for o in 0..outer {
        let s0 = o * src_stride + b.src_offset * inner;
        let d0 = o * dst_stride + b.dst_offset * inner;
        dst[d0..d0 + run].copy_from_slice(&sb[s0..s0 + run]);
    }
    Ok(())
}

/// Appends a block, merging it into the previous one when both are contiguous in source and destination.
pub fn push_block(blocks: &mut Vec<Block>, b: Block) {
    if b.len == 0 {
        return;
    }
    if let Some(last) = blocks.last_mut() {
        if last.src == b.src
            && last.dim == b.dim
            && last.src_offset + last.len == b.src_offset
            && last.dst_offset + last.len == b.dst_offset
        {
            last.len += b.len;
            return;
        }
    }
    blocks.push(b);
}

/// The plans of every rank for one TP size: `ranks[r]` lists the rank-local tensors, reading the originals.
#[derive(Debug, Clone, Serialize)]
pub struct ShardPlan {
    /// TP size.
    pub tp: usize,
    /// The original tensors the plan reads, in order.
    pub originals: Vec<TensorInfo>,
    /// Per rank, the rank-local tensors.
    pub ranks: Vec<Vec<TensorPlan>>,
}

impl ShardPlan {
    /// The consolidation plan: for each original tensor, the rank blocks that rebuild it.
    ///
    /// Derived by swapping every block's source and destination. Where several ranks hold the same region
    /// (replicated kv heads), the lowest rank's copy is read, as the reference does, and the others are kept
    /// as `replicas` for checking. Padding regions of rank tensors are never read.
    pub fn invert(&self) -> Result<Vec<TensorPlan>> {
        let mut out = Vec::with_capacity(self.originals.len());
        // Every block by the original it reads, in rank, tensor and block order (the lowest rank comes first).
        let mut by_original: std::collections::HashMap<&str, Vec<Block>> = std::collections::HashMap::new();
        for (rank, tensors) in self.ranks.iter().enumerate() {
            for t in tensors {
                for b in &t.blocks {
                    by_original.entry(b.src.name.as_str()).or_default().push(Block {
                        src: Source { part: rank, name: t.name.clone() },
                        dim: b.dim,
                        src_offset: b.dst_offset,
                        dst_offset: b.src_offset,
                        len: b.len,
                    });
                }
            }
        }
        for orig in &self.originals {
            let candidates = by_original.remove(orig.name.as_str()).unwrap_or_default();
            let dim = candidates.first().map_or(0, |b| b.dim);
            if candidates.iter().any(|b| b.dim != dim) {
                return Err(Error::Plan(format!(
                    "tensor {}: its blocks are split along several dimensions, which cannot be inverted",
                    orig.name
                )));
            }
            let full = orig.shape.get(dim).copied().unwrap_or(1);
            let mut covered: Vec<(usize, usize)> = Vec::new(); // disjoint, sorted [start, end)
            let mut blocks = Vec::new();
            let mut replicas = Vec::new();
            for c in candidates {
                let (fresh, dup) = subtract(&covered, c.dst_offset, c.dst_offset + c.len);
                for (s, e) in fresh {
                    blocks.push(Block {
                        src_offset: c.src_offset + (s - c.dst_offset),
                        dst_offset: s,
                        len: e - s,
                        ..c.clone()
                    });
                    insert_interval(&mut covered, s, e);
                }
                for (s, e) in dup {
                    replicas.push(Block {
                        src_offset: c.src_offset + (s - c.dst_offset),
                        dst_offset: s,
                        len: e - s,
                        ..c.clone()
                    });
                }
            }
            let total: usize = covered.iter().map(|(s, e)| e - s).sum();
            if total != full {
                return Err(Error::Plan(format!(
                    "tensor {}: the rank tensors cover {total} of its {full} indices along dimension {dim}",
                    orig.name
                )));
            }
            blocks.sort_by_key(|b| b.dst_offset);
            out.push(TensorPlan {
                name: orig.name.clone(),
                dtype: orig.dtype,
                shape: orig.shape.clone(),
                blocks,
                replicas,
            });
        }
        Ok(out)
    }

    /// Bytes each rank reads from the originals.
    pub fn bytes_read_per_rank(&self) -> Vec<usize> {
        self.ranks.iter().map(|ts| ts.iter().map(TensorPlan::bytes_read).sum()).collect()
    }
}

/// Half-open index ranges `[start, end)`.
type Intervals = Vec<(usize, usize)>;

/// Splits [s, e) into the parts not in `covered` and the parts already in it.
fn subtract(covered: &[(usize, usize)], s: usize, e: usize) -> (Intervals, Intervals) {
    let mut fresh = Vec::new();
    let mut dup = Vec::new();
    let mut cur = s;
    for &(cs, ce) in covered {
        if ce <= cur || cs >= e {
            continue;
        }
        if cs > cur {
            fresh.push((cur, cs));
        }
        dup.push((cur.max(cs), ce.min(e)));
        cur = ce.min(e);
    }
    if cur < e {
        fresh.push((cur, e));
    }
    (fresh, dup)
}

fn insert_interval(covered: &mut Vec<(usize, usize)>, s: usize, e: usize) {
    covered.push((s, e));
    covered.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(covered.len());
    for &(a, b) in covered.iter() {
        match merged.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    *covered = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_splits_around_covered_ranges() {
        let (f, d) = subtract(&[(2, 4), (6, 8)], 0, 10);
        assert_eq!(f, vec![(0, 2), (4, 6), (8, 10)]);
        assert_eq!(d, vec![(2, 4), (6, 8)]);
    }

    #[test]
    fn copies_columns_of_a_matrix() {
        let src = HostTensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        let plan = TensorPlan {
            name: "d".into(),
            dtype: DType::F32,
            shape: vec![2, 2],
            blocks: vec![Block {
                src: Source { part: 0, name: "s".into() },
                dim: 1,
                src_offset: 1,
                dst_offset: 0,
                len: 2,
            }],
            replicas: vec![],
        };
        let sd: crate::tensor::StateDict = [("s".to_string(), src)].into_iter().collect();
        let out = plan.execute(&[&sd]).unwrap();
        assert_eq!(out.to_f32_vec(), vec![2., 3., 5., 6.]);
    }

    #[test]
    fn out_of_range_block_is_an_error() {
        let src = HostTensor::from_f32(vec![2], &[1., 2.]).unwrap();
        let plan = TensorPlan {
            name: "d".into(),
            dtype: DType::F32,
            shape: vec![2],
            blocks: vec![Block {
                src: Source { part: 0, name: "s".into() },
                dim: 0,
                src_offset: 1,
                dst_offset: 0,
                len: 2,
            }],
            replicas: vec![],
        };
        let sd: crate::tensor::StateDict = [("s".to_string(), src)].into_iter().collect();
        assert!(plan.execute(&[&sd]).is_err());
    }
}
