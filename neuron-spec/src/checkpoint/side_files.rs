//! Side files: what travels with the weights (config, tokenizer, chat templates) and what never does.

use crate::error::{Error, Result};
use crate::format::write_file_synced;
use std::path::{Path, PathBuf};

/// neuronx-distributed's bookkeeping markers in an optimum-neuron checkpoint: not part of an HF folder.
const REFERENCE_MARKERS: [&str; 2] = ["checkpoint", "done"];

/// Is `name` a weight file or index (any format), an adapter's file, a reference checkpoint marker or hidden?
/// Those never travel as side files.
fn is_weight_or_adapter_file(name: &str) -> bool {
    const WEIGHT_SUFFIXES: [&str; 11] =
        [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".npz", ".index.json"];
    name.starts_with('.')
        || WEIGHT_SUFFIXES.iter().any(|s| name.ends_with(s))
        || name == crate::lora::ADAPTER_CONFIG
        || name.starts_with("adapter_model.")
        || REFERENCE_MARKERS.contains(&name)
}

/// Sub-directories of an HF model folder that hold non-weight files and travel whole (transformers' extra
/// chat templates).
pub const SIDE_DIRS: [&str; 1] = ["additional_chat_templates"];

/// The non-weight files of an HF model folder or a sharded checkpoint (`config.json`, `tokenizer*.json`,
/// `tokenizer.model`, `special_tokens_map.json`, `generation_config.json`, chat templates, model card, ...),
/// relative to `dir`: every top-level regular file (symlinks followed, as in the HF cache) except weight files
/// and indexes of any format (so goldens and stray checkpoints are never mixed in), adapter files and hidden
/// files, plus the files of [`SIDE_DIRS`].
pub fn side_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        let is_file = std::fs::metadata(e.path()).map(|m| m.is_file()).unwrap_or(false);
        if is_file && !is_weight_or_adapter_file(&name) {
            out.push(PathBuf::from(name));
        } else if SIDE_DIRS.contains(&name.as_str()) && e.path().is_dir() {
            let sub = e.path();
            for f in std::fs::read_dir(&sub).map_err(|e| Error::io(&sub, e))? {
                let f = f.map_err(|e| Error::io(&sub, e))?;
                let n = f.file_name().to_string_lossy().to_string();
                if !n.starts_with('.') && std::fs::metadata(f.path()).map(|m| m.is_file()).unwrap_or(false) {
                    out.push(Path::new(&name).join(n));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copies the [`side_files`] of `src_dir` into `dst_dir` byte for byte; `config_edit` may rewrite
/// `config.json` (consolidation to another dtype). Returns the files copied (relative paths).
pub(crate) fn copy_side_files(
    src_dir: &Path,
    dst_dir: &Path,
    config_edit: Option<ConfigEdit<'_>>,
) -> Result<Vec<PathBuf>> {
    if src_dir == dst_dir {
        return Ok(vec![]);
    }
    let files = side_files(src_dir)?;
    for rel in &files {
        let src = src_dir.join(rel);
        let mut bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
        if let (Some(edit), true) = (config_edit, rel == Path::new("config.json")) {
            bytes = edit(&bytes)?;
        }
        let dst = dst_dir.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        write_file_synced(&dst, &bytes)?;
    }
    Ok(files)
}

/// Rewrites `config.json`'s bytes (consolidation to another dtype).
pub(crate) type ConfigEdit<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>>;
