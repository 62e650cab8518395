//! [`LoraRankSource`]: one rank's base tensors plus the rank-local factors of any number of adapters, which the
//! parallel layers read in `load_rank_tensors` to attach their LoRA branches.

use crate::error::{Error, Result};
use crate::tensor::{HostTensor, StateDict};
use crate::tensor::{TensorInfo, TensorSource};
use indexmap::IndexMap;

/// One adapter's rank-local factors (names without the adapter: `<module>.lora_A.weight`, as on disk) and its
/// per-module scalings.
#[derive(Debug, Clone)]
pub struct LoraRankAdapter {
    /// The adapter name.
    pub name: String,
    /// The rank-local factors.
    pub tensors: StateDict,
    /// Scaling per TP module path.
    pub scalings: IndexMap<String, f64>,
}

/// A rank's base tensors and adapters, seen as one source whose LoRA names carry the adapter
/// (`<module>.lora_A.<adapter>.weight`), as the parameters of a LoRA model are named.
pub struct LoraRankSource<'a> {
    base: &'a dyn TensorSource,
    adapters: Vec<LoraRankAdapter>,
}

impl<'a> LoraRankSource<'a> {
    /// `base` with `adapters` (distinct names).
    pub fn new(base: &'a dyn TensorSource, adapters: Vec<LoraRankAdapter>) -> Result<Self> {
        for (i, a) in adapters.iter().enumerate() {
            super::check_adapter_name(&a.name)?;
            if adapters[..i].iter().any(|b| b.name == a.name) {
                return Err(Error::lora(&a.name, "two adapters have this name"));
            }
        }
        Ok(Self { base, adapters })
    }

    fn split(&self, name: &str) -> Option<(&LoraRankAdapter, String)> {
        let adapter = super::get_adapter_name(name)?;
        let a = self.adapters.iter().find(|a| a.name == adapter)?;
        Some((a, super::remove_adapter_name(name)))
    }
}

impl TensorSource for LoraRankSource<'_> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        match self.split(name) {
            Some((a, bare)) => a.tensors.info(&bare).map(|i| TensorInfo { name: name.to_string(), ..i }),
            None => self.base.info(name),
        }
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        match self.split(name) {
            Some((a, bare)) => a.tensors.tensor(&bare),
            None => self.base.tensor(name),
        }
    }
    fn names(&self) -> Vec<String> {
        let mut v = self.base.names();
        for a in &self.adapters {
            v.extend(a.tensors.keys().map(|n| super::insert_adapter_name(n, &a.name)));
        }
        v
    }
    fn release(&self, name: &str) {
        match self.split(name) {
            Some((a, bare)) => a.tensors.release(&bare),
            None => self.base.release(name),
        }
    }
    fn lora_adapters(&self) -> Vec<String> {
        self.adapters.iter().map(|a| a.name.clone()).collect()
    }
    fn lora_scaling(&self, adapter: &str, module: &str) -> Option<f64> {
        self.adapters.iter().find(|a| a.name == adapter).and_then(|a| a.scalings.get(module).copied())
    }
}
