//! optimum-neuron's own checkpoints (`tests/fixtures/on-ckpt/`: `.pt` rank files, plain and xser, one
//! metadata per pipeline stage): consolidation gives `llama-gqa/model.safetensors` byte for byte, reshard
//! writes our layout at another tp, `forward` matches transformers' golden; hostile `.pt` input fails cleanly.
//! Every other family, written in the same layout from our shard of its fixture, runs as that shard does.

use crate::common;
use common::*;
use neuron_spec::checkpoint::{ShardedCheckpoint, WriteOptions};
use neuron_spec::consolidate;
use neuron_spec::format::HfCheckpoint;
use neuron_spec::ops::reshard::reshard;
use std::fs;
use std::path::Path;
use std::process::Command;

const NAMES: [&str; 3] = ["llama-gqa-tp4-xser", "llama-gqa-tp2-plain", "llama-gqa-tp4-pp2-plain"];

fn input_ids_and_logits() -> (Vec<Vec<i64>>, Vec<f32>) {
    let f = open("llama-gqa/golden.safetensors");
    let ids = f.tensor("input_ids").unwrap();
    let s = ids.shape()[1];
    let ids = ids.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect();
    (ids, f.tensor("logits").unwrap().to_f32_vec())
}

#[test]
fn each_consolidates_to_the_hf_checkpoint_byte_for_byte() {
    let want = fs::read(fixture("llama-gqa/model.safetensors")).unwrap();
    for n in NAMES {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("hf");
        consolidate(&fixture(&format!("on-ckpt/{n}")), &out, &WriteOptions::default()).unwrap();
        assert!(fs::read(out.join("model.safetensors")).unwrap() == want, "{n}: consolidated file differs");
        // An HF folder: the weights and the config, not neuronx-distributed's `checkpoint` / `done` markers.
        let mut names: Vec<String> =
            fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["config.json", "model.safetensors"], "{n}");
        assert!(fs::read(out.join("config.json")).unwrap() == fs::read(fixture("llama-gqa/config.json")).unwrap());
    }
}

#[test]
fn each_reshards_to_our_layout_at_another_tp() {
    for (n, tp) in [("llama-gqa-tp4-xser", 2), ("llama-gqa-tp2-plain", 8), ("llama-gqa-tp4-pp2-plain", 2)] {
        let tmp = tempfile::tempdir().unwrap();
        let (a, hf_out) = (tmp.path().join("a"), tmp.path().join("hf"));
        reshard(&fixture(&format!("on-ckpt/{n}")), &a, tp, &WriteOptions::default()).unwrap();
        let ck = ShardedCheckpoint::open(&a).unwrap();
        assert_eq!(ck.tp, tp, "{n}");
        assert_eq!(ck.format, neuron_spec::checkpoint::RankFormat::Safetensors);
        assert!(ck.stages.iter().all(|s| !s.rank_files.is_empty()), "{n}: our metadata records checksums");
        consolidate(&a, &hf_out, &WriteOptions::default()).unwrap();
        assert_same_tensors(&HfCheckpoint::open(&hf_out).unwrap(), &hf("llama-gqa"), n);
    }
}

#[test]
fn each_runs_forward_to_the_golden() {
    let (ids, golden) = input_ids_and_logits();
    for n in NAMES {
        let out = neuron_spec_models::Source::open(&fixture(&format!("on-ckpt/{n}")))
            .and_then(|s| {
                neuron_spec_models::run(
                    &s,
                    &neuron_spec_models::Transport::threads_at_source_tp(),
                    &neuron_spec_models::Forward::new(ids.to_vec()),
                )
            })
            .unwrap();
        let d = neuron_spec::compare::max_abs_diff(&out.logits, &golden).unwrap();
        eprintln!("{n}: max |Δ| logits {d:.2e}");
        assert!(d <= 1e-4, "{n}: {d}");
    }
}

#[test]
fn the_stage_layout_is_read_from_the_files() {
    let ck = ShardedCheckpoint::open(&fixture("on-ckpt/llama-gqa-tp4-pp2-plain")).unwrap();
    assert_eq!((ck.tp, ck.pp(), ck.format), (4, 2, neuron_spec::checkpoint::RankFormat::Pt));
    assert!(ck.stages[0].parameters.contains_key("model.embed_tokens.weight"));
    assert!(!ck.stages[0].parameters.contains_key("lm_head.weight"));
    assert!(ck.stages[1].parameters.contains_key("lm_head.weight"));
    assert_eq!(ck.metadata.parameters.len(), 19);
}

// ---------------------------------------------------------------------------------------------------------
// Hostile .pt input: one line, exit 1, no panic, nothing written.

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Copies `on-ckpt/<name>` to a temporary directory and applies `damage` to it.
fn damaged(name: &str, damage: impl FnOnce(&Path)) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    copy_dir(&fixture(&format!("on-ckpt/{name}")), &dir);
    damage(&dir.join("shards/model"));
    (tmp, dir)
}

fn replace_bytes(path: &Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut b = fs::read(path).unwrap();
    let at = b.windows(from.len()).position(|w| w == from).expect("pattern present");
    b[at..at + from.len()].copy_from_slice(to);
    fs::write(path, b).unwrap();
}

/// consolidate, reshard and inspect each fail on `dir` with one line naming every word, exit 1, no panic,
/// and no output.
fn fails_cleanly(dir: &Path, words: &[&str]) {
    for cmd in ["consolidate", "reshard", "inspect"] {
        let out = dir.parent().unwrap().join(format!("out-{cmd}"));
        let mut c = Command::new(env!("CARGO_BIN_EXE_neuron-spec"));
        c.arg(cmd).arg(dir);
        if cmd != "inspect" {
            c.arg(&out);
        }
        if cmd == "reshard" {
            c.args(["--tp", "2"]);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        eprintln!("{cmd}: {}", err.trim_end());
        assert!(!err.contains("panicked"), "{cmd}: panic: {err}");
        assert_eq!(o.status.code(), Some(1), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: one line expected: {err}");
        for w in words {
            assert!(err.contains(w), "{cmd}: the message should name {w:?}: {err}");
        }
        assert!(!out.exists(), "{cmd}: output written");
        let left: Vec<_> = fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.contains(".partial-"))
            .collect();
        assert!(left.is_empty(), "{cmd}: {left:?}");
    }
}

const RANK0: &str = "dp_rank_00_tp_rank_00_pp_rank_00.pt";

#[test]
fn a_pickle_naming_another_class_is_refused_naming_it() {
    let (_t, dir) = damaged("llama-gqa-tp2-plain", |m| {
        replace_bytes(&m.join(RANK0), b"torch._utils\n_rebuild_tensor_v2", b"subprocess.x\n_rebuild_tensor_v2")
    });
    fails_cleanly(&dir, &[RANK0, "refusing class subprocess.x._rebuild_tensor_v2"]);
}

#[test]
fn a_truncated_zip_is_refused() {
    let (_t, dir) = damaged("llama-gqa-tp2-plain", |m| {
        let p = m.join(RANK0);
        let b = fs::read(&p).unwrap();
        fs::write(&p, &b[..b.len() / 2]).unwrap();
    });
    fails_cleanly(&dir, &[RANK0, "truncated"]);
}

#[test]
fn a_tensor_reference_whose_tensor_file_is_missing_is_refused() {
    let (_t, dir) = damaged("llama-gqa-tp4-xser", |m| {
        fs::remove_file(m.join(format!("{RANK0}.tensors/tensor_3.pt"))).unwrap();
    });
    fails_cleanly(&dir, &["tensor_3.pt", "is missing", "model.layers.0.mlp.down_proj.weight"]);
}

#[test]
fn a_shape_that_disagrees_with_the_data_is_refused() {
    // xser: the info says [64, 64] for tid 0, its tensor file holds tid 2's [64].
    let (_t, dir) = damaged("llama-gqa-tp4-xser", |m| {
        let t = m.join(format!("{RANK0}.tensors"));
        fs::copy(t.join("tensor_2.pt"), t.join("tensor_0.pt")).unwrap();
    });
    fails_cleanly(&dir, &["tensor_0.pt", "lm_head.weight", "[64, 64]", "[64]"]);
    // plain: a size of [129, 64] over a storage of 128 * 64 elements.
    let (_t, dir) = damaged("llama-gqa-tp2-plain", |m| {
        replace_bytes(&m.join(RANK0), b"K\x00K\x80K\x40\x86", b"K\x00K\x81K\x40\x86")
    });
    fails_cleanly(&dir, &[RANK0, "lm_head.weight", "[129, 64]", "8192"]);
}

// ---------------------------------------------------------------------------------------------------------
// Adapters saved by optimum-neuron (`adapter_<name>/adapter_shards/`, `NeuronPeftModel.save_pretrained`):
// `on-ckpt/llama-gqa-tp4-lora-{plain,xser}`, whose rank files are the reference's own `adapt_state_dict` output
// (tp-ref-lora), made by `tests/fixtures/scripts/make_on_ckpt_lora.py`.

const LORA: [&str; 3] = ["llama-gqa-tp4-lora-plain", "llama-gqa-tp4-lora-xser", "llama-gqa-tp2-lora-plain"];

/// Each LoRA fixture's tp and qkv layout (fused: one `weight_qkv`).
const LORA_LAYOUT: [(usize, bool); 3] = [(4, true), (4, true), (2, false)];

/// The reference's `to_original_weights` of these rank files (at tp 4 fused; bit for bit the same as tp 2 unfused,
/// which the fixture script checks).
fn reference_consolidated() -> neuron_spec::format::SafetensorsFile {
    open("tp-ref-lora/llama-gqa-lora/tp4/consolidated_fused.safetensors")
}

fn consolidate_all(src: &Path, out: &Path) {
    neuron_spec::consolidate_with_adapters(src, out, &WriteOptions::default(), &neuron_spec::AdapterOptions::default())
        .unwrap();
}

/// `consolidate` writes the base byte for byte and the adapter as a PEFT folder holding exactly the reference's
/// `to_original_weights` output (each fused group's members share the mean A: the reference's semantics).
#[test]
fn reference_adapters_consolidate_to_the_reference_to_original_weights() {
    let want = fs::read(fixture("llama-gqa/model.safetensors")).unwrap();
    let orig: serde_json::Value =
        serde_json::from_slice(&fs::read(fixture("llama-gqa-lora/adapter_config.json")).unwrap()).unwrap();
    for n in LORA {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("hf");
        consolidate_all(&fixture(&format!("on-ckpt/{n}")), &out);
        assert!(fs::read(out.join("model.safetensors")).unwrap() == want, "{n}: base differs");
        let got = neuron_spec::format::SafetensorsFile::open(&out.join("default/adapter_model.safetensors")).unwrap();
        assert_same_tensors(&got, &reference_consolidated(), n);
        assert_eq!(got.names().count(), 28, "{n}");
        // The original adapter's config (its modules, r, alpha, no patterns), pointing at the consolidated base.
        let json = |p: &Path| -> serde_json::Value { serde_json::from_slice(&fs::read(p).unwrap()).unwrap() };
        let mut cfg = json(&out.join("default/adapter_config.json"));
        assert_eq!(cfg["base_model_name_or_path"], out.display().to_string(), "{n}");
        cfg["base_model_name_or_path"] = orig["base_model_name_or_path"].clone();
        assert_eq!(cfg, orig, "{n}: adapter_config.json");
    }
}

/// The adapter is read in mean mode, with the layout an import of the original adapter in mean mode gives.
#[test]
fn a_reference_adapter_has_the_mean_mode_layout() {
    let cfg = neuron_spec_models::ModelConfig::read(&fixture("llama-gqa/config.json")).unwrap();
    let opts = neuron_spec::lora::LoraImportOptions { mode: neuron_spec::lora::LoraMode::Mean, allow_partial: false };
    let adapter = neuron_spec::lora::PeftAdapter::open(&fixture("llama-gqa-lora")).unwrap();
    for (n, (tp, fuse)) in LORA.into_iter().zip(LORA_LAYOUT) {
        let meta = neuron_spec_models::layout(&cfg, tp, neuron_spec_models::QkvLayout::gqa(fuse)).unwrap();
        let imported = neuron_spec::lora::import_adapter(&meta, &adapter, "default", opts).unwrap();
        let all = neuron_spec::checkpoint::adapters::sharded_adapters(&fixture(&format!("on-ckpt/{n}"))).unwrap();
        assert_eq!(all.len(), 1, "{n}");
        let a = &all[0];
        assert_eq!((a.name.as_str(), a.checkpoint.tp), ("default", tp), "{n}");
        assert_eq!(a.config.layout().unwrap().as_ref(), Some(&imported.layout), "{n}");
        assert_eq!(a.checkpoint.metadata.parameters, imported.metadata.parameters, "{n}");
    }
}

/// `inspect` lists the adapter (its name, rank-local tensors and modules).
#[test]
fn inspect_lists_a_reference_adapter() {
    for n in LORA {
        let o = Command::new(env!("CARGO_BIN_EXE_neuron-spec"))
            .args(["inspect", "--json"])
            .arg(fixture(&format!("on-ckpt/{n}")))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let a = &v["adapters"];
        assert_eq!(a.as_array().map(Vec::len), Some(1), "{n}: {a}");
        assert_eq!(a[0]["name"], "default", "{n}: {a}");
        assert_eq!((a[0]["lora_mode"].as_str(), a[0]["rank_format"].as_str()), (Some("mean"), Some("pt")), "{n}");
        assert_eq!(a[0]["tensors"], if n.contains("tp2") { 20 } else { 16 }, "{n}: rank 0's LoRA factors");
        eprintln!("{n}: {}", a[0]);
    }
}

/// `forward` runs the base with the adapter: peft's logits with the reference's consolidated adapter
/// (`on-ckpt/golden_lora_mean.safetensors`).
#[test]
fn forward_with_a_reference_adapter_matches_peft_on_its_consolidation() {
    let g = open("on-ckpt/golden_lora_mean.safetensors");
    let ids = g.tensor("input_ids").unwrap();
    let s = ids.shape()[1];
    let ids: Vec<Vec<i64>> = ids.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect();
    let golden = g.tensor("logits").unwrap().to_f32_vec();
    let (_, base) = input_ids_and_logits();
    assert!(neuron_spec::compare::max_abs_diff(&base, &golden).unwrap() > 1e-2, "the adapter changes the logits");
    for n in LORA {
        let out = neuron_spec_models::Source::open(&fixture(&format!("on-ckpt/{n}")))
            .and_then(|s| {
                neuron_spec_models::run(
                    &s,
                    &neuron_spec_models::Transport::threads_at_source_tp(),
                    &neuron_spec_models::Forward::new(ids.to_vec()),
                )
            })
            .unwrap();
        let d = neuron_spec::compare::max_abs_diff(&out.logits, &golden).unwrap();
        eprintln!("{n}: max |Δ| logits vs peft {d:.2e}");
        assert!(d <= 1e-4, "{n}: {d}");
    }
}

/// `reshard` to our layout carries the adapter: consolidating the result gives the same adapter.
#[test]
fn reshard_carries_a_reference_adapter() {
    for (n, tp) in [("llama-gqa-tp4-lora-plain", 2), ("llama-gqa-tp4-lora-xser", 8), ("llama-gqa-tp2-lora-plain", 4)] {
        let tmp = tempfile::tempdir().unwrap();
        let (a, out) = (tmp.path().join("a"), tmp.path().join("hf"));
        reshard(&fixture(&format!("on-ckpt/{n}")), &a, tp, &WriteOptions::default()).unwrap();
        let ck = ShardedCheckpoint::open(&a.join("adapter_default")).unwrap();
        assert_eq!((ck.tp, ck.format), (tp, neuron_spec::checkpoint::RankFormat::Safetensors), "{n}");
        consolidate_all(&a, &out);
        assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf("llama-gqa"), n);
        assert_same_tensors(
            &neuron_spec::format::SafetensorsFile::open(&out.join("default/adapter_model.safetensors")).unwrap(),
            &reference_consolidated(),
            n,
        );
    }
}

/// A damaged adapter rank file fails like a damaged base rank file: one line naming it, nothing written.
#[test]
fn a_damaged_reference_adapter_rank_file_is_refused() {
    let (_t, dir) = damaged("llama-gqa-tp4-lora-plain", |_| {});
    let p = dir.join("adapter_default/adapter_shards/model").join(RANK0);
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..b.len() / 2]).unwrap();
    fails_cleanly(&dir, &["adapter_default/adapter_shards/model", RANK0, "truncated"]);
    // A tensor under a name peft's state dict does not give.
    let (_t, dir) = damaged("llama-gqa-tp4-lora-xser", |_| {});
    let p = dir.join("adapter_default/adapter_shards/model").join(RANK0);
    replace_bytes(&p, b"base_model.model.model.layers.0", b"base_model.model.model.layers.7");
    fails_cleanly(&dir, &[RANK0, "layers.7"]);
    // A factor under a parameter name the metadata does not give (and so the one it gives is missing).
    let (_t, dir) = damaged("llama-gqa-tp4-lora-plain", |_| {});
    let p = dir.join("adapter_default/adapter_shards/model").join(RANK0);
    replace_bytes(
        &p,
        b"layers.1.self_attn.qkv_proj.lora_B.weight_qkv",
        b"layers.1.self_attn.qkv_proj.lora_B.weight_qkx",
    );
    fails_cleanly(&dir, &[RANK0, "lora_B.weight_qkx", "lora_B.weight_qkv"]);
}

/// Pipeline-parallel adapter shards (one metadata per stage) are refused, naming them.
#[test]
fn pipeline_parallel_reference_adapter_shards_are_refused() {
    let (_t, dir) = damaged("llama-gqa-tp4-lora-plain", |_| {});
    let s = dir.join("adapter_default/adapter_shards");
    fs::copy(s.join("mp_metadata_pp_rank_0.json"), s.join("mp_metadata_pp_rank_1.json")).unwrap();
    fails_cleanly(&dir, &["adapter_default/adapter_shards", "pipeline-parallel adapter shards are not read yet"]);
}

/// A LoRA parameter the metadata splits otherwise than its spec is refused, naming it.
#[test]
fn a_reference_adapter_metadata_that_disagrees_with_its_specs_is_refused() {
    let (_t, dir) = damaged("llama-gqa-tp4-lora-plain", |_| {});
    let p = dir.join("adapter_default/adapter_shards/mp_metadata_pp_rank_0.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    let name = "base_model.model.model.layers.1.self_attn.o_proj.lora_A.default.weight";
    m["parameters"][name]["partition_dim"] = 0.into();
    fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
    fails_cleanly(&dir, &["mp_metadata_pp_rank_0.json", name, "split along"]);
}

/// The other families in the reference's `.pt` layout (`make/make_family_on_ckpt.py`: our tp 2 fused shard of
/// each family's fixture, every rank file rewritten by torch.save, plain or xser): forward equals the same
/// checkpoint in our format bit for bit and transformers' golden logits; consolidated, the HF checkpoint's tensors.
#[test]
fn other_families_pt_checkpoints_run_like_our_shards_and_the_golden() {
    use neuron_spec_models::{layout_of_dir, Forward, QkvLayout, Source, Transport};
    for (family, kind) in [
        ("mistral", "plain"),
        ("qwen2", "xser"),
        ("qwen3", "plain"),
        ("granite", "xser"),
        ("qwen3-moe", "xser"),
        ("phi3", "plain"),
        ("mixtral", "xser"),
        ("gemma3", "plain"),
    ] {
        let n = format!("{family}-tp2-{kind}");
        let pt = fixture(&format!("on-ckpt/{n}"));
        assert_eq!(ShardedCheckpoint::open(&pt).unwrap().format, neuron_spec::checkpoint::RankFormat::Pt, "{n}");
        let g = open(&format!("{family}/golden.safetensors"));
        let ids = g.tensor("input_ids").unwrap();
        let s = ids.shape()[1];
        let ids: Vec<Vec<i64>> = ids.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect();
        let forward = |dir: &Path| {
            Source::open(dir)
                .and_then(|s| {
                    neuron_spec_models::run(&s, &Transport::threads_at_source_tp(), &Forward::new(ids.clone()))
                })
                .unwrap()
        };
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join("ours");
        let meta = layout_of_dir(&fixture(family), 2, QkvLayout::Fused).unwrap();
        neuron_spec::shard(&fixture(family), &ours, &meta, 2, &WriteOptions::default()).unwrap();
        let (a, b) = (forward(&pt), forward(&ours));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&a.logits) == bits(&b.logits), "{n}: logits differ from our shard's");
        assert!(a.hidden_1 == b.hidden_1, "{n}: hidden_1 differs from our shard's");
        let d = neuron_spec::compare::max_abs_diff(&a.logits, &g.tensor("logits").unwrap().to_f32_vec()).unwrap();
        assert!(d <= 1e-4, "{n}: max |Δ| logits vs golden {d:e}");
        let out = tmp.path().join("hf");
        consolidate(&pt, &out, &WriteOptions::default()).unwrap();
        assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf(family), &n);
    }
}
