//! The command line, as a user runs it: exit codes, one-line errors, nothing partial left behind.

use crate::common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neuron-spec")).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn shard_then_consolidate_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let o = run(&["shard", s(&fixture("llama-gqa")), s(&a), "--tp", "2", "--fuse-qkv"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("2 rank files") && stdout.contains("rank 1: read"), "{stdout}");
    let o = run(&["consolidate", s(&a), s(&b), "--max-shard-size", "100KB"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(b.join("model.safetensors.index.json").exists());
    assert_same_tensors(&neuron_spec::format::HfCheckpoint::open(&b).unwrap(), &hf("llama-gqa"), "cli round trip");
}

#[test]
fn errors_are_one_line_non_zero_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run(&["shard", s(&fixture("llama-gqa")), s(&out), "--tp", "3"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("num_attention_heads") && err.contains("tp 3"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no temporary directory left");
}

#[test]
fn existing_destination_is_refused_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    let o = run(&["shard", s(&fixture("llama-gqa")), s(&out), "--tp", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert!(out.join("keep").exists(), "untouched");
    let o = run(&["shard", s(&fixture("llama-gqa")), s(&out), "--tp", "2", "--force"]);
    assert!(o.status.success());
    assert!(!out.join("keep").exists() && out.join("shards/mp_metadata_pp_rank_0.json").exists());
}

#[test]
fn usage_errors_exit_two() {
    assert_eq!(run(&["shard"]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn plan_writes_nothing_and_reports_bytes_per_rank() {
    // On a copy of the checkpoint, run from inside a scratch directory: afterwards both hold exactly what they
    // held before, byte for byte.
    let tmp = tempfile::tempdir().unwrap();
    let (model, cwd) = (tmp.path().join("m"), tmp.path().join("cwd"));
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("llama-gqa").join(f), model.join(f)).unwrap();
    }
    let snapshot = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&model);
    let o = Command::new(env!("CARGO_BIN_EXE_neuron-spec"))
        .args(["plan", s(&model), "--tp", "4", "--json"])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(snapshot(&model) == before, "plan changed the checkpoint directory");
    assert!(snapshot(&cwd).is_empty(), "plan wrote into the working directory");
    let mut top: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    top.sort();
    assert_eq!(top, ["cwd", "m"], "plan wrote beside the checkpoint");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let read: Vec<u64> = v["bytes_read_per_rank"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(read.len(), 4);
    // Each rank reads a quarter of every sharded tensor, the replicated norms whole, and, since tp 4 tiles the
    // 2 kv heads twice, half (not a quarter) of each k/v weight: 2 layers × 2 × [16, 64] f32 × (1/2 - 1/4).
    let total: u64 = 361_728;
    let norms: u64 = 5 * 64 * 4;
    let kv_extra: u64 = 2 * 2 * (16 * 64 * 4) / 4;
    for r in &read {
        assert_eq!(*r, (total - norms) / 4 + norms + kv_extra, "share + replicated");
    }
}

#[test]
fn inspect_reports_a_sharded_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    assert!(run(&["shard", s(&fixture("llama-gqa-bf16")), s(&a), "--tp", "8"]).status.success());
    let o = run(&["inspect", s(&a), "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tp"], 8);
    assert_eq!(v["kind"], "sharded");
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["dtypes"]["BF16"], 19);
    assert_eq!(v["specs"].as_array().unwrap().len(), 4);
}

#[test]
fn lora_shard_forward_consolidate_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (sharded, out) = (tmp.path().join("s"), tmp.path().join("o"));
    let lora = fixture("llama-gqa-lora");
    let qv = fixture("llama-gqa-lora-qv");
    let golden = lora.join("golden_lora.safetensors");
    // forward on the HF checkpoint with an adapter prints max_abs_diff.
    let o = run(&["forward", s(&fixture("llama-gqa")), "--tp", "4", "--adapter", s(&lora), "--golden", s(&golden)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("max_abs_diff"));
    // Mean mode: one warning, logits off the golden (exit 3).
    let o = run(&[
        "forward",
        s(&fixture("llama-gqa")),
        "--tp",
        "2",
        "--adapter",
        s(&lora),
        "--lora-mode",
        "mean",
        "--golden",
        s(&golden),
    ]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    // The q/v adapter needs --lora-partial; the error names k_proj.
    let o = run(&["shard", s(&fixture("llama-gqa")), s(&sharded), "--tp", "2", "--adapter", s(&qv)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("k_proj"));
    assert!(!sharded.exists());
    // Two adapters need two names.
    let o =
        run(&["shard", s(&fixture("llama-gqa")), s(&sharded), "--tp", "2", "--adapter", s(&lora), "--adapter", s(&qv)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--adapter-name"));
    let o = run(&[
        "shard",
        s(&fixture("llama-gqa")),
        s(&sharded),
        "--tp",
        "4",
        "--fuse-qkv",
        "--adapter",
        s(&lora),
        "--adapter-name",
        "default",
        "--adapter",
        s(&qv),
        "--adapter-name",
        "qv-2",
        "--lora-partial",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(sharded.join("adapter_qv-2/shards/mp_metadata_pp_rank_0.json").exists());
    assert!(sharded.join("adapter_default/adapter_config.json").exists());
    // consolidate: every adapter as a PEFT dir, byte for byte.
    let o = run(&["consolidate", s(&sharded), s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (got, want) in [(out.join("default"), lora.clone()), (out.join("qv-2"), qv.clone())] {
        let f = "adapter_model.safetensors";
        assert!(std::fs::read(got.join(f)).unwrap() == std::fs::read(want.join(f)).unwrap(), "{f}");
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(got.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(c["base_model_name_or_path"], std::path::absolute(&out).unwrap().to_str().unwrap());
    }
    // --adapter NAME writes only that one; --merge-adapter folds one into the base weights.
    let only = tmp.path().join("only");
    assert!(run(&["consolidate", s(&sharded), s(&only), "--adapter", "qv-2"]).status.success());
    assert!(only.join("qv-2/adapter_model.safetensors").exists() && !only.join("default").exists());
    let merged = tmp.path().join("merged");
    let o = run(&["consolidate", s(&sharded), s(&merged), "--merge-adapter", "default"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!merged.join("adapter_model.safetensors").exists());
    let o = run(&["forward", s(&merged), "--tp", "2", "--golden", s(&golden)]);
    assert!(o.status.success(), "merged model vs golden_lora: {}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["consolidate", s(&sharded), s(&tmp.path().join("x")), "--merge-adapter", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("qv-2"));
}

#[test]
fn forward_on_a_sharded_checkpoint_runs_its_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("s");
    let qv = fixture("llama-gqa-lora-qv");
    let o = run(&["shard", s(&fixture("llama-gqa")), s(&sharded), "--tp", "8", "--adapter", s(&qv), "--lora-partial"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["forward", s(&sharded), "--golden", s(&qv.join("golden_lora.safetensors"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // "max_abs_diff D at index I, max_rel_diff ...": the allclose verdict line
    let line = stdout.lines().find_map(|l| l.strip_prefix("max_abs_diff ")).unwrap();
    let d: f32 = line.split_whitespace().next().unwrap().parse().unwrap();
    assert!(d <= 1e-4, "{stdout}");
}

/// A copy of the safetensors file `src` at `dst` with element `index` of tensor `name` (F32) set to `value`.
fn patch_f32(src: &Path, dst: &Path, name: &str, index: usize, value: f32) {
    let mut bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[name]["dtype"], "F32", "{name} in {}", src.display());
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n + 4 * index;
    bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(dst, bytes).unwrap();
}

#[test]
fn forward_golden_with_a_nan_logit_in_the_golden_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let golden = tmp.path().join("golden.safetensors");
    patch_f32(&fixture("llama-gqa/golden.safetensors"), &golden, "logits", 1234, f32::NAN);
    let o = run(&["forward", s(&fixture("llama-gqa")), "--tp", "2", "--golden", s(&golden)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("non-finite") && err.contains("1234"), "{err}");
    // The untouched golden passes, so the NaN is what failed the run.
    let o = run(&[
        "forward",
        s(&fixture("llama-gqa")),
        "--tp",
        "2",
        "--golden",
        s(&fixture("llama-gqa/golden.safetensors")),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn forward_golden_with_a_nan_in_the_computed_logits_exits_3() {
    // A NaN in one lm_head weight element makes the logits of that vocabulary row NaN at every position.
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(fixture("llama-gqa/config.json"), model.join("config.json")).unwrap();
    patch_f32(&fixture("llama-gqa/model.safetensors"), &model.join("model.safetensors"), "lm_head.weight", 0, f32::NAN);
    let out = tmp.path().join("out.safetensors");
    let o = run(&[
        "forward",
        s(&model),
        "--tp",
        "2",
        "--golden",
        s(&fixture("llama-gqa/golden.safetensors")),
        "--output",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("non-finite") && err.contains("computed NaN"), "{err}");
    // What was computed is written anyway, for inspection: the NaN is in it.
    let f = neuron_spec::format::SafetensorsFile::open(&out).unwrap();
    assert!(f.tensor("logits").unwrap().to_f32_vec().iter().any(|v| v.is_nan()));
}

#[test]
fn forward_output_writes_logits_and_hidden_states_that_match_the_golden() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let golden = fixture("llama-gqa/golden.safetensors");
    let o = run(&[
        "forward",
        s(&fixture("llama-gqa")),
        "--tp",
        "4",
        "--fuse-qkv",
        "--golden",
        s(&golden),
        "--output",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = neuron_spec::format::SafetensorsFile::open(&out).unwrap();
    let g = neuron_spec::format::SafetensorsFile::open(&golden).unwrap();
    let mut names: Vec<&str> = ours.names().collect();
    names.sort();
    assert_eq!(names, ["hidden_0", "hidden_1", "logits"]);
    for n in names {
        let (a, b) = (ours.tensor(n).unwrap(), g.tensor(n).unwrap());
        assert_eq!(a.dtype(), neuron_spec::DType::F32, "{n}");
        assert_eq!(a.shape(), b.shape(), "{n}");
        neuron_spec::compare::check_close(n, &a.to_f32_vec(), &b.to_f32_vec(), 1e-4).unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("out.safetensors")], "no temporary file left");
}

#[test]
fn quickstart_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    let o = run(&["quickstart", "--model", s(&fixture("llama-gqa")), "--work-dir", s(&work)]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("max_abs_diff") && stdout.contains("all 21 byte-identical"), "{stdout}");
    // It ends with a greedy generate through the tokenizer: transformers' ids for the same prompt.
    let g = std::fs::read_to_string(fixture("text/generate_golden.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&g).unwrap();
    let ids: Vec<i64> = serde_json::from_value(g["plain"]["ids"].clone()).unwrap();
    assert!(stdout.contains(&format!("ids {ids:?}")), "{stdout}");
    assert_same_tensors(
        &neuron_spec::format::HfCheckpoint::open(&work.join("consolidated")).unwrap(),
        &hf("llama-gqa"),
        "quickstart",
    );
}
