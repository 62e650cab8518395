//! A model folder's text side: its `tokenizer.json` (the `tokenizers` crate, as transformers' fast tokenizers
//! use it), its chat template (tokenizer_config.json's `chat_template` or `chat_template.jinja`, rendered with
//! minijinja as transformers renders it with jinja2) and its EOS ids (generation_config.json, else config.json).

use neuron_spec::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The tokenizer file of a model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The tokenizer's settings (special tokens, chat template).
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// transformers' separate chat template file (preferred to `chat_template` in tokenizer_config.json).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// The generation defaults (EOS ids).
pub const GENERATION_CONFIG: &str = "generation_config.json";

/// A model folder's tokenizer, with what `generate --chat` and text training need besides it.
pub struct TextTokenizer {
    tokenizer: tokenizers::Tokenizer,
    dir: PathBuf,
    /// tokenizer_config.json, `{}` when absent.
    config: Value,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn tok_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Tokenizer { path: path.to_path_buf(), reason: reason.to_string() }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), reason: e.to_string() })
}

impl TextTokenizer {
    /// Reads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(tok_err(
                &path,
                "no tokenizer: text input and output need the model folder's tokenizer.json (as transformers' fast \
                 tokenizers save it)",
            ));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| tok_err(&path, e))?;
        let cpath = dir.join(TOKENIZER_CONFIG);
        let config = if cpath.is_file() { read_json(&cpath)? } else { Value::Object(Default::default()) };
        Ok(Self { tokenizer, dir: dir.to_path_buf(), config })
    }

    /// The ids of `text` as the tokenizer's `encode` gives them (`add_special_tokens`: the post-processor's
    /// tokens, e.g. a leading `<s>`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self.tokenizer.encode(text, add_special_tokens).map_err(|e| tok_err(&self.path(), e))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// The text of `ids`, special tokens left out (transformers' `decode(ids, skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids = self.ids_u32(ids)?;
        self.tokenizer.decode(&ids, true).map_err(|e| tok_err(&self.path(), e))
    }

    /// An incremental decoder: feed it ids one at a time, it returns the text they complete (only whole UTF-8
    /// characters; a byte-level token that ends inside one waits for the next).
    pub fn stream(&self) -> TextStream<'_> {
        TextStream { inner: self.tokenizer.decode_stream(true), path: self.path() }
    }

    /// The id of a token of the vocabulary (special tokens included).
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.tokenizer.token_to_id(token).map(i64::from)
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// One id's token text (for `forward --prompt`'s table), `None` outside the vocabulary.
    pub fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id).ok().and_then(|i| self.tokenizer.id_to_token(i))
    }

    fn path(&self) -> PathBuf {
        self.dir.join(TOKENIZER_FILE)
    }

    fn ids_u32(&self, ids: &[i64]) -> Result<Vec<u32>> {
        ids.iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| tok_err(&self.path(), format!("token id {i} is not a vocabulary id")))
            })
            .collect()
    }

    /// A special token of tokenizer_config.json (`bos_token`, `eos_token`, ...): a string or an AddedToken
    /// (`{"content": ...}`); `None` when absent or null.
    fn special_token(&self, key: &str) -> Result<Option<String>> {
        match self.config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => match v.get("content").and_then(Value::as_str) {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(tok_err(
                    &self.dir.join(TOKENIZER_CONFIG),
                    format!("`{key}` must be a string or {{\"content\": ...}}, found {v}"),
                )),
            },
        }
    }

    /// The folder's chat template and the file it came from: `chat_template.jinja` if present, else
    /// tokenizer_config.json's `chat_template` (a string; a list of named templates uses the one named
    /// `default`).
    pub fn chat_template(&self) -> Result<(String, PathBuf)> {
        let jinja = self.dir.join(CHAT_TEMPLATE_FILE);
        if jinja.is_file() {
            return Ok((std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?, jinja));
        }
        let cpath = self.dir.join(TOKENIZER_CONFIG);
        match self.config.get("chat_template") {
            Some(Value::String(s)) => Ok((s.clone(), cpath)),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(|s| (s.to_string(), cpath.clone()))
                .ok_or_else(|| tok_err(&cpath, "`chat_template` is a list without a template named \"default\"")),
            _ => Err(tok_err(
                &cpath,
                format!(
                    "--chat: the model folder has no chat template (no {CHAT_TEMPLATE_FILE}, no `chat_template` key)"
                ),
            )),
        }
    }

    /// The prompt text of one user message through the chat template, as transformers'
    /// `apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)`:
    /// jinja2's `trim_blocks`/`lstrip_blocks`, the special tokens of tokenizer_config.json as variables,
    /// `raise_exception` an error.
    pub fn apply_chat_template(&self, user: &str) -> Result<String> {
        let (template, path) = self.chat_template()?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let tmpl = env.template_from_str(&template).map_err(|e| tok_err(&path, format!("chat template: {e}")))?;
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), serde_json::json!([{"role": "user", "content": user}]));
        ctx.insert("add_generation_prompt".into(), Value::Bool(true));
        for key in ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"] {
            if let Some(t) = self.special_token(key)? {
                ctx.insert(key.into(), Value::String(t));
            }
        }
        tmpl.render(Value::Object(ctx)).map_err(|e| tok_err(&path, format!("chat template: {e}")))
    }

    /// The EOS id of text training's packing: tokenizer_config.json's `eos_token` (transformers'
    /// `tokenizer.eos_token_id`), else config.json's `eos_token_id` (the first of a list).
    pub fn eos_id(&self) -> Result<i64> {
        if let Some(t) = self.special_token("eos_token")? {
            return self.token_id(&t).ok_or_else(|| {
                tok_err(&self.dir.join(TOKENIZER_CONFIG), format!("`eos_token` {t:?} is not in the vocabulary"))
            });
        }
        let cfg = self.dir.join("config.json");
        eos_ids_in(&cfg)?.and_then(|ids| ids.first().copied()).ok_or_else(|| {
            tok_err(&cfg, "no EOS token: neither tokenizer_config.json's `eos_token` nor config.json's `eos_token_id`")
        })
    }

    /// Text training rows: each document encoded with special tokens, followed by [`Self::eos_id`], packed
    /// into rows of `seq_len` by `neuron_spec::train::data::pack_documents` (the remainder dropped).
    pub fn training_rows(&self, docs: &[String], seq_len: usize) -> Result<Vec<Vec<i64>>> {
        let eos = self.eos_id()?;
        let ids = docs.iter().map(|d| self.encode(d, true)).collect::<Result<Vec<_>>>()?;
        Ok(neuron_spec::train::data::pack_documents(&ids, eos, seq_len))
    }

    /// Refuses an id outside a model vocabulary of `vocab` (a tokenizer with more tokens than the model).
    pub fn check_in_vocab(&self, ids: &[i64], vocab: usize) -> Result<()> {
        match ids.iter().find(|&&i| i < 0 || i as usize >= vocab) {
            Some(i) => Err(tok_err(
                &self.path(),
                format!("the text encodes to token id {i}, outside the model's vocabulary [0, {vocab})"),
            )),
            None => Ok(()),
        }
    }

    /// The ids `apply_chat_template(..., add_generation_prompt=True)` gives: the rendered text encoded without
    /// adding special tokens (the template writes them).
    pub fn chat_ids(&self, user: &str) -> Result<Vec<i64>> {
        self.encode(&self.apply_chat_template(user)?, false)
    }
}

/// [`TextTokenizer::stream`]'s incremental decoder.
pub struct TextStream<'a> {
    inner: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
    path: PathBuf,
}

impl TextStream<'_> {
    /// The text completed by `id` (empty while a character is incomplete, or for a special token).
    pub fn step(&mut self, id: i64) -> Result<String> {
        let id = u32::try_from(id).map_err(|_| tok_err(&self.path, format!("token id {id} is not a vocabulary id")))?;
        Ok(self.inner.step(id).map_err(|e| tok_err(&self.path, e))?.unwrap_or_default())
    }

    /// [`Self::step`], handing the text it completes (when there is some) to `on_text`.
    pub fn step_to(&mut self, id: i64, on_text: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
        let piece = self.step(id)?;
        if piece.is_empty() {
            Ok(())
        } else {
            on_text(&piece)
        }
    }
}

/// The EOS ids generation stops at: generation_config.json's `eos_token_id` (an int or a list), else
/// config.json's; none when neither names one.
pub fn eos_token_ids(dir: &Path) -> Result<Vec<i64>> {
    for file in [GENERATION_CONFIG, "config.json"] {
        let path = dir.join(file);
        if path.is_file() {
            if let Some(ids) = eos_ids_in(&path)? {
                return Ok(ids);
            }
        }
    }
    Ok(Vec::new())
}

/// The `eos_token_id` of the JSON file `path` (an int or a list); `None` when absent or null.
fn eos_ids_in(path: &Path) -> Result<Option<Vec<i64>>> {
    let v = read_json(path)?;
    let bad = |found: &Value| {
        tok_err(path, format!("`eos_token_id` must be a token id or a list of token ids, found {found}"))
    };
    match v.get("eos_token_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            a.iter().map(|x| x.as_i64().filter(|i| *i >= 0).ok_or_else(|| bad(x))).collect::<Result<_>>().map(Some)
        }
        Some(x) => Ok(Some(vec![x.as_i64().filter(|i| *i >= 0).ok_or_else(|| bad(x))?])),
    }
}
