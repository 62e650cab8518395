//! The `neuron-spec` command line, with the example model families behind `forward` (the config's `model_type`
//! picks the family in the examples' family table).

use neuron_spec::checkpoint::{ShardedCheckpoint, METADATA_PATH};
#[macro_use]
mod out;
mod adapter_args;
mod cli;
mod comm_arg;
mod exit;
mod generate_cmd;
mod inspect_cmd;
mod layouts;
#[cfg(feature = "mpi")]
mod mpi_generate;
#[cfg(feature = "mpi")]
mod mpi_train;
mod plan_cmd;
mod plan_svg;
mod progress_bar;
mod train_cmd;

use adapter_args::{import_adapters, AdapterArg};
use cli::{main_with, ForwardRunner, NamedOutput};
use neuron_spec::{Result, Spec};
use neuron_spec_models::{
    model_metadata, run_sharded_forward_with_adapters, run_tp_forward_with_adapters, ModelConfig,
};
use std::path::Path;

/// Runs the example model of the config's family: an HF directory at `tp`, or a sharded checkpoint at its own tp (with
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
        let mut outs = self.forward_outputs(dir, tp, fuse_qkv, adapters, input_ids)?.into_iter();
        let logits = outs.next().ok_or_else(|| neuron_spec::Error::Invalid("no logits".into()))?;
        Ok((logits.values, logits.shape))
    }

    fn forward_outputs(
        &self,
        dir: &Path,
        tp: usize,
        fuse_qkv: bool,
        adapters: &[AdapterArg],
        input_ids: &[Vec<i64>],
    ) -> Result<Vec<NamedOutput>> {
        let cfg = ModelConfig::read(&dir.join("config.json"))?;
        let out = if dir.join(METADATA_PATH).exists() {
            let ck = ShardedCheckpoint::open(dir)?;
            let fused = ck.metadata.specs().any(|(_, s)| matches!(s, Spec::GqaQkv(g) if g.fuse_qkv));
            let imported = import_adapters(&model_metadata(&cfg, ck.tp, fused)?, adapters)?;
            run_sharded_forward_with_adapters(dir, &imported, input_ids)?
        } else {
            let imported = import_adapters(&model_metadata(&cfg, tp, fuse_qkv)?, adapters)?;
            let ck = neuron_spec::format::HfCheckpoint::open(dir)?;
            run_tp_forward_with_adapters(&ck, &cfg, tp, fuse_qkv, &imported, input_ids)?
        };
        let hidden_shape = out.hidden_shape.to_vec();
        let mut named = vec![
            NamedOutput { name: "logits".into(), values: out.logits, shape: out.logits_shape.to_vec() },
            NamedOutput { name: "hidden_0".into(), values: out.hidden_0, shape: hidden_shape.clone() },
        ];
        if let Some(h) = out.hidden_1 {
            named.push(NamedOutput { name: "hidden_1".into(), values: h, shape: hidden_shape });
        }
        Ok(named)
    }

    #[cfg(feature = "mpi")]
    fn forward_mpi(
        &self,
        dir: &Path,
        tp: usize,
        fuse_qkv: bool,
        adapters: &[AdapterArg],
        input_ids: &[Vec<i64>],
        finish: &mut cli::FinishLogits<'_>,
    ) -> Result<i32> {
        mpi_forward::run(dir, tp, fuse_qkv, adapters, input_ids, finish)
    }
}

/// `forward --comm mpi`: this process is one rank; any error ends the whole job with that rank's message.
#[cfg(feature = "mpi")]
mod mpi_forward {
    use crate::adapter_args::{import_adapters, AdapterArg};
    use crate::cli::FinishLogits;
    use neuron_spec::checkpoint::METADATA_PATH;
    use neuron_spec::comm::{Communicator, MpiCommunicator};
    use neuron_spec::lora::ImportedAdapter;
    use neuron_spec::{Error, Result, Spec};
    use neuron_spec_models::mpi_run::mpi_forward;
    use neuron_spec_models::{model_metadata, ModelConfig};
    use std::path::Path;

    pub fn run(
        dir: &Path,
        tp: usize,
        fuse_qkv: bool,
        adapters: &[AdapterArg],
        input_ids: &[Vec<i64>],
        finish: &mut FinishLogits<'_>,
    ) -> Result<i32> {
        let comm = MpiCommunicator::init()?;
        let ctx = comm.context();
        let code = match rank(&comm, dir, tp, fuse_qkv, adapters, input_ids, finish) {
            Ok(code) => code,
            Err(e) => comm.abort(&e),
        };
        // Rank 0's exit code (a golden mismatch) is every rank's, so mpirun reports it whichever rank ends first.
        let mut bytes = if ctx.rank == 0 { vec![code as u8] } else { Vec::new() };
        if let Err(e) = comm.broadcast_bytes(&mut bytes, 0) {
            comm.abort(&e);
        }
        Ok(bytes.first().map_or(code, |c| i32::from(*c)))
    }

    /// `adapters` imported for the layout of the model in `dir` at `tp`.
    fn imported_for_model(
        dir: &Path,
        fuse_qkv: bool,
        tp: usize,
        adapters: &[AdapterArg],
    ) -> Result<Vec<ImportedAdapter>> {
        let cfg = ModelConfig::read(&dir.join("config.json"))?;
        let fused = if dir.join(METADATA_PATH).exists() {
            neuron_spec::CheckpointMetadata::read(&dir.join(METADATA_PATH))?
                .specs()
                .any(|(_, s)| matches!(s, Spec::GqaQkv(g) if g.fuse_qkv))
        } else {
            fuse_qkv
        };
        import_adapters(&model_metadata(&cfg, tp, fused)?, adapters)
    }

    fn rank(
        comm: &MpiCommunicator,
        dir: &Path,
        tp: usize,
        fuse_qkv: bool,
        adapters: &[AdapterArg],
        input_ids: &[Vec<i64>],
        finish: &mut FinishLogits<'_>,
    ) -> Result<i32> {
        let ctx = comm.context();
        if tp != 1 && tp != ctx.size {
            return Err(Error::Invalid(format!(
                "--tp {tp} with --comm mpi, but {} processes were started (the tp is the number of processes)",
                ctx.size
            )));
        }
        let imported =
            if adapters.is_empty() { Vec::new() } else { imported_for_model(dir, fuse_qkv, ctx.size, adapters)? };
        let run = mpi_forward(comm, dir, fuse_qkv, &imported, input_ids)?;

        crate::mpi_train::print_bytes_read(ctx, run.bytes_read, &run.source)?;
        // Every rank has finished its forward pass (the logits check above was a collective): rank 0 writes.
        if ctx.rank == 0 {
            finish(&run.output.logits, &run.output.logits_shape)
        } else {
            Ok(0)
        }
    }
}

fn main() {
    let code = main_with(Some(&Llama));
    // For tests/it/memory_bound.rs: this process's own peak RSS (wait4's rusage would count the parent's too).
    if std::env::var_os("NEURON_SPEC_REPORT_VMHWM").is_some() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(v) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
            eprintln!("neuron-spec: VmHWM {}", v.trim());
        }
    }
    std::process::exit(code);
}
