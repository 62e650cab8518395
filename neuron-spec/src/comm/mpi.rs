//! [`MpiCommunicator`]: the collectives over MPI, one process per TP rank (feature `mpi`).
//!
//! Launched by `mpirun -np N` (or `srun`), each process is the rank MPI gives it in `MPI_COMM_WORLD`. The
//! reductions do not use `MPI_Allreduce`, whose summation order the standard leaves open: every rank gathers
//! all contributions (`MPI_Allgatherv`) and sums them in rank order, exactly as [`LocalCommunicator`] does, so
//! the results are bitwise identical on every rank and to the threaded run.
//!
//! [`LocalCommunicator`]: super::LocalCommunicator

use super::local::{f32_tensor, tensor_to_f32, Communicator};
use crate::error::{Error, Result};
use crate::spec::contract::TpContext;
use burn::tensor::Tensor;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives, Root};
use mpi::Threading;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Largest tensor rank a collective accepts (the shape travels in a fixed-size header).
const MAX_DIMS: usize = 8;

/// The ranks of `MPI_COMM_WORLD` as TP ranks. Create it once per process with [`MpiCommunicator::init`];
/// dropping it finalizes MPI.
///
/// Every rank must call the same collectives in the same order. A rank that fails calls
/// [`abort`](Self::abort), which ends the whole job (`MPI_Abort`) with its error printed, instead of leaving
/// the others waiting in a collective.
pub struct MpiCommunicator {
    universe: Universe,
    core: Arc<Core>,
    size: usize,
    rank: usize,
}

/// What the collectives need, shared with the backward pass's [`GradReducer`](super::GradReducer).
struct Core {
    /// MPI is initialized as `MPI_THREAD_SERIALIZED`: calls from several threads are serialized here.
    lock: Mutex<()>,
    /// False once the communicator is dropped (MPI finalized): a reducer kept past it fails, not crashes.
    live: AtomicBool,
    size: usize,
}

impl Drop for MpiCommunicator {
    fn drop(&mut self) {
        let _g = self.core.guard();
        self.core.live.store(false, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for MpiCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiCommunicator {{ size: {}, rank: {} }}", self.size, self.rank)
    }
}

fn count(n: usize, what: &str) -> Result<mpi::Count> {
    mpi::Count::try_from(n)
        .map_err(|_| Error::Collective(format!("{what}: {n} elements exceed what one MPI message can carry")))
}

impl MpiCommunicator {
    /// Initializes MPI (`MPI_Init_thread`, serialized threading) and takes this process's rank and the world
    /// size as the TP context. Fails if MPI is already initialized in this process.
    pub fn init() -> Result<Self> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::Collective("MPI is already initialized in this process".into()))?;
        if !matches!(provided, Threading::Serialized | Threading::Multiple) {
            return Err(Error::Collective(format!(
                "the MPI library provides threading level {provided:?}, MPI_THREAD_SERIALIZED is needed"
            )));
        }
        let world = universe.world();
        let (size, rank) = (world.size(), world.rank());
        let size = usize::try_from(size).map_err(|_| Error::Collective(format!("MPI world size {size}")))?;
        let rank = usize::try_from(rank).map_err(|_| Error::Collective(format!("MPI rank {rank}")))?;
        crate::plan::split::check_tp(size, rank)?;
        let core = Arc::new(Core { lock: Mutex::new(()), live: AtomicBool::new(true), size });
        Ok(Self { universe, core, size, rank })
    }

    fn world(&self) -> (MutexGuard<'_, ()>, SimpleCommunicator) {
        (self.core.guard(), self.universe.world())
    }

    /// Prints `error: rank R/N: <reason>` on stderr and ends every process of the job (`MPI_Abort`, exit
    /// code 1). Never returns.
    pub fn abort(&self, reason: &dyn std::fmt::Display) -> ! {
        use std::io::Write;
        // One write: mpirun's own abort notice from another process must not land inside the line.
        let line = format!("error: rank {}/{}: {reason}\n", self.rank, self.size);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        let _ = std::io::stdout().flush();
        // No lock: another thread may be blocked inside a collective while holding it.
        self.universe.world().abort(1)
    }

    /// Waits until every rank has arrived (`MPI_Barrier`).
    pub fn barrier(&self) {
        let (_g, w) = self.world();
        w.barrier();
    }

    /// Every rank's `values`, concatenated in rank order; each rank must pass the same number of values.
    pub fn all_gather_u64(&self, values: &[u64]) -> Vec<u64> {
        self.core.all_gather_u64(values)
    }

    /// Every rank's `bytes` (any length), in rank order.
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let lens = self.all_gather_u64(&[bytes.len() as u64]);
        let lens: Vec<usize> = lens.iter().map(|l| *l as usize).collect();
        let flat = self.gather_varcount(bytes, &lens, "all_gather_bytes")?;
        let mut out = Vec::with_capacity(self.size);
        let mut off = 0;
        for l in lens {
            out.push(flat[off..off + l].to_vec());
            off += l;
        }
        Ok(out)
    }

    /// Rank `root`'s `bytes` on every rank (`MPI_Bcast`; the other ranks' `bytes` are replaced).
    pub fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let root_rank = self.root(root)?;
        let mut len = [bytes.len() as u64];
        {
            let (_g, w) = self.world();
            w.process_at_rank(root_rank).broadcast_into(&mut len[..]);
        }
        bytes.resize(len[0] as usize, 0);
        count(bytes.len(), "broadcast_bytes")?;
        let (_g, w) = self.world();
        w.process_at_rank(root_rank).broadcast_into(&mut bytes[..]);
        Ok(())
    }

    fn root(&self, root: usize) -> Result<mpi::Rank> {
        if root >= self.size {
            return Err(Error::Collective(format!("broadcast root {root} is not a rank of a group of {}", self.size)));
        }
        count(root, "broadcast root")
    }

    fn gather_shapes(&self, shape: &[usize], what: &str) -> Result<Vec<Vec<usize>>> {
        self.core.gather_shapes(shape, what)
    }

    fn gather_f32(&self, shape: &[usize], data: &[f32], free_dim: Option<usize>, what: &str) -> Result<Vec<f32>> {
        self.core.gather_f32(shape, data, free_dim, what)
    }

    fn gather_varcount<T: mpi::datatype::Equivalence + Default + Clone>(
        &self,
        mine: &[T],
        lens: &[usize],
        what: &str,
    ) -> Result<Vec<T>> {
        self.core.gather_varcount(mine, lens, what)
    }
}

impl Core {
    fn guard(&self) -> MutexGuard<'_, ()> {
        match self.lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `MPI_COMM_WORLD` (valid while the communicator lives: checked under the lock by the callers).
    fn world(&self) -> (MutexGuard<'_, ()>, SimpleCommunicator) {
        (self.guard(), SimpleCommunicator::world())
    }

    fn all_gather_u64(&self, values: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; values.len() * self.size];
        let (_g, w) = self.world();
        w.all_gather_into(values, &mut out[..]);
        out
    }

    /// `MPI_Allgatherv` of `mine`, where rank r contributes `lens[r]` elements (known to every rank).
    fn gather_varcount<T: mpi::datatype::Equivalence + Default + Clone>(
        &self,
        mine: &[T],
        lens: &[usize],
        what: &str,
    ) -> Result<Vec<T>> {
        let counts = lens.iter().map(|l| count(*l, what)).collect::<Result<Vec<_>>>()?;
        let total: usize = lens.iter().sum();
        count(total, what)?;
        let mut displs = Vec::with_capacity(counts.len());
        let mut off: mpi::Count = 0;
        for c in &counts {
            displs.push(off);
            off += c;
        }
        let mut out = vec![T::default(); total];
        {
            let mut part = PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
            let (_g, w) = self.world();
            w.all_gather_varcount_into(mine, &mut part);
        }
        Ok(out)
    }

    /// Every rank's shape (a fixed-size header: the rank count, then the dims), in rank order.
    fn gather_shapes(&self, shape: &[usize], what: &str) -> Result<Vec<Vec<usize>>> {
        if shape.len() > MAX_DIMS {
            return Err(Error::Collective(format!("{what}: tensors of rank {} (at most {MAX_DIMS})", shape.len())));
        }
        let mut header = [0u64; MAX_DIMS + 1];
        header[0] = shape.len() as u64;
        for (h, d) in header[1..].iter_mut().zip(shape) {
            *h = *d as u64;
        }
        let all = self.all_gather_u64(&header);
        Ok(all
            .chunks(MAX_DIMS + 1)
            .map(|h| {
                let n = (h[0] as usize).min(MAX_DIMS);
                h[1..=n].iter().map(|d| *d as usize).collect()
            })
            .collect())
    }

    /// Every rank's values of a float tensor, after checking the shapes agree except along `free_dim`.
    fn gather_f32(&self, shape: &[usize], data: &[f32], free_dim: Option<usize>, what: &str) -> Result<Vec<f32>> {
        let shapes = self.gather_shapes(shape, what)?;
        for (r, s) in shapes.iter().enumerate() {
            let same = s.len() == shape.len()
                && s.iter().zip(shape).enumerate().all(|(d, (a, b))| a == b || Some(d) == free_dim);
            if !same {
                // Every rank sees the same headers, so every rank returns this error: nobody hangs.
                return Err(Error::ShapeMismatch {
                    tensor: format!("{what} input of rank {r}"),
                    expected: shape.to_vec(),
                    found: s.clone(),
                    file: None,
                });
            }
        }
        let lens: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        self.gather_varcount(data, &lens, what)
    }

    /// The elementwise rank-order sum of every rank's `data` (all of the same `shape`).
    fn sum_f32(&self, shape: &[usize], data: &[f32], what: &str) -> Result<Vec<f32>> {
        let all = self.gather_f32(shape, data, None, what)?;
        // Summed in rank order from zero, as LocalCommunicator does: the same bits on every rank.
        let n = data.len();
        let mut out = vec![0f32; n];
        for part in all.chunks(n.max(1)).take(self.size) {
            for (o, v) in out.iter_mut().zip(part) {
                *o += *v;
            }
        }
        Ok(out)
    }
}

impl super::HostAllReduce for Core {
    fn all_reduce_sum_f32(&self, data: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        if self.size == 1 {
            return Ok(data);
        }
        if !self.live.load(Ordering::SeqCst) {
            return Err(Error::Collective("backward all-reduce after the MPI communicator was dropped".into()));
        }
        self.sum_f32(shape, &data, "backward all_reduce_sum")
    }
}

impl Communicator for MpiCommunicator {
    fn context(&self) -> TpContext {
        TpContext { size: self.size, rank: self.rank }
    }

    fn all_reduce_sum<const D: usize>(&self, t: Tensor<D>) -> Result<Tensor<D>> {
        if self.size == 1 {
            return Ok(t);
        }
        let device = t.device();
        let (shape, data) = tensor_to_f32(t, "all_reduce_sum")?;
        let out = self.core.sum_f32(&shape, &data, "all_reduce_sum")?;
        let dims = <[usize; D]>::try_from(shape.as_slice())
            .map_err(|_| Error::Collective(format!("all_reduce_sum: expected a rank-{D} tensor")))?;
        f32_tensor(out, dims, &device, "all_reduce_sum output")
    }

    fn all_gather<const D: usize>(&self, t: Tensor<D>, dim: usize) -> Result<Tensor<D>> {
        if dim >= D {
            return Err(Error::Collective(format!("all_gather: dim {dim} out of range for a rank-{D} tensor")));
        }
        if self.size == 1 {
            return Ok(t);
        }
        let device = t.device();
        let (shape, data) = tensor_to_f32(t, "all_gather")?;
        let shapes = self.gather_shapes(&shape, "all_gather")?;
        let all = self.gather_f32(&shape, &data, Some(dim), "all_gather")?;
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product();
        let total: usize = shapes.iter().map(|s| s[dim]).sum();
        // `all` holds rank 0's whole tensor, then rank 1's, ...; interleave their runs along `dim`.
        let mut starts = Vec::with_capacity(self.size);
        let mut off = 0;
        for s in &shapes {
            starts.push(off);
            off += outer * s[dim] * inner;
        }
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for (s, start) in shapes.iter().zip(&starts) {
                let run = s[dim] * inner;
                out.extend_from_slice(&all[start + o * run..start + (o + 1) * run]);
            }
        }
        let mut out_shape = shape;
        out_shape[dim] = total;
        let dims = <[usize; D]>::try_from(out_shape.as_slice())
            .map_err(|_| Error::Collective(format!("all_gather: expected a rank-{D} tensor")))?;
        f32_tensor(out, dims, &device, "all_gather output")
    }

    fn broadcast<const D: usize>(&self, t: Tensor<D>, root: usize) -> Result<Tensor<D>> {
        let root_rank = self.root(root)?;
        if self.size == 1 {
            return Ok(t);
        }
        let device = t.device();
        let (shape, mut data) = tensor_to_f32(t, "broadcast")?;
        let shapes = self.gather_shapes(&shape, "broadcast")?;
        if let Some((r, s)) = shapes.iter().enumerate().find(|(_, s)| **s != shapes[root]) {
            return Err(Error::ShapeMismatch {
                tensor: format!("broadcast input of rank {r}"),
                expected: shapes[root].clone(),
                found: s.clone(),
                file: None,
            });
        }
        count(data.len(), "broadcast")?;
        {
            let (_g, w) = self.world();
            w.process_at_rank(root_rank).broadcast_into(&mut data[..]);
        }
        let dims = <[usize; D]>::try_from(shape.as_slice())
            .map_err(|_| Error::Collective(format!("broadcast: expected a rank-{D} tensor")))?;
        f32_tensor(data, dims, &device, "broadcast output")
    }

    fn barrier(&self) -> Result<()> {
        MpiCommunicator::barrier(self);
        Ok(())
    }

    fn grad_reducer(&self) -> Option<super::GradReducer> {
        Some(super::GradReducer::new(self.core.clone()))
    }
}
