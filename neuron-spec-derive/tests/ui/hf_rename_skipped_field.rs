#![allow(dead_code)]
struct Cache;

#[derive(neuron_spec::CustomModule)]
struct Decoder {
    #[hf(skip, rename = "kv_cache")]
    cache: Cache,
}

fn main() {}
