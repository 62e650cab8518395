//! The `neuron-spec` command line: argument parsing and output; each command is one call into the library
//! (shard, consolidate, reshard, plan, inspect) or into the runtime of `neuron-spec-models` (forward, train,
//! generate: a source × a transport × a task).

use crate::adapter_args::{import_adapters, AdapterArg, AdapterArgs};
pub use crate::comm_arg::Comm;
use crate::error::{CliError, Result};
pub use crate::exit::{usage, EXIT_ERROR, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE};
pub use crate::layouts::{hf_layout, is_sharded, layout_from_file, LayoutArgs};
use crate::out::human;
use clap::{Parser, Subcommand};
use neuron_spec::checkpoint::{WriteOptions, METADATA_PATH};
use neuron_spec::compare::{allclose, DEFAULT_ATOL, DEFAULT_RTOL};
use neuron_spec::format::{parse_size, HfCheckpoint};
use neuron_spec::ops::reshard::reshard;
use neuron_spec::tensor::TensorSource;
use neuron_spec::train::{has_optimizer_state, reshard_trained, OPTIMIZER_DIR};
use neuron_spec::Error;
use neuron_spec::{consolidate, shard, shard_with_adapters, AdapterOptions};
use neuron_spec_models::runtime::{Forward, ForwardOutput, Source, Transport, TransportKind};
use neuron_spec_models::{generate_text, QkvLayout};
use std::path::{Path, PathBuf};

/// `--tp`: a TP size from 1 to 4096 (a usage error otherwise: exit 2).
pub fn parse_tp(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(t @ 1..=4096) => Ok(t),
        Ok(t) => Err(format!("tp must be between 1 and 4096, got {t}")),
        Err(_) => Err(format!("expected a TP size (a whole number from 1 to 4096), got {s:?}")),
    }
}

/// `--max-shard-size`: HF units (5GB, 500MB, 20KB, 1GiB) or bytes, above zero.
pub fn parse_shard_size(s: &str) -> std::result::Result<u64, String> {
    match parse_size(s) {
        Ok(0) => Err("the size must be above zero".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

/// `--only`: a regular expression (Rust `regex` syntax).
pub fn parse_regex(s: &str) -> std::result::Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| e.to_string())
}

/// `--atol` / `--rtol`: a finite tolerance, zero or above.
pub fn parse_tolerance(s: &str) -> std::result::Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(t) => Err(format!("a tolerance must be finite and not negative, got {t}")),
        Err(_) => Err(format!("expected a number such as 1e-4, got {s:?}")),
    }
}

/// Move model weights between the Hugging Face layout and tensor-parallel ranks.
#[derive(Debug, Parser)]
#[command(name = "neuron-spec", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// Print error causes and details.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// No progress output.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// `--kv-replicas` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KvReplicasArg {
    /// Fail when replicas differ.
    Check,
    /// Keep the first replica.
    First,
    /// Average the replicas.
    Mean,
}

impl From<KvReplicasArg> for neuron_spec::checkpoint::KvReplicas {
    fn from(a: KvReplicasArg) -> Self {
        match a {
            KvReplicasArg::Check => Self::Check,
            KvReplicasArg::First => Self::First,
            KvReplicasArg::Mean => Self::Mean,
        }
    }
}

/// `reshard --kv-replicas` values (reshard copies one replica; averaging is consolidation's).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReshardKvReplicasArg {
    /// Fail when replicas differ.
    Check,
    /// Keep the first replica.
    First,
}

impl From<ReshardKvReplicasArg> for neuron_spec::checkpoint::KvReplicas {
    fn from(a: ReshardKvReplicasArg) -> Self {
        match a {
            ReshardKvReplicasArg::Check => Self::Check,
            ReshardKvReplicasArg::First => Self::First,
        }
    }
}

/// `consolidate --dtype` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// 32-bit float.
    F32,
}

impl From<DtypeArg> for neuron_spec::DType {
    fn from(a: DtypeArg) -> Self {
        match a {
            DtypeArg::Bf16 => Self::BF16,
            DtypeArg::F16 => Self::F16,
            DtypeArg::F32 => Self::F32,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Shard an HF checkpoint directory into TP rank files, metadata and config.
    Shard {
        /// HF checkpoint directory (config.json + model.safetensors or an index).
        hf_dir: PathBuf,
        /// Output directory (must not exist unless --force).
        out_dir: PathBuf,
        /// TP size (1 to 4096).
        #[arg(long, value_parser = parse_tp)]
        tp: usize,
        /// Pipeline stages (layers split evenly, the first stages taking the remainder).
        #[arg(long, default_value_t = 1)]
        pp: usize,
        /// Attention layout.
        #[command(flatten)]
        layout: LayoutArgs,
        /// Replace an existing output, once the new one is complete.
        #[arg(long)]
        force: bool,
        /// Accept checkpoint tensors that the model does not use.
        #[arg(long)]
        allow_unexpected: bool,
        /// LoRA adapters, sharded beside the base weights in `<out_dir>/adapter_<name>/`.
        #[command(flatten)]
        lora: AdapterArgs,
        /// The model's layout (the JSON of `create_parameter_metadata()`, at any tp) instead of the one derived
        /// from `config.json`: any annotated model.
        #[arg(long = "layout", value_name = "FILE", conflicts_with_all = ["fuse_qkv", "plain_attention"])]
        layout_file: Option<PathBuf>,
    },
    /// Consolidate a sharded checkpoint into an HF directory that transformers loads.
    Consolidate {
        /// Sharded checkpoint directory.
        sharded_dir: PathBuf,
        /// Output HF directory.
        out_dir: PathBuf,
        /// Largest output file (HF units: 5GB, 500MB, 20KB, 1GiB).
        #[arg(long, default_value = "5GB", value_parser = parse_shard_size)]
        max_shard_size: u64,
        /// Replicated kv heads: fail if copies differ (check), keep rank order's first (first), or average (mean).
        #[arg(long, value_enum, default_value_t = KvReplicasArg::Check)]
        kv_replicas: KvReplicasArg,
        /// Replace an existing output, once the new one is complete.
        #[arg(long)]
        force: bool,
        /// Write only this adapter (repeatable); by default every adapter is written, each in `<out_dir>/<name>/`
        /// (`default` included), so that `<out_dir>` itself loads as the base model.
        #[arg(long = "adapter", value_name = "NAME")]
        adapters: Vec<String>,
        /// Fold this adapter into the base weights (a plain HF checkpoint); no adapter is written then, unless
        /// named with --adapter.
        #[arg(long, value_name = "NAME")]
        merge_adapter: Option<String>,
        /// Leave out rank-file tensors that the metadata does not describe (refused otherwise).
        #[arg(long)]
        allow_unexpected: bool,
        /// Cast floating-point tensors on export (round to nearest even, as torch's `.to()`); `config.json`'s
        /// `torch_dtype` follows.
        #[arg(long, value_enum)]
        dtype: Option<DtypeArg>,
        /// Write only the base tensors whose name matches this regular expression (a search, like grep).
        #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
        only: Option<regex::Regex>,
        /// Also write a trained checkpoint's AdamW state with HF names: `<out_dir>/optimizer/exp_avg.safetensors`,
        /// `exp_avg_sq.safetensors` and `state.json` (step, hyperparameters).
        #[arg(long)]
        optimizer: bool,
    },
    /// Convert a TP N checkpoint to TP M directly.
    Reshard {
        /// Sharded checkpoint directory.
        sharded_dir: PathBuf,
        /// Output directory.
        out_dir: PathBuf,
        /// New TP size (1 to 4096).
        #[arg(long, value_parser = parse_tp)]
        tp: usize,
        /// New number of pipeline stages (default: the input's).
        #[arg(long)]
        pp: Option<usize>,
        /// The output's layout (the JSON of `create_parameter_metadata()`, written at any tp), e.g. another
        /// qkv layout; the input's own layout by default.
        #[arg(long = "layout", value_name = "FILE")]
        layout_file: Option<PathBuf>,
        /// Replace an existing output, once the new one is complete.
        #[arg(long)]
        force: bool,
        /// Leave out rank-file tensors that the metadata does not describe (refused otherwise).
        #[arg(long)]
        allow_unexpected: bool,
        /// Replicated kv heads: fail if copies differ (check) or keep the lowest rank's (first). To average
        /// them, consolidate with `--kv-replicas mean` and shard the result.
        #[arg(long, value_enum, default_value_t = ReshardKvReplicasArg::Check)]
        kv_replicas: ReshardKvReplicasArg,
    },
    /// Dry run: what each rank would read and write, and every validation result. Writes nothing.
    Plan {
        /// HF checkpoint or sharded checkpoint directory.
        dir: PathBuf,
        /// TP size (for a sharded checkpoint: the tp to reshard to; its own by default).
        #[arg(long, value_parser = parse_tp)]
        tp: Option<usize>,
        /// Pipeline stages (default: 1 for an HF checkpoint, the input's for a sharded one).
        #[arg(long)]
        pp: Option<usize>,
        /// Attention layout (HF input only).
        #[command(flatten)]
        layout: LayoutArgs,
        /// The model's layout (the JSON of `create_parameter_metadata()`) instead of the one from `config.json`.
        #[arg(long = "layout", value_name = "FILE", conflicts_with_all = ["fuse_qkv", "plain_attention"])]
        layout_file: Option<PathBuf>,
        /// Machine-readable output (always valid JSON, also when a check fails).
        #[arg(long)]
        json: bool,
        /// The per-tensor table (every rank tensor and its blocks) after the summary.
        #[arg(long)]
        tensors: bool,
        /// Draw where one layer's HF rows and heads land on the ranks, as an SVG file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Summarize an HF or sharded checkpoint.
    Inspect {
        /// Checkpoint directory.
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the TP model on the input ids of a golden file and compare logits.
    Forward {
        /// HF or sharded checkpoint directory.
        dir: PathBuf,
        /// TP size (HF input only, default 1; a sharded checkpoint has its own).
        #[arg(long, value_parser = parse_tp)]
        tp: Option<usize>,
        /// Fused qkv layout (HF input only; a sharded checkpoint has its own).
        #[arg(long)]
        fuse_qkv: bool,
        /// safetensors file with `input_ids` (I64 [batch, seq]).
        #[arg(long)]
        input_ids: Option<PathBuf>,
        /// Text, encoded with the folder's tokenizer.json (special tokens added) as one row; prints the 5 most
        /// likely next tokens (text, token, id, logit).
        #[arg(long, conflicts_with_all = ["input_ids", "golden"])]
        prompt: Option<String>,
        /// Golden file with `logits` (and the `input_ids` used when --input-ids is absent): passes when
        /// |logit - golden| <= atol + rtol·|golden| everywhere (numpy's allclose; a NaN always fails), exit 3
        /// otherwise; prints the largest absolute and relative differences and where they are.
        #[arg(long)]
        golden: Option<PathBuf>,
        /// The absolute tolerance of --golden.
        #[arg(long, value_parser = parse_tolerance, default_value_t = DEFAULT_ATOL)]
        atol: f32,
        /// The relative tolerance of --golden.
        #[arg(long, value_parser = parse_tolerance, default_value_t = DEFAULT_RTOL)]
        rtol: f32,
        /// Writes `logits` (and `hidden_0`, `hidden_1` where the model exposes them; logits only under MPI,
        /// by rank 0) as F32 safetensors.
        #[arg(long)]
        output: Option<PathBuf>,
        /// LoRA adapters to run with (all active); a sharded checkpoint's own adapters are always loaded.
        #[command(flatten)]
        lora: AdapterArgs,
        /// Where the ranks run: threads of this process, or one MPI process per rank (under mpirun/srun; tp is
        /// the number of processes).
        #[arg(long, value_enum, default_value_t = Comm::Threads)]
        comm: Comm,
    },
    /// Generate text after a prompt with the folder's tokenizer (greedy, or sampling with a seed), on a KV
    /// cache; streams the text as it is produced.
    Generate(crate::generate_cmd::GenerateArgs),
    /// Train the model at tp N (full fine-tuning, AdamW as torch's); writes the trained sharded checkpoint
    /// with its optimizer state. MODEL is an HF directory or a trained checkpoint (resumes).
    Train(crate::train_cmd::TrainArgs),
    /// The main job on a tiny checkpoint: shard to tp 4, run forward, consolidate, check the round trip.
    Quickstart {
        /// HF checkpoint directory to use (the repository's fixture by default).
        #[arg(long, default_value = QUICKSTART_MODEL)]
        model: PathBuf,
        /// Where to write, kept afterwards (a temporary directory, removed at the end, if absent).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Replace the contents of an existing --work-dir.
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script (e.g. `neuron-spec completions bash > /etc/bash_completion.d/neuron-spec`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `quickstart`'s default model: the repository's fixture (relative to the working directory).
pub const QUICKSTART_MODEL: &str = "tests/fixtures/llama-gqa";

/// The default input ids (those of the fixtures' golden files).
pub const DEFAULT_INPUT_IDS: [[i64; 7]; 2] = [[1, 17, 42, 99, 3, 127, 64], [5, 0, 88, 23, 111, 7, 56]];

/// Runs a parsed command; returns the process exit code. Errors print on one line (more with `-v`).
pub fn run(cli: Cli) -> i32 {
    let verbose = cli.verbose;
    match dispatch(cli) {
        Ok(code) => code,
        // The reader of stdout went away (`| head -1`): nothing left to say to anyone.
        Err(e) if crate::out::is_closed_stdout(&e) => EXIT_OK,
        Err(e) => {
            errln!("error: {e}");
            if verbose {
                errln!("{e:#?}");
            }
            EXIT_ERROR
        }
    }
}

/// Parses `std::env::args` and runs; the `main` of the binary.
pub fn main_with() -> i32 {
    match Cli::try_parse() {
        Ok(cli) => run(cli),
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            if e.use_stderr() && wants_json(std::env::args().skip(1)) {
                // `plan --json` / `inspect --json` print JSON whatever happens, usage errors included.
                let v = serde_json::json!({"ok": false, "error": e.render().to_string().trim_end()});
                return match crate::out::json(&v) {
                    Ok(()) => code,
                    Err(_) => EXIT_ERROR,
                };
            }
            let _ = e.print();
            code
        }
    }
}

/// Whether the command line asks `plan` or `inspect` for JSON (the commands whose output is JSON in every case).
fn wants_json(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    let command = args.iter().find(|a| !a.starts_with('-'));
    matches!(command.map(String::as_str), Some("plan" | "inspect")) && args.iter().any(|a| a == "--json")
}

/// Fails with a hint when `dir` is a sharded checkpoint where an HF folder is expected.
fn expect_hf(dir: &Path, command: &str) -> Result<()> {
    if is_sharded(dir) {
        return Err(CliError::Command(format!(
            "{} is a sharded checkpoint ({METADATA_PATH}), not an HF folder: `{command}` takes an HF checkpoint; use \
             `neuron-spec reshard` for another tp size or `neuron-spec consolidate` to get the HF folder back",
            dir.display()
        )));
    }
    Ok(())
}

/// Fails with a hint when `dir` is not a sharded checkpoint.
fn expect_sharded(dir: &Path, command: &str) -> Result<()> {
    if !is_sharded(dir) {
        let hint = if dir.join("config.json").exists() || dir.join(neuron_spec::lora::ADAPTER_CONFIG).exists() {
            "it looks like an HF folder: use `neuron-spec shard` to make a sharded checkpoint from it"
        } else {
            "is this the right directory?"
        };
        return Err(CliError::Command(format!(
            "{} is not a sharded checkpoint (no {METADATA_PATH}): `{command}` takes one; {hint}",
            dir.display()
        )));
    }
    Ok(())
}

fn dispatch(cli: Cli) -> Result<i32> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Shard { hf_dir, out_dir, tp, pp, layout, force, allow_unexpected, lora, layout_file } => {
            expect_hf(&hf_dir, "shard")?;
            let meta = match &layout_file {
                Some(f) => layout_from_file(f, tp)?,
                None => hf_layout(&hf_dir, tp, layout.qkv())?,
            };
            let adapters = import_adapters(&meta, &lora.resolve()?)?;
            let r = shard_with_adapters(
                &hf_dir,
                &out_dir,
                &meta,
                tp,
                &adapters,
                &WriteOptions {
                    force,
                    allow_unexpected,
                    pp: Some(pp),
                    progress: crate::progress_bar::sink(!quiet),
                    ..Default::default()
                },
            )?;
            if has_optimizer_state(&hf_dir) {
                // `consolidate --optimizer`'s moments (HF names): said, never dropped silently.
                errln!(
                    "note: {} holds an AdamW state ({OPTIMIZER_DIR}/), not sharded: training from the output starts \
                     afresh (resume from the trained sharded checkpoint instead)",
                    hf_dir.display()
                );
            }
            if !quiet {
                out!(
                    "sharded {} into {} at tp {tp}, pp {pp}: {} rank files, {} tensors, {} written",
                    hf_dir.display(),
                    out_dir.display(),
                    r.files.len(),
                    r.tensors,
                    human(r.bytes_written)
                );
                for (rank, b) in r.bytes_read_per_rank.iter().enumerate() {
                    out!("  rank {rank}: read {}", human(*b as u64));
                }
                if !r.unexpected.is_empty() {
                    out!("  unused input tensors: {}", r.unexpected.join(", "));
                }
                side_files_line(&r.side_files)?;
                for a in &adapters {
                    out!(
                        "  adapter {} ({:?} mode): {} LoRA modules → {}",
                        a.name,
                        a.layout.mode,
                        a.layout.modules.len(),
                        out_dir.join(neuron_spec::checkpoint::adapters::adapter_dir_name(&a.name)).display()
                    );
                }
                if !adapters.is_empty() {
                    out!("  adapters: {} tensors, {} written", r.adapter_tensors, human(r.adapter_bytes));
                }
            }
            Ok(EXIT_OK)
        }
        Command::Consolidate {
            sharded_dir,
            out_dir,
            max_shard_size,
            kv_replicas,
            force,
            adapters,
            merge_adapter,
            allow_unexpected,
            dtype,
            only,
            optimizer,
        } => {
            expect_sharded(&sharded_dir, "consolidate")?;
            let r = neuron_spec::consolidate_with_optimizer(
                &sharded_dir,
                &out_dir,
                &WriteOptions {
                    force,
                    max_shard_size: Some(max_shard_size),
                    kv_replicas: kv_replicas.into(),
                    allow_unexpected,
                    progress: crate::progress_bar::sink(!quiet),
                    dtype: dtype.map(Into::into),
                    only,
                    pp: None,
                    layout: None,
                },
                &AdapterOptions { only: (!adapters.is_empty()).then_some(adapters), merge: merge_adapter.clone() },
                optimizer,
            )?;
            if !optimizer && has_optimizer_state(&sharded_dir) {
                // An HF folder has no place for it unless asked: said, never dropped silently.
                errln!(
                    "note: {} holds the AdamW state of a training run ({OPTIMIZER_DIR}/), not written: pass \
                     --optimizer to write it too (or resume from the sharded checkpoint itself)",
                    sharded_dir.display()
                );
            }
            if !quiet {
                let weights = r.files.iter().filter(|f| f.extension().is_some_and(|e| e == "safetensors")).count();
                let index = if r.files.len() > weights { " + index" } else { "" };
                out!(
                    "consolidated {} into {}: {} tensors, {} in {weights} weight file(s){index}",
                    sharded_dir.display(),
                    out_dir.display(),
                    r.tensors,
                    human(r.bytes_written),
                );
                side_files_line(&r.side_files)?;
                if let Some(m) = &merge_adapter {
                    out!("  adapter {m} merged into the base weights");
                }
                for f in &r.adapter_files {
                    out!("  adapter written: {}", f.display());
                }
                if !r.adapter_files.is_empty() {
                    out!("  adapters: {} tensors, {} written", r.adapter_tensors, human(r.adapter_bytes));
                }
                if optimizer {
                    out!("  optimizer state written: {}", out_dir.join(OPTIMIZER_DIR).display());
                }
            }
            Ok(EXIT_OK)
        }
        Command::Reshard { sharded_dir, out_dir, tp, pp, layout_file, force, allow_unexpected, kv_replicas } => {
            expect_sharded(&sharded_dir, "reshard")?;
            let layout = layout_file.as_deref().map(|f| layout_from_file(f, tp)).transpose()?;
            let opts = WriteOptions {
                layout,
                force,
                allow_unexpected,
                kv_replicas: kv_replicas.into(),
                progress: crate::progress_bar::sink(!quiet),
                pp,
                ..Default::default()
            };
            // A trained checkpoint's AdamW state follows its weights (`train` resumes from the output).
            let trained = has_optimizer_state(&sharded_dir);
            let r = if trained {
                reshard_trained(&sharded_dir, &out_dir, tp, &opts)?
            } else {
                reshard(&sharded_dir, &out_dir, tp, &opts)?
            };
            if !quiet {
                out!(
                    "resharded {} into {} at tp {tp}: {} rank files, {} tensors, {} written",
                    sharded_dir.display(),
                    out_dir.display(),
                    r.files.len(),
                    r.tensors,
                    human(r.bytes_written)
                );
                side_files_line(&r.side_files)?;
                if trained {
                    out!("  optimizer state resharded: {}", out_dir.join(OPTIMIZER_DIR).display());
                }
            }
            Ok(EXIT_OK)
        }
        Command::Plan { dir, tp, pp, layout, layout_file, json, tensors, svg } => {
            crate::plan_cmd::plan_command(&crate::plan_cmd::PlanArgs {
                dir,
                tp,
                pp,
                layout,
                layout_file,
                json,
                tensors,
                svg,
            })
        }
        Command::Inspect { dir, json } => crate::inspect_cmd::inspect_command(&dir, json),
        Command::Forward { dir, tp, fuse_qkv, input_ids, prompt, golden, atol, rtol, lora, comm, output } => {
            if is_sharded(&dir) {
                let which = match (tp, fuse_qkv) {
                    (Some(_), true) => Some("--tp and --fuse-qkv"),
                    (Some(_), false) => Some("--tp"),
                    (None, true) => Some("--fuse-qkv"),
                    (None, false) => None,
                };
                if let Some(w) = which {
                    return usage(format!(
                        "{w}: {} is a sharded checkpoint, which runs at its own tp and qkv layout; leave {w} out \
                         (or `neuron-spec reshard` it to another tp first)",
                        dir.display()
                    ));
                }
            }
            if input_ids.is_none() && golden.is_none() && prompt.is_none() {
                return usage(
                    "forward needs the token ids to run on: --input-ids FILE (a safetensors file with `input_ids`, \
                     I64 [batch, seq]) or --prompt TEXT (--golden FILE also supplies the golden's input_ids)"
                        .into(),
                );
            }
            if !is_sharded(&dir) && comm == Comm::Threads {
                // A tp the model does not fit is refused naming the tp sizes that do.
                hf_layout(&dir, tp.unwrap_or(1), QkvLayout::gqa(fuse_qkv))?;
            }
            let files = ForwardFiles {
                input_ids: input_ids.as_deref(),
                prompt: prompt.as_deref(),
                golden: golden.as_deref(),
                output: output.as_deref(),
                tolerance: (atol, rtol),
            };
            forward_command(&dir, tp, fuse_qkv, &lora.resolve()?, comm, &files)
        }
        // Training and generation reuse freed memory (before any thread starts); the I/O commands keep
        // the default, which returns it (their peak RSS is bounded by a test).
        Command::Generate(args) => {
            neuron_spec::train::keep_freed_memory();
            crate::generate_cmd::run(&args)
        }
        Command::Train(args) => {
            neuron_spec::train::keep_freed_memory();
            crate::train_cmd::run(args, quiet)
        }
        Command::Quickstart { model, work_dir, force } => {
            if quiet {
                return usage("-q/--quiet does not apply to quickstart: it exists to show its steps".into());
            }
            quickstart(&model, work_dir.as_deref(), force)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "neuron-spec", &mut buf);
            use std::io::Write;
            let mut o = std::io::stdout().lock();
            o.write_all(&buf).and_then(|_| o.flush()).map_err(|e| Error::io(crate::out::STDOUT, e))?;
            Ok(EXIT_OK)
        }
    }
}

/// One line listing the non-weight files carried over.
fn side_files_line(files: &[PathBuf]) -> Result<()> {
    if !files.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        out!("  non-weight files kept: {}", names.join(", "));
    }
    Ok(())
}

/// Reads `input_ids` ([batch, seq], I64/I32) from a safetensors file.
pub fn read_input_ids(path: &Path) -> Result<Vec<Vec<i64>>> {
    let f = neuron_spec::format::SafetensorsFile::open(path)?;
    let t = f.tensor("input_ids")?;
    let shape = t.shape().to_vec();
    if shape.len() != 2 {
        return Err(CliError::Library(Error::ShapeMismatch {
            tensor: "input_ids".into(),
            expected: vec![0, 0],
            found: shape,
            file: Some(path.to_path_buf()),
        }));
    }
    let v = t.to_i64_vec()?;
    Ok(v.chunks(shape[1].max(1)).map(<[i64]>::to_vec).collect())
}

/// The files `forward` reads and writes besides the checkpoint.
struct ForwardFiles<'a> {
    input_ids: Option<&'a Path>,
    /// `--prompt`: text instead of `input_ids`.
    prompt: Option<&'a str>,
    golden: Option<&'a Path>,
    output: Option<&'a Path>,
    /// `--atol`, `--rtol`.
    tolerance: (f32, f32),
}

fn forward_command(
    dir: &Path,
    tp: Option<usize>,
    fuse_qkv: bool,
    adapters: &[AdapterArg],
    comm: Comm,
    files: &ForwardFiles<'_>,
) -> Result<i32> {
    let tokenizer = files.prompt.map(|_| neuron_spec_models::TextTokenizer::open(dir)).transpose()?;
    let ids = match (files.prompt, &tokenizer) {
        (Some(text), Some(tok)) => {
            let row = tok.encode(text, true)?;
            tok.check_in_vocab(&row, neuron_spec_models::ModelConfig::read_dir(dir)?.llama.vocab_size)?;
            if row.is_empty() {
                return Err(CliError::Command("--prompt encodes to no token".into()));
            }
            vec![row]
        }
        _ => match files.input_ids.or(files.golden) {
            Some(p) => read_input_ids(p)?,
            None => return Err(CliError::Command("forward: no --input-ids".into())),
        },
    };
    let source = adapters.iter().fold(Source::open(dir)?.fuse_qkv(fuse_qkv), |s, a| s.with_adapter(a.adapter()));
    let mut task = Forward::new(ids);
    task.output = files.output.map(Path::to_path_buf);
    crate::comm_arg::on_ranks(comm, tp, "forward", &|transport, rank0| {
        let out = neuron_spec_models::run(&source, transport, &task)?;
        if transport.kind() == TransportKind::Mpi {
            for r in &out.reads {
                crate::comm_arg::print_bytes_read(r, transport.tp().unwrap_or(1))?;
            }
        }
        if !rank0 {
            return Ok(EXIT_OK);
        }
        for w in &out.warnings {
            errln!("warning: {w}");
        }
        let code = finish_logits(&out, files)?;
        if let Some(tok) = &tokenizer {
            print_top_tokens(tok, &out.logits, &out.logits_shape)?;
        }
        Ok(code)
    })
}

/// The 5 most likely next tokens after the last position of row 0 (`--prompt`): rank, id, logit, the token
/// and its decoded text.
fn print_top_tokens(tok: &neuron_spec_models::TextTokenizer, logits: &[f32], shape: &[usize]) -> Result<()> {
    let (Some(&seq), Some(&vocab)) = (shape.get(1), shape.get(2)) else {
        return Err(CliError::Command(format!("logits of shape {shape:?}: expected [batch, seq, vocab]")));
    };
    let last = logits.get((seq - 1) * vocab..seq * vocab).ok_or_else(|| {
        CliError::Command(format!("logits hold {} values, fewer than their shape {shape:?}", logits.len()))
    })?;
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    out!("next token after the prompt ({seq} tokens), most likely first:");
    out!("  {:>4}  {:>8}  {:>12}  {:<16}  text", "rank", "id", "logit", "token");
    for (k, &id) in order.iter().take(5).enumerate() {
        let token = tok.id_to_token(id as i64).unwrap_or_default();
        let text = tok.decode(&[id as i64])?;
        out!("  {:>4}  {id:>8}  {:>12.6}  {:<16}  {text:?}", k + 1, last[id], format!("{token:?}"));
    }
    Ok(())
}

/// Prints the logits' shape, says where the outputs were written and compares with `files.golden`.
fn finish_logits(out: &ForwardOutput, files: &ForwardFiles<'_>) -> Result<i32> {
    let shape = out.logits_shape.to_vec();
    out!("logits shape {shape:?}");
    if let Some(path) = files.output {
        let names: Vec<&str> = out.named().iter().map(|(n, _, _)| *n).collect();
        out!("wrote {} to {}", names.join(", "), path.display());
    }
    if let Some(g) = files.golden {
        let f = neuron_spec::format::SafetensorsFile::open(g)?;
        let gl = f.tensor("logits")?;
        if gl.shape() != shape.as_slice() {
            return Err(CliError::Library(Error::ShapeMismatch {
                tensor: "logits".into(),
                expected: gl.shape().to_vec(),
                found: shape,
                file: Some(g.to_path_buf()),
            }));
        }
        if let Some(code) = check_golden(&out.logits, &gl.to_f32_vec(), g, files.tolerance, "")? {
            return Ok(code);
        }
    }
    Ok(EXIT_OK)
}

/// Compares `logits` with the golden ones from `path` by [`allclose`] at `(atol, rtol)` (a NaN or infinity on
/// either side fails): prints the verdict after `indent`, and returns the exit code of a mismatch.
fn check_golden(
    logits: &[f32],
    golden: &[f32],
    path: &Path,
    (atol, rtol): (f32, f32),
    indent: &str,
) -> Result<Option<i32>> {
    match allclose(logits, golden, atol, rtol) {
        Ok(v) => {
            out!("{indent}{v}");
            if !v.pass {
                let (i, j) = (v.max_abs_index, v.first_failure.unwrap_or(v.max_abs_index));
                errln!(
                    "error: logits against {}: {} value(s) outside atol {atol:e} + rtol {rtol:e}·|golden|; at index \
                     {j}: computed {}, golden {}; max_abs_diff {:e} at index {i}",
                    path.display(),
                    v.failures,
                    logits[j],
                    golden[j],
                    v.max_abs,
                );
                return Ok(Some(EXIT_MISMATCH));
            }
            Ok(None)
        }
        Err(m) => {
            errln!("error: logits against {}: {m}", path.display());
            Ok(Some(EXIT_MISMATCH))
        }
    }
}

/// A directory removed when dropped (quickstart's temporary work directory).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn quickstart(model: &Path, work_dir: Option<&Path>, force: bool) -> Result<i32> {
    if !model.join("config.json").exists() {
        let hint = if model == Path::new(QUICKSTART_MODEL) {
            format!(
                "the default model {QUICKSTART_MODEL} is relative to the repository: run from the repository's root, \
                 or pass an HF checkpoint with --model <dir>"
            )
        } else {
            "pass an HF checkpoint directory (config.json + model.safetensors) with --model <dir>".to_string()
        };
        return Err(CliError::Command(format!("{}: no config.json; {hint}", model.display())));
    }
    let _cleanup;
    let work = match work_dir {
        Some(w) => {
            let non_empty = std::fs::read_dir(w).map(|mut d| d.next().is_some()).unwrap_or(false);
            if non_empty && !force {
                return Err(CliError::Command(format!(
                    "{} exists and is not empty: pass --force to replace quickstart's outputs there, or another --work-dir",
                    w.display()
                )));
            }
            w.to_path_buf()
        }
        None => {
            let tmp = std::env::temp_dir().join(format!("neuron-spec-quickstart-{}", std::process::id()));
            _cleanup = RemoveOnDrop(tmp.clone());
            tmp
        }
    };
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    if work_dir.is_none() {
        out!("(working in {}, removed at the end; --work-dir DIR keeps the outputs)", work.display());
    }
    let sharded = work.join("sharded-tp4");
    let out = work.join("consolidated");
    let tp = 4;
    let meta = hf_layout(model, tp, QkvLayout::Fused)?;
    out!("1. shard {} at tp {tp} (fused qkv) → {}", model.display(), sharded.display());
    let r = shard(model, &sharded, &meta, tp, &WriteOptions { force: true, ..Default::default() })?;
    for (rank, b) in r.bytes_read_per_rank.iter().enumerate() {
        out!("   rank {rank}: read {}, file {}", human(*b as u64), r.files[rank].display());
    }
    let golden = model.join("golden.safetensors");
    out!("2. forward: 4 ranks on threads, logits vs {}", golden.display());
    let ids =
        if golden.exists() { read_input_ids(&golden)? } else { DEFAULT_INPUT_IDS.iter().map(|r| r.to_vec()).collect() };
    let fwd =
        neuron_spec_models::run(&Source::open(&sharded)?, &Transport::threads_at_source_tp(), &Forward::new(ids))?;
    if golden.exists() {
        let g = neuron_spec::format::SafetensorsFile::open(&golden)?.tensor("logits")?.to_f32_vec();
        out!("   logits {:?}", fwd.logits_shape);
        if let Some(code) = check_golden(&fwd.logits, &g, &golden, (DEFAULT_ATOL, DEFAULT_RTOL), "   ")? {
            return Ok(code);
        }
    }
    out!("3. consolidate → {}", out.display());
    let c = consolidate(&sharded, &out, &WriteOptions { force: true, ..Default::default() })?;
    let a = HfCheckpoint::open(model)?;
    let b = HfCheckpoint::open(&out)?;
    let mut same = 0;
    for n in a.names() {
        let (x, y) = (a.tensor(&n)?, b.tensor(&n)?);
        if x != y {
            return Err(CliError::Command(format!("round trip changed tensor {n}")));
        }
        same += 1;
    }
    if b.names().len() != same {
        return Err(CliError::Command("round trip added tensors".into()));
    }
    out!("   {} tensors, {}: all {same} byte-identical to the input", c.tensors, human(c.bytes_written));
    quickstart_generate(&sharded, tp)?;
    Ok(EXIT_OK)
}

/// quickstart's prompt for `generate`.
const QUICKSTART_PROMPT: &str = "The fox sat by the river and";

/// quickstart's last step: greedy `generate` from the sharded checkpoint through the tokenizer it carries.
fn quickstart_generate(sharded: &Path, tp: usize) -> Result<()> {
    if !sharded.join(neuron_spec_models::text::TOKENIZER_FILE).exists() {
        out!("4. generate: skipped (the model has no tokenizer.json)");
        return Ok(());
    }
    out!("4. generate: {tp} ranks, greedy, 20 new tokens after {QUICKSTART_PROMPT:?} (the model is random: so is its text)");
    let opts = neuron_spec_models::GenerateOptions {
        max_new_tokens: 20,
        eos_token_ids: Vec::new(),
        sampling: neuron_spec_models::Sampling::Greedy,
    };
    let source = Source::open(sharded)?;
    let g = generate_text(&source, &Transport::threads(tp), QUICKSTART_PROMPT, false, &opts, &mut |_| Ok(()))?;
    out!("   ids {:?}", g.ids);
    out!("   text {:?}", g.text);
    Ok(())
}
