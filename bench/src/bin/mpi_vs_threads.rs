//! `cargo run --release -p neuron-spec-bench --features mpi --bin mpi_vs_threads -- [--bin PATH] [--tokens B,S]
//! [--runs N] [--small]`: forward and training-step time of 1, 2 and 4 MPI processes
//! (`mpirun -np N neuron-spec forward|train --comm mpi`) against the same number of threads
//! (`neuron-spec forward|train --tp N`), side by side in one run, on a generated bf16 Llama large enough that
//! compute dominates. Both write their outputs, which are compared byte for byte.
//!
//! The `neuron-spec` binary must be a release build with `--features mpi` (default path:
//! `target/release/neuron-spec`). Each configuration runs `--runs` times (default 3), alternating threads and
//! processes, and the best time of each is kept. Forward: the whole command (start-up, loading the rank's
//! slices, the forward pass, rank 0 writing the logits). Training step: (`--steps 3` − `--steps 1`) / 2 of the
//! whole command, so start-up, loading and writing the checkpoint cancel out.

use neuron_spec::format::synthetic::Shape;
use neuron_spec::{HostTensor, TensorInfo};
use neuron_spec_models::synthetic::generate;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn timed(mut c: Command) -> Res<Duration> {
    let t = Instant::now();
    let out = c.output()?;
    if !out.status.success() {
        return Err(format!(
            "{c:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).lines().take(20).collect::<Vec<_>>().join("\n")
        )
        .into());
    }
    Ok(t.elapsed())
}

/// Every file under `dir` (relative path, bytes), sorted.
fn tree(dir: &Path) -> Res<Vec<(PathBuf, Vec<u8>)>> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> Res<()> {
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                out.push((p.strip_prefix(root)?.to_path_buf(), std::fs::read(&p)?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn mpirun(n: usize, bin: &Path) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &n.to_string()]).arg(bin);
    c
}

fn real_main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let bin = PathBuf::from(arg(&args, "--bin").unwrap_or_else(|| "target/release/neuron-spec".into()));
    if !bin.exists() {
        return Err(format!(
            "{} not found: build it first with `cargo build --release --features mpi --bin neuron-spec`",
            bin.display()
        )
        .into());
    }
    let (b, s) = match arg(&args, "--tokens") {
        Some(t) => {
            let (b, s) = t.split_once(',').ok_or("--tokens B,S")?;
            (b.parse::<usize>()?, s.parse::<usize>()?)
        }
        None => (4, 128),
    };
    let runs: usize = arg(&args, "--runs").map(|r| r.parse()).transpose()?.unwrap_or(3);
    let shape = if args.iter().any(|a| a == "--small") {
        Shape { hidden: 512, layers: 4, heads: 8, kv: 4, inter: 1408, vocab: 8000 }
    } else {
        Shape { hidden: 1024, layers: 4, heads: 16, kv: 4, inter: 2816, vocab: 32000 }
    };
    let dir = std::env::temp_dir().join(format!("neuron-spec-mpi-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = bench(&bin, &dir, &shape, (b, s), runs);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn bench(bin: &Path, dir: &Path, shape: &Shape, (b, s): (usize, usize), runs: usize) -> Res<()> {
    let hf = dir.join("hf");
    let params = generate(&hf, shape, 1 << 30)?;
    let ids: Vec<i64> = (0..b * s).map(|i| ((i * 7919 + 13) % shape.vocab) as i64).collect();
    let ids_path = dir.join("input_ids.safetensors");
    let t = HostTensor::from_i64(vec![b, s], &ids)?;
    let info = TensorInfo { name: "input_ids".into(), dtype: t.dtype(), shape: vec![b, s] };
    neuron_spec::format::write_safetensors(&ids_path, &[info], &Default::default(), &mut |_| Ok(vec![t.clone()]))?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "model: {:.0}M parameters bf16 (hidden {}, {} layers, {} heads / {} kv, intermediate {}, vocab {}), \
         input {b}x{s} tokens, fused qkv, best of {runs}, {cores} cores",
        params as f64 / 1e6,
        shape.hidden,
        shape.layers,
        shape.heads,
        shape.kv,
        shape.inter,
        shape.vocab
    );
    let p = |p: &Path| p.display().to_string();
    let (hf_s, ids_s) = (p(&hf), p(&ids_path));
    let mut rows = Vec::new();
    for n in [1usize, 2, 4] {
        let np = n.to_string();
        // Forward.
        let (mut ft, mut fp) = (Duration::MAX, Duration::MAX);
        let (lt, lp) = (dir.join(format!("threads-{n}.safetensors")), dir.join(format!("mpi-{n}.safetensors")));
        for _ in 0..runs {
            let _ = std::fs::remove_file(&lt);
            let _ = std::fs::remove_file(&lp);
            let mut c = Command::new(bin);
            c.args(["forward", &hf_s, "--tp", &np, "--fuse-qkv", "--input-ids", &ids_s, "--output", &p(&lt)]);
            ft = ft.min(timed(c)?);
            let mut c = mpirun(n, bin);
            c.args(["forward", &hf_s, "--fuse-qkv", "--comm", "mpi", "--input-ids", &ids_s, "--output", &p(&lp)]);
            fp = fp.min(timed(c)?);
        }
        let logits = |f: &Path| -> Res<Vec<u8>> {
            Ok(neuron_spec::format::SafetensorsFile::open(f)?.tensor("logits")?.bytes().to_vec())
        };
        let f_same = logits(&lt)? == logits(&lp)?;
        // Training: the step time is (3 steps - 1 step) / 2 of the whole command.
        let (mut tt, mut tp) = ([Duration::MAX; 2], [Duration::MAX; 2]);
        let mut t_same = true;
        for _ in 0..runs {
            for (i, steps) in ["1", "3"].into_iter().enumerate() {
                let (ot, op) = (dir.join(format!("train-threads-{n}")), dir.join(format!("train-mpi-{n}")));
                let train = |c: &mut Command, out: &Path| {
                    c.args(["train", &hf_s, &p(out), "--fuse-qkv", "--data", &ids_s, "--steps", steps]);
                    c.args(["--lr", "1e-4", "--force"]);
                };
                let mut c = Command::new(bin);
                train(&mut c, &ot);
                c.args(["--tp", &np]);
                tt[i] = tt[i].min(timed(c)?);
                let mut c = mpirun(n, bin);
                train(&mut c, &op);
                c.args(["--comm", "mpi"]);
                tp[i] = tp[i].min(timed(c)?);
                t_same &= tree(&ot)? == tree(&op)?;
                std::fs::remove_dir_all(&ot)?;
                std::fs::remove_dir_all(&op)?;
            }
        }
        let step = |t: [Duration; 2]| t[1].saturating_sub(t[0]).as_secs_f64() / 2.0;
        let row = (n, ft.as_secs_f64(), fp.as_secs_f64(), f_same, step(tt), step(tp), t_same);
        println!("{n} ranks: {row:?}");
        rows.push(row);
        if !f_same || !t_same {
            return Err(format!("{n} ranks: the MPI outputs differ from the threaded run's").into());
        }
    }
    println!();
    println!("| ranks | forward: threads | MPI processes | processes / threads | training step: threads | MPI processes | processes / threads |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (n, ft, fp, _, tt, tp, _) in rows {
        println!("| {n} | {ft:.2} s | {fp:.2} s | {:.2} | {tt:.2} s | {tp:.2} s | {:.2} |", fp / ft, tp / tt.max(1e-9));
    }
    println!("(outputs byte-equal: logits of forward; rank files, optimizer state and metadata of train)");
    Ok(())
}
