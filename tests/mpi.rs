//! `forward --comm mpi` under mpirun (built only with `--features mpi`; skipped loudly without mpirun):
//! one process per rank, logits bitwise equal to the threaded run and within 1e-4 of transformers' golden,
//! each process reading only its own bytes, and one failing rank failing the whole job quickly.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_neuron-spec");
/// A hung collective fails the test instead of the CI run.
const TIMEOUT: Duration = Duration::from_secs(90);

fn have_mpirun() -> bool {
    let ok = Command::new("mpirun").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !matches!(ok, Ok(s) if s.success()) {
        eprintln!(
            "\n*** SKIPPED: mpirun not found (install openmpi-bin and libopenmpi-dev; .ci/steps/60-mpi.sh does) ***\n"
        );
        return false;
    }
    true
}

/// Runs `cmd` with a deadline; returns its output and how long it took.
fn run_with_timeout(mut cmd: Command) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "timed out after {TIMEOUT:?} (a rank hangs?)\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out, start.elapsed())
}

fn mpirun(np: usize, args: &[&str]) -> (Output, Duration) {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string(), BIN]).args(args);
    run_with_timeout(c)
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn threads(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    ok(&out, &format!("threads {args:?}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `rank r/N: read B bytes of ...` lines, as (rank, bytes), sorted by rank.
fn bytes_per_rank(stdout: &str, np: usize) -> Vec<usize> {
    let mut v: Vec<(usize, usize)> = stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("rank ")?;
            let (rn, rest) = rest.split_once(": read ")?;
            let (r, n) = rn.split_once('/')?;
            assert_eq!(n.parse::<usize>().unwrap(), np, "{l}");
            Some((r.parse().unwrap(), rest.split_once(' ')?.0.parse().unwrap()))
        })
        .collect();
    v.sort();
    assert_eq!(v.iter().map(|x| x.0).collect::<Vec<_>>(), (0..np).collect::<Vec<_>>(), "one line per rank:\n{stdout}");
    v.into_iter().map(|x| x.1).collect()
}

fn planned_bytes(dir: &Path, tp: usize) -> Vec<usize> {
    let out =
        Command::new(BIN).args(["plan", s(dir), "--tp", &tp.to_string(), "--fuse-qkv", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(ok(&out, "plan").as_bytes()).unwrap();
    v["bytes_read_per_rank"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

/// The `logits` tensor of a `forward --output` file, bit for bit (the threaded run also writes the hidden
/// states; MPI's rank 0 writes the gathered logits only).
fn logits(path: &std::path::Path) -> neuron_spec::HostTensor {
    neuron_spec::io::SafetensorsFile::open(path).unwrap().tensor("logits").unwrap()
}

#[test]
fn mpi_forward_equals_threads_bit_for_bit_and_reads_only_each_ranks_bytes() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hf = fixture("llama-gqa");
    let golden = hf.join("golden.safetensors");
    for np in [2usize, 4] {
        // HF input: each process adapts its own slices.
        let thr: PathBuf = tmp.path().join(format!("threads-hf-{np}.safetensors"));
        let mpi: PathBuf = tmp.path().join(format!("mpi-hf-{np}.safetensors"));
        threads(&["forward", s(&hf), "--tp", &np.to_string(), "--fuse-qkv", "--output", s(&thr)]);
        let (out, _) = mpirun(
            np,
            &["forward", s(&hf), "--fuse-qkv", "--comm", "mpi", "--golden", s(&golden), "--output", s(&mpi)],
        );
        let stdout = ok(&out, &format!("mpirun -np {np} hf"));
        assert!(stdout.contains("max_abs_diff"), "rank 0 compares with the golden:\n{stdout}");
        assert!(logits(&thr) == logits(&mpi), "np {np}: HF logits differ");
        let read = bytes_per_rank(&stdout, np);
        assert_eq!(read, planned_bytes(&hf, np), "np {np}: bytes each process read");
        let total = hf.join("model.safetensors").metadata().unwrap().len() as usize;
        assert!(read.iter().all(|b| *b < total), "each process reads less than the checkpoint: {read:?}");

        // Sharded input: each process opens only its own rank file.
        let sharded = tmp.path().join(format!("sharded-{np}"));
        threads(&["shard", s(&hf), s(&sharded), "--tp", &np.to_string(), "--fuse-qkv"]);
        let thr = tmp.path().join(format!("threads-sh-{np}.safetensors"));
        let mpi = tmp.path().join(format!("mpi-sh-{np}.safetensors"));
        threads(&["forward", s(&sharded), "--output", s(&thr)]);
        let (out, _) = mpirun(np, &["forward", s(&sharded), "--comm", "mpi", "--output", s(&mpi)]);
        let stdout = ok(&out, &format!("mpirun -np {np} sharded"));
        assert!(logits(&thr) == logits(&mpi), "np {np}: sharded logits differ");
        for (r, b) in bytes_per_rank(&stdout, np).into_iter().enumerate() {
            let f = sharded.join(format!("shards/model/dp_rank_00_tp_rank_{r:02}_pp_rank_00.safetensors"));
            assert!(stdout.contains(s(&f)), "rank {r} names its own file:\n{stdout}");
            let file = neuron_spec::io::SafetensorsFile::open(&f).unwrap();
            let payload: usize = file.names().map(|n| file.tensor(n).unwrap().bytes().len()).sum();
            assert_eq!(b, payload, "rank {r} read exactly its rank file's tensors");
        }
    }
}

#[test]
fn one_failing_rank_fails_the_job_with_its_error_within_seconds() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("sharded");
    threads(&["shard", s(&fixture("llama-gqa")), s(&sharded), "--tp", "4", "--fuse-qkv"]);
    let bad = sharded.join("shards/model/dp_rank_00_tp_rank_02_pp_rank_00.safetensors");
    let mut bytes = std::fs::read(&bad).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff; // damage in the tensor data, not the header
    std::fs::write(&bad, bytes).unwrap();
    let out_file = tmp.path().join("logits.safetensors");
    let (out, took) = mpirun(4, &["forward", s(&sharded), "--comm", "mpi", "--output", s(&out_file)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job must fail:\n{stderr}");
    assert!(stderr.contains("error: rank 2/4:"), "rank 2's error is printed:\n{stderr}");
    assert!(stderr.contains("damaged rank file") && stderr.contains(s(&bad)), "it names the file:\n{stderr}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(!out_file.exists(), "no output");

    // A tp that disagrees with the number of processes is refused on every rank.
    let (out, _) = mpirun(2, &["forward", s(&fixture("llama-gqa")), "--tp", "4", "--comm", "mpi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--tp 4 with --comm mpi"), "{stderr}");
}
