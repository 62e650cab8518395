//! The command line's rough edges, each as a user meets it: closed pipes, usage errors, `plan`'s report, options
//! that do not apply, hints, `inspect`, `quickstart`, completions, the output layout the HF tools load, the
//! non-weight files, `consolidate --dtype/--only`, `--layout FILE` and `plan --svg`.

use crate::common;
use common::*;
use neuron_spec::format::SafetensorsFile;
use neuron_spec::tensor::TensorSource;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_neuron-spec"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Exit `code`, no panic, and (for errors) one `error:` line naming every word.
fn exits(o: &Output, code: i32, words: &[&str]) -> String {
    let err = text(&o.stderr);
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(o.status.code(), Some(code), "stderr: {err}\nstdout: {}", text(&o.stdout));
    for w in words {
        assert!(err.contains(w), "the message should name {w:?}: {err}");
    }
    err
}

fn shard_to(dir: &Path, tp: &str, extra: &[&str]) {
    let mut args = vec!["shard", s(&fixture("llama-gqa")).to_owned().leak() as &str, s(dir), "--tp", tp];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn a_closed_stdout_ends_quietly_and_a_full_one_is_an_error() {
    // The reader goes away before anything is written: like `plan ... | head -1`.
    for args in [
        vec!["plan", s(&fixture("llama-gqa")), "--tp", "4", "--tensors"],
        vec!["inspect", s(&fixture("llama-gqa"))],
        vec!["completions", "bash"],
    ] {
        let mut child = bin().args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        exits(&o, 0, &[]);
        assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
    }
    // `| head -1` through a shell.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' plan '{}' --tp 4 --tensors | head -1",
            env!("CARGO_BIN_EXE_neuron-spec"),
            s(&fixture("llama-gqa"))
        ))
        .output()
        .unwrap();
    assert!(o.status.success() && !text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 1);
    // `> /dev/full`: an error naming stdout, exit 1, no panic.
    if Path::new("/dev/full").exists() {
        let full = fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = bin().args(["plan", s(&fixture("llama-gqa")), "--tp", "4"]).stdout(full).output().unwrap();
        let err = exits(&o, 1, &["<stdout>", "No space left"]);
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn every_usage_error_exits_two() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("s");
    shard_to(&sharded, "2", &["--fuse-qkv"]);
    let f = s(&fixture("llama-gqa")).to_string();
    let out = tmp.path().join("out");
    let o = s(&out).to_string();
    let sh = s(&sharded).to_string();
    for (args, word) in [
        (vec!["shard", &f, &o, "--tp", "0"], "tp must be between 1 and 4096"),
        (vec!["shard", &f, &o, "--tp", "abc"], "--tp"),
        (vec!["shard", &f, &o, "--tp", "5000"], "4096"),
        (vec!["plan", &f, "--tp=-1"], "--tp"),
        (vec!["consolidate", &sh, &o, "--max-shard-size", "abc"], "invalid size"),
        (vec!["consolidate", &sh, &o, "--max-shard-size", "0"], "--max-shard-size"),
        (vec!["consolidate", &sh, &o, "--dtype", "int8"], "--dtype"),
        (vec!["consolidate", &sh, &o, "--only", "("], "--only"),
        // `mean` is consolidation's; reshard copies one replica.
        (vec!["reshard", &sh, &o, "--tp", "4", "--kv-replicas", "mean"], "mean"),
        // Options that do not apply to this input.
        (vec!["forward", &sh, "--tp", "2"], "--tp"),
        (vec!["forward", &sh, "--fuse-qkv"], "--fuse-qkv"),
        (vec!["plan", &sh, "--tp", "4", "--fuse-qkv"], "sharded"),
        (vec!["quickstart", "-q"], "quiet"),
        (vec!["completions", "tcsh"], "tcsh"),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let r = run(&args);
        exits(&r, 2, &[word]);
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

#[test]
fn plan_reports_every_check_a_summary_and_the_table_on_request() {
    let f = fixture("llama-gqa");
    // Default: the checks and one line per rank, no tensor table.
    let o = run(&["plan", s(&f), "--tp", "4"]);
    exits(&o, 0, &[]);
    let out = text(&o.stdout);
    // 9 checks, plus the config keys transformers never reads (architectures, pretraining_tp, ...), listed as ignored
    assert_eq!(out.matches("  ok: ").count(), 10, "{out}");
    assert!(out.contains("config.json keys: ignored") && out.contains("pretraining_tp"), "{out}");
    assert!(out.contains("pipeline stages (pp 1): stage 0: layers 0..2 + embed_tokens + norm, lm_head"), "{out}");
    assert!(!out.contains("gate_up_proj.weight"), "{out}");
    assert!(out.contains("total") && out.contains("KiB"), "{out}");
    let o = run(&["plan", s(&f), "--tp", "4", "--tensors"]);
    assert!(text(&o.stdout).contains("model.layers.1.mlp.gate_up_proj.weight"));
    // tp 16 with 8 heads: every spec's result, and the tp sizes that fit.
    let o = run(&["plan", s(&f), "--tp", "16"]);
    let err = exits(&o, 1, &["valid tp sizes for this model: 1, 2, 4, 8", "--plain-attention"]);
    assert_eq!(err.lines().count(), 1);
    let out = text(&o.stdout);
    assert_eq!(out.matches("FAILED: model.layers.").count(), 2, "both attention specs: {out}");
    assert_eq!(out.matches("ok:     model.layers.").count(), 2, "both mlp specs: {out}");
    // --json is valid JSON whatever happens.
    let o = run(&["plan", s(&f), "--tp", "16", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.iter().filter(|c| c["ok"] == false).count(), 3, "{checks:?}");
    let o = run(&["plan", "/nonexistent/model", "--tp", "2", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let o = run(&["plan", s(&f), "--tp", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["tensors_per_rank"].as_array().unwrap().len(), 2);
    assert!(v.get("ranks").is_none());
    let o = run(&["plan", s(&f), "--tp", "2", "--json", "--tensors"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ranks"].as_array().unwrap().len(), 2);
}

#[test]
fn hints_name_the_command_that_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("s");
    shard_to(&sharded, "2", &[]);
    let out = tmp.path().join("o");
    exits(
        &run(&["consolidate", s(&fixture("llama-gqa")), s(&out)]),
        1,
        &["not a sharded checkpoint", "neuron-spec shard"],
    );
    exits(&run(&["reshard", s(&fixture("llama-gqa")), s(&out), "--tp", "2"]), 1, &["neuron-spec shard"]);
    exits(&run(&["shard", s(&sharded), s(&out), "--tp", "4"]), 1, &["is a sharded checkpoint", "neuron-spec reshard"]);
    exits(
        &run(&["shard", s(&fixture("llama-gqa")), s(&out), "--tp", "16"]),
        1,
        &["valid tp sizes for this model: 1, 2, 4, 8"],
    );
    assert!(!out.exists());
    // quickstart outside the repository: pass the model.
    let o = bin().arg("quickstart").current_dir(tmp.path()).output().unwrap();
    exits(&o, 1, &["--model"]);
}

#[test]
fn quickstart_keeps_a_work_dir_only_when_asked_and_never_overwrites_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("tmpdir");
    fs::create_dir(&scratch).unwrap();
    let o = bin().arg("quickstart").env("TMPDIR", &scratch).output().unwrap();
    exits(&o, 0, &[]);
    assert!(text(&o.stdout).contains("byte-identical"), "{}", text(&o.stdout));
    let left: Vec<_> = fs::read_dir(&scratch).unwrap().collect();
    assert!(left.is_empty(), "quickstart left {left:?} in TMPDIR");
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    fs::write(work.join("mine.txt"), "keep me").unwrap();
    exits(&run(&["quickstart", "--work-dir", s(&work)]), 1, &["--force"]);
    assert_eq!(fs::read_dir(&work).unwrap().count(), 1);
    exits(&run(&["quickstart", "--work-dir", s(&work), "--force"]), 0, &[]);
    assert!(work.join("consolidated/model.safetensors").exists() && work.join("mine.txt").exists());
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        exits(&o, 0, &[]);
        let out = text(&o.stdout);
        assert!(
            out.contains("neuron-spec") && out.contains("consolidate") && out.contains("max-shard-size"),
            "{shell}"
        );
    }
}

#[test]
fn consolidate_writes_the_base_at_the_top_and_each_adapter_in_its_folder_and_inspect_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (sharded, out) = (tmp.path().join("s"), tmp.path().join("o"));
    let lora = fixture("llama-gqa-lora");
    shard_to(&sharded, "8", &["--adapter", s(&lora)]);
    let o = run(&["consolidate", s(&sharded), s(&out), "--max-shard-size", "100KB"]);
    exits(&o, 0, &[]);
    let report = text(&o.stdout);
    // Weight files counted apart from the index, adapter tensors apart from the base's, binary units.
    let weights = fs::read_dir(&out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "safetensors"))
        .count();
    assert!(report.contains(&format!("21 tensors, 353.2 KiB in {weights} weight file(s) + index")), "{report}");
    assert!(report.contains("adapters: 28 tensors"), "{report}");
    assert!(!out.join("adapter_config.json").exists());
    let c: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("default/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(c["base_model_name_or_path"], s(&std::path::absolute(&out).unwrap()));
    // inspect: the sharded checkpoint's layout, kv multiplier, checksums and adapter; the output's adapter; a PEFT folder.
    let v: serde_json::Value = serde_json::from_slice(&run(&["inspect", s(&sharded), "--json"]).stdout).unwrap();
    assert_eq!(v["qkv_layout"], "separate (qkv_proj.weight_q/_k/_v)");
    assert_eq!(v["kv_size_multiplier"], 4);
    assert!(v["checksums"].as_str().unwrap().starts_with("verified: 8 rank files"));
    assert_eq!(v["rank_files"].as_array().unwrap().len(), 8);
    assert_eq!(v["adapters"][0]["name"], "default");
    assert_eq!(v["adapters"][0]["r"], 4);
    let o = run(&["inspect", s(&sharded)]);
    let t = text(&o.stdout);
    assert!(t.contains("kv_size_multiplier 4") && t.contains("adapter default: r 4"), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&run(&["inspect", s(&out), "--json"]).stdout).unwrap();
    assert_eq!(v["kind"], "hf");
    assert_eq!(v["adapters"][0]["name"], "default");
    let o = run(&["inspect", s(&lora), "--json"]);
    exits(&o, 0, &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "peft");
    assert_eq!(v["tensors"].as_array().unwrap().len(), 28);
    assert_eq!(v["adapters"][0]["lora_alpha"], 8.0);
}

/// A model folder with every kind of non-weight file, and weight-like files that must not travel.
fn full_model_folder(root: &Path) -> std::path::PathBuf {
    let dir = root.join("model");
    fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "golden.safetensors"] {
        fs::copy(fixture("llama-gqa").join(f), dir.join(f)).unwrap();
    }
    fs::write(dir.join("tokenizer.json"), "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}\n").unwrap();
    fs::write(dir.join("tokenizer_config.json"), "{\"chat_template\": \"{{ messages }}\"}").unwrap();
    fs::write(dir.join("tokenizer.model"), (0u8..=255).cycle().take(5000).collect::<Vec<u8>>()).unwrap();
    fs::write(dir.join("special_tokens_map.json"), "{\"bos_token\": \"<s>\"}").unwrap();
    fs::write(dir.join("generation_config.json"), "{\"do_sample\": false}\n").unwrap();
    fs::write(dir.join("chat_template.jinja"), "{% for m in messages %}{{ m }}{% endfor %}").unwrap();
    fs::write(dir.join("README.md"), "# a model card\n").unwrap();
    fs::create_dir(dir.join("additional_chat_templates")).unwrap();
    fs::write(dir.join("additional_chat_templates/tool_use.jinja"), "{{ tools }}").unwrap();
    // Weight files of other formats and stray indexes never travel.
    fs::write(dir.join("pytorch_model.bin"), b"not ours").unwrap();
    fs::write(dir.join("other.safetensors.index.json"), "{}").unwrap();
    fs::write(dir.join(".hidden"), "x").unwrap();
    dir
}

const SIDE: [&str; 9] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "README.md",
    "additional_chat_templates/tool_use.jinja",
];

#[test]
fn non_weight_files_travel_byte_for_byte_and_nothing_else_is_mixed_in() {
    let tmp = tempfile::tempdir().unwrap();
    let src = full_model_folder(tmp.path());
    let (sharded, resharded, out) = (tmp.path().join("s"), tmp.path().join("r"), tmp.path().join("o"));
    exits(&run(&["shard", s(&src), s(&sharded), "--tp", "2"]), 0, &[]);
    exits(&run(&["reshard", s(&sharded), s(&resharded), "--tp", "4"]), 0, &[]);
    exits(&run(&["consolidate", s(&resharded), s(&out)]), 0, &[]);
    for dir in [&sharded, &resharded, &out] {
        for f in SIDE {
            assert!(fs::read(dir.join(f)).unwrap() == fs::read(src.join(f)).unwrap(), "{f} in {}", dir.display());
        }
        for f in ["golden.safetensors", "pytorch_model.bin", "other.safetensors.index.json", ".hidden"] {
            assert!(!dir.join(f).exists(), "{f} mixed into {}", dir.display());
        }
    }
    let mut names: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    names.sort();
    assert_eq!(names.len(), SIDE.len() - 1 + 1 + 1, "{names:?}"); // the side files (one dir) + model.safetensors
    assert_same_tensors(&neuron_spec::format::HfCheckpoint::open(&out).unwrap(), &hf("llama-gqa"), "weights");
}

#[test]
fn consolidate_dtype_is_torchs_rounding_and_only_writes_a_subset() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("s");
    shard_to(&sharded, "4", &["--fuse-qkv"]);
    // llama-gqa-bf16 is torch's `.to(torch.bfloat16)` of llama-gqa: the same bytes, tensor by tensor, and config.
    let bf = tmp.path().join("bf16");
    exits(&run(&["consolidate", s(&sharded), s(&bf), "--dtype", "bf16"]), 0, &[]);
    assert_same_tensors(&neuron_spec::format::HfCheckpoint::open(&bf).unwrap(), &hf("llama-gqa-bf16"), "--dtype bf16");
    assert!(fs::read(bf.join("config.json")).unwrap() == fs::read(fixture("llama-gqa-bf16/config.json")).unwrap());
    // And back: bf16 → f32 is exact, so f32 → bf16 of that gives the bf16 bytes again.
    let s2 = tmp.path().join("s2");
    exits(&run(&["shard", s(&bf), s(&s2), "--tp", "2"]), 0, &[]);
    let f32_out = tmp.path().join("f32");
    exits(&run(&["consolidate", s(&s2), s(&f32_out), "--dtype", "f32"]), 0, &[]);
    let widened = neuron_spec::format::HfCheckpoint::open(&f32_out).unwrap();
    let bf16 = hf("llama-gqa-bf16");
    for n in bf16.names() {
        let (w, b) = (widened.tensor(&n).unwrap(), bf16.tensor(&n).unwrap());
        assert_eq!(w.dtype(), neuron_spec::DType::F32);
        // The upper 16 bits of each f32 are the bf16 bits, the lower 16 are zero.
        let hi: Vec<u8> = w.bytes().chunks(4).flat_map(|c| [c[2], c[3]]).collect();
        assert!(hi == b.bytes() && w.bytes().chunks(4).all(|c| c[0] == 0 && c[1] == 0), "{n}");
    }
    // --only: a subset, byte for byte.
    let only = tmp.path().join("only");
    exits(&run(&["consolidate", s(&sharded), s(&only), "--only", r"layers\.0\.mlp"]), 0, &[]);
    let f = SafetensorsFile::open(&only.join("model.safetensors")).unwrap();
    let names: Vec<&str> = f.names().collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let src = hf("llama-gqa");
    for n in names {
        assert!(n.contains("layers.0.mlp"));
        assert!(f.tensor(n).unwrap() == src.tensor(n).unwrap(), "{n}");
    }
    exits(
        &run(&["consolidate", s(&sharded), s(&tmp.path().join("none")), "--only", "nothing-matches"]),
        1,
        &["--only"],
    );
}

#[test]
fn layout_file_shards_like_the_built_in_layout() {
    let tmp = tempfile::tempdir().unwrap();
    // The JSON of the annotated model's create_parameter_metadata(), built at tp 2.
    let cfg = neuron_spec_models::ModelConfig::read(&fixture("llama-gqa/config.json")).unwrap();
    let meta = neuron_spec_models::layout(&cfg, 2, neuron_spec_models::QkvLayout::gqa(true)).unwrap();
    let file = tmp.path().join("layout.json");
    fs::write(&file, meta.to_json().unwrap()).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    exits(&run(&["shard", s(&fixture("llama-gqa")), s(&a), "--tp", "4", "--layout", s(&file)]), 0, &[]);
    shard_to(&b, "4", &["--fuse-qkv"]);
    for r in 0..4 {
        let n = neuron_spec::checkpoint::rank_file_name(r);
        let p = |d: &Path| d.join(neuron_spec::checkpoint::RANKS_DIR).join(&n);
        assert!(fs::read(p(&a)).unwrap() == fs::read(p(&b)).unwrap(), "rank {r}");
    }
    let o = run(&["plan", s(&fixture("llama-gqa")), "--tp", "8", "--layout", s(&file), "--json"]);
    exits(&o, 0, &[]);
    exits(&run(&["plan", s(&fixture("llama-gqa")), "--tp", "16", "--layout", s(&file)]), 1, &["valid tp sizes"]);
    exits(
        &run(&[
            "shard",
            s(&fixture("llama-gqa")),
            s(&tmp.path().join("c")),
            "--tp",
            "4",
            "--layout",
            s(&file),
            "--fuse-qkv",
        ]),
        2,
        &[],
    );
}

/// Tags open and close in order (a small well-formedness check; no XML crate needed).
fn well_formed(svg: &str) -> Result<usize, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut count = 0;
    let mut rest = svg;
    while let Some(i) = rest.find('<') {
        let j = rest[i..].find('>').ok_or("unclosed tag")? + i;
        let tag = &rest[i + 1..j];
        rest = &rest[j + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        count += 1;
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
            if open != name {
                return Err(format!("<{open}> closed by </{name}>"));
            }
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap_or_default().to_string());
        }
        if !tag.matches('"').count().is_multiple_of(2) {
            return Err(format!("unbalanced quotes in <{tag}>"));
        }
    }
    if stack.is_empty() {
        Ok(count)
    } else {
        Err(format!("unclosed: {stack:?}"))
    }
}

#[test]
fn plan_svg_draws_one_layer_and_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("plan.svg");
    exits(&run(&["plan", s(&fixture("llama-gqa")), "--tp", "8", "--fuse-qkv", "--svg", s(&svg)]), 0, &[]);
    let t = fs::read_to_string(&svg).unwrap();
    assert!(well_formed(&t).unwrap() > 50);
    // Ranks as columns, one layer, q and kv heads, replicas (tp 8 tiles 2 kv heads 4 times), fused members.
    for w in ["rank 7", "model.layers.0", "q_proj q head 0", "k_proj kv head 1", "(replica)", "gate_proj", "up_proj"] {
        assert!(t.contains(w), "{w}");
    }
    assert!(!t.contains("model.layers.1."), "one layer only");
    assert!(!t.contains("padding rows"), "tp 8 divides every size here");
    // Padding: vocab 250 at tp 4 leaves rows of zeros on the last rank.
    let svg2 = tmp.path().join("tied.svg");
    exits(&run(&["plan", s(&fixture("llama-mha-tied")), "--tp", "4", "--svg", s(&svg2)]), 0, &[]);
    let t2 = fs::read_to_string(&svg2).unwrap();
    well_formed(&t2).unwrap();
    // 250 rows at tp 4: 63 per rank, the last holding 61 of them and 2 rows of zeros.
    assert!(t2.contains("model.embed_tokens.weight") && t2.contains("padding rows 61–62 (zeros)"), "{t2}");
    // Rendered with rsvg-convert when it is installed (Debian: librsvg2-bin).
    if Command::new("rsvg-convert").arg("--version").output().is_ok() {
        for f in [&svg, &svg2] {
            let png = f.with_extension("png");
            let o = Command::new("rsvg-convert").arg(f).arg("-o").arg(&png).output().unwrap();
            assert!(o.status.success(), "rsvg-convert: {}", text(&o.stderr));
            assert!(fs::metadata(&png).unwrap().len() > 1000);
        }
    } else {
        eprintln!("rsvg-convert not installed: SVG checked for well-formedness only (apt-get install librsvg2-bin)");
    }
}

#[test]
fn reshard_layout_file_changes_the_layout_like_direct_sharding() {
    let tmp = tempfile::tempdir().unwrap();
    // The annotated model's layout with fused q/k/v (written at tp 2; used at tp 4).
    let cfg = neuron_spec_models::ModelConfig::read(&fixture("llama-gqa/config.json")).unwrap();
    let file = tmp.path().join("fused.json");
    fs::write(
        &file,
        neuron_spec_models::layout(&cfg, 2, neuron_spec_models::QkvLayout::gqa(true)).unwrap().to_json().unwrap(),
    )
    .unwrap();
    // Separate q/k/v at tp 2, resharded to fused q/k/v at tp 4: the rank files of direct fused sharding at tp 4.
    let (src, a, b) = (tmp.path().join("src"), tmp.path().join("a"), tmp.path().join("b"));
    shard_to(&src, "2", &[]);
    exits(&run(&["reshard", s(&src), s(&a), "--tp", "4", "--layout", s(&file)]), 0, &[]);
    shard_to(&b, "4", &["--fuse-qkv"]);
    for r in 0..4 {
        let n = neuron_spec::checkpoint::rank_file_name(r);
        let p = |d: &Path| d.join(neuron_spec::checkpoint::RANKS_DIR).join(&n);
        assert!(fs::read(p(&a)).unwrap() == fs::read(p(&b)).unwrap(), "rank {r}");
    }
    // A layout of another model is refused, naming a tensor it lacks, and nothing is written.
    let other = neuron_spec_models::ModelConfig::read(&fixture("llama-mha-tied/config.json")).unwrap();
    let bad = tmp.path().join("other.json");
    fs::write(
        &bad,
        neuron_spec_models::layout(&other, 2, neuron_spec_models::QkvLayout::gqa(true)).unwrap().to_json().unwrap(),
    )
    .unwrap();
    let c = tmp.path().join("c");
    exits(&run(&["reshard", s(&src), s(&c), "--tp", "2", "--layout", s(&bad)]), 1, &["target layout does not fit"]);
    assert!(!c.exists());
}
