//! safetensors in and out: memory-mapped reads that touch a tensor's bytes only when used, streaming writes
//! that hold one tensor at a time, and HF checkpoint directories (single file or index + shards).
//!
//! Two environment variables exist for fault-injection tests only: [`FAIL_AFTER_BYTES_ENV`] (a disk that
//! fills up) and [`SLOW_WRITE_MS_ENV`] (a slow disk, to kill a write midway).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::plan::{TensorInfo, TensorSource};
use crate::tensor::{numel, HostTensor, MappedFile};
use indexmap::IndexMap;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Single-file HF checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// HF index file name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
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

    /// Size and xxh3-64 of the whole file (see [`file_xxh3`]).
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

/// The order safetensors writers use: larger dtypes first, then by name.
pub fn safetensors_order(infos: &mut [TensorInfo]) {
    infos.sort_by(|a, b| b.dtype.size().cmp(&a.dtype.size()).then_with(|| a.name.cmp(&b.name)));
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

/// Size and xxh3-64 checksum of a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes.
    pub size: u64,
    /// xxh3-64 of the whole file (0 when the writer was asked not to hash).
    pub xxh3: u64,
}

/// Whether a safetensors writer computes the file's checksum (rank files record it; HF outputs do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Hash every byte written.
    Xxh3,
    /// Skip hashing.
    None,
}

/// Test hook: when set to N, safetensors writes fail with a "No space left on device" error once this
/// process has written N bytes of safetensors files in total (a disk that fills up mid-write).
pub const FAIL_AFTER_BYTES_ENV: &str = "NEURON_SPEC_FAIL_AFTER_BYTES";
/// Test hook: when set to N, safetensors writes sleep N milliseconds before each tensor (a slow disk, so
/// that a test can kill the process mid-write).
pub const SLOW_WRITE_MS_ENV: &str = "NEURON_SPEC_SLOW_WRITE_MS";

/// Bytes of safetensors files written by this process, for [`FAIL_AFTER_BYTES_ENV`].
static SAFETENSORS_BYTES_WRITTEN: AtomicU64 = AtomicU64::new(0);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// A writer that counts what passes through it (and honours [`FAIL_AFTER_BYTES_ENV`]).
struct CountingWriter<W> {
    inner: W,
    size: u64,
    fail_after: Option<u64>,
    /// Bytes already handed to the kernel's writeback (see [`CountingWriter::start_writeback`]).
    kicked: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut buf = buf;
        if let Some(limit) = self.fail_after {
            let room = limit.saturating_sub(SAFETENSORS_BYTES_WRITTEN.load(Ordering::Relaxed));
            if room == 0 && !buf.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("No space left on device (simulated by {FAIL_AFTER_BYTES_ENV}={limit})"),
                ));
            }
            buf = &buf[..buf.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        }
        let n = self.inner.write(buf)?;
        SAFETENSORS_BYTES_WRITTEN.fetch_add(n as u64, Ordering::Relaxed);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Pieces smaller than this go through the buffer; larger views of mapped files are copied in the kernel.
const KERNEL_COPY_MIN: usize = 64 << 10;

impl CountingWriter<BufWriter<File>> {
    /// Appends `piece`. A large view of a mapped file is copied file to file by `copy_file_range`, as a plain
    /// file copy does, rather than faulted in through the mapping and copied from user memory; anything
    /// else (owned bytes, small pieces, filesystems that refuse the call) is written from its bytes.
    fn append(&mut self, piece: &HostTensor) -> std::io::Result<()> {
        let Some((src, offset, len)) = piece.file_range().filter(|(_, _, len)| *len >= KERNEL_COPY_MIN) else {
            return self.write_all(piece.bytes());
        };
        if self.fail_after.is_some() {
            return self.write_all(piece.bytes());
        }
        self.inner.flush()?;
        let copied = copy_file_range_all(src, offset, self.inner.get_ref(), len)?;
        SAFETENSORS_BYTES_WRITTEN.fetch_add(copied as u64, Ordering::Relaxed);
        self.size += copied as u64;
        // Whatever the kernel did not copy (nothing, when the filesystem refuses the call) goes through memory.
        self.write_all(piece.bytes().get(copied..).unwrap_or_default())
    }

    /// Starts the disk writes of what has been written so far, every few MiB, without waiting for them, so
    /// that the disk works while this thread goes on and the final fsync finds little left to do (the
    /// kernel would otherwise hold the dirty pages until the fsync, then write them all while we wait).
    fn start_writeback(&mut self) -> std::io::Result<()> {
        const STEP: u64 = 16 << 20;
        if self.size - self.kicked < STEP {
            return Ok(());
        }
        self.inner.flush()?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (start, len) = (self.kicked as i64, (self.size - self.kicked) as i64);
            // SAFETY: a valid open descriptor; the flag only initiates writeback. A failure changes nothing
            // but timing (the fsync that follows reports real I/O errors), so it is ignored.
            let _ = unsafe {
                libc::sync_file_range(self.inner.get_ref().as_raw_fd(), start, len, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
        self.kicked = self.size;
        Ok(())
    }
}

/// Copies up to `len` bytes of `src` from `offset` to the current position of `dst` in the kernel; returns
/// how many it copied: `len`, or fewer where the kernel declines (other filesystem, no support) so that the
/// caller writes the rest itself.
#[cfg(not(target_os = "linux"))]
fn copy_file_range_all(_src: &File, _offset: u64, _dst: &File, _len: usize) -> std::io::Result<usize> {
    Ok(0)
}

/// See above; Linux's `copy_file_range(2)`.
#[cfg(target_os = "linux")]
fn copy_file_range_all(src: &File, offset: u64, dst: &File, len: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut off_in = i64::try_from(offset).map_err(|_| std::io::Error::other("offset beyond i64"))?;
    let mut done = 0;
    while done < len {
        // SAFETY: valid open descriptors; `off_in` is a valid pointer and the output uses the file position.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), std::ptr::null_mut(), len - done, 0)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM) => Ok(done),
                _ => Err(e),
            };
        }
        if n == 0 {
            // The source ended early (truncated under us): let the caller's copy through the mapping report it.
            return Ok(done);
        }
        done += n as usize;
    }
    Ok(done)
}

/// xxh3-64 of a file's bytes (any file: the header is not parsed), hashed like [`SafetensorsFile::xxh3`].
pub fn file_xxh3(path: &Path) -> Result<Written> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only, as in `SafetensorsFile::open`.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(mapped_xxh3(&Arc::new(MappedFile { map, file })))
}

/// Size and xxh3-64 of a whole mapping, read a few MiB at a time (populated in one call, dropped after): no
/// copy of the file and no growth of the resident set.
fn mapped_xxh3(m: &Arc<MappedFile>) -> Written {
    const CHUNK: usize = 8 << 20;
    let len = m.map.len();
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for start in (0..len).step_by(CHUNK) {
        let end = (start + CHUNK).min(len);
        let view = HostTensor::mapped(DType::U8, vec![end - start], m.clone(), start..end);
        view.prefault();
        hasher.update(view.bytes());
        view.release();
    }
    Written { size: len as u64, xxh3: hasher.digest() }
}

/// Writes a safetensors file, asking `fill` for one tensor at a time, so memory holds one tensor.
/// `tensors` are written in safetensors order; each filled tensor must match its info.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorInfo],
    metadata: &BTreeMap<String, String>,
    fill: &mut dyn FnMut(&TensorInfo) -> Result<Vec<HostTensor>>,
) -> Result<Written> {
    write_safetensors_with(path, tensors, metadata, fill, Checksum::Xxh3)
}

/// [`write_safetensors`], hashing the file or not.
pub fn write_safetensors_with(
    path: &Path,
    tensors: &[TensorInfo],
    metadata: &BTreeMap<String, String>,
    fill: &mut dyn FnMut(&TensorInfo) -> Result<Vec<HostTensor>>,
    checksum: Checksum,
) -> Result<Written> {
    let mut order = tensors.to_vec();
    safetensors_order(&mut order);
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header
            .insert("__metadata__".into(), serde_json::to_value(metadata).map_err(|e| Error::Invalid(e.to_string()))?);
    }
    let mut off = 0usize;
    for t in &order {
        let n = numel(&t.shape) * t.dtype.size();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.as_str(), "shape": t.shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        size: 0,
        fail_after: env_u64(FAIL_AFTER_BYTES_ENV),
        kicked: 0,
    };
    let slow = env_u64(SLOW_WRITE_MS_ENV).map(std::time::Duration::from_millis);
    let io = |e| Error::io(path, e);
    // The checksum is computed on a helper thread from the same pieces, in file order, while this thread
    // writes; the helper drops mapped pages once hashed (this thread's kernel copies never map them).
    std::thread::scope(|s| {
        let (tx, hasher) = match checksum {
            Checksum::Xxh3 => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<HostTensor>(2);
                let hasher = s.spawn(move || {
                    let mut h = xxhash_rust::xxh3::Xxh3::new();
                    for piece in rx {
                        piece.prefault();
                        h.update(piece.bytes());
                        piece.release();
                    }
                    h.digest()
                });
                (Some(tx), Some(hasher))
            }
            Checksum::None => (None, None),
        };
        let hash = |piece: HostTensor| -> Result<()> {
            match &tx {
                Some(tx) => tx
                    .send(piece)
                    .map_err(|_| Error::Invalid(format!("{}: the checksum thread stopped", path.display()))),
                None => {
                    piece.release();
                    Ok(())
                }
            }
        };
        let mut prefix = (h.len() as u64).to_le_bytes().to_vec();
        prefix.extend_from_slice(&h);
        w.write_all(&prefix).map_err(io)?;
        hash(HostTensor::new(DType::U8, vec![prefix.len()], prefix)?)?;
        for t in &order {
            if let Some(d) = slow {
                w.flush().map_err(io)?;
                std::thread::sleep(d);
            }
            // The tensor arrives as consecutive pieces (views of mapped inputs, or one assembled tensor).
            let pieces = fill(t)?;
            if let Some(p) = pieces.iter().find(|p| p.dtype() != t.dtype) {
                return Err(Error::DtypeMismatch {
                    tensor: t.name.clone(),
                    expected: t.dtype.to_string(),
                    found: p.dtype().to_string(),
                    file: Some(path.to_path_buf()),
                });
            }
            let bytes: usize = pieces.iter().map(|p| p.bytes().len()).sum();
            if bytes != t.nbytes() {
                return Err(Error::ShapeMismatch {
                    tensor: t.name.clone(),
                    expected: t.shape.clone(),
                    found: pieces.first().map(|p| p.shape().to_vec()).unwrap_or_default(),
                    file: Some(path.to_path_buf()),
                });
            }
            for p in pieces {
                w.append(&p).map_err(io)?;
                hash(p)?;
            }
            w.start_writeback().map_err(io)?;
        }
        drop(tx);
        let xxh3 = match hasher {
            Some(hh) => {
                hh.join().map_err(|_| Error::Invalid(format!("{}: the checksum thread failed", path.display())))?
            }
            None => 0,
        };
        let size = w.size;
        let file = w.inner.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(Written { size, xxh3 })
    })
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
    let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
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
    let text = serde_json::to_string_pretty(&index).map_err(|e| Error::Invalid(e.to_string()))?;
    write_file_synced(&ip, text.as_bytes())?;
    files.push(ip);
    Ok(files)
}

/// Writes and fsyncs a small file.
pub fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Parses a size such as `5GB`, `500MB`, `20KB`, `1GiB` or a plain byte count (HF's decimal units).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 =
        num.parse().map_err(|_| Error::Invalid(format!("invalid size {s:?}: expected e.g. 5GB, 500MB or 20KB")))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(Error::Invalid(format!("invalid size {s:?}: unknown unit {unit:?}"))),
    };
    let bytes = v * mult;
    if bytes.is_nan() || bytes < 1.0 {
        return Err(Error::Invalid(format!("invalid size {s:?}: must be at least one byte")));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large mapped slice takes the kernel-copy path and a small one the buffer: both land byte for byte,
    /// and the checksum computed on the helper thread is the written file's.
    #[test]
    fn mapped_pieces_are_copied_exactly_and_hashed_in_file_order() {
        let dir = std::env::temp_dir().join(format!("neuron-spec-io-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = 100_000usize;
        let big: Vec<u8> = (0..n * 2).map(|i| (i * 7 % 251) as u8).collect();
        let small: Vec<u8> = (0..64).collect();
        let infos = vec![
            TensorInfo { name: "big".into(), dtype: DType::BF16, shape: vec![n] },
            TensorInfo { name: "small".into(), dtype: DType::U8, shape: vec![64] },
        ];
        let meta = BTreeMap::new();
        let src_path = dir.join("src.safetensors");
        write_safetensors(&src_path, &infos, &meta, &mut |i| {
            Ok(vec![match i.name.as_str() {
                "big" => HostTensor::new(DType::BF16, vec![n], big.clone())?,
                _ => HostTensor::new(DType::U8, vec![64], small.clone())?,
            }])
        })
        .unwrap();
        let src = SafetensorsFile::open(&src_path).unwrap();
        assert_eq!(src.xxh3(), file_xxh3(&src_path).unwrap());
        // `big` as two mapped views: 140 002 bytes (kernel copy) then 59 998 (buffered).
        let t = src.tensor("big").unwrap();
        let split = 70_001;
        assert!(split * 2 >= KERNEL_COPY_MIN && (n - split) * 2 < KERNEL_COPY_MIN);
        let out_path = dir.join("out.safetensors");
        let w = write_safetensors(&out_path, &infos, &meta, &mut |i| {
            Ok(match i.name.as_str() {
                "big" => vec![t.narrow(0, 0, split)?, t.narrow(0, split, n - split)?],
                _ => vec![src.tensor("small")?],
            })
        })
        .unwrap();
        assert_eq!(w, file_xxh3(&out_path).unwrap());
        let out = SafetensorsFile::open(&out_path).unwrap();
        assert_eq!(out.tensor("big").unwrap().bytes(), &big[..]);
        assert_eq!(out.tensor("small").unwrap().bytes(), &small[..]);
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(file_xxh3(&empty).unwrap(), Written { size: 0, xxh3: xxhash_rust::xxh3::xxh3_64(b"") });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
