#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
enum FeedForward {
    Dense { up_proj: Linear },
    Sparse { experts: Vec<Linear> },
}

fn main() {}
