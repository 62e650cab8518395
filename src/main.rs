//! The `neuron-spec` command line, with the example Llama model behind `forward`.

use neuron_spec::checkpoint::{ShardedCheckpoint, METADATA_PATH};
mod cli;
mod progress_bar;
mod train_cmd;

use cli::{import_adapters, main_with, AdapterArg, ForwardRunner};
use neuron_spec::{Result, Spec};
use neuron_spec_examples::{
    model_metadata, run_sharded_forward_with_adapters, run_tp_forward_with_adapters, ModelConfig,
};
use std::path::Path;

/// Runs the example Llama-family model: an HF directory at `tp`, or a sharded checkpoint at its own tp (with
/// its adapters).
struct Llama;

impl ForwardRunner for Llama {
    fn forward(&self, dir: &Path, tp: usize, fuse_qkv: bool, input_ids: &[Vec<i64>]) -> Result<(Vec<f32>, Vec<usize>)> {
        self.forward_with_adapters(dir, tp, fuse_qkv, &[], input_ids)
    }

    fn forward_with_adapters(
        &self,
        dir: &Path,
        tp: usize,
        fuse_qkv: bool,
        adapters: &[AdapterArg],
        input_ids: &[Vec<i64>],
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let cfg = ModelConfig::read(&dir.join("config.json"))?;
        let out = if dir.join(METADATA_PATH).exists() {
            let ck = ShardedCheckpoint::open(dir)?;
            let fused = ck.metadata.specs().any(|(_, s)| matches!(s, Spec::GqaQkv(g) if g.fuse_qkv));
            let imported = import_adapters(&model_metadata(&cfg, ck.tp, fused)?, adapters)?;
            run_sharded_forward_with_adapters(dir, &imported, input_ids)?
        } else {
            let imported = import_adapters(&model_metadata(&cfg, tp, fuse_qkv)?, adapters)?;
            let ck = neuron_spec::io::HfCheckpoint::open(dir)?;
            run_tp_forward_with_adapters(&ck, &cfg, tp, fuse_qkv, &imported, input_ids)?
        };
        Ok((out.logits, out.logits_shape.to_vec()))
    }
}

fn main() {
    std::process::exit(main_with(Some(&Llama)));
}
