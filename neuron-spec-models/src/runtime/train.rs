//! The training task: full or LoRA (one adapter, exact or mean), from an HF model (a new run) or a trained
//! sharded checkpoint (resumes its step, AdamW state and, for a LoRA run, its adapter), each rank with its own
//! [`RankTrainer`]; and the one writer of its checkpoint for both transports.

use super::forward::RankRead;
use super::source::{Adapter, Plan, PlannedAdapter};
use super::transport::fingerprint_f32;
use super::{Ranks, Task, TaskKind};
use burn::tensor::Device;
use neuron_spec::comm::Communicator;
use neuron_spec::lora::{import_adapter, ImportedAdapter, LoraRankSource, PeftAdapter};
use neuron_spec::train::{
    exact_lora_masks, has_optimizer_state, optimizer_adapter, read_optimizer_state, trained_adapter,
    write_lora_checkpoint, write_trained_checkpoint, AdamWConfig, FrozenBase, OptimizerState, RankTrainer, TrainMode,
    TrainOptions,
};
use neuron_spec::{Error, Result, StateDict};
use std::path::PathBuf;

/// A training run: `steps` AdamW steps, batch `k % batches.len()` at step `k` (each batch `[rows][seq]`).
pub struct Train<'a> {
    /// The batches.
    pub batches: Vec<Vec<Vec<i64>>>,
    /// Optimizer steps.
    pub steps: usize,
    /// AdamW's hyperparameters.
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this value (torch's `clip_grad_norm_`).
    pub grad_clip: Option<f64>,
    /// Train only this adapter, the base frozen (`None`: every parameter, or the adapter of the LoRA run a
    /// resumed checkpoint holds).
    pub lora: Option<Adapter>,
    /// Where to write the trained checkpoint (with its AdamW state), and whether to replace an existing one.
    pub out: Option<(PathBuf, bool)>,
    /// Keep each rank's last gradients ([`TrainOutput::grads`]).
    pub keep_grads: bool,
    /// Called by rank 0 after each step with the step (1-based, counting a resumed run's) and the loss.
    pub on_step: Option<Box<dyn Fn(usize, f32) + Sync + 'a>>,
}

impl std::fmt::Debug for Train<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Train").field("steps", &self.steps).field("out", &self.out).finish_non_exhaustive()
    }
}

impl<'a> Train<'a> {
    /// `steps` full-training steps over `batches` with `adamw`, writing nothing.
    pub fn new(batches: Vec<Vec<Vec<i64>>>, steps: usize, adamw: AdamWConfig) -> Self {
        Self { batches, steps, adamw, grad_clip: None, lora: None, out: None, keep_grads: false, on_step: None }
    }

    /// Trains only `adapter` (the base frozen).
    pub fn lora(mut self, adapter: Adapter) -> Self {
        self.lora = Some(adapter);
        self
    }

    /// Clips the global gradient norm to `clip`.
    pub fn grad_clip(mut self, clip: Option<f64>) -> Self {
        self.grad_clip = clip;
        self
    }

    /// Writes the trained checkpoint to `dir` (replacing an existing one only with `force`, once complete).
    pub fn write_to(mut self, dir: impl Into<PathBuf>, force: bool) -> Self {
        self.out = Some((dir.into(), force));
        self
    }

    /// Keeps every rank's last gradients.
    pub fn keep_grads(mut self) -> Self {
        self.keep_grads = true;
        self
    }

    /// Calls `f(step, loss)` on rank 0 after each step.
    pub fn on_step(mut self, f: impl Fn(usize, f32) + Sync + 'a) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }
}

/// One rank's training result.
#[derive(Debug, Clone)]
pub struct TrainedRank {
    losses: Vec<f32>,
    tensors: StateDict,
    state: OptimizerState,
    grads: Option<StateDict>,
    read: RankRead,
}

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    /// The loss before each step (the same on every rank, which is checked).
    pub losses: Vec<f32>,
    /// The trained rank tensors and AdamW state: every rank's in rank order (threads), this process's (MPI).
    pub ranks: Vec<(StateDict, OptimizerState)>,
    /// The last gradients, where kept ([`Train::keep_grads`]), as `ranks`.
    pub grads: Vec<Option<StateDict>>,
    /// What each rank read, as `ranks`.
    pub reads: Vec<RankRead>,
    /// The adapter trained (`None`: full training).
    pub adapter: Option<String>,
    /// What importing the adapter warned about (mean mode's loss).
    pub warnings: Vec<String>,
}

impl Task for Train<'_> {
    type Rank = TrainedRank;
    type Output = TrainOutput;
    const KIND: TaskKind = TaskKind::Train;

    fn prepare(&self, plan: &mut Plan<'_>) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::Argument("training needs at least one step (--steps)".into()));
        }
        if self.batches.is_empty() {
            return Err(Error::InputData("no training data".into()));
        }
        self.adamw.validate()?;
        if self.out.is_some() && plan.source.dir().is_none() {
            return Err(Error::Argument(
                "writing a trained checkpoint needs the model directory (its config and non-weight files go into \
                 the output): open the source with Source::open"
                    .into(),
            ));
        }
        if let Some((out, false)) = &self.out {
            if out.exists() {
                return Err(Error::Argument(format!("{} exists (use --force to replace it)", out.display())));
            }
        }
        let dir = plan.source.dir().map(std::path::Path::to_path_buf).unwrap_or_default();
        let mut trained: Option<ImportedAdapter> = None;
        if plan.source.is_sharded() {
            if !has_optimizer_state(&dir) {
                return Err(Error::Training(format!(
                    "{}: no optimizer state (optimizer/state.json): cannot resume training from it",
                    dir.display()
                )));
            }
            let run_adapter = optimizer_adapter(&dir)?;
            match (&self.lora, &run_adapter) {
                (Some(_), None) => {
                    return Err(Error::Training(format!(
                        "{} is a full-training checkpoint (its optimizer state has no adapter): a LoRA run starts \
                         from an HF model",
                        dir.display()
                    )))
                }
                (Some(_), Some(name)) => {
                    return Err(Error::Training(format!(
                        "{} is a LoRA run of adapter {name}, which resuming continues; leave --adapter out",
                        dir.display()
                    )))
                }
                (None, Some(name)) => {
                    // The checkpoint's own adapter_<name>/ is the one trained: loaded once, as an import.
                    plan.adapters.retain(|a| !matches!(a, PlannedAdapter::Sharded(s) if s.name == *name));
                    trained = Some(trained_adapter(&dir, name, &plan.meta)?);
                }
                (None, None) => {}
            }
        }
        if let Some(a) = &self.lora {
            trained = Some(match a {
                Adapter::Peft { dir, name, options } => {
                    let i = import_adapter(&plan.meta, &PeftAdapter::open(dir)?, name, *options)?;
                    plan.warnings.extend(i.warnings.iter().cloned());
                    i
                }
                Adapter::Imported(i) => (**i).clone(),
            });
        }
        if !plan.adapters.is_empty() {
            return Err(Error::Training(format!(
                "training beside other adapters ({}) is not implemented: merge them into the base first \
                 (consolidate --merge-adapter), or train one of them",
                plan.adapter_names().join(", ")
            )));
        }
        if let Some(a) = &trained {
            plan.adapters.push(PlannedAdapter::Imported(a.clone()));
        }
        plan.trained = trained;
        Ok(())
    }

    fn rank<C: Communicator>(
        &self,
        plan: &Plan<'_>,
        _: usize,
        _: Option<&TrainedRank>,
        comm: &C,
    ) -> Result<TrainedRank> {
        let ctx = comm.context();
        let device = Device::default().autodiff();
        let loaded = plan.load(ctx, &device)?;
        let mode = if plan.trained.is_some() { TrainMode::LoraOnly } else { TrainMode::Full };
        let options = TrainOptions { adamw: self.adamw, grad_clip: self.grad_clip, mode };
        let empty = StateDict::new();
        let src = LoraRankSource::new(&empty, loaded.lora)?;
        let mut t = RankTrainer::new(loaded.model, &src, options, &device)?;
        if let Some(a) = &plan.trained {
            t.lora_masks = exact_lora_masks(&plan.meta, a, ctx.size, ctx.rank)?;
        }
        if plan.source.is_sharded() {
            let dir = plan.source.dir().map(std::path::Path::to_path_buf).unwrap_or_default();
            t = t.with_state(read_optimizer_state(&dir, ctx.rank)?)?;
        }
        t.keep_grads = self.keep_grads;
        let mut losses = Vec::with_capacity(self.steps);
        for k in 0..self.steps {
            let batch = &self.batches[k % self.batches.len()];
            let l = t.step(comm, |m, c| m.causal_lm_loss(batch, c))?;
            if let (0, Some(f)) = (ctx.rank, &self.on_step) {
                f(t.state.step as usize, l);
            }
            losses.push(l);
        }
        let read = RankRead { rank: ctx.rank, bytes: loaded.bytes_read, from: loaded.read_from };
        Ok(TrainedRank { losses, tensors: t.rank_tensors()?, state: t.state, grads: t.last_grads, read })
    }

    fn fingerprint(&self, rank: &TrainedRank) -> (u64, &'static str) {
        (fingerprint_f32(&rank.losses), "losses")
    }

    fn finish(&self, plan: &Plan<'_>, ranks: Ranks<'_, TrainedRank>) -> Result<TrainOutput> {
        let adapter = plan.trained.as_ref().map(|a| a.name.clone());
        let (mine, ranks) = match ranks {
            Ranks::All(v) => (v, Ranks::All(Vec::<()>::new())),
            #[cfg(feature = "mpi")]
            Ranks::Own(c, r) => (vec![r], Ranks::Own(c, ())),
            Ranks::_Lifetime(p) => (Vec::new(), Ranks::_Lifetime(p)),
        };
        let mut out = TrainOutput {
            losses: Vec::new(),
            ranks: Vec::new(),
            grads: Vec::new(),
            reads: Vec::new(),
            adapter,
            warnings: plan.warnings.clone(),
        };
        for r in mine {
            if out.losses.is_empty() {
                out.losses = r.losses;
            }
            out.ranks.push((r.tensors, r.state));
            out.grads.push(r.grads);
            out.reads.push(r.read);
        }
        if let Some((dir, force)) = &self.out {
            let config_dir = plan
                .source
                .dir()
                .ok_or_else(|| Error::Argument("training output needs the model directory (its config)".into()))?;
            let base =
                if plan.source.is_sharded() { FrozenBase::Sharded(config_dir) } else { FrozenBase::Hf(config_dir) };
            match (&ranks, &plan.trained) {
                (Ranks::All(_), None) => {
                    write_trained_checkpoint(dir, config_dir, &plan.meta, &out.ranks, &self.adamw, *force)?
                }
                (Ranks::All(_), Some(a)) => {
                    write_lora_checkpoint(dir, base, &plan.meta, a, &out.ranks, &self.adamw, *force)?
                }
                #[cfg(feature = "mpi")]
                (Ranks::Own(comm, ()), None) => {
                    let (w, s) = out.ranks.first().ok_or_else(|| Error::Thread("no rank trained".into()))?;
                    neuron_spec::train::write_trained_checkpoint_mpi(
                        comm,
                        dir,
                        config_dir,
                        &plan.meta,
                        w,
                        s,
                        &self.adamw,
                        *force,
                    )?
                }
                #[cfg(feature = "mpi")]
                (Ranks::Own(comm, ()), Some(a)) => {
                    // A LoRA run's output is small (the adapter and its moments): rank 0 gathers every rank's
                    // and writes it with the threads' writer, so both give the same bytes.
                    let (w, s) = out.ranks.first().ok_or_else(|| Error::Thread("no rank trained".into()))?;
                    let own: StateDict = w
                        .iter()
                        .filter(|(n, _)| neuron_spec::lora::get_adapter_name(n) == Some(a.name.as_str()))
                        .map(|(n, t)| (n.clone(), t.clone()))
                        .collect();
                    let all = comm.all_gather_bytes(&wire::encode_rank(&own, s)?)?;
                    let written = if comm.context().rank == 0 {
                        all.iter().map(|b| wire::decode_rank(b)).collect::<Result<Vec<_>>>().and_then(|every| {
                            write_lora_checkpoint(dir, base, &plan.meta, a, &every, &self.adamw, *force)
                        })
                    } else {
                        Ok(())
                    };
                    super::agree_outcome(&ranks, written)?
                }
                (Ranks::_Lifetime(_), _) => {}
            }
        }
        Ok(out)
    }
}

/// Trained tensors and AdamW state as bytes, for the ranks of a LoRA run to send them to the writer.
#[cfg(feature = "mpi")]
mod wire {
    use neuron_spec::train::OptimizerState;
    use neuron_spec::{DType, Error, HostTensor, Result, StateDict};
    use std::collections::BTreeMap;

    /// A tensor's name, dtype, shape and byte length.
    type Entry = (String, DType, Vec<usize>, usize);

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Header {
        step: u64,
        skipped: BTreeMap<String, u64>,
        /// Per state dict (weights, exp_avg, exp_avg_sq): each tensor's name, dtype, shape and byte length.
        dicts: [Vec<Entry>; 3],
    }

    pub fn encode_rank(weights: &StateDict, state: &OptimizerState) -> Result<Vec<u8>> {
        let dicts = [weights, &state.exp_avg, &state.exp_avg_sq];
        let header = Header {
            step: state.step,
            skipped: state.skipped.clone(),
            dicts: dicts
                .map(|d| d.iter().map(|(n, t)| (n.clone(), t.dtype(), t.shape().to_vec(), t.bytes().len())).collect()),
        };
        let h =
            serde_json::to_vec(&header).map_err(|e| Error::Serialization(format!("a rank's trained state: {e}")))?;
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        for d in dicts {
            for t in d.values() {
                out.extend_from_slice(t.bytes());
            }
        }
        Ok(out)
    }

    pub fn decode_rank(bytes: &[u8]) -> Result<(StateDict, OptimizerState)> {
        let bad = |w: &str| Error::Serialization(format!("a rank's trained state does not parse: {w}"));
        let n = bytes.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).ok_or_else(|| bad("no header"))?;
        let n = u64::from_le_bytes(n) as usize;
        let h = bytes.get(8..8 + n).ok_or_else(|| bad("short header"))?;
        let header: Header = serde_json::from_slice(h).map_err(|e| bad(&e.to_string()))?;
        let mut at = 8 + n;
        let mut dicts: Vec<StateDict> = Vec::new();
        for d in &header.dicts {
            let mut sd = StateDict::new();
            for (name, dtype, shape, len) in d {
                let b = bytes.get(at..at + len).ok_or_else(|| bad("short data"))?;
                sd.insert(name.clone(), HostTensor::new(*dtype, shape.clone(), b.to_vec())?);
                at += len;
            }
            dicts.push(sd);
        }
        let [w, m1, m2]: [StateDict; 3] = dicts.try_into().map_err(|_| bad("three state dicts"))?;
        Ok((w, OptimizerState { step: header.step, skipped: header.skipped, exp_avg: m1, exp_avg_sq: m2 }))
    }
}
