//! Model-level entry points: an HF checkpoint → one rank's tensors (`adapt_state_dict`), and all ranks'
//! tensors → HF tensors (`to_original_weights`), both compiled into plans first.

use crate::error::{Error, Result};
use crate::plan::split::{check_tp, partition_plan};
use crate::plan::{ShardPlan, TensorPlan};
use crate::spec::contract::{CustomModule, Device};
use crate::spec::metadata::CheckpointMetadata;
use crate::tensor::{HostTensor, StateDict};
use crate::tensor::{TensorInfo, TensorSource};
use indexmap::{IndexMap, IndexSet};

/// What consolidation does with replicated kv heads (kv_size_multiplier > 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvReplicas {
    /// Compare every replica with the kept copy and fail, naming the tensor and the difference, if any differs.
    #[default]
    Check,
    /// Keep the lowest rank's copy without comparing (the reference's behaviour).
    First,
    /// Average all replicas.
    Mean,
}

/// How strict planning is about tensors the layout does not use.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Accept source tensors that no parameter uses (they are reported, not copied).
    pub allow_unexpected: bool,
}

/// One rank's plan, with the source tensors it consumed and those it left unused.
#[derive(Debug, Clone)]
pub struct RankPlan {
    /// The rank-local tensors.
    pub tensors: Vec<TensorPlan>,
    /// Source tensors read, in source order.
    pub consumed: Vec<String>,
    /// Source tensors nobody uses.
    pub unexpected: Vec<String>,
}

fn relevant(meta: &CheckpointMetadata, module: &str, spec: &crate::spec::Spec) -> bool {
    spec.local_parameter_names(module).iter().any(|n| meta.parameters.contains_key(n))
}

/// The plan of rank `rank` at TP size `tp`: spec-produced tensors first, then generic partitioning of the
/// remaining TP parameters, then replicated parameters copied whole.
pub fn plan_rank(
    meta: &CheckpointMetadata,
    src: &dyn TensorSource,
    tp: usize,
    rank: usize,
    opts: PlanOptions,
) -> Result<RankPlan> {
    check_tp(tp, rank)?;
    let mut tensors = Vec::new();
    let mut produced: IndexSet<String> = IndexSet::new();
    let mut consumed: IndexSet<String> = IndexSet::new();
    let mut missing = Vec::new();
    for (module, spec) in meta.specs() {
        spec.validate(tp)?;
        if !relevant(meta, module, spec) {
            continue;
        }
        if spec.is_lora() {
            // A LoRA spec plans the parts of its module whose factors the source holds; a part the metadata
            // lists but the source lacks is then reported missing by the generic pass below.
            // Validated above: the layout is planned directly.
            for t in spec.layout(module).plan(spec.class_name(), src, 0, tp, rank)? {
                consumed.extend(t.blocks.iter().map(|b| b.src.name.clone()));
                produced.insert(t.name.clone());
                tensors.push(t);
            }
            continue;
        }
        // A spec's missing inputs are collected with the others, so one error lists them all.
        let absent: Vec<String> =
            spec.original_parameter_names(module).into_iter().filter(|n| src.info(n).is_none()).collect();
        if !absent.is_empty() {
            // The inputs that are present are expected, not unexpected: only the absent ones are reported.
            consumed.extend(spec.original_parameter_names(module).into_iter().filter(|n| !absent.contains(n)));
            missing.extend(absent);
            produced.extend(spec.local_parameter_names(module));
            continue;
        }
        let pdim = spec
            .local_parameter_names(module)
            .first()
            .and_then(|n| meta.parameters.get(n))
            .and_then(|p| p.partition_dim);
        if let crate::spec::Spec::FusedLinears(f) = spec {
            f.check_partition_dim(pdim)?;
        }
        for t in spec.layout(module).plan(spec.class_name(), src, 0, tp, rank)? {
            produced.insert(t.name.clone());
            tensors.push(t);
        }
        consumed.extend(spec.original_parameter_names(module));
    }
    for (name, p) in &meta.parameters {
        if produced.contains(name) {
            continue;
        }
        let Some(info) = src.info(name) else {
            missing.push(name.clone());
            continue;
        };
        if p.tensor_model_parallel {
            let dim = p
                .partition_dim
                .ok_or_else(|| Error::spec("parameter", name, "tensor_model_parallel without partition_dim"))?;
            if let Some(n) = p.num_partitions {
                if n != tp {
                    return Err(Error::spec("parameter", name, format!("num_partitions is {n}, planning for tp {tp}")));
                }
            }
            tensors.push(partition_plan(name, &info, 0, dim, p.partition_stride.unwrap_or(1), tp, rank)?);
        } else {
            tensors.push(TensorPlan::whole(name, &info, 0));
        }
        consumed.insert(name.clone());
    }
    let unexpected: Vec<String> = src.names().into_iter().filter(|n| !consumed.contains(n)).collect();
    if !missing.is_empty() || (!unexpected.is_empty() && !opts.allow_unexpected) {
        let c: Vec<&str> = unexpected.iter().map(String::as_str).collect();
        let unexpected = if opts.allow_unexpected { vec![] } else { unexpected.clone() };
        return Err(Error::key_mismatch("checkpoint", missing, unexpected, &c));
    }
    let order: IndexMap<String, usize> = src.names().into_iter().enumerate().map(|(i, n)| (n, i)).collect();
    let mut consumed: Vec<String> = consumed.into_iter().collect();
    consumed.sort_by_key(|n| order.get(n).copied().unwrap_or(usize::MAX));
    Ok(RankPlan { tensors, consumed, unexpected })
}

/// The plans of every rank at TP size `tp`.
pub fn plan_shards(
    meta: &CheckpointMetadata,
    src: &dyn TensorSource,
    tp: usize,
    opts: PlanOptions,
) -> Result<ShardPlan> {
    check_tp(tp, 0)?;
    let mut ranks = Vec::with_capacity(tp);
    let mut originals = Vec::new();
    for rank in 0..tp {
        let rp = plan_rank(meta, src, tp, rank, opts)?;
        if rank == 0 {
            originals = rp.consumed.iter().filter_map(|n| src.info(n)).collect();
        }
        ranks.push(rp.tensors);
    }
    Ok(ShardPlan { tp, originals, ranks })
}

/// HF → rank `rank`'s local tensors (reference: `adapt_state_dict`). Tensor groups are assembled by name,
/// whichever files hold their members.
pub fn adapt_state_dict(
    meta: &CheckpointMetadata,
    src: &dyn TensorSource,
    tp: usize,
    rank: usize,
    opts: PlanOptions,
) -> Result<StateDict> {
    let plan = plan_rank(meta, src, tp, rank, opts)?;
    let mut out = StateDict::new();
    for t in &plan.tensors {
        out.insert(t.name.clone(), t.execute(&[src])?);
    }
    Ok(out)
}

/// Shapes and dtypes only: lets the forward plan be built from inferred original shapes.
struct InfoSource(IndexMap<String, TensorInfo>);

impl TensorSource for InfoSource {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.0.get(name).cloned()
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        Err(Error::Plan(format!("tensor {name}: shape-only source")))
    }
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// The original (HF) tensors a sharded checkpoint describes, inferred from rank 0's tensors and the metadata.
pub fn original_infos(meta: &CheckpointMetadata, rank0: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
    let mut out: IndexMap<String, TensorInfo> = IndexMap::new();
    let mut produced: IndexSet<String> = IndexSet::new();
    for (module, spec) in meta.specs() {
        if !relevant(meta, module, spec) {
            continue;
        }
        if spec.is_lora() {
            for i in spec.lora_original_infos(module, rank0, tp)? {
                out.insert(i.name.clone(), i);
            }
            produced.extend(spec.local_parameter_names(module).into_iter().filter(|n| rank0.info(n).is_some()));
            continue;
        }
        for i in spec.original_infos(module, rank0, tp)? {
            out.insert(i.name.clone(), i);
        }
        produced.extend(spec.local_parameter_names(module));
    }
    let mut missing = Vec::new();
    for (name, p) in &meta.parameters {
        if produced.contains(name) {
            continue;
        }
        let Some(local) = rank0.info(name) else {
            missing.push(name.clone());
            continue;
        };
        let shape = match (&p.shape, p.tensor_model_parallel, p.partition_dim) {
            (Some(s), _, _) => s.clone(),
            (None, true, Some(d)) => {
                let mut s = local.shape.clone();
                let n = p.num_partitions.unwrap_or(tp);
                match s.get_mut(d) {
                    Some(x) => *x *= n,
                    None => {
                        return Err(Error::spec(
                            "parameter",
                            name,
                            format!("partition_dim {d} out of range for {:?}", local.shape),
                        ))
                    }
                }
                s
            }
            _ => local.shape.clone(),
        };
        out.insert(name.clone(), TensorInfo { name: name.clone(), dtype: local.dtype, shape });
    }
    if !missing.is_empty() {
        let names = rank0.names();
        let c: Vec<&str> = names.iter().map(String::as_str).collect();
        return Err(Error::key_mismatch("rank 0", missing, vec![], &c));
    }
    Ok(out.into_values().collect())
}

/// The consolidation plan: the forward plan rebuilt from the metadata, checked against every rank's
/// tensors, then inverted. Returns the forward plan too (for reports and replica checks).
pub fn consolidation_plan(
    meta: &CheckpointMetadata,
    ranks: &[&dyn TensorSource],
) -> Result<(ShardPlan, Vec<TensorPlan>)> {
    let tp = ranks.len();
    check_tp(tp, 0)?;
    let originals = original_infos(meta, ranks[0], tp)?;
    let info_src = InfoSource(originals.iter().map(|i| (i.name.clone(), i.clone())).collect());
    let forward = plan_shards(meta, &info_src, tp, PlanOptions::default())?;
    for (r, (plans, src)) in forward.ranks.iter().zip(ranks).enumerate() {
        for t in plans {
            let found = src.info(&t.name).ok_or_else(|| {
                let names = src.names();
                let c: Vec<&str> = names.iter().map(String::as_str).collect();
                Error::key_mismatch(format!("rank {r}"), vec![t.name.clone()], vec![], &c)
            })?;
            if found.shape != t.shape {
                return Err(Error::ShapeMismatch {
                    tensor: format!("{} (rank {r})", t.name),
                    expected: t.shape.clone(),
                    found: found.shape,
                    file: None,
                });
            }
            if found.dtype != t.dtype {
                return Err(Error::DtypeMismatch {
                    tensor: format!("{} (rank {r})", t.name),
                    expected: t.dtype.to_string(),
                    found: found.dtype.to_string(),
                    file: None,
                });
            }
        }
    }
    let inverse = forward.invert()?;
    Ok((forward, inverse))
}

/// Per rank, the tensors of `ranks` that no rank-local parameter of the consolidation's `forward` plan
/// describes: consolidation leaves them out.
pub fn undescribed_rank_tensors(forward: &ShardPlan, ranks: &[&dyn TensorSource]) -> Vec<Vec<String>> {
    forward
        .ranks
        .iter()
        .zip(ranks)
        .map(|(plans, src)| {
            let described: IndexSet<&str> = plans.iter().map(|t| t.name.as_str()).collect();
            src.names().into_iter().filter(|n| !described.contains(n.as_str())).collect()
        })
        .collect()
}

/// All ranks' tensors → HF tensors (reference: `to_original_weights`), in memory. The on-disk path
/// ([`crate::consolidate()`]) streams the same plan one tensor at a time.
pub fn to_original_weights(meta: &CheckpointMetadata, ranks: &[&dyn TensorSource]) -> Result<StateDict> {
    let (_, inverse) = consolidation_plan(meta, ranks)?;
    let mut out = StateDict::new();
    for t in &inverse {
        out.insert(t.name.clone(), consolidate_tensor(t, ranks, KvReplicas::Check)?);
    }
    Ok(out)
}

/// Runs one tensor's consolidation plan, then checks, ignores or averages its kv replicas.
pub fn consolidate_tensor(t: &TensorPlan, ranks: &[&dyn TensorSource], replicas: KvReplicas) -> Result<HostTensor> {
    let out = t.execute(ranks)?;
    check_replicas(t, out, ranks, replicas)
}

/// One tensor's consolidation as pieces to write: zero-copy views where no replica needs a look.
pub fn consolidate_pieces(
    t: &TensorPlan,
    ranks: &[&dyn TensorSource],
    replicas: KvReplicas,
) -> Result<Vec<HostTensor>> {
    if t.replicas.is_empty() || replicas == KvReplicas::First {
        return t.pieces(ranks);
    }
    Ok(vec![consolidate_tensor(t, ranks, replicas)?])
}

fn check_replicas(
    t: &TensorPlan,
    out: HostTensor,
    ranks: &[&dyn TensorSource],
    replicas: KvReplicas,
) -> Result<HostTensor> {
    match replicas {
        KvReplicas::First => Ok(out),
        KvReplicas::Mean => t.average_replicas(out, ranks),
        KvReplicas::Check => match t.replica_mismatch(&out, ranks)? {
            None => Ok(out),
            Some((max_abs_diff, rank, primary_rank)) => {
                Err(Error::ReplicaMismatch { tensor: t.name.clone(), rank, primary_rank, max_abs_diff })
            }
        },
    }
}

/// A whole model's weights against an HF checkpoint, through the compiler: provided for every
/// [`CustomModule`] (in the prelude).
pub trait HfWeights: CustomModule {
    /// HF checkpoint → this rank's local tensors.
    fn adapt_state_dict(&self, src: &dyn TensorSource, opts: PlanOptions) -> Result<StateDict> {
        let ctx = self.tp_context()?;
        adapt_state_dict(&self.create_parameter_metadata()?, src, ctx.size, ctx.rank, opts)
    }

    /// All ranks' local tensors → HF tensors.
    fn to_original_weights(&self, ranks: &[&dyn TensorSource]) -> Result<StateDict> {
        to_original_weights(&self.create_parameter_metadata()?, ranks)
    }

    /// Loads this rank's weights from an HF checkpoint.
    fn load_hf_rank(self, src: &dyn TensorSource, device: &Device, opts: PlanOptions) -> Result<Self> {
        let local = HfWeights::adapt_state_dict(&self, src, opts)?;
        self.load_rank_tensors("", &local, device)
    }
}

impl<T: CustomModule> HfWeights for T {}
