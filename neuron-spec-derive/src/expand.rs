//! [`ast`](crate::ast) → the `CustomModule` impl.
//!
//! Every method walks the fields of the HF tree in declaration order with `join_path(prefix, hf_name)`.
//! `collect_specs` pushes the struct's own entry before its children's, so a model lists
//! `model.layers.0.self_attn` before anything nested under it.

use crate::ast::{name_of, Field, Qkv, SpecKind, Struct};
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::Ident;

pub(crate) fn expand(s: &Struct) -> TokenStream {
    let name = s.ident;
    let live: Vec<&Field> = s.fields.iter().filter(|f| f.skip.is_none()).collect();
    let (impl_generics, ty_generics, where_clause) = s.generics.split_for_impl();
    let predicates = where_clause.map(|w| w.predicates.iter().collect::<Vec<_>>()).unwrap_or_default();
    let bounds = field_bounds(s, &live);
    let trait_ = quote!(::neuron_spec::module::CustomModule);

    // Parameters and locals are `__`-prefixed because an identifier pattern resolves to a constant of
    // that name in scope (hygiene does not prevent it): a user's `const prefix` would make the parameter
    // a pattern. Mixed-site spans keep them apart from the user's own locals.
    let local = |name: &str| Ident::new(name, Span::mixed_site());
    let (prefix, out, src, device, specs) =
        (local("__prefix"), local("__out"), local("__src"), local("__device"), local("__specs"));
    // A struct without HF fields uses no parameter; `_` keeps them from being reported unused.
    let param = |ident: &Ident| {
        if live.is_empty() {
            quote!(_)
        } else {
            ident.to_token_stream()
        }
    };
    let (prefix_param, out_param, src_param, device_param) = (param(&prefix), param(&out), param(&src), param(&device));

    // `<FieldType as CustomModule>::method(args)`, spanned on the field type so an unsatisfied bound
    // points at it.
    let call = |f: &Field, method: &str, receiver: TokenStream, rest: TokenStream| {
        let (ty, hf) = (f.ty, f.hf_name());
        let method = Ident::new(method, Span::call_site());
        quote_spanned! {ty.span()=>
            <#ty as #trait_>::#method(#receiver, &::neuron_spec::module::join_path(#prefix, #hf), #rest)
        }
    };
    let by_ref = |f: &Field| {
        let m = f.member;
        quote!(&self.#m)
    };
    let collect_specs = live.iter().map(|f| call(f, "collect_specs", by_ref(f), quote!(#out)));
    let collect_metadata = live.iter().map(|f| call(f, "collect_parameter_metadata", by_ref(f), quote!(#out)));
    let save = live.iter().map(|f| call(f, "save_rank_tensors", by_ref(f), quote!(#out)));
    let tp_contexts = live.iter().map(|f| {
        let (ty, m) = (f.ty, f.member);
        quote_spanned!(ty.span()=> <#ty as #trait_>::collect_tp_contexts(&self.#m, #out))
    });
    // HF fields are loaded; the others are moved over untouched.
    let rebuilt = s.fields.iter().map(|f| {
        let m = f.member;
        if f.skip.is_some() {
            quote!(#m: self.#m)
        } else {
            let load = call(f, "load_rank_tensors", quote!(self.#m), quote!(#src, #device));
            quote!(#m: #load?)
        }
    });

    let own_specs = own_specs(&live);
    let push_own = if own_specs.is_empty() {
        quote!()
    } else {
        quote! {
            let #specs = ::std::vec![#(#own_specs),*];
            #out.push(::neuron_spec::specs::ModelWeightTransformationSpecs {
                module_fully_qualified_name: ::std::string::ToString::to_string(#prefix),
                specs: #specs,
            });
        }
    };

    quote! {
        #[automatically_derived]
        impl #impl_generics #trait_ for #name #ty_generics where #(#predicates,)* #(#bounds,)* {
            fn collect_specs(
                &self,
                #prefix_param: &str,
                #out_param: &mut ::std::vec::Vec<::neuron_spec::specs::ModelWeightTransformationSpecs>,
            ) -> ::neuron_spec::Result<()> {
                #push_own
                #(#collect_specs?;)*
                ::core::result::Result::Ok(())
            }

            fn collect_parameter_metadata(
                &self,
                #prefix_param: &str,
                #out_param: &mut ::neuron_spec::__private::IndexMap<
                    ::std::string::String,
                    ::neuron_spec::metadata::ParameterMetadata,
                >,
            ) -> ::neuron_spec::Result<()> {
                #(#collect_metadata?;)*
                ::core::result::Result::Ok(())
            }

            fn collect_tp_contexts(&self, #out_param: &mut ::std::vec::Vec<::neuron_spec::module::TpContext>) {
                #(#tp_contexts;)*
            }

            fn load_rank_tensors(
                self,
                #prefix_param: &str,
                #src_param: &dyn ::neuron_spec::plan::TensorSource,
                #device_param: &::neuron_spec::__private::Device,
            ) -> ::neuron_spec::Result<Self> {
                ::core::result::Result::Ok(Self { #(#rebuilt,)* })
            }

            fn save_rank_tensors(
                &self,
                #prefix_param: &str,
                #out_param: &mut ::neuron_spec::tensor::StateDict,
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
                SpecKind::FusedPacked(p) => {
                    let p = name_of(p);
                    quote_spanned! {ty.span()=>
                        ::neuron_spec::specs::Spec::with_packed_source(
                            <#ty as ::neuron_spec::module::FusedLinearLayer>::fused_linears_spec(&self.#m, #hf, &[])?,
                            #p,
                        )?
                    }
                }
                SpecKind::GqaQkv(gqa) => {
                    let o = name_of(&gqa.o);
                    match &gqa.qkv {
                        Qkv::Separate { q, k, v } => {
                            let [q, k, v] = [q, k, v].map(name_of);
                            quote_spanned! {ty.span()=>
                                <#ty as ::neuron_spec::module::GqaQkvLayer>::gqa_qkv_spec(&self.#m, #hf, #q, #k, #v, #o)?
                            }
                        }
                        Qkv::Packed(p) => {
                            let p = name_of(p);
                            quote_spanned! {ty.span()=>
                                ::neuron_spec::specs::Spec::with_packed_source(
                                    <#ty as ::neuron_spec::module::GqaQkvLayer>::gqa_qkv_spec(&self.#m, #hf, #p, #p, #p, #o)?,
                                    #p,
                                )?
                            }
                        }
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
    for f in live.iter().filter(|f| mentions(f.ty.to_token_stream(), &params)) {
        let ty = f.ty;
        bounds.push(quote!(#ty: ::neuron_spec::module::CustomModule));
        for spec in &f.specs {
            bounds.push(match spec.kind {
                SpecKind::FusedLinears(_) | SpecKind::FusedPacked(_) => {
                    quote!(#ty: ::neuron_spec::module::FusedLinearLayer)
                }
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
