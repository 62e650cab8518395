//! The SwiGLU MLP: Llama's dense MLP and each Qwen3-MoE expert.

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::Tensor;
use neuron_spec::layers::{ColumnParallelLinear, Communicator, RowParallelLinear};
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
}

impl LlamaMlp {
    /// `down(silu(gate(x)) · up(x))`.
    pub fn forward<C: Communicator>(&self, x: Tensor<3>, comm: &C) -> Result<Tensor<3>> {
        let tp = self.gate_up_proj.tp.size;
        let local: Vec<usize> = match &self.gate_up_proj.fused_dims {
            Some(d) if d.len() == 2 => d.iter().map(|x| x.div_ceil(tp)).collect(), // members padded per rank
            _ => return Err(Error::Invalid("gate_up_proj must fuse exactly gate_proj and up_proj".into())),
        };
        let y = self.gate_up_proj.forward(x, comm)?;
        let gate = y.clone().narrow(2, 0, local[0]);
        let up = y.narrow(2, local[0], local[1]);
        self.down_proj.forward(silu(gate) * up, comm)
    }
}
