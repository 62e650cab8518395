//! Training data files: safetensors `input_ids` I64 [batch, seq], or JSONL lines `{"input_ids": [...]}`,
//! split into batches with every id checked against the vocabulary. Burn-free, so the fuzz targets build it.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::SafetensorsFile;
use std::path::Path;

fn bad_data(path: &Path, reason: String) -> Error {
    Error::Invalid(format!("{}: {reason}", path.display()))
}

/// The rows of a data file: safetensors `input_ids` I64 [batch, seq] or JSONL `{"input_ids": [...]}` lines.
pub fn read_rows(path: &Path) -> Result<Vec<Vec<i64>>> {
    let is_safetensors = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut b = [0u8; 9];
            use std::io::Read;
            let n = f.read(&mut b)?;
            // A safetensors file starts with an 8-byte header length, then `{`.
            Ok(n == 9 && b[8] == b'{')
        })
        .map_err(|e| Error::io(path, e))?;
    if is_safetensors {
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
        return Err(Error::Invalid("--batch-size must be positive".into()));
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
