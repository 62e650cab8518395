//! Where the ranks run ([`Transport`]): threads of this process joined by a `LocalCommunicator`, or MPI
//! processes, this one running the rank MPI gave it (the communicator is a value the caller passes in).
//! Also here, once for both: the check that every rank computed the same bits ([`agree`]).

#[cfg(feature = "mpi")]
use neuron_spec::comm::Communicator;
use neuron_spec::comm::LocalCommunicator;
use neuron_spec::{Error, Result};

/// Where the ranks of a run execute.
#[derive(Debug, Clone, Copy)]
pub enum Transport<'c> {
    /// Every rank on its own thread of this process. `None`: the source's own tp (a sharded checkpoint's), or
    /// 1 for HF weights.
    Threads(Option<usize>),
    /// One MPI process per rank: this process runs `comm`'s rank; the tp is the number of processes.
    #[cfg(feature = "mpi")]
    Mpi(&'c neuron_spec::comm::MpiCommunicator),
    #[doc(hidden)]
    #[allow(dead_code)]
    _Lifetime(std::marker::PhantomData<&'c ()>),
}

/// Which kind of transport (for the capability checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Threads of this process.
    Threads,
    /// MPI processes.
    Mpi,
}

impl Transport<'_> {
    /// `tp` ranks on threads.
    pub fn threads(tp: usize) -> Self {
        Transport::Threads(Some(tp))
    }

    /// The source's own tp on threads (a sharded checkpoint's; 1 for HF weights).
    pub fn threads_at_source_tp() -> Self {
        Transport::Threads(None)
    }

    /// The kind.
    pub fn kind(&self) -> TransportKind {
        match self {
            #[cfg(feature = "mpi")]
            Transport::Mpi(_) => TransportKind::Mpi,
            _ => TransportKind::Threads,
        }
    }

    /// The number of ranks, when the transport fixes it.
    pub fn tp(&self) -> Option<usize> {
        match self {
            Transport::Threads(tp) => *tp,
            #[cfg(feature = "mpi")]
            Transport::Mpi(c) => Some(c.context().size),
            Transport::_Lifetime(_) => None,
        }
    }
}

/// Fails the group's collectives if its rank's thread ends early (error or panic).
struct AbortGuard<'a> {
    comm: &'a LocalCommunicator,
    armed: bool,
}

impl Drop for AbortGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.comm.abort("the rank stopped before finishing its work");
        }
    }
}

/// Runs `work` for every rank of a fresh `LocalCommunicator` group of `tp`, each on its own thread, and returns
/// the results in rank order. A rank that fails or panics aborts the others' collectives (none hangs), and the
/// error returned is a rank's own rather than the aborts it caused on the others.
pub(crate) fn on_rank_threads<T: Send>(
    tp: usize,
    work: &(dyn Fn(&LocalCommunicator) -> Result<T> + Sync),
) -> Result<Vec<T>> {
    let comms = LocalCommunicator::group(tp)?;
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .map(|comm| {
                s.spawn(move || {
                    let mut guard = AbortGuard { comm, armed: true };
                    let r = work(comm);
                    match &r {
                        Ok(_) => guard.armed = false,
                        Err(e) => comm.abort(&e.to_string()),
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(r, h)| h.join().unwrap_or_else(|_| Err(Error::Thread(format!("rank {r} panicked")))))
            .collect()
    });
    let mut outs = Vec::with_capacity(tp);
    let mut first_err: Option<Error> = None;
    for r in results {
        match r {
            Ok(o) => outs.push(o),
            Err(e) => {
                let is_echo = e.is_collective_abort();
                if first_err.as_ref().is_none_or(|f| f.is_collective_abort() && !is_echo) {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(outs),
    }
}

/// The "every rank computed the same" check, once for every task and transport: `prints[r]` is rank `r`'s
/// fingerprint of what must be identical on every rank; names the first rank that differs from rank 0.
pub(crate) fn agree(prints: &[u64], what: &str) -> Result<()> {
    match prints.iter().position(|p| Some(p) != prints.first()) {
        Some(rank) => Err(Error::RanksDisagree { rank, what: format!("computed other {what} than rank 0:") }),
        None => Ok(()),
    }
}

/// A fingerprint of f32 values, bit for bit (SipHash with fixed keys: the same in every process of a job).
pub(crate) fn fingerprint_f32<'a>(values: impl IntoIterator<Item = &'a f32>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    let mut n = 0usize;
    for v in values {
        v.to_bits().hash(&mut h);
        n += 1;
    }
    n.hash(&mut h);
    h.finish()
}
