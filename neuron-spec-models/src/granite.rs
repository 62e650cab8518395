//! The Granite family (`model_type` granite): the Llama decoder of `model.rs` with four multipliers from the
//! config: the embeddings are multiplied by `embedding_multiplier`, both residual branches by
//! `residual_multiplier`, attention scores by `attention_multiplier` (instead of `1/√head_dim`), and the
//! logits divided by `logits_scaling`. No extra tensors: the config alone changes the math.

use crate::config::{Family, GraniteScales, ModelConfig, Variants};
use neuron_spec::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The keys of transformers' read set a Granite config may set beyond `IMPLEMENTED_ANY_FAMILY`.
pub const GRANITE_FIELDS: &[&str] =
    &["embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"];

/// Granite: Llama with multipliers from the config.
pub const GRANITE: Family = Family {
    model_type: "granite",
    fields: GRANITE_FIELDS,
    variants: Variants::LLAMA,
    read: |v, path, cfg: &mut ModelConfig| {
        cfg.scales = GraniteScales::read(v, path)?;
        Ok(())
    },
};

impl GraniteScales {
    /// Reads the multipliers (GraniteConfig's defaults: 1.0 each).
    pub fn read(v: &Value, path: &Path) -> Result<Self> {
        let num = |k: &str| -> Result<f64> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(1.0),
                Some(x) => x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
                    Error::spec(&path.display().to_string(), k, format!("must be a finite number, found {x}"))
                }),
            }
        };
        let logits_scaling = num("logits_scaling")?;
        if logits_scaling == 0.0 {
            return Err(Error::spec(&path.display().to_string(), "logits_scaling", "must not be 0"));
        }
        Ok(Self {
            embedding_multiplier: num("embedding_multiplier")?,
            residual_multiplier: num("residual_multiplier")?,
            attention_multiplier: Some(num("attention_multiplier")?),
            logits_scaling,
        })
    }
}
