//! Vocab-parallel embedding: the vocabulary rows are split across ranks (dim 0).

use super::{lazy_zeros, load_same, parallel_meta, pname, save_same};
use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::plan::split::per_partition_size;
use crate::spec::contract::{CustomModule, TpContext};
use crate::spec::metadata::ParameterMetadata;
use crate::spec::ModelWeightTransformationSpecs;
use crate::tensor::StateDict;
use crate::tensor::TensorSource;
use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor};
use indexmap::IndexMap;

/// How to build a [`ParallelEmbedding`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParallelEmbeddingConfig {
    /// Vocabulary size (unpadded).
    pub num_embeddings: usize,
    /// Embedding size.
    pub embedding_dim: usize,
}

impl ParallelEmbeddingConfig {
    /// A config.
    pub fn new(num_embeddings: usize, embedding_dim: usize) -> Self {
        Self { num_embeddings, embedding_dim }
    }

    /// The embedding of rank `tp.rank`, with a lazily allocated weight (to be loaded).
    pub fn init(&self, tp: TpContext, device: &Device) -> Result<ParallelEmbedding> {
        let tp = TpContext::new(tp.size, tp.rank)?;
        if self.num_embeddings == 0 || self.embedding_dim == 0 {
            return Err(Error::spec(
                "ParallelEmbedding",
                "num_embeddings",
                format!("sizes must be positive, got {} × {}", self.num_embeddings, self.embedding_dim),
            ));
        }
        let local = per_partition_size(self.num_embeddings, tp.size);
        Ok(ParallelEmbedding {
            weight: lazy_zeros([local, self.embedding_dim], device),
            tp,
            num_embeddings: self.num_embeddings,
            local_num_embeddings: local,
            embedding_dim: self.embedding_dim,
        })
    }
}

/// An embedding whose rank `r` holds vocabulary rows `[r·n, (r+1)·n)` with `n = ceil(vocab / tp)`; rows
/// past the vocabulary are zero padding.
#[derive(Module, Debug)]
pub struct ParallelEmbedding {
    /// The local rows, `[n, embedding_dim]` (same orientation as HF).
    pub weight: Param<Tensor<2>>,
    /// TP size and rank.
    #[module(skip)]
    pub tp: TpContext,
    /// Vocabulary size, unpadded.
    #[module(skip)]
    pub num_embeddings: usize,
    /// Rows per rank.
    #[module(skip)]
    pub local_num_embeddings: usize,
    /// Embedding size.
    #[module(skip)]
    pub embedding_dim: usize,
}

impl ParallelEmbedding {
    /// The first vocabulary id this rank holds.
    pub fn vocab_start(&self) -> usize {
        self.tp.rank * self.local_num_embeddings
    }

    /// `[batch, seq]` ids → `[batch, seq, dim]`: each rank looks up the ids it holds, zeroes the others,
    /// and the all-reduce adds the ranks' rows. Ids outside the vocabulary are an error.
    pub fn forward<C: Communicator>(&self, ids: Tensor<2, Int>, comm: &C) -> Result<Tensor<3>> {
        let [b, s] = ids.dims();
        if b * s == 0 {
            return Ok(Tensor::zeros([b, s, self.embedding_dim], &ids.device()));
        }
        let (lo, hi) = super::int_range(&ids)?;
        if lo < 0 || hi >= self.num_embeddings as i64 {
            let bad = if lo < 0 { lo } else { hi };
            return Err(Error::InputData(format!(
                "token id {bad} is outside the vocabulary [0, {})",
                self.num_embeddings
            )));
        }
        let start = self.vocab_start() as i64;
        let end = start + self.local_num_embeddings as i64;
        let outside = ids.clone().lower_scalar(start).bool_or(ids.clone().greater_equal_scalar(end));
        let local = (ids - start).mask_fill(outside.clone(), 0);
        let rows = self.weight.val().select(0, local.reshape([b * s]));
        let rows = rows.reshape([b, s, self.embedding_dim]);
        let mask = outside.unsqueeze_dim::<3>(2).expand([b, s, self.embedding_dim]);
        crate::comm::reduce_from_tp_region(rows.mask_fill(mask, 0.0), comm)
    }

    /// The tied lm_head's local logits `x·E_localᵀ` (`[.., n]`, padding rows included), not gathered; the
    /// replicated input passes [`copy_to_tp_region`](crate::comm::copy_to_tp_region).
    pub fn attend_local<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        super::check_last_dim(&x, self.embedding_dim, "tied lm_head input")?;
        let x = crate::comm::copy_to_tp_region(x, comm)?;
        Ok(super::linear(x, self.weight.val().transpose(), None, self.tp.size))
    }

    /// The tied lm_head: `x·Eᵀ` over the local rows, gathered over ranks and truncated to the vocabulary.
    pub fn attend<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        super::check_last_dim(&x, self.embedding_dim, "tied lm_head input")?;
        let logits = super::linear(x, self.weight.val().transpose(), None, self.tp.size);
        let logits = comm.all_gather(logits, 2)?;
        let n = logits.dims()[2];
        Ok(if n > self.num_embeddings { logits.narrow(2, 0, self.num_embeddings) } else { logits })
    }
}

impl CustomModule for ParallelEmbedding {
    fn collect_specs(&self, _prefix: &str, _out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        Ok(())
    }

    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        out.insert(
            pname(prefix, "weight"),
            parallel_meta(0, 1, self.tp.size, vec![self.num_embeddings, self.embedding_dim]),
        );
        Ok(())
    }

    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        out.push(self.tp);
    }

    fn load_rank_tensors(mut self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        self.weight = load_same(
            src,
            &pname(prefix, "weight"),
            &self.weight,
            [self.local_num_embeddings, self.embedding_dim],
            device,
        )?;
        Ok(self)
    }

    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        save_same(&self.weight, &pname(prefix, "weight"), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::LocalCommunicator;
    use crate::layers::tensor_to_f32;
    use crate::tensor::HostTensor;
    use burn::tensor::TensorData;

    #[test]
    fn padded_vocab_lookup_and_tied_logits_over_two_ranks() {
        // Vocab 5, dim 2: row v is (v, 10 v). Rank 0 holds ids 0..3, rank 1 ids 3..5 and one zero row.
        let full: Vec<f32> = (0..5).flat_map(|v| [v as f32, 10.0 * v as f32]).collect();
        let full = HostTensor::from_f32(vec![5, 2], &full).unwrap();
        let comms = LocalCommunicator::group(2).unwrap();
        let outs: Vec<(Vec<f32>, Vec<usize>, Vec<f32>)> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .into_iter()
                .map(|c| {
                    let full = full.clone();
                    s.spawn(move || {
                        let d = Device::default();
                        let emb = ParallelEmbeddingConfig::new(5, 2).init(c.context(), &d).unwrap();
                        let mut src = StateDict::new();
                        let local =
                            crate::plan::split::create_local_weight_with_padding(&full, 0, 1, 2, c.context().rank)
                                .unwrap();
                        src.insert("e.weight".into(), local);
                        let emb = emb.load_rank_tensors("e", &src, &d).unwrap();
                        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![4i64, 0, 3, 2], [1, 4]), &d);
                        let (_, rows) = tensor_to_f32(emb.forward(ids, &c).unwrap(), "rows").unwrap();
                        let x = Tensor::<3>::from_data(TensorData::new(vec![1f32, 0.0], [1, 1, 2]), &d);
                        let (shape, logits) = tensor_to_f32(emb.attend(x, &c).unwrap(), "logits").unwrap();
                        let bad = Tensor::<2, Int>::from_data(TensorData::new(vec![5i64], [1, 1]), &d);
                        assert!(emb.forward(bad, &c).is_err());
                        (rows, shape, logits)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rows, shape, logits) in outs {
            assert_eq!(rows, vec![4., 40., 0., 0., 3., 30., 2., 20.]);
            // x·Eᵀ with x = (1, 0) is the first column; the padding row is cut off.
            assert_eq!(shape, vec![1, 1, 5]);
            assert_eq!(logits, vec![0., 1., 2., 3., 4.]);
        }
    }
}
