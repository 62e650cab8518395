#![allow(dead_code)]
struct Qkv;
struct Linear;

// `o` is matched against HF names, so a renamed sibling is named by its rename.
#[derive(neuron_spec::CustomModule)]
struct Attention {
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = out)]
    qkv_proj: Qkv,
    #[hf(rename = "o_proj")]
    out: Linear,
}

fn main() {}
