//! `x·W + b` for every layer: burn's `linear`, except for an untracked input (inference), where
//! * the leading dims are folded into the rows of one 2-D matmul: burn's `linear` keeps a single batch as a
//!   batched matmul and reshapes the weight to 3-D for it, which copies a strided weight (the tied lm_head's
//!   transposed embedding: 113 MB per token on a 49152 × 576 vocabulary);
//! * a one-row product (a decode step) runs its output columns in parallel on the rayon pool: gemm computes it
//!   as a matrix-vector product on the calling thread whatever the parallelism asked, so generation would
//!   read every weight with one core. Split by columns, each output is the same dot product in the same order.

use burn::tensor::Tensor;

/// Output columns below which a split does not pay for the pool's wake-up.
const MIN_COLUMNS_PER_PART: usize = 256;

/// Column parts are multiples of this (whole cache lines of f32, whole SIMD registers).
const ALIGN: usize = 16;

/// `x·weight (+ bias)` as `burn::tensor::module::linear` (`weight` is `[in, out]`, any strides). `ranks`: how
/// many ranks of the group share this process's pool (the TP size on threads): a one-row product is split in
/// `threads / ranks` parts, so ranks on threads are not split further.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>, ranks: usize) -> Tensor<D> {
    if D < 2 || x.is_tracked() || weight.is_tracked() || bias.as_ref().is_some_and(|b| b.is_tracked()) {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let dims = x.dims();
    let [k, n] = weight.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let x2 = x.reshape([rows, k]);
    let threads = rayon::current_num_threads() / ranks.max(1);
    let parts = if rows == 1 { threads.min(n / MIN_COLUMNS_PER_PART) } else { 1 };
    let product = |x2: Tensor<2>, w: Tensor<2>, b: Option<Tensor<1>>| {
        let y = x2.matmul(w);
        match b {
            Some(b) => y + b.unsqueeze(),
            None => y,
        }
    };
    let y = if parts < 2 {
        product(x2, weight, bias)
    } else {
        let width = n.div_ceil(parts).div_ceil(ALIGN) * ALIGN;
        let ranges: Vec<(usize, usize)> = (0..n).step_by(width).map(|start| (start, width.min(n - start))).collect();
        // The calling thread computes the first part while the pool computes the others: it does not sleep
        // while the pool works, and the pool's idle threads stay asleep.
        let part = |&(start, len): &(usize, usize)| {
            let b = bias.as_ref().map(|b| b.clone().narrow(0, start, len));
            product(x2.clone(), weight.clone().narrow(1, start, len), b)
        };
        let mut outs: Vec<Option<Tensor<2>>> = vec![None; ranges.len()];
        rayon::in_place_scope(|s| {
            let (first, rest) = outs.split_at_mut(1);
            for (slot, r) in rest.iter_mut().zip(&ranges[1..]) {
                let part = &part;
                s.spawn(move |_| *slot = Some(part(r)));
            }
            first[0] = Some(part(&ranges[0]));
        });
        let outs: Vec<Tensor<2>> = outs.into_iter().flatten().collect();
        Tensor::cat(outs, 1)
    };
    let mut out = dims;
    out[D - 1] = n;
    y.reshape(out)
}
