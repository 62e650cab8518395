//! Consolidating an optimum-neuron xser checkpoint (~1 GB) against the copy floor and against consolidating
//! the safetensors checkpoint it was made from, with peak RSS: part of the bench's `io` part, and alone as
//! `cargo run --release -p neuron-spec-bench --bin xser_consolidate [-- --layers 9 --dir /tmp/xser-bench]`.
//!
//! The checkpoint is made like the fixtures' `on-ckpt/`: a synthetic bf16 Llama (hidden 2048, 16 heads, 4 kv
//! heads, intermediate 5632, vocab 32000) is sharded by us at tp 4 (fused qkv), then `bench/make_xser.py`
//! rewrites the rank files with `torch.save` in the xser layout (needs torch + safetensors; the bench is
//! skipped with a message otherwise). Each run is a child process (this binary re-executed) that prints its
//! own VmHWM. Ours (`consolidate`) and the floor (`std::fs::copy` of every input data file, fsynced)
//! and the safetensors path (`consolidate` of the tp 4 safetensors checkpoint) alternate, three runs each, after
//! `sync`; the best of each is kept. Target: the xser path's peak RSS within 2× the safetensors path's. The
//! output is checked against the safetensors path's.

use neuron_spec::checkpoint::WriteOptions;
use neuron_spec::format::synthetic::Shape;
use neuron_spec::{consolidate, shard};
use neuron_spec_models::synthetic::generate;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> Res<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn bytes_of(dir: &Path) -> Res<u64> {
    let mut v = Vec::new();
    files(dir, &mut v)?;
    Ok(v.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum())
}

fn vm_hwm() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).ok_or("no VmHWM")?;
    Ok(kb.trim().trim_end_matches("kB").trim().parse::<u64>()? * 1024)
}

/// Child mode (after `xser-op`): `consolidate <in> <out>` or `copy <in> <out>`; prints `VmHWM <bytes>`.
pub fn run_op(a: &[String]) -> Res<()> {
    let (op, src, dst) = match a {
        [op, s, d] => (op.as_str(), PathBuf::from(s), PathBuf::from(d)),
        _ => return Err("xser-op <consolidate|copy> <in> <out>".into()),
    };
    match op {
        "consolidate" => {
            consolidate(&src, &dst, &WriteOptions::default())?;
        }
        "copy" => {
            let mut v = Vec::new();
            files(&src.join("shards/model"), &mut v)?;
            std::fs::create_dir_all(&dst)?;
            for (i, f) in v.iter().enumerate() {
                let to = dst.join(format!("{i}"));
                std::fs::copy(f, &to)?;
                std::fs::File::open(&to)?.sync_all()?;
            }
        }
        other => return Err(format!("unknown op {other}").into()),
    }
    println!("VmHWM {}", vm_hwm()?);
    Ok(())
}

fn child(op: &str, src: &Path, dst: &Path) -> Res<(f64, u64)> {
    let _ = std::fs::remove_dir_all(dst);
    Command::new("sync").status()?;
    let t = Instant::now();
    let o = Command::new(std::env::current_exe()?).args(["xser-op", op]).arg(src).arg(dst).output()?;
    let secs = t.elapsed().as_secs_f64();
    if !o.status.success() {
        return Err(format!("{op} failed: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let hwm = text.lines().rev().find_map(|l| l.strip_prefix("VmHWM ")).ok_or("no VmHWM")?.trim().parse()?;
    Ok((secs, hwm))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// The xser bench (`args`: `--layers`, `--dir`, `--keep`) with `python` making the checkpoint; returns the
/// missed targets.
pub fn report(args: &[String], python: &str) -> Res<Vec<String>> {
    let has_torch =
        Command::new(python).args(["-c", "import torch, safetensors"]).output().is_ok_and(|o| o.status.success());
    if !has_torch {
        println!("xser bench: skipped: {python} cannot import torch and safetensors (pip install torch safetensors)");
        return Ok(vec![]);
    }
    let layers: usize = arg(args, "--layers").map(|v| v.parse()).transpose()?.unwrap_or(9);
    let dir = PathBuf::from(
        arg(args, "--dir").unwrap_or_else(|| std::env::temp_dir().join("neuron-spec-xser-bench").display().to_string()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let shape = Shape { hidden: 2048, layers, heads: 16, kv: 4, inter: 5632, vocab: 32000 };
    let (hf, st, xs) = (dir.join("hf"), dir.join("st-tp4"), dir.join("xser-tp4"));
    let t = Instant::now();
    let params = generate(&hf, &shape, 500_000_000)?;
    let meta = neuron_spec_models::layout_of_dir(&hf, 4, neuron_spec_models::QkvLayout::Fused)?;
    shard(&hf, &st, &meta, 4, &WriteOptions::default())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("make_xser.py");
    let ok = Command::new(python).arg(&script).arg(&st).arg(&xs).status()?.success();
    if !ok {
        return Err("make_xser.py failed".into());
    }
    let input = bytes_of(&xs.join("shards/model"))?;
    println!(
        "xser checkpoint: {:.2}B params bf16, tp 4, {layers} layers, {:.0} MiB of .pt files, made in {:.1}s",
        params as f64 / 1e9,
        mib(input),
        t.elapsed().as_secs_f64()
    );
    let (ours_dir, floor_dir, check) = (dir.join("consolidated"), dir.join("floor"), dir.join("check"));
    let (mut ours, mut floor, mut st_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        ours.push(child("consolidate", &xs, &ours_dir)?);
        floor.push(child("copy", &xs, &floor_dir)?);
        // The safetensors path on the same model, for its peak RSS; its output checks ours below.
        st_runs.push(child("consolidate", &st, &check)?);
    }
    let best = |v: &[(f64, u64)]| v.iter().cloned().fold((f64::MAX, 0), |a, b| if b.0 < a.0 { b } else { a });
    let (o, f) = (best(&ours), best(&floor));
    let (st_best, st_rss) = (best(&st_runs), st_runs.iter().map(|r| r.1).max().unwrap_or(0));
    let xser_rss = ours.iter().map(|r| r.1).max().unwrap_or(0);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    files(&ours_dir, &mut a)?;
    files(&check, &mut b)?;
    let rel = |root: &Path, v: &[PathBuf]| -> Vec<PathBuf> {
        let mut r: Vec<PathBuf> = v.iter().filter_map(|p| p.strip_prefix(root).ok().map(Path::to_path_buf)).collect();
        r.sort();
        r
    };
    let (ra, rb) = (rel(&ours_dir, &a), rel(&check, &b));
    let mut differing: Vec<String> = Vec::new();
    if ra != rb {
        differing.push(format!("file lists differ: {ra:?} vs {rb:?}"));
    }
    for f in ra.iter().filter(|f| rb.contains(f)) {
        if std::fs::read(ours_dir.join(f)).ok() != std::fs::read(check.join(f)).ok() {
            differing.push(f.display().to_string());
        }
    }
    let same = differing.is_empty();
    let out = bytes_of(&ours_dir)?;
    println!("| operation | ours | copy floor | ours / floor | peak RSS | output |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| consolidate xser tp 4 → hf | {:.2} s | {:.2} s | {:.2} | {:.0} MiB | {:.0} MiB, identical to the safetensors path: {same} |",
        o.0,
        f.0,
        o.0 / f.0,
        mib(o.1),
        mib(out)
    );
    println!("| consolidate safetensors tp 4 → hf (same model) | {:.2} s | | | {:.0} MiB | |", st_best.0, mib(st_rss));
    println!(
        "floor peak RSS {:.0} MiB; runs ours {:?}, floor {:?}, safetensors path {:?}",
        mib(f.1),
        ours.iter().map(|r| r.0).collect::<Vec<_>>(),
        floor.iter().map(|r| r.0).collect::<Vec<_>>(),
        st_runs.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let ratio = xser_rss as f64 / st_rss.max(1) as f64;
    let rss_ok = ratio <= 2.0;
    println!(
        "xser target: peak RSS ≤ 2 × the safetensors path's (worst run of each): {} ({:.0} MiB / {:.0} MiB = {ratio:.2})",
        if rss_ok { "PASS" } else { "FAIL" },
        mib(xser_rss),
        mib(st_rss)
    );
    if !args.iter().any(|a| a == "--keep") {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !same {
        return Err(format!("the xser consolidation differs from the safetensors one: {}", differing.join(", ")).into());
    }
    Ok(if rss_ok {
        vec![]
    } else {
        vec![format!("xser consolidation peak RSS ≤ 2 × safetensors path ({ratio:.2})")]
    })
}
