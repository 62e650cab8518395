//! Hand-written `CustomModule` impls of the model tree: exactly what `#[derive(CustomModule)]` generates
//! (this file is replaced by the derive). Each struct recurses into its HF fields under
//! `join_path(prefix, field)`; a struct with spec fields pushes its own specs first.

use crate::model::{LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMlp, LlamaModel};
use burn::tensor::Device;
use indexmap::IndexMap;
use neuron_spec::module::{join_path, CustomModule, FusedLinearLayer, GqaQkvLayer, TpContext};
use neuron_spec::specs::ModelWeightTransformationSpecs;
use neuron_spec::{ParameterMetadata, Result, StateDict, TensorSource};

impl CustomModule for LlamaForCausalLM {
    fn collect_specs(&self, prefix: &str, out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        self.model.collect_specs(&join_path(prefix, "model"), out)?;
        self.lm_head.collect_specs(&join_path(prefix, "lm_head"), out)
    }
    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        self.model.collect_parameter_metadata(&join_path(prefix, "model"), out)?;
        self.lm_head.collect_parameter_metadata(&join_path(prefix, "lm_head"), out)
    }
    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        self.model.collect_tp_contexts(out);
        self.lm_head.collect_tp_contexts(out);
    }
    fn load_rank_tensors(self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        Ok(Self {
            model: self.model.load_rank_tensors(&join_path(prefix, "model"), src, device)?,
            lm_head: self.lm_head.load_rank_tensors(&join_path(prefix, "lm_head"), src, device)?,
        })
    }
    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        self.model.save_rank_tensors(&join_path(prefix, "model"), out)?;
        self.lm_head.save_rank_tensors(&join_path(prefix, "lm_head"), out)
    }
}

impl CustomModule for LlamaModel {
    fn collect_specs(&self, prefix: &str, out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        self.embed_tokens.collect_specs(&join_path(prefix, "embed_tokens"), out)?;
        self.layers.collect_specs(&join_path(prefix, "layers"), out)?;
        self.norm.collect_specs(&join_path(prefix, "norm"), out)
    }
    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        self.embed_tokens.collect_parameter_metadata(&join_path(prefix, "embed_tokens"), out)?;
        self.layers.collect_parameter_metadata(&join_path(prefix, "layers"), out)?;
        self.norm.collect_parameter_metadata(&join_path(prefix, "norm"), out)
    }
    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        self.embed_tokens.collect_tp_contexts(out);
        self.layers.collect_tp_contexts(out);
        self.norm.collect_tp_contexts(out);
    }
    fn load_rank_tensors(self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        Ok(Self {
            embed_tokens: self.embed_tokens.load_rank_tensors(&join_path(prefix, "embed_tokens"), src, device)?,
            layers: self.layers.load_rank_tensors(&join_path(prefix, "layers"), src, device)?,
            norm: self.norm.load_rank_tensors(&join_path(prefix, "norm"), src, device)?,
        })
    }
    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        self.embed_tokens.save_rank_tensors(&join_path(prefix, "embed_tokens"), out)?;
        self.layers.save_rank_tensors(&join_path(prefix, "layers"), out)?;
        self.norm.save_rank_tensors(&join_path(prefix, "norm"), out)
    }
}

impl CustomModule for LlamaDecoderLayer {
    fn collect_specs(&self, prefix: &str, out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        self.self_attn.collect_specs(&join_path(prefix, "self_attn"), out)?;
        self.mlp.collect_specs(&join_path(prefix, "mlp"), out)?;
        self.input_layernorm.collect_specs(&join_path(prefix, "input_layernorm"), out)?;
        self.post_attention_layernorm.collect_specs(&join_path(prefix, "post_attention_layernorm"), out)
    }
    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        self.self_attn.collect_parameter_metadata(&join_path(prefix, "self_attn"), out)?;
        self.mlp.collect_parameter_metadata(&join_path(prefix, "mlp"), out)?;
        self.input_layernorm.collect_parameter_metadata(&join_path(prefix, "input_layernorm"), out)?;
        self.post_attention_layernorm.collect_parameter_metadata(&join_path(prefix, "post_attention_layernorm"), out)
    }
    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        self.self_attn.collect_tp_contexts(out);
        self.mlp.collect_tp_contexts(out);
        self.input_layernorm.collect_tp_contexts(out);
        self.post_attention_layernorm.collect_tp_contexts(out);
    }
    fn load_rank_tensors(self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        Ok(Self {
            self_attn: self.self_attn.load_rank_tensors(&join_path(prefix, "self_attn"), src, device)?,
            mlp: self.mlp.load_rank_tensors(&join_path(prefix, "mlp"), src, device)?,
            input_layernorm: self.input_layernorm.load_rank_tensors(
                &join_path(prefix, "input_layernorm"),
                src,
                device,
            )?,
            post_attention_layernorm: self.post_attention_layernorm.load_rank_tensors(
                &join_path(prefix, "post_attention_layernorm"),
                src,
                device,
            )?,
        })
    }
    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        self.self_attn.save_rank_tensors(&join_path(prefix, "self_attn"), out)?;
        self.mlp.save_rank_tensors(&join_path(prefix, "mlp"), out)?;
        self.input_layernorm.save_rank_tensors(&join_path(prefix, "input_layernorm"), out)?;
        self.post_attention_layernorm.save_rank_tensors(&join_path(prefix, "post_attention_layernorm"), out)
    }
}

impl CustomModule for LlamaAttention {
    fn collect_specs(&self, prefix: &str, out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        let specs =
            vec![GqaQkvLayer::gqa_qkv_spec(&self.qkv_proj, "qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj")?];
        out.push(ModelWeightTransformationSpecs { module_fully_qualified_name: prefix.to_string(), specs });
        self.qkv_proj.collect_specs(&join_path(prefix, "qkv_proj"), out)?;
        self.o_proj.collect_specs(&join_path(prefix, "o_proj"), out)
    }
    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        self.qkv_proj.collect_parameter_metadata(&join_path(prefix, "qkv_proj"), out)?;
        self.o_proj.collect_parameter_metadata(&join_path(prefix, "o_proj"), out)
    }
    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        self.qkv_proj.collect_tp_contexts(out);
        self.o_proj.collect_tp_contexts(out);
    }
    fn load_rank_tensors(self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        Ok(Self {
            qkv_proj: self.qkv_proj.load_rank_tensors(&join_path(prefix, "qkv_proj"), src, device)?,
            o_proj: self.o_proj.load_rank_tensors(&join_path(prefix, "o_proj"), src, device)?,
            rope_theta: self.rope_theta,
            sliding_window: self.sliding_window,
        })
    }
    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        self.qkv_proj.save_rank_tensors(&join_path(prefix, "qkv_proj"), out)?;
        self.o_proj.save_rank_tensors(&join_path(prefix, "o_proj"), out)
    }
}

impl CustomModule for LlamaMlp {
    fn collect_specs(&self, prefix: &str, out: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> {
        let specs =
            vec![FusedLinearLayer::fused_linears_spec(&self.gate_up_proj, "gate_up_proj", &["gate_proj", "up_proj"])?];
        out.push(ModelWeightTransformationSpecs { module_fully_qualified_name: prefix.to_string(), specs });
        self.gate_up_proj.collect_specs(&join_path(prefix, "gate_up_proj"), out)?;
        self.down_proj.collect_specs(&join_path(prefix, "down_proj"), out)
    }
    fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
        self.gate_up_proj.collect_parameter_metadata(&join_path(prefix, "gate_up_proj"), out)?;
        self.down_proj.collect_parameter_metadata(&join_path(prefix, "down_proj"), out)
    }
    fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) {
        self.gate_up_proj.collect_tp_contexts(out);
        self.down_proj.collect_tp_contexts(out);
    }
    fn load_rank_tensors(self, prefix: &str, src: &dyn TensorSource, device: &Device) -> Result<Self> {
        Ok(Self {
            gate_up_proj: self.gate_up_proj.load_rank_tensors(&join_path(prefix, "gate_up_proj"), src, device)?,
            down_proj: self.down_proj.load_rank_tensors(&join_path(prefix, "down_proj"), src, device)?,
        })
    }
    fn save_rank_tensors(&self, prefix: &str, out: &mut StateDict) -> Result<()> {
        self.gate_up_proj.save_rank_tensors(&join_path(prefix, "gate_up_proj"), out)?;
        self.down_proj.save_rank_tensors(&join_path(prefix, "down_proj"), out)
    }
}
