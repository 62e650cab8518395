#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Stage {
    #[hf(index_offset = "first_layer")]
    layers: Vec<Linear>,
    #[hf(index_offset)]
    heads: Vec<Linear>,
    #[hf(index_offset = self.first_layer)]
    blocks: Vec<Linear>,
    #[hf(index_offset = first_layer, index_offset = last_layer)]
    experts: Vec<Linear>,
    first_layer: usize,
    last_layer: u32,
}

fn main() {}
