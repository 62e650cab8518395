#![allow(dead_code)]
struct Layer;

#[derive(neuron_spec::CustomModule)]
struct Attention {
    #[fused_linears(q_proj, k_proj, v_proj)]
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    qkv_proj: Layer,
    o_proj: Layer,
}

fn main() {}
