//! Ranks as MPI processes (feature `mpi`): this process runs (forward) or trains the one TP rank MPI gave it,
//! reading only that rank's bytes of an HF checkpoint, or only its own rank file of a sharded checkpoint.

use crate::config::ModelConfig;
use crate::model::LlamaForCausalLM;
use crate::run::{load_hf_rank_model, load_with_adapters, rank_forward, ForwardOutput};
use crate::train::{load_rank_file_model, train_rank, RankTrained};
use neuron_spec::checkpoint::adapters::{imported_rank_adapter, rank_adapter};
use neuron_spec::checkpoint::{RankCheckpoint, METADATA_PATH};
use neuron_spec::comm::{Communicator, MpiCommunicator};
use neuron_spec::format::HfCheckpoint;
use neuron_spec::lora::{ImportedAdapter, LoraConfig, LoraRankAdapter, ADAPTER_CONFIG};
use neuron_spec::spec::compile::PlanOptions;
use neuron_spec::spec::contract::CustomModule;
use neuron_spec::tensor::StateDict;
use neuron_spec::train::{read_optimizer_state, RankTrainer, TrainOptions};
use neuron_spec::{Error, HostTensor, Result, Spec, TensorInfo, TensorSource};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// What this process's rank computed and read.
#[derive(Debug, Clone)]
pub struct RankRun {
    /// The forward outputs (every rank holds the same bits; checked across ranks).
    pub output: ForwardOutput,
    /// Tensor bytes this process read from the checkpoint (its slices, or its rank file).
    pub bytes_read: usize,
    /// What it read them from (the HF directory or its rank file).
    pub source: PathBuf,
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

/// This rank's factors of every `adapter_<name>/` of a sharded checkpoint, from its own rank file of each.
fn own_sharded_adapters(dir: &Path, rank: usize) -> Result<Vec<LoraRankAdapter>> {
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let n = e.file_name().to_string_lossy().to_string();
        if let Some(name) = n.strip_prefix("adapter_") {
            if e.path().join(neuron_spec::checkpoint::adapters::REFERENCE_ADAPTER_SHARDS).is_dir() {
                return Err(Error::lora(
                    name,
                    format!(
                        "{}: optimum-neuron's adapter shards are read by the threaded runs only; under --comm mpi, \
                         reshard the checkpoint first (neuron-spec reshard), which writes the adapter in our layout",
                        e.path().join(neuron_spec::checkpoint::adapters::REFERENCE_ADAPTER_SHARDS).display()
                    ),
                ));
            }
            if e.path().is_dir() {
                dirs.push((name.to_string(), e.path()));
            }
        }
    }
    dirs.sort();
    dirs.into_iter()
        .map(|(name, p)| {
            let config = LoraConfig::read(&p.join(ADAPTER_CONFIG))?;
            let ck = RankCheckpoint::open(&p, rank)?;
            let mut tensors = StateDict::new();
            let src = ck.file.source();
            for n in src.names() {
                tensors.insert(n.clone(), src.tensor(&n)?);
            }
            rank_adapter(&name, &config, tensors)
        })
        .collect()
}

/// Runs this process's rank of the model in `dir` (HF at the world size, or a sharded checkpoint at its own
/// tp, which must equal the world size) with `adapters` (imported PEFT adapters) active, and checks that every
/// rank computed the same logits.
pub fn mpi_forward(
    comm: &MpiCommunicator,
    dir: &Path,
    fuse_qkv: bool,
    adapters: &[ImportedAdapter],
    input_ids: &[Vec<i64>],
) -> Result<RankRun> {
    let ctx = comm.context();
    let cfg = ModelConfig::read(&dir.join("config.json"))?;
    let (run, source) = if dir.join(METADATA_PATH).exists() {
        let (ck, fused) = own_rank_file(dir, ctx, "run")?;
        let counting = Counting { inner: ck.file.source(), bytes: AtomicUsize::new(0) };
        let out = rank_forward(ctx, comm, input_ids, &|ctx, device| {
            let model = LlamaForCausalLM::from_config(&cfg, ctx, crate::QkvLayout::gqa(fused), device)?;
            let ours = model.create_parameter_metadata()?;
            if ours.model_weight_transformation_specs != ck.metadata.model_weight_transformation_specs {
                return Err(Error::Metadata {
                    path: ck.dir.join(METADATA_PATH),
                    reason:
                        "the checkpoint's transformation specs differ from this model's layout (other config or tp?)"
                            .into(),
                });
            }
            let mut ras = own_sharded_adapters(dir, ctx.rank)?;
            for a in adapters {
                ras.push(imported_rank_adapter(&ours, a, ctx.size, ctx.rank)?);
            }
            load_with_adapters(model, &counting, ras, device)
        })?;
        ((out, counting.bytes.load(Ordering::Relaxed)), ck.file.path().to_path_buf())
    } else {
        let hf = HfCheckpoint::open(dir)?;
        let counting = Counting { inner: &hf, bytes: AtomicUsize::new(0) };
        let out = rank_forward(ctx, comm, input_ids, &|ctx, device| {
            let model = LlamaForCausalLM::from_config(&cfg, ctx, crate::QkvLayout::gqa(fuse_qkv), device)?;
            let meta = model.create_parameter_metadata()?;
            let local = neuron_spec::spec::compile::adapt_state_dict(
                &meta,
                &counting,
                ctx.size,
                ctx.rank,
                PlanOptions::default(),
            )?;
            let ras = adapters
                .iter()
                .map(|a| imported_rank_adapter(&meta, a, ctx.size, ctx.rank))
                .collect::<Result<Vec<_>>>()?;
            load_with_adapters(model, &local, ras, device)
        })?;
        ((out, counting.bytes.load(Ordering::Relaxed)), dir.to_path_buf())
    };
    let (output, bytes_read) = run;
    check_same_logits(comm, &output.logits)?;
    Ok(RankRun { output, bytes_read, source })
}

/// Fails on every rank when some rank's logits differ (bit for bit) from rank 0's.
fn check_same_logits(comm: &MpiCommunicator, logits: &[f32]) -> Result<()> {
    // SipHash with fixed keys: the same function in every process of the job.
    let mut h = std::hash::DefaultHasher::new();
    logits.len().hash(&mut h);
    for v in logits {
        v.to_bits().hash(&mut h);
    }
    let all = comm.all_gather_u64(&[h.finish()]);
    match all.iter().position(|x| *x != all[0]) {
        Some(r) => Err(Error::Invalid(format!("rank {r} computed other logits than rank 0"))),
        None => Ok(()),
    }
}

/// This process's trained rank, with what it read.
#[derive(Debug, Clone)]
pub struct RankTrainRun {
    /// Its losses, trained tensors and AdamW state.
    pub trained: RankTrained,
    /// Whether the model has one fused `weight_qkv` per layer (as the HF run was asked, or as the resumed
    /// checkpoint is laid out).
    pub fuse_qkv: bool,
    /// Weight bytes this process read (its slices of the HF checkpoint, or its rank file's tensors).
    pub bytes_read: usize,
    /// What it read them from (the HF directory or its rank file).
    pub source: PathBuf,
}

/// Trains this process's rank of the model in `dir` for `steps` steps over `batches`, with the same per-rank
/// loop as the threaded run ([`train_rank`]): an HF checkpoint at the world size (each process adapts its own
/// slices), or a trained sharded checkpoint at its own tp, which must equal the world size (each process opens
/// its own rank file and its own rank file of each AdamW moment). `on_step(k, loss)` runs on rank 0.
pub fn mpi_train(
    comm: &MpiCommunicator,
    dir: &Path,
    fuse_qkv: bool,
    options: TrainOptions,
    batches: &[Vec<Vec<i64>>],
    steps: usize,
    on_step: &dyn Fn(usize, f32),
) -> Result<RankTrainRun> {
    let ctx = comm.context();
    let cfg = ModelConfig::read(&dir.join("config.json"))?;
    if dir.join(METADATA_PATH).exists() {
        let (ck, fused) = own_rank_file(dir, ctx, "train")?;
        let counting = Counting { inner: ck.file.source(), bytes: AtomicUsize::new(0) };
        let trained = train_rank(
            comm,
            batches,
            steps,
            &|ctx, device| {
                let model = load_rank_file_model(&ck.dir, &ck.metadata, ck.tp, &counting, &cfg, ctx, device)?;
                RankTrainer::new(model, ck.file.source(), options, device)?
                    .with_state(read_optimizer_state(dir, ctx.rank)?)
            },
            on_step,
        )?;
        let bytes_read = counting.bytes.load(Ordering::Relaxed);
        Ok(RankTrainRun { trained, fuse_qkv: fused, bytes_read, source: ck.file.path().to_path_buf() })
    } else {
        let hf = HfCheckpoint::open(dir)?;
        let counting = Counting { inner: &hf, bytes: AtomicUsize::new(0) };
        let trained = train_rank(
            comm,
            batches,
            steps,
            &|ctx, device| {
                let model = load_hf_rank_model(&counting, &cfg, ctx, fuse_qkv, device)?;
                RankTrainer::new(model, &StateDict::new(), options, device)
            },
            on_step,
        )?;
        let bytes_read = counting.bytes.load(Ordering::Relaxed);
        Ok(RankTrainRun { trained, fuse_qkv, bytes_read, source: dir.to_path_buf() })
    }
}

/// This process's own rank file of the sharded checkpoint in `dir` (refused when the checkpoint's tp is not
/// the job's size), and whether its q/k/v are fused. `verb` says what the processes do with it.
fn own_rank_file(
    dir: &Path,
    ctx: neuron_spec::spec::contract::TpContext,
    verb: &str,
) -> Result<(RankCheckpoint, bool)> {
    let ck = RankCheckpoint::open(dir, ctx.rank)?;
    if ck.tp != ctx.size {
        return Err(Error::Invalid(format!(
            "{} is sharded at tp {}, but {} MPI processes {verb} it (start one per rank: mpirun -np {})",
            dir.display(),
            ck.tp,
            ctx.size,
            ck.tp
        )));
    }
    let fused = ck.metadata.specs().any(|(_, s)| matches!(s, Spec::GqaQkv(g) if g.fuse_qkv));
    Ok((ck, fused))
}

/// This process's rank of `generate` (the rank MPI gave it) with the model of `m`: its slices of the HF
/// checkpoint, or its own rank file of the sharded checkpoint (whose tp must be the world size), then
/// [`crate::generate::rank_generate`]'s loop; `on_token` is called on rank 0 only. Every rank returns the same ids
/// (checked at every step).
pub fn mpi_generate(
    comm: &MpiCommunicator,
    m: &crate::generate::TextModel,
    prompt: &[i64],
    opts: &crate::generate::GenerateOptions,
    on_token: &mut dyn FnMut(i64) -> Result<()>,
) -> Result<Vec<i64>> {
    let ctx = comm.context();
    let device = burn::tensor::Device::default();
    let model = match &m.sharded {
        Some(_) => {
            let (ck, _) = own_rank_file(&m.dir, ctx, "generate")?;
            load_rank_file_model(&ck.dir, &ck.metadata, ck.tp, ck.file.source(), &m.cfg, ctx, &device)?
        }
        None => m.load_rank(Some(&HfCheckpoint::open(&m.dir)?), ctx, &device)?,
    };
    let mut emit = |id: i64| if ctx.rank == 0 { on_token(id) } else { Ok(()) };
    crate::generate::rank_generate(&model, comm, prompt, opts, &mut emit)
}
