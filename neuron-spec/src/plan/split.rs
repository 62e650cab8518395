//! Sharding helpers with the reference's semantics, expressed as plans, plus zero padding for uneven splits.

use crate::error::{Error, Result};
use crate::plan::{push_block, Block, Source, TensorPlan};
use crate::tensor::TensorInfo;
use crate::tensor::{single, HostTensor, StateDict};

/// Length of each rank's shard along a partitioned dimension of length `len`: `ceil(len / tp)`.
pub fn per_partition_size(len: usize, tp: usize) -> usize {
    len.div_ceil(tp.max(1))
}

/// The plan of rank `rank` for a tensor partitioned along `dim` with `stride`, as NxD's `create_local_weight`
/// does it: pieces of `per_partition / stride` indices, piece `j` going to rank `j % tp`.
///
/// Unlike the reference, where `tp` does not divide the dimension every rank gets the same shape: the missing
/// tail is left as zeros (padding), and consolidation never reads it.
pub fn partition_plan(
    name: &str,
    src: &TensorInfo,
    part: usize,
    dim: usize,
    stride: usize,
    tp: usize,
    rank: usize,
) -> Result<TensorPlan> {
    check_tp(tp, rank)?;
    let len = *src.shape.get(dim).ok_or_else(|| {
        Error::Plan(format!("tensor {}: partition dim {dim} is out of range for shape {:?}", src.name, src.shape))
    })?;
    if stride == 0 {
        return Err(Error::Plan(format!("tensor {}: partition stride 0", src.name)));
    }
    let per = per_partition_size(len, tp);
    if !per.is_multiple_of(stride) {
        return Err(Error::Plan(format!(
            "tensor {}: per-partition size {per} (dim {dim} of length {len} over tp {tp}) is not divisible by stride {stride}",
            src.name
        )));
    }
    let piece = per / stride;
    let mut blocks = Vec::new();
    // An empty dimension has nothing to copy (and a hostile stride must not make this loop long).
    let pieces = if piece == 0 { 0 } else { stride };
    for k in 0..pieces {
        let j = rank + k * tp;
        let start = j * piece;
        let end = ((j + 1) * piece).min(len);
        if start < end {
            push_block(
                &mut blocks,
                Block {
                    src: Source { part, name: src.name.clone() },
                    dim,
                    src_offset: start,
                    dst_offset: k * piece,
                    len: end - start,
                },
            );
        }
    }
    let mut shape = src.shape.clone();
    shape[dim] = per;
    Ok(TensorPlan { name: name.to_string(), dtype: src.dtype, shape, blocks, replicas: vec![] })
}

/// Rank `rank`'s shard of `full` along `partition_dim` with `stride` (reference name), zero-padded where `tp`
/// does not divide the dimension.
pub fn create_local_weight_with_padding(
    full: &HostTensor,
    partition_dim: usize,
    stride: usize,
    tp: usize,
    rank: usize,
) -> Result<HostTensor> {
    let info = TensorInfo { name: "full".into(), dtype: full.dtype(), shape: full.shape().to_vec() };
    partition_plan("local", &info, 0, partition_dim, stride, tp, rank)?.execute(&[&single("full", full)])
}

/// The plan of one rank's fused tensor: each member's shard along `partition_dim`, concatenated along the same
/// axis (`fuse_axis` must equal `partition_dim`, as in every layer the reference builds).
pub fn fused_plan(
    name: &str,
    members: &[TensorInfo],
    part: usize,
    partition_dim: usize,
    fuse_axis: usize,
    tp: usize,
    rank: usize,
) -> Result<TensorPlan> {
    check_tp(tp, rank)?;
    if fuse_axis != partition_dim {
        return Err(Error::spec(
            "FusedLinearsSpec",
            "fuse_axis",
            format!(
                "fuse axis {fuse_axis} differs from the partition dim {partition_dim}, which cannot be consolidated"
            ),
        ));
    }
    let first = members.first().ok_or_else(|| Error::spec("FusedLinearsSpec", "linear_names", "no member linears"))?;
    let mut blocks = Vec::new();
    let mut offset = 0;
    let mut shape = first.shape.clone();
    for m in members {
        let len = *m.shape.get(partition_dim).ok_or_else(|| {
            Error::Plan(format!("tensor {}: dim {partition_dim} out of range for shape {:?}", m.name, m.shape))
        })?;
        if len % tp != 0 {
            return Err(Error::spec(
                "FusedLinearsSpec",
                "original_dims",
                format!("{} has {len} along dim {partition_dim}, not divisible by tp {tp}", m.name),
            ));
        }
        if m.dtype != first.dtype {
            return Err(Error::DtypeMismatch {
                tensor: m.name.clone(),
                expected: first.dtype.to_string(),
                found: m.dtype.to_string(),
                file: None,
            });
        }
        let mut a = m.shape.clone();
        let mut b = first.shape.clone();
        a[partition_dim] = 0;
        b[partition_dim] = 0;
        if a != b {
            return Err(Error::ShapeMismatch {
                tensor: m.name.clone(),
                expected: first.shape.clone(),
                found: m.shape.clone(),
                file: None,
            });
        }
        let local = len / tp;
        push_block(
            &mut blocks,
            Block {
                src: Source { part, name: m.name.clone() },
                dim: partition_dim,
                src_offset: rank * local,
                dst_offset: offset,
                len: local,
            },
        );
        offset += local;
    }
    shape[partition_dim] = offset;
    Ok(TensorPlan { name: name.to_string(), dtype: first.dtype, shape, blocks, replicas: vec![] })
}

/// Rank `tp_rank`'s fused weight from the members' full weights (reference name and argument order).
pub fn create_local_fused_weight(
    tp_rank: usize,
    tp_size: usize,
    individual_weights: &[HostTensor],
    partition_dim: usize,
    fuse_axis: usize,
) -> Result<HostTensor> {
    let infos: Vec<TensorInfo> = individual_weights
        .iter()
        .enumerate()
        .map(|(i, w)| TensorInfo { name: i.to_string(), dtype: w.dtype(), shape: w.shape().to_vec() })
        .collect();
    let plan = fused_plan("fused", &infos, 0, partition_dim, fuse_axis, tp_size, tp_rank)?;
    let members: StateDict = individual_weights.iter().enumerate().map(|(i, w)| (i.to_string(), w.clone())).collect();
    plan.execute(&[&members])
}

/// The largest TP size accepted: far above any real tensor-parallel group, low enough that per-rank loops
/// and allocations stay bounded for hostile input.
pub const MAX_TP: usize = 1 << 12;

/// Checks `1 <= tp <= MAX_TP` and `rank < tp`.
pub fn check_tp(tp: usize, rank: usize) -> Result<()> {
    if tp == 0 {
        return Err(Error::spec("config", "tp_size", "must be at least 1"));
    }
    if tp > MAX_TP {
        return Err(Error::spec("config", "tp_size", format!("tp {tp} is above the supported maximum {MAX_TP}")));
    }
    if rank >= tp {
        return Err(Error::spec("config", "tp_rank", format!("rank {rank} is out of range for tp size {tp}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arange(rows: usize, cols: usize) -> HostTensor {
        let v: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        HostTensor::from_f32(vec![rows, cols], &v).unwrap()
    }

    #[test]
    fn uneven_vocab_is_zero_padded() {
        let w = arange(10, 1);
        let last = create_local_weight_with_padding(&w, 0, 1, 4, 3).unwrap();
        assert_eq!(last.shape(), &[3, 1]);
        assert_eq!(last.to_f32_vec(), vec![9., 0., 0.]);
    }

    #[test]
    fn stride_two_interleaves_pieces() {
        // 8 rows, tp 2, stride 2: pieces of 2 rows; rank 1 gets pieces 1 and 3.
        let w = arange(8, 1);
        let r1 = create_local_weight_with_padding(&w, 0, 2, 2, 1).unwrap();
        assert_eq!(r1.to_f32_vec(), vec![2., 3., 6., 7.]);
    }

    #[test]
    fn fused_weight_concatenates_member_shards() {
        let g = arange(4, 1);
        let u = HostTensor::from_f32(vec![4, 1], &[10., 11., 12., 13.]).unwrap();
        let r1 = create_local_fused_weight(1, 2, &[g, u], 0, 0).unwrap();
        assert_eq!(r1.to_f32_vec(), vec![2., 3., 12., 13.]);
    }

    #[test]
    fn tp_zero_is_an_error() {
        assert!(create_local_weight_with_padding(&arange(2, 2), 0, 1, 0, 0).is_err());
    }
}
