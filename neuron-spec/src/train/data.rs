//! Training data files: safetensors `input_ids` I64 [batch, seq], or JSONL lines `{"input_ids": [...]}`,
//! split into batches with every id checked against the vocabulary; or text (a `.txt` file, one document, or
//! JSONL lines `{"text": ...}`, one document each), which the caller tokenizes and [`pack_documents`] cuts into
//! rows. Burn-free, so the fuzz targets build it.

use crate::error::{Error, Result};
use crate::format::SafetensorsFile;
use crate::tensor::DType;
use std::path::Path;

fn bad_data(path: &Path, reason: String) -> Error {
    Error::InputData(format!("{}: {reason}", path.display()))
}

/// What a training data file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainData {
    /// Token-id rows (safetensors `input_ids`, or JSONL `{"input_ids": [...]}` lines).
    Rows(Vec<Vec<i64>>),
    /// Text documents, in order (a `.txt` file is one; a JSONL `{"text": ...}` line is one), to tokenize.
    Documents(Vec<String>),
}

/// Reads a data file: a `.txt` file is one text document; safetensors and JSONL as [`read_rows`], where JSONL
/// lines `{"text": "..."}` are documents instead (a file holds one kind of line, not both).
pub fn read_data(path: &Path) -> Result<TrainData> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")) {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| bad_data(path, format!("not UTF-8 text: {e}")))?;
        if text.is_empty() {
            return Err(bad_data(path, "the text file is empty".into()));
        }
        return Ok(TrainData::Documents(vec![text]));
    }
    if !is_safetensors(path)? {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let first = text.lines().find(|l| !l.trim().is_empty());
        let is_text = first
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .is_some_and(|v| v.get("text").is_some());
        if is_text {
            let mut docs = Vec::new();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| bad_data(path, format!("line {}: {e}", i + 1)))?;
                let doc = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                    bad_data(
                        path,
                        format!("line {}: no \"text\" string (line 1 has one: a file holds text lines only)", i + 1),
                    )
                })?;
                docs.push(doc.to_string());
            }
            return Ok(TrainData::Documents(docs));
        }
    }
    read_rows(path).map(TrainData::Rows)
}

/// The packing rule of text training: each document's ids (as the tokenizer's `encode` gives them, special
/// tokens included) followed by `eos`, all documents concatenated in order, cut into rows of `seq_len`; the
/// remainder shorter than a row is dropped.
pub fn pack_documents(docs: &[Vec<i64>], eos: i64, seq_len: usize) -> Vec<Vec<i64>> {
    if seq_len == 0 {
        return Vec::new();
    }
    let stream: Vec<i64> = docs.iter().flat_map(|d| d.iter().copied().chain(std::iter::once(eos))).collect();
    stream.chunks_exact(seq_len).map(<[i64]>::to_vec).collect()
}

fn is_safetensors(path: &Path) -> Result<bool> {
    std::fs::File::open(path)
        .and_then(|mut f| {
            let mut b = [0u8; 9];
            use std::io::Read;
            let n = f.read(&mut b)?;
            // A safetensors file starts with an 8-byte header length, then `{`.
            Ok(n == 9 && b[8] == b'{')
        })
        .map_err(|e| Error::io(path, e))
}

/// The rows of a data file: safetensors `input_ids` I64 [batch, seq] or JSONL `{"input_ids": [...]}` lines.
pub fn read_rows(path: &Path) -> Result<Vec<Vec<i64>>> {
    if is_safetensors(path)? {
        let f = SafetensorsFile::open(path)?;
        let info = f.info("input_ids").ok_or_else(|| bad_data(path, "no `input_ids` tensor".into()))?;
        if info.dtype != DType::I64 || info.shape.len() != 2 {
            return Err(bad_data(
                path,
                format!("`input_ids` must be I64 [batch, seq], found {} {:?}", info.dtype, info.shape),
            ));
        }
        let v = f.tensor("input_ids")?.to_i64_vec()?;
        let seq = info.shape[1];
        if seq == 0 || v.is_empty() {
            return Err(bad_data(path, "`input_ids` is empty".into()));
        }
        return Ok(v.chunks(seq).map(<[i64]>::to_vec).collect());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad_data(path, format!("line {}: {e}", i + 1)))?;
        let ids = v
            .get("input_ids")
            .and_then(|a| a.as_array())
            .ok_or_else(|| bad_data(path, format!("line {}: no \"input_ids\" array", i + 1)))?;
        let row = ids
            .iter()
            .map(|x| x.as_i64().ok_or_else(|| bad_data(path, format!("line {}: {x} is not an integer id", i + 1))))
            .collect::<Result<Vec<i64>>>()?;
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(bad_data(path, "no training rows".into()));
    }
    Ok(rows)
}

/// Splits rows into batches of `batch_size` (all rows when `None`), checking lengths and ids.
pub fn batches(
    path: &Path,
    rows: Vec<Vec<i64>>,
    batch_size: Option<usize>,
    vocab: usize,
) -> Result<Vec<Vec<Vec<i64>>>> {
    let bs = batch_size.unwrap_or(rows.len());
    if bs == 0 {
        return Err(Error::Argument("--batch-size must be positive".into()));
    }
    for (i, r) in rows.iter().enumerate() {
        if r.len() < 2 {
            return Err(bad_data(path, format!("row {i} has {} token(s): at least 2 are needed", r.len())));
        }
        if let Some(t) = r.iter().find(|t| **t < 0 || **t as usize >= vocab) {
            return Err(bad_data(path, format!("row {i}: token id {t} is outside the vocabulary [0, {vocab})")));
        }
    }
    let out: Vec<Vec<Vec<i64>>> = rows.chunks(bs).map(<[Vec<i64>]>::to_vec).collect();
    for (k, b) in out.iter().enumerate() {
        let s = b[0].len();
        if let Some(r) = b.iter().find(|r| r.len() != s) {
            return Err(bad_data(
                path,
                format!("batch {k} is ragged: rows of {s} and {} tokens (no padding support)", r.len()),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_appends_eos_concatenates_and_drops_the_remainder() {
        // [1 5 6 EOS] [1 7 EOS] → 1 5 6 2 1 7 2 → rows of 3: [1 5 6] [2 1 7], the last 2 dropped.
        let rows = pack_documents(&[vec![1, 5, 6], vec![1, 7]], 2, 3);
        assert_eq!(rows, vec![vec![1, 5, 6], vec![2, 1, 7]]);
        assert_eq!(pack_documents(&[vec![1, 5]], 2, 4), Vec::<Vec<i64>>::new());
    }
}
