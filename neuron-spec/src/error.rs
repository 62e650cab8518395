//! One typed error for the whole crate: every message names what a user needs to fix the input.

use std::path::PathBuf;

/// Crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, with the file, tensor, expected and found values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A safetensors file whose header or layout is invalid.
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A torch `.pt` file (zip or pickle) that cannot be read safely, or whose tensors disagree with it.
    #[error("{path}: invalid torch checkpoint: {reason}")]
    Torch {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON file (config, index, metadata) that does not parse or lacks a field.
    #[error("{path}: invalid JSON: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A dtype string we do not handle.
    #[error("{context}: unsupported dtype {found}")]
    UnsupportedDtype {
        /// Where it was found.
        context: String,
        /// The dtype string.
        found: String,
    },
    /// A tensor with another shape than the layout requires.
    #[error("tensor {tensor}: expected shape {expected:?}, found {found:?}{}", in_file(.file))]
    ShapeMismatch {
        /// The tensor name.
        tensor: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
        /// The file holding the tensor, when known.
        file: Option<PathBuf>,
    },
    /// A tensor with another dtype than the layout requires.
    #[error("tensor {tensor}: expected dtype {expected}, found {found}{}", in_file(.file))]
    DtypeMismatch {
        /// The tensor name.
        tensor: String,
        /// The expected dtype.
        expected: String,
        /// The dtype found.
        found: String,
        /// The file holding the tensor, when known.
        file: Option<PathBuf>,
    },
    /// A spec or configuration field with an invalid value.
    #[error("invalid {spec} field `{field}`: {reason}")]
    InvalidSpec {
        /// The spec (class) name, or "config".
        spec: String,
        /// The offending field.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Tensors the layout needs but the input lacks, and tensors the input has but the layout does not use.
    #[error("{}", key_mismatch_message(.context, .missing, .unexpected))]
    KeyMismatch {
        /// What was being read.
        context: String,
        /// Names required but absent, each with a "did you mean" suggestion when one is close.
        missing: Vec<(String, Option<String>)>,
        /// Names present but unused.
        unexpected: Vec<String>,
    },
    /// Sharded-checkpoint metadata that cannot drive consolidation.
    #[error("{path}: {reason}")]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Rank files that are missing, duplicated or from another tp size.
    #[error("{dir}: {reason}")]
    RankFiles {
        /// The shards directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// kv-head replicas on different ranks that disagree.
    #[error("tensor {tensor}: the kv replica on rank {rank} differs from rank {primary_rank}'s copy by up to {max_abs_diff:e} (choose --kv-replicas first or mean to accept)")]
    ReplicaMismatch {
        /// The consolidated tensor.
        tensor: String,
        /// The rank holding the differing replica.
        rank: usize,
        /// The rank whose copy is kept.
        primary_rank: usize,
        /// Largest absolute difference.
        max_abs_diff: f32,
    },
    /// A rank file whose size or checksum differs from the metadata.
    #[error("{path}: damaged rank file: {reason}")]
    Checksum {
        /// The rank file.
        path: PathBuf,
        /// Expected and found.
        reason: String,
    },
    /// A destination that exists and may not be replaced.
    #[error("{path}: destination exists (use --force to replace it)")]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },
    /// A fused group (q/k/v, gate/up) whose members a LoRA adapter targets only in part (the all-or-none rule).
    #[error("{module}: the LoRA adapter targets {} but not {}; a fused {spec} group takes LoRA on all of its linears or none (import with partial mode to give {} a zero delta)", .present.join(", "), .missing.join(", "), .missing.join(", "))]
    PartialLoraGroup {
        /// The module holding the fused layer, e.g. `model.layers.0.self_attn`.
        module: String,
        /// The spec class.
        spec: String,
        /// Members the adapter targets.
        present: Vec<String>,
        /// Members it does not.
        missing: Vec<String>,
    },
    /// A LoRA adapter (config or tensors) this crate cannot import or export as asked.
    #[error("LoRA adapter {adapter}: {reason}")]
    Lora {
        /// The adapter directory or name.
        adapter: String,
        /// What is wrong, naming the module, tensor or field.
        reason: String,
    },
    /// A model folder's tokenizer files (`tokenizer.json`, `tokenizer_config.json`, a chat template,
    /// `generation_config.json`) cannot be read or used as asked, or text cannot be encoded or decoded.
    #[error("{path}: {reason}")]
    Tokenizer {
        /// The file (or the folder, when the file is missing).
        path: PathBuf,
        /// What is wrong, naming the key or token.
        reason: String,
    },
    /// The TP ranks computed different results where every rank must compute the same bits.
    #[error("rank {rank} {what} than rank 0")]
    RanksDisagree {
        /// The first rank that differs from rank 0.
        rank: usize,
        /// What differed, e.g. "chose another next token at step 3".
        what: String,
    },
    /// Configuration keys refused because each may change the math and is not implemented: all of a file's,
    /// in one error.
    #[error("{}: model_type {model_type:?}: {}", .file.display(), refused_keys_message(.keys))]
    RefusedConfigKeys {
        /// The config file.
        file: PathBuf,
        /// Its `model_type`.
        model_type: String,
        /// Each refused key with the reason.
        keys: Vec<(String, String)>,
    },
    /// A collective between ranks that one rank aborted (a failure elsewhere ends the collective on every
    /// rank instead of hanging it): [`Error::is_collective_abort`] tells it from the failure that caused it.
    #[error("collective aborted: {reason}")]
    CollectiveAborted {
        /// Which rank aborted and why.
        reason: String,
    },
    /// A collective that cannot run: a communicator that cannot start, a tensor it cannot carry, a rank that
    /// left or failed (named with its rank).
    #[error("{0}")]
    Collective(String),
    /// Ranks (or the layers of one model) that must agree do not: TP contexts, step counts, rank reports.
    #[error("{0}")]
    RanksDiffer(String),
    /// A value that cannot be serialized or a serialized report that does not parse, naming what it is.
    #[error("{0}")]
    Serialization(String),
    /// A helper thread (checksums, the next tensor) that stopped or failed, naming the file or tensor.
    #[error("{0}")]
    Thread(String),
    /// A tensor that cannot take the asked operation: byte length against dtype and shape, a dimension or
    /// index range out of bounds, a dtype the operation does not handle; naming the tensor where known.
    #[error("{0}")]
    Tensor(String),
    /// A plan that cannot be built, inverted or run: a missing source or block, blocks that do not tile
    /// the tensor, a split the reference's helpers refuse; naming the tensor.
    #[error("{0}")]
    Plan(String),
    /// Pipeline stages: a pp out of range, a parameter no stage holds, stages that disagree, an operation
    /// not implemented over stages.
    #[error("{0}")]
    Stage(String),
    /// Input data that does not fit the model: token ids or labels outside the vocabulary, shapes of a
    /// batch, training data files.
    #[error("{0}")]
    InputData(String),
    /// An argument or option value (a CLI option, a config field, a builder setting) outside what the
    /// operation takes, naming the option and the value found.
    #[error("{0}")]
    Argument(String),
    /// A training step that cannot run: no autodiff device, no trainable parameter, a missing gradient.
    #[error("{0}")]
    Training(String),
    /// A checkpoint that lacks what the operation needs (optimizer state, rank files, one adapter) or holds
    /// it at another TP size, naming the directory.
    #[error("{0}")]
    Checkpoint(String),
    /// Anything no variant above fits; every use says why in a comment.
    #[error("{0}")]
    Invalid(String),
}

fn in_file(file: &Option<PathBuf>) -> String {
    file.as_ref().map(|f| format!(" in {}", f.display())).unwrap_or_default()
}

fn refused_keys_message(keys: &[(String, String)]) -> String {
    let list: Vec<String> = keys.iter().map(|(k, r)| format!("`{k}`: {r}")).collect();
    format!("{} config key(s) refused: {}", keys.len(), list.join("; "))
}

fn key_mismatch_message(context: &str, missing: &[(String, Option<String>)], unexpected: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|(n, s)| match s {
                Some(s) => format!("{n} (did you mean {s}?)"),
                None => n.clone(),
            })
            .collect();
        parts.push(format!("missing tensors: {}", names.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected tensors: {}", unexpected.join(", ")));
    }
    format!("{context}: {}", parts.join("; "))
}

impl Error {
    /// Is this the abort of a collective (the consequence of a failure on some rank, not the failure itself)?
    pub fn is_collective_abort(&self) -> bool {
        matches!(self, Error::CollectiveAborted { .. })
    }

    /// Names the checkpoint directory in a missing/unexpected-tensors error that only said "checkpoint".
    pub fn in_checkpoint(self, dir: &std::path::Path) -> Self {
        match self {
            Error::KeyMismatch { context, missing, unexpected } if context == "checkpoint" => {
                Error::KeyMismatch { context: dir.display().to_string(), missing, unexpected }
            }
            other => other,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A LoRA adapter error.
    pub fn lora(adapter: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Lora { adapter: adapter.into(), reason: reason.into() }
    }

    /// An invalid spec field.
    pub fn spec(spec: &str, field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidSpec { spec: spec.to_string(), field: field.to_string(), reason: reason.into() }
    }

    /// Missing/unexpected names, with "did you mean" suggestions picked among `candidates`.
    pub fn key_mismatch(
        context: impl Into<String>,
        missing: Vec<String>,
        unexpected: Vec<String>,
        candidates: &[&str],
    ) -> Self {
        let missing = missing
            .into_iter()
            .map(|m| {
                let s = did_you_mean(&m, candidates);
                (m, s)
            })
            .collect();
        Error::KeyMismatch { context: context.into(), missing, unexpected }
    }
}

/// The candidate closest to `name` by edit distance, when it is close enough to be a likely typo.
pub fn did_you_mean(name: &str, candidates: &[&str]) -> Option<String> {
    let best = candidates.iter().filter(|c| **c != name).map(|c| (levenshtein(name, c), *c)).min_by_key(|(d, _)| *d)?;
    (best.0 <= name.len().max(4) / 4).then(|| best.1.to_string())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let c = ["model.layers.0.mlp.up_proj.weight", "model.norm.weight"];
        assert_eq!(
            did_you_mean("model.layers.0.mlp.up_prj.weight", &c).as_deref(),
            Some("model.layers.0.mlp.up_proj.weight")
        );
        assert_eq!(did_you_mean("lm_head.weight", &c), None);
    }
}
