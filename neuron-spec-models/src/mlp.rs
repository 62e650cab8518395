//! The gated MLP (SwiGLU, or Gemma's GELU-tanh): Llama's dense MLP and each Qwen3-MoE (and Mixtral) expert, and
//! Phi-3's, whose HF checkpoint packs gate and up into one tensor (the same layer under another annotation).

use crate::config::Activation;
use burn::module::Module;
use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::Tensor;
use neuron_spec::comm::Communicator;
use neuron_spec::layers::{ColumnParallelLinear, RowParallelLinear};
use neuron_spec::prelude::CustomModule;
use neuron_spec::{Error, Result};

/// SwiGLU MLP with gate_proj and up_proj fused into one column-parallel layer.
#[derive(Module, CustomModule, Debug)]
pub struct LlamaMlp {
    /// `[gate_local | up_local]` outputs.
    #[fused_linears(gate_proj, up_proj)]
    pub gate_up_proj: ColumnParallelLinear,
    /// Row-parallel down projection.
    pub down_proj: RowParallelLinear,
    /// The activation of the gate.
    #[module(skip)]
    pub activation: Activation,
}

/// [`LlamaMlp`] whose HF checkpoint stores gate and up as one `gate_up_proj` tensor (gate rows, then up).
#[derive(Module, CustomModule, Debug)]
pub struct PackedMlp {
    /// `[gate_local | up_local]` outputs, read from HF's packed `gate_up_proj`.
    #[fused_linears(packed = gate_up_proj)]
    pub gate_up_proj: ColumnParallelLinear,
    /// Row-parallel down projection.
    pub down_proj: RowParallelLinear,
    /// The activation of the gate.
    #[module(skip)]
    pub activation: Activation,
}

impl LlamaMlp {
    /// `down(act(gate(x)) · up(x))`.
    pub fn forward<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        gated(&self.gate_up_proj, &self.down_proj, self.activation, x, comm)
    }
}

impl PackedMlp {
    /// `down(act(gate(x)) · up(x))`.
    pub fn forward<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        gated(&self.gate_up_proj, &self.down_proj, self.activation, x, comm)
    }
}

/// `down(silu(gate(x)) · up(x))` with gate and up fused into one column-parallel layer.
pub(crate) fn swiglu<C: Communicator>(
    gate_up_proj: &ColumnParallelLinear,
    down_proj: &RowParallelLinear,
    x: Tensor<3>,
    comm: &C,
) -> Result<Tensor<3>> {
    gated(gate_up_proj, down_proj, Activation::Silu, x, comm)
}

/// `down(act(gate(x)) · up(x))` with gate and up fused into one column-parallel layer.
fn gated<C: Communicator>(
    gate_up_proj: &ColumnParallelLinear,
    down_proj: &RowParallelLinear,
    activation: Activation,
    x: Tensor<3>,
    comm: &C,
) -> Result<Tensor<3>> {
    let tp = gate_up_proj.tp.size;
    let local: Vec<usize> = match &gate_up_proj.fused_dims {
        Some(d) if d.len() == 2 => d.iter().map(|x| x.div_ceil(tp)).collect(), // members padded per rank
        _ => return Err(Error::Argument("gate_up_proj must fuse exactly gate_proj and up_proj".into())),
    };
    let y = gate_up_proj.forward(x, comm)?;
    let gate = y.clone().narrow(2, 0, local[0]);
    let up = y.narrow(2, local[0], local[1]);
    let gate = match activation {
        Activation::Silu => silu(gate),
        Activation::GeluTanh => gelu_approximate(gate),
    };
    down_proj.forward(gate * up, comm)
}
