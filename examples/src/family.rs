//! The layout (`shard` / `plan`) of an HF checkpoint directory, whatever its family, and the HF tensor list of a
//! config, both read off the lazily built model.

use crate::config::{model_type_of, ModelConfig};
use crate::model::{layout, QkvLayout};
use neuron_spec::{CheckpointMetadata, DType, Error, HostTensor, Result, TensorInfo, TensorSource};
use std::path::Path;

/// [`layout`] of the HF checkpoint directory `dir` (its `config.json`).
pub fn layout_of_dir(dir: &Path, tp: usize, qkv: QkvLayout) -> Result<CheckpointMetadata> {
    if model_type_of(dir).as_deref() == Some("phi3") {
        return crate::phi3::phi3_layout(&crate::Phi3Config::read(&dir.join("config.json"))?, tp, qkv);
    }
    layout(&ModelConfig::read_dir(dir)?, tp, qkv)
}

/// Rank-local shapes without data: what [`hf_tensor_infos`] feeds the inverse layout.
struct Shapes(Vec<TensorInfo>);

impl TensorSource for Shapes {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.0.iter().find(|i| i.name == name).cloned()
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        Err(Error::Invalid(format!("{name}: a shape-only source holds no data")))
    }
    fn names(&self) -> Vec<String> {
        self.0.iter().map(|i| i.name.clone()).collect()
    }
}

/// The HF tensors (names and shapes, in `dtype`) a checkpoint of this config holds, derived from the model's
/// own layout at tp 1 (so a generator never keeps a second list of names).
pub fn hf_tensor_infos(cfg: &ModelConfig, dtype: DType) -> Result<Vec<TensorInfo>> {
    let meta = layout(cfg, 1, QkvLayout::Separate)?;
    let mut local = Vec::with_capacity(meta.parameters.len());
    for (name, p) in &meta.parameters {
        let shape = p.shape.clone().ok_or_else(|| Error::Invalid(format!("{name}: the layout records no shape")))?;
        local.push(TensorInfo { name: name.clone(), dtype, shape });
    }
    neuron_spec::model::original_infos(&meta, &Shapes(local), 1)
}
