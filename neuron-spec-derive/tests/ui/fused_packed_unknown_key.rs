#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Mlp {
    #[fused_linears(pack = gate_up_proj)]
    gate_up_proj: Linear,
}

fn main() {}
