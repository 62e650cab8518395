#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Stage {
    #[hf(rename = "model.norm", index_offset = first_layer)]
    norm: Linear,
    #[hf(index_offset = first_layer)]
    heads: Option<Vec<Linear>>,
    #[hf(skip, index_offset = first_layer)]
    cache: Vec<Linear>,
    first_layer: usize,
}

fn main() {}
