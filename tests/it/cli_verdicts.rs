//! The command line's verdicts and rough edges of issue 21, through the binary: `forward --golden` compares as
//! numpy's allclose (`--atol`/`--rtol`) and still fails wrong math; `forward` needs `--input-ids`; `plan --json`
//! and `inspect --json` print JSON in every case; `plan` names a missing directory; `inspect` refuses the
//! configs `shard` refuses; the valid-tp hint on forward and train; every refused config key in one run; and
//! `train` → (`reshard` →) `consolidate` keeps every non-weight file of the input (and of the adapter folder:
//! peft's README.md model card), byte for byte.

use crate::common;

use common::fixture;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn bin(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_neuron-spec")).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A copy of `llama-gqa/golden.safetensors` with `logits[index] += delta`.
fn perturbed_golden(dst: &Path, index: usize, delta: f32) {
    let src = fixture("llama-gqa/golden.safetensors");
    let mut bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["logits"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n + 4 * index;
    let v = f32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) + delta;
    bytes[start..start + 4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(dst, bytes).unwrap();
}

/// Index 3139 holds the golden's largest logit (2.8196), index 2438 its smallest in magnitude (4.7e-5): the same
/// absolute error of 3e-4 is within the default `1e-4 + 1e-4·|golden|` at the first and outside it at the second.
#[test]
fn forward_golden_is_allclose_and_still_fails_wrong_math() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    let (big, small) = (tmp.path().join("big.safetensors"), tmp.path().join("small.safetensors"));
    perturbed_golden(&big, 3139, 3e-4);
    perturbed_golden(&small, 2438, 3e-4);
    let o = bin(&["forward", s(&model), "--tp", "2", "--golden", s(&big)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let abs: f32 = out.split("max_abs_diff ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(abs > 1e-4 && abs < 3.1e-4, "{out}");
    assert!(out.contains("at index 3139") && out.contains("max_rel_diff"), "{out}");
    // The same absolute error at a near-zero logit fails, naming where.
    let o = bin(&["forward", s(&model), "--tp", "2", "--golden", s(&small)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("index 2438"), "{}", stderr(&o));
    // Tolerances are the user's: a tighter rtol fails the first, a looser atol passes the second.
    let o = bin(&["forward", s(&model), "--tp", "2", "--golden", s(&big), "--rtol", "1e-5"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = bin(&["forward", s(&model), "--tp", "2", "--golden", s(&small), "--atol", "4e-4"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Wrong math: the golden of another model on the same input ids (llama3 RoPE scaling) fails.
    let o = bin(&[
        "forward",
        s(&model),
        "--tp",
        "2",
        "--input-ids",
        s(&model.join("golden.safetensors")),
        "--golden",
        s(&fixture("llama3-rope/golden.safetensors")),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // A tolerance must be a finite, non-negative number (usage error).
    let o = bin(&["forward", s(&model), "--golden", s(&big), "--atol", "nan"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn forward_without_input_ids_is_a_usage_error_naming_the_options() {
    let o = bin(&["forward", s(&fixture("llama-gqa")), "--tp", "2"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("--input-ids") && e.contains("--prompt"), "{e}");
    assert!(o.stdout.is_empty(), "no logits printed: {}", String::from_utf8_lossy(&o.stdout));
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", String::from_utf8_lossy(&o.stdout), stderr(o)))
}

#[test]
fn plan_and_inspect_json_is_json_in_every_case() {
    let gqa = fixture("llama-gqa");
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing-dir");
    for (args, code) in [
        (vec!["plan", s(&gqa), "--tp", "0", "--json"], 2),
        (vec!["plan", s(&gqa), "--json", "--no-such-flag"], 2),
        (vec!["plan", "--json"], 2),
        (vec!["plan", s(&missing), "--tp", "2", "--json"], 1),
        (vec!["inspect", s(&missing), "--json"], 1),
        (vec!["inspect", "--json", "--bogus", s(&gqa)], 2),
    ] {
        let o = bin(&args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        let v = json_of(&o);
        assert_eq!(v["ok"], false, "{args:?}: {v}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{args:?}: {v}");
    }
}

#[test]
fn plan_names_a_missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing-dir");
    for args in [vec!["plan", s(&missing)], vec!["plan", s(&missing), "--tp", "2"]] {
        let o = bin(&args);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(e.contains(s(&missing)) && e.contains("no such directory") && !e.contains("--tp"), "{e}");
    }
}

/// A copy of llama-gqa's config.json (edited) and weights in a new folder.
fn llama_copy(dir: &Path, edit: impl FnOnce(&mut Value)) {
    std::fs::create_dir_all(dir).unwrap();
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama-gqa/config.json")).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    std::fs::copy(fixture("llama-gqa/model.safetensors"), dir.join("model.safetensors")).unwrap();
}

#[test]
fn inspect_gives_shards_verdict_on_a_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let lama = tmp.path().join("lama");
    llama_copy(&lama, |c| c["model_type"] = "lama".into());
    let no_config = tmp.path().join("no-config");
    llama_copy(&no_config, |_| {});
    std::fs::remove_file(no_config.join("config.json")).unwrap();
    for dir in [&lama, &no_config] {
        let shard = bin(&["shard", s(dir), s(&tmp.path().join("out")), "--tp", "2"]);
        let inspect = bin(&["inspect", s(dir)]);
        assert_eq!(shard.status.code(), Some(1), "{}", stderr(&shard));
        assert_eq!(inspect.status.code(), Some(1), "{}", stderr(&inspect));
        assert_eq!(stderr(&inspect), stderr(&shard));
    }
    assert!(stderr(&bin(&["inspect", s(&lama)])).contains("\"lama\""));
}

#[test]
fn forward_and_train_name_the_valid_tp_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = fixture("llama-gqa/golden.safetensors");
    let o = bin(&["forward", s(&fixture("llama-gqa")), "--tp", "3", "--input-ids", s(&ids)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("valid tp sizes for this model: 1, 2, 4, 8"), "{}", stderr(&o));
    let out = tmp.path().join("out");
    let o = bin(&["train", s(&fixture("llama-gqa")), s(&out), "--tp", "3", "--data", s(&ids), "--steps", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("valid tp sizes for this model: 1, 2, 4, 8"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn every_refused_config_key_is_listed_in_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    llama_copy(&dir, |c| {
        c["attention_chunk_size"] = 16.into();
        c["attention_dropout"] = 0.1.into();
        c["quantization_config"] = serde_json::json!({"quant_method": "gptq"});
        c["_model_name_or_path"] = "x".into(); // accepted
    });
    let o = bin(&["shard", s(&dir), s(&tmp.path().join("out")), "--tp", "2"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    for k in ["`attention_chunk_size`", "`attention_dropout`", "`quantization_config`", "3 config key(s) refused"] {
        assert!(e.contains(k), "{k}: {e}");
    }
    assert!(!e.contains("_model_name_or_path"), "{e}");
}

/// The non-weight files a real model folder carries, with distinctive bytes.
const SIDE: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "additional_chat_templates/tool_use.jinja",
];

fn model_with_side_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    llama_copy(dir, |_| {});
    std::fs::copy(fixture("llama-gqa/config.json"), dir.join("config.json")).unwrap(); // the bytes as shipped
    let mut files = vec![(PathBuf::from("config.json"), std::fs::read(dir.join("config.json")).unwrap())];
    for (i, f) in SIDE.iter().enumerate() {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let bytes = format!("{{\"file\": \"{f}\", \"n\": {i}}}\n\u{e9}\r\n").into_bytes();
        std::fs::write(&p, &bytes).unwrap();
        files.push((PathBuf::from(f), bytes));
    }
    files
}

fn assert_has_files(dir: &Path, files: &[(PathBuf, Vec<u8>)], what: &str) {
    for (rel, bytes) in files {
        let got = std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{what}: {} missing: {e}", rel.display()));
        assert!(&got == bytes, "{what}: {} differs", rel.display());
    }
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

#[test]
fn train_then_consolidate_keeps_every_non_weight_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let files = model_with_side_files(&model);
    let data = fixture("llama-gqa/train_golden.safetensors");
    let p = |n: &str| tmp.path().join(n);
    // Full training, then consolidate; and reshard of the trained checkpoint, then consolidate.
    ok(&bin(&["train", s(&model), s(&p("full")), "--tp", "2", "--data", s(&data), "--steps", "1", "-q"]));
    ok(&bin(&["consolidate", s(&p("full")), s(&p("full-hf"))]));
    assert_has_files(&p("full-hf"), &files, "train → consolidate");
    ok(&bin(&["reshard", s(&p("full")), s(&p("full-tp4")), "--tp", "4", "-q"]));
    ok(&bin(&["consolidate", s(&p("full-tp4")), s(&p("full-tp4-hf"))]));
    assert_has_files(&p("full-tp4-hf"), &files, "train → reshard → consolidate");
    // Resumed training keeps them too.
    ok(&bin(&["train", s(&p("full")), s(&p("full2")), "--data", s(&data), "--steps", "1", "-q"]));
    ok(&bin(&["consolidate", s(&p("full2")), s(&p("full2-hf"))]));
    assert_has_files(&p("full2-hf"), &files, "train → train → consolidate");
    // LoRA training: the base folder keeps them; the adapter folder holds what peft's save_pretrained writes,
    // its model card (README.md) included, byte for byte.
    let lora_data = fixture("llama-gqa-lora/train_golden_lora.safetensors");
    let adapter = p("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture("llama-gqa-lora").join(f), adapter.join(f)).unwrap();
    }
    let card = "---\nbase_model: llama-gqa\nlibrary_name: peft\n---\n\n# Model Card for Model ID\n\u{e9}\n"
        .as_bytes()
        .to_vec();
    std::fs::write(adapter.join("README.md"), &card).unwrap();
    let card = [(PathBuf::from("README.md"), card)];
    ok(&bin(&[
        "train",
        s(&model),
        s(&p("lora")),
        "--tp",
        "2",
        "--adapter",
        s(&adapter),
        "--data",
        s(&lora_data),
        "--steps",
        "1",
        "-q",
    ]));
    ok(&bin(&["consolidate", s(&p("lora")), s(&p("lora-hf"))]));
    assert_has_files(&p("lora-hf"), &files, "LoRA train → consolidate");
    let adapter_dirs: Vec<PathBuf> = std::fs::read_dir(p("lora-hf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("adapter_config.json").is_file())
        .collect();
    assert_eq!(adapter_dirs.len(), 1, "{adapter_dirs:?}");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(adapter_dirs[0].join(f).is_file(), "{f}");
    }
    assert_has_files(&adapter_dirs[0], &card, "LoRA train → consolidate: the adapter's model card");
    // Resumed LoRA training, and shard --adapter → consolidate, keep the card too.
    let lora_data_s = s(&lora_data);
    ok(&bin(&["train", s(&p("lora")), s(&p("lora2")), "--data", lora_data_s, "--steps", "1", "-q"]));
    ok(&bin(&["consolidate", s(&p("lora2")), s(&p("lora2-hf"))]));
    assert_has_files(&p("lora2-hf").join("default"), &card, "LoRA train → train → consolidate");
    ok(&bin(&["shard", s(&model), s(&p("sharded")), "--tp", "2", "--adapter", s(&adapter), "-q"]));
    ok(&bin(&["consolidate", s(&p("sharded")), s(&p("sharded-hf"))]));
    assert_has_files(&p("sharded-hf").join("default"), &card, "shard --adapter → consolidate");
    assert_has_files(&p("sharded-hf"), &files, "shard --adapter → consolidate");
}
