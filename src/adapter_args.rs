//! `--adapter DIR [--adapter-name] [--lora-mode] [--lora-partial]`: which PEFT adapters a command imports, and
//! importing them for a TP layout.

use crate::error::{CliError, Result};
use clap::Args;
use neuron_spec::lora::{import_adapter, ImportedAdapter, LoraImportOptions, LoraMode, PeftAdapter};
use neuron_spec::spec::metadata::CheckpointMetadata;
use std::path::PathBuf;

/// `--lora-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoraModeArg {
    /// Stacked A, block-diagonal B: the TP model computes exactly what peft computes.
    Exact,
    /// The reference's mean of the A matrices (lossy).
    Mean,
}

impl From<LoraModeArg> for LoraMode {
    fn from(a: LoraModeArg) -> Self {
        match a {
            LoraModeArg::Exact => LoraMode::Exact,
            LoraModeArg::Mean => LoraMode::Mean,
        }
    }
}

/// HF PEFT LoRA adapters to import (`shard`, `forward`).
#[derive(Debug, Clone, Default, Args)]
pub struct AdapterArgs {
    /// An HF PEFT adapter directory (adapter_config.json + adapter_model.safetensors); repeatable.
    #[arg(long = "adapter", value_name = "PEFT_DIR")]
    pub adapters: Vec<PathBuf>,
    /// The adapter's name, one per --adapter in order (default: `default` for a single adapter).
    #[arg(long = "adapter-name", value_name = "NAME")]
    pub names: Vec<String>,
    /// How a fused group's LoRA A matrices combine: exact (lossless) or mean (the reference's, lossy). One
    /// value for every adapter, or one per --adapter.
    #[arg(long = "lora-mode", value_enum, value_name = "MODE")]
    pub modes: Vec<LoraModeArg>,
    /// Accept an adapter that targets only part of a fused group (q/v without k): the rest gets a zero delta.
    #[arg(long)]
    pub lora_partial: bool,
}

/// One adapter to import.
#[derive(Debug, Clone)]
pub struct AdapterArg {
    /// The PEFT directory.
    pub dir: PathBuf,
    /// Its name in the TP model.
    pub name: String,
    /// Mode and partial-group rule.
    pub opts: LoraImportOptions,
}

impl AdapterArg {
    /// The runtime's adapter: imported for the run's layout when the run starts.
    pub fn adapter(&self) -> neuron_spec_models::Adapter {
        neuron_spec_models::Adapter::Peft { dir: self.dir.clone(), name: self.name.clone(), options: self.opts }
    }
}

impl AdapterArgs {
    /// Pairs each `--adapter` with its name and mode.
    pub fn resolve(&self) -> Result<Vec<AdapterArg>> {
        let n = self.adapters.len();
        if n == 0 {
            if !self.names.is_empty() || !self.modes.is_empty() {
                return Err(CliError::Command("--adapter-name and --lora-mode need an --adapter".into()));
            }
            return Ok(vec![]);
        }
        let names: Vec<String> = match (self.names.len(), n) {
            (0, 1) => vec!["default".to_string()],
            (k, n) if k == n => self.names.clone(),
            (k, n) => {
                return Err(CliError::Command(format!(
                "{n} --adapter given with {k} --adapter-name: name every adapter (one --adapter-name each, in order)"
            )))
            }
        };
        let modes: Vec<LoraMode> = match self.modes.len() {
            0 => vec![LoraMode::Exact; n],
            1 => vec![self.modes[0].into(); n],
            k if k == n => self.modes.iter().map(|m| (*m).into()).collect(),
            k => {
                return Err(CliError::Command(format!(
                    "{n} --adapter given with {k} --lora-mode: give one or one each"
                )))
            }
        };
        Ok(self
            .adapters
            .iter()
            .zip(names)
            .zip(modes)
            .map(|((dir, name), mode)| AdapterArg {
                dir: dir.clone(),
                name,
                opts: LoraImportOptions { mode, allow_partial: self.lora_partial },
            })
            .collect())
    }
}

/// Imports adapters for the TP layout `meta`, printing each import's warnings once (mean mode's loss).
pub fn import_adapters(meta: &CheckpointMetadata, adapters: &[AdapterArg]) -> Result<Vec<ImportedAdapter>> {
    adapters
        .iter()
        .map(|a| {
            let imported = import_adapter(meta, &PeftAdapter::open(&a.dir)?, &a.name, a.opts)?;
            for w in &imported.warnings {
                errln!("warning: {w}");
            }
            Ok(imported)
        })
        .collect()
}
