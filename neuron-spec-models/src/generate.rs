//! Text generation with a KV cache: the prompt in one forward pass (the prefill, causal mask), then one token
//! at a time, each rank appending its own heads' keys and values per layer. The next token is chosen from the
//! gathered logits (identical bits on every rank), greedily or by seeded sampling with the same generator on
//! every rank, and the ranks' choices are compared at every step (a collective: threads and MPI alike).
//!
//! The runtime's [`Generate`] task runs [`rank_generate`] on every rank, with the model the runtime's
//! [`Source`] loads (any source, with its adapters), on threads or MPI processes; [`generate_text`] wraps it
//! with the folder's tokenizer.

use crate::model::{KvCache, LlamaForCausalLM};
use crate::runtime::forward::ids_tensor;
use crate::runtime::{run, Generate, Source, Transport};
use crate::text::{eos_token_ids, TextTokenizer};
use crate::ModelConfig;
use burn::tensor::{Device, Tensor, TensorData};
use neuron_spec::comm::Communicator;
use neuron_spec::{Error, Result};
use std::path::Path;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The largest logit (the lowest id among equals), as transformers' `do_sample=False`.
    Greedy,
    /// Sampling, as transformers' `do_sample=True` orders its warpers: logits / `temperature`, then the `top_k`
    /// largest, then the smallest set of largest probabilities reaching `top_p`, then a draw from the
    /// renormalized probabilities with [`SplitMix64`] seeded by `seed`.
    Sample {
        /// Divides the logits (> 0).
        temperature: f64,
        /// Keep only the k most likely tokens (k ≥ 1).
        top_k: Option<usize>,
        /// Keep the most likely tokens until their probabilities sum to `top_p` (in (0, 1]).
        top_p: Option<f64>,
        /// The generator's seed.
        seed: u64,
    },
}

impl Sampling {
    /// Refuses a temperature, top-k or top-p that does not define a distribution, naming the option.
    pub fn check(&self) -> Result<()> {
        if let Sampling::Sample { temperature, top_k, top_p, .. } = *self {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::Argument(format!("--temperature must be a positive number, got {temperature}")));
            }
            if top_k == Some(0) {
                return Err(Error::Argument("--top-k must be at least 1".into()));
            }
            if let Some(p) = top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
                return Err(Error::Argument(format!("--top-p must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The most tokens generated (the EOS token included when produced).
    pub max_new_tokens: usize,
    /// Generation stops after producing any of these.
    pub eos_token_ids: Vec<i64>,
    /// How each token is chosen.
    pub sampling: Sampling,
}

/// SplitMix64 (Steele, Lea and Flood, 2014): the fixed generator behind `--seed`, so a seed gives the same
/// draws on every rank, at every tp and on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw in [0, 1) (53 bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The next token from one row of logits. NaN logits are refused (no choice among them is meaningful).
pub fn choose_token(logits: &[f32], sampling: &Sampling, rng: &mut SplitMix64) -> Result<i64> {
    if let Some(i) = logits.iter().position(|x| x.is_nan()) {
        return Err(Error::Tensor(format!("the logits hold NaN (token id {i}): no next token")));
    }
    if *sampling == Sampling::Greedy {
        // The first largest (the order below, without sorting the vocabulary every token).
        let best = (1..logits.len()).fold(0, |b, i| if logits[i].total_cmp(&logits[b]).is_gt() { i } else { b });
        return if logits.is_empty() { Err(Error::Tensor("empty logits".into())) } else { Ok(best as i64) };
    }
    // Token ids, most likely first; ties keep the lower id first (stable sort), as argmax does.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let first = *order.first().ok_or_else(|| Error::Tensor("empty logits".into()))?;
    let (temperature, top_k, top_p) = match *sampling {
        Sampling::Greedy => return Ok(first as i64),
        Sampling::Sample { temperature, top_k, top_p, .. } => (temperature, top_k, top_p),
    };
    if let Some(k) = top_k {
        order.truncate(k.max(1));
    }
    let max = f64::from(logits[first]) / temperature;
    let mut probs: Vec<f64> = order.iter().map(|&i| (f64::from(logits[i]) / temperature - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = top_p {
        let mut acc = 0.0;
        let keep = probs.iter().position(|q| {
            acc += q;
            acc >= p
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
    }
    let u = rng.next_f64();
    let mut acc = 0.0;
    for (&i, q) in order.iter().zip(&probs) {
        acc += q;
        if u < acc {
            return Ok(i as i64);
        }
    }
    Ok(*order.last().unwrap_or(&first) as i64)
}

/// Fails on every rank when a rank chose another token than rank 0 at `step`.
fn check_same_token<C: Communicator>(comm: &C, token: i64, step: usize, device: &Device) -> Result<()> {
    // Ids are below the largest vocabulary (2^24): exact in f32.
    let t = Tensor::<1>::from_data(TensorData::new(vec![token as f32], [1]), device);
    let all = comm
        .all_gather(t, 0)?
        .try_into_data()
        .map_err(|e| Error::Tensor(format!("gathered tokens: {e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| Error::Tensor(format!("gathered tokens: {e:?}")))?;
    match all.iter().position(|x| x.to_bits() != all[0].to_bits()) {
        Some(rank) => {
            Err(Error::RanksDisagree { rank, what: format!("chose token {} at step {step}, other", all[rank]) })
        }
        None => Ok(()),
    }
}

/// One rank's generation after `prompt`: the new ids, EOS included when produced. `on_token` sees each id as it
/// is chosen (every rank chooses the same; the drivers call it on rank 0 only).
pub fn rank_generate<C: Communicator>(
    model: &LlamaForCausalLM,
    comm: &C,
    prompt: &[i64],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(i64) -> Result<()>,
) -> Result<Vec<i64>> {
    opts.sampling.check()?;
    let device = Device::default();
    let mut rng = SplitMix64::new(match opts.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    });
    let mut cache = KvCache::new();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    for step in 0..opts.max_new_tokens {
        let logits = model.forward_cached(ids_tensor(&[input], &device)?, &mut cache, comm)?;
        let row = logits
            .try_into_data()
            .map_err(|e| Error::Tensor(format!("logits: {e:?}")))?
            .try_into_vec::<f32>()
            .map_err(|e| Error::Tensor(format!("logits: {e:?}")))?;
        let next = choose_token(&row, &opts.sampling, &mut rng)?;
        check_same_token(comm, next, step, &device)?;
        out.push(next);
        on_token(next)?;
        if opts.eos_token_ids.contains(&next) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

/// A model folder's text side: its config, tokenizer and EOS ids (the weights are a
/// [`Source`]).
pub struct TextModel {
    /// The folder.
    pub dir: std::path::PathBuf,
    /// Its config.
    pub cfg: ModelConfig,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// generation_config.json's EOS ids (else config.json's).
    pub eos_token_ids: Vec<i64>,
}

impl TextModel {
    /// Opens `dir`'s config, tokenizer and EOS ids (HF or sharded: a sharded checkpoint carries them).
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg: ModelConfig::read(&dir.join("config.json"))?,
            tokenizer: TextTokenizer::open(dir)?,
            eos_token_ids: eos_token_ids(dir)?,
        })
    }

    /// The prompt's ids: encoded as the tokenizer's `encode` does with special tokens, or (`chat`) one user
    /// message through the chat template. Refuses ids outside the model's vocabulary.
    pub fn prompt_ids(&self, prompt: &str, chat: bool) -> Result<Vec<i64>> {
        let ids = if chat { self.tokenizer.chat_ids(prompt)? } else { self.tokenizer.encode(prompt, true)? };
        if ids.is_empty() {
            return Err(Error::InputData("the prompt encodes to no token".into()));
        }
        self.tokenizer.check_in_vocab(&ids, self.cfg.llama.vocab_size)?;
        Ok(ids)
    }
}

/// What [`generate_text`] produced.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The prompt's ids.
    pub prompt_ids: Vec<i64>,
    /// The new ids (EOS included when produced).
    pub ids: Vec<i64>,
    /// Their text, special tokens left out (the tokenizer's decode).
    pub text: String,
}

/// Generates after `prompt` with `source` (its directory gives the tokenizer and EOS ids) on `transport`:
/// `on_text` receives the text as it is produced, on rank 0 (whole UTF-8 characters only).
/// `opts.eos_token_ids` empty means the folder's.
pub fn generate_text(
    source: &Source<'_>,
    transport: &Transport<'_>,
    prompt: &str,
    chat: bool,
    opts: &GenerateOptions,
    on_text: &mut (dyn FnMut(&str) -> Result<()> + Send),
) -> Result<Generated> {
    let dir =
        source.dir().ok_or_else(|| Error::Argument("generating text needs the model folder (its tokenizer)".into()))?;
    let m = TextModel::open(dir)?;
    let prompt_ids = m.prompt_ids(prompt, chat)?;
    let task = Generate::new(prompt_ids.clone(), with_folder_eos(opts, &m)).streaming_text(&m.tokenizer, on_text);
    let ids = run(source, transport, &task)?;
    let text = m.tokenizer.decode(&ids)?;
    Ok(Generated { prompt_ids, ids, text })
}

/// `opts` with the folder's EOS ids when it names none.
pub fn with_folder_eos(opts: &GenerateOptions, m: &TextModel) -> GenerateOptions {
    let mut o = opts.clone();
    if o.eos_token_ids.is_empty() {
        o.eos_token_ids = m.eos_token_ids.clone();
    }
    o
}
