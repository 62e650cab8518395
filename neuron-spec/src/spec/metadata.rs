//! Parameter metadata that makes a sharded checkpoint self-describing (reference: `mp_metadata_pp_rank_0.json`).

use crate::error::{Error, Result};
use crate::plan::split::MAX_TP;
use crate::spec::ModelWeightTransformationSpecs;
use crate::tensor::DType;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The metadata format this crate writes. Files without `format_version` come from the reference.
pub const FORMAT_VERSION: u32 = 1;

/// TP attributes of one parameter (reference: `get_tensor_model_parallel_attributes`), plus its global
/// unpadded shape and dtype.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterMetadata {
    /// Whether the parameter is sharded across ranks.
    pub tensor_model_parallel: bool,
    /// The sharded dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_dim: Option<usize>,
    /// The interleaving stride of the shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_stride: Option<usize>,
    /// Number of shards (the TP size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_partitions: Option<usize>,
    /// The global shape before padding (ours; absent in the reference's files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<usize>>,
    /// The dtype (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
}

impl ParameterMetadata {
    /// A replicated parameter.
    pub fn replicated() -> Self {
        Self {
            tensor_model_parallel: false,
            partition_dim: None,
            partition_stride: None,
            num_partitions: None,
            shape: None,
            dtype: None,
        }
    }

    /// A parameter sharded along `dim` with `stride` over `tp` ranks.
    pub fn parallel(dim: usize, stride: usize, tp: usize) -> Self {
        Self {
            tensor_model_parallel: true,
            partition_dim: Some(dim),
            partition_stride: Some(stride),
            num_partitions: Some(tp),
            shape: None,
            dtype: None,
        }
    }
}

/// The whole checkpoint metadata: parameters and transformation specs (reference shape), plus our fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// Our format version; `None` for files the reference wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_version: Option<u32>,
    /// The TP size (ours; otherwise inferred from `num_partitions` and the specs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp_size: Option<usize>,
    /// Per rank-local parameter name.
    pub parameters: IndexMap<String, ParameterMetadata>,
    /// Per custom module, its specs.
    pub model_weight_transformation_specs: Vec<ModelWeightTransformationSpecs>,
    /// Size and checksum of each rank file, in rank order (ours).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_files: Vec<RankFileEntry>,
}

/// A rank file's name, size and xxh3-64 checksum, so a damaged file is named before it is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankFileEntry {
    /// File name under `shards/model/`.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// xxh3-64, lowercase hex.
    pub xxh3_64: String,
}

impl CheckpointMetadata {
    /// Parses metadata JSON; `path` names the file in errors. Unknown fields are ignored.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let m: Self = serde_json::from_str(text)
            .map_err(|e| Error::Metadata { path: path.to_path_buf(), reason: e.to_string() })?;
        if let Some(v) = m.format_version {
            if v > FORMAT_VERSION {
                return Err(Error::Metadata {
                    path: path.to_path_buf(),
                    reason: format!(
                        "format_version {v} is newer than this build supports ({FORMAT_VERSION}); upgrade neuron-spec"
                    ),
                });
            }
        }
        Ok(m)
    }

    /// Reads metadata from a file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Serialization(e.to_string()))
    }

    /// The TP size: ours, or the reference's `num_partitions` / spec `tp_size` (which must agree).
    pub fn tp_size(&self, path: &Path) -> Result<usize> {
        let mut found: Vec<usize> = self.tp_size.into_iter().collect();
        found.extend(self.parameters.values().filter(|p| p.tensor_model_parallel).filter_map(|p| p.num_partitions));
        found.extend(self.model_weight_transformation_specs.iter().flat_map(|m| m.specs.iter().map(|s| s.tp_size())));
        let Some(first) = found.first().copied() else {
            // Nothing is sharded: a tp-1 checkpoint.
            return Ok(1);
        };
        if let Some(other) = found.iter().find(|t| **t != first) {
            return Err(Error::Metadata {
                path: path.to_path_buf(),
                reason: format!("inconsistent tp sizes {first} and {other}"),
            });
        }
        if first == 0 || first > MAX_TP {
            return Err(Error::Metadata {
                path: path.to_path_buf(),
                reason: format!("tp size {first} is out of range (1 to {MAX_TP})"),
            });
        }
        Ok(first)
    }

    /// Every spec with its module path.
    pub fn specs(&self) -> impl Iterator<Item = (&str, &crate::spec::Spec)> {
        self.model_weight_transformation_specs
            .iter()
            .flat_map(|m| m.specs.iter().map(move |s| (m.module_fully_qualified_name.as_str(), s)))
    }
}
