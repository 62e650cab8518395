//! The Qwen3-MoE family (`model_type` qwen3_moe): Qwen3's attention (q_norm / k_norm) and, on sparse layers,
//! a router plus experts instead of the MLP.
//!
//! - `mlp.gate` (the router, `[num_experts, hidden]`) is a replicated burn `Linear`;
//! - each of `mlp.experts.N` is a SwiGLU MLP whose gate_proj / up_proj are fused into one column-parallel
//!   layer and whose down_proj is row-parallel (TP inside every expert);
//! - routing as transformers 4.57's `Qwen3MoeSparseMoeBlock`: softmax of the router logits in f32, top
//!   `num_experts_per_tok`, renormalised when `norm_topk_prob`, experts' outputs weighted and summed in
//!   expert order;
//! - layer `i` is sparse when `i` is not in `mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`.

use crate::config::{Family, ModelConfig, MoeConfig, Variants};
use crate::mlp::LlamaMlp;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};
use neuron_spec::layers::Communicator;
use neuron_spec::{CustomModule, Error, Result};
use serde_json::Value;
use std::path::Path;

/// The fields a Qwen3-MoE config may hold beyond `FIELDS_ANY_FAMILY`.
pub const QWEN3_MOE_FIELDS: &[&str] = &[
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "decoder_sparse_step",
    "moe_intermediate_size",
    "num_experts",
    "num_experts_per_tok",
    "norm_topk_prob",
    "mlp_only_layers",
    // training-only: the auxiliary load-balancing loss
    "output_router_logits",
    "router_aux_loss_coef",
];

/// Qwen3-MoE: Qwen3's attention, and sparse blocks on the layers its config says.
pub const QWEN3_MOE: Family = Family {
    model_type: "qwen3_moe",
    fields: QWEN3_MOE_FIELDS,
    variants: Variants { head_norms: true, ..Variants::LLAMA },
    read: |v, path, cfg: &mut ModelConfig| {
        cfg.moe = Some(MoeConfig::read(v, path, cfg.llama.num_hidden_layers)?);
        Ok(())
    },
};

/// The largest expert count accepted (the layout lists every expert's parameters).
pub const MAX_EXPERTS: usize = 1 << 12;

impl MoeConfig {
    /// Reads the MoE fields (Qwen3MoeConfig's defaults where absent).
    pub fn read(v: &Value, path: &Path, layers: usize) -> Result<Self> {
        let file = path.display().to_string();
        let bad = |k: &str, r: String| Error::spec(&file, k, r);
        let int = |k: &str, default: u64| -> Result<usize> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default as usize),
                Some(x) => {
                    x.as_u64().map(|n| n as usize).ok_or_else(|| bad(k, format!("must be an integer, found {x}")))
                }
            }
        };
        let num_experts = int("num_experts", 128)?;
        let k = int("num_experts_per_tok", 8)?;
        let moe_i = int("moe_intermediate_size", 768)?;
        let step = int("decoder_sparse_step", 1)?;
        if num_experts > MAX_EXPERTS {
            return Err(bad("num_experts", format!("{num_experts} is above the supported maximum {MAX_EXPERTS}")));
        }
        if num_experts > 0 && (k == 0 || k > num_experts) {
            return Err(bad("num_experts_per_tok", format!("{k} must be in 1..={num_experts}")));
        }
        if num_experts > 0 && moe_i == 0 {
            return Err(bad("moe_intermediate_size", "must be positive".into()));
        }
        if step == 0 {
            return Err(bad("decoder_sparse_step", "must be positive".into()));
        }
        let norm_topk_prob = match v.get("norm_topk_prob") {
            None | Some(Value::Null) => false,
            Some(x) => x.as_bool().ok_or_else(|| bad("norm_topk_prob", format!("must be a boolean, found {x}")))?,
        };
        let only: Vec<usize> = match v.get("mlp_only_layers") {
            None | Some(Value::Null) => vec![],
            Some(x) => x
                .as_array()
                .and_then(|a| a.iter().map(|i| i.as_u64().map(|i| i as usize)).collect::<Option<Vec<_>>>())
                .ok_or_else(|| bad("mlp_only_layers", format!("must be a list of layer indices, found {x}")))?,
        };
        let sparse_layers = (0..layers).map(|i| !only.contains(&i) && num_experts > 0 && (i + 1) % step == 0).collect();
        Ok(Self { num_experts, num_experts_per_tok: k, moe_intermediate_size: moe_i, norm_topk_prob, sparse_layers })
    }
}

/// A sparse MoE block: router and experts.
#[derive(Module, CustomModule, Debug)]
pub struct Qwen3MoeSparseMoeBlock {
    /// The router, replicated: `[hidden] → [num_experts]` logits.
    pub gate: Linear,
    /// The experts (`mlp.experts.0`, ...), each TP-split like a dense MLP.
    pub experts: Vec<LlamaMlp>,
    /// Experts per token.
    #[module(skip)]
    pub top_k: usize,
    /// Renormalise the top-k weights.
    #[module(skip)]
    pub norm_topk_prob: bool,
}

impl Qwen3MoeSparseMoeBlock {
    /// `[batch, seq, hidden]` → the weighted sum of each token's top-k experts.
    pub fn forward<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        let [b, s, h] = x.dims();
        let e = self.experts.len();
        let n = b * s;
        let flat = x.reshape([n, h]);
        let probs = softmax(self.gate.forward(flat.clone()), 1);
        let probs: Vec<f32> = probs
            .try_into_data()
            .map_err(|e| Error::Invalid(format!("router probabilities: {e:?}")))?
            .try_into_vec::<f32>()
            .map_err(|e| Error::Invalid(format!("router probabilities: {e:?}")))?;
        if probs.len() != n * e || self.top_k == 0 || self.top_k > e {
            return Err(Error::Invalid(format!(
                "router: {} probabilities for {n} tokens, {e} experts, top {}",
                probs.len(),
                self.top_k
            )));
        }
        // Dense routing weights [n, e]: zero where an expert is not among a token's top k.
        let mut weights = vec![0f32; n * e];
        for (t, row) in probs.chunks(e).enumerate() {
            let mut order: Vec<usize> = (0..e).collect();
            // torch.topk: the largest first (ties: the lower index).
            order.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
            let top = &order[..self.top_k];
            let sum: f32 = top.iter().map(|i| row[*i]).sum();
            for &i in top {
                weights[t * e + i] = if self.norm_topk_prob { row[i] / sum } else { row[i] };
            }
        }
        let device = flat.device();
        let weights: Tensor<2> = Tensor::from_data(TensorData::new(weights, [n, e]), &device);
        let mut out: Tensor<2> = Tensor::zeros([n, h], &device);
        for (i, expert) in self.experts.iter().enumerate() {
            let y: Tensor<2> = expert.forward(flat.clone().unsqueeze_dim::<3>(0), comm)?.reshape([n, h]);
            out = out + y * weights.clone().narrow(1, i, 1);
        }
        Ok(out.reshape([b, s, h]))
    }
}
