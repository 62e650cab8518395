#![allow(dead_code)]
struct Linear;

// A dotted rename is a path; none of its segments may be empty.
#[derive(neuron_spec::CustomModule)]
struct Stage {
    #[hf(rename = "model..norm")]
    norm: Linear,
    #[hf(rename = ".lm_head")]
    lm_head: Linear,
    #[hf(rename = "model.embed_tokens.")]
    embed_tokens: Linear,
}

fn main() {}
