#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Mlp {
    #[fused_linears(gate_proj, up_proj, gate_proj)]
    gate_up_proj: Linear,
    down_proj: Linear,
}

fn main() {}
