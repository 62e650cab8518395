#![allow(dead_code)]
struct Linear;

// Every misuse of an enum is reported by one build: bad variant shapes and attributes that mean nothing.
#[derive(neuron_spec::CustomModule)]
#[hf(rename = "mlp")]
enum Mlp {
    Dense(Linear),
    Empty,
    Pair(Linear, Linear),
    Named { up_proj: Linear },
    #[fused_linears(gate_proj, up_proj)]
    Fused(Linear),
    Renamed(#[hf(rename = "inner")] Linear),
}

fn main() {}
