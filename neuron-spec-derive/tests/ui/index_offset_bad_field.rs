#![allow(dead_code)]
struct Linear;

// The offset names a sibling field of primitive integer type.
#[derive(neuron_spec::CustomModule)]
struct Stage {
    #[hf(rename = "model.layers", index_offset = first)]
    layers: Vec<Linear>,
    #[hf(index_offset = name)]
    heads: Vec<Linear>,
    #[hf(index_offset = norm)]
    blocks: Vec<Linear>,
    #[hf(index_offset = blocks)]
    experts: Vec<Linear>,
    norm: Linear,
    name: String,
    first_layer: usize,
}

fn main() {}
