#![allow(dead_code)]
include!("../support/mocks.rs");

// The derive cannot see trait impls; the compiler reports a layer without the spec trait at its type.
#[derive(neuron_spec::CustomModule)]
struct Mlp {
    #[fused_linears(gate_proj, up_proj)]
    gate_up_proj: Qkv,
    down_proj: Linear,
}

fn main() {}
