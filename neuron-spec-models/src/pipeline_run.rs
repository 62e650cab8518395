//! Running a sharded checkpoint stage by stage: each pipeline stage is opened on its own
//! (`neuron_spec::checkpoint::stage::StageCheckpoint`: its metadata and its TP rank files only), its TP ranks
//! build their [`LlamaStage`] and run on threads, and the residual stream that leaves the stage is handed to
//! the next as a host value ([`Activations`]). [`run_stage`] is the unit a process-per-stage transport would
//! call: receive the stage's input, run it, send its output on. A checkpoint with one stage is the same path.

use crate::config::ModelConfig;
use crate::model::QkvLayout;
use crate::run::{ids_tensor, load_with_adapters, on_rank_threads, ForwardOutput};
use crate::stage::{LlamaStage, StageInput};
use burn::tensor::{Device, Tensor, TensorData};
use neuron_spec::checkpoint::adapters::{imported_rank_adapter, sharded_adapters};
use neuron_spec::checkpoint::stage::stage_count;
use neuron_spec::checkpoint::{metadata_path, StageCheckpoint};
use neuron_spec::comm::Communicator;
use neuron_spec::lora::ImportedAdapter;
use neuron_spec::spec::contract::CustomModule;
use neuron_spec::spec::pipeline::StageAssignment;
use neuron_spec::{Error, Result, Spec};
use std::path::Path;

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
        let data = t.try_into_data().map_err(|e| Error::Invalid(format!("{what}: {e:?}")))?;
        let values = data.try_into_vec::<f32>().map_err(|e| Error::Invalid(format!("{what}: {e:?}")))?;
        Ok(Self { shape, values })
    }

    /// The tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor<3>> {
        if self.values.len() != self.shape.iter().product::<usize>() {
            return Err(Error::Invalid(format!(
                "activations of shape {:?} hold {} values",
                self.shape,
                self.values.len()
            )));
        }
        Ok(Tensor::from_data(TensorData::new(self.values.clone(), self.shape), device))
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

/// A stage's result (rank 0's; every rank of the stage computed the same bits, which is checked).
#[derive(Debug, Clone)]
pub struct StageRun {
    /// The residual stream for the next stage, or the logits from the last.
    pub output: Activations,
    /// The stage's own residual stream (stage 0: the embedding output first, then each layer's output).
    pub hidden_states: Vec<Activations>,
    /// The names of the parameters the stage's models were built with (its metadata's, checked).
    pub parameters: Vec<String>,
}

/// Runs pipeline stage `stage` of the sharded checkpoint `dir` on `input`: opens that stage only, builds
/// each TP rank's [`LlamaStage`] from the stage's metadata and rank file (plus the adapters' rank factors,
/// one stage only), and runs the ranks on threads.
pub fn run_stage(
    dir: &Path,
    cfg: &ModelConfig,
    stage: usize,
    input: &StageData,
    extra: &[ImportedAdapter],
) -> Result<StageRun> {
    let ck = StageCheckpoint::open(dir, stage)?;
    let mpath = dir.join(metadata_path(stage));
    let assignment = StageAssignment::evenly(cfg.llama.num_hidden_layers, ck.pp, cfg.llama.tie_word_embeddings)?;
    let fuse_qkv = ck.metadata.specs().any(|(_, s)| matches!(s, Spec::GqaQkv(g) if g.fuse_qkv));
    let sharded = if ck.pp == 1 { sharded_adapters(dir)? } else { Vec::new() };
    let (ck, sharded, assignment) = (&ck, &sharded, &assignment);
    let outs = on_rank_threads(ck.tp, &|comm| {
        let ctx = comm.context();
        let device = Device::default();
        let model = LlamaStage::from_config(cfg, assignment, stage, ctx, QkvLayout::gqa(fuse_qkv), &device)?;
        let ours = model.create_parameter_metadata()?;
        if ours.model_weight_transformation_specs != ck.metadata.model_weight_transformation_specs {
            return Err(Error::Metadata {
                path: mpath.clone(),
                reason: format!(
                    "stage {stage}'s transformation specs differ from this model's layout for the stage (other config, tp or pp?)"
                ),
            });
        }
        let names: Vec<String> = ours.parameters.keys().cloned().collect();
        let mut listed: Vec<&String> = ck.metadata.parameters.keys().collect();
        let mut built: Vec<&String> = names.iter().collect();
        listed.sort();
        built.sort();
        if listed != built {
            return Err(Error::Metadata {
                path: mpath.clone(),
                reason: format!("stage {stage}'s parameters are not the ones the model's stage {stage} holds"),
            });
        }
        let file =
            ck.files.get(ctx.rank).ok_or_else(|| Error::Invalid(format!("no rank file for rank {}", ctx.rank)))?;
        let mut ras = sharded.iter().map(|a| a.rank_adapter(ctx.rank)).collect::<Result<Vec<_>>>()?;
        for a in extra {
            ras.push(imported_rank_adapter(&ours, a, ctx.size, ctx.rank)?);
        }
        let model = load_with_adapters(model, file.source(), ras, &device)?;
        let input = match input {
            StageData::Tokens(ids) => StageInput::Tokens(ids_tensor(ids, &device)?),
            StageData::Hidden(a) => StageInput::Hidden(a.to_tensor(&device)?),
        };
        let out = model.forward(input, comm)?;
        let what = if ck.is_last() { "logits" } else { "hidden states" };
        Ok(StageRun {
            output: Activations::from_tensor(out.output, what)?,
            hidden_states: out
                .hidden_states
                .into_iter()
                .map(|h| Activations::from_tensor(h, "hidden states"))
                .collect::<Result<_>>()?,
            parameters: names,
        })
    })?;
    let mut outs = outs.into_iter();
    let first = outs.next().ok_or_else(|| Error::Invalid("no ranks ran".into()))?;
    for (r, o) in outs.enumerate() {
        let same = o.output.shape == first.output.shape
            && o.output.values.iter().zip(&first.output.values).all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            return Err(Error::Invalid(format!("stage {stage}: rank {} computed other outputs than rank 0", r + 1)));
        }
    }
    Ok(first)
}

/// Runs a sharded checkpoint directory (`neuron_spec::checkpoint` layout, with `config.json`) stage by stage;
/// TP size and q/k/v layout come from each stage's metadata. Its adapters (`adapter_<name>/`) are loaded too,
/// all active (one stage only).
pub fn run_sharded_forward(dir: &Path, input_ids: &[Vec<i64>]) -> Result<ForwardOutput> {
    run_sharded_forward_with_adapters(dir, &[], input_ids)
}

/// [`run_sharded_forward`], plus adapters imported from HF PEFT directories (for the checkpoint's layout).
pub fn run_sharded_forward_with_adapters(
    dir: &Path,
    extra: &[ImportedAdapter],
    input_ids: &[Vec<i64>],
) -> Result<ForwardOutput> {
    let cfg = ModelConfig::read(&dir.join("config.json"))?;
    let pp = stage_count(dir)?;
    if pp > 1 && (!extra.is_empty() || !sharded_adapters(dir)?.is_empty()) {
        return Err(Error::Invalid(format!(
            "{}: adapters with pipeline stages (pp {pp}) are not implemented (reshard with --pp 1)",
            dir.display()
        )));
    }
    let mut data = StageData::Tokens(input_ids.to_vec());
    let mut hidden: Vec<Activations> = Vec::new();
    for stage in 0..pp {
        let run = run_stage(dir, &cfg, stage, &data, extra)?;
        // The embedding output and the first layer's: stage 0's first two.
        hidden.extend(run.hidden_states.into_iter().take(2usize.saturating_sub(hidden.len())));
        data = StageData::Hidden(run.output);
    }
    let StageData::Hidden(logits) = data else {
        return Err(Error::Invalid(format!("{}: no pipeline stage ran", dir.display())));
    };
    let mut hs = hidden.into_iter();
    let h0 = hs.next().ok_or_else(|| Error::Invalid("no hidden states".into()))?;
    Ok(ForwardOutput {
        logits: logits.values,
        logits_shape: logits.shape,
        hidden_0: h0.values,
        hidden_1: hs.next().map(|h| h.values),
        hidden_shape: h0.shape,
    })
}
