#![allow(dead_code)]
struct Qkv;
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Attention {
    #[gqa_qkv(packed = qkv_proj, q = q_proj, o = o_proj)]
    qkv_proj: Qkv,
    o_proj: Linear,
}

fn main() {}
