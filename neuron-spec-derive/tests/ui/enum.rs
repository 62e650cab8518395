#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
enum Mlp {
    Dense { up_proj: Linear },
    Sparse { experts: Vec<Linear> },
}

fn main() {}
