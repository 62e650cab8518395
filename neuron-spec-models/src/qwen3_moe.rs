//! The Qwen3-MoE family (`model_type` qwen3_moe): Qwen3's attention (q_norm / k_norm) and, on sparse layers,
//! a router plus experts instead of the MLP.
//!
//! - `mlp.gate` (the router, `[num_experts, hidden]`) is a replicated burn `Linear`;
//! - each of `mlp.experts.N` is a SwiGLU MLP whose gate_proj / up_proj are fused into one column-parallel
//!   layer and whose down_proj is row-parallel (TP inside every expert);
//! - routing as transformers 4.57's `Qwen3MoeSparseMoeBlock`: softmax of the router logits in f32, top
//!   `num_experts_per_tok`, renormalised when `norm_topk_prob`, experts' outputs weighted and summed in
//!   expert order; the top-k selection is made on the host, the weights are the selected probabilities in the
//!   autodiff graph (so training reaches the router), and each expert runs on its own tokens only;
//! - layer `i` is sparse when `i` is not in `mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`.

use crate::config::{Family, ModelConfig, MoeConfig, Variants};
use crate::mlp::LlamaMlp;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use neuron_spec::comm::Communicator;
use neuron_spec::{CustomModule, Error, Result};
use serde_json::Value;
use std::path::Path;

/// The keys of transformers' read set a Qwen3-MoE config may set beyond `IMPLEMENTED_ANY_FAMILY`
/// (`output_router_logits` only at false: see `config_fields`).
pub const QWEN3_MOE_FIELDS: &[&str] = &[
    "decoder_sparse_step",
    "moe_intermediate_size",
    "num_experts",
    "num_experts_per_tok",
    "norm_topk_prob",
    "mlp_only_layers",
    // the weight of the load-balancing loss, only added with output_router_logits (refused when true)
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
    ///
    /// The top-k *selection* is made on the host from the router probabilities (indices carry no gradient,
    /// in torch either); the routing *weights* are the selected probabilities taken from the graph (masked,
    /// renormalised when `norm_topk_prob`), so the loss's gradient reaches the router. As in transformers,
    /// each expert runs on the tokens routed to it only, and an expert no token picked is not called: its
    /// parameters get no gradient (and AdamW skips them, as torch's does).
    pub fn forward<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        let experts = |i: usize, xi: Tensor<3>| self.experts[i].forward(xi, comm);
        route(&self.gate, self.experts.len(), self.top_k, self.norm_topk_prob, x, experts)
    }
}

/// The routing of a sparse block (Qwen3-MoE's, Mixtral's): `[batch, seq, hidden]` → the weighted sum of each
/// token's top-k experts, `expert(i, x)` running expert `i` on `[1, tokens, hidden]`. The router `gate` gives
/// `e` logits per token; softmax, top `top_k` (on the host), renormalised when `renormalise`; see
/// [`Qwen3MoeSparseMoeBlock::forward`].
pub(crate) fn route(
    gate: &Linear,
    e: usize,
    top_k: usize,
    renormalise: bool,
    x: Tensor<3>,
    expert: impl Fn(usize, Tensor<3>) -> Result<Tensor<3>>,
) -> Result<Tensor<3>> {
    let [b, s, h] = x.dims();
    let n = b * s;
    let flat = x.reshape([n, h]);
    let probs = softmax(gate.forward(flat.clone()), 1);
    let host: Vec<f32> = probs
        .clone()
        .detach()
        .try_into_data()
        .map_err(|e| Error::Tensor(format!("router probabilities: {e:?}")))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Tensor(format!("router probabilities: {e:?}")))?;
    if host.len() != n * e || top_k == 0 || top_k > e {
        return Err(Error::Tensor(format!(
            "router: {} probabilities for {n} tokens, {e} experts, top {top_k}",
            host.len()
        )));
    }
    let (mask, routed) = top_k_routing(&host, e, top_k);
    let device = flat.device();
    // The selected probabilities, in the graph (zero where an expert is not among a token's top k).
    let mask: Tensor<2> = Tensor::from_data(TensorData::new(mask, [n, e]), &device);
    let selected = probs * mask;
    let weights = if renormalise { selected.clone() / selected.sum_dim(1) } else { selected };
    let mut out: Tensor<2> = Tensor::zeros([n, h], &device);
    for (i, tokens) in routed.into_iter().enumerate() {
        if tokens.is_empty() {
            continue;
        }
        let m = tokens.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(tokens, [m]), &device);
        let xi = flat.clone().select(0, idx.clone()).unsqueeze_dim::<3>(0);
        let y: Tensor<2> = expert(i, xi)?.reshape([m, h]);
        let w = weights.clone().narrow(1, i, 1).select(0, idx.clone());
        out = out.select_assign(0, idx, y * w, IndexingUpdateOp::Add);
    }
    Ok(out.reshape([b, s, h]))
}

/// torch.topk over each token's `e` probabilities (the largest first; ties: the lower index): a 0/1 mask
/// `[n, e]` of the selection, and for each expert the tokens that picked it, in token order.
fn top_k_routing(probs: &[f32], e: usize, k: usize) -> (Vec<f32>, Vec<Vec<i64>>) {
    let mut mask = vec![0f32; probs.len()];
    let mut routed = vec![Vec::new(); e];
    for (t, row) in probs.chunks(e).enumerate() {
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
        for &i in &order[..k] {
            mask[t * e + i] = 1.0;
        }
    }
    for (t, row) in mask.chunks(e).enumerate() {
        for (i, &m) in row.iter().enumerate() {
            if m != 0.0 {
                routed[i].push(t as i64);
            }
        }
    }
    (mask, routed)
}
