#![allow(dead_code)]
struct Linear;
struct Qkv;

// A spec describes one layer: not a Vec or Option of layers, not a primitive.
#[derive(neuron_spec::CustomModule)]
struct Block {
    #[fused_linears(gate_proj, up_proj)]
    gate_up_projs: Vec<Linear>,
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    qkv_proj: Option<Qkv>,
    #[fused_linears(w1, w3)]
    hidden_size: usize,
    #[fused_linears(w4, w5)]
    pair: (Linear, Linear),
    o_proj: Linear,
}

fn main() {}
