#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
enum Attention {
    Gqa(Linear),
    None,
}

fn main() {}
