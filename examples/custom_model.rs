//! A custom model annotated from scratch (not one of neuron-spec-models' families): a small encoder block
//! (bidirectional GQA attention with 4 query heads sharing 2 kv heads, and a fused gate/up SwiGLU MLP). It writes an HF-layout safetensors
//! checkpoint, loads it at tp 2 with one thread per rank, checks the TP forward pass against tp 1, then
//! consolidates the ranks back to HF tensors (in memory, and on disk through `shard` / `consolidate`) and
//! checks the round trip byte for byte.
//!
//! Run it: `cargo run --example custom_model`.

use burn::module::Module;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use neuron_spec::checkpoint::WriteOptions;
use neuron_spec::format::{write_safetensors, HfCheckpoint};
use neuron_spec::prelude::*;
use neuron_spec::spec::compile::to_original_weights;
use neuron_spec::{consolidate, shard, HostTensor, StateDict, TensorInfo, TensorSource};
use std::path::Path;

const HIDDEN: usize = 16;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 4;
const INTERMEDIATE: usize = 24;

/// Attention projections: one layer for HF's `q_proj`, `k_proj`, `v_proj`; `o_proj` follows its head order.
#[derive(Module, CustomModule, Debug)]
pub struct Attention {
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    pub qkv_proj: GqaQkvColumnParallelLinear,
    pub o_proj: RowParallelLinear,
}

/// SwiGLU MLP: one column-parallel layer for HF's `gate_proj` and `up_proj`.
#[derive(Module, CustomModule, Debug)]
pub struct Mlp {
    #[fused_linears(gate_proj, up_proj)]
    pub gate_up_proj: ColumnParallelLinear,
    pub down_proj: RowParallelLinear,
}

/// The model: HF paths `block.attn.q_proj.weight`, ..., `block.mlp.down_proj.weight`.
#[derive(Module, CustomModule, Debug)]
pub struct Block {
    pub attn: Attention,
    pub mlp: Mlp,
}

#[derive(Module, CustomModule, Debug)]
pub struct Encoder {
    pub block: Block,
}

impl Encoder {
    /// Rank `tp.rank` of the model at tp `tp.size` (weights allocated, loaded afterwards).
    fn new(tp: TpContext, device: &Device) -> Result<Self> {
        Ok(Self {
            block: Block {
                attn: Attention {
                    qkv_proj: GqaQkvColumnParallelLinearConfig::new(HIDDEN, HEADS, KV_HEADS, HEAD_DIM)
                        .init(tp, device)?,
                    o_proj: RowParallelLinearConfig::new(HEADS * HEAD_DIM, HIDDEN).init(tp, device)?,
                },
                mlp: Mlp {
                    gate_up_proj: ColumnParallelLinearConfig::new(HIDDEN, 2 * INTERMEDIATE)
                        .with_fused_members(2)
                        .init(tp, device)?,
                    down_proj: RowParallelLinearConfig::new(INTERMEDIATE, HIDDEN).init(tp, device)?,
                },
            },
        })
    }

    /// Bidirectional GQA attention with a residual, then the SwiGLU MLP with a residual. Each rank holds its
    /// own query heads, the kv heads they share, and its MLP columns; the row-parallel layers all-reduce, so
    /// every rank ends with the same output.
    fn forward<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        let [b, s, _] = x.dims();
        let p = &self.block.attn.qkv_proj;
        let (hq, hkv, hd) = (p.local_heads(), p.local_kv_heads(), p.head_dim);
        let qkv = p.forward_with(x.clone(), comm)?;
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        // Local kv head j serves the consecutive local query heads [j·g, (j+1)·g).
        let g = hq / hkv;
        let expand = |t: Tensor<4>| t.unsqueeze_dim::<5>(2).expand([b, hkv, g, s, hd]).reshape([b, hq, s, hd]);
        let (q, k, v) = (heads(qkv.q, hq), expand(heads(qkv.k, hkv)), expand(heads(qkv.v, hkv)));
        let scores = q.matmul(k.swap_dims(2, 3)) / (hd as f32).sqrt();
        let attn = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, s, hq * hd]);
        let x = x + self.block.attn.o_proj.forward(attn, comm)?;
        let local = INTERMEDIATE / comm.context().size;
        let y = self.block.mlp.gate_up_proj.forward(x.clone(), comm)?;
        let (gate, up) = (y.clone().narrow(2, 0, local), y.narrow(2, local, local));
        Ok(x + self.block.mlp.down_proj.forward(silu(gate) * up, comm)?)
    }
}

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// The HF checkpoint: every linear as `transformers` names and shapes it (`[out, in]`).
fn hf_tensors() -> Result<StateDict> {
    let shapes = [
        ("block.attn.q_proj.weight", [HEADS * HEAD_DIM, HIDDEN]),
        ("block.attn.k_proj.weight", [KV_HEADS * HEAD_DIM, HIDDEN]),
        ("block.attn.v_proj.weight", [KV_HEADS * HEAD_DIM, HIDDEN]),
        ("block.attn.o_proj.weight", [HIDDEN, HEADS * HEAD_DIM]),
        ("block.mlp.gate_proj.weight", [INTERMEDIATE, HIDDEN]),
        ("block.mlp.up_proj.weight", [INTERMEDIATE, HIDDEN]),
        ("block.mlp.down_proj.weight", [HIDDEN, INTERMEDIATE]),
    ];
    let mut sd = StateDict::new();
    for (i, (name, shape)) in shapes.into_iter().enumerate() {
        sd.insert(name.to_string(), HostTensor::from_f32(shape.to_vec(), &values(shape[0] * shape[1], i as u64))?);
    }
    Ok(sd)
}

fn write_hf(dir: &Path, sd: &StateDict) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let infos: Vec<TensorInfo> = sd.keys().filter_map(|n| sd.info(n)).collect();
    write_safetensors(&dir.join("model.safetensors"), &infos, &Default::default(), &mut |i| {
        Ok(vec![sd.tensor(&i.name)?])
    })?;
    Ok(())
}

/// Runs every rank of a tp-`tp` group on its own thread: loads its slices of `hf`, runs the forward pass,
/// returns (the output, its rank tensors) per rank.
fn run_ranks(tp: usize, hf: &HfCheckpoint, x: &[f32]) -> Result<Vec<(Vec<f32>, StateDict)>> {
    let comms = LocalCommunicator::group(tp)?;
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .map(|comm| {
                s.spawn(move || -> Result<(Vec<f32>, StateDict)> {
                    let device = Device::default();
                    let model =
                        Encoder::new(comm.context(), &device)?.load_hf_rank(hf, &device, PlanOptions::default())?;
                    let input = Tensor::<3>::from_data(TensorData::new(x.to_vec(), [1, 3, HIDDEN]), &device);
                    let out = model.forward(input, comm)?;
                    // Invalid: the example's own check (a wrong result), not a library failure: no kind fits.
                    let out = out.into_data().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("{e:?}")))?;
                    let mut rank = StateDict::new();
                    model.save_rank_tensors("", &mut rank)?;
                    Ok((out, rank))
                })
            })
            .collect();
        // Invalid: the example's own check (a wrong result), not a library failure: no kind fits.
        handles.into_iter().map(|h| h.join().map_err(|_| Error::Invalid("a rank panicked".into()))?).collect()
    })
}

fn main() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("neuron-spec-custom-model-{}", std::process::id()));
    let (hf_dir, sharded, back) = (tmp.join("hf"), tmp.join("sharded"), tmp.join("hf-again"));
    let original = hf_tensors()?;
    write_hf(&hf_dir, &original)?;
    let hf = HfCheckpoint::open(&hf_dir)?;

    // The layout: what the model says about itself at tp 2 (its `--layout` file is `meta.to_json()?`).
    let meta = Encoder::new(TpContext::new(2, 0)?, &Device::default())?.create_parameter_metadata()?;
    for (name, p) in &meta.parameters {
        println!("{name}: tensor_model_parallel {}, partition_dim {:?}", p.tensor_model_parallel, p.partition_dim);
    }

    // tp 2 on two threads, against tp 1.
    let x = values(3 * HIDDEN, 99);
    let one = run_ranks(1, &hf, &x)?;
    let two = run_ranks(2, &hf, &x)?;
    let max_diff = two[0].0.iter().zip(&one[0].0).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("tp 2 vs tp 1: max |Δ output| {max_diff:e}; rank 0 and rank 1 equal: {}", two[0].0 == two[1].0);
    if max_diff > 1e-5 || two[0].0 != two[1].0 {
        // Invalid: the example's own check (a wrong result), not a library failure: no kind fits.
        return Err(Error::Invalid(format!("the tp 2 output differs from tp 1's by {max_diff}")));
    }

    // Consolidated back from the ranks' tensors: the HF checkpoint, byte for byte.
    let ranks: Vec<&dyn TensorSource> = two.iter().map(|(_, r)| r as &dyn TensorSource).collect();
    let consolidated = to_original_weights(&meta, &ranks)?;
    for (name, t) in &original {
        if consolidated.tensor(name)?.bytes() != t.bytes() {
            // Invalid: the example's own check (a wrong result), not a library failure: no kind fits.
            return Err(Error::Invalid(format!("{name} changed in the round trip")));
        }
    }
    println!("in memory: {} tensors consolidated from 2 ranks, byte-identical", consolidated.len());

    // The same on disk: shard at tp 2, consolidate, compare the files' tensors.
    shard(&hf_dir, &sharded, &meta, 2, &WriteOptions::default())?;
    consolidate(&sharded, &back, &WriteOptions::default())?;
    let again = HfCheckpoint::open(&back)?;
    for name in original.keys() {
        if again.tensor(name)?.bytes() != original.tensor(name)?.bytes() {
            // Invalid: the example's own check (a wrong result), not a library failure: no kind fits.
            return Err(Error::Invalid(format!("{name} changed in shard → consolidate")));
        }
    }
    println!("on disk: shard (tp 2) → consolidate gives the {} tensors back byte for byte", original.len());
    std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(())
}
