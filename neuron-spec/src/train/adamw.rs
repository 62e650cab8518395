//! AdamW with `torch.optim.AdamW`'s semantics, over rank-local f32 tensors.
//!
//! Written here rather than taken from burn-optim because burn-optim 0.22's AdamW differs from torch's
//! (defaults eps 1e-5 and weight decay 1e-4, per-tensor norm clipping, its own order of operations) and
//! works on a burn module's gradients, while here the moments must be named rank tensors that a sharded
//! checkpoint stores and `reshard` moves like the parameters. The arithmetic follows torch 2.8's
//! single-tensor path (CPU): `p *= 1 - lr·wd`; `m = m + (1 − β1)(g − m)` (`lerp`); `v = β2·v + (1 − β2)·g²`;
//! `p -= (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)`, scalars computed in f64 and applied in f32.

use crate::error::{Error, Result};

/// The hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// `(β1, β2)`.
    pub betas: (f64, f64),
    /// Added to the denominator, outside the square root.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2.
    fn default() -> Self {
        Self { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-2 }
    }
}

impl AdamWConfig {
    /// Refuses values torch refuses (and non-finite ones).
    pub fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        let bad = |what: &str, v: f64| Err(Error::Argument(format!("AdamW: invalid {what} {v}")));
        if !self.lr.is_finite() || self.lr < 0.0 {
            return bad("lr", self.lr);
        }
        if !(0.0..1.0).contains(&b1) {
            return bad("beta1", b1);
        }
        if !(0.0..1.0).contains(&b2) {
            return bad("beta2", b2);
        }
        if !self.eps.is_finite() || self.eps < 0.0 {
            return bad("eps", self.eps);
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return bad("weight_decay", self.weight_decay);
        }
        Ok(())
    }

    /// [`AdamWConfig::update`] on up to `threads` threads (contiguous chunks): every element gets the same
    /// arithmetic, so the result is bit for bit the single-threaded one.
    pub fn update_threads(
        &self,
        t: u64,
        threads: usize,
        param: &mut [f32],
        grad: &[f32],
        exp_avg: &mut [f32],
        exp_avg_sq: &mut [f32],
    ) {
        const MIN_CHUNK: usize = 1 << 16;
        let n = param.len();
        let threads = threads.clamp(1, n.div_ceil(MIN_CHUNK).max(1));
        if threads == 1 || grad.len() != n || exp_avg.len() != n || exp_avg_sq.len() != n {
            return self.update(t, param, grad, exp_avg, exp_avg_sq);
        }
        let chunk = n.div_ceil(threads);
        std::thread::scope(|s| {
            let parts = param
                .chunks_mut(chunk)
                .zip(grad.chunks(chunk))
                .zip(exp_avg.chunks_mut(chunk))
                .zip(exp_avg_sq.chunks_mut(chunk));
            for (((p, g), m), v) in parts {
                s.spawn(move || self.update(t, p, g, m, v));
            }
        });
    }

    /// One update of `param` with `grad` at step `t` (1-based), moments updated in place.
    pub fn update(&self, t: u64, param: &mut [f32], grad: &[f32], exp_avg: &mut [f32], exp_avg_sq: &mut [f32]) {
        let (b1, b2) = self.betas;
        let decay = (1.0 - self.lr * self.weight_decay) as f32;
        let w1 = (1.0 - b1) as f32;
        let b2f = b2 as f32;
        let w2 = (1.0 - b2) as f32;
        let bc1 = 1.0 - b1.powf(t as f64);
        let bc2 = 1.0 - b2.powf(t as f64);
        let step_size = (self.lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let eps = self.eps as f32;
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(exp_avg.iter_mut()).zip(exp_avg_sq.iter_mut()) {
            *p *= decay;
            *m += w1 * (g - *m);
            *v = *v * b2f + w2 * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *p += -step_size * *m / denom;
        }
    }
}
