//! Differentiable collectives: Megatron's conjugate pairs, so that a TP forward pass can be trained.
//!
//! * [`copy_to_tp_region`]: identity forward, all-reduce backward (before a column-parallel layer, whose
//!   replicated input gets a partial gradient from each rank);
//! * [`reduce_from_tp_region`]: all-reduce forward, identity backward (after a row-parallel layer and the
//!   vocab-parallel embedding). Built as `s.detach() + (x - x.detach())`, which is exact in the forward pass.
//!
//! Outside autodiff (inference) both are the plain forward operation. The backward all-reduce runs inside
//! burn's backward pass through a custom op (burn's `extension` feature); every rank builds the same graph,
//! so burn walks it in the same order on every rank and the collectives match. A collective that fails in
//! the backward pass cannot return an error from there: it is recorded in the [`GradReducer`] and
//! [`GradReducer::take_error`] reports it after `backward()`.

#![allow(deprecated)] // burn 0.22 deprecates burn-ndarray; it stays selectable (`BURN_DEVICE=ndarray`).

use super::Communicator;
use crate::error::{Error, Result};
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, NdArray};
use burn::tensor::{Tensor, TensorData};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A host-level all-reduce (sum) usable from inside a backward step, where no error can be returned.
pub trait HostAllReduce: Send + Sync {
    /// The elementwise sum of `data` over every rank, bitwise identical on every rank.
    fn all_reduce_sum_f32(&self, data: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>>;
}

/// A communicator's backward-pass all-reduce plus the first error it met.
#[derive(Clone)]
pub struct GradReducer {
    reduce: Arc<dyn HostAllReduce>,
    error: Arc<Mutex<Option<String>>>,
    /// Nanoseconds spent in the all-reduce since the last [`GradReducer::take_time`].
    spent: Arc<AtomicU64>,
}

impl std::fmt::Debug for GradReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GradReducer")
    }
}

impl GradReducer {
    /// Wraps a host all-reduce.
    pub fn new(reduce: Arc<dyn HostAllReduce>) -> Self {
        Self { reduce, error: Arc::new(Mutex::new(None)), spent: Arc::new(AtomicU64::new(0)) }
    }

    /// A host all-reduce outside the backward pass (gradient bookkeeping after it).
    pub fn all_reduce_sum_f32(&self, data: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
        let t = Instant::now();
        let r = self.reduce.all_reduce_sum_f32(data, shape);
        self.spent.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    /// The time spent in this reducer's all-reduces (backward pass and bookkeeping) since the last call.
    pub fn take_time(&self) -> Duration {
        Duration::from_nanos(self.spent.swap(0, Ordering::Relaxed))
    }

    /// The first collective error of a backward pass, if any (cleared).
    pub fn take_error(&self) -> Result<()> {
        let mut g = match self.error.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match g.take() {
            Some(e) => Err(Error::Collective(format!("backward all-reduce failed: {e}"))),
            None => Ok(()),
        }
    }

    fn record(&self, e: String) {
        let mut g = match self.error.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.get_or_insert(e);
    }
}

/// The custom op of [`copy_to_tp_region`], on both CPU backends (`flex`, the default, and `ndarray`).
#[backend_extension(Autodiff, Flex, NdArray)]
pub trait TpRegionBackend: burn::backend::Backend {
    /// Identity forward; the backward pass all-reduces the gradient with `reducer`.
    fn copy_to_tp_region(x: FloatTensor<Self>, reducer: GradReducer) -> FloatTensor<Self>;
}

impl TpRegionBackend for NdArray {
    fn copy_to_tp_region(x: FloatTensor<Self>, _reducer: GradReducer) -> FloatTensor<Self> {
        x
    }
}

impl TpRegionBackend for Flex {
    fn copy_to_tp_region(x: FloatTensor<Self>, _reducer: GradReducer) -> FloatTensor<Self> {
        x
    }
}

/// Waits for a backend future; the CPU backends' are ready on the first poll.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

#[derive(Debug)]
struct CopyToTpRegionBackward;

impl<B: Backend> Backward<B, 1> for CopyToTpRegionBackward {
    type State = GradReducer;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Some(node) = parent else { return };
        let device = burn::backend::TensorMetadata::device(&grad);
        let reducer = ops.state;
        let reduced = block_on(B::float_into_data(grad.clone())).map_err(|e| format!("{e:?}")).and_then(|data| {
            let shape = data.shape().to_vec();
            let v = data.into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
            let out = reducer.all_reduce_sum_f32(v, &shape).map_err(|e| e.to_string())?;
            Ok(B::float_from_data(TensorData::new(out, shape), &device))
        });
        let reduced = match reduced {
            Ok(t) => t,
            Err(e) => {
                reducer.record(e);
                grad
            }
        };
        grads.register::<B>(node.id, reduced);
    }
}

/// The autodiff op on backend `B`: identity forward, `CopyToTpRegionBackward` recorded.
fn autodiff_copy_to_tp_region<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    reducer: GradReducer,
) -> FloatTensor<Autodiff<B, C>> {
    match CopyToTpRegionBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let out = x.primitive().clone();
            prep.finish(reducer, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(x.into_primitive()),
    }
}

impl<C: CheckpointStrategy> TpRegionBackend for Autodiff<NdArray, C> {
    fn copy_to_tp_region(x: FloatTensor<Self>, reducer: GradReducer) -> FloatTensor<Self> {
        autodiff_copy_to_tp_region::<NdArray, C>(x, reducer)
    }
}

impl<C: CheckpointStrategy> TpRegionBackend for Autodiff<Flex, C> {
    fn copy_to_tp_region(x: FloatTensor<Self>, reducer: GradReducer) -> FloatTensor<Self> {
        autodiff_copy_to_tp_region::<Flex, C>(x, reducer)
    }
}

/// Identity forward, all-reduce backward. Outside autodiff, or at tp 1, the identity.
pub fn copy_to_tp_region<const D: usize, C: Communicator>(x: Tensor<D>, comm: &C) -> Result<Tensor<D>> {
    if comm.context().size == 1 || !x.is_tracked() {
        return Ok(x);
    }
    let reducer = comm.grad_reducer().ok_or_else(|| {
        Error::Training(
            "this communicator has no backward all-reduce (Communicator::grad_reducer): cannot train".into(),
        )
    })?;
    Ok(Tensor::from_dispatch(<Dispatch as TpRegionBackend>::copy_to_tp_region(x.into_dispatch(), reducer)))
}

/// All-reduce forward, identity backward: the gradient of every rank's input is the gradient of the sum.
pub fn reduce_from_tp_region<const D: usize, C: Communicator>(x: Tensor<D>, comm: &C) -> Result<Tensor<D>> {
    if comm.context().size == 1 {
        return Ok(x);
    }
    if !x.is_tracked() {
        return comm.all_reduce_sum(x);
    }
    let s = comm.all_reduce_sum(x.clone().detach())?;
    // Exact: `x - x.detach()` is 0 in the forward pass, and its gradient is the identity.
    Ok(s.detach() + (x.clone() - x.detach()))
}

/// A group of one: every collective is the identity.
pub(crate) struct NoCollectives;

impl Communicator for NoCollectives {
    fn context(&self) -> crate::spec::contract::TpContext {
        crate::spec::contract::TpContext { size: 1, rank: 0 }
    }

    fn all_reduce_sum<const D: usize>(&self, t: Tensor<D>) -> Result<Tensor<D>> {
        Ok(t)
    }

    fn all_gather<const D: usize>(&self, t: Tensor<D>, _dim: usize) -> Result<Tensor<D>> {
        Ok(t)
    }
}
