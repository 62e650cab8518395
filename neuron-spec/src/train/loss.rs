//! Megatron's vocab-parallel cross-entropy: each rank holds a slice of the vocabulary's logits and the full
//! logits are never gathered (a rank's memory for the loss scales as vocab / tp).

use crate::comm::{reduce_from_tp_region, Communicator};
use crate::error::{Error, Result};
use burn::tensor::{Int, Tensor, TensorData};

/// The mean next-token cross-entropy of a causal LM, as transformers computes it with `labels=input_ids`
/// (labels shifted by one, mean over the `batch × (seq − 1)` positions).
///
/// `local_logits` is `[batch, seq, n]`: this rank's vocabulary columns `[vocab_start, vocab_start + n)`,
/// where columns at or past `vocab_size` are padding and take no part. The max is all-gathered, the sum of
/// exponentials and the target logit are all-reduced (all-reduce forward, identity backward), so every rank
/// returns the same loss `[1]` and the gradient of its own logits.
pub fn vocab_parallel_causal_lm_loss<C: Communicator>(
    local_logits: Tensor<3>,
    input_ids: &[Vec<i64>],
    vocab_start: usize,
    vocab_size: usize,
    comm: &C,
) -> Result<Tensor<1>> {
    let [b, s, n] = local_logits.dims();
    if b != input_ids.len() || input_ids.iter().any(|r| r.len() != s) {
        return Err(Error::InputData(format!("loss: logits are [{b}, {s}, {n}] but the ids are not [{b}, {s}]")));
    }
    if s < 2 {
        return Err(Error::InputData(format!("loss: sequences of {s} token(s) have no next token to predict")));
    }
    let device = local_logits.device();
    let rows = b * (s - 1);
    let logits = local_logits.narrow(1, 0, s - 1).reshape([rows, n]);
    // The targets this rank holds (the others are masked out of the gather).
    let mut idx = Vec::with_capacity(rows);
    let mut hit = Vec::with_capacity(rows);
    for row in input_ids {
        for &t in &row[1..] {
            if t < 0 || t as usize >= vocab_size {
                return Err(Error::InputData(format!("label {t} is outside the vocabulary [0, {vocab_size})")));
            }
            let t = t as usize;
            let local = t >= vocab_start && t < vocab_start + n;
            idx.push(if local { (t - vocab_start) as i64 } else { 0 });
            hit.push(if local { 1f32 } else { 0f32 });
        }
    }
    // A constant shift (the softmax does not change): the max over every rank's columns.
    let local_max = logits.clone().detach().max_dim(1);
    let max = comm.all_gather(local_max, 1)?.max_dim(1);
    let shifted = logits - max;
    let valid = vocab_size.saturating_sub(vocab_start).min(n);
    let sum_exp = if valid == 0 {
        Tensor::<2>::zeros([rows, 1], &device)
    } else {
        let v = if valid < n { shifted.clone().narrow(1, 0, valid) } else { shifted.clone() };
        v.exp().sum_dim(1)
    };
    let sum_exp = reduce_from_tp_region(sum_exp, comm)?;
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [rows, 1]), &device);
    let hit = Tensor::<2>::from_data(TensorData::new(hit, [rows, 1]), &device);
    let target = reduce_from_tp_region(shifted.gather(1, idx) * hit, comm)?;
    Ok((sum_exp.log() - target).mean())
}
