//! Tensors on the host: element types ([`DType`]), [`HostTensor`]s that keep the checkpoint's bytes (bf16
//! stays bf16), and [`TensorSource`], anything tensors are read from by name. The lowest folder: it imports
//! only [`crate::error`].

mod dtype;
mod host;
mod source;

pub use dtype::DType;
pub(crate) use host::MappedFile;
pub use host::{numel, single, HostTensor, StateDict, RELEASE_ALIGN};
pub use source::{TensorInfo, TensorSource};
