#![allow(dead_code)]
struct Qkv;
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Attention {
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    qkv_proj: Qkv,
    #[hf(skip)]
    o_proj: Linear,
}

fn main() {}
