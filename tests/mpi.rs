//! `forward --comm mpi` and `train --comm mpi` under mpirun (built only with `--features mpi`; skipped loudly
//! without mpirun): one process per rank, logits bitwise equal to the threaded run and within 1e-4 of
//! transformers' golden, trained checkpoints byte-equal to the threaded `train` with torch's losses, each
//! process reading only its own bytes (Phi-3 and Gemma 3, on the shared decoder, forward and training alike), and one failing
//! rank failing the whole job quickly, leaving nothing; Qwen3-MoE training (router and skipped experts) byte-equal
//! to the threaded run; `generate --comm mpi` gives transformers' greedy ids (and the threaded run's sampled ones).

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
    planned_bytes_with(dir, tp, true)
}

fn planned_bytes_with(dir: &Path, tp: usize, fuse_qkv: bool) -> Vec<usize> {
    let mut args = vec!["plan", s(dir), "--json"];
    let tp = tp.to_string();
    args.extend(["--tp", &tp]);
    if fuse_qkv {
        args.push("--fuse-qkv");
    }
    let out = Command::new(BIN).args(&args).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(ok(&out, "plan").as_bytes()).unwrap();
    v["bytes_read_per_rank"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

/// The `logits` tensor of a `forward --output` file, bit for bit (the threaded run also writes the hidden
/// states; MPI's rank 0 writes the gathered logits only).
fn logits(path: &std::path::Path) -> neuron_spec::HostTensor {
    neuron_spec::format::SafetensorsFile::open(path).unwrap().tensor("logits").unwrap()
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
        threads(&[
            "forward",
            s(&hf),
            "--tp",
            &np.to_string(),
            "--fuse-qkv",
            "--input-ids",
            s(&fixture("llama-gqa/golden.safetensors")),
            "--output",
            s(&thr),
        ]);
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
        threads(&[
            "forward",
            s(&sharded),
            "--input-ids",
            s(&fixture("llama-gqa/golden.safetensors")),
            "--output",
            s(&thr),
        ]);
        let (out, _) = mpirun(
            np,
            &[
                "forward",
                s(&sharded),
                "--comm",
                "mpi",
                "--input-ids",
                s(&fixture("llama-gqa/golden.safetensors")),
                "--output",
                s(&mpi),
            ],
        );
        let stdout = ok(&out, &format!("mpirun -np {np} sharded"));
        assert!(logits(&thr) == logits(&mpi), "np {np}: sharded logits differ");
        for (r, b) in bytes_per_rank(&stdout, np).into_iter().enumerate() {
            let f = sharded.join(format!("shards/model/dp_rank_00_tp_rank_{r:02}_pp_rank_00.safetensors"));
            assert!(stdout.contains(s(&f)), "rank {r} names its own file:\n{stdout}");
            let file = neuron_spec::format::SafetensorsFile::open(&f).unwrap();
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
    let (out, took) = mpirun(
        4,
        &[
            "forward",
            s(&sharded),
            "--comm",
            "mpi",
            "--input-ids",
            s(&fixture("llama-gqa/golden.safetensors")),
            "--output",
            s(&out_file),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job must fail:\n{stderr}");
    assert!(stderr.contains("error: rank 2/4:"), "rank 2's error is printed:\n{stderr}");
    assert!(stderr.contains("damaged rank file") && stderr.contains(s(&bad)), "it names the file:\n{stderr}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(!out_file.exists(), "no output");

    // A tp that disagrees with the number of processes is refused on every rank.
    let (out, _) = mpirun(
        2,
        &[
            "forward",
            s(&fixture("llama-gqa")),
            "--tp",
            "4",
            "--comm",
            "mpi",
            "--input-ids",
            s(&fixture("llama-gqa/golden.safetensors")),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--tp 4 with --comm mpi"), "{stderr}");
}

/// Every file under `dir` (relative paths, sorted) with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push((p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Asserts the two checkpoint directories hold the same files with the same bytes.
fn assert_same_tree(a: &Path, b: &Path, what: &str) {
    let (ta, tb) = (tree(a), tree(b));
    let names = |t: &[(PathBuf, Vec<u8>)]| t.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ta), names(&tb), "{what}: the files differ");
    for ((p, x), (_, y)) in ta.iter().zip(&tb) {
        assert!(x == y, "{what}: {} differs", p.display());
    }
}

/// No hidden staging directory of `out` is left next to it.
fn no_partials(out: &Path) {
    let name = out.file_name().unwrap().to_str().unwrap();
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!(".{name}.")))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

fn step_losses(stdout: &str) -> Vec<f32> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("step ").and_then(|r| r.split(" loss ").nth(1)).map(|x| x.parse().unwrap()))
        .collect()
}

/// torch's losses of the `llama-gqa` training golden (AdamW lr 1e-2, eps 1e-6, weight decay 0.01).
fn torch_losses() -> Vec<f32> {
    let g = neuron_spec::format::SafetensorsFile::open(&fixture("llama-gqa/train_golden.safetensors")).unwrap();
    g.tensor("loss").unwrap().to_f32_vec()
}

fn check_losses(what: &str, ours: &[f32], torch: &[f32]) {
    assert!(!ours.is_empty() && ours.len() <= torch.len(), "{what}: losses {ours:?}");
    for (a, b) in ours.iter().zip(torch) {
        assert!(((a - b) / b).abs() < 1e-4, "{what}: loss {a} vs torch {b} (all: {ours:?} vs {torch:?})");
    }
}

const HP: [&str; 8] = ["--lr", "1e-2", "--betas", "0.9,0.999", "--eps", "1e-6", "--weight-decay", "0.01"];

/// `train MODEL OUT --data <golden> --steps 1` plus the golden's hyperparameters and `extra`.
fn train_args<'a>(model: &'a Path, out: &'a Path, data: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", s(model), s(out), "--data", s(data), "--steps", "1"];
    a.extend(HP);
    a.extend(extra);
    a
}

/// 1 step from the HF checkpoint `hf` on `np` rank threads into `thr1` and on `np` MPI processes into `mpi1`:
/// the same bytes and torch's step-1 loss; returns mpirun's stdout.
fn step1_threads_and_mpi(
    hf: &Path,
    data: &Path,
    np: usize,
    fuse: bool,
    (thr1, mpi1): (&Path, &Path),
    torch: &[f32],
    what: &str,
) -> String {
    let tp = np.to_string();
    let fuse_arg: &[&str] = if fuse { &["--fuse-qkv"] } else { &[] };
    let mut extra = vec!["--tp", &tp];
    extra.extend(fuse_arg);
    threads(&train_args(hf, thr1, data, &extra));
    let mut args = train_args(hf, mpi1, data, fuse_arg);
    args.extend(["--comm", "mpi"]);
    let (out, _) = mpirun(np, &args);
    let stdout = ok(&out, &format!("{what}: mpirun train from HF"));
    check_losses(&format!("{what} step 1"), &step_losses(&stdout), &torch[..1]);
    assert_same_tree(thr1, mpi1, &format!("{what} step 1"));
    stdout
}

#[test]
fn mpi_train_writes_the_threaded_checkpoint_byte_for_byte() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hf = fixture("llama-gqa");
    let data = hf.join("train_golden.safetensors");
    let torch = torch_losses();
    for (np, fuse) in [(2usize, false), (4, true)] {
        // Step 1 from the HF checkpoint: each process adapts its own slices.
        let (thr1, mpi1) = (tmp.path().join(format!("thr1-{np}")), tmp.path().join(format!("mpi1-{np}")));
        let stdout = step1_threads_and_mpi(&hf, &data, np, fuse, (&thr1, &mpi1), &torch, &format!("np {np}"));
        assert_eq!(bytes_per_rank(&stdout, np), planned_bytes_with(&hf, np, fuse), "np {np}: bytes each process read");
        no_partials(&mpi1);

        // Step 2, resumed: each process opens its own rank file and its own moments.
        let (thr2, mpi2) = (tmp.path().join(format!("thr2-{np}")), tmp.path().join(format!("mpi2-{np}")));
        threads(&train_args(&thr1, &thr2, &data, &[]));
        let (out, _) = mpirun(np, &train_args(&mpi1, &mpi2, &data, &["--comm", "mpi"]));
        let stdout = ok(&out, &format!("mpirun -np {np} train resumed"));
        let losses = step_losses(&stdout);
        check_losses(&format!("np {np} step 2"), &losses, &torch[1..]);
        assert!(stdout.contains("step 2 loss"), "the step count comes from the checkpoint:\n{stdout}");
        assert_same_tree(&thr2, &mpi2, &format!("np {np} step 2"));
        for (r, b) in bytes_per_rank(&stdout, np).into_iter().enumerate() {
            let f = mpi1.join(format!("shards/model/dp_rank_00_tp_rank_{r:02}_pp_rank_00.safetensors"));
            assert!(stdout.contains(s(&f)), "rank {r} names its own file:\n{stdout}");
            let file = neuron_spec::format::SafetensorsFile::open(&f).unwrap();
            let payload: usize = file.names().map(|n| file.tensor(n).unwrap().bytes().len()).sum();
            assert_eq!(b, payload, "rank {r} read exactly its rank file's tensors");
        }
        no_partials(&mpi2);
    }
}

/// Qwen3-MoE and Mixtral under MPI (issue 19): the router trained through the routing weights, experts no token reached
/// skipped by AdamW, every process routing alike; 1 step from HF, then 2 resumed steps (the skipped-step
/// counts read back), checkpoints byte-equal to the threaded run, losses torch's.
#[test]
fn mpi_moe_training_equals_threads_byte_for_byte() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (dir, np, fuse) in [("qwen3-moe", 2usize, false), ("qwen3-moe-e8", 4, true), ("mixtral", 2, true)] {
        let hf = fixture(dir);
        let data = hf.join("train_golden.safetensors");
        let g = neuron_spec::format::SafetensorsFile::open(&data).unwrap();
        let torch = g.tensor("loss").unwrap().to_f32_vec();
        let what = format!("{dir} np {np}");
        let (thr1, mpi1) = (tmp.path().join(format!("{dir}-thr1")), tmp.path().join(format!("{dir}-mpi1")));
        step1_threads_and_mpi(&hf, &data, np, fuse, (&thr1, &mpi1), &torch, &what);
        no_partials(&mpi1);
        let (thr3, mpi3) = (tmp.path().join(format!("{dir}-thr3")), tmp.path().join(format!("{dir}-mpi3")));
        let resume = |from: &Path, to: &Path, mpi: bool| {
            let mut a = vec!["train".to_string(), s(from).into(), s(to).into(), "--data".into(), s(&data).into()];
            a.extend(["--steps".into(), "2".into()]);
            a.extend(HP.iter().map(|x| x.to_string()));
            if mpi {
                a.extend(["--comm".into(), "mpi".into()]);
            }
            a
        };
        let a = resume(&thr1, &thr3, false);
        threads(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let a = resume(&mpi1, &mpi3, true);
        let (out, _) = mpirun(np, &a.iter().map(String::as_str).collect::<Vec<_>>());
        let stdout = ok(&out, &format!("{what}: train resumed"));
        check_losses(&format!("{what} steps 2, 3"), &step_losses(&stdout), &torch[1..]);
        assert_same_tree(&thr3, &mpi3, &format!("{what} step 3"));
        no_partials(&mpi3);
    }
}

#[test]
fn a_failing_rank_fails_mpi_training_within_seconds_and_leaves_nothing() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("llama-gqa/train_golden.safetensors");
    let trained = tmp.path().join("trained");
    threads(&train_args(&fixture("llama-gqa"), &trained, &data, &["--tp", "4", "--fuse-qkv"]));
    for (what, bad) in [
        ("weights", trained.join("shards/model/dp_rank_00_tp_rank_02_pp_rank_00.safetensors")),
        ("moments", trained.join("optimizer/exp_avg_sq/shards/model/dp_rank_00_tp_rank_02_pp_rank_00.safetensors")),
    ] {
        let good = std::fs::read(&bad).unwrap();
        let mut bytes = good.clone();
        let n = bytes.len();
        bytes[n - 100] ^= 0xff; // damage in the tensor data, not the header
        std::fs::write(&bad, bytes).unwrap();
        let out_dir = tmp.path().join("out");
        let (out, took) = mpirun(4, &train_args(&trained, &out_dir, &data, &["--comm", "mpi"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: the job must fail:\n{stderr}");
        assert!(stderr.contains("error: rank 2/4:"), "{what}: rank 2's error is printed:\n{stderr}");
        assert!(
            stderr.contains("damaged rank file") && stderr.contains(s(&bad)),
            "{what}: it names the file:\n{stderr}"
        );
        assert!(took < Duration::from_secs(30), "{what}: took {took:?}");
        assert!(!out_dir.exists(), "{what}: no output");
        no_partials(&out_dir);
        std::fs::write(&bad, good).unwrap();
    }

    // An existing output is refused before training (rank 0 commits, so its view counts), and left alone.
    let (out, _) = mpirun(2, &train_args(&fixture("llama-gqa"), &trained, &data, &["--comm", "mpi"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("exists (use --force"), "{stderr}");
    assert!(trained.join("optimizer/state.json").is_file());
    // A tp that disagrees with the number of processes is refused.
    let (out, _) = mpirun(2, &train_args(&trained, &tmp.path().join("o2"), &data, &["--comm", "mpi"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("sharded at tp 4, but 2 MPI processes"), "{stderr}");
}

/// Every dense family trains under MPI as on threads (Phi-3: the shared decoder's packed variants; Gemma 3: its
/// norms, sliding layers and GELU-tanh MLP; Mistral, Qwen2, Qwen3, Granite): 1 step from HF at -np 2 (separate
/// q/k/v), then 1 resumed step, each checkpoint byte for byte the threaded one, the losses torch's. (Llama, and the
/// MoE families, in the tests above.)
#[test]
fn mpi_train_runs_every_dense_family_like_threads_byte_for_byte() {
    if !have_mpirun() {
        return;
    }
    for dir in ["phi3", "gemma3", "mistral", "qwen2", "qwen3", "granite"] {
        let tmp = tempfile::tempdir().unwrap();
        let hf = fixture(dir);
        let data = hf.join("train_golden.safetensors");
        let g = neuron_spec::format::SafetensorsFile::open(&data).unwrap();
        let torch = g.tensor("loss").unwrap().to_f32_vec();
        let (thr1, mpi1, thr2, mpi2) =
            (tmp.path().join("thr1"), tmp.path().join("mpi1"), tmp.path().join("thr2"), tmp.path().join("mpi2"));
        threads(&train_args(&hf, &thr1, &data, &["--tp", "2"]));
        let (out, _) = mpirun(2, &train_args(&hf, &mpi1, &data, &["--comm", "mpi"]));
        let stdout = ok(&out, &format!("mpirun -np 2 train {dir} from HF"));
        check_losses(&format!("{dir} step 1"), &step_losses(&stdout), &torch[..1]);
        assert_same_tree(&thr1, &mpi1, &format!("{dir} step 1"));
        threads(&train_args(&thr1, &thr2, &data, &[]));
        let (out, _) = mpirun(2, &train_args(&mpi1, &mpi2, &data, &["--comm", "mpi"]));
        let stdout = ok(&out, &format!("mpirun -np 2 train {dir} resumed"));
        check_losses(&format!("{dir} step 2"), &step_losses(&stdout), &torch[1..]);
        assert_same_tree(&thr2, &mpi2, &format!("{dir} step 2"));
    }
}

/// Every family but Llama (tested above) runs forward under MPI as on threads: from HF at -np 2 and from a
/// sharded checkpoint at -np 4.
#[test]
fn mpi_forward_runs_every_family_like_threads_bit_for_bit() {
    if !have_mpirun() {
        return;
    }
    for dir in ["phi3", "gemma3", "mistral", "qwen2", "qwen3", "granite", "qwen3-moe", "mixtral"] {
        let tmp = tempfile::tempdir().unwrap();
        let hf = fixture(dir);
        let golden = hf.join("golden.safetensors");
        // HF at -np 2 (separate q/k/v), against transformers' golden and the threaded run.
        let (thr, mpi) = (tmp.path().join("thr.safetensors"), tmp.path().join("mpi.safetensors"));
        threads(&["forward", s(&hf), "--tp", "2", "--golden", s(&golden), "--output", s(&thr)]);
        let (out, _) = mpirun(2, &["forward", s(&hf), "--comm", "mpi", "--golden", s(&golden), "--output", s(&mpi)]);
        let stdout = ok(&out, &format!("mpirun -np 2 {dir}"));
        assert!(stdout.contains("max_abs_diff"), "{stdout}");
        assert!(logits(&thr) == logits(&mpi), "{dir} HF logits differ");
        assert_eq!(bytes_per_rank(&stdout, 2), planned_bytes_with(&hf, 2, false), "bytes each process read");
        // A sharded checkpoint at -np 4 (fused): each process opens its own rank file.
        let sharded = tmp.path().join("sharded");
        threads(&["shard", s(&hf), s(&sharded), "--tp", "4", "--fuse-qkv"]);
        let (thr, mpi) = (tmp.path().join("thr4.safetensors"), tmp.path().join("mpi4.safetensors"));
        threads(&["forward", s(&sharded), "--input-ids", s(&golden), "--output", s(&thr)]);
        let (out, _) =
            mpirun(4, &["forward", s(&sharded), "--comm", "mpi", "--golden", s(&golden), "--output", s(&mpi)]);
        let stdout = ok(&out, &format!("mpirun -np 4 {dir} sharded"));
        assert!(logits(&thr) == logits(&mpi), "{dir} sharded logits differ");
        for (r, b) in bytes_per_rank(&stdout, 4).into_iter().enumerate() {
            let f = sharded.join(format!("shards/model/dp_rank_00_tp_rank_{r:02}_pp_rank_00.safetensors"));
            let file = neuron_spec::format::SafetensorsFile::open(&f).unwrap();
            let payload: usize = file.names().map(|n| file.tensor(n).unwrap().bytes().len()).sum();
            assert_eq!(b, payload, "rank {r} read exactly its rank file's tensors");
        }
    }
}

/// The ids `generate --json` printed.
fn generated_ids(stdout: &str) -> Vec<i64> {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("generate --json prints one JSON object");
    v["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn mpi_generate_equals_transformers_greedy_ids_and_streams_on_rank_0_only() {
    if !have_mpirun() {
        return;
    }
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("text/generate_golden.json")).unwrap()).unwrap();
    let golden: Vec<i64> = g["plain"]["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    let prompt = g["prompt"].as_str().unwrap();
    let dir = fixture("llama-gqa");
    let args = ["generate", s(&dir), "--prompt", prompt, "--max-new-tokens", "20", "--comm", "mpi"];
    for np in [1, 2, 4] {
        let (out, _) = mpirun(np, &[&args[..], &["--json"]].concat());
        assert_eq!(generated_ids(&ok(&out, &format!("mpi generate -np {np}"))), golden, "-np {np}");
    }
    // Streamed: rank 0 prints the text once.
    let (out, _) = mpirun(2, &args);
    assert_eq!(ok(&out, "mpi generate streamed"), format!("{}\n", g["plain"]["text"].as_str().unwrap()));
    // Seeded sampling: the threaded run's tokens.
    let sample = ["--seed", "7", "--temperature", "1.5", "--json"];
    let (out, _) = mpirun(2, &[&args[..], &sample[..]].concat());
    let threaded = threads(&[&args[..6], &sample[..], &["--tp", "2"]].concat());
    assert_eq!(generated_ids(&ok(&out, "mpi sampling")), generated_ids(&threaded));
}

/// optimum-neuron's own `.pt` checkpoints (plain and xser) under mpirun: each process opens only its own rank
/// file, and the logits equal the threaded run's bit for bit (and transformers' golden).
#[test]
fn mpi_forward_reads_optimum_neuron_pt_checkpoints_like_threads() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let golden = fixture("llama-gqa/golden.safetensors");
    for (name, np) in [("on-ckpt/llama-gqa-tp2-plain", 2usize), ("on-ckpt/llama-gqa-tp4-xser", 4)] {
        let dir = fixture(name);
        let thr = tmp.path().join(format!("threads-{np}.safetensors"));
        let mpi = tmp.path().join(format!("mpi-{np}.safetensors"));
        threads(&["forward", s(&dir), "--input-ids", s(&golden), "--output", s(&thr)]);
        let (out, _) = mpirun(np, &["forward", s(&dir), "--comm", "mpi", "--golden", s(&golden), "--output", s(&mpi)]);
        let stdout = ok(&out, &format!("mpirun -np {np} {name}"));
        assert!(stdout.contains("max_abs_diff"), "rank 0 compares with the golden:\n{stdout}");
        assert!(logits(&thr) == logits(&mpi), "{name}: logits differ from the threaded run's");
        for r in 0..np {
            let own = format!("dp_rank_00_tp_rank_{r:02}_pp_rank_00.pt");
            assert!(stdout.lines().any(|l| l.contains(&format!("rank {r}/{np}")) && l.contains(&own)), "{stdout}");
        }
    }
    // optimum-neuron's adapter shards beside the `.pt` base: read under MPI as on threads (the same loader),
    // the logits bit for bit the threaded run's.
    let dir = fixture("on-ckpt/llama-gqa-tp4-lora-plain");
    let (thr, mpi) = (tmp.path().join("lora-threads.safetensors"), tmp.path().join("lora-mpi.safetensors"));
    threads(&["forward", s(&dir), "--input-ids", s(&golden), "--output", s(&thr)]);
    let (out, _) = mpirun(4, &["forward", s(&dir), "--comm", "mpi", "--input-ids", s(&golden), "--output", s(&mpi)]);
    ok(&out, "mpirun -np 4 .pt with the reference's adapter shards");
    assert!(logits(&thr) == logits(&mpi), "the reference's adapter: logits differ from the threaded run's");
}

/// LoRA training under mpirun (issue 20): 1 step from HF with `--adapter` at -np 2 (separate q/k/v) and -np 4
/// (fused), then 1 resumed step; each checkpoint (frozen base, trained adapter, AdamW state) byte for byte the
/// threaded run's, the losses peft's (`llama-gqa-lora/train_golden_lora`).
#[test]
fn mpi_lora_training_equals_threads_byte_for_byte() {
    if !have_mpirun() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("llama-gqa-lora/train_golden_lora.safetensors");
    let peft = neuron_spec::format::SafetensorsFile::open(&data).unwrap().tensor("loss").unwrap().to_f32_vec();
    let (hf, lora) = (fixture("llama-gqa"), fixture("llama-gqa-lora"));
    for (np, fuse) in [(2usize, false), (4, true)] {
        let what = format!("lora -np {np} fuse {fuse}");
        let p = |n: &str| tmp.path().join(format!("{n}-{np}"));
        let (thr1, mpi1, thr2, mpi2) = (p("thr1"), p("mpi1"), p("thr2"), p("mpi2"));
        let tp = np.to_string();
        let mut extra = vec!["--adapter", s(&lora)];
        if fuse {
            extra.push("--fuse-qkv");
        }
        threads(&train_args(&hf, &thr1, &data, &[&extra[..], &["--tp", &tp]].concat()));
        let (out, _) = mpirun(np, &train_args(&hf, &mpi1, &data, &[&extra[..], &["--comm", "mpi"]].concat()));
        let stdout = ok(&out, &format!("{what}: mpirun train from HF"));
        check_losses(&format!("{what} step 1"), &step_losses(&stdout), &peft[..1]);
        assert_same_tree(&thr1, &mpi1, &format!("{what} step 1"));
        no_partials(&mpi1);
        // Resumed: the adapter, its moments and the step from the checkpoint, each process its own rank files.
        threads(&train_args(&thr1, &thr2, &data, &[]));
        let (out, _) = mpirun(np, &train_args(&mpi1, &mpi2, &data, &["--comm", "mpi"]));
        let stdout = ok(&out, &format!("{what}: mpirun train resumed"));
        check_losses(&format!("{what} step 2"), &step_losses(&stdout), &peft[1..2]);
        assert_same_tree(&thr2, &mpi2, &format!("{what} step 2"));
    }
}
