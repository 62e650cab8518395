//! Synthetic checkpoints for benchmarks and memory tests: random bf16 weights in HF multi-file form, generated
//! one tensor at a time, for a tensor list the caller derives from its model.

use crate::error::{Error, Result};
use crate::format::write_hf_checkpoint;
use crate::tensor::DType;
use crate::tensor::HostTensor;
use crate::tensor::TensorInfo;
use std::path::Path;

/// The model's dimensions.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Hidden size.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// kv heads.
    pub kv: usize,
    /// MLP size.
    pub inter: usize,
    /// Vocabulary.
    pub vocab: usize,
}

impl Shape {
    /// The HF `config.json` of a Llama with these dimensions (bf16, untied).
    pub fn llama_config(&self) -> serde_json::Value {
        let s = self;
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": s.hidden,
            "intermediate_size": s.inter, "num_attention_heads": s.heads, "num_key_value_heads": s.kv,
            "num_hidden_layers": s.layers, "vocab_size": s.vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": false, "head_dim": s.hidden / s.heads.max(1), "dtype": "bfloat16"
        })
    }
}

/// Writes `config` as `config.json` and random bf16 weights for `tensors` into `dir` (HF multi-file form, one
/// tensor at a time); returns the parameter count. The tensor list comes from the model's own layout (the
/// examples crate's `hf_tensor_infos`), so this module keeps no list of names. Weights are N(0, ~0.02)-ish,
/// 1-D tensors (norms) in [1, 2).
pub fn generate(dir: &Path, config: &serde_json::Value, tensors: &[TensorInfo], max_file_size: u64) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::Serialization(e.to_string()))?;
    crate::format::write_file_synced(&dir.join("config.json"), text.as_bytes())?;
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|i| TensorInfo { name: i.name.clone(), dtype: DType::BF16, shape: i.shape.clone() })
        .collect();
    let params: u64 = infos.iter().map(|i| i.shape.iter().product::<usize>() as u64).sum();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    write_hf_checkpoint(dir, &infos, Some(max_file_size), &mut |info| {
        let n: usize = info.shape.iter().product();
        let norm = info.shape.len() == 1;
        let mut bytes = Vec::with_capacity(n * 2);
        for _ in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // bf16 with exponent 2^-9..2^-6 and random sign/mantissa; norms in [1, 2).
            let bits: u16 = if norm {
                0x3F80 | (state as u16 & 0x7F)
            } else {
                ((state >> 32) as u16 & 0x8000) | (0x3B00 + ((state >> 40) as u16 & 0x3) * 0x80) | (state as u16 & 0x7F)
            };
            bytes.extend_from_slice(&bits.to_le_bytes());
        }
        Ok(vec![HostTensor::new(DType::BF16, info.shape.clone(), bytes)?])
    })?;
    Ok(params)
}
