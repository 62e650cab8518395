#![allow(dead_code)]
struct Qkv;

#[derive(neuron_spec::CustomModule)]
struct Attention {
    #[gqa_qkv(packed = qkv_proj)]
    qkv_proj: Qkv,
}

fn main() {}
