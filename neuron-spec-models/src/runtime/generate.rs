//! The generation task: every rank runs [`rank_generate`] (KV cache, the ranks' choices compared at every
//! step) on its model; rank 0 streams the ids.

use super::source::Plan;
use super::{Ranks, Task, TaskKind};
use crate::generate::{rank_generate, GenerateOptions};
use crate::text::TextTokenizer;
use burn::tensor::Device;
use neuron_spec::comm::Communicator;
use neuron_spec::{Error, Result};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// Generation after `prompt` (token ids); `on_token` sees each new id on rank 0 as it is chosen.
pub struct Generate<'a> {
    /// The prompt's ids.
    pub prompt: Vec<i64>,
    /// Length, EOS ids and sampling.
    pub options: GenerateOptions,
    on_token: Mutex<Box<dyn FnMut(i64) -> Result<()> + Send + 'a>>,
}

impl std::fmt::Debug for Generate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generate").field("prompt", &self.prompt).field("options", &self.options).finish()
    }
}

impl<'a> Generate<'a> {
    /// Generates after `prompt` with `options`.
    pub fn new(prompt: Vec<i64>, options: GenerateOptions) -> Self {
        Self { prompt, options, on_token: Mutex::new(Box::new(|_| Ok(()))) }
    }

    /// Calls `f` with each new id on rank 0.
    pub fn on_token(mut self, f: impl FnMut(i64) -> Result<()> + Send + 'a) -> Self {
        self.on_token = Mutex::new(Box::new(f));
        self
    }

    /// Streams the text of the new ids through `tok` to `on_text` (whole UTF-8 characters only).
    pub fn streaming_text(
        self,
        tok: &'a TextTokenizer,
        mut on_text: impl FnMut(&str) -> Result<()> + Send + 'a,
    ) -> Self {
        let mut stream = tok.stream();
        self.on_token(move |id| stream.step_to(id, &mut on_text))
    }
}

impl Task for Generate<'_> {
    type Rank = Vec<i64>;
    type Output = Vec<i64>;
    const KIND: TaskKind = TaskKind::Generate;

    fn prepare(&self, _plan: &mut Plan<'_>) -> Result<()> {
        self.options.sampling.check()
    }

    fn rank<C: Communicator>(&self, plan: &Plan<'_>, _: usize, _: Option<&Vec<i64>>, comm: &C) -> Result<Vec<i64>> {
        let ctx = comm.context();
        let loaded = plan.load(ctx, &Device::default())?;
        let mut emit = |id: i64| -> Result<()> {
            if ctx.rank != 0 {
                return Ok(());
            }
            let mut f = self.on_token.lock().map_err(|_| Error::Thread("the token sink panicked".into()))?;
            (*f)(id)
        };
        rank_generate(&loaded.model, comm, &self.prompt, &self.options, &mut emit)
    }

    fn fingerprint(&self, ids: &Vec<i64>) -> (u64, &'static str) {
        let mut h = std::hash::DefaultHasher::new();
        ids.hash(&mut h);
        (h.finish(), "token ids")
    }

    fn finish(&self, _plan: &Plan<'_>, ranks: Ranks<'_, Vec<i64>>) -> Result<Vec<i64>> {
        ranks.any().cloned().ok_or_else(|| Error::Thread("no ranks ran".into()))
    }
}
