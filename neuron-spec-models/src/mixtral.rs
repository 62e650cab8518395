//! The Mixtral family (`model_type` mixtral): Mistral's attention (its `sliding_window` always applied: a longer
//! sequence is refused, not windowed) and, on every layer, a sparse block `block_sparse_moe` instead of the MLP:
//!
//! - `block_sparse_moe.gate` (the router, `[num_local_experts, hidden]`) is a replicated burn `Linear`;
//! - each of `block_sparse_moe.experts.N` is a SwiGLU MLP `w2(silu(w1(x)) · w3(x))`: w1 / w3 fused into one
//!   column-parallel layer, w2 row-parallel (TP inside every expert), of size `intermediate_size`;
//! - routing as transformers 4.57's `MixtralSparseMoeBlock`: Qwen3-MoE's ([`crate::qwen3_moe`]) with the
//!   top-k weights always renormalised;
//! - `router_jitter_noise` (training-time noise on the router's input) is refused above 0.

use crate::config::{Family, ModelConfig, MoeConfig, Variants};
use crate::mlp::{swiglu, LlamaMlp};
use crate::qwen3_moe::{route, MAX_EXPERTS};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use neuron_spec::comm::Communicator;
use neuron_spec::layers::{ColumnParallelLinear, RowParallelLinear};
use neuron_spec::{CustomModule, Error, Result};
use serde_json::Value;

/// The keys of transformers' read set a Mixtral config may set beyond `IMPLEMENTED_ANY_FAMILY`
/// (`output_router_logits` only at false: see `config_fields`).
pub const MIXTRAL_FIELDS: &[&str] = &[
    "num_local_experts",
    "num_experts_per_tok",
    // read below: only 0 is accepted
    "router_jitter_noise",
    // the weight of the load-balancing loss, only added with output_router_logits (refused when true)
    "router_aux_loss_coef",
];

/// Mixtral: Mistral's attention and a sparse block on every layer.
pub const MIXTRAL: Family = Family {
    model_type: "mixtral",
    fields: MIXTRAL_FIELDS,
    variants: Variants { sliding_window_by_default: true, block_sparse_moe: true, ..Variants::LLAMA },
    read: |v, path, cfg: &mut ModelConfig| {
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
        let (num_experts, k) = (int("num_local_experts", 8)?, int("num_experts_per_tok", 2)?);
        if num_experts == 0 || num_experts > MAX_EXPERTS {
            return Err(bad("num_local_experts", format!("{num_experts} must be in 1..={MAX_EXPERTS}")));
        }
        if k == 0 || k > num_experts {
            return Err(bad("num_experts_per_tok", format!("{k} must be in 1..={num_experts}")));
        }
        match v.get("router_jitter_noise") {
            None | Some(Value::Null) => {}
            Some(x) if x.as_f64() == Some(0.0) => {}
            Some(x) => {
                return Err(bad(
                    "router_jitter_noise",
                    format!("{x}: the router's training-time input noise is not implemented (only 0 is accepted)"),
                ))
            }
        }
        cfg.moe = Some(MoeConfig {
            num_experts,
            num_experts_per_tok: k,
            moe_intermediate_size: cfg.llama.intermediate_size,
            norm_topk_prob: true,
            sparse_layers: vec![true; cfg.llama.num_hidden_layers],
        });
        Ok(())
    },
};

/// One expert: `w2(silu(w1(x)) · w3(x))`.
#[derive(Module, CustomModule, Debug)]
pub struct MixtralExpert {
    /// `[w1_local | w3_local]` outputs.
    #[fused_linears(w1, w3)]
    pub gate_up_proj: ColumnParallelLinear,
    /// Row-parallel down projection.
    pub w2: RowParallelLinear,
}

/// Mixtral's sparse block (`block_sparse_moe`): router and experts.
#[derive(Module, CustomModule, Debug)]
pub struct MixtralSparseMoeBlock {
    /// The router, replicated: `[hidden] → [num_local_experts]` logits.
    pub gate: Linear,
    /// The experts (`block_sparse_moe.experts.0`, ...), each TP-split like a dense MLP.
    pub experts: Vec<MixtralExpert>,
    /// Experts per token.
    #[module(skip)]
    pub top_k: usize,
}

impl MixtralSparseMoeBlock {
    /// The block of a router and dense MLPs of the expert size (the same layers under Mixtral's names).
    pub fn new(gate: Linear, experts: Vec<LlamaMlp>, top_k: usize) -> Self {
        let experts = experts.into_iter().map(|m| MixtralExpert { gate_up_proj: m.gate_up_proj, w2: m.down_proj });
        Self { gate, experts: experts.collect(), top_k }
    }

    /// `[batch, seq, hidden]` → the weighted sum of each token's top-k experts, the weights renormalised over
    /// the selected experts (routing and gradients as [`crate::Qwen3MoeSparseMoeBlock::forward`]).
    pub fn forward<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        let experts = |i: usize, xi: Tensor<3>| {
            let e = &self.experts[i];
            swiglu(&e.gate_up_proj, &e.w2, xi, comm)
        };
        route(&self.gate, self.experts.len(), self.top_k, true, x, experts)
    }
}
