//! Rotary position embeddings as transformers 4.57 computes them (`modeling_rope_utils.py`): the `inv_freq`
//! of each `rope_type` (default, linear, dynamic, yarn, longrope, llama3) in f32, and the attention scaling
//! that multiplies cos and sin. Any other `rope_type`, or a key a type does not read, is refused by name.

use burn::tensor::{Device, Tensor, TensorData};
use neuron_spec::{Error, Result};
use serde_json::Value;
use std::f64::consts::PI;

/// The `rope_scaling` of a config.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// No scaling (`rope_scaling` null or `{"rope_type": "default"}`).
    Default,
    /// `inv_freq / factor`.
    Linear {
        /// The factor.
        factor: f64,
    },
    /// NTK-aware: the base grows once a sequence is longer than `max_position_embeddings`.
    Dynamic {
        /// The factor.
        factor: f64,
    },
    /// YaRN.
    Yarn {
        /// The factor.
        factor: f64,
        /// Explicit attention factor (else from `factor`, `mscale`, `mscale_all_dim`).
        attention_factor: Option<f64>,
        /// Ramp boundary (default 32).
        beta_fast: Option<f64>,
        /// Ramp boundary (default 1).
        beta_slow: Option<f64>,
        /// mscale.
        mscale: Option<f64>,
        /// mscale_all_dim.
        mscale_all_dim: Option<f64>,
        /// Pre-YaRN context (default `max_position_embeddings`).
        original_max_position_embeddings: Option<f64>,
        /// Whether the correction range is rounded out (default true).
        truncate: bool,
    },
    /// LongRoPE: per-frequency factors, short or long by sequence length.
    LongRope {
        /// Factors up to the original context.
        short_factor: Vec<f64>,
        /// Factors beyond it.
        long_factor: Vec<f64>,
        /// `factor` of the config (overridden by the position ratio when the config has
        /// `original_max_position_embeddings` at top level).
        factor: Option<f64>,
        /// Explicit attention factor.
        attention_factor: Option<f64>,
    },
    /// Llama 3.1's smooth interpolation.
    Llama3 {
        /// The factor.
        factor: f64,
        /// low_freq_factor.
        low_freq_factor: f64,
        /// high_freq_factor.
        high_freq_factor: f64,
        /// original_max_position_embeddings.
        original_max_position_embeddings: f64,
    },
}

/// Everything RoPE reads from a config.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// `rope_theta`.
    pub theta: f64,
    /// The rotary dimension (head_dim; `partial_rotary_factor` is refused by the config readers).
    pub dim: usize,
    /// `max_position_embeddings` (dynamic and longrope read it).
    pub max_position_embeddings: Option<f64>,
    /// Top-level `original_max_position_embeddings` (longrope reads it).
    pub original_max_position_embeddings: Option<f64>,
    /// The scaling.
    pub scaling: RopeScaling,
}

fn bad(field: &str, reason: String) -> Error {
    Error::spec("config", field, reason)
}

impl RopeScaling {
    /// Parses `rope_scaling` (`None` or null: default), refusing unknown types and keys.
    pub fn parse(v: Option<&Value>) -> Result<Self> {
        let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(RopeScaling::Default) };
        let m = v.as_object().ok_or_else(|| bad("rope_scaling", format!("must be an object, found {v}")))?;
        // transformers: rope_type, or the older `type`.
        let ty = m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str);
        let ty = ty.ok_or_else(|| bad("rope_scaling.rope_type", format!("missing in {v}")))?;
        let allowed: &[&str] = match ty {
            "default" => &[],
            "linear" | "dynamic" => &["factor"],
            "yarn" => &[
                "factor",
                "attention_factor",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "original_max_position_embeddings",
                "truncate",
            ],
            "longrope" => {
                &["short_factor", "long_factor", "factor", "attention_factor", "original_max_position_embeddings"]
            }
            "llama3" => &["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
            other => {
                return Err(bad(
                    "rope_scaling.rope_type",
                    format!(
                    "rope_type {other:?} is not implemented (default, linear, dynamic, yarn, longrope and llama3 are)"
                ),
                ))
            }
        };
        if let Some(k) =
            m.keys().find(|k| !matches!(k.as_str(), "rope_type" | "type") && !allowed.contains(&k.as_str()))
        {
            return Err(bad(&format!("rope_scaling.{k}"), format!("not implemented for rope_type {ty:?}")));
        }
        let num =
            |k: &str| -> Result<Option<f64>> {
                match m.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(x) => x.as_f64().filter(|f| f.is_finite()).map(Some).ok_or_else(|| {
                        bad(&format!("rope_scaling.{k}"), format!("must be a finite number, found {x}"))
                    }),
                }
            };
        let req = |k: &str| -> Result<f64> {
            num(k)?.ok_or_else(|| bad(&format!("rope_scaling.{k}"), format!("required for rope_type {ty:?}")))
        };
        let positive = |k: &str, x: f64| -> Result<f64> {
            if x > 0.0 {
                Ok(x)
            } else {
                Err(bad(&format!("rope_scaling.{k}"), format!("must be positive, found {x}")))
            }
        };
        let list = |k: &str| -> Result<Vec<f64>> {
            let a = m.get(k).and_then(Value::as_array).ok_or_else(|| {
                bad(&format!("rope_scaling.{k}"), format!("a list of numbers is required for rope_type {ty:?}"))
            })?;
            a.iter()
                .map(|x| x.as_f64().ok_or_else(|| bad(&format!("rope_scaling.{k}"), format!("not a number: {x}"))))
                .collect()
        };
        Ok(match ty {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: positive("factor", req("factor")?)? },
            "dynamic" => RopeScaling::Dynamic { factor: positive("factor", req("factor")?)? },
            "yarn" => RopeScaling::Yarn {
                factor: positive("factor", req("factor")?)?,
                attention_factor: num("attention_factor")?,
                beta_fast: num("beta_fast")?,
                beta_slow: num("beta_slow")?,
                mscale: num("mscale")?,
                mscale_all_dim: num("mscale_all_dim")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
                truncate: match m.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(x) => return Err(bad("rope_scaling.truncate", format!("must be a boolean, found {x}"))),
                },
            },
            "longrope" => RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                factor: num("factor")?,
                attention_factor: num("attention_factor")?,
            },
            _ => {
                let (lo, hi) = (req("low_freq_factor")?, req("high_freq_factor")?);
                if lo == hi {
                    return Err(bad("rope_scaling.high_freq_factor", "must differ from low_freq_factor".into()));
                }
                RopeScaling::Llama3 {
                    factor: positive("factor", req("factor")?)?,
                    low_freq_factor: positive("low_freq_factor", lo)?,
                    high_freq_factor: hi,
                    original_max_position_embeddings: positive(
                        "original_max_position_embeddings",
                        req("original_max_position_embeddings")?,
                    )?,
                }
            }
        })
    }
}

/// `1 / base^(2i / dim)` in f32, as `_compute_default_rope_parameters`.
fn default_inv_freq(base: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2).map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / dim as f32)).collect()
}

impl RopeConfig {
    /// Checks what the tables need (before any sequence is seen).
    pub fn validate(&self) -> Result<()> {
        if self.theta.is_nan() || self.theta <= 0.0 {
            return Err(bad("rope_theta", format!("must be positive, got {}", self.theta)));
        }
        if self.dim == 0 || self.dim % 2 == 1 {
            return Err(bad("head_dim", format!("RoPE needs an even head_dim, got {}", self.dim)));
        }
        let max_pos = |what: &str| {
            self.max_position_embeddings
                .filter(|m| *m > 0.0)
                .map(|_| ())
                .ok_or_else(|| bad("max_position_embeddings", format!("a positive value is required by {what} RoPE")))
        };
        match &self.scaling {
            RopeScaling::Dynamic { .. } => max_pos("dynamic")?,
            RopeScaling::Yarn { original_max_position_embeddings: None, .. } => max_pos("yarn")?,
            RopeScaling::LongRope { short_factor, long_factor, .. } => {
                max_pos("longrope")?;
                for (k, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if f.len() != self.dim / 2 {
                        return Err(bad(
                            &format!("rope_scaling.{k}"),
                            format!("has {} entries, head_dim / 2 is {}", f.len(), self.dim / 2),
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `(inv_freq, attention_scaling)` for a sequence of `seq_len` positions (dynamic and longrope depend on it).
    pub fn inv_freq(&self, seq_len: usize) -> (Vec<f32>, f64) {
        let dim = self.dim;
        let base = self.theta;
        match &self.scaling {
            RopeScaling::Default => (default_inv_freq(base, dim), 1.0),
            RopeScaling::Linear { factor } => {
                (default_inv_freq(base, dim).into_iter().map(|f| f / *factor as f32).collect(), 1.0)
            }
            RopeScaling::Dynamic { factor } => {
                // Recomputed only once the sequence is longer than max_position_embeddings (dynamic_rope_update).
                let max_pos = self.max_position_embeddings.unwrap_or(1.0);
                let seq = seq_len as f64;
                if seq <= max_pos {
                    return (default_inv_freq(base, dim), 1.0);
                }
                // transformers computes this with seq_len as a 0-d int tensor: every step in f32.
                let (f, d) = (*factor as f32, dim as f32);
                let grown = (f * seq_len as f32 / max_pos as f32 - (f - 1.0)).powf(d / (d - 2.0));
                let base = base as f32 * grown;
                ((0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / d)).collect(), 1.0)
            }
            RopeScaling::Yarn {
                factor,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                original_max_position_embeddings,
                truncate,
            } => {
                let factor = *factor;
                let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
                    (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => get_mscale(factor, *m) / get_mscale(factor, *a),
                    _ => get_mscale(factor, 1.0),
                });
                let beta_fast = beta_fast.filter(|b| *b != 0.0).unwrap_or(32.0);
                let beta_slow = beta_slow.filter(|b| *b != 0.0).unwrap_or(1.0);
                let omp = original_max_position_embeddings
                    .filter(|o| *o != 0.0)
                    .or(self.max_position_embeddings)
                    .unwrap_or(1.0);
                let d = dim as f64;
                let corr = |rot: f64| (d * (omp / (rot * 2.0 * PI)).ln()) / (2.0 * base.ln());
                let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                let pos_freqs: Vec<f32> =
                    (0..dim / 2).map(|i| (base as f32).powf((2 * i) as f32 / dim as f32)).collect();
                let span = (high - low) as f32;
                let inv = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let extrapolation = 1.0 / p;
                        let interpolation = 1.0 / (factor as f32 * p);
                        let ramp = ((i as f32 - low as f32) / span).clamp(0.0, 1.0);
                        let e = 1.0 - ramp;
                        interpolation * (1.0 - e) + extrapolation * e
                    })
                    .collect();
                (inv, attention)
            }
            RopeScaling::LongRope { short_factor, long_factor, factor, attention_factor } => {
                let max_pos = self.max_position_embeddings.unwrap_or(1.0);
                let (factor, omp) = match self.original_max_position_embeddings {
                    Some(o) if o > 0.0 => (Some(max_pos / o), o),
                    _ => (*factor, max_pos),
                };
                let attention = attention_factor.unwrap_or(match factor {
                    Some(f) if f > 1.0 => (1.0 + f.ln() / omp.ln()).sqrt(),
                    _ => 1.0,
                });
                let ext = if seq_len as f64 > omp { long_factor } else { short_factor };
                let inv = (0..dim / 2)
                    .map(|i| 1.0 / (ext[i] as f32 * (base as f32).powf((2 * i) as f32 / dim as f32)))
                    .collect();
                (inv, attention)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (f, lo, hi, old) =
                    (*factor as f32, *low_freq_factor, *high_freq_factor, *original_max_position_embeddings);
                let low_wavelen = (old / lo) as f32;
                let high_wavelen = (old / hi) as f32;
                let inv = default_inv_freq(base, dim)
                    .into_iter()
                    .map(|inv| {
                        let wavelen = (2.0 * PI) as f32 / inv;
                        let scaled = if wavelen > low_wavelen { inv / f } else { inv };
                        let smooth = (old as f32 / wavelen - lo as f32) / (hi - lo) as f32;
                        let smoothed = (1.0 - smooth) * scaled / f + smooth * scaled;
                        // transformers' `~(wavelen < high) * ~(wavelen > low)`, NaN included.
                        #[allow(clippy::neg_cmp_op_on_partial_ord)]
                        let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                        if medium {
                            smoothed
                        } else {
                            scaled
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
        }
    }
}

/// RoPE tables `[seq, head_dim]` for positions `0..seq`, with HF's layout (`cat(freqs, freqs)`), cos and sin
/// already multiplied by the attention scaling.
pub(crate) struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Rope {
    /// The tables of positions `start..start + seq` (the new tokens after a KV cache of `start`), with the
    /// frequencies of a sequence of `start + seq` positions, as transformers' `dynamic_rope_update` computes
    /// them at each cached step (the cached keys keep the rotation they were given).
    pub(crate) fn at(cfg: &RopeConfig, start: usize, seq: usize, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let (inv, scaling) = cfg.inv_freq(start + seq);
        let (half, d) = (cfg.dim / 2, cfg.dim);
        let scaling = scaling as f32;
        let mut cos = Vec::with_capacity(seq * d);
        let mut sin = Vec::with_capacity(seq * d);
        for p in start..start + seq {
            for j in 0..d {
                let f = p as f32 * inv[j % half];
                cos.push(f.cos() * scaling);
                sin.push(f.sin() * scaling);
            }
        }
        Ok(Self {
            cos: Tensor::from_data(TensorData::new(cos, [seq, d]), device),
            sin: Tensor::from_data(TensorData::new(sin, [seq, d]), device),
        })
    }

    /// `x·cos + rotate_half(x)·sin` for `x: [batch, heads, seq, head_dim]`.
    pub(crate) fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, d] = x.dims();
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone().unsqueeze::<4>() + rotated * self.sin.clone().unsqueeze::<4>()
    }
}
