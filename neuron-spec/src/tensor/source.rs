//! [`TensorSource`]: anything tensors are read from by name (an HF checkpoint, a rank file, a state dict),
//! and [`TensorInfo`], a tensor's name, dtype and shape without its bytes.

use super::dtype::DType;
use super::host::{numel, HostTensor, StateDict};
use crate::error::{Error, Result};
use serde::Serialize;

/// Shape and dtype of a tensor, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// Size in bytes.
    pub fn nbytes(&self) -> usize {
        numel(&self.shape) * self.dtype.size()
    }
}

/// Looks up tensors by name: an HF checkpoint, a rank file, a state dict. `Sync`, so that tensors can be
/// computed on a helper thread while others are written.
pub trait TensorSource: Sync {
    /// The tensor's dtype and shape, if present.
    fn info(&self, name: &str) -> Option<TensorInfo>;
    /// The tensor (a zero-copy view where the source is memory-mapped).
    fn tensor(&self, name: &str) -> Result<HostTensor>;
    /// All tensor names, in the source's order.
    fn names(&self) -> Vec<String>;
    /// Indices `offset..offset + len` along `dim` of a tensor: what a plan block reads. Memory-mapped sources
    /// return a view of just those bytes where they are contiguous.
    fn read_slice(&self, name: &str, dim: usize, offset: usize, len: usize) -> Result<HostTensor> {
        self.tensor(name)?.narrow(dim, offset, len).map_err(|e| match e {
            Error::Tensor(m) => Error::Tensor(format!("tensor {name}: {m}")),
            other => other,
        })
    }
    /// Drops the resident pages of `name` where the source is memory-mapped (its bytes stay readable): plans
    /// call it once a tensor's blocks are all copied, so that strided reads do not fault the same pages in
    /// block after block. No effect elsewhere.
    fn release(&self, _name: &str) {}
    /// The LoRA adapters whose rank-local factors this source holds under adapter-named keys
    /// (`<module>.lora_A.<adapter>.weight`); plain checkpoints hold none. This is how a layer's
    /// `load_rank_tensors` learns which adapters to attach, without a tree walk of its own
    /// (see [`crate::lora::LoraRankSource`]).
    fn lora_adapters(&self) -> Vec<String> {
        Vec::new()
    }
    /// The scaling of `adapter`'s factors on the module at `module` (its rank-local path).
    fn lora_scaling(&self, _adapter: &str, _module: &str) -> Option<f64> {
        None
    }
}

impl TensorSource for StateDict {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.get(name).map(|t| TensorInfo { name: name.to_string(), dtype: t.dtype(), shape: t.shape().to_vec() })
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        self.get(name).cloned().ok_or_else(|| {
            let c: Vec<&str> = self.keys().map(String::as_str).collect();
            Error::key_mismatch("state dict", vec![name.to_string()], vec![], &c)
        })
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
    fn release(&self, name: &str) {
        if let Some(t) = self.get(name) {
            t.release();
        }
    }
}
