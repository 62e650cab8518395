//! The whole-checkpoint operations, each a plan run tensor by tensor with nothing partial on disk:
//! [`shard`](mod@shard) (HF → ranks), [`consolidate`](mod@consolidate) (ranks → HF) and
//! [`reshard`](mod@reshard) (TP N → TP M).

pub mod consolidate;
pub mod reshard;
pub mod shard;
