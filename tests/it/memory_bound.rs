//! Peak memory of sharding and consolidation is bounded by the largest tensor, not by the checkpoint: a bound
//! check on generated checkpoints of about 50 MB and 200 MB, run in child processes (not a timing). The
//! resident set must stay under a bound well below the smaller checkpoint and must not grow with the model.
//!
//! The smaller one must also come back byte for byte. At most two copies of the larger one are on disk at once,
//! in whichever of the temp dir and `/dev/shm` has more room (CI machines can be short of disk).

use neuron_spec::format::synthetic::Shape;
use neuron_spec::format::HfCheckpoint;
use neuron_spec::TensorSource;
use neuron_spec_models::synthetic::generate;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the CLI and returns its own peak resident set in bytes: the VmHWM it reads from /proc/self/status just
/// before exiting (`NEURON_SPEC_REPORT_VMHWM`). `wait4`'s `ru_maxrss` is not used: Linux carries the
/// parent's peak into it across fork + exec, so a growing test process would mask a regression.
fn peak_rss(args: &[&Path]) -> u64 {
    let o = Command::new(env!("CARGO_BIN_EXE_neuron-spec"))
        .args(args)
        .arg("--quiet")
        .env("NEURON_SPEC_REPORT_VMHWM", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{args:?} failed: {err}");
    let kb = err
        .lines()
        .find_map(|l| l.strip_prefix("neuron-spec: VmHWM "))
        .and_then(|v| v.strip_suffix(" kB"))
        .unwrap_or_else(|| panic!("{args:?} reported no VmHWM: {err}"));
    kb.trim().parse::<u64>().unwrap() * 1024
}

/// Free bytes on the filesystem holding `dir` (0 when it cannot be read).
fn free_bytes(dir: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return 0 };
    // SAFETY: a valid C string and an out-pointer to a zeroed struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Generates a checkpoint of `layers` layers, shards it to tp 2, reshards that to tp 4, consolidates the tp 2
/// shards; returns (checkpoint bytes, peak RSS of shard, of consolidate, of reshard). With `compare`, the consolidated tensors must equal the
/// generated ones byte for byte (their slices are large enough to take the kernel-copy path); otherwise the
/// checkpoint is removed before consolidating, to keep two copies at most on disk.
fn run(root: &Path, layers: usize, compare: bool) -> (u64, u64, u64, u64) {
    let tmp = tempfile::tempdir_in(root).unwrap();
    let (hf, s, out) = (tmp.path().join("hf"), tmp.path().join("s"), tmp.path().join("out"));
    // 5.6 MB per layer; the largest tensor is the 4096 × 512 bf16 embedding, 4 MiB.
    let shape = Shape { hidden: 512, layers, heads: 8, kv: 2, inter: 1408, vocab: 4096 };
    generate(&hf, &shape, 25_000_000).unwrap();
    let size: u64 = std::fs::read_dir(&hf).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    let shard = peak_rss(&["shard".as_ref(), &hf, &s, "--tp".as_ref(), "2".as_ref(), "--fuse-qkv".as_ref()]);
    if !compare {
        std::fs::remove_dir_all(&hf).unwrap();
    }
    let r4 = tmp.path().join("r4");
    let reshard = peak_rss(&["reshard".as_ref(), &s, &r4, "--tp".as_ref(), "4".as_ref()]);
    let ck = neuron_spec::checkpoint::ShardedCheckpoint::open(&r4).unwrap();
    assert_eq!(ck.tp, 4);
    drop(ck);
    std::fs::remove_dir_all(&r4).unwrap();
    let cons = peak_rss(&["consolidate".as_ref(), &s, &out, "--max-shard-size".as_ref(), "30MB".as_ref()]);
    if compare {
        let (a, b) = (HfCheckpoint::open(&hf).unwrap(), HfCheckpoint::open(&out).unwrap());
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(sorted(a.names()), sorted(b.names()));
        for n in a.names() {
            let (x, y) = (a.tensor(&n).unwrap(), b.tensor(&n).unwrap());
            assert!(x.bytes() == y.bytes(), "{n} differs after the round trip");
            // Keep this process small: the next children's rusage includes its peak (see `peak_rss`).
            x.release();
            y.release();
        }
    }
    let files = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "safetensors"));
    assert!(files.count() > 1, "expected several output files under --max-shard-size 30MB");
    println!("{layers} layers, checkpoint {size} bytes: peak RSS shard {shard}, consolidate {cons}, reshard {reshard}");
    (size, shard, cons, reshard)
}

#[test]
fn peak_rss_is_bounded_by_the_largest_tensor_not_the_checkpoint() {
    let roots: Vec<PathBuf> =
        [std::env::temp_dir(), PathBuf::from("/dev/shm")].into_iter().filter(|d| d.is_dir()).collect();
    let root = roots.iter().max_by_key(|d| free_bytes(d)).unwrap();
    let (small_size, small_shard, small_cons, small_reshard) = run(root, 8, true);
    // 34 layers is about 200 MB; fall back to 20 (about 120 MB) where neither place has room for two copies.
    let big_layers = if free_bytes(root) > 600_000_000 { 34 } else { 20 };
    let (big_size, big_shard, big_cons, big_reshard) = run(root, big_layers, false);
    assert!(small_size > 45_000_000 && big_size > 2 * small_size, "checkpoints of {small_size} and {big_size} bytes");
    // The process alone takes about 13 MiB and the tensors in flight a few MiB more; holding even the small
    // checkpoint would take more than 45 MB.
    let bound = 40 << 20;
    for (what, rss) in [("shard", big_shard), ("consolidate", big_cons), ("reshard", big_reshard)] {
        assert!(rss < bound, "{what} peak RSS {rss} ≥ {bound}");
    }
    // Going from 50 MB to 120–200 MB of weights adds no more than page-table slack.
    let slack = 6 << 20;
    assert!(big_shard < small_shard + slack, "shard peak RSS grew with the model: {small_shard} → {big_shard}");
    assert!(big_cons < small_cons + slack, "consolidate peak RSS grew with the model: {small_cons} → {big_cons}");
    assert!(
        big_reshard < small_reshard + slack,
        "reshard peak RSS grew with the model: {small_reshard} → {big_reshard}"
    );
}
