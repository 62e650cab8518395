//! The causal-LM training loss of the decoder (vocab-parallel: the logits are never gathered). The training
//! loop is the runtime's [`Train`](crate::runtime::Train) task.

use crate::model::LlamaForCausalLM;
use burn::tensor::{Int, Tensor, TensorData};
use neuron_spec::comm::Communicator;
use neuron_spec::train::vocab_parallel_causal_lm_loss;
use neuron_spec::{Error, Result};

impl LlamaForCausalLM {
    /// The mean next-token cross-entropy over `input_ids` (`[batch][seq]`), as transformers'
    /// `labels=input_ids`; vocab-parallel (the logits are never gathered), the same on every rank.
    pub fn causal_lm_loss<C: Communicator>(&self, input_ids: &[Vec<i64>], comm: &C) -> Result<Tensor<1>> {
        let b = input_ids.len();
        let s = input_ids.first().map_or(0, Vec::len);
        if b == 0 || s == 0 || input_ids.iter().any(|r| r.len() != s) {
            return Err(Error::InputData("a batch must hold equally long, non-empty sequences".into()));
        }
        let device = self.model.embed_tokens.weight.val().device();
        let vocab = self.model.embed_tokens.num_embeddings;
        if let Some(bad) = input_ids.iter().flatten().find(|t| **t < 0 || **t as usize >= vocab) {
            return Err(Error::InputData(format!("token id {bad} is outside the vocabulary [0, {vocab})")));
        }
        let flat: Vec<i64> = input_ids.iter().flatten().copied().collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, s]), &device);
        let (x, _) = self.final_hidden(ids, comm)?;
        let (logits, start) = match &self.lm_head {
            Some(h) => (h.forward_local(x, comm)?, comm.context().rank * h.local_out_features),
            None => (self.model.embed_tokens.attend_local(x, comm)?, self.model.embed_tokens.vocab_start()),
        };
        vocab_parallel_causal_lm_loss(self.scale_logits(logits), input_ids, start, vocab, comm)
    }
}
