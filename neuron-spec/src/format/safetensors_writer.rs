//! Writing safetensors files: one tensor at a time, in safetensors order, with the file's checksum.

use super::fs::{env_u64, hash_file_range, CountingWriter, Written, FAIL_AFTER_BYTES_ENV, SLOW_WRITE_MS_ENV};
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tensor::{numel, HostTensor, StateDict, TensorInfo, TensorSource};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
/// The order safetensors writers use: larger dtypes first, then by name.
pub fn safetensors_order(infos: &mut [TensorInfo]) {
    infos.sort_by(|a, b| b.dtype.size().cmp(&a.dtype.size()).then_with(|| a.name.cmp(&b.name)));
}

/// The `__metadata__` of every safetensors file this crate writes: `{"format": "pt"}`, as torch's and HF's
/// writers record it.
pub fn pt_metadata() -> BTreeMap<String, String> {
    [("format".to_string(), "pt".to_string())].into()
}

/// Writes the tensors of `sd` to `path` (safetensors order, [`pt_metadata`]), with the file's checksum.
pub fn write_state_dict(path: &Path, sd: &StateDict) -> Result<Written> {
    let infos: Vec<TensorInfo> = sd.keys().filter_map(|n| sd.info(n)).collect();
    write_safetensors(path, &infos, &pt_metadata(), &mut |i| Ok(vec![sd.tensor(&i.name)?]))
}

/// Whether a safetensors writer computes the file's checksum (rank files record it; HF outputs do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Hash every byte written.
    Xxh3,
    /// Skip hashing.
    None,
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
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).map_err(|e| Error::Serialization(e.to_string()))?,
        );
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
    let mut h = serde_json::to_vec(&header).map_err(|e| Error::Serialization(e.to_string()))?;
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
                    let mut buf = Vec::new();
                    for piece in rx {
                        // A view of a mapped input is read with pread (no page faults or unmapping in this
                        // process, see `hash_file_range`); owned bytes are hashed in place.
                        match piece.mapped_range() {
                            Some((m, offset, len)) => hash_file_range(&mut h, m, offset, len, &mut buf),
                            None => h.update(piece.bytes()),
                        }
                        // Pages the writer mapped (a small piece, or a filesystem without kernel copies).
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
                    .map_err(|_| Error::Thread(format!("{}: the checksum thread stopped", path.display()))),
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
                hh.join().map_err(|_| Error::Thread(format!("{}: the checksum thread failed", path.display())))?
            }
            None => 0,
        };
        let size = w.size;
        let file = w.inner.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(Written { size, xxh3 })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fs::{file_xxh3, KERNEL_COPY_MIN};
    use crate::format::SafetensorsFile;

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
