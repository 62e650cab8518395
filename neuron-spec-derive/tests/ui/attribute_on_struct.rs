#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
#[hf(rename = "model")]
struct Model {
    norm: Linear,
}

fn main() {}
