//! `cargo run --release -p neuron-spec-bench --features mpi --bin mpi_forward -- [--bin PATH] [--tokens B,S]`:
//! forward time of 1, 2 and 4 MPI processes (`mpirun -np N neuron-spec forward --comm mpi`) against the same
//! number of threads (`neuron-spec forward --tp N`), side by side in one run, on a generated bf16 Llama large
//! enough that compute dominates loading. The logits of both are written and compared bit for bit.
//!
//! The `neuron-spec` binary must be a release build with `--features mpi` (default path:
//! `target/release/neuron-spec`). Each configuration runs three times alternating threads and processes; the
//! best wall time of each is kept (whole command: start-up, loading the rank's slices, the forward pass).

use neuron_spec::synthetic::{generate, Shape};
use neuron_spec::{HostTensor, TensorInfo};
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
    let shape = Shape { hidden: 1024, layers: 4, heads: 16, kv: 4, inter: 2816, vocab: 32000 };
    let dir = std::env::temp_dir().join(format!("neuron-spec-mpi-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hf = dir.join("hf");
    let params = generate(&hf, &shape, 1 << 30)?;
    let ids: Vec<i64> = (0..b * s).map(|i| ((i * 7919 + 13) % shape.vocab) as i64).collect();
    let ids_path = dir.join("input_ids.safetensors");
    let t = HostTensor::from_i64(vec![b, s], &ids)?;
    let info = TensorInfo { name: "input_ids".into(), dtype: t.dtype(), shape: vec![b, s] };
    neuron_spec::io::write_safetensors(&ids_path, &[info], &Default::default(), &mut |_| Ok(vec![t.clone()]))?;
    println!(
        "model: {:.0}M parameters bf16 (hidden {}, {} layers, {} heads / {} kv, intermediate {}, vocab {}), input {b}x{s} tokens, best of {runs}",
        params as f64 / 1e6,
        shape.hidden,
        shape.layers,
        shape.heads,
        shape.kv,
        shape.inter,
        shape.vocab
    );
    println!("| ranks | threads | MPI processes | processes / threads | logits |");
    println!("| --- | --- | --- | --- | --- |");
    let p = |p: &Path| p.display().to_string();
    for n in [1usize, 2, 4] {
        let (mut best_t, mut best_p) = (Duration::MAX, Duration::MAX);
        let (lt, lp) = (dir.join(format!("threads-{n}.safetensors")), dir.join(format!("mpi-{n}.safetensors")));
        for _ in 0..runs {
            let mut c = Command::new(&bin);
            c.args(["forward", &p(&hf), "--tp", &n.to_string(), "--fuse-qkv", "--input-ids", &p(&ids_path)])
                .args(["--output", &p(&lt)]);
            best_t = best_t.min(timed(c)?);
            let mut c = Command::new("mpirun");
            c.args(["--allow-run-as-root", "--oversubscribe", "-np", &n.to_string()])
                .arg(&bin)
                .args(["forward", &p(&hf), "--fuse-qkv", "--comm", "mpi", "--input-ids", &p(&ids_path)])
                .args(["--output", &p(&lp)]);
            best_p = best_p.min(timed(c)?);
        }
        let same = std::fs::read(&lt)? == std::fs::read(&lp)?;
        println!(
            "| {n} | {:.2} s | {:.2} s | {:.2} | {} |",
            best_t.as_secs_f64(),
            best_p.as_secs_f64(),
            best_p.as_secs_f64() / best_t.as_secs_f64(),
            if same { "bitwise equal" } else { "DIFFER" }
        );
        if !same {
            return Err(format!("{n} ranks: MPI logits differ from the threaded run's").into());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
