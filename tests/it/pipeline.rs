//! Pipeline stages: `shard --tp T --pp P` → consolidate is byte-exact, each stage holds only its layers,
//! forward from a staged checkpoint matches the golden, reshard between (tp, pp) pairs equals direct
//! sharding, multi-file HF sources work, every family of the table runs in two stages, and bad stage requests
//! fail clearly.

use crate::common;
use common::*;
use neuron_spec::checkpoint::{ShardedCheckpoint, WriteOptions};
use neuron_spec::ops::reshard::reshard;
use neuron_spec::spec::pipeline::layer_index;
use neuron_spec::{consolidate, shard, Error};
use std::fs;
use std::path::Path;

fn opts(pp: usize) -> WriteOptions {
    WriteOptions { pp: Some(pp), ..Default::default() }
}

fn golden_ids_and_logits(dir: &str) -> (Vec<Vec<i64>>, Vec<f32>) {
    let f = open(&format!("{dir}/golden.safetensors"));
    let ids = f.tensor("input_ids").unwrap();
    let s = ids.shape()[1];
    let ids = ids.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect();
    (ids, f.tensor("logits").unwrap().to_f32_vec())
}

/// The largest difference of the logits, hidden_0 (embedding) and hidden_1 (after layer 0) against the golden
/// (NaN-proof: a non-finite value fails).
fn forward_diff(dir: &Path, golden: &str) -> f32 {
    let (ids, logits) = golden_ids_and_logits(golden);
    let g = open(&format!("{golden}/golden.safetensors"));
    let out = neuron_spec_models::Source::open(dir)
        .and_then(|s| {
            neuron_spec_models::run(
                &s,
                &neuron_spec_models::Transport::threads_at_source_tp(),
                &neuron_spec_models::Forward::new(ids.to_vec()),
            )
        })
        .unwrap();
    let d = |a: &[f32], b: &[f32]| neuron_spec::compare::max_abs_diff(a, b).unwrap_or_else(|m| panic!("{m}"));
    let h1 = out.hidden_1.as_deref().unwrap();
    d(&out.logits, &logits)
        .max(d(&out.hidden_0, &g.tensor("hidden_0").unwrap().to_f32_vec()))
        .max(d(h1, &g.tensor("hidden_1").unwrap().to_f32_vec()))
}

#[test]
fn shard_with_stages_then_consolidate_is_byte_exact_and_forward_matches() {
    let want = fs::read(fixture("llama-gqa/model.safetensors")).unwrap();
    for tp in [2, 4, 8] {
        let tmp = tempfile::tempdir().unwrap();
        let (s, out) = (tmp.path().join("s"), tmp.path().join("hf"));
        shard(&fixture("llama-gqa"), &s, &layout("llama-gqa", tp, true), tp, &opts(2)).unwrap();
        for stage in 0..2 {
            assert!(s.join(format!("shards/mp_metadata_pp_rank_{stage}.json")).is_file());
            for r in 0..tp {
                assert!(s
                    .join(format!("shards/model/dp_rank_00_tp_rank_{r:02}_pp_rank_{stage:02}.safetensors"))
                    .is_file());
            }
        }
        let ck = ShardedCheckpoint::open(&s).unwrap();
        assert_eq!((ck.tp, ck.pp()), (tp, 2));
        // Stage 0: embed_tokens and layer 0; stage 1: layer 1, norm and lm_head. Metadata and files alike.
        for (stage, m) in ck.stages.iter().enumerate() {
            for n in m.parameters.keys() {
                let ok = match layer_index(n) {
                    Some(l) => l == stage,
                    None => (stage == 0) == n.starts_with("model.embed_tokens"),
                };
                assert!(ok, "stage {stage} lists {n}");
            }
            for spec in &m.model_weight_transformation_specs {
                assert_eq!(layer_index(&spec.module_fully_qualified_name), Some(stage));
            }
            for r in &ck.ranks {
                let names = r.files()[stage].source().names();
                let mut listed: Vec<&String> = m.parameters.keys().collect();
                let mut held: Vec<&String> = names.iter().collect();
                listed.sort();
                held.sort();
                assert_eq!(listed, held, "tp {tp} stage {stage}");
            }
        }
        consolidate(&s, &out, &WriteOptions::default()).unwrap();
        assert!(fs::read(out.join("model.safetensors")).unwrap() == want, "tp {tp} pp 2");
        let d = forward_diff(&s, "llama-gqa");
        eprintln!("tp {tp} pp 2: max |Δ| logits {d:.2e}");
        assert!(d <= 1e-4, "tp {tp}: {d}");
    }
}

#[test]
fn fewer_layers_than_stages_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("s");
    let e = shard(&fixture("llama-gqa"), &s, &layout("llama-gqa", 2, true), 2, &opts(3)).unwrap_err();
    assert!(
        matches!(&e, Error::Stage(m) if m.contains("2 decoder layers") && m.contains("3 pipeline stages")),
        "{e:?}"
    );
    assert!(!s.exists());
}

#[test]
fn reshard_2_2_to_4_1_equals_direct_sharding_at_tp_4() {
    for fuse in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, direct) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("d"));
        shard(&fixture("llama-gqa"), &a, &layout("llama-gqa", 2, fuse), 2, &opts(2)).unwrap();
        reshard(&a, &b, 4, &opts(1)).unwrap();
        shard(&fixture("llama-gqa"), &direct, &layout("llama-gqa", 4, fuse), 4, &WriteOptions::default()).unwrap();
        let (rb, rd) = (ShardedCheckpoint::open(&b).unwrap(), ShardedCheckpoint::open(&direct).unwrap());
        assert_eq!((rb.tp, rb.pp()), (4, 1));
        for r in 0..4 {
            assert_same_tensors(&rb.ranks[r], &rd.ranks[r], &format!("fuse {fuse} rank {r}"));
        }
        assert_eq!(rb.stages[0], rd.stages[0], "fuse {fuse}: metadata (with checksums) equals direct sharding's");
        // And back: (4, 1) → (2, 2) equals the first sharding.
        let c = tmp.path().join("c");
        reshard(&direct, &c, 2, &opts(2)).unwrap();
        let (rc, ra) = (ShardedCheckpoint::open(&c).unwrap(), ShardedCheckpoint::open(&a).unwrap());
        assert_eq!(rc.stages, ra.stages);
    }
}

#[test]
fn multi_file_hf_source_works_with_stages() {
    let want = fs::read(fixture("llama-gqa/model.safetensors")).unwrap();
    for tp in [2, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let (s, out) = (tmp.path().join("s"), tmp.path().join("hf"));
        shard(&fixture("llama-gqa-sharded"), &s, &layout("llama-gqa-sharded", tp, true), tp, &opts(2)).unwrap();
        consolidate(&s, &out, &WriteOptions::default()).unwrap();
        assert!(fs::read(out.join("model.safetensors")).unwrap() == want, "tp {tp}");
        assert!(forward_diff(&s, "llama-gqa") <= 1e-4);
    }
}

#[test]
fn tied_embeddings_across_stages_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, out) = (tmp.path().join("s"), tmp.path().join("hf"));
    shard(&fixture("llama-mha-tied"), &s, &layout("llama-mha-tied", 2, true), 2, &opts(2)).unwrap();
    let ck = ShardedCheckpoint::open(&s).unwrap();
    // The last stage holds the copy its output projection uses.
    assert!(ck.stages[1].parameters.contains_key("model.embed_tokens.weight"));
    drop(ck);
    consolidate(&s, &out, &WriteOptions::default()).unwrap();
    assert_same_tensors(&neuron_spec::format::HfCheckpoint::open(&out).unwrap(), &hf("llama-mha-tied"), "tied pp 2");
    assert!(forward_diff(&s, "llama-mha-tied") <= 1e-4);

    // One element of stage 1's copy changed (checksum refreshed, so only the copy check can see it).
    let f = s.join("shards/model/dp_rank_00_tp_rank_01_pp_rank_01.safetensors");
    let st = neuron_spec::format::SafetensorsFile::open(&f).unwrap();
    let t = st.tensor("model.embed_tokens.weight").unwrap();
    let mut bytes = fs::read(&f).unwrap();
    let at = bytes.windows(16).position(|w| w == &t.bytes()[..16]).unwrap();
    drop((t, st));
    bytes[at] ^= 1;
    fs::write(&f, &bytes).unwrap();
    let mpath = s.join("shards/mp_metadata_pp_rank_1.json");
    let mut m: serde_json::Value = serde_json::from_str(&fs::read_to_string(&mpath).unwrap()).unwrap();
    let w = neuron_spec::format::file_xxh3(&f).unwrap();
    m["rank_files"][1]["xxh3_64"] = format!("{:016x}", w.xxh3).into();
    fs::write(&mpath, serde_json::to_string(&m).unwrap()).unwrap();
    let out2 = tmp.path().join("hf2");
    let e = consolidate(&s, &out2, &WriteOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::Stage(m)
            if m.contains("model.embed_tokens.weight") && m.contains("stage 1") && m.contains("differs")),
        "{e:?}"
    );
    assert!(!out2.exists());
}

fn stage_params(stage: &neuron_spec::CheckpointMetadata) -> Vec<String> {
    let mut v: Vec<String> = stage.parameters.keys().cloned().collect();
    v.sort();
    v
}

/// Stage by stage, by hand: stage 0's model holds only the embedding and layer 0 (its metadata's parameters),
/// and the residual stream it hands over is transformers' output of layer 0 (the golden's hidden_1); stage 1
/// holds layer 1, the norm and lm_head, and from that hand-over alone gives the golden logits.
#[test]
fn each_stage_is_built_from_its_own_tensors_and_hands_over_the_residual_stream() {
    use neuron_spec_models::{ModelConfig, StageData};
    for (fixture_dir, tied) in [("llama-gqa", false), ("llama-mha-tied", true)] {
        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path().join("s");
        shard(&fixture(fixture_dir), &s, &layout(fixture_dir, 2, true), 2, &opts(2)).unwrap();
        let ck = ShardedCheckpoint::open(&s).unwrap();
        let cfg = ModelConfig::read(&s.join("config.json")).unwrap();
        let (ids, logits) = golden_ids_and_logits(fixture_dir);
        let g = open(&format!("{fixture_dir}/golden.safetensors"));
        let r0 = neuron_spec_models::Source::open(&s)
            .and_then(|s| {
                neuron_spec_models::run(
                    &s,
                    &neuron_spec_models::Transport::threads_at_source_tp(),
                    &neuron_spec_models::StageForward { stage: 0, input: StageData::Tokens(ids.clone()) },
                )
            })
            .unwrap();
        let mut p0 = r0.parameters.clone();
        p0.sort();
        assert_eq!(p0, stage_params(&ck.stages[0]));
        assert!(p0.iter().all(|n| n.starts_with("model.embed_tokens.") || layer_index(n) == Some(0)), "{p0:?}");
        let d = |a: &[f32], b: &[f32]| neuron_spec::compare::max_abs_diff(a, b).unwrap_or_else(|m| panic!("{m}"));
        let h1 = g.tensor("hidden_1").unwrap().to_f32_vec();
        let dh = d(&r0.output.values, &h1);
        assert!(dh <= 1e-4, "{fixture_dir}: stage 0's output against hidden_1: {dh}");
        assert_eq!(r0.output.shape, [ids.len(), ids[0].len(), cfg.llama.hidden_size]);
        // Stage 1 gets only the handed-over activations.
        let r1 = neuron_spec_models::Source::open(&s)
            .and_then(|s| {
                neuron_spec_models::run(
                    &s,
                    &neuron_spec_models::Transport::threads_at_source_tp(),
                    &neuron_spec_models::StageForward { stage: 1, input: StageData::Hidden(r0.output.clone()) },
                )
            })
            .unwrap();
        let mut p1 = r1.parameters.clone();
        p1.sort();
        assert_eq!(p1, stage_params(&ck.stages[1]));
        assert!(
            p1.iter().all(|n| layer_index(n) == Some(1)
                || n.starts_with("model.norm.")
                || n.starts_with("lm_head.")
                || (tied && n == "model.embed_tokens.weight")),
            "{p1:?}"
        );
        assert_eq!(
            tied,
            p1.iter().any(|n| n.starts_with("model.embed_tokens.")),
            "{fixture_dir}: the last stage's copy"
        );
        let dl = d(&r1.output.values, &logits);
        eprintln!("{fixture_dir} tp 2 pp 2 by hand: stage 0 vs hidden_1 {dh:.2e}, logits {dl:.2e}");
        assert!(dl <= 1e-4, "{fixture_dir}: {dl}");
        // A stage refuses the other kind of input.
        let e = neuron_spec_models::Source::open(&s)
            .and_then(|s| {
                neuron_spec_models::run(
                    &s,
                    &neuron_spec_models::Transport::threads_at_source_tp(),
                    &neuron_spec_models::StageForward { stage: 1, input: StageData::Tokens(ids.clone()) },
                )
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes hidden states"), "{e}");
        let e = neuron_spec_models::Source::open(&s)
            .and_then(|s| {
                neuron_spec_models::run(
                    &s,
                    &neuron_spec_models::Transport::threads_at_source_tp(),
                    &neuron_spec_models::StageForward { stage: 0, input: StageData::Hidden(r0.output) },
                )
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes token ids"), "{e}");
    }
}

/// A damaged rank file of stage 1 does not touch stage 0 (built and run from its own files), and fails the
/// whole run naming that file; nothing of stage 1 is needed to build stage 0.
#[test]
fn a_damaged_stage_1_file_leaves_stage_0_alone_and_fails_the_run_naming_it() {
    use neuron_spec_models::StageData;
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("s");
    shard(&fixture("llama-gqa"), &s, &layout("llama-gqa", 2, true), 2, &opts(2)).unwrap();
    let (ids, _) = golden_ids_and_logits("llama-gqa");
    let before = neuron_spec_models::Source::open(&s)
        .and_then(|s| {
            neuron_spec_models::run(
                &s,
                &neuron_spec_models::Transport::threads_at_source_tp(),
                &neuron_spec_models::StageForward { stage: 0, input: StageData::Tokens(ids.clone()) },
            )
        })
        .unwrap();
    let bad = s.join("shards/model/dp_rank_00_tp_rank_01_pp_rank_01.safetensors");
    let mut bytes = fs::read(&bad).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    fs::write(&bad, &bytes).unwrap();
    let after = neuron_spec_models::Source::open(&s)
        .and_then(|s| {
            neuron_spec_models::run(
                &s,
                &neuron_spec_models::Transport::threads_at_source_tp(),
                &neuron_spec_models::StageForward { stage: 0, input: StageData::Tokens(ids.clone()) },
            )
        })
        .unwrap();
    assert_eq!(before.output, after.output);
    let e = neuron_spec_models::Source::open(&s)
        .and_then(|s| {
            neuron_spec_models::run(
                &s,
                &neuron_spec_models::Transport::threads_at_source_tp(),
                &neuron_spec_models::Forward::new(ids.to_vec()),
            )
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("dp_rank_00_tp_rank_01_pp_rank_01.safetensors") && e.contains("xxh3"), "{e}");
    // Stage 1's file removed: stage 0 still builds and runs.
    fs::remove_file(&bad).unwrap();
    assert_eq!(
        neuron_spec_models::Source::open(&s)
            .and_then(|s| neuron_spec_models::run(
                &s,
                &neuron_spec_models::Transport::threads_at_source_tp(),
                &neuron_spec_models::StageForward { stage: 0, input: StageData::Tokens(ids.clone()) }
            ))
            .unwrap()
            .output,
        before.output
    );
    let e = neuron_spec_models::Source::open(&s)
        .and_then(|s| {
            neuron_spec_models::run(
                &s,
                &neuron_spec_models::Transport::threads_at_source_tp(),
                &neuron_spec_models::Forward::new(ids.to_vec()),
            )
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("dp_rank_00_tp_rank_01_pp_rank_01.safetensors"), "{e}");
}

/// optimum-neuron's own 2-stage `.pt` checkpoint goes through the same stage-by-stage path.
#[test]
fn the_reference_pt_checkpoint_runs_stage_by_stage() {
    use neuron_spec_models::StageData;
    let dir = fixture("on-ckpt/llama-gqa-tp4-pp2-plain");
    let ck = ShardedCheckpoint::open(&dir).unwrap();
    let (ids, logits) = golden_ids_and_logits("llama-gqa");
    let r0 = neuron_spec_models::Source::open(&dir)
        .and_then(|s| {
            neuron_spec_models::run(
                &s,
                &neuron_spec_models::Transport::threads_at_source_tp(),
                &neuron_spec_models::StageForward { stage: 0, input: StageData::Tokens(ids) },
            )
        })
        .unwrap();
    let r1 = neuron_spec_models::Source::open(&dir)
        .and_then(|s| {
            neuron_spec_models::run(
                &s,
                &neuron_spec_models::Transport::threads_at_source_tp(),
                &neuron_spec_models::StageForward { stage: 1, input: StageData::Hidden(r0.output.clone()) },
            )
        })
        .unwrap();
    for (r, m) in [(&r0, &ck.stages[0]), (&r1, &ck.stages[1])] {
        let mut p = r.parameters.clone();
        p.sort();
        assert_eq!(p, stage_params(m));
    }
    let d = neuron_spec::compare::max_abs_diff(&r1.output.values, &logits).unwrap();
    eprintln!("on-ckpt tp 4 pp 2 plain, stage by stage: max |Δ| logits {d:.2e}");
    assert!(d <= 1e-4, "{d}");
    assert!(forward_diff(&dir, "llama-gqa") <= 1e-4);
}

/// Every family of the table in two stages (tp 2, fused qkv): the staged checkpoint's forward equals
/// transformers' golden (logits, hidden_0, hidden_1) and consolidates back byte for byte.
#[test]
fn every_family_runs_in_two_stages() {
    for dir in ["llama3-rope", "qwen2", "mistral", "qwen3", "granite", "qwen3-moe", "phi3", "mixtral", "gemma3"] {
        let tmp = tempfile::tempdir().unwrap();
        let (s, out) = (tmp.path().join("s"), tmp.path().join("hf"));
        shard(&fixture(dir), &s, &layout(dir, 2, true), 2, &opts(2)).unwrap();
        assert_eq!(ShardedCheckpoint::open(&s).unwrap().pp(), 2, "{dir}");
        let d = forward_diff(&s, dir);
        eprintln!("{dir} tp 2 pp 2: max |Δ| {d:.2e}");
        assert!(d <= 1e-4, "{dir}: {d}");
        consolidate(&s, &out, &WriteOptions::default()).unwrap();
        let want = fs::read(fixture(&format!("{dir}/model.safetensors"))).unwrap();
        assert!(fs::read(out.join("model.safetensors")).unwrap() == want, "{dir}: consolidated bytes differ");
    }
}

/// A pp 2 checkpoint with an adapter (issue 20): `shard --pp 2 --adapter` keeps the adapter beside the stages
/// as one checkpoint at the same tp; forward (each stage loading its own modules' factors) equals peft's
/// logits, as does the PEFT adapter given at run time to a pp 2 base; resharded to pp 1 and to another tp at
/// pp 2, forward still equals peft's; through the binary, `forward --golden` passes.
#[test]
fn a_pp_2_checkpoint_with_an_adapter_runs_forward_like_peft() {
    use neuron_spec::lora::{import_adapter, LoraImportOptions, PeftAdapter};
    use neuron_spec::shard_with_adapters;
    use neuron_spec_models::{run, Adapter, Forward, Source, Transport};
    let golden = fixture("llama-gqa-lora/golden_lora.safetensors");
    let f = open("llama-gqa-lora/golden_lora.safetensors");
    let ids: Vec<Vec<i64>> =
        f.tensor("input_ids").unwrap().to_i64_vec().unwrap().chunks(7).map(<[i64]>::to_vec).collect();
    let peft_logits = f.tensor("logits").unwrap().to_f32_vec();
    let forward = |s: Source<'_>| run(&s, &Transport::threads_at_source_tp(), &Forward::new(ids.clone())).unwrap();
    let d = |a: &[f32]| neuron_spec::compare::max_abs_diff(a, &peft_logits).unwrap_or_else(|m| panic!("{m}"));
    for (tp, fuse) in [(2, true), (4, false)] {
        let what = format!("tp {tp} fuse {fuse} pp 2");
        let tmp = tempfile::tempdir().unwrap();
        let (s, base, r1, r4) =
            (tmp.path().join("s"), tmp.path().join("base"), tmp.path().join("r1"), tmp.path().join("r4"));
        let meta = layout("llama-gqa", tp, fuse);
        let peft = PeftAdapter::open(&fixture("llama-gqa-lora")).unwrap();
        let a = import_adapter(&meta, &peft, "default", LoraImportOptions::default()).unwrap();
        shard_with_adapters(&fixture("llama-gqa"), &s, &meta, tp, &[a], &opts(2)).unwrap();
        assert_eq!(ShardedCheckpoint::open(&s).unwrap().pp(), 2, "{what}");
        let with = forward(Source::open(&s).unwrap());
        assert!(d(&with.logits) <= 1e-4, "{what}: {}", d(&with.logits));
        // The adapter matters: the base alone is far from peft's logits.
        shard(&fixture("llama-gqa"), &base, &meta, tp, &opts(2)).unwrap();
        assert!(d(&forward(Source::open(&base).unwrap()).logits) > 1e-3, "{what}");
        let given =
            forward(Source::open(&base).unwrap().with_adapter(Adapter::peft(fixture("llama-gqa-lora"), "default")));
        assert!(given.logits == with.logits, "{what}: the adapter given at run time");
        reshard(&s, &r1, tp, &opts(1)).unwrap();
        assert!(d(&forward(Source::open(&r1).unwrap()).logits) <= 1e-4, "{what} resharded to pp 1");
        reshard(&s, &r4, 8 / tp, &opts(2)).unwrap();
        assert!(d(&forward(Source::open(&r4).unwrap()).logits) <= 1e-4, "{what} resharded to tp {}", 8 / tp);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_neuron-spec"))
            .args(["forward", s.to_str().unwrap(), "--golden", golden.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The runtime's one capability check (`runtime::refusal`): the only cell refused is a staged checkpoint under
/// MPI (one process per rank reads one rank file), with its reason; every task runs every other cell.
#[test]
fn the_runtime_refuses_only_a_staged_checkpoint_under_mpi() {
    use neuron_spec_models::runtime::{refusal, Source, TaskKind, TransportKind};
    let staged = Source::open(&fixture("on-ckpt/llama-gqa-tp4-pp2-plain")).unwrap();
    let sharded = Source::open(&fixture("on-ckpt/llama-gqa-tp2-plain")).unwrap();
    let hf = Source::open(&fixture("llama-gqa")).unwrap();
    for task in [TaskKind::Forward, TaskKind::Train, TaskKind::Generate] {
        for t in [TransportKind::Threads, TransportKind::Mpi] {
            assert_eq!(refusal(task, &hf, t), None, "{task:?} {t:?} HF");
            assert_eq!(refusal(task, &sharded, t), None, "{task:?} {t:?} sharded");
        }
        assert_eq!(refusal(task, &staged, TransportKind::Threads), None, "{task:?} staged on threads");
        let why = refusal(task, &staged, TransportKind::Mpi).unwrap();
        assert!(why.contains("pipeline stages") && why.contains("--pp 1"), "{why}");
    }
}

/// `generate` runs a staged checkpoint (its stages loaded as one model per TP rank): the greedy ids after the
/// text fixture's prompt are transformers' (`text/generate_golden.json`), as from the HF folder.
#[test]
fn generate_runs_a_pp_2_checkpoint_like_transformers() {
    use neuron_spec_models::{generate_text, GenerateOptions, Sampling, Source, Transport};
    let g: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixture("text/generate_golden.json")).unwrap()).unwrap();
    let golden: Vec<i64> = g["plain"]["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let s = tmp.path().join("s");
    shard(&fixture("llama-gqa"), &s, &layout("llama-gqa", 2, true), 2, &opts(2)).unwrap();
    let o = GenerateOptions { max_new_tokens: 20, eos_token_ids: vec![], sampling: Sampling::Greedy };
    let source = Source::open(&s).unwrap();
    let prompt = g["prompt"].as_str().unwrap();
    let out = generate_text(&source, &Transport::threads_at_source_tp(), prompt, false, &o, &mut |_| Ok(())).unwrap();
    assert_eq!(out.ids, golden);
}
