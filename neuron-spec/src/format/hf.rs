//! HF checkpoint directories: `model.safetensors`, or an index and the files it names; read as one tensor
//! source, written in files of at most a maximum shard size.

use super::fs::write_file_synced;
use super::safetensors::SafetensorsFile;
use super::safetensors_writer::Checksum;
use super::safetensors_writer::{pt_metadata, safetensors_order, write_safetensors_with};
use crate::error::{Error, Result};
use crate::tensor::{HostTensor, TensorInfo, TensorSource};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};

/// Single-file HF checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// HF index file name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// An HF checkpoint directory: `model.safetensors`, or `model.safetensors.index.json` and the files it names.
/// Only those files are opened: fixture folders also hold golden files.
pub struct HfCheckpoint {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    index: IndexMap<String, usize>,
}

/// Parses the text of an HF index (`model.safetensors.index.json`; `index_path` names it in errors): its
/// `weight_map`, tensor name → file name, in index order. Every file name must be a plain file name in the
/// index's directory.
pub fn parse_index(text: &str, index_path: &Path) -> Result<IndexMap<String, String>> {
    let json_err = |reason: String| Error::Json { path: index_path.to_path_buf(), reason };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| json_err(e.to_string()))?;
    let wm = v.get("weight_map").and_then(|w| w.as_object()).ok_or_else(|| json_err("no weight_map object".into()))?;
    let mut out = IndexMap::with_capacity(wm.len());
    for (name, f) in wm {
        let f = f.as_str().ok_or_else(|| json_err(format!("weight_map[{name}] is not a file name")))?;
        if f.is_empty() || f == "." || f == ".." || f.contains('/') || f.contains('\\') || f.contains('\0') {
            return Err(json_err(format!("weight_map[{name}] = {f:?} is not a file in this directory")));
        }
        out.insert(name.clone(), f.to_string());
    }
    Ok(out)
}

impl HfCheckpoint {
    /// Opens the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let wm = parse_index(&text, &index_path)?;
            let mut file_ids: IndexMap<String, usize> = IndexMap::new();
            let mut files = Vec::new();
            let mut index = IndexMap::new();
            for (name, f) in &wm {
                let f = f.as_str();
                let id = match file_ids.get(f) {
                    Some(id) => *id,
                    None => {
                        let p = dir.join(f);
                        if !p.is_file() {
                            return Err(Error::Json {
                                path: index_path.clone(),
                                reason: format!("weight_map names {f}, which does not exist (or is not a file)"),
                            });
                        }
                        files.push(SafetensorsFile::open(&p)?);
                        file_ids.insert(f.to_string(), files.len() - 1);
                        files.len() - 1
                    }
                };
                index.insert(name.clone(), id);
            }
            // Every tensor in the files must be indexed exactly once, in the file the index says.
            let mut seen: IndexMap<String, usize> = IndexMap::new();
            for (id, file) in files.iter().enumerate() {
                for n in file.names() {
                    if let Some(prev) = seen.insert(n.to_string(), id) {
                        return Err(Error::Safetensors {
                            path: file.path().to_path_buf(),
                            reason: format!("tensor {n} is also in {}", files[prev].path().display()),
                        });
                    }
                }
            }
            for (name, id) in &index {
                if files[*id].info(name).is_none() {
                    return Err(Error::Safetensors {
                        path: files[*id].path().to_path_buf(),
                        reason: format!("the index places tensor {name} here, but the file lacks it"),
                    });
                }
            }
            for (n, id) in &seen {
                if !index.contains_key(n) {
                    return Err(Error::Json {
                        path: index_path.clone(),
                        reason: format!("tensor {n} of {} is missing from weight_map", files[*id].path().display()),
                    });
                }
            }
            Ok(Self { dir: dir.to_path_buf(), files, index })
        } else {
            let p = dir.join(SINGLE_FILE);
            if !p.exists() {
                return Err(Error::io(
                    &p,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
                    ),
                ));
            }
            let f = SafetensorsFile::open(&p)?;
            let index = f.names().map(|n| (n.to_string(), 0)).collect();
            Ok(Self { dir: dir.to_path_buf(), files: vec![f], index })
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files, in index order.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// Which file holds `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|i| self.files[*i].path())
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.index.keys().filter_map(|n| TensorSource::info(self, n)).map(|i| i.nbytes()).sum()
    }
}

impl TensorSource for HfCheckpoint {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.index.get(name).and_then(|i| self.files[*i].info(name))
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        match self.index.get(name) {
            Some(i) => self.files[*i].tensor(name),
            None => {
                let c: Vec<&str> = self.index.keys().map(String::as_str).collect();
                Err(Error::key_mismatch(self.dir.display().to_string(), vec![name.to_string()], vec![], &c))
            }
        }
    }
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn release(&self, name: &str) {
        if let Some(i) = self.index.get(name) {
            TensorSource::release(&self.files[*i], name);
        }
    }
}

/// The tensors of an HF checkpoint grouped into files of at most `max_shard_size` bytes, in the given order,
/// each file's tensors in safetensors order: the order [`write_hf_checkpoint`] asks for them.
pub fn hf_file_groups(tensors: &[TensorInfo], max_shard_size: Option<u64>) -> Vec<Vec<TensorInfo>> {
    let max = max_shard_size.unwrap_or(u64::MAX);
    let mut shards: Vec<Vec<TensorInfo>> = vec![vec![]];
    let mut cur = 0u64;
    for t in tensors {
        let n = t.nbytes() as u64;
        if cur > 0 && cur + n > max {
            shards.push(vec![]);
            cur = 0;
        }
        if let Some(last) = shards.last_mut() {
            last.push(t.clone());
        }
        cur += n;
    }
    for s in &mut shards {
        safetensors_order(s);
    }
    shards
}

/// Writes an HF checkpoint into `dir`: one `model.safetensors` when everything fits in `max_shard_size`
/// bytes, else `model-0000K-of-0000N.safetensors` files and an index. Returns the files written.
pub fn write_hf_checkpoint(
    dir: &Path,
    tensors: &[TensorInfo],
    max_shard_size: Option<u64>,
    fill: &mut dyn FnMut(&TensorInfo) -> Result<Vec<HostTensor>>,
) -> Result<Vec<PathBuf>> {
    let shards = hf_file_groups(tensors, max_shard_size);
    let meta = pt_metadata();
    if shards.len() == 1 {
        let p = dir.join(SINGLE_FILE);
        write_safetensors_with(&p, &shards[0], &meta, fill, Checksum::None)?;
        return Ok(vec![p]);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut files = Vec::new();
    let total: usize = tensors.iter().map(TensorInfo::nbytes).sum();
    for (k, shard) in shards.iter().enumerate() {
        let fname = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
        let p = dir.join(&fname);
        write_safetensors_with(&p, shard, &meta, fill, Checksum::None)?;
        for t in shard {
            weight_map.insert(t.name.clone(), serde_json::Value::String(fname.clone()));
        }
        files.push(p);
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let ip = dir.join(INDEX_FILE);
    let text = serde_json::to_string_pretty(&index).map_err(|e| Error::Serialization(e.to_string()))?;
    write_file_synced(&ip, text.as_bytes())?;
    files.push(ip);
    Ok(files)
}

/// Parses a size such as `5GB`, `500MB`, `20KB`, `1GiB` or a plain byte count (HF's decimal units).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 =
        num.parse().map_err(|_| Error::Argument(format!("invalid size {s:?}: expected e.g. 5GB, 500MB or 20KB")))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(Error::Argument(format!("invalid size {s:?}: unknown unit {unit:?}"))),
    };
    let bytes = v * mult;
    if bytes.is_nan() || bytes < 1.0 {
        return Err(Error::Argument(format!("invalid size {s:?}: must be at least one byte")));
    }
    Ok(bytes as u64)
}
