//! TP N → TP M directly from the metadata and specs, then consolidation, equals the original.

use crate::common;
use common::*;
use neuron_spec::checkpoint::{ShardedCheckpoint, WriteOptions};
use neuron_spec::format::HfCheckpoint;
use neuron_spec::ops::reshard::reshard;
use neuron_spec::TensorSource;
use neuron_spec::{consolidate, shard};

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
    let full = hf("llama-mha-tied").tensor("model.embed_tokens.weight").unwrap();
    let row = 32 * 4;
    for (r, f) in ck.ranks.iter().enumerate() {
        let t = f.tensor("model.embed_tokens.weight").unwrap();
        assert_eq!(t.shape(), [63, 32]);
        // Rank r holds HF rows 63r.. (rank 3: rows 189..250, then 2 rows of +0.0).
        let (start, end) = ((r * 63).min(250), ((r + 1) * 63).min(250));
        let real = (end - start) * row;
        assert!(t.bytes()[..real] == full.bytes()[start * row..end * row], "rank {r} rows");
        assert!(t.bytes()[real..].iter().all(|b| *b == 0), "rank {r} padding is zeros");
        assert_eq!(t.bytes().len() - real, if r == 3 { 2 * row } else { 0 }, "rank {r} padding rows");
    }
    consolidate(&b, &out, &WriteOptions::default()).unwrap();
    assert_same_tensors(&HfCheckpoint::open(&out).unwrap(), &hf("llama-mha-tied"), "mha-tied 2->4");
}

/// Every tensor of our rank files equals the same-named tensor of optimum-neuron's rank files, byte for byte.
fn assert_equals_tp_ref(dir: &std::path::Path, tp: usize, what: &str) {
    let ck = ShardedCheckpoint::open(dir).unwrap();
    assert_eq!(ck.tp, tp);
    for (r, f) in ck.ranks.iter().enumerate() {
        let reference = open(&format!("tp-ref/llama-gqa/tp{tp}/rank{r}.safetensors"));
        let names: Vec<String> = f.names().map(str::to_string).collect();
        assert!(names.len() >= 15, "{what}: rank {r} holds {} tensors", names.len());
        for n in names {
            let (a, b) = (f.tensor(&n).unwrap(), reference.tensor(&n).unwrap_or_else(|e| panic!("{what}: {n}: {e}")));
            assert_eq!(a.shape(), b.shape(), "{what}: rank {r} {n}");
            assert!(a.bytes() == b.bytes(), "{what}: rank {r} {n} differs from tp-ref");
        }
    }
}

#[test]
fn resharded_rank_files_equal_the_reference_shards() {
    for (n, m) in [(2, 4), (4, 2), (8, 2), (2, 8), (8, 4), (4, 8)] {
        for fuse in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
            shard(&fixture("llama-gqa"), &a, &layout("llama-gqa", n, fuse), n, &WriteOptions::default()).unwrap();
            reshard(&a, &b, m, &WriteOptions::default()).unwrap();
            assert_equals_tp_ref(&b, m, &format!("{n}->{m} fuse={fuse}"));
        }
    }
}

#[test]
fn the_reference_shards_reshard_to_the_reference_shards() {
    // A checkpoint made of optimum-neuron's own tp 2 rank files and metadata (no format_version, so no
    // checksums) reshards to its tp 4 and tp 8 files. Its rank files hold both qkv layouts: the unused one is
    // left out knowingly (--allow-unexpected).
    for (file, fuse) in [("metadata_fused.json", true), ("metadata_unfused.json", false)] {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("ref");
        std::fs::create_dir_all(src.join(neuron_spec::checkpoint::RANKS_DIR)).unwrap();
        std::fs::copy(fixture("llama-gqa/config.json"), src.join("config.json")).unwrap();
        std::fs::copy(
            fixture(&format!("tp-ref/llama-gqa/tp2/{file}")),
            src.join(neuron_spec::checkpoint::METADATA_PATH),
        )
        .unwrap();
        for r in 0..2 {
            std::fs::copy(
                fixture(&format!("tp-ref/llama-gqa/tp2/rank{r}.safetensors")),
                src.join(neuron_spec::checkpoint::RANKS_DIR).join(neuron_spec::checkpoint::rank_file_name(r)),
            )
            .unwrap();
        }
        for m in [4, 8] {
            let out = tmp.path().join(format!("tp{m}"));
            reshard(&src, &out, m, &WriteOptions { allow_unexpected: true, ..Default::default() }).unwrap();
            let ck = ShardedCheckpoint::open(&out).unwrap();
            assert_eq!(ck.ranks[0].names().count(), if fuse { 15 } else { 19 });
            assert_equals_tp_ref(&out, m, &format!("{file} 2->{m}"));
        }
    }
}
