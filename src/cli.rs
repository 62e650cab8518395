//! The `neuron-spec` command line: shard, consolidate, reshard, plan, inspect, and a `forward` hook that a
//! model crate fills in (the binary lives next to the model; see `examples/`).

use clap::{Args, Parser, Subcommand};
use neuron_spec::checkpoint::{
    consolidate, consolidate_with_adapters, shard, shard_with_adapters, AdapterOptions, ShardedCheckpoint, WriteOptions,
};
use neuron_spec::compare::max_abs_diff;
use neuron_spec::error::{Error, Result};
use neuron_spec::io::{parse_size, HfCheckpoint};
use neuron_spec::llama::{llama_layout_with, LlamaConfig, QkvLayout};
use neuron_spec::lora::{import_adapter, ImportedAdapter, LoraImportOptions, LoraMode, PeftAdapter};
use neuron_spec::metadata::CheckpointMetadata;
use neuron_spec::model::{plan_shards, PlanOptions};
use neuron_spec::plan::TensorSource;
use neuron_spec::reshard::{reshard, reshard_plan};
use std::path::{Path, PathBuf};

/// The largest |logit - golden| that `forward --golden` and `quickstart` accept.
pub const GOLDEN_TOL: f32 = 1e-4;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: bad input or a failed operation (the message says which file, tensor and why).
pub const EXIT_ERROR: i32 = 1;
/// Exit code: bad command-line usage (clap).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: `forward --golden` found a difference above the tolerance.
pub const EXIT_MISMATCH: i32 = 3;

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
    fn qkv(&self) -> QkvLayout {
        if self.plain_attention {
            QkvLayout::Plain
        } else {
            QkvLayout::gqa(self.fuse_qkv)
        }
    }
}

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

impl AdapterArgs {
    /// Pairs each `--adapter` with its name and mode.
    pub fn resolve(&self) -> Result<Vec<AdapterArg>> {
        let n = self.adapters.len();
        if n == 0 {
            if !self.names.is_empty() || !self.modes.is_empty() {
                return Err(Error::Invalid("--adapter-name and --lora-mode need an --adapter".into()));
            }
            return Ok(vec![]);
        }
        let names: Vec<String> = match (self.names.len(), n) {
            (0, 1) => vec!["default".to_string()],
            (k, n) if k == n => self.names.clone(),
            (k, n) => {
                return Err(Error::Invalid(format!(
                "{n} --adapter given with {k} --adapter-name: name every adapter (one --adapter-name each, in order)"
            )))
            }
        };
        let modes: Vec<LoraMode> = match self.modes.len() {
            0 => vec![LoraMode::Exact; n],
            1 => vec![self.modes[0].into(); n],
            k if k == n => self.modes.iter().map(|m| (*m).into()).collect(),
            k => return Err(Error::Invalid(format!("{n} --adapter given with {k} --lora-mode: give one or one each"))),
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
                eprintln!("warning: {w}");
            }
            Ok(imported)
        })
        .collect()
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

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Shard an HF checkpoint directory into TP rank files, metadata and config.
    Shard {
        /// HF checkpoint directory (config.json + model.safetensors or an index).
        hf_dir: PathBuf,
        /// Output directory (must not exist unless --force).
        out_dir: PathBuf,
        /// TP size.
        #[arg(long)]
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
    },
    /// Consolidate a sharded checkpoint into an HF directory that transformers loads.
    Consolidate {
        /// Sharded checkpoint directory.
        sharded_dir: PathBuf,
        /// Output HF directory.
        out_dir: PathBuf,
        /// Largest output file (HF units: 5GB, 500MB, 20KB).
        #[arg(long, default_value = "5GB")]
        max_shard_size: String,
        /// Replicated kv heads: fail if copies differ (check), keep rank order's first (first), or average (mean).
        #[arg(long, value_enum, default_value_t = KvReplicasArg::Check)]
        kv_replicas: KvReplicasArg,
        /// Replace an existing output, once the new one is complete.
        #[arg(long)]
        force: bool,
        /// Write only this adapter (repeatable); by default every adapter is written, `default` beside the base
        /// weights and any other in `<out_dir>/<name>/`.
        #[arg(long = "adapter", value_name = "NAME")]
        adapters: Vec<String>,
        /// Fold this adapter into the base weights (a plain HF checkpoint); no adapter is written then, unless
        /// named with --adapter.
        #[arg(long, value_name = "NAME")]
        merge_adapter: Option<String>,
        /// Leave out rank-file tensors that the metadata does not describe (refused otherwise).
        #[arg(long)]
        allow_unexpected: bool,
    },
    /// Convert a TP N checkpoint to TP M directly.
    Reshard {
        /// Sharded checkpoint directory.
        sharded_dir: PathBuf,
        /// Output directory.
        out_dir: PathBuf,
        /// New TP size.
        #[arg(long)]
        tp: usize,
        /// New number of pipeline stages (default: the input's).
        #[arg(long)]
        pp: Option<usize>,
        /// Replace an existing output, once the new one is complete.
        #[arg(long)]
        force: bool,
        /// Leave out rank-file tensors that the metadata does not describe (refused otherwise).
        #[arg(long)]
        allow_unexpected: bool,
        /// Replicated kv heads: fail if copies differ (check) or keep the lowest rank's (first).
        #[arg(long, value_enum, default_value_t = KvReplicasArg::Check)]
        kv_replicas: KvReplicasArg,
    },
    /// Dry run: what each rank would read and write, and every validation result. Writes nothing.
    Plan {
        /// HF checkpoint or sharded checkpoint directory.
        dir: PathBuf,
        /// TP size.
        #[arg(long)]
        tp: usize,
        /// Pipeline stages (default: 1 for an HF checkpoint, the input's for a sharded one).
        #[arg(long)]
        pp: Option<usize>,
        /// Attention layout.
        #[command(flatten)]
        layout: LayoutArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
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
        /// TP size (HF input only; a sharded checkpoint has its own).
        #[arg(long, default_value_t = 1)]
        tp: usize,
        /// Fused qkv layout.
        #[arg(long)]
        fuse_qkv: bool,
        /// safetensors file with `input_ids` (I64 [batch, seq]).
        #[arg(long)]
        input_ids: Option<PathBuf>,
        /// Golden file with `logits`; prints `max_abs_diff` and fails above 1e-4.
        #[arg(long)]
        golden: Option<PathBuf>,
        /// LoRA adapters to run with (all active); a sharded checkpoint's own adapters are always loaded.
        #[command(flatten)]
        lora: AdapterArgs,
    },
    /// The main job on a tiny checkpoint: shard to tp 4, run forward, consolidate, check the round trip.
    Quickstart {
        /// HF checkpoint directory to use.
        #[arg(long, default_value = "tests/fixtures/llama-gqa")]
        model: PathBuf,
        /// Where to write (a temporary directory if absent).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

/// What a model crate provides for `forward`.
pub trait ForwardRunner {
    /// Runs the model on `dir` (HF or sharded) and returns the logits `[batch, seq, vocab]` flattened, with
    /// their shape.
    fn forward(&self, dir: &Path, tp: usize, fuse_qkv: bool, input_ids: &[Vec<i64>]) -> Result<(Vec<f32>, Vec<usize>)>;

    /// [`forward`](Self::forward) with LoRA adapters imported from PEFT directories, all active. The default
    /// refuses adapters.
    fn forward_with_adapters(
        &self,
        dir: &Path,
        tp: usize,
        fuse_qkv: bool,
        adapters: &[AdapterArg],
        input_ids: &[Vec<i64>],
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        if !adapters.is_empty() {
            return Err(Error::Invalid("this model's forward does not take LoRA adapters".into()));
        }
        self.forward(dir, tp, fuse_qkv, input_ids)
    }
}

/// The default input ids (those of the fixtures' golden files).
pub const DEFAULT_INPUT_IDS: [[i64; 7]; 2] = [[1, 17, 42, 99, 3, 127, 64], [5, 0, 88, 23, 111, 7, 56]];

/// Runs a parsed command; returns the process exit code. Errors print on one line (more with `-v`).
pub fn run(cli: Cli, runner: Option<&dyn ForwardRunner>) -> i32 {
    let verbose = cli.verbose;
    match dispatch(cli, runner) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if verbose {
                eprintln!("{e:#?}");
            }
            EXIT_ERROR
        }
    }
}

/// Parses `std::env::args` and runs; the `main` of the binary.
pub fn main_with(runner: Option<&dyn ForwardRunner>) -> i32 {
    match Cli::try_parse() {
        Ok(cli) => run(cli, runner),
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            code
        }
    }
}

fn hf_layout(dir: &Path, tp: usize, qkv: QkvLayout) -> Result<CheckpointMetadata> {
    let cfg = LlamaConfig::read(&dir.join("config.json"))?;
    llama_layout_with(&cfg, tp, qkv)
}

/// A sharded checkpoint, ours or optimum-neuron's (`.pt` rank files): detected from its stage-0 metadata.
fn is_sharded(dir: &Path) -> bool {
    neuron_spec::checkpoint::is_sharded_dir(dir)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn json_out(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?);
    Ok(())
}

fn dispatch(cli: Cli, runner: Option<&dyn ForwardRunner>) -> Result<i32> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Shard { hf_dir, out_dir, tp, pp, layout, force, allow_unexpected, lora } => {
            let meta = hf_layout(&hf_dir, tp, layout.qkv())?;
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
            if !quiet {
                println!(
                    "sharded {} into {} at tp {tp}, pp {pp}: {} rank files, {} tensors, {} written",
                    hf_dir.display(),
                    out_dir.display(),
                    r.files.len(),
                    r.tensors,
                    human(r.bytes_written)
                );
                for (rank, b) in r.bytes_read_per_rank.iter().enumerate() {
                    println!("  rank {rank}: read {}", human(*b as u64));
                }
                if !r.unexpected.is_empty() {
                    println!("  unused input tensors: {}", r.unexpected.join(", "));
                }
                for a in &adapters {
                    println!(
                        "  adapter {} ({:?} mode): {} LoRA modules → {}",
                        a.name,
                        a.layout.mode,
                        a.layout.modules.len(),
                        out_dir.join(neuron_spec::lora::disk::adapter_dir_name(&a.name)).display()
                    );
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
        } => {
            let max = parse_size(&max_shard_size)?;
            let r = consolidate_with_adapters(
                &sharded_dir,
                &out_dir,
                &WriteOptions {
                    force,
                    max_shard_size: Some(max),
                    kv_replicas: kv_replicas.into(),
                    allow_unexpected,
                    progress: crate::progress_bar::sink(!quiet),
                    pp: None,
                },
                &AdapterOptions { only: (!adapters.is_empty()).then_some(adapters), merge: merge_adapter.clone() },
            )?;
            if !quiet {
                println!(
                    "consolidated {} into {}: {} tensors, {} in {} file(s)",
                    sharded_dir.display(),
                    out_dir.display(),
                    r.tensors,
                    human(r.bytes_written),
                    r.files.len()
                );
                if let Some(m) = &merge_adapter {
                    println!("  adapter {m} merged into the base weights");
                }
                for f in r.files.iter().filter(|f| f.ends_with(neuron_spec::lora::ADAPTER_WEIGHTS)) {
                    println!("  adapter written: {}", f.display());
                }
            }
            Ok(EXIT_OK)
        }
        Command::Reshard { sharded_dir, out_dir, tp, pp, force, allow_unexpected, kv_replicas } => {
            let r = reshard(
                &sharded_dir,
                &out_dir,
                tp,
                &WriteOptions {
                    force,
                    allow_unexpected,
                    kv_replicas: kv_replicas.into(),
                    progress: crate::progress_bar::sink(!quiet),
                    pp,
                    ..Default::default()
                },
            )?;
            if !quiet {
                println!(
                    "resharded {} into {} at tp {tp}: {} tensors, {} written",
                    sharded_dir.display(),
                    out_dir.display(),
                    r.tensors,
                    human(r.bytes_written)
                );
            }
            Ok(EXIT_OK)
        }
        Command::Plan { dir, tp, pp, layout, json } => plan_command(&dir, tp, pp, layout.qkv(), json),
        Command::Inspect { dir, json } => inspect_command(&dir, json),
        Command::Forward { dir, tp, fuse_qkv, input_ids, golden, lora } => {
            let runner = runner.ok_or_else(|| Error::Invalid("this build has no model for `forward`".into()))?;
            forward_command(runner, &dir, tp, fuse_qkv, &lora.resolve()?, input_ids.as_deref(), golden.as_deref())
        }
        Command::Quickstart { model, work_dir } => quickstart(runner, &model, work_dir.as_deref()),
    }
}

fn plan_command(dir: &Path, tp: usize, pp: Option<usize>, qkv: QkvLayout, json: bool) -> Result<i32> {
    let sharded = is_sharded(dir);
    let (plan, source_kind, validation, stages) = if sharded {
        let ck = ShardedCheckpoint::open(dir)?;
        let (plan, meta) = reshard_plan(&ck, tp)?;
        let stages = neuron_spec::stages::StageAssignment::for_metadata(&meta, pp.unwrap_or(ck.pp()))?;
        let format = match ck.format {
            neuron_spec::checkpoint::RankFormat::Safetensors => "safetensors",
            neuron_spec::checkpoint::RankFormat::Pt => "optimum-neuron .pt",
        };
        let kind = format!("sharded checkpoint ({format}) at tp {}, pp {}", ck.tp, ck.pp());
        (plan, kind, vec!["rank files and metadata consistent".to_string()], stages)
    } else {
        let hf = HfCheckpoint::open(dir)?;
        let meta = hf_layout(dir, tp, qkv)?;
        let mut v = Vec::new();
        for (m, s) in meta.specs() {
            s.validate(tp)?;
            v.push(format!("{m}: {} valid at tp {tp}", s.class_name()));
        }
        let plan = plan_shards(&meta, &hf, tp, PlanOptions::default()).map_err(|e| e.in_checkpoint(dir))?;
        v.push("no missing and no unexpected tensors".to_string());
        let stages = neuron_spec::stages::StageAssignment::for_metadata(&meta, pp.unwrap_or(1))?;
        (plan, "HF checkpoint".to_string(), v, stages)
    };
    let stage_of =
        |name: &str| stages.stages_of(name).map(|v| v.iter().map(usize::to_string).collect::<Vec<_>>().join("+"));
    let read = plan.bytes_read_per_rank();
    if json {
        let v = serde_json::json!({
            "source": source_kind,
            "tp": tp,
            "bytes_read_per_rank": read,
            "validation": validation,
            "pp": stages.pp(),
            "stage_layers": stages.layers.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
            "ranks": plan.ranks,
        });
        json_out(&v)?;
    } else {
        println!("plan for {} ({source_kind}) at tp {tp}", dir.display());
        for line in &validation {
            println!("  ok: {line}");
        }
        for (s, r) in stages.layers.iter().enumerate() {
            let mut extra = Vec::new();
            if s == 0 {
                extra.push("embed_tokens");
            }
            if s + 1 == stages.pp() {
                extra.push("norm, lm_head");
                if stages.tied_embeddings && s > 0 {
                    extra.push("a copy of the tied embed_tokens");
                }
            }
            println!(
                "stage {s}: layers {}..{}{}",
                r.start,
                r.end,
                extra.iter().map(|e| format!(" + {e}")).collect::<String>()
            );
        }
        for (r, tensors) in plan.ranks.iter().enumerate() {
            println!("rank {r}: {} tensors, reads {}", tensors.len(), human(read[r] as u64));
            for t in tensors {
                let srcs: Vec<String> = t
                    .blocks
                    .iter()
                    .map(|b| {
                        let part = if sharded { format!("rank{}:", b.src.part) } else { String::new() };
                        format!(
                            "{part}{}[dim{} {}..{}]→{}..",
                            b.src.name,
                            b.dim,
                            b.src_offset,
                            b.src_offset + b.len,
                            b.dst_offset
                        )
                    })
                    .collect();
                println!("  [stage {}] {} {:?} {} ← {}", stage_of(&t.name)?, t.name, t.shape, t.dtype, srcs.join(", "));
            }
        }
    }
    Ok(EXIT_OK)
}

/// What `inspect` reports.
struct Summary {
    kind: &'static str,
    tensors: Vec<neuron_spec::plan::TensorInfo>,
    total: usize,
    tp: usize,
    pp: usize,
    version: Option<u32>,
    specs: Vec<String>,
}

fn summarize(dir: &Path) -> Result<Summary> {
    if is_sharded(dir) {
        let ck = ShardedCheckpoint::open(dir)?;
        let rank0 = ck.ranks.first().ok_or_else(|| Error::RankFiles {
            dir: dir.join(neuron_spec::checkpoint::RANKS_DIR),
            reason: "no rank files".into(),
        })?;
        let tensors = rank0.names().filter_map(|n| rank0.info(n)).collect();
        let total = ck.ranks.iter().flat_map(|r| r.names().filter_map(|n| r.info(n))).map(|i| i.nbytes()).sum();
        let specs = ck.metadata.specs().map(|(m, s)| format!("{m}: {}", s.class_name())).collect();
        let kind = match ck.format {
            neuron_spec::checkpoint::RankFormat::Safetensors => "sharded",
            neuron_spec::checkpoint::RankFormat::Pt => "sharded (optimum-neuron .pt)",
        };
        Ok(Summary { kind, tensors, total, tp: ck.tp, pp: ck.pp(), version: ck.metadata.format_version, specs })
    } else {
        let hf = HfCheckpoint::open(dir)?;
        let tensors = hf.names().into_iter().filter_map(|n| hf.info(&n)).collect();
        Ok(Summary { kind: "hf", tensors, total: hf.total_bytes(), tp: 1, pp: 1, version: None, specs: vec![] })
    }
}

fn inspect_command(dir: &Path, json: bool) -> Result<i32> {
    let Summary { kind, tensors, total, tp, pp, version, specs } = summarize(dir)?;
    let mut dtypes: std::collections::BTreeMap<String, usize> = Default::default();
    for t in &tensors {
        *dtypes.entry(t.dtype.to_string()).or_default() += 1;
    }
    if json {
        let tensors: Vec<serde_json::Value> =
            tensors.iter().map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype, "shape": t.shape})).collect();
        json_out(&serde_json::json!({
            "kind": kind, "tp": tp, "pp": pp, "format_version": version, "total_bytes": total,
            "dtypes": dtypes, "specs": specs, "tensors": tensors,
        }))?;
    } else {
        println!("{} ({kind} checkpoint)", dir.display());
        println!("  tp: {tp}, pp: {pp}");
        if kind.starts_with("sharded") {
            println!(
                "  metadata format_version: {}",
                version.map_or("none (written by the reference)".to_string(), |v| v.to_string())
            );
        }
        println!("  tensors{}: {}", if kind.starts_with("sharded") { " per rank" } else { "" }, tensors.len());
        println!("  dtypes: {}", dtypes.iter().map(|(d, n)| format!("{d} ×{n}")).collect::<Vec<_>>().join(", "));
        println!("  total size: {}", human(total as u64));
        for s in &specs {
            println!("  spec {s}");
        }
    }
    Ok(EXIT_OK)
}

/// Reads `input_ids` ([batch, seq], I64/I32) from a safetensors file.
pub fn read_input_ids(path: &Path) -> Result<Vec<Vec<i64>>> {
    let f = neuron_spec::io::SafetensorsFile::open(path)?;
    let t = f.tensor("input_ids")?;
    let shape = t.shape().to_vec();
    if shape.len() != 2 {
        return Err(Error::ShapeMismatch {
            tensor: "input_ids".into(),
            expected: vec![0, 0],
            found: shape,
            file: Some(path.to_path_buf()),
        });
    }
    let v = t.to_i64_vec()?;
    Ok(v.chunks(shape[1].max(1)).map(<[i64]>::to_vec).collect())
}

fn forward_command(
    runner: &dyn ForwardRunner,
    dir: &Path,
    tp: usize,
    fuse_qkv: bool,
    adapters: &[AdapterArg],
    input_ids: Option<&Path>,
    golden: Option<&Path>,
) -> Result<i32> {
    let ids = match input_ids.or(golden) {
        Some(p) => read_input_ids(p)?,
        None => DEFAULT_INPUT_IDS.iter().map(|r| r.to_vec()).collect(),
    };
    let (logits, shape) = runner.forward_with_adapters(dir, tp, fuse_qkv, adapters, &ids)?;
    println!("logits shape {shape:?}");
    if let Some(g) = golden {
        let f = neuron_spec::io::SafetensorsFile::open(g)?;
        let gl = f.tensor("logits")?;
        if gl.shape() != shape.as_slice() {
            return Err(Error::ShapeMismatch {
                tensor: "logits".into(),
                expected: gl.shape().to_vec(),
                found: shape,
                file: Some(g.to_path_buf()),
            });
        }
        match max_abs_diff(&logits, &gl.to_f32_vec()) {
            Ok(diff) => {
                println!("max_abs_diff {diff:e}");
                if diff > GOLDEN_TOL {
                    eprintln!("error: max_abs_diff {diff:e} is above {GOLDEN_TOL:e}");
                    return Ok(EXIT_MISMATCH);
                }
            }
            Err(m) => {
                eprintln!("error: logits against {}: {m}", g.display());
                return Ok(EXIT_MISMATCH);
            }
        }
    }
    Ok(EXIT_OK)
}

fn quickstart(runner: Option<&dyn ForwardRunner>, model: &Path, work_dir: Option<&Path>) -> Result<i32> {
    let tmp;
    let work = match work_dir {
        Some(w) => w.to_path_buf(),
        None => {
            tmp = std::env::temp_dir().join(format!("neuron-spec-quickstart-{}", std::process::id()));
            tmp
        }
    };
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let sharded = work.join("sharded-tp4");
    let out = work.join("consolidated");
    let tp = 4;
    let meta = hf_layout(model, tp, QkvLayout::Fused)?;
    println!("1. shard {} at tp {tp} (fused qkv) → {}", model.display(), sharded.display());
    let r = shard(model, &sharded, &meta, tp, &WriteOptions { force: true, ..Default::default() })?;
    for (rank, b) in r.bytes_read_per_rank.iter().enumerate() {
        println!("   rank {rank}: read {}, file {}", human(*b as u64), r.files[rank].display());
    }
    if let Some(runner) = runner {
        let golden = model.join("golden.safetensors");
        println!("2. forward: 4 ranks on threads, logits vs {}", golden.display());
        let ids = if golden.exists() {
            read_input_ids(&golden)?
        } else {
            DEFAULT_INPUT_IDS.iter().map(|r| r.to_vec()).collect()
        };
        let (logits, shape) = runner.forward(&sharded, tp, true, &ids)?;
        if golden.exists() {
            let g = neuron_spec::io::SafetensorsFile::open(&golden)?.tensor("logits")?.to_f32_vec();
            match max_abs_diff(&logits, &g) {
                Ok(diff) => {
                    println!("   logits {shape:?}, max_abs_diff {diff:e} (tolerance {GOLDEN_TOL:e})");
                    if diff > GOLDEN_TOL {
                        eprintln!("error: max_abs_diff {diff:e} is above {GOLDEN_TOL:e}");
                        return Ok(EXIT_MISMATCH);
                    }
                }
                Err(m) => {
                    eprintln!("error: logits against {}: {m}", golden.display());
                    return Ok(EXIT_MISMATCH);
                }
            }
        }
    }
    println!("3. consolidate → {}", out.display());
    let c = consolidate(&sharded, &out, &WriteOptions { force: true, ..Default::default() })?;
    let a = HfCheckpoint::open(model)?;
    let b = HfCheckpoint::open(&out)?;
    let mut same = 0;
    for n in a.names() {
        let (x, y) = (a.tensor(&n)?, b.tensor(&n)?);
        if x != y {
            return Err(Error::Invalid(format!("round trip changed tensor {n}")));
        }
        same += 1;
    }
    if b.names().len() != same {
        return Err(Error::Invalid("round trip added tensors".into()));
    }
    println!("   {} tensors, {}: all {same} byte-identical to the input", c.tensors, human(c.bytes_written));
    Ok(EXIT_OK)
}
