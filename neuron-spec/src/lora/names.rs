//! LoRA parameter names: in the model a LoRA factor is `<module>.lora_A.<adapter>.weight`; on disk (one adapter
//! per file, as peft and the reference save them) the adapter name is removed: `<module>.lora_A.weight`.
//!
//! The reference matches names with `\w+`, so an adapter named `my-adapter` is mangled; here a name is split on
//! dots and the adapter is the component after `lora_A`/`lora_B` (or `lora_embedding_A/B`), whatever characters it
//! has, as long as the parameter name follows it.

use crate::error::{Error, Result};

/// The prefix peft puts before every module path in `adapter_model.safetensors`.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The component names that hold LoRA factors.
const LORA_COMPONENTS: [&str; 4] = ["lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"];

/// Index of the `lora_*` component and of the adapter component after it, when the name has an adapter.
fn adapter_position(parts: &[&str]) -> Option<usize> {
    let i = parts.iter().position(|p| LORA_COMPONENTS.contains(p))?;
    // `x.lora_A.weight` has no adapter: the adapter needs a parameter name after it.
    (parts.len() >= i + 3).then_some(i + 1)
}

/// The adapter name in a LoRA parameter name (`...lora_A.<adapter>.weight`), `None` for other names and for
/// names without one (`...lora_A.weight`). Reference: `get_adapter_name`.
pub fn get_adapter_name(name: &str) -> Option<&str> {
    let parts: Vec<&str> = name.split('.').collect();
    let i = adapter_position(&parts)?;
    // Byte offset of component `i`.
    let start: usize = parts[..i].iter().map(|p| p.len() + 1).sum();
    name.get(start..start + parts[i].len())
}

/// The name without its adapter component (`...lora_A.<adapter>.weight` → `...lora_A.weight`); other names are
/// returned unchanged. Reference: `remove_adapter_name`.
pub fn remove_adapter_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match adapter_position(&parts) {
        Some(i) => parts.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect::<Vec<_>>().join("."),
        None => name.to_string(),
    }
}

/// `...lora_A.weight` → `...lora_A.<adapter>.weight`; other names are returned unchanged.
pub fn insert_adapter_name(name: &str, adapter: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.iter().position(|p| LORA_COMPONENTS.contains(p)) {
        Some(i) if get_adapter_name(name).is_none() => {
            let mut v: Vec<&str> = parts[..=i].to_vec();
            v.push(adapter);
            v.extend(&parts[i + 1..]);
            v.join(".")
        }
        _ => name.to_string(),
    }
}

/// Whether a name belongs to the base layer peft wraps (`...q_proj.base_layer.weight`). Reference:
/// `is_base_layer` (which tests for the substring; this tests for the path component).
pub fn is_base_layer(name: &str) -> bool {
    name.split('.').any(|p| p == "base_layer")
}

/// The name with peft's `base_layer.` component removed: the base model's own parameter name.
pub fn strip_base_layer(name: &str) -> String {
    name.split('.').filter(|p| *p != "base_layer").collect::<Vec<_>>().join(".")
}

/// Whether `name` is a LoRA factor (with or without an adapter name).
pub fn is_lora_parameter(name: &str) -> bool {
    name.split('.').any(|p| LORA_COMPONENTS.contains(&p))
}

/// Checks an adapter name: non-empty, and letters, digits, `-` and `_` only (it becomes a path component and a
/// directory name, so dots and slashes are refused).
pub fn check_adapter_name(name: &str) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(Error::lora(
            name,
            "an adapter name must be non-empty and use only letters, digits, '-' and '_' (it becomes a path component)",
        ));
    }
    Ok(())
}

/// `base_model.model.<module>.lora_A.weight` → `(<module>, "lora_A", "weight")`, with or without the peft prefix
/// and an adapter name. `None` for names that are not LoRA factors.
pub fn split_peft_key(key: &str) -> Option<(String, String, String)> {
    let key = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
    let key = remove_adapter_name(key);
    let parts: Vec<&str> = key.split('.').collect();
    let i = parts.iter().position(|p| LORA_COMPONENTS.contains(p))?;
    if i == 0 || i + 2 != parts.len() {
        return None;
    }
    Some((parts[..i].join("."), parts[i].to_string(), parts[i + 1].to_string()))
}

/// The peft key of a factor: `base_model.model.<module>.<factor>.weight`.
pub fn peft_key(module: &str, factor: &str) -> String {
    format!("{PEFT_PREFIX}{module}.{factor}.weight")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyphens_digits_and_several_adapters() {
        for (name, adapter) in [
            ("model.layers.0.self_attn.qkv_proj.lora_A.default.weight", "default"),
            ("model.layers.0.self_attn.qkv_proj.lora_B.my-adapter-2.weight_qkv", "my-adapter-2"),
            ("m.gate_up_proj.lora_B.v1_0.weight", "v1_0"),
            ("m.lora_A.weight.weight", "weight"),
        ] {
            assert_eq!(get_adapter_name(name), Some(adapter), "{name}");
            let bare = remove_adapter_name(name);
            assert!(!bare.contains(&format!(".{adapter}.")) || adapter == "weight", "{bare}");
            assert_eq!(insert_adapter_name(&bare, adapter), name);
        }
        assert_eq!(remove_adapter_name("m.qkv_proj.lora_B.my-adapter.weight_q"), "m.qkv_proj.lora_B.weight_q");
        // No adapter: unchanged (the reference would strip `weight` here).
        assert_eq!(get_adapter_name("m.q_proj.lora_A.weight"), None);
        assert_eq!(remove_adapter_name("m.q_proj.lora_A.weight"), "m.q_proj.lora_A.weight");
        assert_eq!(get_adapter_name("model.layers.0.mlp.down_proj.weight"), None);
    }

    #[test]
    fn base_layer_and_peft_keys() {
        assert!(is_base_layer("model.layers.0.self_attn.q_proj.base_layer.weight"));
        assert!(!is_base_layer("model.base_layers_norm.weight"));
        assert_eq!(strip_base_layer("a.q_proj.base_layer.weight"), "a.q_proj.weight");
        assert_eq!(
            split_peft_key("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"),
            Some(("model.layers.0.mlp.up_proj".into(), "lora_B".into(), "weight".into()))
        );
        assert_eq!(split_peft_key("base_model.model.lm_head.weight"), None);
        assert!(check_adapter_name("fr-2_b").is_ok());
        assert!(check_adapter_name("a.b").is_err() && check_adapter_name("").is_err());
    }
}
