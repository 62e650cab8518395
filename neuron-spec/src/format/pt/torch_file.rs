//! One `torch.save` file: a zip of `<archive>/data.pkl` (the pickled object) and `<archive>/data/<key>`
//! (one record per storage), mapped once; tensors are views of their storage's bytes.

use super::pickle::{self, TensorRef, Value};
use super::zip;
use crate::error::{Error, Result};
use crate::tensor::{numel, HostTensor, MappedFile};
use indexmap::IndexMap;
use memmap2::Mmap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest pickle we parse (a state dict's pickle is names and small tuples: kilobytes per tensor).
const MAX_PICKLE: usize = 256 << 20;

/// A mapped torch zip file and its parsed pickle.
pub struct TorchFile {
    path: PathBuf,
    map: Arc<MappedFile>,
    records: IndexMap<String, Range<usize>>,
    prefix: String,
    /// The unpickled object.
    pub value: Value,
}

/// An error about the torch file `path`.
pub fn torch_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Torch { path: path.to_path_buf(), reason: reason.into() }
}

impl TorchFile {
    /// Maps `path`, reads its zip directory and parses its pickle.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only mapping; like every mmap reader we rely on the file not being truncated meanwhile.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let recs = zip::records(&map).map_err(|m| torch_err(path, m))?;
        let records: IndexMap<String, Range<usize>> = recs.into_iter().map(|r| (r.name, r.range)).collect();
        let pkl: Vec<&String> =
            records.keys().filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1).collect();
        let [pkl] = pkl.as_slice() else {
            return Err(torch_err(path, format!("expected one <archive>/data.pkl record, found {}", pkl.len())));
        };
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Some(r) = records.get(&format!("{prefix}byteorder")) {
            let order = map.get(r.clone()).unwrap_or_default();
            if order != b"little" {
                return Err(torch_err(
                    path,
                    format!("byteorder {:?}: only little-endian files are read", String::from_utf8_lossy(order)),
                ));
            }
        }
        let range = records.get(*pkl).cloned().unwrap_or_default();
        if range.len() > MAX_PICKLE {
            return Err(torch_err(path, format!("data.pkl is {} bytes (at most {MAX_PICKLE})", range.len())));
        }
        let value = pickle::parse(map.get(range).unwrap_or_default()).map_err(|m| torch_err(path, m))?;
        // Reading the zip directory and the pickle mapped their pages and, by fault-around and read-around,
        // their neighbours': drop them, so that opening many files (xser: one per tensor) does not grow the
        // resident set. The tensors' views map their own pages when read.
        // SAFETY: a read-only shared file mapping; after MADV_DONTNEED, reads fault the same file bytes back in.
        let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        Ok(Self { path: path.to_path_buf(), map: Arc::new(MappedFile { map, file }), records, prefix, value })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A zero-copy view of tensor `t` (named `name` in errors): its storage record must hold exactly the
    /// storage, and the tensor must be row-major contiguous inside it.
    pub fn view(&self, name: &str, t: &TensorRef) -> Result<HostTensor> {
        let e = |m: String| torch_err(&self.path, format!("tensor {name}: {m}"));
        let key = format!("{}data/{}", self.prefix, t.storage.key);
        let rec = self.records.get(&key).ok_or_else(|| e(format!("storage record {key} is missing")))?;
        let size = t.storage.dtype.size();
        let storage_bytes = t.storage.numel.checked_mul(size).ok_or_else(|| e("storage size overflows".into()))?;
        if rec.len() != storage_bytes {
            return Err(e(format!(
                "storage {} of {} {} elements needs {storage_bytes} bytes, its record has {}",
                t.storage.key,
                t.storage.numel,
                t.storage.dtype,
                rec.len()
            )));
        }
        let n = t.shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)).ok_or_else(|| e("shape overflows".into()))?;
        let mut expect = 1usize;
        for (d, (len, stride)) in t.shape.iter().zip(&t.stride).enumerate().rev() {
            if *len > 1 && *stride != expect {
                return Err(e(format!("stride {:?} is not row-major for shape {:?} (dim {d})", t.stride, t.shape)));
            }
            expect = expect.saturating_mul(*len);
        }
        let end = t.offset.checked_add(n).filter(|end| *end <= t.storage.numel).ok_or_else(|| {
            e(format!(
                "shape {:?} at offset {} needs {} elements, the storage has {}",
                t.shape,
                t.offset,
                t.offset.saturating_add(n),
                t.storage.numel
            ))
        })?;
        let range = rec.start + t.offset * size..rec.start + end * size;
        debug_assert_eq!(range.len(), numel(&t.shape) * size);
        Ok(HostTensor::mapped(t.storage.dtype, t.shape.clone(), self.map.clone(), range))
    }
}
