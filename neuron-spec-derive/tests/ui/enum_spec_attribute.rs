#![allow(dead_code)]
struct Linear;
struct Qkv;

// A variant adds no path segment and no spec of its own: this derive's attributes mean nothing on an enum,
// a variant or a variant's field.
#[derive(neuron_spec::CustomModule)]
#[fused_linears(gate_proj, up_proj)]
enum Attention {
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    Gqa(Qkv),
    #[hf(rename = "plain")]
    Plain(Linear),
    Fused(#[fused_linears(gate_proj, up_proj)] Linear),
    Skipped(#[hf(skip)] Linear),
}

fn main() {}
