//! `neuron-spec generate`: parses the arguments, hands them to the runtime's generation task (threads or MPI
//! processes) and prints: the text as it is produced, or one JSON object.

use crate::comm_arg::Comm;
use crate::error::{CliError, Result};
use crate::exit::{usage, EXIT_OK};
use clap::Args;
use neuron_spec::Error;
use neuron_spec_models::{GenerateOptions, Generated, Sampling, Source};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `generate` arguments.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// An HF model folder or a sharded checkpoint, with the model's tokenizer.json (and, for --chat, a chat
    /// template).
    pub dir: PathBuf,
    /// The prompt text.
    #[arg(long, required_unless_present = "prompt_file", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// A file whose text (UTF-8, as is) is the prompt.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// The most tokens to generate (generation also stops at an EOS id of generation_config.json or config.json).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_new_tokens: u32,
    /// TP size, 1 to 4096 (HF input only, default 1; a sharded checkpoint has its own).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub tp: Option<u32>,
    /// Where the ranks run: threads of this process, or one MPI process per rank (under mpirun/srun).
    #[arg(long, value_enum, default_value_t = Comm::Threads)]
    pub comm: Comm,
    /// Sample (instead of greedy) with this temperature.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sample among the k most likely tokens (`--top-k 1` is greedy).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities reach p (nucleus sampling).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sample, with this seed (default 0 when another sampling option is given): the same tokens run to run
    /// and at every tp.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object at the end, `{"prompt_ids": [...], "ids": [new ids], "text": "..."}`, instead of
    /// streaming the text.
    #[arg(long)]
    pub json: bool,
    /// Put the prompt through the folder's chat template as one user message, with the assistant's turn
    /// opened (transformers' `apply_chat_template(..., add_generation_prompt=True)`).
    #[arg(long)]
    pub chat: bool,
}

impl GenerateArgs {
    /// The sampling the options ask for: greedy unless a sampling option is given.
    pub fn sampling(&self) -> Sampling {
        if self.temperature.is_none() && self.top_k.is_none() && self.top_p.is_none() && self.seed.is_none() {
            return Sampling::Greedy;
        }
        Sampling::Sample {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed.unwrap_or(0),
        }
    }

    /// The prompt text (`--prompt` or the file's).
    pub fn prompt_text(&self) -> Result<String> {
        match (&self.prompt, &self.prompt_file) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(f)) => read_prompt(f),
            (None, None) => Err(CliError::Command("--prompt or --prompt-file is required".into())),
        }
    }

    /// What the library needs (EOS ids from the folder).
    pub fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens as usize,
            eos_token_ids: Vec::new(),
            sampling: self.sampling(),
        }
    }
}

fn read_prompt(f: &Path) -> Result<String> {
    let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
    String::from_utf8(bytes).map_err(|e| CliError::Command(format!("{}: the prompt is not UTF-8 ({e})", f.display())))
}

/// Writes a piece of streamed text and flushes it.
pub fn print_piece(piece: &str) -> neuron_spec::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(piece.as_bytes()).and_then(|_| o.flush()).map_err(|e| Error::io(crate::out::STDOUT, e))
}

/// The end of a run: a newline after the streamed text, or the JSON object.
pub fn finish(json: bool, g: &Generated) -> Result<i32> {
    if json {
        crate::out::json(&serde_json::json!({"prompt_ids": g.prompt_ids, "ids": g.ids, "text": g.text}))?;
    } else {
        out!("");
    }
    Ok(EXIT_OK)
}

/// The usage error of an option that does not apply to the input (exit 2), if any.
pub fn misuse(a: &GenerateArgs) -> Option<String> {
    (a.tp.is_some() && crate::layouts::is_sharded(&a.dir)).then(|| {
        format!(
            "--tp: {} is a sharded checkpoint, which runs at its own tp; leave --tp out (or `neuron-spec reshard` it)",
            a.dir.display()
        )
    })
}

/// The prompt text and the checked options.
pub fn inputs(a: &GenerateArgs) -> Result<(String, GenerateOptions)> {
    let opts = a.options();
    opts.sampling.check()?;
    Ok((a.prompt_text()?, opts))
}

/// Runs `generate` (threads or MPI processes): one call into the runtime; rank 0 streams and prints.
pub fn run(a: &GenerateArgs) -> Result<i32> {
    if let Some(m) = misuse(a) {
        return usage(m);
    }
    let (prompt, opts) = inputs(a)?;
    let source = Source::open(&a.dir)?;
    let json = a.json;
    let tp = a.tp.map(|t| t as usize);
    crate::comm_arg::on_ranks(a.comm, tp, "generate", &|transport, prints| {
        let mut on_text = |piece: &str| if json || !prints { Ok(()) } else { print_piece(piece) };
        let g = neuron_spec_models::generate_text(&source, transport, &prompt, a.chat, &opts, &mut on_text)?;
        if prints {
            finish(json, &g)
        } else {
            Ok(EXIT_OK)
        }
    })
}
