//! Which query heads a TP rank owns under GQA with kv heads tiled `kv_size_multiplier` times: the reference's
//! `compute_query_indices_for_rank`, used by the layout's `QueryHeads` index map and the GQA spec.

use crate::error::{Error, Result};
use crate::plan::split::check_tp;

/// The spec these checks are reported under.
pub(crate) const CLASS_NAME: &str = "GQAQKVColumnParallelLinearSpec";

/// The global query-head indices rank `tp_rank` holds, in local order (reference semantics, port of
/// its torch code).
pub(crate) fn query_indices_for_rank(
    tp_size: usize,
    tp_rank: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    kv_size_multiplier: usize,
) -> Result<Vec<usize>> {
    check_tp(tp_size, tp_rank)?;
    let c = CLASS_NAME;
    let (h, k, m) = (num_attention_heads, num_key_value_heads, kv_size_multiplier);
    check_heads(h, k)?;
    if m == 0 || h % tp_size != 0 {
        return Err(Error::spec(
            c,
            "num_attention_heads",
            format!("{h} heads, {k} kv heads and tp {tp_size} are inconsistent"),
        ));
    }
    let heads_per_rank = h / tp_size;
    let kv_per_rank = k.saturating_mul(m) / tp_size;
    if heads_per_rank.checked_rem(kv_per_rank) != Some(0) {
        return Err(Error::spec(
            c,
            "kv_size_multiplier",
            format!("{m} gives {kv_per_rank} kv heads per rank for {heads_per_rank} query heads"),
        ));
    }
    let group = h / k;
    let group_per_rank = heads_per_rank / kv_per_rank;
    if group.checked_rem(group_per_rank) != Some(0) {
        return Err(Error::spec(
            c,
            "kv_size_multiplier",
            format!("query groups of {group} cannot be split into {group_per_rank}"),
        ));
    }
    // keys_indices = repeat_interleave(arange(k).repeat(m), group_per_rank), chunked in tp pieces.
    let keys: Vec<usize> = (0..m).flat_map(|_| 0..k).flat_map(|x| std::iter::repeat_n(x, group_per_rank)).collect();
    let keys_chunk = chunk(&keys, tp_size, tp_rank)?;
    // shift_within_query_group = repeat_interleave(arange(0, group, group_per_rank), nq_before), chunked.
    let ranks_for_all_kv = k / kv_per_rank;
    let nq_before = ranks_for_all_kv * heads_per_rank;
    let shifts: Vec<usize> =
        (0..group).step_by(group_per_rank).flat_map(|x| std::iter::repeat_n(x, nq_before)).collect();
    let shift_chunk = chunk(&shifts, tp_size, tp_rank)?;
    let mut out = Vec::with_capacity(heads_per_rank);
    for idx in 0..kv_per_rank {
        for q in 0..group_per_rank {
            let s = idx * group_per_rank + q;
            let (Some(key), Some(shift)) = (keys_chunk.get(s), shift_chunk.get(s)) else {
                return Err(Error::spec(
                    c,
                    "kv_size_multiplier",
                    format!("rank {tp_rank} runs out of query slots with multiplier {m}"),
                ));
            };
            out.push(q + key * group + shift);
        }
    }
    Ok(out)
}

/// The largest head count accepted: far above any real model, low enough that the per-head checks and
/// index lists stay small for hostile metadata.
pub const MAX_HEADS: usize = 1 << 12;

/// Heads and kv heads: at least one, at most [`MAX_HEADS`], kv heads dividing heads.
pub(crate) fn check_heads(h: usize, k: usize) -> Result<()> {
    let c = CLASS_NAME;
    if h == 0 {
        return Err(Error::spec(c, "num_attention_heads", "must be at least 1"));
    }
    if h > MAX_HEADS {
        return Err(Error::spec(c, "num_attention_heads", format!("{h} is above the supported maximum {MAX_HEADS}")));
    }
    if h.checked_rem(k) != Some(0) {
        return Err(Error::spec(c, "num_key_value_heads", format!("{k} does not divide num_attention_heads {h}")));
    }
    Ok(())
}

/// Torch's `chunk(v, n)[i]`: pieces of `ceil(len / n)`.
fn chunk(v: &[usize], n: usize, i: usize) -> Result<&[usize]> {
    let size = v.len().div_ceil(n.max(1)).max(1);
    let start = i * size;
    if start > v.len() {
        return Err(Error::spec(CLASS_NAME, "kv_size_multiplier", format!("rank {i} gets no chunk")));
    }
    Ok(&v[start..(start + size).min(v.len())])
}
