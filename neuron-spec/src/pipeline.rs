//! One tensor ahead: a helper thread computes the next tensor while the caller writes the current one, so
//! both cores work and memory holds at most three tensors.

use crate::error::{Error, Result};
use crate::plan::{TensorInfo, TensorPlan};
use crate::tensor::HostTensor;
use std::sync::mpsc::sync_channel;

/// Runs `consume` with a `next(info)` function that returns the tensors of `order`, in that order, computed
/// by `compute` on a helper thread one step ahead. `next` checks it is asked for the expected tensor.
pub fn with_prefetch<R>(
    order: &[&TensorPlan],
    compute: &(dyn Fn(&TensorPlan) -> Result<Vec<HostTensor>> + Sync),
    consume: impl FnOnce(&mut dyn FnMut(&TensorInfo) -> Result<Vec<HostTensor>>) -> Result<R>,
) -> Result<R> {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Result<Vec<HostTensor>>>(1);
        s.spawn(move || {
            for t in order {
                let r = compute(t);
                let stop = r.is_err();
                // A closed channel means the consumer stopped (finished or failed): stop too.
                if tx.send(r).is_err() || stop {
                    break;
                }
            }
        });
        let mut i = 0;
        let mut next = |info: &TensorInfo| -> Result<Vec<HostTensor>> {
            let expected = order.get(i).map(|t| t.name.as_str());
            if expected != Some(info.name.as_str()) {
                return Err(Error::Invalid(format!(
                    "asked for tensor {} out of order (expected {expected:?})",
                    info.name
                )));
            }
            i += 1;
            rx.recv().map_err(|_| Error::Invalid(format!("tensor {}: the producer stopped", info.name)))?
        };
        let out = consume(&mut next);
        drop(next);
        out
    })
}
