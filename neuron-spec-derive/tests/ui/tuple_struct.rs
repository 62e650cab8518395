#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
struct Mlp(Linear, Linear);

fn main() {}
