#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Decoder {
    #[hf(rename = "mlp")]
    feed_forward: Linear,
    mlp: Linear,
}

fn main() {}
