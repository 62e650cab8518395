//! `GQAQKVColumnParallelLinearSpec`: q/k/v projections as one GQA column-parallel layer with kv-head
//! replication, and the row-parallel output projection that follows the same query-head permutation.

use super::{check_spec_tp, require};
use crate::error::{Error, Result};
use crate::plan::{push_block, Block, Source, TensorInfo, TensorPlan, TensorSource};
use crate::sharding::check_tp;
use crate::tensor::{single, HostTensor, StateDict};
use serde::{Deserialize, Serialize};

/// Which of the two head-permuted projections a helper works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOrOutput {
    /// The query projection: heads are rows.
    Query,
    /// The output projection: heads are columns.
    Output,
}

/// GQA q/k/v (+ o) transformation (reference: `GQAQKVColumnParallelLinearSpec`).
///
/// kv heads are replicated by tiling (`K0, K1, K0, K1, ...`) `kv_size_multiplier` times; rank `r` holds
/// slot `r` of the tiled list and the query heads of that kv group (`compute_query_indices_for_rank`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GqaQkvColumnParallelLinearSpec {
    /// Name of the GQA layer in the custom module (`qkv_proj`).
    pub gqa_qkv_projection_name: String,
    /// HF name of the query projection.
    pub query_projection_name: String,
    /// HF name of the key projection.
    pub key_projection_name: String,
    /// HF name of the value projection.
    pub value_projection_name: String,
    /// Name of the output projection (same in HF and in the custom module).
    pub output_projection_name: String,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of kv heads in the HF model.
    pub num_key_value_heads: usize,
    /// How many times the kv heads are tiled so that every rank holds one.
    pub kv_size_multiplier: usize,
    /// Query rows per rank.
    pub q_output_size_per_partition: usize,
    /// Key (and value) rows per rank.
    pub kv_output_size_per_partition: usize,
    /// One `weight_qkv` tensor, or `weight_q`/`weight_k`/`weight_v`.
    pub fuse_qkv: bool,
    /// The reference's single flag: q, k, v and o all have a bias.
    pub bias: bool,
    /// The TP size the spec was built for.
    pub tp_size: usize,
    /// q/k/v biases, when they differ from `bias` (Qwen2: q/k/v biases, no o bias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qkv_bias: Option<bool>,
    /// o bias, when it differs from `bias`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub o_bias: Option<bool>,
    /// `"lora"` when the module carries LoRA adapters.
    #[serde(default)]
    pub peft_type: Option<String>,
}

/// The kv multiplier the reference's layers use: `max(1, tp / kv_heads)`.
pub fn default_kv_size_multiplier(tp: usize, num_key_value_heads: usize) -> usize {
    tp.checked_div(num_key_value_heads).map_or(1, |m| m.max(1))
}

impl GqaQkvColumnParallelLinearSpec {
    /// The reference's class name.
    pub const CLASS_NAME: &'static str = "GQAQKVColumnParallelLinearSpec";

    /// A spec with the usual HF names (q_proj/k_proj/v_proj/o_proj into `qkv_proj`) for `tp`, with the
    /// reference's kv multiplier; `head_dim` sets the per-partition sizes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        num_attention_heads: usize,
        num_key_value_heads: usize,
        head_dim: usize,
        fuse_qkv: bool,
        qkv_bias: bool,
        o_bias: bool,
        tp: usize,
    ) -> Result<Self> {
        let s = Self {
            gqa_qkv_projection_name: "qkv_proj".into(),
            query_projection_name: "q_proj".into(),
            key_projection_name: "k_proj".into(),
            value_projection_name: "v_proj".into(),
            output_projection_name: "o_proj".into(),
            num_attention_heads,
            num_key_value_heads,
            kv_size_multiplier: 1,
            q_output_size_per_partition: 0,
            kv_output_size_per_partition: 0,
            fuse_qkv,
            bias: qkv_bias && o_bias,
            tp_size: tp,
            qkv_bias: (qkv_bias != o_bias).then_some(qkv_bias),
            o_bias: (qkv_bias != o_bias).then_some(o_bias),
            peft_type: None,
        };
        s.with_head_dim(head_dim, tp)
    }

    fn with_head_dim(mut self, head_dim: usize, tp: usize) -> Result<Self> {
        let c = Self::CLASS_NAME;
        check_spec_tp(c, tp, tp)?;
        check_heads(self.num_attention_heads, self.num_key_value_heads)?;
        self.tp_size = tp;
        self.kv_size_multiplier = default_kv_size_multiplier(tp, self.num_key_value_heads);
        let too_big = |what: &str| Error::spec(c, "head_dim", format!("{head_dim} × {what} overflows"));
        self.q_output_size_per_partition =
            self.num_attention_heads.checked_mul(head_dim).ok_or_else(|| too_big("num_attention_heads"))? / tp;
        self.kv_output_size_per_partition = self
            .num_key_value_heads
            .checked_mul(head_dim)
            .and_then(|x| x.checked_mul(self.kv_size_multiplier))
            .ok_or_else(|| too_big("num_key_value_heads × kv_size_multiplier"))?
            / tp;
        self.validate(tp)?;
        Ok(self)
    }

    /// The head size implied by the per-partition sizes.
    pub fn head_dim(&self) -> Result<usize> {
        let rows = self.q_output_size_per_partition.checked_mul(self.tp_size).ok_or_else(|| {
            Error::spec(
                Self::CLASS_NAME,
                "q_output_size_per_partition",
                format!("{} × tp {} overflows", self.q_output_size_per_partition, self.tp_size),
            )
        })?;
        if self.num_attention_heads == 0 || !rows.is_multiple_of(self.num_attention_heads) {
            return Err(Error::spec(
                Self::CLASS_NAME,
                "q_output_size_per_partition",
                format!(
                    "{} × tp {} is not a multiple of {} heads",
                    self.q_output_size_per_partition, self.tp_size, self.num_attention_heads
                ),
            ));
        }
        Ok(rows / self.num_attention_heads)
    }

    /// The same spec for another TP size, with the kv multiplier and per-partition sizes recomputed.
    pub fn for_tp(&self, tp: usize) -> Result<Self> {
        let hd = self.head_dim()?;
        self.clone().with_head_dim(hd, tp)
    }

    /// Whether q/k/v have a bias.
    pub fn has_qkv_bias(&self) -> bool {
        self.qkv_bias.unwrap_or(self.bias)
    }

    /// Whether o has a bias.
    pub fn has_o_bias(&self) -> bool {
        self.o_bias.unwrap_or(self.bias)
    }

    /// Checks heads, multiplier and per-partition sizes against `tp`, naming the field.
    pub fn validate(&self, tp: usize) -> Result<()> {
        let c = Self::CLASS_NAME;
        check_spec_tp(c, self.tp_size, tp)?;
        let (h, k, m) = (self.num_attention_heads, self.num_key_value_heads, self.kv_size_multiplier);
        check_heads(h, k)?;
        if h % tp != 0 {
            return Err(Error::spec(c, "num_attention_heads", format!("{h} heads are not divisible by tp {tp}")));
        }
        let km = k.checked_mul(m).ok_or_else(|| {
            Error::spec(
                c,
                "kv_size_multiplier",
                format!("{m} × {k} kv heads overflows (expected {})", default_kv_size_multiplier(tp, k)),
            )
        })?;
        if m == 0 || km % tp != 0 || km < tp {
            return Err(Error::spec(
                c,
                "kv_size_multiplier",
                format!(
                    "{m} × {k} kv heads must be a positive multiple of tp {tp} (expected {})",
                    default_kv_size_multiplier(tp, k)
                ),
            ));
        }
        let kv_per_rank = km / tp;
        if !(h / tp).is_multiple_of(kv_per_rank) || kv_per_rank > k {
            return Err(Error::spec(
                c,
                "kv_size_multiplier",
                format!("{kv_per_rank} kv heads per rank do not fit {} query heads per rank at tp {tp}", h / tp),
            ));
        }
        let hd = self.head_dim()?;
        if hd == 0 {
            return Err(Error::spec(c, "q_output_size_per_partition", "must be positive (head_dim 0)"));
        }
        let kv_expected = km.checked_mul(hd).map(|x| x / tp);
        if Some(self.kv_output_size_per_partition) != kv_expected {
            return Err(Error::spec(
                c,
                "kv_output_size_per_partition",
                format!(
                    "is {}, expected {} (kv heads {k} × multiplier {m} × head_dim {hd} / tp {tp})",
                    self.kv_output_size_per_partition,
                    kv_expected.map_or("an overflowing size".to_string(), |x| x.to_string())
                ),
            ));
        }
        if self
            .kv_output_size_per_partition
            .checked_mul(2)
            .and_then(|x| x.checked_add(self.q_output_size_per_partition))
            .is_none()
        {
            return Err(Error::spec(c, "q_output_size_per_partition", "the fused q/k/v rows overflow"));
        }
        // Every query head lands on exactly one rank, next to its own kv head.
        let mut seen = vec![false; h];
        for r in 0..tp {
            let idx = Self::compute_query_indices_for_rank(tp, r, h, k, m)?;
            for (j, q) in idx.iter().enumerate() {
                let kv_slot = r * kv_per_rank + j / ((h / tp) / kv_per_rank);
                if *q >= h || seen[*q] || q / (h / k) != kv_slot % k {
                    return Err(Error::spec(
                        c,
                        "kv_size_multiplier",
                        format!("with {m}, query head {q} on rank {r} is not next to its kv head at tp {tp}"),
                    ));
                }
                seen[*q] = true;
            }
        }
        Ok(())
    }

    /// The global query-head indices rank `tp_rank` holds, in local order (reference semantics, port of
    /// its torch code).
    pub fn compute_query_indices_for_rank(
        tp_size: usize,
        tp_rank: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        kv_size_multiplier: usize,
    ) -> Result<Vec<usize>> {
        check_tp(tp_size, tp_rank)?;
        let c = Self::CLASS_NAME;
        let (h, k, m) = (num_attention_heads, num_key_value_heads, kv_size_multiplier);
        check_heads(h, k)?;
        if m == 0 || h % tp_size != 0 {
            return Err(Error::spec(
                c,
                "num_attention_heads",
                format!("{h} heads, {k} kv heads and tp {tp_size} are inconsistent"),
            ));
        }
        let heads_per_rank = h / tp_size;
        let kv_per_rank = k.saturating_mul(m) / tp_size;
        if heads_per_rank.checked_rem(kv_per_rank) != Some(0) {
            return Err(Error::spec(
                c,
                "kv_size_multiplier",
                format!("{m} gives {kv_per_rank} kv heads per rank for {heads_per_rank} query heads"),
            ));
        }
        let group = h / k;
        let group_per_rank = heads_per_rank / kv_per_rank;
        if group.checked_rem(group_per_rank) != Some(0) {
            return Err(Error::spec(
                c,
                "kv_size_multiplier",
                format!("query groups of {group} cannot be split into {group_per_rank}"),
            ));
        }
        // keys_indices = repeat_interleave(arange(k).repeat(m), group_per_rank), chunked in tp pieces.
        let keys: Vec<usize> = (0..m).flat_map(|_| 0..k).flat_map(|x| std::iter::repeat_n(x, group_per_rank)).collect();
        let keys_chunk = chunk(&keys, tp_size, tp_rank)?;
        // shift_within_query_group = repeat_interleave(arange(0, group, group_per_rank), nq_before), chunked.
        let ranks_for_all_kv = k / kv_per_rank;
        let nq_before = ranks_for_all_kv * heads_per_rank;
        let shifts: Vec<usize> =
            (0..group).step_by(group_per_rank).flat_map(|x| std::iter::repeat_n(x, nq_before)).collect();
        let shift_chunk = chunk(&shifts, tp_size, tp_rank)?;
        let mut out = Vec::with_capacity(heads_per_rank);
        for idx in 0..kv_per_rank {
            for q in 0..group_per_rank {
                let s = idx * group_per_rank + q;
                let (Some(key), Some(shift)) = (keys_chunk.get(s), shift_chunk.get(s)) else {
                    return Err(Error::spec(
                        c,
                        "kv_size_multiplier",
                        format!("rank {tp_rank} runs out of query slots with multiplier {m}"),
                    ));
                };
                out.push(q + key * group + shift);
            }
        }
        Ok(out)
    }

    /// Rank `tp_rank`'s key or value weight from the full one: tiled `kv_size_multiplier` times, split in
    /// pieces of `output_size_per_partition` rows, piece `tp_rank`.
    pub fn create_kv_proj_local_weight_from_regular_weight(
        weight: &HostTensor,
        kv_size_multiplier: usize,
        output_size_per_partition: usize,
        tp_size: usize,
        tp_rank: usize,
    ) -> Result<HostTensor> {
        let info = TensorInfo { name: "kv".into(), dtype: weight.dtype(), shape: weight.shape().to_vec() };
        let plan = kv_plan("local", &info, 0, kv_size_multiplier, output_size_per_partition, 0, tp_size, tp_rank)?;
        plan.execute(&[&single("kv", weight)])
    }

    /// Rank `tp_rank`'s query rows (or output columns) of the heads `compute_query_indices_for_rank` gives.
    pub fn create_query_or_output_projection_local_weight_from_regular_weight(
        weight: &HostTensor,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        kv_size_multiplier: usize,
        query_or_output: QueryOrOutput,
        tp_size: usize,
        tp_rank: usize,
    ) -> Result<HostTensor> {
        let idx = Self::compute_query_indices_for_rank(
            tp_size,
            tp_rank,
            num_attention_heads,
            num_key_value_heads,
            kv_size_multiplier,
        )?;
        let info = TensorInfo { name: "w".into(), dtype: weight.dtype(), shape: weight.shape().to_vec() };
        let dim = match query_or_output {
            QueryOrOutput::Query => 0,
            QueryOrOutput::Output => 1,
        };
        let plan = heads_plan("local", &info, 0, dim, num_attention_heads, &idx, 0, None)?;
        plan.execute(&[&single("w", weight)])
    }

    /// The HF query (or output) weight from the concatenation of all ranks' local ones: undoes the
    /// head permutation (derived from the forward plans, not written a second time).
    pub fn create_gqa_query_or_output_projection_weight_from_full_weight(
        full_weight: &HostTensor,
        tp_size: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        kv_size_multiplier: usize,
        query_or_output: QueryOrOutput,
    ) -> Result<HostTensor> {
        let dim = match query_or_output {
            QueryOrOutput::Query => 0,
            QueryOrOutput::Output => 1,
        };
        let info = TensorInfo { name: "hf".into(), dtype: full_weight.dtype(), shape: full_weight.shape().to_vec() };
        let len = *info
            .shape
            .get(dim)
            .ok_or_else(|| Error::Invalid(format!("weight of shape {:?} has no dim {dim}", info.shape)))?;
        let per_rank = len / tp_size.max(1);
        let mut ranks = Vec::new();
        for r in 0..tp_size {
            let idx = Self::compute_query_indices_for_rank(
                tp_size,
                r,
                num_attention_heads,
                num_key_value_heads,
                kv_size_multiplier,
            )?;
            ranks.push(vec![heads_plan(&format!("{r}"), &info, 0, dim, num_attention_heads, &idx, 0, None)?]);
        }
        let plan = crate::plan::ShardPlan { tp: tp_size, originals: vec![info], ranks };
        let inv = plan.invert()?;
        let Some(p) = inv.into_iter().next() else { return Err(Error::Invalid("empty plan".into())) };
        // Rank r's local weight is block r of the concatenation along `dim`.
        let locals: Vec<StateDict> = (0..tp_size)
            .map(|r| Ok(single(&r.to_string(), &full_weight.narrow(dim, r * per_rank, per_rank)?)))
            .collect::<Result<_>>()?;
        let sources: Vec<&dyn TensorSource> = locals.iter().map(|l| l as &dyn TensorSource).collect();
        p.execute(&sources)
    }

    fn names(&self, module: &str, param: &str) -> [String; 4] {
        [
            format!("{module}.{}.{param}", self.query_projection_name),
            format!("{module}.{}.{param}", self.key_projection_name),
            format!("{module}.{}.{param}", self.value_projection_name),
            format!("{module}.{}.{param}", self.output_projection_name),
        ]
    }

    fn qkv_params(&self) -> Vec<&'static str> {
        if self.has_qkv_bias() {
            vec!["weight", "bias"]
        } else {
            vec!["weight"]
        }
    }

    fn local_qkv_names(&self, module: &str, param: &str) -> Vec<String> {
        let g = &self.gqa_qkv_projection_name;
        if self.fuse_qkv {
            vec![format!("{module}.{g}.{param}_qkv")]
        } else {
            ["q", "k", "v"].iter().map(|s| format!("{module}.{g}.{param}_{s}")).collect()
        }
    }

    /// `qkv_proj.weight_qkv` (or `_q/_k/_v`), biases named alike, and `o_proj.weight` (+ `.bias`).
    pub fn local_parameter_names(&self, module: &str) -> Vec<String> {
        let mut v: Vec<String> = self.qkv_params().iter().flat_map(|p| self.local_qkv_names(module, p)).collect();
        v.push(format!("{module}.{}.weight", self.output_projection_name));
        if self.has_o_bias() {
            v.push(format!("{module}.{}.bias", self.output_projection_name));
        }
        v
    }

    /// The HF q/k/v/o weights and biases.
    pub fn original_parameter_names(&self, module: &str) -> Vec<String> {
        let mut v = Vec::new();
        for p in self.qkv_params() {
            let [q, k, vv, _] = self.names(module, p);
            v.extend([q, k, vv]);
        }
        v.push(format!("{module}.{}.weight", self.output_projection_name));
        if self.has_o_bias() {
            v.push(format!("{module}.{}.bias", self.output_projection_name));
        }
        v
    }

    /// Plans of rank `rank`'s q/k/v and o tensors.
    pub fn plan_rank(
        &self,
        module: &str,
        src: &dyn TensorSource,
        part: usize,
        tp: usize,
        rank: usize,
    ) -> Result<Vec<TensorPlan>> {
        self.validate(tp)?;
        check_tp(tp, rank)?;
        let hd = self.head_dim()?;
        let idx = self.query_indices(tp, rank)?;
        let mut plans = Vec::new();
        for p in self.qkv_params() {
            let [qn, kn, vn, _] = self.names(module, p);
            plans.extend(self.plan_qkv([qn, kn, vn], self.local_qkv_names(module, p), src, part, tp, rank, &idx)?);
        }
        let on = format!("{module}.{}.weight", self.output_projection_name);
        plans.push(self.plan_output_columns(&on, src, part, &idx, hd)?);
        if self.has_o_bias() {
            let bn = format!("{module}.{}.bias", self.output_projection_name);
            let b = require(src, &bn)?;
            // A row-parallel bias is added once after the all-reduce: every rank keeps it whole.
            plans.push(TensorPlan::whole(&bn, &b, part));
        }
        Ok(plans)
    }

    fn query_indices(&self, tp: usize, rank: usize) -> Result<Vec<usize>> {
        Self::compute_query_indices_for_rank(
            tp,
            rank,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.kv_size_multiplier,
        )
    }

    /// The o columns (heads along dim 1) of the query heads `idx`, read from `name` into `name`.
    fn plan_output_columns(
        &self,
        name: &str,
        src: &dyn TensorSource,
        part: usize,
        idx: &[usize],
        hd: usize,
    ) -> Result<TensorPlan> {
        let o = require(src, name)?;
        if o.shape.get(1) != Some(&(self.num_attention_heads * hd)) {
            return Err(Error::ShapeMismatch {
                tensor: name.to_string(),
                expected: vec![o.shape.first().copied().unwrap_or(0), self.num_attention_heads * hd],
                found: o.shape,
                file: None,
            });
        }
        Ok(TensorPlan {
            name: name.to_string(),
            ..heads_plan(name, &o, part, 1, self.num_attention_heads, idx, 0, Some(hd))?
        })
    }

    /// Rank `rank`'s q, k and v rows of the tensors `[q, k, v]`, as one fused tensor or three.
    #[allow(clippy::too_many_arguments)]
    fn plan_qkv(
        &self,
        [qn, kn, vn]: [String; 3],
        names: Vec<String>,
        src: &dyn TensorSource,
        part: usize,
        tp: usize,
        rank: usize,
        idx: &[usize],
    ) -> Result<Vec<TensorPlan>> {
        let hd = self.head_dim()?;
        let q = require(src, &qn)?;
        let k = require(src, &kn)?;
        let v = require(src, &vn)?;
        self.check_rows(&q, self.num_attention_heads * hd)?;
        self.check_rows(&k, self.num_key_value_heads * hd)?;
        self.check_rows(&v, self.num_key_value_heads * hd)?;
        let qp = heads_plan("q", &q, part, 0, self.num_attention_heads, idx, 0, Some(hd))?;
        let kv_out = self.kv_output_size_per_partition;
        let kp = kv_plan("k", &k, part, self.kv_size_multiplier, kv_out, 0, tp, rank)?;
        let vp = kv_plan("v", &v, part, self.kv_size_multiplier, kv_out, 0, tp, rank)?;
        let mut plans = Vec::new();
        if self.fuse_qkv {
            for t in [&k, &v] {
                if t.dtype != q.dtype {
                    return Err(Error::DtypeMismatch {
                        tensor: t.name.clone(),
                        expected: q.dtype.to_string(),
                        found: t.dtype.to_string(),
                        file: None,
                    });
                }
            }
            let mut shape = q.shape.clone();
            shape[0] = qp.shape[0] + 2 * kv_out;
            let mut blocks = qp.blocks;
            let mut off = self.q_output_size_per_partition;
            for sub in [kp, vp] {
                for b in sub.blocks {
                    push_block(&mut blocks, Block { dst_offset: b.dst_offset + off, ..b });
                }
                off += kv_out;
            }
            let name = names.into_iter().next().unwrap_or_default();
            plans.push(TensorPlan { name, dtype: q.dtype, shape, blocks, replicas: vec![] });
        } else {
            for (sub, n) in [qp, kp, vp].into_iter().zip(names) {
                plans.push(TensorPlan { name: n, ..sub });
            }
        }
        Ok(plans)
    }

    /// `qkv_proj.lora_A.weight`, `qkv_proj.lora_B.weight_qkv` (or `_q/_k/_v`) and `o_proj.lora_A.weight` (whose
    /// columns follow the query heads); `o_proj.lora_B.weight` is a plain replicated parameter.
    pub fn lora_local_parameter_names(&self, module: &str) -> Vec<String> {
        let mut v = vec![format!("{module}.{}.lora_A.weight", self.gqa_qkv_projection_name)];
        v.extend(self.local_qkv_names(module, "lora_B.weight"));
        v.push(format!("{module}.{}.lora_A.weight", self.output_projection_name));
        v
    }

    /// The full-rank factors: the shared A of q/k/v, each one's B, and o's A.
    pub fn lora_original_parameter_names(&self, module: &str) -> Vec<String> {
        let mut v = vec![format!("{module}.{}.lora_A.weight", self.gqa_qkv_projection_name)];
        let [q, k, vv, o] = self.names(module, "lora_B.weight");
        v.extend([q, k, vv]);
        v.push(o.replace(".lora_B.", ".lora_A."));
        v
    }

    /// Rank `rank`'s LoRA factors: q/k/v's A whole; their B rows planned exactly like the weights' rows (query
    /// permutation, kv tiling); o's A columns like o's weight columns. Only the parts `src` holds.
    pub fn plan_rank_lora(
        &self,
        module: &str,
        src: &dyn TensorSource,
        part: usize,
        tp: usize,
        rank: usize,
    ) -> Result<Vec<TensorPlan>> {
        self.validate(tp)?;
        check_tp(tp, rank)?;
        let hd = self.head_dim()?;
        let idx = self.query_indices(tp, rank)?;
        let mut plans = Vec::new();
        let a = format!("{module}.{}.lora_A.weight", self.gqa_qkv_projection_name);
        if let Some(info) = src.info(&a) {
            plans.push(TensorPlan::whole(&a, &info, part));
            let [q, k, v, _] = self.names(module, "lora_B.weight");
            plans.extend(self.plan_qkv(
                [q, k, v],
                self.local_qkv_names(module, "lora_B.weight"),
                src,
                part,
                tp,
                rank,
                &idx,
            )?);
        }
        let oa = format!("{module}.{}.lora_A.weight", self.output_projection_name);
        if src.info(&oa).is_some() {
            plans.push(self.plan_output_columns(&oa, src, part, &idx, hd)?);
        }
        Ok(plans)
    }

    /// The full-rank factors' shapes from one rank's LoRA factors.
    pub fn lora_original_infos(&self, module: &str, local: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
        self.validate(tp)?;
        let hd = self.head_dim()?;
        let mut out = Vec::new();
        let a = format!("{module}.{}.lora_A.weight", self.gqa_qkv_projection_name);
        if let Some(info) = local.info(&a) {
            out.push(info);
            let [q, k, v, _] = self.names(module, "lora_B.weight");
            out.extend(self.qkv_original_infos(module, "lora_B.weight", [q, k, v], local)?);
        }
        let oa = format!("{module}.{}.lora_A.weight", self.output_projection_name);
        if let Some(o) = local.info(&oa) {
            let mut shape = o.shape.clone();
            if shape.len() != 2 || shape[1] != self.q_output_size_per_partition {
                return Err(Error::ShapeMismatch {
                    tensor: oa,
                    expected: vec![shape.first().copied().unwrap_or(0), self.q_output_size_per_partition],
                    found: o.shape,
                    file: None,
                });
            }
            shape[1] = self.num_attention_heads * hd;
            out.push(TensorInfo { name: oa, dtype: o.dtype, shape });
        }
        Ok(out)
    }

    /// The HF q/k/v shapes of parameter `p` from one rank's local q/k/v tensors.
    fn qkv_original_infos(
        &self,
        module: &str,
        p: &str,
        originals: [String; 3],
        local: &dyn TensorSource,
    ) -> Result<Vec<TensorInfo>> {
        let hd = self.head_dim()?;
        let (qo, kvo) = (self.q_output_size_per_partition, self.kv_output_size_per_partition);
        let names = self.local_qkv_names(module, p);
        let first_name = names.first().cloned().unwrap_or_default();
        let first = require(local, &first_name)?;
        let expected_rows = if self.fuse_qkv { qo + 2 * kvo } else { qo };
        if first.shape.first() != Some(&expected_rows) {
            let mut e = first.shape.clone();
            if let Some(x) = e.first_mut() {
                *x = expected_rows;
            }
            return Err(Error::ShapeMismatch { tensor: first.name, expected: e, found: first.shape, file: None });
        }
        let [qn, kn, vn] = originals;
        let mut out = Vec::new();
        for (n, rows) in [
            (qn, self.num_attention_heads * hd),
            (kn, self.num_key_value_heads * hd),
            (vn, self.num_key_value_heads * hd),
        ] {
            let mut shape = first.shape.clone();
            shape[0] = rows;
            out.push(TensorInfo { name: n, dtype: first.dtype, shape });
        }
        Ok(out)
    }

    fn check_rows(&self, t: &TensorInfo, rows: usize) -> Result<()> {
        if t.shape.first() != Some(&rows) {
            let mut e = t.shape.clone();
            if e.is_empty() {
                e.push(rows);
            } else {
                e[0] = rows;
            }
            return Err(Error::ShapeMismatch {
                tensor: t.name.clone(),
                expected: e,
                found: t.shape.clone(),
                file: None,
            });
        }
        Ok(())
    }

    /// The HF q/k/v/o shapes from one rank's local tensors.
    pub fn original_infos(&self, module: &str, local: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
        self.validate(tp)?;
        let hd = self.head_dim()?;
        let qo = self.q_output_size_per_partition;
        let mut out = Vec::new();
        for p in self.qkv_params() {
            let [qn, kn, vn, _] = self.names(module, p);
            out.extend(self.qkv_original_infos(module, p, [qn, kn, vn], local)?);
        }
        let on = format!("{module}.{}.weight", self.output_projection_name);
        let o = require(local, &on)?;
        let mut shape = o.shape.clone();
        if shape.len() != 2 || shape[1] != qo {
            return Err(Error::ShapeMismatch {
                tensor: on,
                expected: vec![shape.first().copied().unwrap_or(0), qo],
                found: o.shape,
                file: None,
            });
        }
        shape[1] = self.num_attention_heads * hd;
        out.push(TensorInfo { name: on, dtype: o.dtype, shape });
        if self.has_o_bias() {
            let bn = format!("{module}.{}.bias", self.output_projection_name);
            let b = require(local, &bn)?;
            out.push(TensorInfo { name: bn, ..b });
        }
        Ok(out)
    }
}

/// The largest head count accepted: far above any real model, low enough that the per-head checks and
/// index lists stay small for hostile metadata.
pub const MAX_HEADS: usize = 1 << 12;

/// Heads and kv heads: at least one, at most [`MAX_HEADS`], kv heads dividing heads.
fn check_heads(h: usize, k: usize) -> Result<()> {
    let c = GqaQkvColumnParallelLinearSpec::CLASS_NAME;
    if h == 0 {
        return Err(Error::spec(c, "num_attention_heads", "must be at least 1"));
    }
    if h > MAX_HEADS {
        return Err(Error::spec(c, "num_attention_heads", format!("{h} is above the supported maximum {MAX_HEADS}")));
    }
    if h.checked_rem(k) != Some(0) {
        return Err(Error::spec(c, "num_key_value_heads", format!("{k} does not divide num_attention_heads {h}")));
    }
    Ok(())
}

/// Torch's `chunk(v, n)[i]`: pieces of `ceil(len / n)`.
fn chunk(v: &[usize], n: usize, i: usize) -> Result<&[usize]> {
    let size = v.len().div_ceil(n.max(1)).max(1);
    let start = i * size;
    if start > v.len() {
        return Err(Error::spec(
            GqaQkvColumnParallelLinearSpec::CLASS_NAME,
            "kv_size_multiplier",
            format!("rank {i} gets no chunk"),
        ));
    }
    Ok(&v[start..(start + size).min(v.len())])
}

/// Rows (dim 0) or columns (dim 1) of the heads `indices`, in that order. `head_dim` defaults to
/// `len / num_heads`.
#[allow(clippy::too_many_arguments)]
fn heads_plan(
    name: &str,
    src: &TensorInfo,
    part: usize,
    dim: usize,
    num_heads: usize,
    indices: &[usize],
    dst_start: usize,
    head_dim: Option<usize>,
) -> Result<TensorPlan> {
    let len = *src
        .shape
        .get(dim)
        .ok_or_else(|| Error::Invalid(format!("tensor {}: no dim {dim} in {:?}", src.name, src.shape)))?;
    let hd = head_dim.unwrap_or(len / num_heads.max(1));
    if hd == 0 || hd * num_heads != len {
        return Err(Error::ShapeMismatch {
            tensor: src.name.clone(),
            expected: {
                let mut e = src.shape.clone();
                e[dim] = num_heads * hd.max(1);
                e
            },
            found: src.shape.clone(),
            file: None,
        });
    }
    let mut blocks = Vec::new();
    for (j, h) in indices.iter().enumerate() {
        push_block(
            &mut blocks,
            Block {
                src: Source { part, name: src.name.clone() },
                dim,
                src_offset: h * hd,
                dst_offset: dst_start + j * hd,
                len: hd,
            },
        );
    }
    let mut shape = src.shape.clone();
    shape[dim] = indices.len() * hd;
    Ok(TensorPlan { name: name.to_string(), dtype: src.dtype, shape, blocks, replicas: vec![] })
}

/// Rows `[rank·out, (rank+1)·out)` of the kv weight tiled `multiplier` times, as blocks of the untiled one.
#[allow(clippy::too_many_arguments)]
fn kv_plan(
    name: &str,
    src: &TensorInfo,
    part: usize,
    multiplier: usize,
    out: usize,
    dim: usize,
    tp: usize,
    rank: usize,
) -> Result<TensorPlan> {
    check_tp(tp, rank)?;
    let rows = *src
        .shape
        .get(dim)
        .ok_or_else(|| Error::Invalid(format!("tensor {}: no dim {dim} in {:?}", src.name, src.shape)))?;
    if rows == 0 || out == 0 || (rank + 1).saturating_mul(out) > rows.saturating_mul(multiplier) {
        return Err(Error::spec(
            GqaQkvColumnParallelLinearSpec::CLASS_NAME,
            "kv_output_size_per_partition",
            format!(
                "{out} rows per rank at rank {rank} exceed {} rows × multiplier {multiplier} of {}",
                rows, src.name
            ),
        ));
    }
    let mut blocks = Vec::new();
    let mut t = rank * out;
    let end = t + out;
    while t < end {
        let r = t % rows;
        let n = (rows - r).min(end - t);
        push_block(
            &mut blocks,
            Block {
                src: Source { part, name: src.name.clone() },
                dim,
                src_offset: r,
                dst_offset: t - rank * out,
                len: n,
            },
        );
        t += n;
    }
    let mut shape = src.shape.clone();
    shape[dim] = out;
    Ok(TensorPlan { name: name.to_string(), dtype: src.dtype, shape, blocks, replicas: vec![] })
}
