//! `train --comm mpi`: this process trains one TP rank and writes its own rank files; rank 0 writes the
//! metadata and commits the output once every rank has reported success.

use crate::exit::{EXIT_ERROR, EXIT_OK};
use crate::train_cmd::{batches, training_rows, TrainArgs};
use neuron_spec::checkpoint::METADATA_PATH;
use neuron_spec::comm::{Communicator, MpiCommunicator};
use neuron_spec::train::{has_optimizer_state, write_trained_checkpoint_mpi, TrainOptions};
use neuron_spec::{CheckpointMetadata, Error, Result};
use neuron_spec_models::mpi_run::{mpi_train, RankTrainRun};
use neuron_spec_models::{model_metadata, ModelConfig};
use std::time::Instant;

/// Runs this process's rank. A failure while training ends the job (`MPI_Abort`) with that rank's error;
/// a failure while writing is agreed on by every rank, rank 0 prints it, and nothing is left at the output.
pub fn run(a: &TrainArgs, options: TrainOptions, quiet: bool) -> Result<i32> {
    let comm = MpiCommunicator::init()?;
    let (run, meta) = match train(&comm, a, options, quiet) {
        Ok(r) => r,
        Err(e) => comm.abort(&e),
    };
    let rank0 = comm.context().rank == 0;
    let t = &run.trained;
    let written =
        write_trained_checkpoint_mpi(&comm, &a.out, &a.model, &meta, &t.tensors, &t.state, &options.adamw, a.force);
    match written {
        Ok(()) => {
            if rank0 && !quiet {
                errln!("wrote {}", a.out.display());
            }
            Ok(EXIT_OK)
        }
        // Every rank holds the same error (the failing rank's): printed once.
        Err(e) => {
            if rank0 {
                errln!("error: {e}");
            }
            Ok(EXIT_ERROR)
        }
    }
}

fn train(
    comm: &MpiCommunicator,
    a: &TrainArgs,
    options: TrainOptions,
    quiet: bool,
) -> Result<(RankTrainRun, CheckpointMetadata)> {
    let ctx = comm.context();
    if let Some(tp) = a.tp.filter(|t| *t != ctx.size) {
        return Err(Error::Invalid(format!(
            "--tp {tp} with --comm mpi, but {} processes were started (the tp is the number of processes)",
            ctx.size
        )));
    }
    // Rank 0 commits the output: its view of the destination is the one that counts.
    if ctx.rank == 0 && a.out.exists() && !a.force {
        return Err(Error::Invalid(format!("{} exists (use --force to replace it)", a.out.display())));
    }
    let cfg = ModelConfig::read(&a.model.join("config.json"))?;
    let data = batches(&a.data, training_rows(a)?, a.batch_size, cfg.llama.vocab_size)?;
    if a.model.join(METADATA_PATH).exists() && !has_optimizer_state(&a.model) {
        return Err(Error::Invalid(format!(
            "{}: no optimizer state (optimizer/state.json): cannot resume training from it",
            a.model.display()
        )));
    }
    let started = Instant::now();
    let on_step = |k: usize, loss: f32| println!("step {k} loss {loss:.6}");
    let run = mpi_train(comm, &a.model, a.fuse_qkv, options, &data, a.steps, &on_step)?;
    print_bytes_read(ctx, run.bytes_read, &run.source)?;
    if ctx.rank == 0 && !quiet {
        let secs = started.elapsed().as_secs_f64();
        let tokens: usize = (0..a.steps).map(|i| data[i % data.len()].len() * data[i % data.len()][0].len()).sum();
        errln!(
            "trained {} steps at tp {} ({} processes): {secs:.1} s, {:.0} tokens/s",
            a.steps,
            ctx.size,
            ctx.size,
            tokens as f64 / secs.max(1e-9)
        );
    }
    let meta = model_metadata(&cfg, ctx.size, run.fuse_qkv)?;
    Ok((run, meta))
}

/// `rank R/N: read B bytes of SOURCE (pid P)`: what this process read (forward and train print it).
pub fn print_bytes_read(
    ctx: neuron_spec::spec::contract::TpContext,
    bytes: usize,
    source: &std::path::Path,
) -> Result<()> {
    crate::out::line(format_args!(
        "rank {}/{}: read {bytes} bytes of {} (pid {})",
        ctx.rank,
        ctx.size,
        source.display(),
        std::process::id()
    ))
}
