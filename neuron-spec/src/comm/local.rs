//! Collectives between the TP ranks of one model: the only place ranks exchange activations.
//!
//! [`LocalCommunicator`] simulates the ranks on threads of one process (tests, CPU inference).
//!
//! # Plugging in a multi-device communicator
//!
//! The parallel layers only call the two methods of [`Communicator`]; they never ask where the other ranks
//! live. A multi-device implementation (one process or one device per rank, e.g. NCCL through
//! `cudarc`, MPI, or burn's own collectives once they run on the chosen backend) implements the trait by
//! handing the tensor's device buffer to its all-reduce / all-gather and wrapping the result back into a
//! `Tensor` on the same device; the model code does not change. Two properties matter:
//!
//! * every rank must get **bitwise identical** results (reduce in a fixed order, or all-reduce once and
//!   broadcast), otherwise ranks drift apart and replicated weights or sampled tokens diverge;
//! * a failure on one rank must fail the collective on the others instead of hanging them
//!   ([`LocalCommunicator::abort`] is this crate's version of it).
//!
//! burn 0.22's `burn::tensor::distributed` all-reduce only has CUDA and Remote arms (it panics on
//! ndarray), and burn-collective 0.21 does not build against burn 0.22. Besides the in-process
//! implementation this crate ships `MpiCommunicator` (feature `mpi`): one process per rank over MPI.

use crate::error::{Error, Result};
use crate::spec::contract::TpContext;
use burn::tensor::{DType, Tensor, TensorData};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Polls of the generation before a waiting rank sleeps on the condvar (a few tens of microseconds): the
/// collectives of a decode step come every few hundred microseconds, and a condvar wake-up costs about as much
/// as the wait itself.
const SPINS: u32 = 4096;

/// The collectives a tensor-parallel forward pass needs.
pub trait Communicator: Send + Sync {
    /// The TP size and this handle's rank.
    fn context(&self) -> TpContext;

    /// The elementwise sum of `t` over all ranks; every rank gets bitwise identical values.
    fn all_reduce_sum<const D: usize>(&self, t: Tensor<D>) -> Result<Tensor<D>>;

    /// The concatenation of every rank's `t` along `dim`, in rank order.
    fn all_gather<const D: usize>(&self, t: Tensor<D>, dim: usize) -> Result<Tensor<D>>;

    /// Rank `root`'s `t` on every rank (every rank passes a tensor of the same shape). The default gathers
    /// along dim 0 and keeps `root`'s part; a communicator with a native broadcast overrides it.
    fn broadcast<const D: usize>(&self, t: Tensor<D>, root: usize) -> Result<Tensor<D>> {
        let size = self.context().size;
        if root >= size {
            return Err(Error::Collective(format!("broadcast root {root} is not a rank of a group of {size}")));
        }
        if size == 1 || D == 0 {
            return Ok(t);
        }
        let rows = t.dims()[0];
        Ok(self.all_gather(t, 0)?.narrow(0, root * rows, rows))
    }

    /// Returns once every rank has called it. The default is an all-reduce of one value.
    fn barrier(&self) -> Result<()> {
        let t = Tensor::<1>::zeros([1], &burn::tensor::Device::default());
        self.all_reduce_sum(t).map(|_| ())
    }

    /// The all-reduce the backward pass of training runs ([`super::copy_to_tp_region`]); `None` (the
    /// default): this communicator cannot train.
    fn grad_reducer(&self) -> Option<super::GradReducer> {
        None
    }
}

/// One rank's contribution to a collective.
#[derive(Clone)]
struct Slot {
    shape: Vec<usize>,
    data: Vec<f32>,
}

struct State {
    /// Two sets of slots, used by alternate collectives (by `generation` parity): a rank can publish into the
    /// next collective's set while slower ranks still read this one's, so one rendezvous per collective
    /// suffices (no rank can reach the collective after next before every rank has left this one).
    slots: [Vec<Option<Slot>>; 2],
    arrived: usize,
    generation: u64,
    aborted: Option<String>,
}

struct Shared {
    size: usize,
    /// `State::generation`, readable without the lock: waiting ranks spin on it briefly before sleeping.
    generation: AtomicU64,
    state: Mutex<State>,
    cv: Condvar,
}

/// Ranks simulated on threads of one process: each collective is a rendezvous on shared slots.
///
/// Every rank of a group must call the same collectives in the same order (as with NCCL). If a rank fails,
/// call [`abort`](Self::abort) so that the others return an error instead of waiting forever.
#[derive(Clone)]
pub struct LocalCommunicator {
    rank: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalCommunicator {{ size: {}, rank: {} }}", self.shared.size, self.rank)
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Collective("a rank panicked inside a collective (communicator lock poisoned)".into())
}

/// Reads a float tensor back as f32 values with its shape.
pub(crate) fn tensor_to_f32<const D: usize>(t: Tensor<D>, what: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let data =
        t.try_into_data().map_err(|e| Error::Collective(format!("{what}: reading the tensor back failed: {e:?}")))?;
    let shape = data.shape().to_vec();
    let data = if data.dtype() == DType::F32 {
        data
    } else {
        data.try_cast_as::<f32>().map_err(|e| Error::Collective(format!("{what}: cannot convert to f32: {e:?}")))?
    };
    let v = data.try_into_vec::<f32>().map_err(|e| Error::Collective(format!("{what}: {e:?}")))?;
    Ok((shape, v))
}

/// A float tensor from f32 values; the caller guarantees `values.len()` matches `shape`.
pub(crate) fn f32_tensor<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &burn::tensor::Device,
    what: &str,
) -> Result<Tensor<D>> {
    let n: usize = shape.iter().product();
    if values.len() != n {
        return Err(Error::ShapeMismatch {
            tensor: what.to_string(),
            expected: shape.to_vec(),
            found: vec![values.len()],
            file: None,
        });
    }
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

fn dims<const D: usize>(shape: &[usize], what: &str) -> Result<[usize; D]> {
    <[usize; D]>::try_from(shape)
        .map_err(|_| Error::Collective(format!("{what}: expected a rank-{D} tensor, found shape {shape:?}")))
}

impl LocalCommunicator {
    /// The handles of a group of `size` ranks, in rank order; give one to each rank's thread.
    pub fn group(size: usize) -> Result<Vec<LocalCommunicator>> {
        crate::plan::split::check_tp(size, 0)?;
        let shared = Arc::new(Shared {
            size,
            generation: AtomicU64::new(0),
            state: Mutex::new(State {
                slots: [vec![None; size], vec![None; size]],
                arrived: 0,
                generation: 0,
                aborted: None,
            }),
            cv: Condvar::new(),
        });
        Ok((0..size).map(|rank| LocalCommunicator { rank, shared: shared.clone() }).collect())
    }

    /// Fails every pending and future collective of the group with `reason`.
    pub fn abort(&self, reason: &str) {
        let mut st = match self.shared.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if st.aborted.is_none() {
            st.aborted = Some(format!("rank {}: {reason}", self.rank));
        }
        self.shared.cv.notify_all();
    }

    fn aborted_error(reason: &str) -> Error {
        Error::CollectiveAborted { reason: reason.to_string() }
    }

    /// Waits until every rank has arrived; the guard is held again on return.
    fn rendezvous<'a>(&'a self, mut st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        if let Some(r) = &st.aborted {
            return Err(Self::aborted_error(r));
        }
        let generation = st.generation;
        st.arrived += 1;
        if st.arrived == self.shared.size {
            st.arrived = 0;
            st.generation = st.generation.wrapping_add(1);
            self.shared.generation.store(st.generation, Ordering::Release);
            self.shared.cv.notify_all();
            return Ok(st);
        }
        drop(st);
        for i in 0..SPINS {
            if self.shared.generation.load(Ordering::Acquire) != generation {
                break;
            }
            if i % 16 == 15 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let mut st = self.shared.state.lock().map_err(poisoned)?;
        while st.generation == generation && st.aborted.is_none() {
            st = self.shared.cv.wait(st).map_err(poisoned)?;
        }
        if st.generation == generation {
            if let Some(r) = &st.aborted {
                return Err(Self::aborted_error(r));
            }
        }
        Ok(st)
    }

    /// Publishes this rank's slot and returns every rank's, in rank order.
    fn exchange(&self, slot: Slot) -> Result<Vec<Slot>> {
        let mut st = self.shared.state.lock().map_err(poisoned)?;
        let set = (st.generation % 2) as usize;
        if let Some(s) = st.slots[set].get_mut(self.rank) {
            *s = Some(slot);
        }
        let st = self.rendezvous(st)?;
        let all: Option<Vec<Slot>> = st.slots[set].iter().cloned().collect();
        all.ok_or_else(|| Error::Collective("a rank left a collective without its contribution".into()))
    }
}

impl super::HostAllReduce for LocalCommunicator {
    fn all_reduce_sum_f32(&self, data: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        if self.shared.size == 1 {
            return Ok(data);
        }
        let n = data.len();
        let all = self.exchange(Slot { shape: shape.to_vec(), data })?;
        if let Some((r, s)) = all.iter().enumerate().find(|(_, s)| s.shape != shape || s.data.len() != n) {
            return Err(Error::ShapeMismatch {
                tensor: format!("backward all_reduce_sum input of rank {r}"),
                expected: shape.to_vec(),
                found: s.shape.clone(),
                file: None,
            });
        }
        let mut out = vec![0f32; n];
        for s in &all {
            for (o, v) in out.iter_mut().zip(&s.data) {
                *o += *v;
            }
        }
        Ok(out)
    }
}

impl Communicator for LocalCommunicator {
    fn context(&self) -> TpContext {
        TpContext { size: self.shared.size, rank: self.rank }
    }

    fn grad_reducer(&self) -> Option<super::GradReducer> {
        Some(super::GradReducer::new(std::sync::Arc::new(self.clone())))
    }

    fn all_reduce_sum<const D: usize>(&self, t: Tensor<D>) -> Result<Tensor<D>> {
        if self.shared.size == 1 {
            return Ok(t);
        }
        let device = t.device();
        let (shape, data) = tensor_to_f32(t, "all_reduce_sum")?;
        let all = self.exchange(Slot { shape: shape.clone(), data })?;
        if let Some((r, s)) = all.iter().enumerate().find(|(_, s)| s.shape != shape) {
            return Err(Error::ShapeMismatch {
                tensor: format!("all_reduce_sum input of rank {r}"),
                expected: shape,
                found: s.shape.clone(),
                file: None,
            });
        }
        // Summed in rank order, the same on every rank, so all ranks hold the same bits.
        let mut out = vec![0f32; data_len(&shape)];
        for s in &all {
            for (o, v) in out.iter_mut().zip(&s.data) {
                *o += *v;
            }
        }
        f32_tensor(out, dims::<D>(&shape, "all_reduce_sum")?, &device, "all_reduce_sum output")
    }

    fn all_gather<const D: usize>(&self, t: Tensor<D>, dim: usize) -> Result<Tensor<D>> {
        if dim >= D {
            return Err(Error::Collective(format!("all_gather: dim {dim} out of range for a rank-{D} tensor")));
        }
        if self.shared.size == 1 {
            return Ok(t);
        }
        let device = t.device();
        let (shape, data) = tensor_to_f32(t, "all_gather")?;
        let all = self.exchange(Slot { shape: shape.clone(), data })?;
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product();
        let mut total = 0;
        for (r, s) in all.iter().enumerate() {
            let mut a = s.shape.clone();
            let mut b = shape.clone();
            if a.len() != D {
                return Err(Error::ShapeMismatch {
                    tensor: format!("all_gather input of rank {r}"),
                    expected: shape,
                    found: s.shape.clone(),
                    file: None,
                });
            }
            total += a[dim];
            a[dim] = 0;
            b[dim] = 0;
            if a != b {
                return Err(Error::ShapeMismatch {
                    tensor: format!("all_gather input of rank {r}"),
                    expected: shape,
                    found: s.shape.clone(),
                    file: None,
                });
            }
        }
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for s in &all {
                let run = s.shape[dim] * inner;
                out.extend_from_slice(&s.data[o * run..(o + 1) * run]);
            }
        }
        let mut out_shape = shape;
        out_shape[dim] = total;
        f32_tensor(out, dims::<D>(&out_shape, "all_gather")?, &device, "all_gather output")
    }
}

fn data_len(shape: &[usize]) -> usize {
    shape.iter().product()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn run<T: Send>(size: usize, f: impl Fn(LocalCommunicator) -> T + Sync) -> Vec<T> {
        let comms = LocalCommunicator::group(size).unwrap();
        std::thread::scope(|s| {
            let hs: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_is_bitwise_identical_on_every_rank_and_in_rank_order() {
        // Values whose f32 sum depends on the order: (1e8 + 1) - 1e8 ... differs from 1 + (1e8 - 1e8).
        let vals = [1.0e8f32, 1.0, -1.0e8, 3.0e-3];
        let outs = run(4, |c| {
            let d = Device::default();
            let r = c.context().rank;
            let t = Tensor::<1>::from_data(TensorData::new(vec![vals[r], vals[3 - r]], [2]), &d);
            let (_, v) = tensor_to_f32(c.all_reduce_sum(t).unwrap(), "t").unwrap();
            v
        });
        let expect0 = ((vals[0] + vals[1]) + vals[2]) + vals[3];
        let expect1 = ((vals[3] + vals[2]) + vals[1]) + vals[0];
        for o in &outs {
            assert_eq!(o[0].to_bits(), expect0.to_bits());
            assert_eq!(o[1].to_bits(), expect1.to_bits());
            assert_eq!(
                o.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                outs[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn repeated_collectives_do_not_mix_rounds() {
        let outs = run(3, |c| {
            let d = Device::default();
            let r = c.context().rank as f32;
            let mut acc = Vec::new();
            for round in 0..20 {
                let t = Tensor::<1>::from_data(TensorData::new(vec![r + round as f32], [1]), &d);
                let (_, v) = tensor_to_f32(c.all_reduce_sum(t).unwrap(), "t").unwrap();
                acc.push(v[0]);
            }
            acc
        });
        for o in outs {
            let expected: Vec<f32> = (0..20).map(|round| 3.0 + 3.0 * round as f32).collect();
            assert_eq!(o, expected);
        }
    }

    #[test]
    fn all_gather_concatenates_in_rank_order_along_any_dim() {
        let outs = run(2, |c| {
            let d = Device::default();
            let r = c.context().rank as f32;
            // [2, 2] per rank: rows (10r + 0, 10r + 1), (10r + 2, 10r + 3).
            let t = Tensor::<2>::from_data(
                TensorData::new(vec![10.0 * r, 10.0 * r + 1.0, 10.0 * r + 2.0, 10.0 * r + 3.0], [2, 2]),
                &d,
            );
            let last = tensor_to_f32(c.all_gather(t.clone(), 1).unwrap(), "t").unwrap();
            let first = tensor_to_f32(c.all_gather(t, 0).unwrap(), "t").unwrap();
            (last, first)
        });
        for (last, first) in outs {
            assert_eq!(last.0, vec![2, 4]);
            assert_eq!(last.1, vec![0.0, 1.0, 10.0, 11.0, 2.0, 3.0, 12.0, 13.0]);
            assert_eq!(first.0, vec![4, 2]);
            assert_eq!(first.1, vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]);
        }
    }

    #[test]
    fn abort_releases_waiting_ranks_and_shape_mismatch_is_an_error() {
        let outs = run(2, |c| {
            let d = Device::default();
            if c.context().rank == 1 {
                c.abort("failed to load");
                return None;
            }
            let t = Tensor::<1>::from_data(TensorData::new(vec![1.0f32], [1]), &d);
            Some(c.all_reduce_sum(t).err().map(|e| e.is_collective_abort() && e.to_string().contains("failed to load")))
        });
        assert_eq!(outs[0], Some(Some(true)));
        let outs = run(2, |c| {
            let d = Device::default();
            let n = 1 + c.context().rank;
            let t = Tensor::<1>::from_data(TensorData::new(vec![1.0f32; n], [n]), &d);
            c.all_reduce_sum(t).is_err()
        });
        assert!(outs.iter().all(|e| *e));
    }
}
