//! `neuron-spec inspect`: what an HF folder, a sharded checkpoint or a PEFT adapter folder holds, with the
//! adapters, the qkv layout, the kv multiplier and the rank files' checksums.

use crate::error::Result;
use crate::exit::EXIT_OK;
use crate::layouts::is_sharded;
use crate::out::human;
use neuron_spec::checkpoint::{side_files, ShardedCheckpoint, RANKS_DIR};
use neuron_spec::format::HfCheckpoint;
use neuron_spec::lora::{LoraConfig, PeftAdapter, ADAPTER_CONFIG};
use neuron_spec::tensor::TensorInfo;
use neuron_spec::tensor::TensorSource;
use neuron_spec::Error;
use neuron_spec::Spec;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// An adapter's summary.
fn adapter_json(name: &str, dir: &Path, cfg: &LoraConfig, tensors: usize) -> Value {
    json!({
        "name": name,
        "dir": dir,
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "use_rslora": cfg.use_rslora,
        "target_modules": serde_json::to_value(&cfg.target_modules).unwrap_or(Value::Null),
        "rank_pattern": cfg.rank_pattern,
        "base_model_name_or_path": cfg.base_model_name_or_path,
        "tensors": tensors,
    })
}

/// The PEFT adapters in the sub-folders of `dir` (a consolidated output: `dir/<name>/adapter_config.json`).
fn hf_adapters(dir: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut subs: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(ADAPTER_CONFIG).is_file())
        .collect();
    subs.sort();
    for p in subs {
        let a = PeftAdapter::open(&p)?;
        let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        out.push(adapter_json(&name, &p, &a.config, a.file.names().count()));
    }
    Ok(out)
}

fn dtype_counts(tensors: &[TensorInfo]) -> BTreeMap<String, usize> {
    let mut dtypes = BTreeMap::new();
    for t in tensors {
        *dtypes.entry(t.dtype.to_string()).or_default() += 1;
    }
    dtypes
}

fn tensors_json(tensors: &[TensorInfo]) -> Vec<Value> {
    tensors.iter().map(|t| json!({"name": t.name, "dtype": t.dtype, "shape": t.shape})).collect()
}

fn summarize(dir: &Path) -> Result<Value> {
    let files: Vec<String> = side_files(dir)?.iter().map(|p| p.display().to_string()).collect();
    if is_sharded(dir) {
        let ck = ShardedCheckpoint::open(dir)?; // verifies sizes and checksums
        let rank0 = ck
            .ranks
            .first()
            .ok_or_else(|| Error::RankFiles { dir: dir.join(RANKS_DIR), reason: "no rank files".into() })?;
        let tensors: Vec<TensorInfo> = rank0.names().filter_map(|n| rank0.info(n)).collect();
        let total: usize = ck.ranks.iter().flat_map(|r| r.names().filter_map(|n| r.info(n))).map(|i| i.nbytes()).sum();
        let specs: Vec<String> = ck.metadata.specs().map(|(m, s)| format!("{m}: {}", s.class_name())).collect();
        let gqa: Vec<_> = ck
            .metadata
            .specs()
            .filter_map(|(_, s)| match s {
                Spec::GqaQkv(g) => Some(g),
                _ => None,
            })
            .collect();
        let qkv = match gqa.first() {
            Some(g) if g.fuse_qkv => "fused (qkv_proj.weight_qkv)",
            Some(_) => "separate (qkv_proj.weight_q/_k/_v)",
            None => "no GQA spec (plain parameters)",
        };
        // Every stage's metadata records its own rank files.
        let rank_files: Vec<_> = ck.stages.iter().flat_map(|m| m.rank_files.iter().cloned()).collect();
        let checksums = if rank_files.is_empty() {
            "not recorded (written by the reference): nothing to verify".to_string()
        } else {
            format!("verified: {} rank files match their recorded size and xxh3-64", rank_files.len())
        };
        let adapters: Vec<Value> = neuron_spec::checkpoint::adapters::sharded_adapters(dir)?
            .iter()
            .map(|a| {
                let n: usize = a.checkpoint.ranks.first().map_or(0, |r| r.names().count());
                let mut j = adapter_json(&a.name, &a.checkpoint.dir, &a.config, n);
                // How fused groups' A are combined (optimum-neuron's own adapters: mean), and the rank files.
                let mode = a.config.layout()?.map(|l| l.mode);
                j["lora_mode"] = serde_json::to_value(mode).unwrap_or(Value::Null);
                j["rank_format"] = json!(a.checkpoint.format.ext());
                Ok(j)
            })
            .collect::<Result<_>>()?;
        Ok(json!({
            "kind": "sharded", "tp": ck.tp, "format_version": ck.metadata.format_version, "total_bytes": total,
            "tensors_per_rank": tensors.len(), "dtypes": dtype_counts(&tensors), "specs": specs, "qkv_layout": qkv,
            "kv_size_multiplier": gqa.first().map(|g| g.kv_size_multiplier),
            "num_attention_heads": gqa.first().map(|g| g.num_attention_heads),
            "num_key_value_heads": gqa.first().map(|g| g.num_key_value_heads),
            "checksums": checksums, "rank_files": rank_files, "pp": ck.pp(),
            "adapters": adapters, "files": files, "tensors": tensors_json(&tensors),
        }))
    } else if dir.join(ADAPTER_CONFIG).is_file() && !dir.join("config.json").is_file() {
        let a = PeftAdapter::open(dir)?;
        let tensors: Vec<TensorInfo> = a.file.names().filter_map(|n| a.file.info(n)).collect();
        let total: usize = tensors.iter().map(TensorInfo::nbytes).sum();
        Ok(json!({
            "kind": "peft", "tp": 1, "format_version": null, "total_bytes": total,
            "dtypes": dtype_counts(&tensors), "specs": [],
            "adapters": [adapter_json("(this folder)", dir, &a.config, tensors.len())],
            "files": files, "tensors": tensors_json(&tensors),
        }))
    } else {
        let hf = HfCheckpoint::open(dir)?;
        // The verdict `shard` gives on the config (its family and every key), at tp 1.
        neuron_spec_models::layout_of_dir(dir, 1, neuron_spec_models::QkvLayout::Separate)?;
        let ignored = neuron_spec_models::ignored_keys(dir)?;
        let tensors: Vec<TensorInfo> = hf.names().into_iter().filter_map(|n| hf.info(&n)).collect();
        Ok(json!({
            "kind": "hf", "tp": 1, "format_version": null, "total_bytes": hf.total_bytes(),
            "dtypes": dtype_counts(&tensors), "specs": [], "weight_files": hf.files().len(),
            "adapters": hf_adapters(dir)?, "files": files, "tensors": tensors_json(&tensors),
            "ignored_config_keys": ignored,
        }))
    }
}

/// Runs `inspect`.
pub fn inspect_command(dir: &Path, json: bool) -> Result<i32> {
    let v = match summarize(dir) {
        Ok(v) => v,
        Err(e) if json => {
            crate::out::json(&json!({"ok": false, "dir": dir, "error": e.to_string()}))?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if json {
        crate::out::json(&v)?;
        return Ok(EXIT_OK);
    }
    let kind = v["kind"].as_str().unwrap_or_default();
    out!("{} ({} {})", dir.display(), kind, if kind == "peft" { "adapter folder" } else { "checkpoint" });
    let count = v["tensors"].as_array().map_or(0, Vec::len);
    if kind == "sharded" {
        out!("  tp: {}", v["tp"]);
        out!(
            "  metadata format_version: {}",
            v["format_version"].as_u64().map_or("none (written by the reference)".to_string(), |x| x.to_string())
        );
        out!("  qkv layout: {}", v["qkv_layout"].as_str().unwrap_or_default());
        if let Some(m) = v["kv_size_multiplier"].as_u64() {
            out!(
                "  heads: {} query, {} kv, kv_size_multiplier {m} (each kv head on {m} ranks)",
                v["num_attention_heads"],
                v["num_key_value_heads"]
            );
        }
        out!("  checksums: {}", v["checksums"].as_str().unwrap_or_default());
        out!("  tensors per rank: {count}");
    } else {
        out!("  tensors: {count}");
    }
    let dtypes: Vec<String> =
        v["dtypes"].as_object().map(|m| m.iter().map(|(d, n)| format!("{d} ×{n}")).collect()).unwrap_or_default();
    out!("  dtypes: {}", dtypes.join(", "));
    out!(
        "  total size{}: {}",
        if kind == "sharded" { " (all ranks)" } else { "" },
        human(v["total_bytes"].as_u64().unwrap_or(0))
    );
    for s in v["specs"].as_array().into_iter().flatten() {
        out!("  spec {}", s.as_str().unwrap_or_default());
    }
    for a in v["adapters"].as_array().into_iter().flatten() {
        out!(
            "  adapter {}: r {}, alpha {}, {} tensors, targets {}{}",
            a["name"].as_str().unwrap_or_default(),
            a["r"],
            a["lora_alpha"],
            a["tensors"],
            a["target_modules"],
            match (a["lora_mode"].as_str(), a["rank_format"].as_str()) {
                (Some(m), Some(f)) => format!(" (lora mode {m}, .{f} rank files)"),
                _ => String::new(),
            }
        );
    }
    let ignored: Vec<&str> =
        v["ignored_config_keys"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !ignored.is_empty() {
        out!("  config keys ignored (transformers never reads them): {}", ignored.join(", "));
    }
    let files: Vec<&str> = v["files"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !files.is_empty() {
        out!("  other files: {}", files.join(", "));
    }
    Ok(EXIT_OK)
}
