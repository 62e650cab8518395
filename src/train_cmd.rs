//! `neuron-spec train`: trains the example Llama-family model at tp N (ranks on threads) and writes a
//! trained sharded checkpoint with its AdamW state.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use neuron_spec::checkpoint::{ShardedCheckpoint, METADATA_PATH};
use neuron_spec::io::HfCheckpoint;
use neuron_spec::train::{
    has_optimizer_state, read_optimizer_state, write_trained_checkpoint, AdamWConfig, RankTrainer, TrainMode,
    TrainOptions,
};
use neuron_spec::{Error, Result, Spec, StateDict};
use neuron_spec_examples::{load_hf_rank_model, load_sharded_rank_model, model_metadata, train_ranks, ModelConfig};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

/// `train` arguments.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// An HF checkpoint directory, or a trained sharded checkpoint (resumes: its tp, step and AdamW state).
    pub model: PathBuf,
    /// Output: a sharded checkpoint with the trained weights and the AdamW state (must not exist unless --force).
    pub out: PathBuf,
    /// TP size (an HF model; a sharded checkpoint trains at its own tp).
    #[arg(long)]
    pub tp: Option<usize>,
    /// One fused `weight_qkv` per layer (an HF model).
    #[arg(long)]
    pub fuse_qkv: bool,
    /// Training data: a safetensors file with `input_ids` I64 [batch, seq], or JSONL of {"input_ids": [...]}.
    #[arg(long)]
    pub data: PathBuf,
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
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Rows per batch (default: the whole file is one batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Replace an existing output (only once the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// Where the ranks run: threads of this process, or one MPI process per rank (under mpirun/srun; the tp is
    /// the number of processes, each writes its own rank files).
    #[arg(long, value_enum, default_value_t = crate::cli::Comm::Threads)]
    pub comm: crate::cli::Comm,
}

pub use neuron_spec::train_data::{batches, read_rows};

fn parse_betas(s: &str) -> Result<(f64, f64)> {
    let bad = || Error::Invalid(format!("--betas: expected B1,B2 (e.g. 0.9,0.999), got {s:?}"));
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

/// Runs `train`; prints `step K loss X` per step and the throughput.
pub fn run(a: TrainArgs, quiet: bool) -> Result<i32> {
    let adamw = AdamWConfig { lr: a.lr, betas: parse_betas(&a.betas)?, eps: a.eps, weight_decay: a.weight_decay };
    let options = TrainOptions { adamw, grad_clip: a.grad_clip, mode: TrainMode::Full };
    options.adamw.validate()?;
    if a.steps == 0 {
        return Err(Error::Invalid("--steps must be at least 1".into()));
    }
    if a.comm == crate::cli::Comm::Mpi {
        #[cfg(feature = "mpi")]
        return crate::mpi_train::run(&a, options, quiet);
        #[cfg(not(feature = "mpi"))]
        return Err(Error::Invalid("--comm mpi: this build has no MPI support (build with `--features mpi`)".into()));
    }
    if a.out.exists() && !a.force {
        return Err(Error::Invalid(format!("{} exists (use --force to replace it)", a.out.display())));
    }
    let cfg = ModelConfig::read(&a.model.join("config.json"))?;
    let data = batches(&a.data, read_rows(&a.data)?, a.batch_size, cfg.llama.vocab_size)?;
    let resume = a.model.join(METADATA_PATH).exists();
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
    let (tp, fuse, run) = if resume {
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
        let run = train_ranks(
            ck.tp,
            &data,
            a.steps,
            &|ctx, device| {
                let model = load_sharded_rank_model(&ck, &cfg, ctx, device)?;
                let rank = ck.ranks.get(ctx.rank).ok_or_else(|| Error::Invalid("no rank file".into()))?;
                RankTrainer::new(model, rank, options, device)?.with_state(read_optimizer_state(&a.model, ctx.rank)?)
            },
            &on_step,
        )?;
        (ck.tp, fuse, run)
    } else {
        let tp = a.tp.ok_or_else(|| Error::Invalid("--tp is required to train an HF checkpoint".into()))?;
        let hf = HfCheckpoint::open(&a.model)?;
        let run = train_ranks(
            tp,
            &data,
            a.steps,
            &|ctx, device| {
                let model = load_hf_rank_model(&hf, &cfg, ctx, a.fuse_qkv, device)?;
                RankTrainer::new(model, &StateDict::new(), options, device)
            },
            &on_step,
        )?;
        (tp, a.fuse_qkv, run)
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    let tokens: usize = (0..a.steps).map(|i| tokens_per_step[i % tokens_per_step.len()]).sum();
    if !quiet {
        eprintln!(
            "trained {} steps at tp {tp}: {:.1} s, {:.0} tokens/s",
            a.steps,
            secs,
            tokens as f64 / secs.max(1e-9)
        );
    }
    let meta = model_metadata(&cfg, tp, fuse)?;
    write_trained_checkpoint(&a.out, &a.model, &meta, &run.ranks, &adamw, a.force)?;
    if !quiet {
        eprintln!("wrote {}", a.out.display());
    }
    Ok(0)
}
