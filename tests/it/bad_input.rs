//! Hostile and broken inputs, through the binary: every case must exit 1 (not crash), print one line naming
//! the cause, leave nothing at the destination (nor a `.partial-` directory next to it) and never panic.
//!
//! Each bad input is a copy of a fixture, corrupted in a temporary directory.

use crate::common;
use common::*;
use neuron_spec::checkpoint::{rank_file_name, WriteOptions, METADATA_PATH, RANKS_DIR};
use neuron_spec::shard;
use neuron_spec::TensorSource;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------------------
// The shared assertion.

fn cli<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(env!("CARGO_BIN_EXE_neuron-spec"));
    c.args(args).env_remove("NEURON_SPEC_FAIL_AFTER_BYTES").env_remove("NEURON_SPEC_SLOW_WRITE_MS");
    c
}

/// Every file under `p` with its bytes (empty when `p` does not exist).
fn snapshot(p: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        if p.is_dir() {
            out.insert(p.strip_prefix(root).unwrap().join(""), vec![]);
            for e in fs::read_dir(p).unwrap() {
                walk(root, &e.unwrap().path(), out);
            }
        } else if p.exists() {
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), fs::read(p).unwrap());
        }
    }
    walk(p, p, &mut out);
    out
}

fn partials_in(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.contains(".partial-") || n.contains(".old-"))
            .collect(),
        Err(_) => vec![],
    }
}

/// No bad input may keep the binary busy longer than this (a missing size limit once made a case run 7 minutes).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `cmd` to completion, killing it and failing the test when it runs longer than `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run neuron-spec");
    let mut pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipes.0.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipes.1.read_to_end(&mut v);
        v
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still ran after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// The timeout itself: a command that hangs is killed and fails the test, quickly.
#[test]
#[should_panic(expected = "killed")]
fn a_command_that_runs_past_the_timeout_is_killed() {
    output_within(Command::new("sleep").arg("60"), Duration::from_millis(300));
}

/// Runs `cmd` and asserts the four properties of a clean failure: exit code 1, one `error: ...` line on
/// stderr containing every word of `words`, `dest` as it was before (absent, or untouched) with no temporary
/// directory next to it, and no panic. Returns the message.
fn fails(cmd: &mut Command, dest: &Path, words: &[&str]) -> String {
    let before = snapshot(dest);
    let existed = dest.exists();
    let o = output_within(cmd, COMMAND_TIMEOUT);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    eprintln!("{}", err.trim_end()); // shown with --nocapture: the messages users get
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(o.status.code(), Some(1), "exit status {:?} (not 1); stderr: {err}", o.status);
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for w in words {
        assert!(err.contains(w), "the message should name {w:?}: {err}");
    }
    assert_eq!(dest.exists(), existed, "destination {} appeared or vanished", dest.display());
    assert!(snapshot(dest) == before, "destination {} was modified", dest.display());
    if let Some(parent) = dest.parent() {
        let left = partials_in(parent);
        assert!(left.is_empty(), "temporary directories left in {}: {left:?}", parent.display());
    }
    err.trim_end().to_string()
}

/// A value clap's parsers refuse: exit 2 (a usage error), the cause named on the first line, nothing written.
fn usage_fails(cmd: &mut Command, dest: &Path, words: &[&str]) {
    let o = cmd.output().expect("run neuron-spec");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(o.status.code(), Some(2), "exit status {:?} (not 2); stderr: {err}", o.status);
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{err}");
    for w in words {
        assert!(first.contains(w), "the message should name {w:?}: {err}");
    }
    assert!(!dest.exists(), "destination {} appeared", dest.display());
}

// ---------------------------------------------------------------------------------------------------------
// Building bad inputs.

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A temporary directory with a copy of the fixture `name` in `<tmp>/in`.
fn copy_fixture(name: &str) -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    copy_dir(&fixture(name), &dir);
    (tmp, dir)
}

/// A temporary directory with `llama-gqa` sharded at `tp` in `<tmp>/in`.
fn sharded(tp: usize, fuse: bool) -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    shard(&fixture("llama-gqa"), &dir, &layout("llama-gqa", tp, fuse), tp, &WriteOptions::default()).unwrap();
    (tmp, dir)
}

/// The header and data section of a safetensors file.
fn read_st(path: &Path) -> (Map<String, Value>, Vec<u8>) {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn write_st(path: &Path, header: &Map<String, Value>, data: &[u8]) {
    let mut h = serde_json::to_vec(header).unwrap();
    while h.len().checked_rem(8) != Some(0) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    fs::write(path, out).unwrap();
}

/// Rewrites a safetensors file's header with `edit`, keeping its data.
fn edit_header(path: &Path, edit: impl FnOnce(&mut Map<String, Value>)) {
    let (mut h, data) = read_st(path);
    edit(&mut h);
    write_st(path, &h, &data);
}

/// Renames a tensor in a header (keeping its data and place).
fn rename_tensor(h: &mut Map<String, Value>, from: &str, to: &str) {
    let mut out = Map::new();
    for (k, v) in std::mem::take(h) {
        out.insert(if k == from { to.to_string() } else { k }, v);
    }
    *h = out;
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Recomputes the size and checksum the metadata records for rank `rank`.
fn refresh_checksum(dir: &Path, rank: usize) {
    let w = neuron_spec::format::file_xxh3(&dir.join(RANKS_DIR).join(rank_file_name(rank))).unwrap();
    edit_json(&dir.join(METADATA_PATH), |m| {
        m["rank_files"][rank]["size"] = json!(w.size);
        m["rank_files"][rank]["xxh3_64"] = json!(format!("{:016x}", w.xxh3));
    });
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const MODEL: &str = "model.safetensors";
const UP: &str = "model.layers.0.mlp.up_proj.weight";

fn shard_cmd(input: &Path, out: &Path, tp: &str) -> Command {
    cli(["shard", s(input), s(out), "--tp", tp])
}

fn consolidate_cmd(input: &Path, out: &Path) -> Command {
    cli(["consolidate", s(input), s(out)])
}

// ---------------------------------------------------------------------------------------------------------
// Broken safetensors files.

#[test]
fn truncated_safetensors() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    let bytes = fs::read(&f).unwrap();
    fs::write(&f, &bytes[..bytes.len() - 1000]).unwrap();
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "invalid safetensors", "beyond the data"]);
}

#[test]
fn file_shorter_than_the_header_length() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    fs::write(dir.join(MODEL), b"\x10\x00").unwrap();
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "shorter than the 8-byte header length"]);
}

#[test]
fn corrupted_header_json() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    let mut bytes = fs::read(&f).unwrap();
    bytes[8] = b'['; // `{"...` becomes `["...`
    bytes[20] = b'}';
    fs::write(&f, bytes).unwrap();
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "header is not a JSON object"]);
}

#[test]
fn header_length_beyond_the_file() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    let mut bytes = fs::read(&f).unwrap();
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    fs::write(&f, bytes).unwrap();
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "header length", "goes beyond the file"]);
}

#[test]
fn header_length_near_u64_max() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    let mut bytes = fs::read(&f).unwrap();
    bytes[..8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    fs::write(&f, bytes).unwrap();
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "header length"]);
}

#[test]
fn overlapping_data_offsets() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    // Two equally sized tensors: point the second at the first one's bytes.
    let (h, data) = read_st(&f);
    let a = h["model.layers.0.self_attn.k_proj.weight"]["data_offsets"].clone();
    let mut h2 = h.clone();
    h2["model.layers.0.self_attn.v_proj.weight"]["data_offsets"] = a;
    write_st(&f, &h2, &data);
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "overlap"]);
}

#[test]
fn out_of_range_data_offsets() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    let (_, data) = read_st(&f);
    let n = data.len() as u64;
    edit_header(&f, |h| {
        let len = 64 * 4;
        h["model.norm.weight"]["data_offsets"] = json!([n, n + len]);
    });
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "model.norm.weight", "data_offsets", "beyond the data"]);
}

#[test]
fn data_offsets_that_disagree_with_the_shape() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    edit_header(&f, |h| h["model.norm.weight"]["shape"] = json!([63]));
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "model.norm.weight", "needs 252"]);
}

/// Rewrites a safetensors file tensor by tensor (name, header entry without offsets, bytes), laying the data
/// out again.
fn rewrite_tensors(path: &Path, edit: impl FnOnce(&mut Vec<(String, Value, Vec<u8>)>)) {
    let (h, data) = read_st(path);
    let mut tensors: Vec<(String, Value, Vec<u8>)> = h
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, mut v)| {
            let [a, b] = [0, 1].map(|i| v["data_offsets"][i].as_u64().unwrap() as usize);
            v.as_object_mut().unwrap().remove("data_offsets");
            (k, v, data[a..b].to_vec())
        })
        .collect();
    edit(&mut tensors);
    let mut header = Map::new();
    let mut out = Vec::new();
    for (k, mut v, bytes) in tensors {
        v["data_offsets"] = json!([out.len(), out.len() + bytes.len()]);
        out.extend_from_slice(&bytes);
        header.insert(k, v);
    }
    write_st(path, &header, &out);
}

#[test]
fn shape_whose_size_overflows() {
    // A zero dimension makes the size 0, but the other dimensions' product overflows: planning multiplies them.
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    rewrite_tensors(&f, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.1["shape"] = json!([0, 1u64 << 40, 1u64 << 40]);
        t.2.clear();
    });
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "model.norm.weight", "overflows"]);
}

#[test]
fn unknown_dtype() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    edit_header(&f, |h| h["model.norm.weight"]["dtype"] = json!("F8_E4M3"));
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "model.norm.weight", "unsupported dtype F8_E4M3"]);
}

#[test]
fn no_checkpoint_in_the_directory() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    fs::remove_file(dir.join(MODEL)).unwrap();
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[MODEL, "model.safetensors.index.json"]);
}

// ---------------------------------------------------------------------------------------------------------
// Broken HF indexes.

const INDEX: &str = "model.safetensors.index.json";

#[test]
fn index_names_a_missing_file() {
    let (tmp, dir) = copy_fixture("llama-gqa-sharded");
    fs::remove_file(dir.join("model-00007-of-00014.safetensors")).unwrap();
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[INDEX, "model-00007-of-00014.safetensors", "does not exist"]);
}

#[test]
fn tensor_in_two_files() {
    let (tmp, dir) = copy_fixture("llama-gqa-sharded");
    // File 7 holds model.layers.0.input_layernorm.weight; add a copy of it to file 8.
    let (h7, d7) = read_st(&dir.join("model-00007-of-00014.safetensors"));
    let f8 = dir.join("model-00008-of-00014.safetensors");
    let (mut h8, mut d8) = read_st(&f8);
    let name = "model.layers.0.input_layernorm.weight";
    let [a, b] = [0, 1].map(|i| h7[name]["data_offsets"][i].as_u64().unwrap() as usize);
    let start = d8.len();
    d8.extend_from_slice(&d7[a..b]);
    let mut entry = h7[name].clone();
    entry["data_offsets"] = json!([start, start + (b - a)]);
    h8.insert(name.to_string(), entry);
    write_st(&f8, &h8, &d8);
    let out = tmp.path().join("out");
    fails(
        &mut shard_cmd(&dir, &out, "2"),
        &out,
        &[name, "model-00007-of-00014.safetensors", "model-00008-of-00014.safetensors", "also in"],
    );
}

#[test]
fn index_that_does_not_parse() {
    let (tmp, dir) = copy_fixture("llama-gqa-sharded");
    let text = fs::read_to_string(dir.join(INDEX)).unwrap();
    fs::write(dir.join(INDEX), &text[..text.len() / 2]).unwrap();
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[INDEX, "invalid JSON"]);
}

#[test]
fn index_naming_a_file_outside_the_directory() {
    let (tmp, dir) = copy_fixture("llama-gqa-sharded");
    edit_json(&dir.join(INDEX), |v| v["weight_map"]["model.norm.weight"] = json!("../model.safetensors"));
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &[INDEX, "model.norm.weight", "not a file in this directory"]);
}

// ---------------------------------------------------------------------------------------------------------
// Broken sharded checkpoints.

#[test]
fn missing_rank_file() {
    let (tmp, dir) = sharded(4, true);
    fs::remove_file(dir.join(RANKS_DIR).join(rank_file_name(2))).unwrap();
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["missing rank files", &rank_file_name(2), "tp 4"]);
}

#[test]
fn extra_rank_file() {
    let (tmp, dir) = sharded(2, true);
    let r = dir.join(RANKS_DIR);
    fs::copy(r.join(rank_file_name(1)), r.join(rank_file_name(2))).unwrap();
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["extra rank files", &rank_file_name(2), "tp 2"]);
}

#[test]
fn metadata_with_inconsistent_tp_sizes() {
    let (tmp, dir) = sharded(4, true);
    edit_json(&dir.join(METADATA_PATH), |m| m["tp_size"] = json!(2));
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["mp_metadata_pp_rank_0.json", "inconsistent tp sizes 2 and 4"]);
}

#[test]
fn metadata_of_another_tp_size() {
    // Every tp field says 2, but the rank files are those of tp 4.
    let (tmp, dir) = sharded(4, true);
    edit_json(&dir.join(METADATA_PATH), |m| {
        m["tp_size"] = json!(2);
        for p in m["parameters"].as_object_mut().unwrap().values_mut() {
            if p.get("num_partitions").is_some() {
                p["num_partitions"] = json!(2);
            }
        }
        for module in m["model_weight_transformation_specs"].as_array_mut().unwrap() {
            for spec in module["specs"].as_array_mut().unwrap() {
                spec[1]["tp_size"] = json!(2);
            }
        }
    });
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["metadata says tp 2", "extra rank files", &rank_file_name(3)]);
}

#[test]
fn metadata_of_a_larger_tp_size_lists_a_few_missing_files() {
    let (tmp, dir) = sharded(2, true);
    edit_json(&dir.join(METADATA_PATH), |m| {
        m["tp_size"] = json!(64);
        for p in m["parameters"].as_object_mut().unwrap().values_mut() {
            if p.get("num_partitions").is_some() {
                p["num_partitions"] = json!(64);
            }
        }
        for module in m["model_weight_transformation_specs"].as_array_mut().unwrap() {
            for spec in module["specs"].as_array_mut().unwrap() {
                spec[1]["tp_size"] = json!(64);
            }
        }
    });
    let out = tmp.path().join("out");
    let msg = fails(
        &mut consolidate_cmd(&dir, &out),
        &out,
        &["metadata says tp 64", "missing rank files", &rank_file_name(2), "and 54 more"],
    );
    assert!(!msg.contains(&rank_file_name(63)), "{msg}");
}

#[test]
fn metadata_with_absurd_tp_size() {
    let (tmp, dir) = sharded(2, true);
    edit_json(&dir.join(METADATA_PATH), |m| {
        m["tp_size"] = json!(1u64 << 60);
        for p in m["parameters"].as_object_mut().unwrap().values_mut() {
            p.as_object_mut().unwrap().remove("num_partitions");
        }
        m["model_weight_transformation_specs"] = json!([]);
    });
    let out = tmp.path().join("out");
    fails(
        &mut consolidate_cmd(&dir, &out),
        &out,
        &["mp_metadata_pp_rank_0.json", "tp size 1152921504606846976 is out of range (1 to 4096)"],
    );
}

#[test]
fn metadata_with_tp_size_zero() {
    let (tmp, dir) = sharded(2, true);
    edit_json(&dir.join(METADATA_PATH), |m| {
        m["tp_size"] = json!(0);
        for p in m["parameters"].as_object_mut().unwrap().values_mut() {
            p.as_object_mut().unwrap().remove("num_partitions");
        }
        m["model_weight_transformation_specs"] = json!([]);
        m.as_object_mut().unwrap().remove("rank_files");
    });
    for r in 0..2 {
        fs::remove_file(dir.join(RANKS_DIR).join(rank_file_name(r))).unwrap();
    }
    // `inspect` reads rank 0's tensors: it must not index an empty list of ranks.
    let missing = tmp.path().join("nothing");
    let words = ["mp_metadata_pp_rank_0.json", "tp size 0 is out of range (1 to 4096)"];
    fails(&mut cli(["inspect", s(&dir)]), &missing, &words);
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &words);
}

#[test]
fn unknown_spec_class() {
    let (tmp, dir) = sharded(2, true);
    edit_json(&dir.join(METADATA_PATH), |m| {
        m["model_weight_transformation_specs"][0]["specs"][0][0] = json!("RotaryQkvSpec");
    });
    let out = tmp.path().join("out");
    fails(
        &mut consolidate_cmd(&dir, &out),
        &out,
        &["mp_metadata_pp_rank_0.json", "unknown spec class \"RotaryQkvSpec\""],
    );
}

#[test]
fn future_format_version() {
    let (tmp, dir) = sharded(2, true);
    edit_json(&dir.join(METADATA_PATH), |m| m["format_version"] = json!(99));
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["mp_metadata_pp_rank_0.json", "format_version 99", "newer"]);
}

#[test]
fn metadata_that_does_not_parse() {
    let (tmp, dir) = sharded(2, true);
    let m = dir.join(METADATA_PATH);
    let text = fs::read_to_string(&m).unwrap();
    fs::write(&m, text.replace("\"parameters\"", "\"parameters\" ::")).unwrap();
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["mp_metadata_pp_rank_0.json", "expected value at line 4 column"]);
}

#[test]
fn metadata_missing_parameters() {
    let (tmp, dir) = sharded(2, true);
    edit_json(&dir.join(METADATA_PATH), |m| {
        m.as_object_mut().unwrap().remove("parameters");
    });
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["mp_metadata_pp_rank_0.json", "missing field `parameters`"]);
}

#[test]
fn damaged_rank_file() {
    let (tmp, dir) = sharded(2, true);
    let f = dir.join(RANKS_DIR).join(rank_file_name(1));
    let mut bytes = fs::read(&f).unwrap();
    let i = bytes.len() - 100;
    bytes[i] ^= 0x40;
    fs::write(&f, bytes).unwrap();
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &[&rank_file_name(1), "damaged rank file", "xxh3-64"]);
}

#[test]
fn damaged_rank_file_header_is_reported_as_damage() {
    // A flipped byte in the header: the checksum names the damage before the header is parsed.
    let (tmp, dir) = sharded(2, true);
    let f = dir.join(RANKS_DIR).join(rank_file_name(0));
    let mut bytes = fs::read(&f).unwrap();
    bytes[9] = b'!';
    fs::write(&f, bytes).unwrap();
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &[&rank_file_name(0), "damaged rank file"]);
}

#[test]
fn rank_file_of_another_tp_size() {
    // Rank 1 of tp 4 replaced by rank 1 of tp 2, checksum updated: the shapes disagree with the metadata.
    let (tmp, dir) = sharded(4, true);
    let (_t2, other) = sharded(2, true);
    fs::copy(other.join(RANKS_DIR).join(rank_file_name(1)), dir.join(RANKS_DIR).join(rank_file_name(1))).unwrap();
    refresh_checksum(&dir, 1);
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["rank 1", "expected shape"]);
}

#[test]
fn rank_file_missing_a_tensor() {
    // A renamed tensor: the missing one is named (a tensor the metadata does not describe is
    // rank_file_with_an_extra_tensor_is_not_dropped_silently).
    let (tmp, dir) = sharded(2, true);
    let f = dir.join(RANKS_DIR).join(rank_file_name(1));
    edit_header(&f, |h| rename_tensor(h, "model.norm.weight", "model.norm.weight_extra"));
    refresh_checksum(&dir, 1);
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["rank 1: missing tensors: model.norm.weight"]);
    let out2 = tmp.path().join("out2");
    fails(
        &mut cli(["reshard", s(&dir), s(&out2), "--tp", "4"]),
        &out2,
        &["rank 1", "missing tensors: model.norm.weight"],
    );
}

#[test]
fn rank_file_with_an_extra_tensor_is_not_dropped_silently() {
    let (tmp, dir) = sharded(2, true);
    let f = dir.join(RANKS_DIR).join(rank_file_name(0));
    let (mut h, mut data) = read_st(&f);
    let start = data.len();
    data.extend_from_slice(&[0u8; 16]);
    h.insert(
        "model.layers.0.self_attn.rotary.inv_freq".into(),
        json!({"dtype": "F32", "shape": [4], "data_offsets": [start, start + 16]}),
    );
    write_st(&f, &h, &data);
    refresh_checksum(&dir, 0);
    let out = tmp.path().join("out");
    let inv_freq = "model.layers.0.self_attn.rotary.inv_freq";
    let words =
        [&rank_file_name(0), "unexpected tensors", inv_freq, "metadata does not describe", "--allow-unexpected"];
    fails(&mut consolidate_cmd(&dir, &out), &out, &words);
    let out2 = tmp.path().join("out2");
    fails(&mut cli(["reshard", s(&dir), s(&out2), "--tp", "4"]), &out2, &words);
    // Accepting the loss is explicit.
    let o = cli(["consolidate", s(&dir), s(&out), "--allow-unexpected"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_tensors(&neuron_spec::format::HfCheckpoint::open(&out).unwrap(), &hf("llama-gqa"), "allow-unexpected");
}

#[test]
fn fused_dims_not_summing() {
    let (tmp, dir) = sharded(2, true);
    edit_json(&dir.join(METADATA_PATH), |m| {
        for module in m["model_weight_transformation_specs"].as_array_mut().unwrap() {
            for spec in module["specs"].as_array_mut().unwrap() {
                if spec[0] == "FusedLinearsSpec" {
                    spec[1]["original_dims"] = json!([96, 100]);
                }
            }
        }
    });
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["FusedLinearsSpec", "original_dims", "gate_up_proj.weight"]);
}

#[test]
fn kv_replicas_that_differ() {
    // tp 4 with 2 kv heads: multiplier 2, rank 2 holds a replica of rank 0's kv head.
    let (tmp, dir) = sharded(4, false);
    let f = dir.join(RANKS_DIR).join(rank_file_name(2));
    let (h, mut data) = read_st(&f);
    let a = h["model.layers.1.self_attn.qkv_proj.weight_k"]["data_offsets"][0].as_u64().unwrap() as usize + 4 * 5;
    let x = f32::from_le_bytes(data[a..a + 4].try_into().unwrap());
    let v = x + 0.5;
    data[a..a + 4].copy_from_slice(&v.to_le_bytes());
    write_st(&f, &h, &data);
    refresh_checksum(&dir, 2);
    let out = tmp.path().join("out");
    let msg = fails(
        &mut consolidate_cmd(&dir, &out),
        &out,
        &["model.layers.1.self_attn.k_proj.weight", "rank 2", "rank 0", "by up to", "--kv-replicas"],
    );
    let diff: f32 = msg.split("by up to ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    assert!((diff - 0.5).abs() < 1e-6, "max difference {diff}: {msg}");

    // Accepting the difference works, and keeps or averages the copies.
    let original = hf("llama-gqa").tensor("model.layers.1.self_attn.k_proj.weight").unwrap().to_f32_vec();
    for (mode, expected_delta) in [("first", 0.0f32), ("mean", (v - x) / 2.0)] {
        let out = tmp.path().join(format!("out-{mode}"));
        let o = cli(["consolidate", s(&dir), s(&out), "--kv-replicas", mode]).output().unwrap();
        assert!(o.status.success(), "{mode}: {}", String::from_utf8_lossy(&o.stderr));
        let back = neuron_spec::format::HfCheckpoint::open(&out).unwrap();
        let k = back.tensor("model.layers.1.self_attn.k_proj.weight").unwrap().to_f32_vec();
        for (i, (x, y)) in k.iter().zip(&original).enumerate() {
            let d = if i == 5 { expected_delta } else { 0.0 };
            assert!((x - y - d).abs() < 1e-6, "{mode}: element {i}: {x} vs {y}");
        }
    }
}

#[test]
fn kv_replicas_that_differ_stop_a_reshard() {
    let (tmp, dir) = sharded(4, true);
    let f = dir.join(RANKS_DIR).join(rank_file_name(2));
    let (h, mut data) = read_st(&f);
    // weight_qkv of rank 2 at tp 4: 16 query rows, then its k rows (a replica of rank 0's kv head).
    let a =
        h["model.layers.0.self_attn.qkv_proj.weight_qkv"]["data_offsets"][0].as_u64().unwrap() as usize + 16 * 64 * 4;
    let x = f32::from_le_bytes(data[a..a + 4].try_into().unwrap());
    data[a..a + 4].copy_from_slice(&(x + 0.25).to_le_bytes());
    write_st(&f, &h, &data);
    refresh_checksum(&dir, 2);
    let out = tmp.path().join("out");
    fails(&mut cli(["reshard", s(&dir), s(&out), "--tp", "2"]), &out, &["k_proj.weight", "rank 2", "rank 0"]);
    let o = cli(["reshard", s(&dir), s(&out), "--tp", "2", "--kv-replicas", "first"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // "first" keeps rank 0's copy, the untouched one: the resharded checkpoint is the original model's tp 2.
    let hf_out = tmp.path().join("hf");
    let o = consolidate_cmd(&out, &hf_out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_tensors(&neuron_spec::format::HfCheckpoint::open(&hf_out).unwrap(), &hf("llama-gqa"), "reshard first");
}

// ---------------------------------------------------------------------------------------------------------
// Bad arguments and configs.

#[test]
fn tp_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    usage_fails(&mut shard_cmd(&fixture("llama-gqa"), &out, "0"), &out, &["--tp", "between 1 and 4096"]);
}

#[test]
fn absurd_tp() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut c = cli(["shard", s(&fixture("llama-gqa")), s(&out), "--tp", "1000000000000000000", "--plain-attention"]);
    usage_fails(&mut c, &out, &["--tp", "between 1 and 4096", "1000000000000000000"]);
}

#[test]
fn reshard_to_an_absurd_tp() {
    // Plain attention has no GQA spec to reject the tp size first.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    let meta =
        neuron_spec_models::layout_of_dir(&fixture("llama-gqa"), 2, neuron_spec_models::QkvLayout::Plain).unwrap();
    shard(&fixture("llama-gqa"), &dir, &meta, 2, &WriteOptions::default()).unwrap();
    let out = tmp.path().join("out");
    usage_fails(
        &mut cli(["reshard", s(&dir), s(&out), "--tp", "1000000000000000000"]),
        &out,
        &["--tp", "between 1 and 4096", "1000000000000000000"],
    );
}

#[test]
fn heads_not_divisible_by_tp() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&fixture("llama-gqa"), &out, "3"), &out, &["num_attention_heads", "not divisible by tp 3"]);
}

#[test]
fn reshard_to_a_tp_size_heads_do_not_divide() {
    let (tmp, dir) = sharded(2, true);
    let out = tmp.path().join("out");
    fails(
        &mut cli(["reshard", s(&dir), s(&out), "--tp", "3"]),
        &out,
        &["num_attention_heads", "8 heads are not divisible by tp 3"],
    );
}

#[test]
fn invalid_max_shard_size() {
    let (tmp, dir) = sharded(2, true);
    let out = tmp.path().join("out");
    let mut c = cli(["consolidate", s(&dir), s(&out), "--max-shard-size", "5 parsecs"]);
    usage_fails(&mut c, &out, &["invalid size", "5 parsecs"]);
}

#[test]
fn missing_tensor_with_did_you_mean() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    edit_header(&dir.join(MODEL), |h| rename_tensor(h, UP, "model.layers.0.mlp.up_prj.weight"));
    let out = tmp.path().join("out");
    fails(
        &mut shard_cmd(&dir, &out, "2"),
        &out,
        &["missing tensors: model.layers.0.mlp.up_proj.weight (did you mean model.layers.0.mlp.up_prj.weight?)"],
    );
    // The present member of the same fused group is not reported as unexpected; the checkpoint is named.
    let msg = fails(&mut cli(["plan", s(&dir), "--tp", "2"]), &out, &[s(&dir), "up_prj"]);
    assert!(!msg.contains("gate_proj"), "{msg}");
    assert!(msg.ends_with("unexpected tensors: model.layers.0.mlp.up_prj.weight"), "{msg}");
}

#[test]
fn unexpected_extra_tensor() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let f = dir.join(MODEL);
    let (mut h, mut data) = read_st(&f);
    let start = data.len();
    data.extend_from_slice(&[0u8; 8]);
    h.insert(
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        json!({"dtype": "F32", "shape": [2], "data_offsets": [start, start + 8]}),
    );
    write_st(&f, &h, &data);
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &["unexpected tensors: model.layers.0.self_attn.rotary_emb.inv_freq"]);
}

#[test]
fn config_missing_num_attention_heads() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    edit_json(&dir.join("config.json"), |c| {
        c.as_object_mut().unwrap().remove("num_attention_heads");
    });
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &["config.json", "missing field `num_attention_heads`"]);
}

#[test]
fn config_with_absurd_sizes() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    edit_json(&dir.join("config.json"), |c| {
        c["num_attention_heads"] = json!(1u64 << 62);
        c["num_key_value_heads"] = json!(1u64 << 61);
        c["head_dim"] = json!(1u64 << 40);
    });
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &["num_attention_heads", "is above the supported maximum 4096"]);
}

#[test]
fn config_with_absurd_layer_count() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    edit_json(&dir.join("config.json"), |c| c["num_hidden_layers"] = json!(1u64 << 50));
    let out = tmp.path().join("out");
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &["num_hidden_layers", "is above the supported maximum 16384"]);
}

// ---------------------------------------------------------------------------------------------------------
// Destinations.

#[test]
fn destination_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep"), b"precious").unwrap();
    fails(&mut shard_cmd(&fixture("llama-gqa"), &out, "2"), &out, &["out", "destination exists", "--force"]);
}

#[test]
fn failed_forced_write_keeps_the_old_destination() {
    // Valid input; the forced write fails midway (rank 1 meets a full disk) after rank 0 was written.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep"), b"precious").unwrap();
    let mut c = cli(["shard", s(&fixture("llama-gqa")), s(&out), "--tp", "2", "--force"]);
    c.env("NEURON_SPEC_FAIL_AFTER_BYTES", "300000");
    fails(&mut c, &out, &[&rank_file_name(1), "No space left on device"]);
    assert_eq!(fs::read(out.join("keep")).unwrap(), b"precious");
}

/// Whether this process can write into `dir` despite its permissions (root can).
fn writable_anyway(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    let ok = fs::write(&probe, b"").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

#[test]
fn read_only_destination_parent() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let ro = tmp.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let out = ro.join("out");
    if writable_anyway(&ro) {
        eprintln!("note: running as root, which chmod 555 does not stop; read_only_destination_parent checks nothing here (destination_parent_is_a_file covers the same path as root)");
    } else {
        fails(&mut shard_cmd(&fixture("llama-gqa"), &out, "2"), &out, &[s(&out), "Permission denied"]);
    }
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn destination_parent_is_a_file() {
    // Works as root too: the output directory cannot be created under a regular file.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    let out = file.join("out");
    fails(&mut shard_cmd(&fixture("llama-gqa"), &out, "2"), &out, &[s(&out), "Not a directory"]);
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

#[test]
fn disk_full_while_sharding() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // Rank 0 fits, rank 1 does not.
    let mut c = shard_cmd(&fixture("llama-gqa"), &out, "2");
    c.env("NEURON_SPEC_FAIL_AFTER_BYTES", "300000");
    fails(&mut c, &out, &[&rank_file_name(1), "No space left on device"]);
}

#[test]
fn disk_full_while_consolidating() {
    let (tmp, dir) = sharded(2, true);
    let out = tmp.path().join("out");
    let mut c = consolidate_cmd(&dir, &out);
    c.env("NEURON_SPEC_FAIL_AFTER_BYTES", "1000");
    fails(&mut c, &out, &[&format!("{}: No space left on device", s(&out.join(MODEL)))]);
}

#[test]
fn disk_full_while_replacing_with_force() {
    let (tmp, dir) = sharded(2, true);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep"), b"precious").unwrap();
    let mut c = cli(["reshard", s(&dir), s(&out), "--tp", "4", "--force"]);
    c.env("NEURON_SPEC_FAIL_AFTER_BYTES", "50000");
    fails(&mut c, &out, &[&rank_file_name(0), "No space left on device"]);
}

#[test]
fn kill_9_in_the_middle_of_a_consolidation() {
    let (tmp, dir) = sharded(2, true);
    let out = tmp.path().join("out");
    let mut child = cli(["consolidate", s(&dir), s(&out)])
        .env("NEURON_SPEC_SLOW_WRITE_MS", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = tmp.path().join(format!(".out.partial-{}", child.id()));
    let started = Instant::now();
    while !partial.join(MODEL).exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "consolidation never started writing");
        assert!(child.try_wait().unwrap().is_none(), "consolidation ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500)); // a few tensors in
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(status.code().is_none(), "the child was killed, not finished: {status:?}");
    assert!(!out.exists(), "a killed consolidation must leave no destination");
    // What a killed process leaves is hidden: its own `.out.partial-<pid>` directory and nothing else.
    let left: Vec<String> =
        fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    for n in &left {
        assert!(n == "in" || n.starts_with(".out.partial-"), "unexpected {n} after kill -9: {left:?}");
    }
    // The next run (another pid) removes the dead process's directory and succeeds.
    let o = consolidate_cmd(&dir, &out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_tensors(&neuron_spec::format::HfCheckpoint::open(&out).unwrap(), &hf("llama-gqa"), "after kill -9");
    assert!(!partial.exists(), "the dead process's partial directory is cleaned up");
    assert!(partials_in(tmp.path()).is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// Bad LoRA adapters.

#[test]
fn adapter_whose_r_disagrees_with_its_tensors() {
    let (tmp, adapter) = copy_fixture("llama-gqa-lora");
    edit_json(&adapter.join("adapter_config.json"), |v| v["r"] = Value::from(8));
    let out = tmp.path().join("out");
    let mut cmd = cli(["shard", s(&fixture("llama-gqa")), s(&out), "--tp", "2", "--adapter", s(&adapter)]);
    fails(&mut cmd, &out, &["lora_A", "8"]);
}

#[test]
fn adapter_for_another_model() {
    // An adapter trained on llama-gqa (hidden 64), applied to llama-mha-tied (hidden 32).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let adapter = fixture("llama-gqa-lora");
    let mut cmd = cli(["shard", s(&fixture("llama-mha-tied")), s(&out), "--tp", "2", "--adapter", s(&adapter)]);
    fails(&mut cmd, &out, &["lora_A", "64", "32"]);
}

// ---------------------------------------------------------------------------------------------------------
// Checksums and rank_files.

#[test]
fn damaged_rank_file_fails_forward_consolidate_and_reshard_naming_it() {
    let (tmp, dir) = sharded(2, true);
    let f = dir.join(RANKS_DIR).join(rank_file_name(1));
    let mut bytes = fs::read(&f).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    fs::write(&f, bytes).unwrap();
    let words = [s(&f), "damaged rank file", "xxh3-64"];
    let nothing = tmp.path().join("nothing");
    fails(&mut cli(["forward", s(&dir), "--input-ids", s(&fixture("llama-gqa/golden.safetensors"))]), &nothing, &words);
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &words);
    fails(&mut cli(["reshard", s(&dir), s(&out), "--tp", "4"]), &out, &words);
}

#[test]
fn metadata_without_rank_files_is_an_error_not_a_skipped_check() {
    // Our metadata (format_version 1) always records rank_files: without them nothing could be verified.
    let (tmp, dir) = sharded(2, true);
    edit_json(&dir.join(METADATA_PATH), |m| {
        m.as_object_mut().unwrap().remove("rank_files");
    });
    let ranks = dir.join(RANKS_DIR);
    let words = [s(&ranks), "records no rank_files", "checksums"];
    let nothing = tmp.path().join("nothing");
    fails(&mut cli(["forward", s(&dir), "--input-ids", s(&fixture("llama-gqa/golden.safetensors"))]), &nothing, &words);
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &words);
    fails(&mut cli(["reshard", s(&dir), s(&out), "--tp", "4"]), &out, &words);
}

#[test]
fn metadata_missing_one_rank_files_entry() {
    let (tmp, dir) = sharded(2, true);
    edit_json(&dir.join(METADATA_PATH), |m| {
        m["rank_files"].as_array_mut().unwrap().pop();
    });
    let out = tmp.path().join("out");
    fails(&mut consolidate_cmd(&dir, &out), &out, &["metadata lists 1 rank files for tp 2"]);
    fails(&mut cli(["reshard", s(&dir), s(&out), "--tp", "4"]), &out, &["metadata lists 1 rank files for tp 2"]);
}

// ---------------------------------------------------------------------------------------------------------
// Size limits, pinned at the boundary: the limit passes the limit check, limit + 1 fails it.

#[test]
fn tp_limit_is_4096() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let gqa = fixture("llama-gqa");
    // At 4096 the tp check passes (plan, which writes nothing: every split is padded, so it is accepted).
    let o = cli(["plan", s(&gqa), "--tp", "4096", "--plain-attention", "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    // One above is a usage error naming the range.
    usage_fails(
        &mut cli(["shard", s(&gqa), s(&out), "--tp", "4097", "--plain-attention"]),
        &out,
        &["--tp", "between 1 and 4096", "4097"],
    );
}

#[test]
fn heads_limit_is_4096() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let out = tmp.path().join("out");
    for (heads, limit_hit) in [(4096u64, false), (4097, true)] {
        edit_json(&dir.join("config.json"), |c| {
            c["num_attention_heads"] = json!(heads);
            c["num_key_value_heads"] = json!(heads);
        });
        let mut c = shard_cmd(&dir, &out, "1");
        if limit_hit {
            fails(&mut c, &out, &["num_attention_heads", "4097 is above the supported maximum 4096"]);
        } else {
            // Accepted by the limit; the checkpoint's 64-row q_proj then does not match 4096 heads of 8.
            let msg = fails(&mut c, &out, &["model.layers.0.self_attn.q_proj.weight", "expected shape [32768, 64]"]);
            assert!(!msg.contains("maximum"), "{msg}");
        }
    }
}

#[test]
fn layers_limit_is_16384() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let out = tmp.path().join("out");
    edit_json(&dir.join("config.json"), |c| c["num_hidden_layers"] = json!(16384));
    // Accepted by the limit (and quickly): layers 2.. are then missing from the checkpoint.
    let msg =
        fails(&mut shard_cmd(&dir, &out, "2"), &out, &["missing tensors: model.layers.2.self_attn.q_proj.weight"]);
    assert!(!msg.contains("maximum"), "{msg}");
    edit_json(&dir.join("config.json"), |c| c["num_hidden_layers"] = json!(16385));
    fails(&mut shard_cmd(&dir, &out, "2"), &out, &["num_hidden_layers", "16385 is above the supported maximum 16384"]);
}

// ---------------------------------------------------------------------------------------------------------
// kill -9 at several points of every writing command.

/// Runs `args` with slow tensor writes, kills it (SIGKILL) `delay` after its `.<dest>.partial-<pid>` directory
/// appears, then checks that `dest` is as it was before (`before`, when it existed) or complete (`complete`),
/// that nothing but the dead writer's hidden partial directory was left, and that a rerun cleans up and succeeds.
fn kill_at(args: &[&str], dest: &Path, delay: Duration, complete: &dyn Fn(&Path) -> bool) {
    let parent = dest.parent().unwrap();
    let name = dest.file_name().unwrap().to_str().unwrap();
    let before = dest.exists().then(|| snapshot(dest));
    let listing = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    };
    let others_before: Vec<String> = listing(parent).into_iter().filter(|n| n != name).collect();
    let mut child =
        cli(args).env("NEURON_SPEC_SLOW_WRITE_MS", "30").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let partial = parent.join(format!(".{name}.partial-{}", child.id()));
    let started = Instant::now();
    while !partial.exists() && child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "{args:?} never started writing");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(delay);
    let _ = child.kill();
    let status = child.wait().unwrap();
    let what = format!("{args:?} killed {delay:?} in ({status:?})");
    // The early points must catch the writer midway (slow writes make it last well over a second).
    assert!(delay > Duration::from_millis(400) || status.code().is_none(), "{what}: finished before the kill");
    match (&before, dest.exists()) {
        (Some(old), true) => {
            assert!(snapshot(dest) == *old || complete(dest), "{what}: neither the old nor a complete output")
        }
        (Some(_), false) => panic!("{what}: the old destination is gone"),
        (None, true) => assert!(complete(dest), "{what}: an incomplete destination"),
        (None, false) => {}
    }
    for n in listing(parent) {
        assert!(
            n == name || others_before.contains(&n) || n == format!(".{name}.partial-{}", child.id()),
            "{what}: {n} left behind"
        );
    }
    // The rerun (another pid) removes the dead writer's directory and succeeds.
    let mut rerun = cli(args);
    if !args.contains(&"--force") {
        rerun.arg("--force");
    }
    let o = output_within(&mut rerun, COMMAND_TIMEOUT);
    assert!(o.status.success(), "{what}: rerun: {}", String::from_utf8_lossy(&o.stderr));
    assert!(complete(dest), "{what}: rerun output incomplete");
    assert!(!partial.exists() && partials_in(parent).is_empty(), "{what}: partial directories not cleaned up");
}

const KILL_POINTS_MS: [u64; 4] = [0, 120, 400, 900];

fn sharded_complete(tp: usize) -> impl Fn(&Path) -> bool {
    move |d: &Path| {
        neuron_spec::checkpoint::ShardedCheckpoint::open(d).is_ok_and(|ck| {
            ck.tp == tp && {
                let t = tempfile::tempdir().unwrap();
                let hf_out = t.path().join("hf");
                neuron_spec::consolidate(d, &hf_out, &WriteOptions::default()).is_ok() && same_as_llama_gqa(&hf_out)
            }
        })
    }
}

fn same_as_llama_gqa(d: &Path) -> bool {
    let (Ok(a), b) = (neuron_spec::format::HfCheckpoint::open(d), hf("llama-gqa")) else { return false };
    let (mut an, mut bn) = (a.names(), b.names());
    an.sort();
    bn.sort();
    an == bn && an.iter().all(|n| a.tensor(n).unwrap() == b.tensor(n).unwrap())
}

#[test]
fn kill_9_at_several_points_of_shard() {
    for ms in KILL_POINTS_MS {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        kill_at(
            &["shard", s(&fixture("llama-gqa")), s(&out), "--tp", "2"],
            &out,
            Duration::from_millis(ms),
            &sharded_complete(2),
        );
    }
}

#[test]
fn kill_9_at_several_points_of_consolidate() {
    for ms in KILL_POINTS_MS {
        let (tmp, dir) = sharded(4, true);
        let out = tmp.path().join("out");
        kill_at(&["consolidate", s(&dir), s(&out)], &out, Duration::from_millis(ms), &same_as_llama_gqa);
    }
}

#[test]
fn kill_9_at_several_points_of_reshard() {
    for ms in KILL_POINTS_MS {
        let (tmp, dir) = sharded(2, true);
        let out = tmp.path().join("out");
        kill_at(&["reshard", s(&dir), s(&out), "--tp", "4"], &out, Duration::from_millis(ms), &sharded_complete(4));
    }
}

#[test]
fn kill_9_at_several_points_of_a_forced_replacement() {
    // The destination holds a valid tp 8 checkpoint; `reshard --tp 4 --force` is killed at every point, up to
    // past its end: the destination is always the old checkpoint or the complete new one.
    for ms in KILL_POINTS_MS.iter().copied().chain([1500, 2500]) {
        let (tmp, dir) = sharded(2, true);
        let out = tmp.path().join("out");
        shard(&fixture("llama-gqa"), &out, &layout("llama-gqa", 8, true), 8, &WriteOptions::default()).unwrap();
        let args = ["reshard", s(&dir), s(&out), "--tp", "4", "--force"];
        kill_at(&args, &out, Duration::from_millis(ms), &sharded_complete(4));
    }
}

// ---------------------------------------------------------------------------------------------------------
// A read-only destination that root cannot write either.

#[test]
fn read_only_bind_mount_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let ro = tmp.path().join("ro");
    fs::create_dir(&ro).unwrap();
    let mount =
        |args: &[&str]| Command::new("mount").args(args).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !(mount(&["--bind", s(&ro), s(&ro)]) && mount(&["-o", "remount,ro,bind", s(&ro)])) {
        let _ = Command::new("umount").arg(&ro).status();
        eprintln!("SKIPPED read_only_bind_mount_destination: `mount --bind` / `remount,ro` is not permitted here (needs root with CAP_SYS_ADMIN); destination_parent_is_a_file covers an unwritable destination instead");
        return;
    }
    let out = ro.join("out");
    let r = std::panic::catch_unwind(|| {
        fails(&mut shard_cmd(&fixture("llama-gqa"), &out, "2"), &out, &[s(&out), "Read-only file system"]);
    });
    let _ = Command::new("umount").arg(&ro).status();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
