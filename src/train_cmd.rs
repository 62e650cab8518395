//! `neuron-spec train`: the arguments, then one call into the runtime (`Train` on the model's `Source`, on
//! threads or MPI processes): trains in full or only a LoRA adapter (`--adapter`), new from an HF model or
//! resumed from a trained checkpoint, and writes the trained sharded checkpoint with its AdamW state.

use crate::adapter_args::LoraModeArg;
use crate::comm_arg::Comm;
use crate::error::{CliError, Result};
use crate::exit::EXIT_OK;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use neuron_spec::lora::LoraImportOptions;
use neuron_spec::train::AdamWConfig;
use neuron_spec_models::runtime::TransportKind;
use neuron_spec_models::{Adapter, QkvLayout, Source, Train};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

/// `train` arguments.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// An HF checkpoint directory, or a trained sharded checkpoint (resumes: its tp, step, AdamW state and,
    /// for a LoRA run, its adapter).
    pub model: PathBuf,
    /// Output: a sharded checkpoint with the trained weights (or adapter) and the AdamW state (must not exist
    /// unless --force).
    pub out: PathBuf,
    /// TP size (an HF model; a sharded checkpoint trains at its own tp).
    #[arg(long)]
    pub tp: Option<usize>,
    /// One fused `weight_qkv` per layer (an HF model).
    #[arg(long)]
    pub fuse_qkv: bool,
    /// Training data: a safetensors file with `input_ids` I64 [batch, seq], JSONL of {"input_ids": [...]}, or
    /// text: a `.txt` file (one document) or JSONL of {"text": "..."} (one document a line), tokenized with
    /// the model folder's tokenizer.json and packed into rows of --seq-len.
    #[arg(long)]
    pub data: PathBuf,
    /// Text data: tokens per row. Each document is encoded with special tokens, followed by the EOS id; the
    /// documents are concatenated and cut into rows of this length; the remainder is dropped.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub seq_len: Option<u32>,
    /// Optimizer steps (batches are cycled).
    #[arg(long)]
    pub steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// AdamW betas, `B1,B2`.
    #[arg(long, default_value = "0.9,0.999")]
    pub betas: String,
    /// AdamW eps (outside the square root, as torch).
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (torch's clip_grad_norm_).
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Rows per batch (default: the whole file is one batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Train only this HF PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors); the base is
    /// frozen. An HF model only: a LoRA run's checkpoint resumes its own adapter.
    #[arg(long, value_name = "PEFT_DIR")]
    pub adapter: Option<PathBuf>,
    /// The adapter's name (default: `default`).
    #[arg(long, value_name = "NAME", requires = "adapter")]
    pub adapter_name: Option<String>,
    /// How a fused group's LoRA A matrices combine: exact (training equals peft's; default) or mean (the
    /// reference's shared A).
    #[arg(long, value_enum, value_name = "MODE", requires = "adapter")]
    pub lora_mode: Option<LoraModeArg>,
    /// Replace an existing output (only once the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// Where the ranks run: threads of this process, or one MPI process per rank (under mpirun/srun; the tp is
    /// the number of processes, each writes its own rank files).
    #[arg(long, value_enum, default_value_t = crate::comm_arg::Comm::Threads)]
    pub comm: crate::comm_arg::Comm,
}

pub use neuron_spec::train::data::batches;
use neuron_spec::train::data::{read_data, TrainData};

/// The training rows of `--data`: token-id rows as they are, or text tokenized with the model folder's
/// tokenizer and packed into rows of `--seq-len`.
pub fn training_rows(a: &TrainArgs) -> Result<Vec<Vec<i64>>> {
    match (read_data(&a.data)?, a.seq_len) {
        (TrainData::Rows(rows), None) => Ok(rows),
        (TrainData::Rows(_), Some(_)) => Err(CliError::Command(format!(
            "--seq-len applies to text data; {} holds token-id rows, which train as they are",
            a.data.display()
        ))),
        (TrainData::Documents(_), None) => Err(CliError::Command(format!(
            "{} holds text: --seq-len N is needed (the tokens of each row)",
            a.data.display()
        ))),
        (TrainData::Documents(docs), Some(seq)) => {
            let tok = neuron_spec_models::TextTokenizer::open(&a.model)?;
            let rows = tok.training_rows(&docs, seq as usize)?;
            if rows.is_empty() {
                return Err(CliError::Command(format!(
                    "{}: its {} document(s) give fewer tokens than one row of --seq-len {seq}",
                    a.data.display(),
                    docs.len()
                )));
            }
            Ok(rows)
        }
    }
}

fn parse_betas(s: &str) -> Result<(f64, f64)> {
    let bad = || CliError::Command(format!("--betas: expected B1,B2 (e.g. 0.9,0.999), got {s:?}"));
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

/// The AdamW hyperparameters of the arguments, checked.
fn adamw(a: &TrainArgs) -> Result<AdamWConfig> {
    let adamw = AdamWConfig { lr: a.lr, betas: parse_betas(&a.betas)?, eps: a.eps, weight_decay: a.weight_decay };
    adamw.validate()?;
    Ok(adamw)
}

/// Runs `train` (threads or MPI processes): one call into the runtime; prints `step K loss X` per step (rank 0),
/// what each MPI rank read, and the throughput.
pub fn run(a: TrainArgs, quiet: bool) -> Result<i32> {
    if a.steps == 0 {
        return Err(CliError::Command("--steps must be at least 1".into()));
    }
    let adamw = adamw(&a)?;
    let source = Source::open(&a.model)?;
    let source = if source.is_sharded() {
        source
    } else {
        let tp = match (a.tp, a.comm) {
            (Some(tp), _) => tp,
            (None, Comm::Threads) => {
                return Err(CliError::Command("--tp is required to train an HF checkpoint".into()));
            }
            (None, Comm::Mpi) => 1,
        };
        if a.comm == Comm::Threads {
            // A tp the model does not fit is refused naming the tp sizes that do.
            crate::layouts::hf_layout(&a.model, tp, QkvLayout::gqa(a.fuse_qkv))?;
        }
        source.fuse_qkv(a.fuse_qkv)
    };
    let data = batches(&a.data, training_rows(&a)?, a.batch_size, source.config().llama.vocab_size)?;
    let tokens_per_step: Vec<usize> = data.iter().map(|b| b.len() * b[0].len()).collect();
    let tokens: usize = (0..a.steps).map(|i| tokens_per_step[i % tokens_per_step.len()]).sum();
    let bar = if !quiet && a.comm == Comm::Threads && std::io::stderr().is_terminal() {
        let b = ProgressBar::new(a.steps as u64);
        if let Ok(s) = ProgressStyle::with_template("training [{bar:40}] {pos}/{len} steps, {msg} eta {eta}") {
            b.set_style(s.progress_chars("=> "));
        }
        Some(b)
    } else {
        None
    };
    let started = Instant::now();
    let mut task = Train::new(data, a.steps, adamw).grad_clip(a.grad_clip).write_to(&a.out, a.force).on_step(
        |k: usize, loss: f32| {
            let line = format!("step {k} loss {loss:.6}");
            match &bar {
                Some(b) => {
                    b.println(&line);
                    b.inc(1);
                    let done: usize =
                        (0..b.position() as usize).map(|i| tokens_per_step[i % tokens_per_step.len()]).sum();
                    b.set_message(format!("{:.0} tokens/s", done as f64 / started.elapsed().as_secs_f64().max(1e-9)));
                }
                None => println!("{line}"),
            }
        },
    );
    if let Some(dir) = &a.adapter {
        task = task.lora(Adapter::Peft {
            dir: dir.clone(),
            name: a.adapter_name.clone().unwrap_or_else(|| "default".into()),
            options: LoraImportOptions { mode: a.lora_mode.unwrap_or(LoraModeArg::Exact).into(), allow_partial: false },
        });
    }
    crate::comm_arg::on_ranks(a.comm, a.tp, "train", &|transport, prints| {
        let out = neuron_spec_models::run(&source, transport, &task)?;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        if transport.kind() == TransportKind::Mpi {
            for r in &out.reads {
                crate::comm_arg::print_bytes_read(r, transport.tp().unwrap_or(1))?;
            }
        }
        if !prints || quiet {
            return Ok(EXIT_OK);
        }
        for w in &out.warnings {
            errln!("warning: {w}");
        }
        let secs = started.elapsed().as_secs_f64();
        let what = match &out.adapter {
            Some(name) => format!("adapter {name} (base frozen)"),
            None => "all parameters".to_string(),
        };
        let tp = transport.tp().or(source.own_tp()).unwrap_or(1);
        let how = if transport.kind() == TransportKind::Mpi { format!(" ({tp} processes)") } else { String::new() };
        errln!(
            "trained {what} for {} steps at tp {tp}{how}: {:.1} s, {:.0} tokens/s",
            a.steps,
            secs,
            tokens as f64 / secs.max(1e-9)
        );
        errln!("wrote {}", a.out.display());
        Ok(EXIT_OK)
    })
}
