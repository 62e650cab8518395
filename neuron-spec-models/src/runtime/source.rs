//! Where a run's weights come from ([`Source`]), and the source laid out for one run ([`Plan`]): its tp, pp,
//! q/k/v layout, the whole model's layout, its adapters imported for that layout; then, per rank, one
//! [`Plan::load`] (or [`Plan::load_stage`]) that builds the rank's model, checks the checkpoint's layout
//! against it and loads the base tensors with every adapter's rank factors.

use super::transport::{Transport, TransportKind};
use crate::config::ModelConfig;
use crate::model::{layout, LlamaForCausalLM, QkvLayout};
use crate::stage::LlamaStage;
use burn::tensor::Device;
use neuron_spec::checkpoint::adapters::{imported_rank_adapter, sharded_adapters, ShardedAdapter};
use neuron_spec::checkpoint::stage::{metadata_path, stage_count, StageCheckpoint};
use neuron_spec::checkpoint::{RankCheckpoint, ShardedCheckpoint, METADATA_PATH};
use neuron_spec::format::HfCheckpoint;
use neuron_spec::lora::{
    import_adapter, ImportedAdapter, LoraImportOptions, LoraRankAdapter, LoraRankSource, PeftAdapter,
};
use neuron_spec::spec::compile::PlanOptions;
use neuron_spec::spec::contract::{CustomModule, TpContext};
use neuron_spec::spec::pipeline::StageAssignment;
use neuron_spec::{CheckpointMetadata, Error, HostTensor, Result, Spec, TensorInfo, TensorSource};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A LoRA adapter a run loads beside the source's own (`adapter_<name>/` of a sharded checkpoint).
#[derive(Debug, Clone)]
pub enum Adapter {
    /// An HF PEFT directory (adapter_config.json + adapter_model.safetensors), imported for the run's layout.
    Peft {
        /// The directory.
        dir: PathBuf,
        /// The adapter's name in the TP model.
        name: String,
        /// Exact or mean, and whether a partial fused group is accepted.
        options: LoraImportOptions,
    },
    /// An adapter already imported for the run's layout ([`Source::layout`] at the run's tp).
    Imported(Box<ImportedAdapter>),
}

impl Adapter {
    /// The HF PEFT adapter in `dir`, named `name`, imported exactly (training and forward equal peft's).
    pub fn peft(dir: impl Into<PathBuf>, name: &str) -> Self {
        Adapter::Peft { dir: dir.into(), name: name.to_string(), options: LoraImportOptions::default() }
    }
}

/// The base weights.
enum Weights<'a> {
    /// An HF checkpoint directory, adapted rank by rank at the run's tp.
    Hf(HfCheckpoint),
    /// HF-named tensors held elsewhere (in memory, or any [`TensorSource`]).
    Tensors(&'a (dyn TensorSource + Sync)),
    /// A sharded checkpoint: ours or optimum-neuron's (`.pt`, plain or xser), at its own tp and pp.
    Sharded {
        /// Its tp.
        tp: usize,
        /// Its pipeline stages.
        pp: usize,
    },
}

/// Where a run's weights come from, with the adapters it runs with. See the [module docs](super).
pub struct Source<'a> {
    dir: Option<PathBuf>,
    cfg: ModelConfig,
    weights: Weights<'a>,
    qkv: QkvLayout,
    adapters: Vec<Adapter>,
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("dir", &self.dir).field("qkv", &self.qkv).finish_non_exhaustive()
    }
}

/// Whether `meta` lays q/k/v out as one fused `weight_qkv` per layer.
pub(crate) fn fused_qkv(meta: &CheckpointMetadata) -> bool {
    meta.specs().any(|(_, s)| matches!(s, Spec::GqaQkv(g) if g.fuse_qkv))
}

impl Source<'static> {
    /// The checkpoint directory `dir`: a sharded checkpoint (ours, or optimum-neuron's `.pt`; it has
    /// `shards/mp_metadata_pp_rank_0.json`) runs at its own tp, pp and q/k/v layout, with its adapters
    /// (`adapter_<name>/`); an HF directory (config.json + model.safetensors or an index) at the transport's
    /// tp, q/k/v separate unless [`Source::fuse_qkv`].
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg = ModelConfig::read(&dir.join("config.json"))?;
        let (weights, qkv) = if neuron_spec::checkpoint::is_sharded_dir(dir) {
            let pp = stage_count(dir)?;
            let mpath = dir.join(METADATA_PATH);
            let meta = CheckpointMetadata::read(&mpath)?;
            let tp = meta.tp_size(&mpath)?;
            (Weights::Sharded { tp, pp }, QkvLayout::gqa(fused_qkv(&meta)))
        } else {
            (Weights::Hf(HfCheckpoint::open(dir)?), QkvLayout::Separate)
        };
        Ok(Self { dir: Some(dir.to_path_buf()), cfg, weights, qkv, adapters: Vec::new() })
    }
}

impl<'a> Source<'a> {
    /// HF-named tensors from any source (e.g. in memory) for the model of `cfg`, at the transport's tp; q/k/v
    /// separate unless [`Source::fuse_qkv`]. Without a directory, a run cannot write a checkpoint.
    pub fn tensors(src: &'a (dyn TensorSource + Sync), cfg: ModelConfig) -> Self {
        Self { dir: None, cfg, weights: Weights::Tensors(src), qkv: QkvLayout::Separate, adapters: Vec::new() }
    }

    /// An HF source's q/k/v layout: one fused `weight_qkv` per layer, or separate (the default). A sharded
    /// checkpoint keeps its own layout (this does nothing to it).
    pub fn fuse_qkv(mut self, fuse: bool) -> Self {
        if !self.is_sharded() {
            self.qkv = QkvLayout::gqa(fuse);
        }
        self
    }

    /// Runs with `adapter` too (all adapters active: their deltas add up, as peft's `set_adapter([...])`).
    pub fn with_adapter(mut self, adapter: Adapter) -> Self {
        self.adapters.push(adapter);
        self
    }

    /// Runs with these adapters, already imported for the run's layout, too.
    pub fn with_imported(mut self, adapters: &[ImportedAdapter]) -> Self {
        self.adapters.extend(adapters.iter().map(|a| Adapter::Imported(Box::new(a.clone()))));
        self
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The checkpoint directory (`None` for [`Source::tensors`]).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Whether the weights are a sharded checkpoint.
    pub fn is_sharded(&self) -> bool {
        matches!(self.weights, Weights::Sharded { .. })
    }

    /// A sharded checkpoint's own tp (`None` for HF weights, which run at any tp).
    pub fn own_tp(&self) -> Option<usize> {
        match self.weights {
            Weights::Sharded { tp, .. } => Some(tp),
            _ => None,
        }
    }

    /// The pipeline stages of a sharded checkpoint (1 for HF weights).
    pub fn pp(&self) -> usize {
        match self.weights {
            Weights::Sharded { pp, .. } => pp,
            _ => 1,
        }
    }

    /// The q/k/v layout.
    pub fn qkv(&self) -> QkvLayout {
        self.qkv
    }

    /// Rank `ctx.rank`'s whole model at tp `ctx.size` on `device`, with the source's adapters: the layout check
    /// and the adapter import of a run, for one rank built by hand (a run does this on every rank).
    pub fn load(&self, ctx: TpContext, device: &Device) -> Result<LlamaForCausalLM> {
        Ok(self.plan(&Transport::threads(ctx.size), None)?.load(ctx, device)?.model)
    }

    /// The whole model's TP layout at `tp` (what adapters are imported for).
    pub fn layout(&self, tp: usize) -> Result<CheckpointMetadata> {
        layout(&self.cfg, tp, self.qkv)
    }

    /// The source laid out for a run on `transport`: checks the tp, imports the adapters, and for a checkpoint
    /// with pipeline stages opens the stages `staged` (a task that runs stage by stage; no other stage is
    /// read) or, with `None`, every stage as one model.
    pub fn plan(&self, transport: &Transport<'_>, staged: Option<Range<usize>>) -> Result<Plan<'_>> {
        let what = |d: &Option<PathBuf>| d.as_ref().map_or("the source".to_string(), |d| d.display().to_string());
        let (tp, pp) = match (&self.weights, transport.tp()) {
            (Weights::Sharded { tp, .. }, Some(t)) if t != *tp => {
                return Err(Error::Argument(match transport.kind() {
                    TransportKind::Mpi => format!(
                        "{} is sharded at tp {tp}, but {t} MPI processes run it (start one per rank: mpirun -np {tp})",
                        what(&self.dir)
                    ),
                    TransportKind::Threads => {
                        format!("{} is sharded at tp {tp}; tp {t} differs (reshard it first)", what(&self.dir))
                    }
                }))
            }
            (Weights::Sharded { tp, pp }, _) => (*tp, *pp),
            (_, t) => (t.unwrap_or(1), 1),
        };
        let meta = self.layout(tp)?;
        let mut adapters = Vec::new();
        let mut warnings = Vec::new();
        if let (Weights::Sharded { .. }, Some(dir)) = (&self.weights, &self.dir) {
            adapters.extend(sharded_adapters(dir)?.into_iter().map(PlannedAdapter::Sharded));
        }
        for a in &self.adapters {
            let imported = match a {
                Adapter::Peft { dir, name, options } => {
                    import_adapter(&meta, &PeftAdapter::open(dir)?, name, *options)?
                }
                Adapter::Imported(i) => (**i).clone(),
            };
            warnings.extend(imported.warnings.iter().cloned());
            adapters.push(PlannedAdapter::Imported(imported));
        }
        let (mut stages, mut merged) = (Vec::new(), None);
        if let (Weights::Sharded { pp, .. }, Some(dir)) = (&self.weights, &self.dir) {
            match staged {
                Some(run) if *pp > 1 => {
                    stages = (0..*pp)
                        .map(|s| run.contains(&s).then(|| StageCheckpoint::open(dir, s)).transpose())
                        .collect::<Result<Vec<_>>>()?;
                }
                None if *pp > 1 => merged = Some(ShardedCheckpoint::open(dir)?),
                _ => {}
            }
        }
        Ok(Plan { source: self, tp, pp, meta, adapters, warnings, stages, merged, trained: None })
    }
}

/// An adapter of a run.
pub(crate) enum PlannedAdapter {
    /// The sharded checkpoint's own `adapter_<name>/` (each rank reads its rank file).
    Sharded(ShardedAdapter),
    /// Imported for the run's layout (each rank adapts its slices).
    Imported(ImportedAdapter),
}

impl PlannedAdapter {
    fn name(&self) -> &str {
        match self {
            PlannedAdapter::Sharded(a) => &a.name,
            PlannedAdapter::Imported(a) => &a.name,
        }
    }
}

/// A [`Source`] laid out for one run: what every rank loads from.
pub struct Plan<'s> {
    /// The source.
    pub source: &'s Source<'s>,
    /// The run's tp.
    pub tp: usize,
    /// The source's pipeline stages (1 for HF weights).
    pub pp: usize,
    /// The whole model's layout at `tp`.
    pub meta: CheckpointMetadata,
    pub(crate) adapters: Vec<PlannedAdapter>,
    /// What importing the adapters warned about (mean mode's loss), for the caller to show.
    pub warnings: Vec<String>,
    stages: Vec<Option<StageCheckpoint>>,
    /// Every stage as one model (a task on the whole model of a checkpoint with stages).
    merged: Option<ShardedCheckpoint>,
    /// The adapter a LoRA training run trains (an entry of `adapters`, imported).
    pub(crate) trained: Option<ImportedAdapter>,
}

/// A rank's model, loaded.
pub struct Loaded<M> {
    /// The model with its adapters.
    pub model: M,
    /// The adapters' rank factors it was loaded with (their names and scalings, for a trainer).
    pub lora: Vec<LoraRankAdapter>,
    /// Weight bytes this rank read (its slices of the HF checkpoint, or its rank file's tensors).
    pub bytes_read: usize,
    /// What it read them from (the HF directory, or its rank file).
    pub read_from: PathBuf,
}

/// A source that counts the bytes it hands out (a whole-tensor read counts the whole tensor).
struct Counting<'a> {
    inner: &'a dyn TensorSource,
    bytes: AtomicUsize,
}

impl TensorSource for Counting<'_> {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.inner.info(name)
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let t = self.inner.tensor(name)?;
        self.bytes.fetch_add(t.bytes().len(), Ordering::Relaxed);
        Ok(t)
    }
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn read_slice(&self, name: &str, dim: usize, offset: usize, len: usize) -> Result<HostTensor> {
        let t = self.inner.read_slice(name, dim, offset, len)?;
        self.bytes.fetch_add(t.bytes().len(), Ordering::Relaxed);
        Ok(t)
    }
    fn release(&self, name: &str) {
        self.inner.release(name)
    }
    fn lora_adapters(&self) -> Vec<String> {
        self.inner.lora_adapters()
    }
    fn lora_scaling(&self, adapter: &str, module: &str) -> Option<f64> {
        self.inner.lora_scaling(adapter, module)
    }
}

/// The layout check, written once: the model built for this rank (`ours`) against what the checkpoint's
/// metadata file `path` describes (`theirs`): the same transformation specs and the same parameters.
fn check_layout(ours: &CheckpointMetadata, theirs: &CheckpointMetadata, path: &Path) -> Result<()> {
    if ours.model_weight_transformation_specs != theirs.model_weight_transformation_specs {
        return Err(Error::Metadata {
            path: path.to_path_buf(),
            reason: "the checkpoint's transformation specs differ from this model's layout (other config, tp or pp?)"
                .into(),
        });
    }
    let mut listed: Vec<&String> = theirs.parameters.keys().collect();
    let mut built: Vec<&String> = ours.parameters.keys().collect();
    listed.sort();
    built.sort();
    if listed != built {
        return Err(Error::Metadata {
            path: path.to_path_buf(),
            reason: "the checkpoint's parameters are not the ones this model holds (other config or pp?)".into(),
        });
    }
    Ok(())
}

/// The module of a LoRA factor name (`<module>.lora_A.weight` → `<module>`).
fn factor_module(name: &str) -> &str {
    name.split_once(".lora_").map_or(name, |(m, _)| m)
}

fn has_module(meta: &CheckpointMetadata, module: &str) -> bool {
    let prefix = format!("{module}.");
    meta.parameters.keys().any(|p| p.starts_with(&prefix))
}

impl Plan<'_> {
    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.source.cfg
    }

    /// Rank `ctx.rank`'s whole model on `device` (every pipeline stage of a checkpoint with stages), with
    /// every adapter.
    pub fn load(&self, ctx: TpContext, device: &Device) -> Result<Loaded<LlamaForCausalLM>> {
        let model = LlamaForCausalLM::from_config(&self.source.cfg, ctx, self.source.qkv, device)?;
        self.load_into(model, None, ctx, device)
    }

    /// Rank `ctx.rank`'s part of pipeline stage `stage` on `device`, with its modules' adapter factors.
    pub fn load_stage(&self, stage: usize, ctx: TpContext, device: &Device) -> Result<Loaded<LlamaStage>> {
        let cfg = &self.source.cfg;
        let assignment = StageAssignment::evenly(cfg.llama.num_hidden_layers, self.pp, cfg.llama.tie_word_embeddings)?;
        let model = LlamaStage::from_config(cfg, &assignment, stage, ctx, self.source.qkv, device)?;
        self.load_into(model, Some(stage), ctx, device)
    }

    fn load_into<M: CustomModule>(
        &self,
        model: M,
        stage: Option<usize>,
        ctx: TpContext,
        device: &Device,
    ) -> Result<Loaded<M>> {
        let ours = model.create_parameter_metadata()?;
        let lora = self.rank_adapters(&ours, stage.is_some() && self.pp > 1, ctx)?;
        let dir = self.source.dir.clone().unwrap_or_default();
        let (model, bytes_read, read_from) = match (&self.source.weights, stage) {
            (Weights::Hf(_) | Weights::Tensors(_), _) => {
                let src: &dyn TensorSource = match &self.source.weights {
                    Weights::Hf(hf) => hf,
                    Weights::Tensors(t) => *t,
                    Weights::Sharded { .. } => return Err(Error::Checkpoint("a sharded checkpoint read as HF".into())),
                };
                let counting = Counting { inner: src, bytes: AtomicUsize::new(0) };
                let local = neuron_spec::spec::compile::adapt_state_dict(
                    &ours,
                    &counting,
                    ctx.size,
                    ctx.rank,
                    PlanOptions::default(),
                )?;
                let model = model.load_rank_tensors("", &LoraRankSource::new(&local, lora.clone())?, device)?;
                (model, counting.bytes.load(Ordering::Relaxed), dir)
            }
            (Weights::Sharded { pp: 1, .. }, _) => {
                let ck = RankCheckpoint::open(&dir, ctx.rank)?;
                check_layout(&ours, &ck.metadata, &dir.join(METADATA_PATH))?;
                let counting = Counting { inner: ck.file.source(), bytes: AtomicUsize::new(0) };
                let model = model.load_rank_tensors("", &LoraRankSource::new(&counting, lora.clone())?, device)?;
                (model, counting.bytes.load(Ordering::Relaxed), ck.file.path().to_path_buf())
            }
            (Weights::Sharded { .. }, Some(s)) => {
                let ck = self.stages.get(s).and_then(Option::as_ref).ok_or_else(|| {
                    Error::Stage(format!("{}: pipeline stage {s} was not opened for this run", dir.display()))
                })?;
                check_layout(&ours, &ck.metadata, &dir.join(metadata_path(s)))?;
                let file = ck
                    .files
                    .get(ctx.rank)
                    .ok_or_else(|| Error::Stage(format!("stage {s} has no rank file for rank {}", ctx.rank)))?;
                let counting = Counting { inner: file.source(), bytes: AtomicUsize::new(0) };
                let model = model.load_rank_tensors("", &LoraRankSource::new(&counting, lora.clone())?, device)?;
                (model, counting.bytes.load(Ordering::Relaxed), file.path().to_path_buf())
            }
            (Weights::Sharded { .. }, None) => {
                let ck = self.merged.as_ref().ok_or_else(|| {
                    Error::Stage(format!("{}: its pipeline stages were not opened as one model", dir.display()))
                })?;
                check_layout(&ours, &ck.metadata, &dir.join(METADATA_PATH))?;
                let file = ck
                    .ranks
                    .get(ctx.rank)
                    .ok_or_else(|| Error::Checkpoint(format!("no rank file for rank {}", ctx.rank)))?;
                let counting = Counting { inner: file, bytes: AtomicUsize::new(0) };
                let model = model.load_rank_tensors("", &LoraRankSource::new(&counting, lora.clone())?, device)?;
                (model, counting.bytes.load(Ordering::Relaxed), dir.join(neuron_spec::checkpoint::RANKS_DIR))
            }
        };
        Ok(Loaded { model, lora, bytes_read, read_from })
    }

    /// Every adapter's factors for rank `ctx.rank`; in a pipeline stage (`staged`), only those of the
    /// stage's modules (a factor of a module in no stage is kept, so that loading refuses it by name).
    fn rank_adapters(&self, ours: &CheckpointMetadata, staged: bool, ctx: TpContext) -> Result<Vec<LoraRankAdapter>> {
        let mut out = Vec::with_capacity(self.adapters.len());
        for a in &self.adapters {
            let mut ra = match a {
                PlannedAdapter::Sharded(s) => s.rank_adapter(ctx.rank)?,
                PlannedAdapter::Imported(i) => imported_rank_adapter(&self.meta, i, ctx.size, ctx.rank)?,
            };
            if staged {
                ra.tensors.retain(|n, _| {
                    let m = factor_module(n);
                    has_module(ours, m) || !has_module(&self.meta, m)
                });
            }
            out.push(ra);
        }
        Ok(out)
    }

    /// The names of the run's adapters.
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.iter().map(|a| a.name().to_string()).collect()
    }
}
