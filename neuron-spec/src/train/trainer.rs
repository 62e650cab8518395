//! One rank's training loop state: the model (its parameters tracked by burn's autodiff), the AdamW
//! moments, and the step.
//!
//! A step runs the user's loss (every rank the same loss, through the differentiable collectives), burn's
//! backward pass, then works on the rank-local tensors by their rank-file names, in HF orientation (what
//! `save_rank_tensors` writes): kv-replica gradients are summed over their copies, LoRA factors of fused
//! layers keep their block structure, the global gradient norm is clipped, AdamW updates, and the model is
//! reloaded from the new values. The moments are therefore named and shaped like the rank tensors, which is
//! how the sharded checkpoint stores them and how `reshard` moves them.

use super::adamw::AdamWConfig;
use super::replicas::{local_norm_sq, sum_kv_replicas, GradMap};
use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::layers::tensor_to_f32;
use crate::spec::contract::{CustomModule, TpContext};
use crate::spec::metadata::CheckpointMetadata;
use crate::tensor::{HostTensor, StateDict};
use crate::tensor::{TensorInfo, TensorSource};
use burn::module::ParamId;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Which parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainMode {
    /// Every parameter (LoRA factors included, if any).
    Full,
    /// Only the LoRA factors; the base weights are frozen (no gradient, no update, no decay).
    LoraOnly,
}

/// What a training run is configured with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    /// AdamW hyperparameters.
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm (over all ranks, each parameter entry once) to this value.
    pub grad_clip: Option<f64>,
    /// Full or LoRA-only.
    pub mode: TrainMode,
}

/// AdamW's state on one rank: the step count and the moments of each trainable rank tensor (F32, named and
/// shaped as the rank tensor).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizerState {
    /// Steps taken.
    pub step: u64,
    /// Steps at which a rank tensor got no gradient (an expert no token was routed to), by name; absent means
    /// none. As torch's AdamW, such a step leaves the parameter and its moments alone and does not count in
    /// its own step (`step − skipped`, which its bias correction uses).
    pub skipped: BTreeMap<String, u64>,
    /// First moments.
    pub exp_avg: StateDict,
    /// Second moments.
    pub exp_avg_sq: StateDict,
}

/// Where one training step's time went on this rank (wall clock).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepProfile {
    /// The loss closure: the forward pass (its collectives included).
    pub forward: Duration,
    /// burn's backward pass, its all-reduces included.
    pub backward: Duration,
    /// The backward pass's and the bookkeeping's all-reduces (part of `backward` and `gradients`).
    pub all_reduce: Duration,
    /// Reading the parameters and gradients back to rank tensors, kv-replica sums, masks, clipping.
    pub gradients: Duration,
    /// AdamW over every trainable rank tensor.
    pub optimizer: Duration,
    /// Loading the updated values back into the model.
    pub reload: Duration,
}

impl StepProfile {
    /// The step's total (`all_reduce` is inside the others).
    pub fn total(&self) -> Duration {
        self.forward + self.backward + self.gradients + self.optimizer + self.reload
    }
}

/// Whether a rank tensor name is a LoRA factor.
pub fn is_lora_name(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Element masks keeping LoRA factors of fused layers block-structured (1 on a member's block, 0 off it).
pub type LoraMasks = HashMap<String, Vec<f32>>;

/// One rank's trainer.
pub struct RankTrainer<M> {
    /// The model, its trainable parameters requiring gradients.
    pub model: M,
    /// AdamW state.
    pub state: OptimizerState,
    /// The configuration.
    pub options: TrainOptions,
    /// The model's layout (kv replicas, replicated tensors).
    pub metadata: CheckpointMetadata,
    /// Masks applied to the gradients of fused LoRA factors (exact mode), by rank tensor name.
    pub lora_masks: LoraMasks,
    /// Keep each step's gradients (after the kv-replica sum and LoRA masks, before clipping) in `last_grads`.
    pub keep_grads: bool,
    /// The last step's gradients, by rank tensor name, when `keep_grads` is set.
    pub last_grads: Option<StateDict>,
    /// Where the last step's time went.
    pub last_profile: StepProfile,
    tp: TpContext,
    device: Device,
    adapters: Vec<String>,
    scalings: HashMap<(String, String), f64>,
}

/// Sets `require_grad` on the trainable parameters.
struct RequireGrad {
    mode: TrainMode,
    containers: Vec<String>,
}

impl ModuleMapper for RequireGrad {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let lora = self.containers.iter().any(|c| c == "Struct:LoraBranch" || c == "Struct:GqaLoraBranch");
        param.set_require_grad(self.mode == TrainMode::Full || lora)
    }
}

/// Replaces every parameter by its gradient (zeros where it has none; a trainable one's id then in `missing`),
/// keeping ids.
struct ToGrads<'a> {
    grads: &'a burn::tensor::Gradients,
    missing: HashSet<ParamId>,
}

impl ModuleMapper for ToGrads<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let v = param.val();
        let g = match v.grad(self.grads) {
            Some(g) => g,
            None => {
                // A frozen parameter (LoRA-only training) has none by design; only a trainable one is missing.
                if v.is_require_grad() {
                    self.missing.insert(param.id);
                }
                Tensor::zeros(v.shape(), &v.device().inner())
            }
        };
        Param::initialized(param.id, g)
    }
}

/// Replaces every parameter by ones where it got no gradient (its id in `missing`), zeros elsewhere: the
/// rank tensors saved from it tell which names had none.
struct NoGradMarks<'a> {
    missing: &'a HashSet<ParamId>,
}

impl ModuleMapper for NoGradMarks<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let v = param.val();
        let mark = if self.missing.contains(&param.id) { 1.0 } else { 0.0 };
        Param::initialized(param.id, Tensor::full(v.shape(), mark, &v.device().inner()))
    }
}

/// New parameter values over the adapters' names and scalings: what the model reloads from.
struct Reload<'a> {
    values: &'a StateDict,
    adapters: &'a [String],
    scalings: &'a HashMap<(String, String), f64>,
}

impl TensorSource for Reload<'_> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.values.info(name)
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        self.values.tensor(name)
    }
    fn names(&self) -> Vec<String> {
        self.values.keys().cloned().collect()
    }
    fn lora_adapters(&self) -> Vec<String> {
        self.adapters.to_vec()
    }
    fn lora_scaling(&self, adapter: &str, module: &str) -> Option<f64> {
        self.scalings.get(&(adapter.to_string(), module.to_string())).copied()
    }
}

impl<M: Module + CustomModule + Clone> RankTrainer<M> {
    /// A trainer for a loaded rank model. `src` is what it was loaded from (its LoRA adapters and their
    /// scalings are kept for the reloads); `device` must be an autodiff device (`Device::default().autodiff()`).
    pub fn new(model: M, src: &dyn TensorSource, options: TrainOptions, device: &Device) -> Result<Self> {
        options.adamw.validate()?;
        if let Some(c) = options.grad_clip {
            if !c.is_finite() || c <= 0.0 {
                return Err(Error::Argument(format!("grad clip must be a positive number, got {c}")));
            }
        }
        if !device.is_autodiff() {
            return Err(Error::Training("training needs an autodiff device (Device::default().autodiff())".into()));
        }
        let metadata = model.create_parameter_metadata()?;
        let tp = metadata_tp(&model)?;
        let adapters = src.lora_adapters();
        let mut names = StateDict::new();
        model.save_rank_tensors("", &mut names)?;
        let mut scalings = HashMap::new();
        for name in names.keys() {
            if let Some((module, rest)) = name.split_once(".lora_A.") {
                let adapter = rest.split('.').next().unwrap_or("");
                if let Some(s) = src.lora_scaling(adapter, module) {
                    scalings.insert((adapter.to_string(), module.to_string()), s);
                }
            }
        }
        if options.mode == TrainMode::LoraOnly && !names.keys().any(|n| is_lora_name(n)) {
            return Err(Error::Training("LoRA-only training of a model without LoRA adapters".into()));
        }
        let model = model.map(&mut RequireGrad { mode: options.mode, containers: vec![] });
        Ok(Self {
            model,
            state: OptimizerState::default(),
            options,
            metadata,
            lora_masks: LoraMasks::new(),
            keep_grads: false,
            last_grads: None,
            last_profile: StepProfile::default(),
            tp,
            device: device.clone(),
            adapters,
            scalings,
        })
    }

    /// The names of the rank tensors this trainer updates.
    pub fn trainable(&self, values: &StateDict) -> Vec<String> {
        values.keys().filter(|n| self.options.mode == TrainMode::Full || is_lora_name(n)).cloned().collect()
    }

    /// Continues from a saved state (its tensors must be the trainable ones, with their shapes).
    pub fn with_state(mut self, state: OptimizerState) -> Result<Self> {
        let mut values = StateDict::new();
        self.model.save_rank_tensors("", &mut values)?;
        let names = self.trainable(&values);
        for (what, moments) in [("exp_avg", &state.exp_avg), ("exp_avg_sq", &state.exp_avg_sq)] {
            let missing: Vec<String> = names.iter().filter(|n| !moments.contains_key(*n)).cloned().collect();
            let extra: Vec<String> = moments.keys().filter(|n| !names.contains(n)).cloned().collect();
            if !missing.is_empty() || !extra.is_empty() {
                let c: Vec<&str> = names.iter().map(String::as_str).collect();
                return Err(Error::key_mismatch(format!("optimizer state ({what})"), missing, extra, &c));
            }
            for n in &names {
                let (p, m) = (&values[n], &moments[n]);
                if p.shape() != m.shape() {
                    return Err(Error::ShapeMismatch {
                        tensor: format!("{what}.{n}"),
                        expected: p.shape().to_vec(),
                        found: m.shape().to_vec(),
                        file: None,
                    });
                }
            }
        }
        for (n, k) in &state.skipped {
            if !names.contains(n) || *k > state.step {
                return Err(Error::Training(format!(
                    "optimizer state: `skipped_steps` names {n} with {k} skipped steps, but {}",
                    if names.contains(n) {
                        format!("only {} steps were taken", state.step)
                    } else {
                        "it is not a trainable tensor".into()
                    }
                )));
            }
        }
        self.state = state;
        Ok(self)
    }

    /// One step: `loss` runs the forward pass on this rank (the same loss on every rank); returns the loss
    /// before the update. Every rank of the group must call it together.
    pub fn step<C: Communicator>(&mut self, comm: &C, loss: impl FnOnce(&M, &C) -> Result<Tensor<1>>) -> Result<f32> {
        let reducer = comm
            .grad_reducer()
            .ok_or_else(|| Error::Training("this communicator has no backward all-reduce: cannot train".into()))?;
        let mut prof = StepProfile::default();
        reducer.take_time();
        let clock = Instant::now();
        let l = loss(&self.model, comm)?;
        let (_, lv) = tensor_to_f32(l.clone().detach(), "loss")?;
        let value = lv.first().copied().ok_or_else(|| Error::Training("the loss is empty".into()))?;
        if !l.is_tracked() {
            return Err(Error::Training("the loss does not depend on any trainable parameter".into()));
        }
        prof.forward = clock.elapsed();
        let clock = Instant::now();
        let grads = l.backward();
        reducer.take_error()?;
        prof.backward = clock.elapsed();
        let clock = Instant::now();
        let mut values = StateDict::new();
        self.model.save_rank_tensors("", &mut values)?;
        let mut gsd = StateDict::new();
        let mut to_grads = ToGrads { grads: &grads, missing: HashSet::new() };
        self.model.clone().map(&mut to_grads).save_rank_tensors("", &mut gsd)?;
        let missing = std::mem::take(&mut to_grads.missing);
        drop(grads);
        let names = self.trainable(&values);
        let no_grad = self.without_gradient(&missing, &names)?;
        let mut g: GradMap = GradMap::new();
        for n in names.iter().filter(|n| !no_grad.contains(*n)) {
            let t = gsd.get(n).ok_or_else(|| Error::Training(format!("no gradient for {n}")))?;
            g.insert(n.clone(), (t.shape().to_vec(), t.to_f32_vec()));
        }
        sum_kv_replicas(&mut g, &self.metadata, self.tp, &reducer)?;
        for (n, (_, v)) in g.iter_mut() {
            if let Some(mask) = self.lora_masks.get(n) {
                v.iter_mut().zip(mask).for_each(|(x, m)| *x *= *m);
            }
        }
        if self.keep_grads {
            let mut kept = StateDict::new();
            for (n, (shape, v)) in &g {
                kept.insert(n.clone(), HostTensor::from_f32(shape.clone(), v)?);
            }
            for n in &no_grad {
                let shape = values[n].shape().to_vec();
                let len = shape.iter().product();
                kept.insert(n.clone(), HostTensor::from_f32(shape, &vec![0.0; len])?);
            }
            self.last_grads = Some(kept);
        }
        if let Some(max_norm) = self.options.grad_clip {
            let local = local_norm_sq(&g, &self.metadata, self.tp) as f32;
            let total = reducer.all_reduce_sum_f32(vec![local], &[1])?;
            let norm = total.first().copied().unwrap_or(0.0).max(0.0).sqrt() as f64;
            // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
            let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
            if coef < 1.0 {
                g.values_mut().for_each(|(_, v)| v.iter_mut().for_each(|x| *x *= coef));
            }
        }
        prof.gradients = clock.elapsed();
        let clock = Instant::now();
        let t = self.state.step + 1;
        // The ranks of a group on threads share the cores.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / self.tp.size.max(1)).max(1);
        for n in &no_grad {
            // torch's AdamW skips a parameter without gradient: no decay, no moment update, no step of its own.
            *self.state.skipped.entry(n.clone()).or_insert(0) += 1;
            let shape = values[n].shape().to_vec();
            let len: usize = shape.iter().product();
            for m in [&mut self.state.exp_avg, &mut self.state.exp_avg_sq] {
                if !m.contains_key(n) {
                    m.insert(n.clone(), HostTensor::from_f32(shape.clone(), &vec![0.0; len])?);
                }
            }
        }
        for (n, (shape, grad)) in &g {
            let mut p = values[n].to_f32_vec();
            let take = |m: &mut StateDict| m.get(n).map(HostTensor::to_f32_vec).unwrap_or_else(|| vec![0.0; p.len()]);
            let mut m = take(&mut self.state.exp_avg);
            let mut v = take(&mut self.state.exp_avg_sq);
            let own = t - self.state.skipped.get(n).copied().unwrap_or(0);
            self.options.adamw.update_threads(own, threads, &mut p, grad, &mut m, &mut v);
            values.insert(n.clone(), HostTensor::from_f32(shape.clone(), &p)?);
            self.state.exp_avg.insert(n.clone(), HostTensor::from_f32(shape.clone(), &m)?);
            self.state.exp_avg_sq.insert(n.clone(), HostTensor::from_f32(shape.clone(), &v)?);
        }
        self.state.step = t;
        prof.optimizer = clock.elapsed();
        let clock = Instant::now();
        let src = Reload { values: &values, adapters: &self.adapters, scalings: &self.scalings };
        let model = self.model.clone().load_rank_tensors("", &src, &self.device)?;
        self.model = model.map(&mut RequireGrad { mode: self.options.mode, containers: vec![] });
        prof.reload = clock.elapsed();
        prof.all_reduce = reducer.take_time();
        self.last_profile = prof;
        Ok(value)
    }

    /// The trainable rank tensors that got no gradient at all this step (every parameter behind them outside
    /// the graph: an expert no token was routed to). A rank tensor only partly without gradient is an error.
    fn without_gradient(&self, missing: &HashSet<ParamId>, names: &[String]) -> Result<Vec<String>> {
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let mut marks = StateDict::new();
        self.model.clone().map(&mut NoGradMarks { missing }).save_rank_tensors("", &mut marks)?;
        let mut out = Vec::new();
        for n in names {
            let v = marks.get(n).map(HostTensor::to_f32_vec).unwrap_or_default();
            let none = v.iter().filter(|x| **x != 0.0).count();
            if none == v.len() && none > 0 {
                out.push(n.clone());
            } else if none > 0 {
                return Err(Error::Training(format!(
                    "{n}: {none} of its {} entries got no gradient and the others did (a rank tensor trains as one)",
                    v.len()
                )));
            }
        }
        Ok(out)
    }

    /// The rank tensors (trained values), as the rank file stores them.
    pub fn rank_tensors(&self) -> Result<StateDict> {
        let mut out = StateDict::new();
        self.model.save_rank_tensors("", &mut out)?;
        Ok(out)
    }
}

fn metadata_tp<M: CustomModule>(model: &M) -> Result<TpContext> {
    let mut v = Vec::new();
    model.collect_tp_contexts(&mut v);
    match v.first() {
        Some(c) if v.iter().all(|x| x == c) => Ok(*c),
        Some(_) => Err(Error::RanksDiffer("the model's layers disagree on the TP size or rank".into())),
        None => Ok(TpContext { size: 1, rank: 0 }),
    }
}
