//! The forward tasks: [`Forward`] (the whole model, or every pipeline stage in turn, the residual stream
//! handed from stage to stage as a host value) and [`StageForward`] (one stage: what a process per stage would
//! run), and the one writer of the outputs ([`write_forward_outputs`]).

use super::source::Plan;
use super::transport::fingerprint_f32;
use super::{Ranks, Task, TaskKind};
use crate::stage::StageInput;
use burn::tensor::{Device, Int, Tensor, TensorData};
use neuron_spec::comm::Communicator;
use neuron_spec::spec::contract::CustomModule;
use neuron_spec::tensor::HostTensor;
use neuron_spec::{Error, Result, TensorInfo};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A `[batch, seq, width]` f32 tensor as host data: the residual stream handed from stage to stage (what a
/// transport between processes would send), or the logits.
#[derive(Debug, Clone, PartialEq)]
pub struct Activations {
    /// `[batch, seq, width]`.
    pub shape: [usize; 3],
    /// Row-major values.
    pub values: Vec<f32>,
}

impl Activations {
    /// Copies `t` to the host.
    pub fn from_tensor(t: Tensor<3>, what: &str) -> Result<Self> {
        let shape = t.dims();
        let data = t.try_into_data().map_err(|e| Error::Tensor(format!("{what}: {e:?}")))?;
        let values = data.try_into_vec::<f32>().map_err(|e| Error::Tensor(format!("{what}: {e:?}")))?;
        Ok(Self { shape, values })
    }

    /// The tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor<3>> {
        if self.values.len() != self.shape.iter().product::<usize>() {
            return Err(Error::Tensor(format!(
                "activations of shape {:?} hold {} values",
                self.shape,
                self.values.len()
            )));
        }
        Ok(Tensor::from_data(TensorData::new(self.values.clone(), self.shape), device))
    }
}

/// `[batch][seq]` token ids as a tensor; refuses an empty batch and rows of unequal length.
pub(crate) fn ids_tensor(input_ids: &[Vec<i64>], device: &Device) -> Result<Tensor<2, Int>> {
    let b = input_ids.len();
    let s = input_ids.first().map_or(0, Vec::len);
    if b == 0 || s == 0 {
        return Err(Error::InputData("input_ids must hold at least one non-empty sequence".into()));
    }
    if let Some((i, row)) = input_ids.iter().enumerate().find(|(_, r)| r.len() != s) {
        return Err(Error::InputData(format!(
            "input_ids row {i} has {} tokens, row 0 has {s} (no padding support)",
            row.len()
        )));
    }
    let flat: Vec<i64> = input_ids.iter().flatten().copied().collect();
    Ok(Tensor::from_data(TensorData::new(flat, [b, s]), device))
}

/// What one rank read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankRead {
    /// The rank.
    pub rank: usize,
    /// Weight bytes it read (its slices of the HF checkpoint, or its rank file's tensors).
    pub bytes: usize,
    /// What it read them from.
    pub from: PathBuf,
}

/// The outputs of a forward pass (every rank computes the same bits, which is checked).
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
    /// What each rank read, in rank order (threads: every rank, summed over the stages; MPI: this process).
    pub reads: Vec<RankRead>,
    /// What importing the adapters warned about (mean mode's loss).
    pub warnings: Vec<String>,
}

impl ForwardOutput {
    /// The outputs by name, as [`write_forward_outputs`] writes them: `logits`, `hidden_0`, `hidden_1`.
    pub fn named(&self) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        let mut v = vec![
            ("logits", self.logits_shape.to_vec(), self.logits.as_slice()),
            ("hidden_0", self.hidden_shape.to_vec(), self.hidden_0.as_slice()),
        ];
        if let Some(h) = &self.hidden_1 {
            v.push(("hidden_1", self.hidden_shape.to_vec(), h.as_slice()));
        }
        v
    }
}

/// Writes `out`'s logits and hidden states as one F32 safetensors file at `path`, through a temporary sibling
/// renamed into place (nothing partial is left). The one writer of forward outputs, threads and MPI alike.
pub fn write_forward_outputs(path: &Path, out: &ForwardOutput) -> Result<()> {
    let tensors = out
        .named()
        .into_iter()
        .map(|(n, shape, v)| Ok((n.to_string(), HostTensor::from_f32(shape, v)?)))
        .collect::<Result<Vec<_>>>()?;
    let infos: Vec<_> = tensors
        .iter()
        .map(|(n, t)| TensorInfo { name: n.clone(), dtype: t.dtype(), shape: t.shape().to_vec() })
        .collect();
    let name = path.file_name().ok_or_else(|| Error::Argument(format!("{}: not a file name", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let written = neuron_spec::format::write_safetensors(&tmp, &infos, &Default::default(), &mut |info| {
        Ok(tensors.iter().filter(|(n, _)| *n == info.name).map(|(_, t)| t.clone()).collect())
    });
    let renamed = written.and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

/// A forward pass over `input_ids` (`[batch][seq]`); a checkpoint with pipeline stages runs stage by stage.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The token ids, `[batch][seq]`, rows of equal length.
    pub input_ids: Vec<Vec<i64>>,
    /// Where rank 0 writes the outputs ([`write_forward_outputs`]), if anywhere.
    pub output: Option<PathBuf>,
}

impl Forward {
    /// A forward pass over `input_ids`, writing nothing.
    pub fn new(input_ids: Vec<Vec<i64>>) -> Self {
        Self { input_ids, output: None }
    }

    /// Rank 0 also writes the outputs to `path`.
    pub fn write_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.output = Some(path.into());
        self
    }
}

/// One rank's forward result so far.
#[derive(Debug, Clone)]
pub struct ForwardRank {
    output: Activations,
    hidden: Vec<Activations>,
    read: RankRead,
}

impl Task for Forward {
    type Rank = ForwardRank;
    type Output = ForwardOutput;
    const KIND: TaskKind = TaskKind::Forward;
    const STAGED: bool = true;

    fn stages(&self, pp: usize) -> Range<usize> {
        0..pp
    }

    fn rank<C: Communicator>(
        &self,
        plan: &Plan<'_>,
        stage: usize,
        previous: Option<&ForwardRank>,
        comm: &C,
    ) -> Result<ForwardRank> {
        let ctx = comm.context();
        let device = Device::default();
        if plan.pp == 1 {
            let ids = ids_tensor(&self.input_ids, &device)?;
            let loaded = plan.load(ctx, &device)?;
            let out = loaded.model.forward(ids, comm)?;
            let hidden = out
                .hidden_states
                .into_iter()
                .take(2)
                .map(|h| Activations::from_tensor(h, "hidden states"))
                .collect::<Result<_>>()?;
            let read = RankRead { rank: ctx.rank, bytes: loaded.bytes_read, from: loaded.read_from };
            return Ok(ForwardRank { output: Activations::from_tensor(out.logits, "logits")?, hidden, read });
        }
        let input = match previous {
            None => StageData::Tokens(self.input_ids.clone()),
            Some(p) => StageData::Hidden(p.output.clone()),
        };
        let (run, read) = run_stage_rank(plan, stage, &input, comm, &device)?;
        let mut hidden = previous.map_or_else(Vec::new, |p| p.hidden.clone());
        hidden.extend(run.hidden_states.into_iter().take(2usize.saturating_sub(hidden.len())));
        let bytes = read.bytes + previous.map_or(0, |p| p.read.bytes);
        Ok(ForwardRank { output: run.output, hidden, read: RankRead { bytes, ..read } })
    }

    fn fingerprint(&self, rank: &ForwardRank) -> (u64, &'static str) {
        (fingerprint_f32(&rank.output.values), "outputs")
    }

    fn finish(&self, plan: &Plan<'_>, ranks: Ranks<'_, ForwardRank>) -> Result<ForwardOutput> {
        let reads = match &ranks {
            Ranks::All(v) => v.iter().map(|r| r.read.clone()).collect(),
            _ => ranks.any().map(|r| vec![r.read.clone()]).unwrap_or_default(),
        };
        let r = ranks.any().ok_or_else(|| Error::Thread("no ranks ran".into()))?;
        let mut hs = r.hidden.iter();
        let h0 = hs.next().ok_or_else(|| Error::Tensor("no hidden states".into()))?;
        let out = ForwardOutput {
            logits: r.output.values.clone(),
            logits_shape: r.output.shape,
            hidden_0: h0.values.clone(),
            hidden_1: hs.next().map(|h| h.values.clone()),
            hidden_shape: h0.shape,
            reads,
            warnings: plan.warnings.clone(),
        };
        if let Some(path) = &self.output {
            let written = match ranks.rank0() {
                Some(_) => write_forward_outputs(path, &out),
                None => Ok(()),
            };
            super::agree_outcome(&ranks, written)?;
        }
        Ok(out)
    }
}

/// What a stage is given: the token ids (stage 0) or the previous stage's activations.
#[derive(Debug, Clone)]
pub enum StageData {
    /// `[batch][seq]` token ids.
    Tokens(Vec<Vec<i64>>),
    /// The residual stream `[batch, seq, hidden]`.
    Hidden(Activations),
}

/// A stage's result (every rank of the stage computed the same bits, which is checked).
#[derive(Debug, Clone)]
pub struct StageRun {
    /// The residual stream for the next stage, or the logits from the last.
    pub output: Activations,
    /// The stage's own residual stream (stage 0: the embedding output first, then each layer's output).
    pub hidden_states: Vec<Activations>,
    /// The names of the parameters the stage's models were built with (its metadata's, checked).
    pub parameters: Vec<String>,
}

/// One pipeline stage of a sharded checkpoint on its input: the unit a process-per-stage transport would run
/// (receive the stage's input, run it, send its output on).
#[derive(Debug, Clone)]
pub struct StageForward {
    /// The stage.
    pub stage: usize,
    /// Its input.
    pub input: StageData,
}

fn run_stage_rank<C: Communicator>(
    plan: &Plan<'_>,
    stage: usize,
    input: &StageData,
    comm: &C,
    device: &Device,
) -> Result<(StageRun, RankRead)> {
    let ctx = comm.context();
    let loaded = plan.load_stage(stage, ctx, device)?;
    let parameters = loaded.model.create_parameter_metadata()?.parameters.keys().cloned().collect();
    let input = match input {
        StageData::Tokens(ids) => StageInput::Tokens(ids_tensor(ids, device)?),
        StageData::Hidden(a) => StageInput::Hidden(a.to_tensor(device)?),
    };
    let out = loaded.model.forward(input, comm)?;
    let what = if stage + 1 == plan.pp { "logits" } else { "hidden states" };
    let run = StageRun {
        output: Activations::from_tensor(out.output, what)?,
        hidden_states: out
            .hidden_states
            .into_iter()
            .map(|h| Activations::from_tensor(h, "hidden states"))
            .collect::<Result<_>>()?,
        parameters,
    };
    Ok((run, RankRead { rank: ctx.rank, bytes: loaded.bytes_read, from: loaded.read_from }))
}

impl Task for StageForward {
    type Rank = StageRun;
    type Output = StageRun;
    const KIND: TaskKind = TaskKind::Forward;
    const STAGED: bool = true;

    fn stages(&self, _pp: usize) -> Range<usize> {
        self.stage..self.stage + 1
    }

    fn prepare(&self, plan: &mut Plan<'_>) -> Result<()> {
        if self.stage >= plan.pp {
            let dir = plan.source.dir().map_or(String::new(), |d| format!("{}: ", d.display()));
            return Err(Error::Stage(format!("{dir}no pipeline stage {} (pp is {})", self.stage, plan.pp)));
        }
        Ok(())
    }

    fn rank<C: Communicator>(&self, plan: &Plan<'_>, stage: usize, _: Option<&StageRun>, comm: &C) -> Result<StageRun> {
        Ok(run_stage_rank(plan, stage, &self.input, comm, &Device::default())?.0)
    }

    fn fingerprint(&self, rank: &StageRun) -> (u64, &'static str) {
        (fingerprint_f32(&rank.output.values), "outputs")
    }

    fn finish(&self, _plan: &Plan<'_>, ranks: Ranks<'_, StageRun>) -> Result<StageRun> {
        ranks.any().cloned().ok_or_else(|| Error::Thread("no ranks ran".into()))
    }
}
