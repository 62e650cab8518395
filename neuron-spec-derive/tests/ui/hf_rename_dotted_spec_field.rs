#![allow(dead_code)]
struct Linear;

// Spec names are relative to the struct holding the field, so a spec field's HF name is one segment.
#[derive(neuron_spec::CustomModule)]
struct Mlp {
    #[hf(rename = "mlp.gate_up_proj")]
    #[fused_linears(gate_proj, up_proj)]
    gate_up_proj: Linear,
    down_proj: Linear,
}

fn main() {}
