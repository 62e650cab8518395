//! `GQAQKVColumnParallelLinearSpec`: q/k/v projections as one GQA column-parallel layer with kv-head
//! replication, and the row-parallel output projection that follows the same query-head permutation.

use super::check_spec_tp;
use super::layout::{join, Group, IndexMap, Layout, LocalTensor, Packing, Part};
use super::query_heads::{check_heads, query_indices_for_rank};
use crate::error::{Error, Result};
use crate::tensor::{single, HostTensor, StateDict};
use crate::tensor::{TensorInfo, TensorSource};
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
    /// The HF checkpoint's own fused q/k/v tensor (Phi-3's `qkv_proj`: q, k, v rows in that order), when the
    /// checkpoint has no separate q/k/v projections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed_projection_name: Option<String>,
}

/// The kv multiplier the reference's layers use: `max(1, tp / kv_heads)`.
pub fn default_kv_size_multiplier(tp: usize, num_key_value_heads: usize) -> usize {
    tp.checked_div(num_key_value_heads).map_or(1, |m| m.max(1))
}

impl GqaQkvColumnParallelLinearSpec {
    /// The reference's class name.
    pub const CLASS_NAME: &'static str = super::query_heads::CLASS_NAME;

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
            packed_projection_name: None,
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
        query_indices_for_rank(tp_size, tp_rank, num_attention_heads, num_key_value_heads, kv_size_multiplier)
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
        let len = weight.shape().first().copied().unwrap_or(0);
        let map = IndexMap::Tiled { len, multiplier: kv_size_multiplier, per_rank: output_size_per_partition };
        let t = LocalTensor { name: "local".into(), dim: 0, parts: vec![Part::new("kv".into(), map)] };
        t.plan(Self::CLASS_NAME, &single("kv", weight), 0, tp_size, tp_rank)?.execute(&[&single("kv", weight)])
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
        let t = heads_tensor(
            "local",
            "w",
            weight.shape(),
            query_or_output,
            num_attention_heads,
            num_key_value_heads,
            kv_size_multiplier,
        )?;
        let src = single("w", weight);
        t.plan(Self::CLASS_NAME, &src, 0, tp_size, tp_rank)?.execute(&[&src])
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
            .ok_or_else(|| Error::Tensor(format!("weight of shape {:?} has no dim {dim}", info.shape)))?;
        let per_rank = len / tp_size.max(1);
        let mut ranks = Vec::new();
        let src = single("hf", full_weight);
        for r in 0..tp_size {
            let t = heads_tensor(
                &r.to_string(),
                "hf",
                full_weight.shape(),
                query_or_output,
                num_attention_heads,
                num_key_value_heads,
                kv_size_multiplier,
            )?;
            ranks.push(vec![t.plan(Self::CLASS_NAME, &src, 0, tp_size, r)?]);
        }
        let plan = crate::plan::ShardPlan { tp: tp_size, originals: vec![info], ranks };
        let inv = plan.invert()?;
        let Some(p) = inv.into_iter().next() else { return Err(Error::Plan("empty plan".into())) };
        // Rank r's local weight is block r of the concatenation along `dim`.
        let locals: Vec<StateDict> = (0..tp_size)
            .map(|r| Ok(single(&r.to_string(), &full_weight.narrow(dim, r * per_rank, per_rank)?)))
            .collect::<Result<_>>()?;
        let sources: Vec<&dyn TensorSource> = locals.iter().map(|l| l as &dyn TensorSource).collect();
        p.execute(&sources)
    }

    /// The map of the query heads (rows of q, columns of o).
    fn query_map(&self) -> IndexMap {
        IndexMap::QueryHeads {
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads,
            multiplier: self.kv_size_multiplier,
            head_dim: self.head_dim().unwrap_or(0),
        }
    }

    /// q, k and v of parameter `param` (`weight`, `bias`, `lora_B.weight`) as parts: the query heads of the
    /// rank, the kv heads tiled; read from the q/k/v tensors or from their rows of the packed one.
    fn qkv_parts(&self, module: &str, param: &str) -> [Part; 3] {
        let hd = self.head_dim().unwrap_or(0);
        let (q, kv) = (self.num_attention_heads.saturating_mul(hd), self.num_key_value_heads.saturating_mul(hd));
        let tiled = IndexMap::Tiled {
            len: kv,
            multiplier: self.kv_size_multiplier,
            per_rank: self.kv_output_size_per_partition,
        };
        let maps = [self.query_map(), tiled.clone(), tiled];
        let names = [&self.query_projection_name, &self.key_projection_name, &self.value_projection_name];
        let offsets = [0, q, q.saturating_add(kv)];
        let total = q.saturating_add(kv.saturating_mul(2));
        let part = |i: usize, map: IndexMap| match &self.packed_projection_name {
            Some(k) => Part {
                original: join(module, &format!("{k}.{param}")),
                packing: Some(Packing { offset: offsets[i], total }),
                map,
            },
            None => Part::new(join(module, &format!("{}.{param}", names[i])), map),
        };
        let [m0, m1, m2] = maps;
        [part(0, m0), part(1, m1), part(2, m2)]
    }

    /// The rank-local q/k/v tensors of `param`: one `<param>_qkv` or `<param>_q/_k/_v`.
    fn qkv_tensors(&self, module: &str, param: &str) -> Vec<LocalTensor> {
        let g = &self.gqa_qkv_projection_name;
        let parts = self.qkv_parts(module, param);
        if self.fuse_qkv {
            vec![LocalTensor { name: join(module, &format!("{g}.{param}_qkv")), dim: 0, parts: parts.to_vec() }]
        } else {
            parts
                .into_iter()
                .zip(["q", "k", "v"])
                .map(|(p, s)| LocalTensor { name: join(module, &format!("{g}.{param}_{s}")), dim: 0, parts: vec![p] })
                .collect()
        }
    }

    /// The rank-local tensors as data. Weights: `qkv_proj.weight_qkv` (or `_q/_k/_v`), biases alike, `o_proj`'s
    /// columns of the rank's query heads and its bias whole (a row-parallel bias is added once, after the
    /// all-reduce). LoRA: q/k/v's shared A whole and their B rows like the weight's rows; o's A columns like o's
    /// weight columns (o's B is a plain replicated parameter).
    pub fn layout(&self, module: &str) -> Layout {
        let (g, o) = (&self.gqa_qkv_projection_name, &self.output_projection_name);
        let whole =
            |name: String| LocalTensor { name: name.clone(), dim: 0, parts: vec![Part::new(name, IndexMap::Whole)] };
        let o_cols =
            |name: String| LocalTensor { name: name.clone(), dim: 1, parts: vec![Part::new(name, self.query_map())] };
        if self.peft_type.as_deref() == Some(crate::spec::PEFT_TYPE_LORA) {
            let mut qkv = vec![whole(join(module, &format!("{g}.lora_A.weight")))];
            qkv.extend(self.qkv_tensors(module, "lora_B.weight"));
            return Layout {
                groups: vec![
                    Group { tensors: qkv, optional: true },
                    Group { tensors: vec![o_cols(join(module, &format!("{o}.lora_A.weight")))], optional: true },
                ],
            };
        }
        let mut tensors: Vec<LocalTensor> =
            self.qkv_params().iter().flat_map(|p| self.qkv_tensors(module, p)).collect();
        tensors.push(o_cols(join(module, &format!("{o}.weight"))));
        if self.has_o_bias() {
            tensors.push(whole(join(module, &format!("{o}.bias"))));
        }
        Layout { groups: vec![Group { tensors, optional: false }] }
    }

    fn qkv_params(&self) -> Vec<&'static str> {
        if self.has_qkv_bias() {
            vec!["weight", "bias"]
        } else {
            vec!["weight"]
        }
    }
}

/// One tensor holding the query rows (or output columns) of a rank's heads, read from `original`.
fn heads_tensor(
    name: &str,
    original: &str,
    shape: &[usize],
    query_or_output: QueryOrOutput,
    num_heads: usize,
    num_kv_heads: usize,
    multiplier: usize,
) -> Result<LocalTensor> {
    let dim = match query_or_output {
        QueryOrOutput::Query => 0,
        QueryOrOutput::Output => 1,
    };
    let len = *shape.get(dim).ok_or_else(|| Error::Tensor(format!("weight of shape {shape:?} has no dim {dim}")))?;
    let head_dim = len / num_heads.max(1);
    if head_dim == 0 || head_dim * num_heads != len {
        let mut e = shape.to_vec();
        e[dim] = num_heads * head_dim.max(1);
        return Err(Error::ShapeMismatch {
            tensor: original.to_string(),
            expected: e,
            found: shape.to_vec(),
            file: None,
        });
    }
    let map = IndexMap::QueryHeads { num_heads, num_kv_heads, multiplier, head_dim };
    Ok(LocalTensor { name: name.to_string(), dim, parts: vec![Part::new(original.to_string(), map)] })
}
