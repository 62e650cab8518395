//! Synthetic checkpoints (benchmarks, memory tests) whose tensor names and shapes come from the model's own
//! layout: [`neuron_spec::format::synthetic`] writes random bf16 values for [`crate::hf_tensor_infos`].

use crate::config::ModelConfig;
use crate::family::hf_tensor_infos;
use neuron_spec::format::synthetic::Shape;
use neuron_spec::{DType, Error, Result};
use std::path::Path;

/// Writes a synthetic Llama of `shape` into `dir` (`config.json` and bf16 weights in files of at most
/// `max_file_size` bytes); returns the parameter count.
pub fn generate(dir: &Path, shape: &Shape, max_file_size: u64) -> Result<u64> {
    let config = shape.llama_config();
    let cfg: crate::config::LlamaConfig =
        serde_json::from_value(config.clone()).map_err(|e| Error::Serialization(format!("synthetic config: {e}")))?;
    let tensors = hf_tensor_infos(&ModelConfig::from(cfg), DType::BF16)?;
    neuron_spec::format::synthetic::generate(dir, &config, &tensors, max_file_size)
}
