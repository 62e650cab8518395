//! `plan --json` figures match what sharding then reads, counted by an instrumented reader.

use crate::common;
use common::*;
use neuron_spec::{adapt_state_dict, HostTensor, PlanOptions, TensorInfo, TensorSource};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes handed out; a whole-tensor read counts the whole tensor.
struct Counting<S> {
    inner: S,
    bytes: AtomicUsize,
}

impl<S: TensorSource> TensorSource for Counting<S> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.inner.info(name)
    }
    fn tensor(&self, name: &str) -> neuron_spec::Result<HostTensor> {
        let t = self.inner.tensor(name)?;
        self.bytes.fetch_add(t.bytes().len(), Ordering::Relaxed);
        Ok(t)
    }
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn read_slice(&self, name: &str, dim: usize, offset: usize, len: usize) -> neuron_spec::Result<HostTensor> {
        let t = self.inner.read_slice(name, dim, offset, len)?;
        self.bytes.fetch_add(t.bytes().len(), Ordering::Relaxed);
        Ok(t)
    }
}

#[test]
fn plan_json_bytes_equal_the_bytes_sharding_reads() {
    for (dir, tp, fuse) in [("llama-gqa", 4, true), ("llama-gqa-sharded", 8, false), ("llama-mha-tied", 4, true)] {
        let o = Command::new(env!("CARGO_BIN_EXE_neuron-spec"))
            .args(["plan", fixture(dir).to_str().unwrap(), "--tp", &tp.to_string(), "--json"])
            .args(if fuse { vec!["--fuse-qkv"] } else { vec![] })
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let planned: Vec<usize> =
            v["bytes_read_per_rank"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let src = Counting { inner: hf(dir), bytes: AtomicUsize::new(0) };
        let meta = layout(dir, tp, fuse);
        let total = hf(dir).total_bytes();
        for (rank, p) in planned.iter().enumerate() {
            src.bytes.store(0, Ordering::Relaxed);
            adapt_state_dict(&meta, &src, tp, rank, PlanOptions::default()).unwrap();
            assert_eq!(src.bytes.load(Ordering::Relaxed), *p, "{dir} tp{tp} rank {rank}");
            assert!(*p < total, "a rank reads less than the whole checkpoint");
        }
    }
}

/// Bytes of `path` in the page cache (mincore over a fresh mapping), rounded to pages.
fn resident_bytes(path: &std::path::Path) -> usize {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let page = 4096usize;
    // SAFETY: a read-only shared mapping of a file we opened, unmapped below; mincore writes one byte per page
    // into a buffer of that size.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
        assert_ne!(p, libc::MAP_FAILED);
        let mut v = vec![0u8; len.div_ceil(page)];
        assert_eq!(libc::mincore(p, len, v.as_mut_ptr()), 0);
        libc::munmap(p, len);
        v.iter().filter(|b| **b & 1 == 1).count() * page
    }
}

/// Drops `path`'s clean pages from the page cache (after flushing it), so that what is resident afterwards
/// was read since.
fn evict(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: advice on a file descriptor we own.
    assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
}

/// What one rank really reads from disk, measured as page-cache residency of the input files (cache dropped
/// per file first), against the planned (logical) bytes. Printed for the README; asserted only where the
/// measurement is meaningful: it covers the planned bytes and stays well below the whole checkpoint.
#[test]
fn bytes_one_rank_reads_from_disk_are_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    // bf16 rows of 2048 values are one 4 KiB page: a column slice (o_proj, down_proj at tp 8, 512 bytes of
    // each row) touches every page of the tensor.
    let shape =
        neuron_spec::format::synthetic::Shape { hidden: 2048, layers: 1, heads: 16, kv: 4, inter: 2048, vocab: 2048 };
    neuron_spec_models::synthetic::generate(&dir, &shape, 500_000_000).unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    for f in &files {
        evict(f);
    }
    let before: usize = files.iter().map(|f| resident_bytes(f)).sum();
    if before > 1 << 20 {
        eprintln!("SKIPPED bytes_one_rank_reads_from_disk_are_measured: the page cache kept {before} bytes after POSIX_FADV_DONTNEED (this filesystem does not drop them)");
        return;
    }
    let (tp, rank) = (8, 0);
    let meta = neuron_spec_models::layout_of_dir(&dir, tp, neuron_spec_models::QkvLayout::Fused).unwrap();
    let hf = neuron_spec::format::HfCheckpoint::open(&dir).unwrap();
    let planned = neuron_spec::spec::compile::plan_shards(&meta, &hf, tp, PlanOptions::default())
        .unwrap()
        .bytes_read_per_rank()[rank];
    let local = adapt_state_dict(&meta, &hf, tp, rank, PlanOptions::default()).unwrap();
    drop(local);
    let measured: usize = files.iter().map(|f| resident_bytes(f)).sum::<usize>() - before;
    let total = hf.total_bytes();
    println!(
        "rank {rank} of tp {tp}: planned {planned} bytes, read from disk {measured} bytes ({:.2}× planned), checkpoint {total} bytes ({:.2} of it)",
        measured as f64 / planned as f64,
        measured as f64 / total as f64
    );
    assert!(measured + (64 << 10) >= planned, "the page cache holds less than the rank read");
    // What a rank must read at page granularity: its share of every row-sliced tensor, and every page of
    // o_proj and down_proj (a 512-byte column slice in each 4 KiB row). Without MADV_RANDOM the kernel's mmap
    // read-around read the whole checkpoint here (measured: 1.00 of it).
    let col_sliced = 2 * 2048 * 2048 * 2;
    let floor = col_sliced + (planned - col_sliced / tp);
    assert!(measured < floor + floor / 10, "read {measured} bytes, more than 1.1 × the page-granular need {floor}");
}
