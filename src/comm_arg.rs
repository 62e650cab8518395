//! `--comm threads|mpi`: where a command runs its ranks, as the runtime's [`Transport`].

use crate::error::{CliError, Result};
#[cfg(feature = "mpi")]
use crate::exit::EXIT_ERROR;
use neuron_spec_models::runtime::{RankRead, Transport};

/// Where `forward`, `train` and `generate` run their ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Comm {
    /// One thread per rank in this process.
    Threads,
    /// One MPI process per rank (a build with the `mpi` feature, launched by mpirun or srun).
    Mpi,
}

/// What a command does on its transport: `work(transport, prints)`, `prints` true where the command's output
/// is printed (threads, or MPI rank 0). Returns the exit code.
pub type Work<'a> = dyn Fn(&Transport<'_>, bool) -> Result<i32> + 'a;

/// Runs `work` on the transport `comm` asks for, at `tp` (`None`: the source's own, or 1). Under MPI the tp
/// is the number of processes; an error that every rank agreed on (a writer's) is printed once, by rank 0,
/// and rank 0's exit code is every rank's, so mpirun reports it whichever rank ends first.
pub fn on_ranks(comm: Comm, tp: Option<usize>, command: &str, work: &Work<'_>) -> Result<i32> {
    match comm {
        Comm::Threads => work(&Transport::Threads(tp), true),
        Comm::Mpi => on_mpi(tp, command, work),
    }
}

#[cfg(not(feature = "mpi"))]
fn on_mpi(_: Option<usize>, command: &str, _: &Work<'_>) -> Result<i32> {
    Err(CliError::Command(format!("{command} --comm mpi: this build has no MPI support (build with `--features mpi`)")))
}

#[cfg(feature = "mpi")]
fn on_mpi(tp: Option<usize>, _command: &str, work: &Work<'_>) -> Result<i32> {
    use neuron_spec::comm::{Communicator, MpiCommunicator};
    let comm = MpiCommunicator::init()?;
    let ctx = comm.context();
    if let Some(tp) = tp.filter(|t| *t != 1 && *t != ctx.size) {
        comm.abort(&CliError::Command(format!(
            "--tp {tp} with --comm mpi, but {} processes were started (the tp is the number of processes)",
            ctx.size
        )));
    }
    let code = match work(&Transport::Mpi(&comm), ctx.rank == 0) {
        Ok(c) => c,
        Err(e) => {
            if ctx.rank == 0 {
                errln!("error: {e}");
            }
            EXIT_ERROR
        }
    };
    let mut bytes = if ctx.rank == 0 { vec![code as u8] } else { Vec::new() };
    if let Err(e) = comm.broadcast_bytes(&mut bytes, 0) {
        comm.abort(&e);
    }
    Ok(bytes.first().map_or(code, |c| i32::from(*c)))
}

/// `rank R/N: read B bytes of SOURCE (pid P)`: what this process's rank read (forward and train print it
/// under MPI).
pub fn print_bytes_read(r: &RankRead, size: usize) -> Result<()> {
    crate::out::line(format_args!(
        "rank {}/{size}: read {} bytes of {} (pid {})",
        r.rank,
        r.bytes,
        r.from.display(),
        std::process::id()
    ))
}
