//! [`ast`](crate::ast) → the `CustomModule` impl.
//!
//! Every method walks the fields of the HF tree in declaration order with `join_path(prefix, hf_name)`.
//! `collect_specs` pushes the struct's own entry before its children's, so a model lists
//! `model.layers.0.self_attn` before anything nested under it.

use crate::ast::{name_of, Field, SpecKind, Struct};
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::Ident;

pub(crate) fn expand(s: &Struct) -> TokenStream {
    let name = s.ident;
    let live: Vec<&Field> = s.fields.iter().filter(|f| f.skip.is_none()).collect();
    let (impl_generics, ty_generics, where_clause) = s.generics.split_for_impl();
    let predicates = where_clause
        .map(|w| w.predicates.iter().collect::<Vec<_>>())
        .unwrap_or_default();
    let bounds = field_bounds(s, &live);

    // Mixed-site names cannot clash with the user's items (a `const prefix` would turn the parameter
    // into a pattern); `_` where a struct without HF fields leaves a parameter unused.
    let used = |name: &str, is_used: bool| {
        if is_used {
            Ident::new(name, Span::mixed_site()).into_token_stream()
        } else {
            quote!(_)
        }
    };
    // Spec fields are HF fields, so a struct with specs always uses every parameter.
    let has_live = !live.is_empty();
    let prefix = used("prefix", has_live);
    let out = used("out", has_live);
    let src = used("src", has_live);
    let device = used("device", has_live);
    let prefix_in_children = Ident::new("prefix", Span::mixed_site());

    let trait_ = quote!(::neuron_spec::module::CustomModule);
    let calls = |method: &str,
                 receiver: &dyn Fn(&Ident) -> TokenStream,
                 rest: TokenStream|
     -> Vec<TokenStream> {
        let method = Ident::new(method, Span::call_site());
        live.iter()
            .map(|f| {
                let ty = f.ty;
                let hf = f.hf_name();
                let recv = receiver(f.member);
                quote_spanned! {ty.span()=>
                    <#ty as #trait_>::#method(#recv, &::neuron_spec::module::join_path(#prefix_in_children, #hf), #rest)
                }
            })
            .collect()
    };
    let by_ref = |m: &Ident| quote!(&self.#m);
    let by_value = |m: &Ident| quote!(self.#m);
    let out_ident = Ident::new("out", Span::mixed_site());
    let src_ident = Ident::new("src", Span::mixed_site());
    let device_ident = Ident::new("device", Span::mixed_site());

    let collect_specs = calls("collect_specs", &by_ref, quote!(#out_ident));
    let collect_metadata = calls("collect_parameter_metadata", &by_ref, quote!(#out_ident));
    let save = calls("save_rank_tensors", &by_ref, quote!(#out_ident));
    let loaded = calls(
        "load_rank_tensors",
        &by_value,
        quote!(#src_ident, #device_ident),
    );
    let tp_contexts = live.iter().map(|f| {
        let (ty, m) = (f.ty, f.member);
        quote_spanned!(ty.span()=> <#ty as #trait_>::collect_tp_contexts(&self.#m, #out_ident))
    });
    // Fields out of the HF tree are moved over untouched.
    let rebuilt = s.fields.iter().map(|f| {
        let m = f.member;
        match live.iter().position(|l| l.member == m) {
            Some(i) => {
                let call = &loaded[i];
                quote!(#m: #call?)
            }
            None => quote!(#m: self.#m),
        }
    });

    let own_specs = own_specs(&live);
    let push_own = if own_specs.is_empty() {
        quote!()
    } else {
        let specs = Ident::new("specs", Span::mixed_site());
        quote! {
            let #specs = ::std::vec![#(#own_specs),*];
            #out_ident.push(::neuron_spec::specs::ModelWeightTransformationSpecs {
                module_fully_qualified_name: ::std::string::ToString::to_string(#prefix_in_children),
                specs: #specs,
            });
        }
    };

    quote! {
        #[automatically_derived]
        impl #impl_generics #trait_ for #name #ty_generics where #(#predicates,)* #(#bounds,)* {
            fn collect_specs(
                &self,
                #prefix: &str,
                #out: &mut ::std::vec::Vec<::neuron_spec::specs::ModelWeightTransformationSpecs>,
            ) -> ::neuron_spec::Result<()> {
                #push_own
                #(#collect_specs?;)*
                ::core::result::Result::Ok(())
            }

            fn collect_parameter_metadata(
                &self,
                #prefix: &str,
                #out: &mut ::neuron_spec::__private::IndexMap<::std::string::String, ::neuron_spec::metadata::ParameterMetadata>,
            ) -> ::neuron_spec::Result<()> {
                #(#collect_metadata?;)*
                ::core::result::Result::Ok(())
            }

            fn collect_tp_contexts(&self, #out: &mut ::std::vec::Vec<::neuron_spec::module::TpContext>) {
                #(#tp_contexts;)*
            }

            fn load_rank_tensors(
                self,
                #prefix: &str,
                #src: &dyn ::neuron_spec::plan::TensorSource,
                #device: &::neuron_spec::__private::Device,
            ) -> ::neuron_spec::Result<Self> {
                ::core::result::Result::Ok(Self { #(#rebuilt,)* })
            }

            fn save_rank_tensors(
                &self,
                #prefix: &str,
                #out: &mut ::neuron_spec::tensor::StateDict,
            ) -> ::neuron_spec::Result<()> {
                #(#save?;)*
                ::core::result::Result::Ok(())
            }
        }
    }
}

/// The spec expressions of this struct's own entry, in field order.
fn own_specs(live: &[&Field]) -> Vec<TokenStream> {
    live.iter()
        .flat_map(|f| f.specs.iter().map(move |spec| (f, spec)))
        .map(|(f, spec)| {
            let (ty, m, hf) = (f.ty, f.member, f.hf_name());
            match &spec.kind {
                SpecKind::FusedLinears(names) => {
                    let names = names.iter().map(name_of);
                    quote_spanned! {ty.span()=>
                        <#ty as ::neuron_spec::module::FusedLinearLayer>::fused_linears_spec(&self.#m, #hf, &[#(#names),*])?
                    }
                }
                SpecKind::GqaQkv(gqa) => {
                    let [q, k, v, o] = gqa.entries().map(|(_, ident)| name_of(ident));
                    quote_spanned! {ty.span()=>
                        <#ty as ::neuron_spec::module::GqaQkvLayer>::gqa_qkv_spec(&self.#m, #hf, #q, #k, #v, #o)?
                    }
                }
            }
        })
        .collect()
}

/// For a generic struct, the bounds its fields need: `CustomModule` for every HF field whose type
/// mentions a type parameter, plus the spec trait of a spec field. Concrete field types need none: the
/// calls themselves check them.
fn field_bounds(s: &Struct, live: &[&Field]) -> Vec<TokenStream> {
    let params: Vec<&Ident> = s.generics.type_params().map(|p| &p.ident).collect();
    if params.is_empty() {
        return Vec::new();
    }
    let mut bounds = Vec::new();
    for f in live
        .iter()
        .filter(|f| mentions(f.ty.to_token_stream(), &params))
    {
        let ty = f.ty;
        bounds.push(quote!(#ty: ::neuron_spec::module::CustomModule));
        for spec in &f.specs {
            bounds.push(match spec.kind {
                SpecKind::FusedLinears(_) => quote!(#ty: ::neuron_spec::module::FusedLinearLayer),
                SpecKind::GqaQkv(_) => quote!(#ty: ::neuron_spec::module::GqaQkvLayer),
            });
        }
    }
    bounds
}

/// Whether the tokens name one of `params` (a token scan: a false positive only adds a bound the field
/// needs anyway).
fn mentions(tokens: TokenStream, params: &[&Ident]) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => params.iter().any(|p| **p == i),
        TokenTree::Group(g) => mentions(g.stream(), params),
        _ => false,
    })
}
