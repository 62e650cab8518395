//! File-system calls of the writers: a counting writer with the fault-injection hooks, the kernel copy of
//! mapped pieces, file checksums, and small synced files.
//!
//! Two environment variables exist for fault-injection tests only: [`FAIL_AFTER_BYTES_ENV`] (a disk that
//! fills up) and [`SLOW_WRITE_MS_ENV`] (a slow disk, to kill a write midway).

use crate::error::{Error, Result};
use crate::tensor::{HostTensor, MappedFile};
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Size and xxh3-64 checksum of a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes.
    pub size: u64,
    /// xxh3-64 of the whole file (0 when the writer was asked not to hash).
    pub xxh3: u64,
}

/// Test hook: when set to N, safetensors writes fail with a "No space left on device" error once this
/// process has written N bytes of safetensors files in total (a disk that fills up mid-write).
pub const FAIL_AFTER_BYTES_ENV: &str = "NEURON_SPEC_FAIL_AFTER_BYTES";
/// Test hook: when set to N, safetensors writes sleep N milliseconds before each tensor (a slow disk, so
/// that a test can kill the process mid-write).
pub const SLOW_WRITE_MS_ENV: &str = "NEURON_SPEC_SLOW_WRITE_MS";

/// Bytes of safetensors files written by this process, for [`FAIL_AFTER_BYTES_ENV`].
static SAFETENSORS_BYTES_WRITTEN: AtomicU64 = AtomicU64::new(0);

pub(crate) fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// A writer that counts what passes through it (and honours [`FAIL_AFTER_BYTES_ENV`]).
pub(crate) struct CountingWriter<W> {
    pub(crate) inner: W,
    pub(crate) size: u64,
    pub(crate) fail_after: Option<u64>,
    /// Bytes already handed to the kernel's writeback (see [`CountingWriter::start_writeback`]).
    pub(crate) kicked: u64,
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
pub(crate) const KERNEL_COPY_MIN: usize = 64 << 10;

impl CountingWriter<BufWriter<File>> {
    /// Appends `piece`. A large view of a mapped file is copied file to file by `copy_file_range`, as a plain
    /// file copy does, rather than faulted in through the mapping and copied from user memory; anything
    /// else (owned bytes, small pieces, filesystems that refuse the call) is written from its bytes.
    pub(crate) fn append(&mut self, piece: &HostTensor) -> std::io::Result<()> {
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
    pub(crate) fn start_writeback(&mut self) -> std::io::Result<()> {
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

/// xxh3-64 of a file's bytes (any file: the header is not parsed), hashed like [`SafetensorsFile::xxh3`](super::SafetensorsFile::xxh3).
pub fn file_xxh3(path: &Path) -> Result<Written> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only, as in `SafetensorsFile::open`.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(mapped_xxh3(&Arc::new(MappedFile { map, file })))
}

/// Size and xxh3-64 of a whole mapped file, read with `pread` a few MiB at a time into one buffer: the page
/// cache is read without mapping its pages into the process (no page faults, no unmapping, and no TLB
/// shootdowns interrupting the threads that write meanwhile), and the resident set does not grow.
pub(crate) fn mapped_xxh3(m: &Arc<MappedFile>) -> Written {
    let len = m.map.len();
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = Vec::new();
    hash_file_range(&mut hasher, m, 0, len, &mut buf);
    Written { size: len as u64, xxh3: hasher.digest() }
}

/// Chunk of [`hash_file_range`]'s reads.
const HASH_CHUNK: usize = 8 << 20;

/// Feeds `len` bytes of `m`'s file from `offset` to `hasher`, read with `pread` through `buf`; where a read
/// fails or comes up short (a file truncated under us), the rest is hashed from the mapping, whose access then
/// reports the damage as every mapped read does.
pub(crate) fn hash_file_range(
    hasher: &mut xxhash_rust::xxh3::Xxh3,
    m: &MappedFile,
    offset: u64,
    len: usize,
    buf: &mut Vec<u8>,
) {
    use std::os::unix::fs::FileExt;
    buf.resize(HASH_CHUNK.min(len), 0);
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(HASH_CHUNK);
        match m.file.read_at(&mut buf[..n], offset + done as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                hasher.update(&buf[..k]);
                done += k;
            }
        }
    }
    if done < len {
        let start = offset as usize + done;
        hasher.update(m.map.get(start..offset as usize + len).unwrap_or_default());
    }
}

/// Writes and fsyncs a small file.
pub fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}
