#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Mlp {
    #[fused_linears(packed = gate_up_proj, up_proj)]
    gate_up_proj: Linear,
}

fn main() {}
