#![allow(dead_code)]
struct Linear;
struct Qkv;

// Misuses on different fields are all reported by one build.
#[derive(neuron_spec::CustomModule)]
struct Decoder {
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, x = o_proj)]
    qkv_proj: Qkv,
    #[fused_linears(gate_proj, gate_proj)]
    gate_up_proj: Linear,
    #[hf(rename = "a..b")]
    norm: Linear,
    #[hf(unknown)]
    other: Linear,
    #[hf(rename = "other")]
    another: Linear,
}

fn main() {}
