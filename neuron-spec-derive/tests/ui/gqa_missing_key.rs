#![allow(dead_code)]
struct Qkv;
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Attention {
    #[gqa_qkv(q = q_proj, k = k_proj)]
    qkv_proj: Qkv,
    o_proj: Linear,
}

fn main() {}
