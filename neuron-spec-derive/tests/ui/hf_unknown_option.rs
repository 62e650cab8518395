#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Decoder {
    #[hf(name = "self_attn")]
    attention: Linear,
    #[hf(skip, flatten)]
    mlp: Linear,
}

fn main() {}
