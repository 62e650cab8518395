//! `neuron-spec train`: trains the example Llama-family model at tp N (ranks on threads), in full or only a
//! LoRA adapter (`--adapter`), and writes a trained sharded checkpoint with its AdamW state.
//!
//! The arguments resolve to a [`TrainJob`] before any rank starts (every input check happens there, so bad
//! input writes nothing). A rank's work is [`TrainJob::init_rank`] plus `train_rank`'s loop: a function of
//! the rank's context and its communicator, the same for ranks on threads and for MPI processes.

use crate::adapter_args::{import_adapters, AdapterArg, LoraModeArg};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use neuron_spec::checkpoint::adapters::imported_rank_adapter;
use neuron_spec::checkpoint::{ShardedCheckpoint, METADATA_PATH};
use neuron_spec::format::HfCheckpoint;
use neuron_spec::lora::{ImportedAdapter, LoraImportOptions, LoraRankSource};
use neuron_spec::spec::contract::{CustomModule, Device, TpContext};
use neuron_spec::train::{
    exact_lora_masks, has_optimizer_state, optimizer_adapter, read_optimizer_state, trained_adapter,
    write_lora_checkpoint, write_trained_checkpoint, AdamWConfig, FrozenBase, OptimizerState, RankTrainer, TrainMode,
    TrainOptions,
};
use neuron_spec::{CheckpointMetadata, Error, Result, Spec, StateDict, TensorSource};
use neuron_spec_models::{
    load_hf_rank_model, load_sharded_rank_model, model_metadata, train_ranks, LlamaForCausalLM, ModelConfig, QkvLayout,
};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
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
        (TrainData::Rows(_), Some(_)) => Err(Error::Invalid(format!(
            "--seq-len applies to text data; {} holds token-id rows, which train as they are",
            a.data.display()
        ))),
        (TrainData::Documents(_), None) => Err(Error::Invalid(format!(
            "{} holds text: --seq-len N is needed (the tokens of each row)",
            a.data.display()
        ))),
        (TrainData::Documents(docs), Some(seq)) => {
            let tok = neuron_spec_models::TextTokenizer::open(&a.model)?;
            let rows = tok.training_rows(&docs, seq as usize)?;
            if rows.is_empty() {
                return Err(Error::Invalid(format!(
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
    let bad = || Error::Invalid(format!("--betas: expected B1,B2 (e.g. 0.9,0.999), got {s:?}"));
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

/// Where the run's model comes from.
pub enum Source {
    /// An HF checkpoint: a new run.
    Hf(HfCheckpoint),
    /// A trained sharded checkpoint: the run resumes.
    Sharded(ShardedCheckpoint),
}

/// A training run resolved from the arguments: what every rank loads and what is written at the end.
pub struct TrainJob {
    /// The model directory (HF or trained sharded checkpoint).
    pub model_dir: PathBuf,
    /// Its config.
    pub cfg: ModelConfig,
    /// TP size.
    pub tp: usize,
    /// Fused q/k/v.
    pub fuse: bool,
    /// The model's TP layout at `tp`.
    pub meta: CheckpointMetadata,
    /// The model's weights.
    pub source: Source,
    /// The adapter a LoRA run trains (the base is then frozen).
    pub adapter: Option<ImportedAdapter>,
    /// Optimizer, clipping and mode.
    pub options: TrainOptions,
}

impl TrainJob {
    /// Checks the arguments against the model (and, on resume, the checkpoint) before anything runs.
    pub fn new(a: &TrainArgs) -> Result<Self> {
        let adamw = AdamWConfig { lr: a.lr, betas: parse_betas(&a.betas)?, eps: a.eps, weight_decay: a.weight_decay };
        adamw.validate()?;
        let cfg = ModelConfig::read(&a.model.join("config.json"))?;
        let (tp, fuse, source, adapter) = if a.model.join(METADATA_PATH).exists() {
            let ck = ShardedCheckpoint::open(&a.model)?;
            if let Some(tp) = a.tp.filter(|t| *t != ck.tp) {
                return Err(Error::Invalid(format!(
                    "{} is sharded at tp {}; --tp {tp} differs (reshard it first)",
                    a.model.display(),
                    ck.tp
                )));
            }
            if !has_optimizer_state(&a.model) {
                return Err(Error::Invalid(format!(
                    "{}: no optimizer state (optimizer/state.json): cannot resume training from it",
                    a.model.display()
                )));
            }
            let fuse = ck.metadata.specs().any(|(_, s)| matches!(s, Spec::GqaQkv(g) if g.fuse_qkv));
            let run_adapter = optimizer_adapter(&a.model)?;
            match (&a.adapter, &run_adapter) {
                (Some(p), None) => {
                    return Err(Error::Invalid(format!(
                        "--adapter {}: {} is a full-training checkpoint (its optimizer state has no adapter); a \
                         LoRA run starts from an HF model",
                        p.display(),
                        a.model.display()
                    )))
                }
                (Some(p), Some(name)) => {
                    return Err(Error::Invalid(format!(
                        "--adapter {}: {} is a LoRA run of adapter {name}, which resuming continues; leave \
                         --adapter out",
                        p.display(),
                        a.model.display()
                    )))
                }
                _ => {}
            }
            (ck.tp, fuse, Source::Sharded(ck), run_adapter)
        } else {
            let tp = a.tp.ok_or_else(|| Error::Invalid("--tp is required to train an HF checkpoint".into()))?;
            // A tp the model does not fit is refused naming the tp sizes that do.
            crate::layouts::hf_layout(&a.model, tp, neuron_spec_models::QkvLayout::gqa(a.fuse_qkv))?;
            (tp, a.fuse_qkv, Source::Hf(HfCheckpoint::open(&a.model)?), None)
        };
        let meta = model_metadata(&cfg, tp, fuse)?;
        if let Source::Sharded(ck) = &source {
            if meta.model_weight_transformation_specs != ck.metadata.model_weight_transformation_specs {
                return Err(Error::Metadata {
                    path: ck.dir.join(METADATA_PATH),
                    reason: "the checkpoint's layout differs from its config.json's model (other config?)".into(),
                });
            }
        }
        let adapter = match (&a.adapter, adapter) {
            (Some(dir), _) => {
                let arg = AdapterArg {
                    dir: dir.clone(),
                    name: a.adapter_name.clone().unwrap_or_else(|| "default".into()),
                    opts: LoraImportOptions {
                        mode: a.lora_mode.unwrap_or(LoraModeArg::Exact).into(),
                        allow_partial: false,
                    },
                };
                import_adapters(&meta, &[arg])?.pop()
            }
            (None, Some(name)) => Some(trained_adapter(&a.model, &name, &meta)?),
            (None, None) => None,
        };
        let mode = if adapter.is_some() { TrainMode::LoraOnly } else { TrainMode::Full };
        let options = TrainOptions { adamw, grad_clip: a.grad_clip, mode };
        Ok(Self { model_dir: a.model.clone(), cfg, tp, fuse, meta, source, adapter, options })
    }

    /// Rank `ctx.rank`'s trainer on `device` (an autodiff device), from its own slices of the model (and
    /// adapter), with the saved AdamW state on resume.
    pub fn init_rank(&self, ctx: TpContext, device: &Device) -> Result<RankTrainer<LlamaForCausalLM>> {
        fn rank_file(ck: &ShardedCheckpoint, rank: usize) -> Result<&neuron_spec::checkpoint::rank::RankSource> {
            ck.ranks.get(rank).ok_or_else(|| Error::Invalid(format!("no rank file for rank {rank}")))
        }
        let mut t = match (&self.source, &self.adapter) {
            (Source::Hf(hf), None) => {
                let model = load_hf_rank_model(hf, &self.cfg, ctx, self.fuse, device)?;
                RankTrainer::new(model, &StateDict::new(), self.options, device)?
            }
            (Source::Sharded(ck), None) => {
                let model = load_sharded_rank_model(ck, &self.cfg, ctx, device)?;
                RankTrainer::new(model, rank_file(ck, ctx.rank)?, self.options, device)?
            }
            (source, Some(a)) => {
                let model = LlamaForCausalLM::from_config(&self.cfg, ctx, QkvLayout::gqa(self.fuse), device)?;
                let local;
                let base: &dyn TensorSource = match source {
                    Source::Hf(hf) => {
                        local = neuron_spec::spec::compile::adapt_state_dict(
                            &self.meta,
                            hf,
                            ctx.size,
                            ctx.rank,
                            Default::default(),
                        )?;
                        &local
                    }
                    Source::Sharded(ck) => rank_file(ck, ctx.rank)?,
                };
                let src = LoraRankSource::new(base, vec![imported_rank_adapter(&self.meta, a, ctx.size, ctx.rank)?])?;
                let model = model.load_rank_tensors("", &src, device)?;
                let mut t = RankTrainer::new(model, &src, self.options, device)?;
                t.lora_masks = exact_lora_masks(&self.meta, a, ctx.size, ctx.rank)?;
                t
            }
        };
        if let Source::Sharded(_) = &self.source {
            t = t.with_state(read_optimizer_state(&self.model_dir, ctx.rank)?)?;
        }
        Ok(t)
    }

    /// Writes the trained checkpoint: every rank's tensors and AdamW state, in rank order.
    pub fn write(&self, out: &Path, ranks: &[(StateDict, OptimizerState)], force: bool) -> Result<()> {
        let adamw = &self.options.adamw;
        match &self.adapter {
            None => write_trained_checkpoint(out, &self.model_dir, &self.meta, ranks, adamw, force),
            Some(a) => {
                let base = match &self.source {
                    Source::Hf(_) => FrozenBase::Hf(&self.model_dir),
                    Source::Sharded(_) => FrozenBase::Sharded(&self.model_dir),
                };
                write_lora_checkpoint(out, base, &self.meta, a, ranks, adamw, force)
            }
        }
    }
}

/// The options of `train --comm mpi` (one process per rank: full training only; the LoRA path, with its
/// adapter files and frozen base, runs on threads).
pub fn mpi_options(a: &TrainArgs) -> Result<TrainOptions> {
    if a.steps == 0 {
        return Err(Error::Invalid("--steps must be at least 1".into()));
    }
    let lora_resume =
        a.model.join(METADATA_PATH).exists() && has_optimizer_state(&a.model) && optimizer_adapter(&a.model)?.is_some();
    if a.adapter.is_some() || lora_resume {
        return Err(Error::Invalid(
            "--comm mpi trains the full model only: LoRA training (--adapter, or resuming a LoRA run) runs with \
             --comm threads"
                .into(),
        ));
    }
    let adamw = AdamWConfig { lr: a.lr, betas: parse_betas(&a.betas)?, eps: a.eps, weight_decay: a.weight_decay };
    adamw.validate()?;
    Ok(TrainOptions { adamw, grad_clip: a.grad_clip, mode: TrainMode::Full })
}

/// Runs `train`; prints `step K loss X` per step and the throughput.
pub fn run(a: TrainArgs, quiet: bool) -> Result<i32> {
    if a.steps == 0 {
        return Err(Error::Invalid("--steps must be at least 1".into()));
    }
    if a.out.exists() && !a.force {
        return Err(Error::Invalid(format!("{} exists (use --force to replace it)", a.out.display())));
    }
    let job = TrainJob::new(&a)?;
    let data = batches(&a.data, training_rows(&a)?, a.batch_size, job.cfg.llama.vocab_size)?;
    let bar = if !quiet && std::io::stderr().is_terminal() {
        let b = ProgressBar::new(a.steps as u64);
        if let Ok(s) = ProgressStyle::with_template("training [{bar:40}] {pos}/{len} steps, {msg} eta {eta}") {
            b.set_style(s.progress_chars("=> "));
        }
        Some(b)
    } else {
        None
    };
    let started = Instant::now();
    let tokens_per_step: Vec<usize> = data.iter().map(|b| b.len() * b[0].len()).collect();
    let on_step = |k: usize, loss: f32| {
        let line = format!("step {k} loss {loss:.6}");
        match &bar {
            Some(b) => {
                b.println(&line);
                b.inc(1);
                let done: usize = (0..b.position() as usize).map(|i| tokens_per_step[i % tokens_per_step.len()]).sum();
                b.set_message(format!("{:.0} tokens/s", done as f64 / started.elapsed().as_secs_f64().max(1e-9)));
            }
            None => println!("{line}"),
        }
    };
    let run = train_ranks(job.tp, &data, a.steps, &|ctx, device| job.init_rank(ctx, device), &on_step)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    let tokens: usize = (0..a.steps).map(|i| tokens_per_step[i % tokens_per_step.len()]).sum();
    if !quiet {
        let what = match &job.adapter {
            Some(ad) => format!("adapter {} (base frozen)", ad.name),
            None => "all parameters".to_string(),
        };
        errln!(
            "trained {what} for {} steps at tp {}: {:.1} s, {:.0} tokens/s",
            a.steps,
            job.tp,
            secs,
            tokens as f64 / secs.max(1e-9)
        );
    }
    job.write(&a.out, &run.ranks, a.force)?;
    if !quiet {
        errln!("wrote {}", a.out.display());
    }
    Ok(0)
}
