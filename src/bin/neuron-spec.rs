//! The `neuron-spec` command line, with the example Llama model behind `forward`.

use neuron_spec::checkpoint::METADATA_PATH;
use neuron_spec::cli::{main_with, ForwardRunner};
use neuron_spec::Result;
use std::path::Path;

/// Runs the example Llama-family model: an HF directory at `tp`, or a sharded checkpoint at its own tp.
struct Llama;

impl ForwardRunner for Llama {
    fn forward(&self, dir: &Path, tp: usize, fuse_qkv: bool, input_ids: &[Vec<i64>]) -> Result<(Vec<f32>, Vec<usize>)> {
        let out = if dir.join(METADATA_PATH).exists() {
            neuron_spec_examples::run_sharded_forward(dir, input_ids)?
        } else {
            neuron_spec_examples::run_tp_forward_dir(dir, tp, fuse_qkv, input_ids)?
        };
        Ok((out.logits, out.logits_shape.to_vec()))
    }
}

fn main() {
    std::process::exit(main_with(Some(&Llama)));
}
