//! Running a TP forward pass: one burn model per rank, each on its own thread, joined by a
//! [`LocalCommunicator`].

use crate::config::ModelConfig;
use crate::model::{LlamaForCausalLM, QkvLayout};
use burn::tensor::{Device, Int, Tensor, TensorData};
use neuron_spec::checkpoint::adapters::imported_rank_adapter;
use neuron_spec::comm::{Communicator, LocalCommunicator};
use neuron_spec::format::HfCheckpoint;
use neuron_spec::lora::{ImportedAdapter, LoraRankAdapter, LoraRankSource};
use neuron_spec::spec::compile::{HfWeights, PlanOptions};
use neuron_spec::spec::contract::{CustomModule, TpContext};
use neuron_spec::{CheckpointMetadata, Error, Result, TensorSource};
use std::path::Path;

/// The outputs of a TP forward pass (rank 0's; every rank computes the same bits).
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// Logits, row-major `[batch, seq, vocab]`.
    pub logits: Vec<f32>,
    /// `[batch, seq, vocab]`.
    pub logits_shape: [usize; 3],
    /// The embedding output, `[batch, seq, hidden]`.
    pub hidden_0: Vec<f32>,
    /// The residual stream after decoder layer 0 (`None` without layers).
    pub hidden_1: Option<Vec<f32>>,
    /// `[batch, seq, hidden]`.
    pub hidden_shape: [usize; 3],
}

/// The rank `tp.rank` model loaded from an HF checkpoint (any dtype; weights are widened to f32).
pub fn load_hf_rank_model(
    src: &dyn TensorSource,
    cfg: &ModelConfig,
    tp: TpContext,
    fuse_qkv: bool,
    device: &Device,
) -> Result<LlamaForCausalLM> {
    LlamaForCausalLM::from_config(cfg, tp, QkvLayout::gqa(fuse_qkv), device)?.load_hf_rank(
        src,
        device,
        PlanOptions::default(),
    )
}

/// Runs `tp` ranks on threads over an HF checkpoint: each rank adapts its own slices of `src`.
pub fn run_tp_forward(
    src: &(dyn TensorSource + Sync),
    cfg: &ModelConfig,
    tp: usize,
    fuse_qkv: bool,
    input_ids: &[Vec<i64>],
) -> Result<ForwardOutput> {
    run_ranks(tp, input_ids, &|ctx, device| load_hf_rank_model(src, cfg, ctx, fuse_qkv, device))
}

/// The TP layout (specs and parameter metadata) of the model at `tp`: what adapters are imported for.
pub fn model_metadata(cfg: &ModelConfig, tp: usize, fuse_qkv: bool) -> Result<CheckpointMetadata> {
    crate::model::layout(cfg, tp, QkvLayout::gqa(fuse_qkv))
}

/// Loads rank `ctx.rank`'s base tensors from `local` and the adapters' factors, all adapters active.
pub(crate) fn load_with_adapters<M: CustomModule>(
    model: M,
    local: &dyn TensorSource,
    adapters: Vec<LoraRankAdapter>,
    device: &Device,
) -> Result<M> {
    let src = LoraRankSource::new(local, adapters)?;
    model.load_rank_tensors("", &src, device)
}

/// [`run_tp_forward`] with LoRA adapters imported from HF PEFT directories (see
/// `neuron_spec::lora::import_adapter`); every adapter is active (their deltas add up, as peft's
/// `set_adapter([...])`).
pub fn run_tp_forward_with_adapters(
    src: &(dyn TensorSource + Sync),
    cfg: &ModelConfig,
    tp: usize,
    fuse_qkv: bool,
    adapters: &[ImportedAdapter],
    input_ids: &[Vec<i64>],
) -> Result<ForwardOutput> {
    run_ranks(tp, input_ids, &|ctx, device| {
        let model = LlamaForCausalLM::from_config(cfg, ctx, QkvLayout::gqa(fuse_qkv), device)?;
        let meta = model.create_parameter_metadata()?;
        let local =
            neuron_spec::spec::compile::adapt_state_dict(&meta, src, ctx.size, ctx.rank, PlanOptions::default())?;
        let ras =
            adapters.iter().map(|a| imported_rank_adapter(&meta, a, ctx.size, ctx.rank)).collect::<Result<Vec<_>>>()?;
        load_with_adapters(model, &local, ras, device)
    })
}

/// [`run_tp_forward`] on an HF checkpoint directory (`config.json` and `model.safetensors` or an index).
pub fn run_tp_forward_dir(dir: &Path, tp: usize, fuse_qkv: bool, input_ids: &[Vec<i64>]) -> Result<ForwardOutput> {
    let cfg = ModelConfig::read(&dir.join("config.json"))?;
    let ck = HfCheckpoint::open(dir)?;
    run_tp_forward(&ck, &cfg, tp, fuse_qkv, input_ids)
}

/// Fails the group's collectives if its rank's thread ends early (error or panic).
struct AbortGuard<'a> {
    comm: &'a LocalCommunicator,
    armed: bool,
}

impl Drop for AbortGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.comm.abort("the rank stopped before finishing its work");
        }
    }
}

/// Runs `work` for every rank of a fresh `LocalCommunicator` group of `tp`, each on its own thread, and returns
/// the results in rank order. A rank that fails or panics aborts the others' collectives (none hangs), and the
/// error returned is a rank's own rather than the aborts it caused on the others.
pub(crate) fn on_rank_threads<T: Send>(
    tp: usize,
    work: &(dyn Fn(&LocalCommunicator) -> Result<T> + Sync),
) -> Result<Vec<T>> {
    let comms = LocalCommunicator::group(tp)?;
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .map(|comm| {
                s.spawn(move || {
                    let mut guard = AbortGuard { comm, armed: true };
                    let r = work(comm);
                    match &r {
                        Ok(_) => guard.armed = false,
                        Err(e) => comm.abort(&e.to_string()),
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(r, h)| h.join().unwrap_or_else(|_| Err(Error::Invalid(format!("rank {r} panicked")))))
            .collect()
    });
    let mut outs = Vec::with_capacity(tp);
    let mut first_err: Option<Error> = None;
    for r in results {
        match r {
            Ok(o) => outs.push(o),
            Err(e) => {
                let is_echo = e.to_string().starts_with("collective aborted");
                if first_err.as_ref().is_none_or(|f| f.to_string().starts_with("collective aborted") && !is_echo) {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(outs),
    }
}

pub(crate) fn ids_tensor(input_ids: &[Vec<i64>], device: &Device) -> Result<Tensor<2, Int>> {
    let b = input_ids.len();
    let s = input_ids.first().map_or(0, Vec::len);
    if b == 0 || s == 0 {
        return Err(Error::Invalid("input_ids must hold at least one non-empty sequence".into()));
    }
    if let Some((i, row)) = input_ids.iter().enumerate().find(|(_, r)| r.len() != s) {
        return Err(Error::Invalid(format!(
            "input_ids row {i} has {} tokens, row 0 has {s} (no padding support)",
            row.len()
        )));
    }
    let flat: Vec<i64> = input_ids.iter().flatten().copied().collect();
    Ok(Tensor::from_data(TensorData::new(flat, [b, s]), device))
}

/// One rank's forward pass with any communicator (threads here, processes in `mpi_run`).
pub(crate) fn rank_forward<C: Communicator>(
    ctx: TpContext,
    comm: &C,
    input_ids: &[Vec<i64>],
    load: &(dyn Fn(TpContext, &Device) -> Result<LlamaForCausalLM> + Sync),
) -> Result<ForwardOutput> {
    let device = Device::default();
    let ids = ids_tensor(input_ids, &device)?;
    let model = load(ctx, &device)?;
    let out = model.forward(ids, comm)?;
    let to_vec = |t: Tensor<3>, what: &str| -> Result<([usize; 3], Vec<f32>)> {
        let dims = t.dims();
        let data = t.try_into_data().map_err(|e| Error::Invalid(format!("{what}: {e:?}")))?;
        Ok((dims, data.try_into_vec::<f32>().map_err(|e| Error::Invalid(format!("{what}: {e:?}")))?))
    };
    let (logits_shape, logits) = to_vec(out.logits, "logits")?;
    let mut hs = out.hidden_states.into_iter();
    let h0 = hs.next().ok_or_else(|| Error::Invalid("no hidden states".into()))?;
    let (hidden_shape, hidden_0) = to_vec(h0, "hidden_0")?;
    let hidden_1 = hs.next().map(|h| to_vec(h, "hidden_1").map(|x| x.1)).transpose()?;
    Ok(ForwardOutput { logits, logits_shape, hidden_0, hidden_1, hidden_shape })
}

/// Loads and runs every rank on its own thread; returns rank 0's outputs after checking all ranks agree.
pub fn run_ranks(
    tp: usize,
    input_ids: &[Vec<i64>],
    load: &(dyn Fn(TpContext, &Device) -> Result<LlamaForCausalLM> + Sync),
) -> Result<ForwardOutput> {
    let outs = on_rank_threads(tp, &|comm| rank_forward(comm.context(), comm, input_ids, load))?;
    let mut outs = outs.into_iter();
    let first = outs.next().ok_or_else(|| Error::Invalid("no ranks ran".into()))?;
    for (r, o) in outs.enumerate() {
        let same = o.logits.len() == first.logits.len()
            && o.logits.iter().zip(&first.logits).all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            return Err(Error::Invalid(format!("rank {} computed other logits than rank 0", r + 1)));
        }
    }
    Ok(first)
}
