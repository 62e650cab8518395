#![allow(dead_code)]
struct Linear;

// Options that exist but are written wrong, and repeated options.
#[derive(neuron_spec::CustomModule)]
struct Decoder {
    #[hf(rename = self_attn)]
    attention: Linear,
    #[hf(skip = true)]
    mlp: Linear,
    #[hf(rename = "norm")]
    #[hf(rename = "input_layernorm")]
    input_norm: Linear,
    #[hf]
    post_norm: Linear,
}

fn main() {}
