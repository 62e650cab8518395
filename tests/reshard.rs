//! TP N → TP M directly from the metadata and specs, then consolidation, equals the original.

mod common;
use common::*;
use neuron_spec::checkpoint::{consolidate, shard, ShardedCheckpoint, WriteOptions};
use neuron_spec::io::HfCheckpoint;
use neuron_spec::reshard::reshard;

#[test]
fn reshard_then_consolidate_equals_the_original() {
    for (n, m) in [(2, 4), (4, 2), (8, 2), (1, 8)] {
        for fuse in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            let a = tmp.path().join("a");
            let b = tmp.path().join("b");
            let out = tmp.path().join("hf");
            shard(&fixture("llama-gqa"), &a, &layout("llama-gqa", n, fuse), n, &WriteOptions::default()).unwrap();
            reshard(&a, &b, m, &WriteOptions::default()).unwrap();
            // The resharded rank files equal a direct sharding at tp M.
            let direct = tmp.path().join("direct");
            shard(&fixture("llama-gqa"), &direct, &layout("llama-gqa", m, fuse), m, &WriteOptions::default()).unwrap();
            let (rb, rd) = (ShardedCheckpoint::open(&b).unwrap(), ShardedCheckpoint::open(&direct).unwrap());
            assert_eq!(rb.tp, m);
            for r in 0..m {
                assert_same_tensors(&rb.ranks[r], &rd.ranks[r], &format!("{n}->{m} fuse={fuse} rank {r}"));
            }
            assert_eq!(rb.metadata.model_weight_transformation_specs, rd.metadata.model_weight_transformation_specs);
            consolidate(&b, &out, &WriteOptions::default()).unwrap();
            assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf("llama-gqa"), &format!("{n}->{m} fuse={fuse}"));
        }
    }
}

#[test]
fn reshard_recomputes_vocab_padding() {
    // vocab 250: tp 2 holds 125 rows per rank without padding, tp 4 holds 63 with 2 rows of padding on rank 3.
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, out) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("hf"));
    shard(&fixture("llama-mha-tied"), &a, &layout("llama-mha-tied", 2, true), 2, &WriteOptions::default()).unwrap();
    reshard(&a, &b, 4, &WriteOptions::default()).unwrap();
    let ck = ShardedCheckpoint::open(&b).unwrap();
    for f in &ck.ranks {
        assert_eq!(f.info("model.embed_tokens.weight").unwrap().shape, vec![63, 32]);
    }
    consolidate(&b, &out, &WriteOptions::default()).unwrap();
    assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf("llama-mha-tied"), "mha-tied 2->4");
}
