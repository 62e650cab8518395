//! One optimum-neuron rank file (`dp_rank_00_tp_rank_XX_pp_rank_YY.pt`) as a tensor source, in either layout:
//!
//! - plain: `torch.save(state_dict)`, each tensor a view of its storage record;
//! - xser (neuronx-distributed's default): the state dict holds `TensorReference(tid)` objects,
//!   `<file>.info.pt` maps each tid to its dtype and shape, and `<file>.tensors/tensor_<tid>.pt` holds the
//!   tensor. Every tensor file is checked against the info (dtype and shape) when the rank file is opened.

use super::pickle::Value;
use super::torch_file::{torch_err, TorchFile};
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tensor::HostTensor;
use crate::tensor::{TensorInfo, TensorSource};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};

/// Which of the two layouts a rank file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtLayout {
    /// `torch.save` of the state dict.
    Plain,
    /// neuronx-distributed's xser: TensorReferences + `.info.pt` + `.tensors/`.
    Xser,
}

/// A `.pt` rank file opened for reading: every tensor a zero-copy view of a mapped file.
pub struct PtRankFile {
    path: PathBuf,
    layout: PtLayout,
    tensors: IndexMap<String, HostTensor>,
}

fn entries<'a>(path: &Path, v: &'a Value, what: &str) -> Result<&'a [(Value, Value)]> {
    match v {
        Value::Dict(d) => Ok(d),
        _ => Err(torch_err(path, format!("{what} is not a dict"))),
    }
}

impl PtRankFile {
    /// Opens the rank file at `path` (plain or xser, detected from its pickle).
    pub fn open(path: &Path) -> Result<Self> {
        let top = TorchFile::open(path)?;
        let items = entries(path, &top.value, "the state dict")?;
        let xser = items.iter().any(|(_, v)| matches!(v, Value::TensorReference(_)));
        let mut tensors = IndexMap::new();
        if !xser {
            for (k, v) in items {
                let Value::Str(name) = k else { return Err(torch_err(path, "a state-dict key that is not a str")) };
                let Value::Tensor(t) = v else {
                    return Err(torch_err(path, format!("{name} is a {v:?}-like value, not a tensor")));
                };
                tensors.insert(name.clone(), top.view(name, t)?);
            }
            return Ok(Self { path: path.to_path_buf(), layout: PtLayout::Plain, tensors });
        }
        let name_of = |suffix: &str| {
            let mut s = path.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        let info_path = name_of(".info.pt");
        if !info_path.exists() {
            return Err(torch_err(path, format!("xser rank file without its {}", info_path.display())));
        }
        let info = TorchFile::open(&info_path)?;
        let mut infos: IndexMap<i64, (DType, Vec<usize>)> = IndexMap::new();
        for (k, v) in entries(&info_path, &info.value, "the tensor info")? {
            let Value::Int(tid) = k else { return Err(torch_err(&info_path, "a tid that is not an int")) };
            let mut dtype = None;
            let mut shape = None;
            for (f, x) in entries(&info_path, v, &format!("info of tid {tid}"))? {
                match (f, x) {
                    (Value::Str(f), Value::DType(d)) if f == "dtype" => dtype = Some(*d),
                    (Value::Str(f), s) if f == "shape" => {
                        shape =
                            Some(s.as_usizes("shape").map_err(|m| torch_err(&info_path, format!("tid {tid}: {m}")))?)
                    }
                    _ => {}
                }
            }
            let (Some(d), Some(s)) = (dtype, shape) else {
                return Err(torch_err(&info_path, format!("tid {tid}: no dtype and shape")));
            };
            infos.insert(*tid, (d, s));
        }
        let dir = name_of(".tensors");
        for (k, v) in items {
            let Value::Str(name) = k else { return Err(torch_err(path, "a state-dict key that is not a str")) };
            let Value::TensorReference(Some(tid)) = v else {
                return Err(torch_err(path, format!("{name}: expected a TensorReference with a tid")));
            };
            let (dtype, shape) = infos
                .get(tid)
                .ok_or_else(|| torch_err(&info_path, format!("no dtype and shape for tid {tid} ({name})")))?;
            let tpath = dir.join(format!("tensor_{tid}.pt"));
            if !tpath.exists() {
                return Err(torch_err(path, format!("{name}: its tensor file {} is missing", tpath.display())));
            }
            let tf = TorchFile::open(&tpath)?;
            let Value::Tensor(t) = &tf.value else {
                return Err(torch_err(&tpath, "expected one bare tensor"));
            };
            let view = tf.view(name, t)?;
            if view.dtype() != *dtype || view.shape() != shape.as_slice() {
                return Err(torch_err(
                    &tpath,
                    format!(
                        "tensor {name}: the info says {dtype} {shape:?}, the tensor file holds {} {:?}",
                        view.dtype(),
                        view.shape()
                    ),
                ));
            }
            tensors.insert(name.clone(), view);
        }
        Ok(Self { path: path.to_path_buf(), layout: PtLayout::Xser, tensors })
    }

    /// The rank file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Plain or xser.
    pub fn layout(&self) -> PtLayout {
        self.layout
    }

    /// The same tensors under the names `rename` gives (it may refuse a name); two names that map to one are
    /// refused.
    pub fn renamed(self, rename: impl Fn(&str) -> Result<String>) -> Result<Self> {
        let mut tensors = IndexMap::with_capacity(self.tensors.len());
        for (n, t) in self.tensors {
            let new = rename(&n)?;
            if tensors.insert(new.clone(), t).is_some() {
                return Err(torch_err(&self.path, format!("two tensors are both named {new} (one was {n})")));
            }
        }
        Ok(Self { tensors, ..self })
    }
}

impl TensorSource for PtRankFile {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.tensors.get(name).map(|t| TensorInfo {
            name: name.to_string(),
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
        })
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        self.tensors.get(name).cloned().ok_or_else(|| {
            let c: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
            Error::key_mismatch(self.path.display().to_string(), vec![name.to_string()], vec![], &c)
        })
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn release(&self, name: &str) {
        if let Some(t) = self.tensors.get(name) {
            t.release();
        }
    }
}
