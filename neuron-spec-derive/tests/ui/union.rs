#![allow(dead_code)]
#[derive(neuron_spec::CustomModule)]
union Bits {
    float: f32,
    int: u32,
}

fn main() {}
