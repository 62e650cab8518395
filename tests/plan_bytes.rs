//! `plan --json` figures match what sharding then reads, counted by an instrumented reader.

mod common;
use common::*;
use neuron_spec::{adapt_state_dict, HostTensor, PlanOptions, TensorInfo, TensorSource};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes handed out; a whole-tensor read counts the whole tensor.
struct Counting<S> {
    inner: S,
    bytes: AtomicUsize,
}

impl<S: TensorSource> TensorSource for Counting<S> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.inner.info(name)
    }
    fn tensor(&self, name: &str) -> neuron_spec::Result<HostTensor> {
        let t = self.inner.tensor(name)?;
        self.bytes.fetch_add(t.bytes().len(), Ordering::Relaxed);
        Ok(t)
    }
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn read_slice(&self, name: &str, dim: usize, offset: usize, len: usize) -> neuron_spec::Result<HostTensor> {
        let t = self.inner.read_slice(name, dim, offset, len)?;
        self.bytes.fetch_add(t.bytes().len(), Ordering::Relaxed);
        Ok(t)
    }
}

#[test]
fn plan_json_bytes_equal_the_bytes_sharding_reads() {
    for (dir, tp, fuse) in [("llama-gqa", 4, true), ("llama-gqa-sharded", 8, false), ("llama-mha-tied", 4, true)] {
        let o = Command::new(env!("CARGO_BIN_EXE_neuron-spec"))
            .args(["plan", fixture(dir).to_str().unwrap(), "--tp", &tp.to_string(), "--json"])
            .args(if fuse { vec!["--fuse-qkv"] } else { vec![] })
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let planned: Vec<usize> =
            v["bytes_read_per_rank"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let src = Counting { inner: hf(dir), bytes: AtomicUsize::new(0) };
        let meta = layout(dir, tp, fuse);
        let total = hf(dir).total_bytes();
        for (rank, p) in planned.iter().enumerate() {
            src.bytes.store(0, Ordering::Relaxed);
            adapt_state_dict(&meta, &src, tp, rank, PlanOptions::default()).unwrap();
            assert_eq!(src.bytes.load(Ordering::Relaxed), *p, "{dir} tp{tp} rank {rank}");
            assert!(*p < total, "a rank reads less than the whole checkpoint");
        }
    }
}
