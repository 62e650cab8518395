#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Decoder {
    #[hf(rename = "self_attn.qkv_proj")]
    qkv_proj: Linear,
}

fn main() {}
