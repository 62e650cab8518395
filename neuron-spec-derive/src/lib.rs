//! `#[derive(CustomModule)]`: implements `neuron_spec::spec::contract::CustomModule` for a burn model struct or enum,
//! so the model reports its transformation specs, parameter metadata and rank-local tensors under fully
//! qualified HF paths (`model.layers.3.self_attn`). Use it through `neuron_spec::CustomModule`.
//!
//! The attribute reference (what each attribute means, where it goes) and what the derive generates are
//! documented on the derive itself, [`CustomModule`](derive@CustomModule), which `neuron_spec` re-exports as
//! `neuron_spec::CustomModule` (the same text shows there). The derive does not generate constructors or a
//! `forward`: a model writes its own `new`/`forward` (see `neuron-spec-models/src/model.rs`).
//!
//! # Example
//!
//! ```
//! use neuron_spec::spec::contract::CustomModule;
//! # use neuron_spec::spec::contract::{join_path, FusedLinearLayer, GqaQkvLayer, TpContext};
//! # use neuron_spec::{FuseAxis, FusedLinearsSpec, GqaQkvColumnParallelLinearSpec, ParameterMetadata};
//! # use neuron_spec::{Result, Spec, StateDict, TensorSource};
//! # use neuron_spec::spec::ModelWeightTransformationSpecs;
//! # use neuron_spec::spec::contract::Device;
//! # use indexmap::IndexMap;
//! #
//! # /// A stand-in for a real parallel layer: one `weight`.
//! # struct Layer;
//! # impl CustomModule for Layer {
//! #     fn collect_specs(&self, _: &str, _: &mut Vec<ModelWeightTransformationSpecs>) -> Result<()> { Ok(()) }
//! #     fn collect_parameter_metadata(&self, prefix: &str, out: &mut IndexMap<String, ParameterMetadata>) -> Result<()> {
//! #         out.insert(join_path(prefix, "weight"), ParameterMetadata::replicated());
//! #         Ok(())
//! #     }
//! #     fn collect_tp_contexts(&self, out: &mut Vec<TpContext>) { out.push(TpContext { size: 1, rank: 0 }) }
//! #     fn load_rank_tensors(self, _: &str, _: &dyn TensorSource, _: &Device) -> Result<Self> { Ok(self) }
//! #     fn save_rank_tensors(&self, _: &str, _: &mut StateDict) -> Result<()> { Ok(()) }
//! # }
//! # impl FusedLinearLayer for Layer {
//! #     fn fused_linears_spec(&self, fused: &str, linears: &[&str]) -> Result<Spec> {
//! #         Ok(Spec::FusedLinears(FusedLinearsSpec {
//! #             fused_linear_name: fused.into(),
//! #             linear_names: linears.iter().map(|s| s.to_string()).collect(),
//! #             bias: false,
//! #             fuse_axis: FuseAxis::Column,
//! #             original_dims: vec![16; linears.len()],
//! #             tp_size: 1,
//! #             peft_type: None, packed_linear_name: None,
//! #         }))
//! #     }
//! # }
//! # impl GqaQkvLayer for Layer {
//! #     fn gqa_qkv_spec(&self, name: &str, q: &str, k: &str, v: &str, o: &str) -> Result<Spec> {
//! #         let mut s = GqaQkvColumnParallelLinearSpec::new(4, 2, 4, false, false, false, 1)?;
//! #         s.gqa_qkv_projection_name = name.into();
//! #         (s.query_projection_name, s.key_projection_name) = (q.into(), k.into());
//! #         (s.value_projection_name, s.output_projection_name) = (v.into(), o.into());
//! #         Ok(Spec::GqaQkv(s))
//! #     }
//! # }
//! #[derive(neuron_spec::CustomModule)]
//! struct Attention {
//!     #[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]
//!     qkv_proj: Layer,
//!     o_proj: Layer,
//! }
//!
//! #[derive(neuron_spec::CustomModule)]
//! struct Mlp {
//!     #[fused_linears(gate_proj, up_proj)]
//!     gate_up_proj: Layer,
//!     down_proj: Layer,
//! }
//!
//! /// A layer choice: the variant present reports its module's paths.
//! #[derive(neuron_spec::CustomModule)]
//! enum FeedForward {
//!     Fused(Mlp),
//!     Plain(Layer),
//! }
//!
//! #[derive(neuron_spec::CustomModule)]
//! struct Decoder {
//!     #[hf(rename = "self_attn")]
//!     attention: Attention,
//!     mlp: FeedForward,
//!     /// Not a module: left out of the HF tree.
//!     num_heads: usize,
//! }
//!
//! #[derive(neuron_spec::CustomModule)]
//! struct Model {
//!     layers: Vec<Decoder>,
//! }
//!
//! #[derive(neuron_spec::CustomModule)]
//! struct ForCausalLm {
//!     model: Model,
//!     lm_head: Layer,
//! }
//!
//! let decoder = || Decoder {
//!     attention: Attention { qkv_proj: Layer, o_proj: Layer },
//!     mlp: FeedForward::Fused(Mlp { gate_up_proj: Layer, down_proj: Layer }),
//!     num_heads: 4,
//! };
//! let lm = ForCausalLm { model: Model { layers: vec![decoder(), decoder()] }, lm_head: Layer };
//!
//! let specs = lm.transformation_specs()?;
//! let paths: Vec<&str> = specs.iter().map(|s| s.module_fully_qualified_name.as_str()).collect();
//! assert_eq!(paths, [
//!     "model.layers.0.self_attn",
//!     "model.layers.0.mlp",
//!     "model.layers.1.self_attn",
//!     "model.layers.1.mlp",
//! ]);
//!
//! let metadata = lm.create_parameter_metadata()?;
//! assert!(metadata.parameters.contains_key("model.layers.1.self_attn.qkv_proj.weight"));
//! assert!(metadata.parameters.contains_key("lm_head.weight"));
//!
//! /// A pipeline stage: its layers under the whole model's paths.
//! #[derive(neuron_spec::CustomModule)]
//! struct Stage {
//!     #[hf(rename = "model.layers", index_offset = first_layer)]
//!     layers: Vec<Decoder>,
//!     first_layer: usize,
//! }
//!
//! let stage = Stage { layers: vec![decoder()], first_layer: 1 };
//! assert_eq!(stage.transformation_specs()?[0].module_fully_qualified_name, "model.layers.1.self_attn");
//! # Ok::<(), neuron_spec::Error>(())
//! ```

mod ast;
mod errors;
mod expand;
mod parse;
mod validate;

use proc_macro::TokenStream;
use syn::DeriveInput;

/// Derives `neuron_spec::spec::contract::CustomModule` for a burn model struct or enum: the model reports its
/// transformation specs, parameter metadata and rank-local tensors under fully qualified HF paths. A worked
/// example is in this crate's docs; it generates no constructor and no `forward` (the model's own methods).
///
/// # Attributes
///
/// On struct fields (all optional; numbers such as head counts never appear here, they come from the layers):
///
/// - `#[fused_linears(gate_proj, up_proj)]`: the field is one layer standing for these HF linears, in
///   fusing order (at least one, each once). Its type implements `FusedLinearLayer`.
/// - `#[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]`: the field is a GQA q/k/v layer
///   replacing the HF `q`/`k`/`v` projections; `o` is the HF name of the sibling field holding the output
///   projection. All four keys are required, each once. Its type implements `GqaQkvLayer`.
/// - `#[gqa_qkv(packed = qkv_proj, o = o_proj)]`: the same layer where the HF checkpoint stores q, k and v as
///   one tensor (Phi-3's `qkv_proj`: q rows, then k, then v).
/// - `#[fused_linears(packed = gate_up_proj)]`: the HF checkpoint stores the members as one tensor, in order
///   along the fuse axis; their number and sizes come from the layer (`with_fused_dims`).
/// - `#[hf(rename = "self_attn")]`: the field's HF path when it differs from the Rust name; dotted
///   (`"model.norm"`) for a deeper path, with no empty segment. A spec field's name is one segment.
/// - `#[hf(index_offset = first_layer)]`: on a `Vec<..>` field, element `i` is at `name.<first_layer + i>`
///   (a pipeline stage's layers under their global names); the offset is a sibling field of primitive
///   integer type.
/// - `#[hf(skip)]`: the field is not part of the HF tree.
///
/// A spec attribute sits on a field holding one layer (a plain path type, not `Vec<..>`, `Option<..>` or
/// a primitive), at most one per field. Fields burn's `Module` derive does not treat as modules are left
/// out of the HF tree without `#[hf(skip)]`: those marked `#[module(skip)]` and those of a type burn
/// classifies as a constant (`usize`, `String`, `Vec<f32>`, ...).
///
/// # Enums
///
/// Each variant holds exactly one module, as a one-field tuple variant (`Gqa(GqaAttention)`). Every method
/// delegates to the variant present, under the same prefix: the variant adds no path segment. The
/// attributes above mean nothing on an enum, a variant or a variant's field, and are errors there.
///
/// # What it generates
///
/// Every method recurses into the fields of the HF tree, in declaration order, under
/// `join_path(prefix, hf_name)`. A struct with spec fields also pushes one
/// `ModelWeightTransformationSpecs` for itself (path = its prefix, specs in field order) *before* its
/// children's, so a model lists `model.layers.0.self_attn` before anything nested deeper.
/// `load_rank_tensors` rebuilds the struct, loading the HF fields and moving the others over unchanged.
///
/// A generic struct gets a `CustomModule` bound (and the spec trait, for a spec field) on each HF field
/// whose type mentions a type parameter; a generic enum, on each such variant type.
///
/// Every misuse is a compile error pointing at the offending token, and all of them are reported at once.
///
#[proc_macro_derive(CustomModule, attributes(fused_linears, gqa_qkv, hf))]
pub fn derive_custom_module(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    derive(&input).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// parse → validate → expand; errors from the first two phases are reported together.
fn derive(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let mut errors = errors::Errors::default();
    let parsed = parse::parse(input, &mut errors)?;
    validate::validate(&parsed, &mut errors);
    errors.finish()?;
    Ok(expand::expand(&parsed))
}
