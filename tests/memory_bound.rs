//! Peak memory of consolidation is bounded by the largest tensor, not by the checkpoint: a bound check on a
//! generated checkpoint of about 87 MB, run in child processes (not a timing). It keeps at most two copies of the
//! checkpoint on disk at once (CI machines can be short of space).

use neuron_spec::synthetic::{generate, Shape};
use std::process::Command;

/// Runs the CLI and returns its peak resident set in bytes (`wait4` rusage of that child only).
#[allow(clippy::zombie_processes)] // reaped by wait4, which std does not expose
fn peak_rss(args: &[&str]) -> u64 {
    let child = Command::new(env!("CARGO_BIN_EXE_neuron-spec")).args(args).arg("--quiet").spawn().unwrap();
    let mut status = 0;
    // SAFETY: waits for our own child with valid out-pointers.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert!(pid > 0 && status == 0, "{args:?} failed with status {status}");
    ru.ru_maxrss as u64 * 1024
}

#[test]
fn consolidation_peak_rss_is_far_below_the_checkpoint_size() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let shape = Shape { hidden: 512, layers: 14, heads: 8, kv: 2, inter: 1408, vocab: 4096 };
    generate(&hf, &shape, 25_000_000).unwrap();
    let size: u64 = std::fs::read_dir(&hf).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(size > 85_000_000, "checkpoint is {size} bytes");
    let (s, out) = (tmp.path().join("s"), tmp.path().join("out"));
    let shard_rss = peak_rss(&["shard", hf.to_str().unwrap(), s.to_str().unwrap(), "--tp", "2", "--fuse-qkv"]);
    std::fs::remove_dir_all(&hf).unwrap();
    let cons_rss = peak_rss(&["consolidate", s.to_str().unwrap(), out.to_str().unwrap(), "--max-shard-size", "30MB"]);
    // The largest tensor is 4096 × 512 bf16 = 4 MiB and the process alone takes about 13 MiB; holding the model
    // would take more than 80 MiB.
    let bound = 40 << 20;
    println!("checkpoint {size} bytes; peak RSS shard {shard_rss}, consolidate {cons_rss}; bound {bound}");
    assert!(cons_rss < bound, "consolidate peak RSS {cons_rss} ≥ {bound}");
    assert!(shard_rss < bound, "shard peak RSS {shard_rss} ≥ {bound}");
}
