//! Reading safetensors files: a validated header, and memory-mapped tensors whose bytes are touched only
//! when used.

use super::fs::{mapped_xxh3, Written};
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tensor::{HostTensor, MappedFile};
use crate::tensor::{TensorInfo, TensorSource};
use indexmap::IndexMap;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest header we accept (the safetensors limit).
const MAX_HEADER: usize = 100_000_000;

struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    range: Range<usize>,
}

/// One memory-mapped safetensors file with a validated header.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<MappedFile>,
    tensors: IndexMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

fn st_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Safetensors { path: path.to_path_buf(), reason: reason.into() }
}

/// A parsed and validated safetensors header.
struct Header {
    tensors: IndexMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

/// Parses and validates the header of the safetensors file whose bytes are `bytes` (`path` names it in
/// errors): dtypes, shapes whose sizes fit in memory, and data offsets that tile the data section exactly.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let len = bytes.len();
    let Some(n8) = bytes.get(..8) else {
        return Err(st_err(path, format!("file is {len} bytes, shorter than the 8-byte header length")));
    };
    let mut a = [0u8; 8];
    a.copy_from_slice(n8);
    let n = u64::from_le_bytes(a);
    if n > MAX_HEADER as u64 || 8 + n as usize > len {
        return Err(st_err(path, format!("header length {n} goes beyond the file ({len} bytes)")));
    }
    let n = n as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| st_err(path, format!("header is not a JSON object: {e}")))?;
    let data_start = 8 + n;
    let data_len = len - data_start;
    let mut metadata = BTreeMap::new();
    let mut entries: Vec<(String, Entry)> = Vec::new();
    for (name, v) in header {
        if name == "__metadata__" {
            if let Some(o) = v.as_object() {
                for (k, val) in o {
                    metadata.insert(k.clone(), val.as_str().map(str::to_string).unwrap_or_else(|| val.to_string()));
                }
            }
            continue;
        }
        let ctx = format!("{}: tensor {name}", path.display());
        let dtype_s =
            v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| st_err(path, format!("tensor {name}: no dtype")))?;
        let dtype = DType::parse(dtype_s, &ctx)?;
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| {
                a.iter().map(|x| x.as_u64().and_then(|u| usize::try_from(u).ok())).collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| st_err(path, format!("tensor {name}: shape is not a list of sizes")))?;
        let offs: Vec<usize> = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| {
                a.iter().map(|x| x.as_u64().and_then(|u| usize::try_from(u).ok())).collect::<Option<Vec<_>>>()
            })
            .filter(|o| o.len() == 2)
            .ok_or_else(|| st_err(path, format!("tensor {name}: data_offsets is not a pair")))?;
        // Every partial product of the dims must fit (a zero dim must not hide an overflowing rest).
        let overflow = || st_err(path, format!("tensor {name}: shape {shape:?} overflows"));
        shape.iter().try_fold(dtype.size(), |a, s| a.checked_mul((*s).max(1))).ok_or_else(overflow)?;
        let nbytes = shape.iter().try_fold(dtype.size(), |a, s| a.checked_mul(*s)).ok_or_else(overflow)?;
        if offs[1] < offs[0] || offs[1] - offs[0] != nbytes {
            return Err(st_err(
                path,
                format!(
                    "tensor {name}: data_offsets {offs:?} hold {} bytes, {dtype} {shape:?} needs {nbytes}",
                    offs[1].wrapping_sub(offs[0])
                ),
            ));
        }
        if offs[1] > data_len {
            return Err(st_err(
                path,
                format!("tensor {name}: data_offsets {offs:?} go beyond the data ({data_len} bytes)"),
            ));
        }
        entries.push((name, Entry { dtype, shape, range: data_start + offs[0]..data_start + offs[1] }));
    }
    entries.sort_by_key(|(_, e)| (e.range.start, e.range.end));
    let mut end = data_start;
    for (name, e) in &entries {
        if e.range.start != end && !(e.range.is_empty() && e.range.start <= end) {
            return Err(st_err(
                path,
                format!(
                    "tensor {name}: data starts at {} but the previous tensor ends at {} (overlap or gap)",
                    e.range.start - data_start,
                    end - data_start
                ),
            ));
        }
        end = end.max(e.range.end);
    }
    if end != len {
        return Err(st_err(
            path,
            format!("tensors end at byte {end} but the file has {len} (truncated or trailing bytes)"),
        ));
    }
    Ok(Header { tensors: entries.into_iter().collect(), metadata })
}

/// Validates the safetensors file held in `bytes` without mapping a file (what [`SafetensorsFile::open`]
/// checks): each tensor's dtype and shape, and the byte range of its data within `bytes`.
pub fn parse_safetensors(bytes: &[u8]) -> Result<Vec<(TensorInfo, Range<usize>)>> {
    let h = parse_header(Path::new("<bytes>"), bytes)?;
    Ok(h.tensors.into_iter().map(|(name, e)| (TensorInfo { name, dtype: e.dtype, shape: e.shape }, e.range)).collect())
}

impl SafetensorsFile {
    /// Maps `path` and validates its header: dtypes, shapes, and offsets that tile the data exactly.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 8 {
            return Err(st_err(path, format!("file is {len} bytes, shorter than the 8-byte header length")));
        }
        // SAFETY: the file is opened read-only; like every mmap reader we rely on it not being truncated
        // while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        // No read-around on page faults: a rank reads slices (column slices touch one page in several), and
        // the kernel's mmap read-around would read the rest of each tensor from disk. Full reads ask for their
        // pages explicitly (`HostTensor::prefault`, MADV_POPULATE_READ). Advice only; ignored where refused.
        let _ = map.advise(memmap2::Advice::Random);
        let Header { tensors, metadata } = parse_header(path, &map)?;
        Ok(Self { path: path.to_path_buf(), map: Arc::new(MappedFile { map, file }), tensors, metadata })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` entries.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensor names in data order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Dtype and shape of `name`.
    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        self.tensors.get(name).map(|e| TensorInfo { name: name.to_string(), dtype: e.dtype, shape: e.shape.clone() })
    }

    /// Size and xxh3-64 of the whole file (see [`file_xxh3`](super::file_xxh3)).
    pub fn xxh3(&self) -> Written {
        mapped_xxh3(&self.map)
    }

    /// A zero-copy view of `name`.
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let e = self.tensors.get(name).ok_or_else(|| {
            let c: Vec<&str> = self.names().collect();
            Error::key_mismatch(self.path.display().to_string(), vec![name.to_string()], vec![], &c)
        })?;
        Ok(HostTensor::mapped(e.dtype, e.shape.clone(), self.map.clone(), e.range.clone()))
    }
}

impl TensorSource for SafetensorsFile {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        SafetensorsFile::info(self, name)
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        SafetensorsFile::tensor(self, name)
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn release(&self, name: &str) {
        if let Ok(t) = SafetensorsFile::tensor(self, name) {
            t.release();
        }
    }
}
