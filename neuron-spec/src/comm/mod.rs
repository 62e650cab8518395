//! Collectives between the TP ranks of one model (feature `burn`): the [`Communicator`] trait, its
//! in-process implementation ([`LocalCommunicator`], in [`local`]), the MPI one (`mpi`, feature `mpi`), and
//! the differentiable collectives a trained forward pass uses ([`autodiff`]: Megatron's conjugate pairs).

pub mod autodiff;
pub mod local;
#[cfg(feature = "mpi")]
pub mod mpi;

pub use autodiff::{copy_to_tp_region, reduce_from_tp_region, GradReducer, HostAllReduce, TpRegionBackend};
pub(crate) use local::{f32_tensor, tensor_to_f32};
pub use local::{Communicator, LocalCommunicator};
#[cfg(feature = "mpi")]
pub use mpi::MpiCommunicator;
