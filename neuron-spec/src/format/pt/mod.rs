//! optimum-neuron's own checkpoints: `.pt` rank files, plain (`torch.save`) and xser (neuronx-distributed).
//!
//! Why our own reader instead of a crate (evaluated):
//! - `serde-pickle` (1.x) deserializes data pickles but has no notion of torch's persistent ids or of
//!   `REDUCE`/`NEWOBJ` on classes: it either refuses `torch._utils._rebuild_tensor_v2` or replaces unresolved
//!   globals by `None`, losing exactly what we need (storages, `TensorReference`'s tid, `torch.Size`).
//! - burn-store's `pytorch-reader` reads plain torch zips, but turns classes it does not know
//!   (`TensorReference`, `torch.Size`) into opaque values, wants a dict of tensors at the root (a bare
//!   tensor file of xser is not one), and copies each tensor out instead of giving a view of the mapping.
//! - candle's pickle module keeps the classes, but pulls in candle-core (a large dependency) for it.
//! - the `zip` crate would work for the container, but torch stores records uncompressed, so the whole job is
//!   reading the central directory: 150 lines that give byte ranges of our own mapping (zero-copy) and drag
//!   in no compression libraries.
//!
//! The pickle machine ([`pickle`]) interprets only the opcodes and the handful of globals a torch state dict
//! and xser use, never imports or calls anything, and bounds every size.

pub mod pickle;
pub mod rank_file;
pub mod torch_file;
pub mod value;
pub mod zip;

pub use rank_file::{PtLayout, PtRankFile};
pub use torch_file::TorchFile;
