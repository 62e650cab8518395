//! Two reference API names read from a built model: optimum-neuron's `guess_peft_type` (which PEFT type the
//! module of a spec carries) and neuronx-distributed's `get_tensor_model_parallel_attributes` (a parameter's
//! TP attributes). The reference inspects torch module instances; here the layers report the same facts
//! through [`CustomModule`].

use crate::error::{Error, Result};
use crate::spec::contract::CustomModule;
use crate::spec::metadata::ParameterMetadata;
use crate::spec::Spec;
use indexmap::IndexMap;

/// The name a spec's fused layer has under its module (`gate_up_proj`, `qkv_proj`).
fn fused_layer_name(spec: &Spec) -> &str {
    match spec {
        Spec::FusedLinears(s) => &s.fused_linear_name,
        Spec::GqaQkv(s) => &s.gqa_qkv_projection_name,
    }
}

/// The PEFT type of the layer `spec` describes in `model` at `module_fully_qualified_name` (reference:
/// `ModelWeightTransformationSpec.guess_peft_type(model, module_fully_qualified_name)`): `Some("lora")` when
/// that layer carries LoRA adapters, `None` otherwise. Fails, naming the path, when the model has no such
/// layer.
pub fn guess_peft_type<M: CustomModule>(
    spec: &Spec,
    model: &M,
    module_fully_qualified_name: &str,
) -> Result<Option<String>> {
    let mut groups = Vec::new();
    model.collect_specs("", &mut groups)?;
    let name = fused_layer_name(spec);
    groups
        .iter()
        .filter(|g| g.module_fully_qualified_name == module_fully_qualified_name)
        .flat_map(|g| g.specs.iter())
        .find(|s| s.class_name() == spec.class_name() && fused_layer_name(s) == name)
        .map(|s| s.peft_type().map(str::to_string))
        .ok_or_else(|| {
            Error::Argument(format!(
                "guess_peft_type: the model has no {} layer at {module_fully_qualified_name}.{name}",
                spec.class_name()
            ))
        })
}

/// The TP attributes of parameter `name` (its HF rank-local name, e.g. `model.layers.0.mlp.down_proj.weight`)
/// as its layer holds them (neuronx-distributed's `get_tensor_model_parallel_attributes`):
/// `tensor_model_parallel`, and for a sharded parameter `partition_dim`, `partition_stride` and
/// `num_partitions`. Fails, naming the parameter and the nearest names, when the model has none by that name.
pub fn get_tensor_model_parallel_attributes<M: CustomModule>(model: &M, name: &str) -> Result<ParameterMetadata> {
    let mut all = IndexMap::new();
    model.collect_parameter_metadata("", &mut all)?;
    match all.get(name) {
        Some(p) => Ok(ParameterMetadata { shape: None, dtype: None, ..p.clone() }),
        None => {
            let known: Vec<&str> = all.keys().map(String::as_str).collect();
            Err(Error::key_mismatch(
                "get_tensor_model_parallel_attributes: no such parameter in the model",
                vec![name.to_string()],
                vec![],
                &known,
            ))
        }
    }
}
