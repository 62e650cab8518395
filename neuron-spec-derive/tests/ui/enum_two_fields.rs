#![allow(dead_code)]
struct Linear;

#[derive(neuron_spec::CustomModule)]
enum FeedForward {
    Dense(Linear),
    Split(Linear, Linear),
    Nothing(),
}

fn main() {}
