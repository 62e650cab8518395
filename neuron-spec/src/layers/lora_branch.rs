//! LoRA branches of the parallel layers.
//!
//! A column- or row-parallel linear holds burn's own [`LoraAdapter`] per adapter (`a: [in_local, R]`,
//! `b: [R, out_local]`, `scale`), the layout `Module::apply_lora` gives a weight. The branch is computed as peft
//! does, `y = x·W + scale·(x·a)·b`, rather than through burn's weight reparameterization (`W + scale·a·b`)
//! because a layer here carries several named adapters side by side (a `Param` holds one), the unfused GQA layer
//! shares one A between three weights, and the factors are loaded from a checkpoint rather than initialized.
//! On a row-parallel layer `a` holds this rank's input rows and `b` is whole, so the partial products summed by
//! the all-reduce add up to `scale·(x·A)·B`.

use super::{lazy_zeros, load_linear_weight, pname, save_linear_weight};
use crate::error::{Error, Result};
use crate::tensor::StateDict;
use crate::tensor::TensorSource;
use burn::module::{LoraAdapter, Module, Param};
use burn::tensor::{Device, Tensor};

/// One adapter on a column- or row-parallel linear.
#[derive(Module, Debug)]
pub struct LoraBranch {
    /// The factors and scaling.
    pub factors: LoraAdapter,
    /// The adapter name.
    #[module(skip)]
    pub adapter: String,
}

impl LoraBranch {
    /// `scale·(x·a)·b`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.up(self.down(x))
    }

    /// `x·a`.
    pub fn down<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::linear(x, self.factors.a.val(), None)
    }

    /// `scale·h·b`.
    pub fn up<const D: usize>(&self, h: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::linear(h, self.factors.b.val(), None).mul_scalar(self.factors.scale)
    }
}

/// `prefix.lora_X.<adapter>.weight`.
pub(crate) fn lora_name(prefix: &str, factor: &str, adapter: &str, param: &str) -> String {
    pname(prefix, &format!("{factor}.{adapter}.{param}"))
}

/// The rank of `adapter`'s factors at `prefix` (rows of its HF-oriented A), if `src` holds them.
fn rank_of(src: &dyn TensorSource, prefix: &str, adapter: &str) -> Option<usize> {
    src.info(&lora_name(prefix, "lora_A", adapter, "weight")).and_then(|i| i.shape.first().copied())
}

fn scaling(src: &dyn TensorSource, prefix: &str, adapter: &str) -> Result<f64> {
    src.lora_scaling(adapter, prefix).ok_or_else(|| {
        Error::lora(adapter, format!("the source holds LoRA factors for {prefix} but no scaling for them"))
    })
}

/// An HF `[out, in]` factor loaded as a burn `[in, out]` parameter.
fn factor(src: &dyn TensorSource, name: &str, out: usize, inp: usize, device: &Device) -> Result<Param<Tensor<2>>> {
    load_linear_weight(src, name, &lazy_zeros([inp, out], device), out, inp, device)
}

/// The branches of every adapter `src` holds for the linear at `prefix` (HF A `[R, in_local]`, B `[out_local, R]`).
pub(crate) fn load_branches(
    src: &dyn TensorSource,
    prefix: &str,
    in_local: usize,
    out_local: usize,
    device: &Device,
) -> Result<Vec<LoraBranch>> {
    let mut v = Vec::new();
    for adapter in src.lora_adapters() {
        let Some(r) = rank_of(src, prefix, &adapter) else { continue };
        let a = factor(src, &lora_name(prefix, "lora_A", &adapter, "weight"), r, in_local, device)?;
        let b = factor(src, &lora_name(prefix, "lora_B", &adapter, "weight"), out_local, r, device)?;
        let scale = scaling(src, prefix, &adapter)?;
        v.push(LoraBranch { factors: LoraAdapter { a, b, scale }, adapter });
    }
    Ok(v)
}

/// Saves branches as `prefix.lora_A.<adapter>.weight` `[R, in_local]` and `lora_B` `[out_local, R]`.
pub(crate) fn save_branches(branches: &[LoraBranch], prefix: &str, out: &mut StateDict) -> Result<()> {
    for b in branches {
        save_linear_weight(&b.factors.a, &lora_name(prefix, "lora_A", &b.adapter, "weight"), out)?;
        save_linear_weight(&b.factors.b, &lora_name(prefix, "lora_B", &b.adapter, "weight"), out)?;
    }
    Ok(())
}

/// One adapter on the GQA q/k/v layer: one A shared by q, k and v, and B as the weights are laid out (one
/// fused `b_qkv`, or `b_q`/`b_k`/`b_v`), each `[R, rows_local]`.
#[derive(Module, Debug)]
pub struct GqaLoraBranch {
    /// `[hidden, R]`.
    pub a: Param<Tensor<2>>,
    /// Fused `[R, q + 2·kv]`.
    pub b_qkv: Option<Param<Tensor<2>>>,
    /// `[R, q_local]`.
    pub b_q: Option<Param<Tensor<2>>>,
    /// `[R, kv_local]`.
    pub b_k: Option<Param<Tensor<2>>>,
    /// `[R, kv_local]`.
    pub b_v: Option<Param<Tensor<2>>>,
    /// `alpha / r` (or `alpha / sqrt(r)`) of the adapter.
    #[module(skip)]
    pub scale: f64,
    /// The adapter name.
    #[module(skip)]
    pub adapter: String,
}

impl GqaLoraBranch {
    /// `x·a`, shared by q, k and v.
    pub fn down(&self, x: Tensor<3>) -> Tensor<3> {
        burn::tensor::module::linear(x, self.a.val(), None)
    }

    /// `scale·h·b` for one of the B factors.
    pub fn up(&self, h: Tensor<3>, b: &Option<Param<Tensor<2>>>, what: &str) -> Result<Tensor<3>> {
        let b = b.as_ref().ok_or_else(|| Error::lora(&self.adapter, format!("the GQA LoRA branch has no {what}")))?;
        Ok(burn::tensor::module::linear(h, b.val(), None).mul_scalar(self.scale))
    }

    /// The B factors present, with their names and local rows.
    fn bs(&self) -> Vec<(&'static str, &Param<Tensor<2>>)> {
        [("weight_qkv", &self.b_qkv), ("weight_q", &self.b_q), ("weight_k", &self.b_k), ("weight_v", &self.b_v)]
            .into_iter()
            .filter_map(|(n, b)| b.as_ref().map(|b| (n, b)))
            .collect()
    }
}

/// The GQA branches `src` holds at `prefix`; `rows` lists `(B suffix, local rows)` of the layout.
pub(crate) fn load_gqa_branches(
    src: &dyn TensorSource,
    prefix: &str,
    hidden: usize,
    rows: &[(&str, usize)],
    device: &Device,
) -> Result<Vec<GqaLoraBranch>> {
    let mut v = Vec::new();
    for adapter in src.lora_adapters() {
        let Some(r) = rank_of(src, prefix, &adapter) else { continue };
        let a = factor(src, &lora_name(prefix, "lora_A", &adapter, "weight"), r, hidden, device)?;
        let mut branch = GqaLoraBranch {
            a,
            b_qkv: None,
            b_q: None,
            b_k: None,
            b_v: None,
            scale: scaling(src, prefix, &adapter)?,
            adapter: adapter.clone(),
        };
        for (suffix, n) in rows {
            let b = Some(factor(src, &lora_name(prefix, "lora_B", &adapter, suffix), *n, r, device)?);
            match *suffix {
                "weight_qkv" => branch.b_qkv = b,
                "weight_q" => branch.b_q = b,
                "weight_k" => branch.b_k = b,
                _ => branch.b_v = b,
            }
        }
        v.push(branch);
    }
    Ok(v)
}

/// Saves GQA branches as `prefix.lora_A.<adapter>.weight` and `prefix.lora_B.<adapter>.weight_qkv` (or `_q/_k/_v`).
pub(crate) fn save_gqa_branches(branches: &[GqaLoraBranch], prefix: &str, out: &mut StateDict) -> Result<()> {
    for br in branches {
        save_linear_weight(&br.a, &lora_name(prefix, "lora_A", &br.adapter, "weight"), out)?;
        for (n, b) in br.bs() {
            save_linear_weight(b, &lora_name(prefix, "lora_B", &br.adapter, n), out)?;
        }
    }
    Ok(())
}
