//! The config-key rule follows transformers (issue 21): every family accepts a config exactly as transformers
//! 4.57.1's `save_pretrained` writes it (`tests/fixtures/configs/`, made by
//! `tests/fixtures/make/config_read_sets.py`), and with the keys conversion tools add; each key of the family's
//! generated read set that we do not implement is refused by name, all of them in one error;
//! `quantization_config` is refused for every family; `plan` and `inspect` list the ignored keys.

use crate::common;

use common::fixture;
use neuron_spec::Error;
use neuron_spec_models::{
    gemma3::GEMMA3_FIELDS, granite::GRANITE_FIELDS, ignored_keys, layout_of_dir, llama::LLAMA_FIELDS,
    mixtral::MIXTRAL_FIELDS, qwen3::QWEN3_FIELDS, qwen3_moe::QWEN3_MOE_FIELDS, ModelConfig, QkvLayout,
    IMPLEMENTED_ANY_FAMILY, READ_SETS,
};
use serde_json::{json, Value};
use std::path::Path;

/// The implemented families and the keys of their read set each implements beyond `IMPLEMENTED_ANY_FAMILY`.
const FAMILIES: [(&str, &[&str]); 9] = [
    ("llama", LLAMA_FIELDS),
    ("mistral", LLAMA_FIELDS),
    ("qwen2", LLAMA_FIELDS),
    ("qwen3", QWEN3_FIELDS),
    ("granite", GRANITE_FIELDS),
    ("qwen3_moe", QWEN3_MOE_FIELDS),
    ("phi3", &[]),
    ("mixtral", MIXTRAL_FIELDS),
    ("gemma3_text", GEMMA3_FIELDS),
];

/// The keys conversion tools and hub downloads add, which transformers never reads.
const TOOL_KEYS: [(&str, &str); 4] = [
    ("_model_name_or_path", "\"/models/SmolLM2\""),
    ("unk_token_id", "0"),
    ("_commit_hash", "\"0123abcd\""),
    ("my_converter_note", "\"converted with tool 1.2\""),
];

fn saved_config(model_type: &str) -> Value {
    let p = fixture(&format!("configs/{model_type}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A folder holding only `config` as config.json.
fn config_dir(config: &Value) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), serde_json::to_string_pretty(config).unwrap()).unwrap();
    tmp
}

fn read_layout(dir: &Path) -> neuron_spec::Result<neuron_spec::CheckpointMetadata> {
    layout_of_dir(dir, 1, QkvLayout::Separate)
}

fn read_set(model_type: &str) -> &'static [&'static str] {
    READ_SETS.iter().find(|(t, _)| *t == model_type).map(|(_, k)| *k).unwrap()
}

#[test]
fn configs_as_save_pretrained_writes_them_are_accepted_unmodified() {
    for (model_type, _) in FAMILIES {
        let text = std::fs::read_to_string(fixture(&format!("configs/{model_type}.json"))).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), &text).unwrap(); // byte for byte
        let meta = read_layout(tmp.path()).unwrap_or_else(|e| panic!("{model_type}: {e}"));
        assert!(!meta.parameters.is_empty(), "{model_type}");
        if model_type != "phi3" {
            ModelConfig::read_dir(tmp.path()).unwrap();
        }
    }
}

#[test]
fn keys_transformers_never_reads_are_accepted_and_listed_as_ignored() {
    for (model_type, _) in FAMILIES {
        let mut c = saved_config(model_type);
        for (k, v) in TOOL_KEYS {
            c[k] = serde_json::from_str(v).unwrap();
        }
        let tmp = config_dir(&c);
        read_layout(tmp.path()).unwrap_or_else(|e| panic!("{model_type}: {e}"));
        let ignored = ignored_keys(tmp.path()).unwrap();
        for (k, _) in TOOL_KEYS {
            assert!(ignored.iter().any(|i| i == k), "{model_type}: {k} not in {ignored:?}");
        }
        // Keys the family implements are never called ignored.
        for k in ["hidden_size", "num_attention_heads", "vocab_size"] {
            assert!(!ignored.iter().any(|i| i == k), "{model_type}: {k} in {ignored:?}");
        }
    }
}

/// Every key of the family's generated read set that it does not implement, set to a value that is not
/// transformers' "unset" (null) nor a neutral one, is refused, all in one error naming each.
#[test]
fn every_read_key_we_do_not_implement_is_refused_by_name_in_one_error() {
    for (model_type, own) in FAMILIES {
        let unimplemented: Vec<&str> = read_set(model_type)
            .iter()
            .copied()
            .filter(|k| !IMPLEMENTED_ANY_FAMILY.contains(k) && !own.contains(k))
            .collect();
        // Checked by hand against transformers 4.57.1: masking_utils reads attention_chunk_size for every
        // family; the dropouts, the tying flags and partial_rotary_factor are accepted only at their neutral value.
        for k in ["attention_chunk_size", "attention_dropout", "torchscript", "quantization_config"] {
            assert!(unimplemented.contains(&k), "{model_type}: {k} not in {unimplemented:?}");
        }
        let mut c = saved_config(model_type);
        for k in &unimplemented {
            c[*k] = json!(3);
        }
        let tmp = config_dir(&c);
        let e = read_layout(tmp.path()).unwrap_err();
        let msg = e.to_string();
        match e {
            Error::RefusedConfigKeys { file, model_type: t, keys } => {
                assert_eq!(file, tmp.path().join("config.json"));
                assert_eq!(t, model_type);
                let mut got: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
                let mut want = unimplemented.clone();
                got.sort_unstable();
                want.sort_unstable();
                assert_eq!(got, want, "{model_type}: {msg}");
            }
            other => panic!("{model_type}: not RefusedConfigKeys: {other}"),
        }
        for k in &unimplemented {
            assert!(msg.contains(&format!("`{k}`")), "{model_type}: {k} not named in {msg}");
        }
    }
}

#[test]
fn quantization_config_is_refused_for_every_family() {
    for (model_type, _) in FAMILIES {
        let mut c = saved_config(model_type);
        c["quantization_config"] = json!({"quant_method": "bitsandbytes", "load_in_4bit": true});
        let e = read_layout(config_dir(&c).path()).unwrap_err().to_string();
        assert!(e.contains("`quantization_config`") && e.contains("quantized"), "{model_type}: {e}");
    }
}

/// A key a family reads only for another model_type has no effect, as in transformers: Qwen3's MLP has no bias
/// whatever `mlp_bias` says, Mistral's attention none whatever `attention_bias` says.
#[test]
fn a_key_transformers_ignores_for_this_model_type_changes_nothing() {
    let mut c = saved_config("qwen3");
    c["mlp_bias"] = json!(true);
    let tmp = config_dir(&c);
    assert!(!ModelConfig::read_dir(tmp.path()).unwrap().llama.mlp_bias);
    assert!(ignored_keys(tmp.path()).unwrap().contains(&"mlp_bias".to_string()));
    let mut c = saved_config("mistral");
    c["attention_bias"] = json!(true);
    let cfg = ModelConfig::read_dir(config_dir(&c).path()).unwrap();
    assert!(!cfg.qkv_bias && !cfg.o_bias);
    // Mistral never reads use_sliding_window: its window stays on.
    let mut c = saved_config("mistral");
    c["sliding_window"] = json!(4);
    c["use_sliding_window"] = json!(false);
    assert_eq!(ModelConfig::read_dir(config_dir(&c).path()).unwrap().sliding_window, Some(4));
}

fn bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_neuron-spec")).args(args).output().unwrap()
}

#[test]
fn plan_and_inspect_list_the_ignored_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama-gqa/config.json")).unwrap()).unwrap();
    for (k, v) in TOOL_KEYS {
        c[k] = serde_json::from_str(v).unwrap();
    }
    std::fs::write(tmp.path().join("config.json"), c.to_string()).unwrap();
    std::fs::copy(fixture("llama-gqa/model.safetensors"), tmp.path().join("model.safetensors")).unwrap();
    let dir = tmp.path().to_str().unwrap();
    let o = bin(&["plan", dir, "--tp", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.contains("ignored")).unwrap_or_else(|| panic!("no ignored line: {out}"));
    for (k, _) in TOOL_KEYS {
        assert!(line.contains(k), "{k}: {line}");
    }
    let o = bin(&["plan", dir, "--tp", "2", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let checks = v["checks"].as_array().unwrap();
    let keys = checks.iter().find(|c| c["check"] == "config.json keys").unwrap();
    assert!(keys["ok"].as_bool().unwrap() && keys["message"].as_str().unwrap().contains("unk_token_id"));
    let o = bin(&["inspect", dir, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ignored: Vec<&str> = v["ignored_config_keys"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for (k, _) in TOOL_KEYS {
        assert!(ignored.contains(&k), "{k}: {ignored:?}");
    }
}
