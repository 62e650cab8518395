// A Llama-shaped tree: module paths, spec order and parameter names through the derive.
#![deny(warnings)]

#[allow(dead_code)]
mod mocks {
    include!("../support/mocks.rs");
}

use mocks::{Linear, NotAModule, Qkv};
use neuron_spec::spec::contract::CustomModule;

#[derive(neuron_spec::CustomModule)]
struct Attention {
    #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
    qkv_proj: Qkv,
    o_proj: Linear,
}

#[derive(neuron_spec::CustomModule)]
struct Mlp {
    #[fused_linears(gate_proj, up_proj)]
    gate_up_proj: Linear,
    down_proj: Linear,
}

#[derive(neuron_spec::CustomModule)]
struct Decoder {
    #[hf(rename = "self_attn")]
    attention: Attention,
    mlp: Mlp,
    #[hf(skip)]
    cache: NotAModule,
    num_heads: usize,
    dims: Vec<f32>,
}

#[derive(neuron_spec::CustomModule)]
struct Model {
    layers: Vec<Decoder>,
    norm: Option<Linear>,
}

#[derive(neuron_spec::CustomModule)]
struct ForCausalLm {
    model: Model,
    lm_head: Linear,
}

fn main() {
    let decoder = || Decoder {
        attention: Attention {
            qkv_proj: Qkv::new(2),
            o_proj: Linear::new(2),
        },
        mlp: Mlp {
            gate_up_proj: Linear::new(2),
            down_proj: Linear::new(2),
        },
        cache: NotAModule { value: 0 },
        num_heads: 8,
        dims: vec![1.0],
    };
    let lm = ForCausalLm {
        model: Model {
            layers: vec![decoder(), decoder()],
            norm: Some(Linear::new(2)),
        },
        lm_head: Linear::new(2),
    };
    let specs = lm.transformation_specs().unwrap();
    let paths: Vec<&str> = specs
        .iter()
        .map(|s| s.module_fully_qualified_name.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "model.layers.0.self_attn",
            "model.layers.0.mlp",
            "model.layers.1.self_attn",
            "model.layers.1.mlp"
        ]
    );
    let metadata = lm.create_parameter_metadata().unwrap();
    assert!(metadata
        .parameters
        .contains_key("model.layers.1.self_attn.qkv_proj.weight_qkv"));
    assert_eq!(metadata.parameters.len(), 10);
}
