//! `adapter_config.json`: peft's `LoraConfig`, the fields this crate reads typed and every other field kept as
//! it was, so a read-modify-write loses nothing.

use crate::error::{Error, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::Path;

/// The file name peft reads and writes.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter weights file name.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The key of our own section in an adapted config (unknown to peft, which keeps unknown keys too).
pub const LAYOUT_KEY: &str = "neuron_spec_lora";

/// `target_modules`: a list of module names (suffix match), a regex (full match) or `"all-linear"`.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// Names; a module is targeted if its path equals a name or ends with `.name`.
    List(Vec<String>),
    /// A regex that must match the whole module path.
    Regex(String),
    /// Every linear layer except the output layer.
    AllLinear,
}

impl TargetModules {
    /// Whether the module at `path` is targeted (peft's `check_target_module_exists`, without the output-layer
    /// exception of `all-linear`, which the caller applies).
    pub fn matches(&self, path: &str) -> Result<bool> {
        Ok(match self {
            TargetModules::List(v) => v.iter().any(|t| suffix_match(t, path)),
            TargetModules::Regex(r) => full_match(r, path)?,
            TargetModules::AllLinear => true,
        })
    }
}

/// peft's list rule: `path == name` or `path` ends with `.name`.
pub fn suffix_match(name: &str, path: &str) -> bool {
    path == name || path.strip_suffix(name).is_some_and(|p| p.ends_with('.'))
}

/// Whether the regex `pattern` matches all of `text` (Python's `re.fullmatch`).
pub fn full_match(pattern: &str, text: &str) -> Result<bool> {
    let re = regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| Error::lora("config", format!("target_modules regex {pattern:?} is invalid: {e}")))?;
    Ok(re.is_match(text))
}

impl Serialize for TargetModules {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            TargetModules::List(v) => v.serialize(s),
            TargetModules::Regex(r) => r.serialize(s),
            TargetModules::AllLinear => "all-linear".serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TargetModules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "all-linear" => Ok(TargetModules::AllLinear),
            serde_json::Value::String(s) => Ok(TargetModules::Regex(s)),
            serde_json::Value::Array(a) => a
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(serde::de::Error::custom(format!("target_modules entry {other} is not a string"))),
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(TargetModules::List),
            other => Err(serde::de::Error::custom(format!(
                "target_modules must be a list of names, a regex string or \"all-linear\", found {other}"
            ))),
        }
    }
}

/// A number written as an integer when it is one (`"lora_alpha": 8`, as peft writes it), else as a float.
fn ser_num<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

fn ser_num_map<S: Serializer>(m: &IndexMap<String, f64>, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(m.len()))?;
    for (k, v) in m {
        let n = if v.fract() == 0.0 && v.abs() < 9.0e15 {
            serde_json::Value::from(*v as i64)
        } else {
            serde_json::Value::from(*v)
        };
        map.serialize_entry(k, &n)?;
    }
    map.end()
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> std::result::Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// peft's `LoraConfig` as found in `adapter_config.json`. Unknown fields are kept in `extra` and written back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// `"LORA"`.
    #[serde(default = "lora_type")]
    pub peft_type: String,
    /// Rank (default for modules not in `rank_pattern`).
    pub r: usize,
    /// Scaling numerator (default for modules not in `alpha_pattern`).
    #[serde(serialize_with = "ser_num")]
    pub lora_alpha: f64,
    /// The targeted modules.
    pub target_modules: TargetModules,
    /// Scaling `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub use_rslora: bool,
    /// Per-module rank overrides (regex keys, matched as `(.*\.)?(key)$`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub rank_pattern: IndexMap<String, usize>,
    /// Per-module alpha overrides (same keys as `rank_pattern`).
    #[serde(default, deserialize_with = "null_as_default", serialize_with = "ser_num_map")]
    pub alpha_pattern: IndexMap<String, f64>,
    /// Modules trained and saved whole (not supported on import: their weights are not LoRA factors).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// `"none"`, `"all"` or `"lora_only"` (only `"none"` is supported).
    #[serde(default = "bias_none")]
    pub bias: String,
    /// Whether the base layer stores `[in, out]` (GPT-2's Conv1D); not supported.
    #[serde(default, deserialize_with = "null_as_default")]
    pub fan_in_fan_out: bool,
    /// `"CAUSAL_LM"`, ...
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model peft loads the adapter onto.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Every other field, as it was.
    #[serde(flatten)]
    pub extra: IndexMap<String, serde_json::Value>,
}

fn lora_type() -> String {
    "LORA".into()
}
fn bias_none() -> String {
    "none".into()
}

impl LoraConfig {
    /// Parses `adapter_config.json` text; `path` names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let c: Self =
            serde_json::from_str(text).map_err(|e| Error::Json { path: path.to_path_buf(), reason: e.to_string() })?;
        if c.peft_type != "LORA" {
            return Err(Error::lora(
                path.display().to_string(),
                format!("peft_type is {:?}; only LORA adapters are supported", c.peft_type),
            ));
        }
        Ok(c)
    }

    /// Reads `dir/adapter_config.json` (or the file itself).
    pub fn read(path: &Path) -> Result<Self> {
        let path = if path.is_dir() { path.join(ADAPTER_CONFIG) } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_json(&text, &path)
    }

    /// JSON as peft writes it: keys sorted, two-space indent.
    pub fn to_json(&self) -> Result<String> {
        let v = serde_json::to_value(self).map_err(|e| Error::Serialization(format!("adapter config: {e}")))?;
        serde_json::to_string_pretty(&sorted(v)).map_err(|e| Error::Serialization(format!("adapter config: {e}")))
    }

    /// The rank and alpha peft gives the module at `path` (`rank_pattern` / `alpha_pattern`, first matching key).
    pub fn rank_and_alpha(&self, path: &str) -> Result<(usize, f64)> {
        let r = match pattern_key(self.rank_pattern.keys(), path)? {
            Some(k) => self.rank_pattern[k],
            None => self.r,
        };
        let alpha = match pattern_key(self.alpha_pattern.keys(), path)? {
            Some(k) => self.alpha_pattern[k],
            None => self.lora_alpha,
        };
        Ok((r, alpha))
    }

    /// The scaling peft applies for rank `r` and `alpha`: `alpha / r`, or `alpha / sqrt(r)` with rslora.
    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// The alpha that gives `scaling` at rank `r` (inverse of [`scaling`](Self::scaling)).
    pub fn alpha_for(&self, r: usize, scaling: f64) -> f64 {
        if self.use_rslora {
            scaling * (r as f64).sqrt()
        } else {
            scaling * r as f64
        }
    }

    /// Our section of an adapted config, if present.
    pub fn layout(&self) -> Result<Option<super::LoraLayout>> {
        self.extra
            .get(LAYOUT_KEY)
            .map(|v| {
                serde_json::from_value(v.clone())
                    .map_err(|e| Error::lora("config", format!("{LAYOUT_KEY} section is invalid: {e}")))
            })
            .transpose()
    }
}

/// The first key of `keys` whose regex matches `path` as peft's `get_pattern_key` does (`(.*\.)?(key)$`).
fn pattern_key<'a>(keys: impl Iterator<Item = &'a String>, path: &str) -> Result<Option<&'a String>> {
    for k in keys {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
            .map_err(|e| Error::lora("config", format!("pattern key {k:?} is not a valid regex: {e}")))?;
        if re.is_match(path) {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// A JSON value with every object's keys sorted (Python's `sort_keys=True`).
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<(String, serde_json::Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../../tests/fixtures/llama-gqa-lora/adapter_config.json");

    #[test]
    fn fixture_config_round_trips_byte_for_byte() {
        let c = LoraConfig::from_json(FIXTURE, Path::new("a")).unwrap();
        assert_eq!(c.r, 4);
        assert_eq!(c.lora_alpha, 8.0);
        assert!(matches!(&c.target_modules, TargetModules::List(v) if v.len() == 7));
        assert!(c.extra.contains_key("lora_dropout") && c.extra.contains_key("megatron_core"));
        assert_eq!(c.to_json().unwrap(), FIXTURE);
    }

    #[test]
    fn target_modules_forms_and_patterns() {
        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        v["target_modules"] = "all-linear".into();
        v["rank_pattern"] = serde_json::json!({"q_proj": 8, "model.layers.1.mlp.up_proj": 2});
        v["alpha_pattern"] = serde_json::json!({"q_proj": 4.5});
        let c: LoraConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(c.target_modules, TargetModules::AllLinear);
        assert_eq!(c.rank_and_alpha("model.layers.0.self_attn.q_proj").unwrap(), (8, 4.5));
        assert_eq!(c.rank_and_alpha("model.layers.1.mlp.up_proj").unwrap(), (2, 8.0));
        assert_eq!(c.rank_and_alpha("model.layers.0.mlp.up_proj").unwrap(), (4, 8.0));
        assert!(c.to_json().unwrap().contains("\"target_modules\": \"all-linear\""));
        v["target_modules"] = r".*\.(q|v)_proj".into();
        let c: LoraConfig = serde_json::from_value(v).unwrap();
        assert!(c.target_modules.matches("model.layers.0.self_attn.q_proj").unwrap());
        assert!(!c.target_modules.matches("model.layers.0.self_attn.o_proj").unwrap());
        assert!(suffix_match("q_proj", "a.q_proj") && !suffix_match("q_proj", "a.qq_proj"));
    }
}
