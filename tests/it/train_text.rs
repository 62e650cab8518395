//! `train --data` on text (`.txt`: one document; `.jsonl` with `{"text": ...}` lines: one document each),
//! tokenized with the model folder's tokenizer and packed into `--seq-len` rows, against torch's training on the
//! same rows (`tests/fixtures/text/train_golden_{txt,jsonl}.safetensors`, made by
//! `tests/fixtures/make/make_train_golden_text.py`, which tokenizes with the `tokenizers` package and packs by the
//! rule independently): the packed rows are torch's `input_ids`, the losses of 3 AdamW steps within 1e-4
//! relative, the consolidated weights within 5e-4 max / 1e-6 mean.

use crate::common;

use common::{fixture, open};
use neuron_spec::compare::{max_abs_diff, mean_abs_diff};
use neuron_spec::format::HfCheckpoint;
use neuron_spec::train::data::{read_data, TrainData};
use neuron_spec::TensorSource;
use neuron_spec_models::TextTokenizer;
use std::path::Path;

const HP: [&str; 8] = ["--lr", "1e-2", "--betas", "0.9,0.999", "--eps", "1e-6", "--weight-decay", "0.01"];

fn bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_neuron-spec")).args(args).output().unwrap()
}

fn golden_rows(golden: &str) -> Vec<Vec<i64>> {
    let t = open(golden).tensor("input_ids").unwrap();
    let s = t.shape()[1];
    t.to_i64_vec().unwrap().chunks(s).map(<[i64]>::to_vec).collect()
}

#[test]
fn packed_rows_are_the_rows_torch_trained_on() {
    let tok = TextTokenizer::open(&fixture("llama-gqa")).unwrap();
    for (data, golden) in [
        ("text/train.txt", "text/train_golden_txt.safetensors"),
        ("text/train.jsonl", "text/train_golden_jsonl.safetensors"),
    ] {
        let TrainData::Documents(docs) = read_data(&fixture(data)).unwrap() else { panic!("{data}: not text") };
        assert_eq!(docs.len(), if data.ends_with(".txt") { 1 } else { 4 });
        assert_eq!(tok.training_rows(&docs, 16).unwrap(), golden_rows(golden), "{data}");
    }
}

fn train_like_torch(data: &str, golden: &str, tp: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (out, hf) = (tmp.path().join("out"), tmp.path().join("hf"));
    let model = fixture("llama-gqa");
    let mut args = vec!["train".to_string(), s(&model), s(&out), "--tp".into(), tp.into()];
    args.extend(["--data".into(), s(&fixture(data)), "--seq-len".into(), "16".into(), "--steps".into(), "3".into()]);
    args.extend(HP.iter().map(|x| x.to_string()));
    let o = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{data}: {}", String::from_utf8_lossy(&o.stderr));
    let g = open(golden);
    let torch = g.tensor("loss").unwrap().to_f32_vec();
    let ours: Vec<f32> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("step ").and_then(|r| r.split(" loss ").nth(1)).map(|x| x.parse().unwrap()))
        .collect();
    assert_eq!(ours.len(), 3, "{data}: {}", String::from_utf8_lossy(&o.stdout));
    for (a, b) in ours.iter().zip(&torch) {
        assert!(((a - b) / b).abs() < 1e-4, "{data}: loss {a} vs torch {b}");
    }
    let c = bin(&["consolidate", &s(&out), &s(&hf)]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let hf = HfCheckpoint::open(&hf).unwrap();
    let (mut sum, mut n) = (0f64, 0usize);
    for name in hf.names() {
        let gold = g.tensor(&format!("after3.{name}")).unwrap().to_f32_vec();
        let ours = hf.tensor(&name).unwrap().to_f32_vec();
        let mx = max_abs_diff(&ours, &gold).unwrap();
        assert!(mx < 5e-4, "{data}: after3.{name}: max {mx:e}");
        sum += mean_abs_diff(&ours, &gold).unwrap() * ours.len() as f64;
        n += ours.len();
    }
    assert_eq!(hf.names().len(), 21);
    assert!(sum / (n as f64) < 1e-6, "{data}: mean abs diff {:e}", sum / n as f64);
}

#[test]
fn train_on_a_txt_file_equals_torch() {
    train_like_torch("text/train.txt", "text/train_golden_txt.safetensors", "2");
}

#[test]
fn train_on_jsonl_text_equals_torch() {
    train_like_torch("text/train.jsonl", "text/train_golden_jsonl.safetensors", "4");
}

#[test]
fn text_data_needs_seq_len_and_ids_data_refuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture("llama-gqa");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let txt = fixture("text/train.txt");
    let e = bin(&["train", m, o, "--tp", "1", "--data", txt.to_str().unwrap(), "--steps", "1"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("--seq-len"), "{}", String::from_utf8_lossy(&e.stderr));
    let ids = fixture("llama-gqa/train_golden.safetensors");
    let e = bin(&["train", m, o, "--tp", "1", "--data", ids.to_str().unwrap(), "--seq-len", "4", "--steps", "1"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("--seq-len applies to text"));
    // Longer rows than the whole text: nothing to train on, said so.
    let e = bin(&["train", m, o, "--tp", "1", "--data", txt.to_str().unwrap(), "--seq-len", "4096", "--steps", "1"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("fewer tokens than one row"));
    // A jsonl text line without "text" names its line.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"a b\"}\n{\"txt\": \"c\"}\n").unwrap();
    let e = bin(&["train", m, o, "--tp", "1", "--data", bad.to_str().unwrap(), "--seq-len", "2", "--steps", "1"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("line 2"), "{}", String::from_utf8_lossy(&e.stderr));
    assert!(!out.exists(), "nothing written");
}
