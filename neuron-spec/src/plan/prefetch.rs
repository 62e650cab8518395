//! One tensor ahead: a helper thread computes the next tensor while the caller writes the current one, so
//! both cores work and memory holds at most three tensors.

use crate::error::{Error, Result};
use crate::plan::TensorPlan;
use crate::tensor::HostTensor;
use crate::tensor::TensorInfo;
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
        // `move`: the closure owns the receiver, so dropping it below unblocks a producer still sending.
        let mut next = move |info: &TensorInfo| -> Result<Vec<HostTensor>> {
            let expected = order.get(i).map(|t| t.name.as_str());
            if expected != Some(info.name.as_str()) {
                return Err(Error::Plan(format!(
                    "asked for tensor {} out of order (expected {expected:?})",
                    info.name
                )));
            }
            i += 1;
            rx.recv().map_err(|_| Error::Thread(format!("tensor {}: the producer stopped", info.name)))?
        };
        let out = consume(&mut next);
        // Close the channel before the scope joins the producer.
        drop(next);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn plan(name: &str) -> TensorPlan {
        TensorPlan { name: name.into(), dtype: DType::F32, shape: vec![1], blocks: vec![], replicas: vec![] }
    }

    #[test]
    fn a_consumer_that_stops_early_does_not_hang_the_producer() {
        let plans: Vec<TensorPlan> = (0..5).map(|i| plan(&i.to_string())).collect();
        let order: Vec<&TensorPlan> = plans.iter().collect();
        let compute = |_: &TensorPlan| Ok(vec![HostTensor::zeros(DType::F32, vec![1])]);
        let r: Result<()> = with_prefetch(&order, &compute, |next| {
            next(&plans[0].info())?;
            Err(Error::Thread("disk full".into()))
        });
        assert!(r.is_err());
    }

    #[test]
    fn tensors_arrive_in_order_and_out_of_order_requests_fail() {
        let plans: Vec<TensorPlan> = (0..3).map(|i| plan(&i.to_string())).collect();
        let order: Vec<&TensorPlan> = plans.iter().collect();
        let compute = |_: &TensorPlan| Ok(vec![HostTensor::zeros(DType::F32, vec![1])]);
        assert!(with_prefetch(&order, &compute, |next| {
            for p in &plans {
                next(&p.info())?;
            }
            Ok(())
        })
        .is_ok());
        assert!(with_prefetch(&order, &compute, |next| next(&plans[1].info()).map(|_| ())).is_err());
    }
}
