#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Decoder {
    #[hf(rename = "")]
    attention: Linear,
}

fn main() {}
