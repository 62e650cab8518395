//! GQA q/k/v projection, column-parallel by heads, with kv heads tiled so that every rank holds one
//! (optimum-neuron's `GQAQKVColumnParallelLinear`).

use super::{
    check_last_dim, lazy_zeros, load_linear_weight, load_same, parallel_meta, pname, replicated_meta,
    save_linear_weight, save_same,
};
use crate::error::{Error, Result};
use crate::spec::contract::{CustomModule, GqaQkvLayer, TpContext};
use crate::spec::metadata::ParameterMetadata;
use crate::spec::{GqaQkvColumnParallelLinearSpec, ModelWeightTransformationSpecs, Spec};
use crate::tensor::StateDict;
use crate::tensor::TensorSource;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use indexmap::IndexMap;

/// How to build a [`GqaQkvColumnParallelLinear`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GqaQkvColumnParallelLinearConfig {
    /// Input features.
    pub hidden_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// kv heads of the HF model.
    pub num_key_value_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// How many times the kv heads are tiled; `None`: the reference's `max(1, tp / kv_heads)`.
    pub kv_size_multiplier: Option<usize>,
    /// One `weight_qkv` tensor, or `weight_q`/`weight_k`/`weight_v`.
    pub fuse_qkv: bool,
    /// Whether q, k and v have biases.
    pub qkv_bias: bool,
    /// Whether the sibling output projection has a bias: the spec moves o_proj too, so it records this.
    pub o_bias: bool,
}

impl GqaQkvColumnParallelLinearConfig {
    /// An unfused config without biases and with the default kv multiplier.
    pub fn new(hidden_size: usize, num_attention_heads: usize, num_key_value_heads: usize, head_dim: usize) -> Self {
        Self {
            hidden_size,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            kv_size_multiplier: None,
            fuse_qkv: false,
            qkv_bias: false,
            o_bias: false,
        }
    }

    /// Fused or separate q/k/v tensors.
    pub fn with_fuse_qkv(mut self, fuse: bool) -> Self {
        self.fuse_qkv = fuse;
        self
    }

    /// q/k/v biases and the output projection's bias.
    pub fn with_biases(mut self, qkv_bias: bool, o_bias: bool) -> Self {
        self.qkv_bias = qkv_bias;
        self.o_bias = o_bias;
        self
    }

    /// An explicit kv multiplier.
    pub fn with_kv_size_multiplier(mut self, m: usize) -> Self {
        self.kv_size_multiplier = Some(m);
        self
    }

    /// The layer of rank `tp.rank`, with lazily allocated parameters; the head layout is validated
    /// against `tp` here.
    pub fn init(&self, tp: TpContext, device: &Device) -> Result<GqaQkvColumnParallelLinear> {
        let tp = TpContext::new(tp.size, tp.rank)?;
        if self.hidden_size == 0 || self.head_dim == 0 {
            return Err(Error::spec(
                GqaQkvColumnParallelLinearSpec::CLASS_NAME,
                "head_dim",
                format!("sizes must be positive, got hidden {} head_dim {}", self.hidden_size, self.head_dim),
            ));
        }
        let m = match self.kv_size_multiplier {
            Some(m) => m,
            // The reference's default, `max(1, tp / kv_heads)`, as the spec computes it.
            None => {
                GqaQkvColumnParallelLinearSpec::new(
                    self.num_attention_heads,
                    self.num_key_value_heads,
                    self.head_dim,
                    self.fuse_qkv,
                    self.qkv_bias,
                    self.o_bias,
                    tp.size,
                )?
                .kv_size_multiplier
            }
        };
        let mut layer = GqaQkvColumnParallelLinear {
            weight_qkv: None,
            weight_q: None,
            weight_k: None,
            weight_v: None,
            bias_qkv: None,
            bias_q: None,
            bias_k: None,
            bias_v: None,
            lora: Vec::new(),
            tp,
            hidden_size: self.hidden_size,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            kv_size_multiplier: m,
            fuse_qkv: self.fuse_qkv,
            o_bias: self.o_bias,
        };
        // The spec's validation is the one source of truth for which head layouts work at this tp.
        layer.spec("qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj")?;
        let (q, kv, h) = (layer.q_local(), layer.kv_local(), self.hidden_size);
        if self.fuse_qkv {
            layer.weight_qkv = Some(lazy_zeros([h, q + 2 * kv], device));
            layer.bias_qkv = self.qkv_bias.then(|| lazy_zeros([q + 2 * kv], device));
        } else {
            layer.weight_q = Some(lazy_zeros([h, q], device));
            layer.weight_k = Some(lazy_zeros([h, kv], device));
            layer.weight_v = Some(lazy_zeros([h, kv], device));
            if self.qkv_bias {
                layer.bias_q = Some(lazy_zeros([q], device));
                layer.bias_k = Some(lazy_zeros([kv], device));
                layer.bias_v = Some(lazy_zeros([kv], device));
            }
        }
        Ok(layer)
    }
}

/// This rank's query, key and value projections, each `[batch, seq, heads_local · head_dim]`.
#[derive(Debug, Clone)]
pub struct QkvOutput {
    /// Queries of the heads `compute_query_indices_for_rank` gives, in that order.
    pub q: Tensor<3>,
    /// Keys of this rank's kv heads (slots of the tiled list).
    pub k: Tensor<3>,
    /// Values of this rank's kv heads.
    pub v: Tensor<3>,
}

/// GQA q/k/v projection. Parameters are named as the reference's rank tensors (`weight_qkv`, or `weight_q`,
/// `weight_k`, `weight_v`; biases alike); burn holds them as `[in, out_local]`.
#[derive(Module, Debug)]
pub struct GqaQkvColumnParallelLinear {
    /// Fused `[hidden, q + 2·kv]` weight (fuse_qkv).
    pub weight_qkv: Option<Param<Tensor<2>>>,
    /// Query weight `[hidden, q_local]` (unfused).
    pub weight_q: Option<Param<Tensor<2>>>,
    /// Key weight `[hidden, kv_local]` (unfused).
    pub weight_k: Option<Param<Tensor<2>>>,
    /// Value weight `[hidden, kv_local]` (unfused).
    pub weight_v: Option<Param<Tensor<2>>>,
    /// Fused bias.
    pub bias_qkv: Option<Param<Tensor<1>>>,
    /// Query bias.
    pub bias_q: Option<Param<Tensor<1>>>,
    /// Key bias.
    pub bias_k: Option<Param<Tensor<1>>>,
    /// Value bias.
    pub bias_v: Option<Param<Tensor<1>>>,
    /// LoRA adapters (A replicated, B rows laid out like the weights), attached by `load_rank_tensors`.
    pub lora: Vec<super::GqaLoraBranch>,
    /// TP size and rank.
    #[module(skip)]
    pub tp: TpContext,
    /// Input features.
    #[module(skip)]
    pub hidden_size: usize,
    /// Query heads (global).
    #[module(skip)]
    pub num_attention_heads: usize,
    /// kv heads of the HF model.
    #[module(skip)]
    pub num_key_value_heads: usize,
    /// Head size.
    #[module(skip)]
    pub head_dim: usize,
    /// kv tiling factor.
    #[module(skip)]
    pub kv_size_multiplier: usize,
    /// Fused layout.
    #[module(skip)]
    pub fuse_qkv: bool,
    /// Whether the sibling output projection has a bias.
    #[module(skip)]
    pub o_bias: bool,
}

impl GqaQkvColumnParallelLinear {
    /// Query features per rank.
    pub fn q_local(&self) -> usize {
        self.num_attention_heads * self.head_dim / self.tp.size
    }

    /// Key (and value) features per rank.
    pub fn kv_local(&self) -> usize {
        self.num_key_value_heads * self.head_dim * self.kv_size_multiplier / self.tp.size
    }

    /// Query heads per rank.
    pub fn local_heads(&self) -> usize {
        self.num_attention_heads / self.tp.size
    }

    /// kv heads per rank.
    pub fn local_kv_heads(&self) -> usize {
        self.num_key_value_heads * self.kv_size_multiplier / self.tp.size
    }

    /// Whether q/k/v have biases.
    pub fn has_qkv_bias(&self) -> bool {
        self.bias_qkv.is_some() || self.bias_q.is_some()
    }

    fn spec(&self, name: &str, q: &str, k: &str, v: &str, o: &str) -> Result<GqaQkvColumnParallelLinearSpec> {
        let qkv_bias = self.has_qkv_bias();
        let s = GqaQkvColumnParallelLinearSpec {
            gqa_qkv_projection_name: name.to_string(),
            query_projection_name: q.to_string(),
            key_projection_name: k.to_string(),
            value_projection_name: v.to_string(),
            output_projection_name: o.to_string(),
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            kv_size_multiplier: self.kv_size_multiplier,
            q_output_size_per_partition: self.q_local(),
            kv_output_size_per_partition: self.kv_local(),
            fuse_qkv: self.fuse_qkv,
            bias: qkv_bias && self.o_bias,
            tp_size: self.tp.size,
            qkv_bias: (qkv_bias != self.o_bias).then_some(qkv_bias),
            o_bias: (qkv_bias != self.o_bias).then_some(self.o_bias),
            // guess_peft_type: the layer carries LoRA.
            peft_type: (!self.lora.is_empty()).then(|| crate::lora::PEFT_TYPE_LORA.to_string()),
            packed_projection_name: None,
        };
        s.validate(self.tp.size)?;
        Ok(s)
    }

    /// `x: [batch, seq, hidden]` → this rank's q, k, v.
    pub fn forward(&self, x: Tensor<3>) -> Result<QkvOutput> {
        if self.tp.size > 1 && x.is_tracked() {
            return Err(Error::Training(
                "GqaQkvColumnParallelLinear::forward cannot be trained at tp > 1 (its input gradient needs the \
                 all-reduce): call forward_with(x, comm)"
                    .into(),
            ));
        }
        self.forward_with(x, &crate::comm::autodiff::NoCollectives)
    }

    /// [`forward`](Self::forward) for training: the replicated input passes
    /// [`copy_to_tp_region`](crate::comm::copy_to_tp_region) (a LoRA branch copies `x·A` instead, as in
    /// [`ColumnParallelLinear::forward_local`](super::ColumnParallelLinear::forward_local)).
    pub fn forward_with<C: crate::comm::Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<QkvOutput> {
        check_last_dim(&x, self.hidden_size, "GqaQkvColumnParallelLinear input")?;
        let (q, kv) = (self.q_local(), self.kv_local());
        let xc = crate::comm::copy_to_tp_region(x.clone(), comm)?;
        let lin = |w: &Option<Param<Tensor<2>>>, b: &Option<Param<Tensor<1>>>, what: &str| -> Result<Tensor<3>> {
            let w = w.as_ref().ok_or_else(|| Error::Argument(format!("GqaQkvColumnParallelLinear has no {what}")))?;
            Ok(super::linear(xc.clone(), w.val(), b.as_ref().map(|b| b.val()), self.tp.size))
        };
        let down = |br: &super::GqaLoraBranch| crate::comm::copy_to_tp_region(br.down(x.clone()), comm);
        if self.fuse_qkv {
            let mut y = lin(&self.weight_qkv, &self.bias_qkv, "weight_qkv")?;
            for br in &self.lora {
                y = y + br.up(down(br)?, &br.b_qkv, "b_qkv")?;
            }
            Ok(QkvOutput { q: y.clone().narrow(2, 0, q), k: y.clone().narrow(2, q, kv), v: y.narrow(2, q + kv, kv) })
        } else {
            let mut out = QkvOutput {
                q: lin(&self.weight_q, &self.bias_q, "weight_q")?,
                k: lin(&self.weight_k, &self.bias_k, "weight_k")?,
                v: lin(&self.weight_v, &self.bias_v, "weight_v")?,
            };
            for br in &self.lora {
                let h = down(br)?;
                out.q = out.q + br.up(h.clone(), &br.b_q, "b_q")?;
                out.k = out.k + br.up(h.clone(), &br.b_k, "b_k")?;
                out.v = out.v + br.up(h, &br.b_v, "b_v")?;
            }
            Ok(out)
        }
    }

    /// (name, parameter, local rows) of each weight present.
    fn weights(&self) -> Vec<(&'static str, &Param<Tensor<2>>, usize)> {
        let (q, kv) = (self.q_local(), self.kv_local());
        let mut v = Vec::new();
        if let Some(w) = &self.weight_qkv {
            v.push(("weight_qkv", w, q + 2 * kv));
        }
        for (n, w, rows) in
            [("weight_q", &self.weight_q, q), ("weight_k", &self.weight_k, kv), ("weight_v", &self.weight_v, kv)]
        {
            if let Some(w) = w {
                v.push((n, w, rows));
            }
        }
        v
    }

    /// (name, parameter, local rows) of each bias present.
    fn biases(&self) -> Vec<(&'static str, &Param<Tensor<1>>, usize)> {
        let (q, kv) = (self.q_local(), self.kv_local());
        let mut v = Vec::new();
        for (n, b, rows) in [
            ("bias_qkv", &self.bias_qkv, q + 2 * kv),
            ("bias_q", &self.bias_q, q),
            ("bias_k", &self.bias_k, kv),
            ("bias_v", &self.bias_v, kv),
        ] {
            if let Some(b) = b {
                v.push((n, b, rows));
            }
        }
        v
    }

    /// Global rows of a parameter with `rows` local rows (the fused one is recorded with its local shape).
    fn global_rows(&self, name: &str, rows: usize) -> usize {
        if name.ends_with("_qkv") {
            rows
        } else {
            rows * self.tp.size
        }
    }
}

impl CustomModule for GqaQkvColumnParallelLinear {
    fn collect_specs(&self, _prefix: &str, _out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        Ok(())
    }

    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        let tp = self.tp.size;
        let meta = |name: &str, shape: Vec<usize>| {
            if name.ends_with("_qkv") {
                // NxD wraps the concatenation in a fresh parameter without TP attributes (as the reference).
                replicated_meta(shape)
            } else {
                parallel_meta(0, 1, tp, shape)
            }
        };
        for (n, _, rows) in self.weights() {
            out.insert(pname(prefix, n), meta(n, vec![self.global_rows(n, rows), self.hidden_size]));
        }
        for (n, _, rows) in self.biases() {
            out.insert(pname(prefix, n), meta(n, vec![self.global_rows(n, rows)]));
        }
        Ok(())
    }

    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        out.push(self.tp);
    }

    fn load_rank_tensors(mut self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        let h = self.hidden_size;
        let (q, kv) = (self.q_local(), self.kv_local());
        let w = |p: &Option<Param<Tensor<2>>>, n: &str, rows: usize| -> Result<Option<Param<Tensor<2>>>> {
            p.as_ref().map(|p| load_linear_weight(src, &pname(prefix, n), p, rows, h, device)).transpose()
        };
        let b = |p: &Option<Param<Tensor<1>>>, n: &str, rows: usize| -> Result<Option<Param<Tensor<1>>>> {
            p.as_ref().map(|p| load_same(src, &pname(prefix, n), p, [rows], device)).transpose()
        };
        self.weight_qkv = w(&self.weight_qkv, "weight_qkv", q + 2 * kv)?;
        self.weight_q = w(&self.weight_q, "weight_q", q)?;
        self.weight_k = w(&self.weight_k, "weight_k", kv)?;
        self.weight_v = w(&self.weight_v, "weight_v", kv)?;
        self.bias_qkv = b(&self.bias_qkv, "bias_qkv", q + 2 * kv)?;
        self.bias_q = b(&self.bias_q, "bias_q", q)?;
        self.bias_k = b(&self.bias_k, "bias_k", kv)?;
        self.bias_v = b(&self.bias_v, "bias_v", kv)?;
        let rows: Vec<(&str, usize)> = self.weights().into_iter().map(|(n, _, r)| (n, r)).collect();
        self.lora = super::lora_branch::load_gqa_branches(src, prefix, h, &rows, device)?;
        Ok(self)
    }

    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        for (n, p, _) in self.weights() {
            save_linear_weight(p, &pname(prefix, n), out)?;
        }
        for (n, p, _) in self.biases() {
            save_same(p, &pname(prefix, n), out)?;
        }
        super::lora_branch::save_gqa_branches(&self.lora, prefix, out)
    }
}

impl GqaQkvLayer for GqaQkvColumnParallelLinear {
    fn gqa_qkv_spec(&self, gqa_qkv_projection_name: &str, q: &str, k: &str, v: &str, o: &str) -> Result<Spec> {
        Ok(Spec::GqaQkv(self.spec(gqa_qkv_projection_name, q, k, v, o)?))
    }
}
