//! One pipeline stage of the decoder at one TP rank: only the parts `neuron_spec::spec::pipeline::StageAssignment`
//! gives the stage. Stage 0 holds `model.embed_tokens` and runs token ids; every stage holds its decoder
//! layers under their global names (`model.layers.<i>`); the last holds `model.norm` and `lm_head`, or, with
//! tied embeddings, its own copy of `model.embed_tokens` for the output projection. Between stages the
//! residual stream `[batch, seq, hidden]` travels as a plain value ([`StageInput`] / [`StageOutput`]), so the
//! forward pass of a stage is an ordinary burn computation (differentiable, for training per stage).

use crate::config::ModelConfig;
use crate::model::{check_seq, embed, run_layers, Builder, DecoderOptions, LlamaDecoderLayer, QkvLayout};
use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::{Device, Int, Tensor};
use neuron_spec::comm::Communicator;
use neuron_spec::layers::{ColumnParallelLinear, ParallelEmbedding};
use neuron_spec::spec::contract::TpContext;
use neuron_spec::spec::pipeline::StageAssignment;
use neuron_spec::{CustomModule, Error, Result};
use std::ops::Range;

/// What a stage consumes.
#[derive(Debug, Clone)]
pub enum StageInput {
    /// `[batch, seq]` token ids (the first stage).
    Tokens(Tensor<2, Int>),
    /// The residual stream `[batch, seq, hidden]` the previous stage handed over.
    Hidden(Tensor<3>),
}

/// What a stage produces.
#[derive(Debug, Clone)]
pub struct StageOutput {
    /// The residual stream `[batch, seq, hidden]` for the next stage, or, from the last stage, the gathered
    /// logits `[batch, seq, vocab]`.
    pub output: Tensor<3>,
    /// The residual stream inside this stage: on the first stage the embedding output first, then the raw
    /// output of each of its decoder layers.
    pub hidden_states: Vec<Tensor<3>>,
}

/// A stage of `LlamaForCausalLM` at one TP rank. HF names: each part under its name in the whole model.
#[derive(Module, CustomModule, Debug)]
pub struct LlamaStage {
    /// `model.embed_tokens`: on the first stage (the input), and on the last when tied (the output).
    #[hf(rename = "model.embed_tokens")]
    pub embed_tokens: Option<ParallelEmbedding>,
    /// This stage's decoder layers, `model.layers.<first_layer + i>`.
    #[hf(rename = "model.layers", index_offset = first_layer)]
    pub layers: Vec<LlamaDecoderLayer>,
    /// `model.norm` (the last stage).
    #[hf(rename = "model.norm")]
    pub norm: Option<RmsNorm>,
    /// `lm_head` (the last stage, untied).
    pub lm_head: Option<ColumnParallelLinear>,
    /// The global index of `layers[0]`.
    #[module(skip)]
    pub first_layer: usize,
    /// Whether this stage is the first (takes token ids) and whether it is the last (gives logits).
    #[module(skip)]
    pub ends: (bool, bool),
    /// Forward-pass constants.
    #[module(skip)]
    pub options: DecoderOptions,
}

impl LlamaStage {
    /// Stage `stage` of `assignment` for the model of `cfg` at rank `tp.rank`, weights lazily allocated.
    pub fn from_config(
        cfg: &ModelConfig,
        assignment: &StageAssignment,
        stage: usize,
        tp: TpContext,
        qkv: QkvLayout,
        device: &Device,
    ) -> Result<Self> {
        if assignment.num_layers() != cfg.llama.num_hidden_layers {
            return Err(Error::Stage(format!(
                "the stage assignment covers {} decoder layers, the config has {}",
                assignment.num_layers(),
                cfg.llama.num_hidden_layers
            )));
        }
        let range: Range<usize> = assignment
            .layers
            .get(stage)
            .cloned()
            .ok_or_else(|| Error::Stage(format!("no pipeline stage {stage} (pp is {})", assignment.pp())))?;
        let (first, last) = (stage == 0, stage + 1 == assignment.pp());
        let b = Builder::new(cfg, tp, qkv, device)?;
        let tied = b.tied();
        Ok(Self {
            embed_tokens: (first || (last && tied)).then(|| b.embedding()).transpose()?,
            first_layer: range.start,
            layers: range.map(|l| b.layer(l)).collect::<Result<_>>()?,
            norm: last.then(|| b.final_norm()),
            lm_head: if last { b.lm_head()? } else { None },
            ends: (first, last),
            options: b.options()?,
        })
    }

    /// Runs the stage on the same input at every rank of its TP group (each with its own communicator).
    pub fn forward<C: Communicator>(&self, input: StageInput, comm: &C) -> Result<StageOutput> {
        let (first, last) = self.ends;
        let o = &self.options;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        let x = match (input, &self.embed_tokens) {
            (StageInput::Tokens(ids), Some(emb)) if first => {
                check_seq(ids.dims()[1], o)?;
                let x = embed(emb, ids, o, comm)?;
                hidden_states.push(x.clone());
                x
            }
            (StageInput::Hidden(x), _) if !first => x,
            (StageInput::Tokens(_), _) => {
                return Err(Error::Stage(format!(
                    "pipeline stage starting at layer {} takes hidden states, not token ids",
                    self.first_layer
                )))
            }
            (StageInput::Hidden(_), _) => {
                return Err(Error::Stage("the first pipeline stage takes token ids, not hidden states".into()))
            }
        };
        let x = run_layers(&self.layers, x, o, comm, &mut hidden_states)?;
        if !last {
            return Ok(StageOutput { output: x, hidden_states });
        }
        let norm = self.norm.as_ref().ok_or_else(|| Error::Stage("the last stage has no model.norm".into()))?;
        let x = o.norm(norm, x);
        let logits = match (&self.lm_head, &self.embed_tokens) {
            (Some(head), _) => head.forward(x, comm)?,
            (None, Some(emb)) => emb.attend(x, comm)?,
            (None, None) => return Err(Error::Stage("the last stage has neither lm_head nor embed_tokens".into())),
        };
        Ok(StageOutput { output: o.finish_logits(logits), hidden_states })
    }
}
