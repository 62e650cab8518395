//! Where a command's TP layout comes from: an HF folder's family model, a `--layout` file, or a sharded
//! checkpoint's own metadata.

use crate::error::{CliError, Result};
use clap::Args;
use neuron_spec::spec::metadata::CheckpointMetadata;
use neuron_spec_models::QkvLayout;
use std::path::Path;

/// How attention is laid out on the ranks.
#[derive(Debug, Clone, Args)]
pub struct LayoutArgs {
    /// One fused `qkv_proj.weight_qkv` per rank instead of `weight_q/_k/_v`.
    #[arg(long)]
    pub fuse_qkv: bool,
    /// Plain column/row sharding of q/k/v/o (storage only; for head counts tp does not divide).
    #[arg(long, conflicts_with = "fuse_qkv")]
    pub plain_attention: bool,
}

impl LayoutArgs {
    pub fn qkv(&self) -> QkvLayout {
        if self.plain_attention {
            QkvLayout::Plain
        } else {
            QkvLayout::gqa(self.fuse_qkv)
        }
    }
}

/// The layout of an HF checkpoint: its `config.json`'s family (by `model_type`), read off the same model that
/// runs `forward`; unknown model types and unimplemented fields are refused. When `tp` does not fit the model,
/// the error names the tp sizes that do (and `--plain-attention`'s).
pub fn hf_layout(dir: &Path, tp: usize, qkv: QkvLayout) -> Result<CheckpointMetadata> {
    neuron_spec_models::layout_of_dir(dir, tp, qkv).map_err(|e| {
        if neuron_spec_models::layout_of_dir(dir, 1, qkv).is_err() {
            return CliError::Library(e); // not a tp problem: the config itself is refused
        }
        let heads = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("num_attention_heads").and_then(|h| h.as_u64()))
            .unwrap_or(64)
            .clamp(1, 256) as usize;
        let fits = |q: QkvLayout| -> Vec<String> {
            (1..=heads)
                .filter(|t| neuron_spec_models::layout_of_dir(dir, *t, q).is_ok())
                .map(|t| t.to_string())
                .collect()
        };
        let (gqa, plain) = (fits(qkv), fits(QkvLayout::Plain));
        let mut hint = format!("{e}; valid tp sizes for this model: {}", gqa.join(", "));
        if qkv != QkvLayout::Plain && plain != gqa && !plain.is_empty() {
            hint += &format!(" (with --plain-attention, storage only: {})", plain.join(", "));
        }
        CliError::Command(hint)
    })
}

/// The layout in `file` (the JSON of `create_parameter_metadata()`, written at any tp) for TP size `tp`.
pub fn layout_from_file(file: &Path, tp: usize) -> Result<CheckpointMetadata> {
    let meta = CheckpointMetadata::read(file)?;
    let at = |t: usize| -> Result<CheckpointMetadata> {
        let mut m = neuron_spec::ops::reshard::metadata_for_tp(&meta, t)?;
        m.rank_files.clear();
        for (module, s) in m.specs() {
            s.validate(t).map_err(|e| CliError::Command(format!("{module}: {e}")))?;
        }
        Ok(m)
    };
    at(tp).map_err(|e| {
        let fits: Vec<String> = (1..=256).filter(|t| at(*t).is_ok()).map(|t| t.to_string()).collect();
        CliError::Command(format!("{}: {e}; valid tp sizes for this layout: {}", file.display(), fits.join(", ")))
    })
}

/// A sharded checkpoint, ours or optimum-neuron's (`.pt` rank files): detected from its stage-0 metadata.
pub fn is_sharded(dir: &Path) -> bool {
    neuron_spec::checkpoint::is_sharded_dir(dir)
}
