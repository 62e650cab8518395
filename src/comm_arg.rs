//! `--comm threads|mpi`: where a command runs its ranks.

/// Where `forward` and `train` run their ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Comm {
    /// One thread per rank in this process.
    Threads,
    /// One MPI process per rank (a build with the `mpi` feature, launched by mpirun or srun).
    Mpi,
}
