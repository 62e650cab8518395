//! The runtime: a run is a [`Source`] × a [`Transport`] × a [`Task`], executed by one [`run`].
//!
//! - **Source**: an HF directory (or HF-named tensors in memory), one of our sharded checkpoints at any tp and
//!   pp, or optimum-neuron's (`.pt`, plain or xser), with its adapters (`adapter_<name>/`) and any HF PEFT
//!   adapter added with [`Source::with_adapter`]. [`Source::plan`] lays it out for the run (tp, layout,
//!   adapters imported once); [`Plan::load`] builds a rank's model, checks the checkpoint's layout against
//!   it and loads the base tensors and every adapter's rank factors.
//! - **Transport**: the ranks as threads of this process, or as MPI processes (the communicator is a value
//!   passed in: `Transport::Mpi`, feature `mpi`).
//! - **Task**: [`Forward`] (logits and hidden states; every pipeline stage in turn), [`StageForward`] (one
//!   stage), [`Train`] (full or LoRA, exact or mean; new or resumed) and [`Generate`] (KV cache, greedy or
//!   sampled). A task says what one rank does with its communicator, threads and processes alike.
//!
//! Written once for every cell: the capability check ([`refusal`]), the check that every rank computed the
//! same bits (a fingerprint per rank, compared across ranks), and each task's writer (a trained checkpoint,
//! the forward outputs), which [`run`] calls with every rank's result (threads) or this process's (MPI).
//!
//! ```no_run
//! use neuron_spec_models::runtime::{run, Forward, Source, Transport};
//! # fn main() -> neuron_spec::Result<()> {
//! let source = Source::open(std::path::Path::new("tests/fixtures/llama-gqa"))?.fuse_qkv(true);
//! let out = run(&source, &Transport::threads(4), &Forward::new(vec![vec![1, 17, 42, 99]]))?;
//! println!("logits {:?}", out.logits_shape);
//! # Ok(())
//! # }
//! ```
//!
//! The runtime is a module of `neuron-spec-models`, not a crate of its own: every task runs the families'
//! decoder (`LlamaForCausalLM`, `LlamaStage`), and the families need nothing from the runtime, so a separate
//! crate would only re-export the models crate's types.

pub(crate) mod forward;
mod generate;
mod source;
mod train;
mod transport;

pub use forward::{
    write_forward_outputs, Activations, Forward, ForwardOutput, RankRead, StageData, StageForward, StageRun,
};
pub use generate::Generate;
pub use source::{Adapter, Loaded, Plan, Source};
pub use train::{Train, TrainOutput, TrainedRank};
pub use transport::{Transport, TransportKind};

use neuron_spec::comm::Communicator;
use neuron_spec::{Error, Result};
use std::ops::Range;

/// What a task is, for the capability check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Forward pass (whole model or one stage).
    Forward,
    /// Training.
    Train,
    /// Generation.
    Generate,
}

/// The ranks' results a task's [`Task::finish`] gets.
pub enum Ranks<'c, R> {
    /// Every rank's, in rank order (threads).
    All(Vec<R>),
    /// This process's (MPI), with its communicator.
    #[cfg(feature = "mpi")]
    Own(&'c neuron_spec::comm::MpiCommunicator, R),
    #[doc(hidden)]
    _Lifetime(std::marker::PhantomData<&'c ()>),
}

impl<R> Ranks<'_, R> {
    /// Rank 0's result where this process has it (threads, or MPI rank 0).
    pub fn rank0(&self) -> Option<&R> {
        match self {
            Ranks::All(v) => v.first(),
            #[cfg(feature = "mpi")]
            Ranks::Own(c, r) => (c.context().rank == 0).then_some(r),
            Ranks::_Lifetime(_) => None,
        }
    }

    /// A result this process has (rank 0's on threads; its own under MPI: every rank holds the same bits).
    pub fn any(&self) -> Option<&R> {
        match self {
            Ranks::All(v) => v.first(),
            #[cfg(feature = "mpi")]
            Ranks::Own(_, r) => Some(r),
            Ranks::_Lifetime(_) => None,
        }
    }
}

/// One kind of work on the ranks. [`run`] calls [`Task::prepare`] once, then [`Task::rank`] on every rank of
/// every stage of [`Task::stages`], compares the ranks' [`Task::fingerprint`]s, and ends with
/// [`Task::finish`].
pub trait Task: Sync {
    /// One rank's result.
    type Rank: Send + Sync;
    /// The run's result.
    type Output;
    /// What it is (the capability check).
    const KIND: TaskKind;
    /// Whether it runs stage by stage ([`Plan::load_stage`]) rather than on the whole model ([`Plan::load`]).
    const STAGED: bool = false;

    /// Checks the task's own inputs against the plan before any rank starts (and records what the ranks
    /// load, e.g. the adapter a LoRA run trains).
    fn prepare(&self, _plan: &mut Plan<'_>) -> Result<()> {
        Ok(())
    }

    /// The pipeline stages it runs, in order, of a source with `pp` stages (the whole model: `0..1`).
    fn stages(&self, _pp: usize) -> Range<usize> {
        0..1
    }

    /// One rank of stage `stage`, given rank 0's result of the previous stage (all ranks agreed on it).
    fn rank<C: Communicator>(
        &self,
        plan: &Plan<'_>,
        stage: usize,
        previous: Option<&Self::Rank>,
        comm: &C,
    ) -> Result<Self::Rank>;

    /// A fingerprint of what must be the same bits on every rank, and what it is (for the error).
    fn fingerprint(&self, rank: &Self::Rank) -> (u64, &'static str);

    /// The run's result from the last stage's ranks (writes what the task writes).
    fn finish(&self, plan: &Plan<'_>, ranks: Ranks<'_, Self::Rank>) -> Result<Self::Output>;
}

/// The cells that do not run, each with its reason: the one place a (source, transport, task) is refused.
/// `None`: the cell runs.
pub fn refusal(task: TaskKind, source: &Source<'_>, transport: TransportKind) -> Option<String> {
    let pp = source.pp();
    match (task, transport) {
        (_, TransportKind::Mpi) if pp > 1 => Some(format!(
            "a checkpoint with pipeline stages ({pp}): one process per rank runs only pp 1 (reshard it with --pp 1)"
        )),
        _ => None,
    }
}

/// Runs `task` on `source` with `transport`; see the [module docs](self). Under MPI a rank that fails while
/// computing ends the job (`MPI_Abort`) with its error, so that no rank waits forever; failures while writing
/// are agreed on by every rank and returned.
pub fn run<T: Task>(source: &Source<'_>, transport: &Transport<'_>, task: &T) -> Result<T::Output> {
    if let Some(why) = refusal(T::KIND, source, transport.kind()) {
        let dir = source.dir().map_or(String::new(), |d| format!("{}: ", d.display()));
        return Err(Error::Argument(format!("{dir}{why}")));
    }
    match transport {
        #[cfg(feature = "mpi")]
        Transport::Mpi(comm) => {
            let out = (|| -> Result<(Plan<'_>, T::Rank)> {
                let mut plan = source.plan(transport, T::STAGED.then(|| task.stages(source.pp())))?;
                task.prepare(&mut plan)?;
                let mut previous: Option<T::Rank> = None;
                for stage in task.stages(plan.pp) {
                    let r = task.rank(&plan, stage, previous.as_ref(), *comm)?;
                    let (print, what) = task.fingerprint(&r);
                    transport::agree(&comm.all_gather_u64(&[print]), what)?;
                    previous = Some(r);
                }
                let r = previous.ok_or_else(|| Error::Stage("no pipeline stage ran".into()))?;
                Ok((plan, r))
            })();
            let (plan, r) = match out {
                Ok(x) => x,
                Err(e) => comm.abort(&e),
            };
            task.finish(&plan, Ranks::Own(comm, r))
        }
        _ => {
            let mut plan = source.plan(transport, T::STAGED.then(|| task.stages(source.pp())))?;
            task.prepare(&mut plan)?;
            let mut previous: Option<Vec<T::Rank>> = None;
            for stage in task.stages(plan.pp) {
                let prev = previous.as_ref().and_then(|v| v.first());
                let outs = transport::on_rank_threads(plan.tp, &|comm| task.rank(&plan, stage, prev, comm))?;
                let mut what = "results";
                let prints: Vec<u64> = outs
                    .iter()
                    .map(|o| {
                        let (p, w) = task.fingerprint(o);
                        what = w;
                        p
                    })
                    .collect();
                transport::agree(&prints, what)?;
                previous = Some(outs);
            }
            let outs = previous.ok_or_else(|| Error::Stage("no pipeline stage ran".into()))?;
            task.finish(&plan, Ranks::All(outs))
        }
    }
}

/// A writer's outcome agreed on by every rank: under MPI, every rank gets the error of the lowest failing rank
/// (`rank R/N: ...`); on threads, the outcome as it is.
pub(crate) fn agree_outcome<R>(ranks: &Ranks<'_, R>, mine: Result<()>) -> Result<()> {
    match ranks {
        #[cfg(feature = "mpi")]
        Ranks::Own(comm, _) => {
            let msg = match &mine {
                Ok(()) => vec![0u8],
                Err(e) => [&[1u8][..], e.to_string().as_bytes()].concat(),
            };
            let all = comm.all_gather_bytes(&msg)?;
            match all.iter().enumerate().find(|(_, m)| m.first() != Some(&0)) {
                Some(_) if mine.is_err() => mine,
                Some((r, m)) => Err(Error::Collective(format!(
                    "rank {r}/{}: {}",
                    all.len(),
                    String::from_utf8_lossy(m.get(1..).unwrap_or_default())
                ))),
                None => Ok(()),
            }
        }
        _ => mine,
    }
}
