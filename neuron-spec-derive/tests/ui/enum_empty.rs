#![allow(dead_code)]

#[derive(neuron_spec::CustomModule)]
enum Mlp {}

fn main() {}
