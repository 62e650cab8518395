//! `generate --comm mpi`: this process is one rank; rank 0 streams and prints. Any error ends the whole job
//! with that rank's message.

use crate::exit::usage;
use crate::generate_cmd::{finish, inputs, misuse, print_piece, GenerateArgs};
use neuron_spec::comm::{Communicator, MpiCommunicator};
use neuron_spec::{Error, Result};
use neuron_spec_models::generate::with_folder_eos;
use neuron_spec_models::mpi_run::mpi_generate;
use neuron_spec_models::{GenerateOptions, Generated, TextModel};

/// Runs this process's rank; returns rank 0's exit code (the others' 0).
pub fn run(a: &GenerateArgs) -> Result<i32> {
    if let Some(m) = misuse(a) {
        return usage(m);
    }
    let (prompt, opts) = inputs(a)?;
    let comm = MpiCommunicator::init()?;
    match rank(&comm, a, &prompt, &opts) {
        Ok(code) => Ok(code),
        Err(e) => comm.abort(&e),
    }
}

fn rank(comm: &MpiCommunicator, a: &GenerateArgs, prompt: &str, opts: &GenerateOptions) -> Result<i32> {
    let ctx = comm.context();
    if let Some(tp) = a.tp.map(|t| t as usize).filter(|t| *t != 1 && *t != ctx.size) {
        return Err(Error::Invalid(format!(
            "--tp {tp} with --comm mpi, but {} processes were started (the tp is the number of processes)",
            ctx.size
        )));
    }
    let m = TextModel::open(&a.dir)?;
    let prompt_ids = m.prompt_ids(prompt, a.chat)?;
    let opts = with_folder_eos(opts, &m);
    let mut stream = m.tokenizer.stream();
    let json = a.json;
    let mut print = |piece: &str| if json { Ok(()) } else { print_piece(piece) };
    let ids = mpi_generate(comm, &m, &prompt_ids, &opts, &mut |id| stream.step_to(id, &mut print))?;
    if ctx.rank != 0 {
        return Ok(0);
    }
    let text = m.tokenizer.decode(&ids)?;
    finish(a.json, &Generated { prompt_ids, ids, text })
}
