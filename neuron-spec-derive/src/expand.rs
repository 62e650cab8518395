//! [`ast`](crate::ast) → the `CustomModule` impl.
//!
//! A struct's methods walk the fields of the HF tree in declaration order with `join_path(prefix, hf_name)`
//! (an `#[hf(index_offset)]` field: each element under `hf_name.<offset + i>`). `collect_specs` pushes the
//! struct's own entry before its children's, so a model lists `model.layers.0.self_attn` before anything
//! nested under it. An enum's methods delegate to the variant present, under the same prefix.

use crate::ast::{name_of, Enum, Field, Input, Qkv, SpecAttr, SpecKind, Struct, Variant};
use crate::parse::vec_element;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Generics, Ident, Type};

pub(crate) fn expand(input: &Input) -> TokenStream {
    match input {
        Input::Struct(s) => expand_struct(s),
        Input::Enum(e) => expand_enum(e),
    }
}

/// The parameters and locals of the generated methods.
///
/// They are `__`-prefixed because an identifier pattern resolves to a constant of that name in scope
/// (hygiene does not prevent it): a user's `const prefix` would make the parameter a pattern. Mixed-site
/// spans keep them apart from the user's own locals.
struct Locals {
    prefix: Ident,
    out: Ident,
    src: Ident,
    device: Ident,
    /// The struct's own specs.
    specs: Ident,
    /// A variant's module, or an element of an `#[hf(index_offset)]` list.
    item: Ident,
    /// The element's position in the list, and the list's offset (copied out of `self`).
    index: Ident,
    offset: Ident,
}

impl Locals {
    fn new() -> Self {
        let local = |name: &str| Ident::new(name, Span::mixed_site());
        Self {
            prefix: local("__prefix"),
            out: local("__out"),
            src: local("__src"),
            device: local("__device"),
            specs: local("__specs"),
            item: local("__item"),
            index: local("__index"),
            offset: local("__offset"),
        }
    }
}

/// The bodies of the five `CustomModule` methods.
struct Bodies {
    collect_specs: TokenStream,
    collect_metadata: TokenStream,
    tp_contexts: TokenStream,
    load: TokenStream,
    save: TokenStream,
}

fn trait_path() -> TokenStream {
    quote!(::neuron_spec::spec::contract::CustomModule)
}

/// The impl around `bodies`; `uses_params` is false when the bodies never read their parameters (they are
/// then named `_`, so they are not reported unused).
fn impl_block(
    name: &Ident,
    generics: &Generics,
    bounds: &[TokenStream],
    locals: &Locals,
    uses_params: bool,
    bodies: Bodies,
) -> TokenStream {
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let predicates = where_clause.map(|w| w.predicates.iter().collect::<Vec<_>>()).unwrap_or_default();
    let trait_ = trait_path();
    let param = |ident: &Ident| if uses_params { ident.to_token_stream() } else { quote!(_) };
    let (prefix, out, src, device) =
        (param(&locals.prefix), param(&locals.out), param(&locals.src), param(&locals.device));
    let Bodies { collect_specs, collect_metadata, tp_contexts, load, save } = bodies;
    quote! {
        #[automatically_derived]
        impl #impl_generics #trait_ for #name #ty_generics where #(#predicates,)* #(#bounds,)* {
            fn collect_specs(
                &self,
                #prefix: &str,
                #out: &mut ::std::vec::Vec<::neuron_spec::spec::ModelWeightTransformationSpecs>,
            ) -> ::neuron_spec::Result<()> {
                #collect_specs
            }

            fn collect_parameter_metadata(
                &self,
                #prefix: &str,
                #out: &mut ::neuron_spec::__private::IndexMap<
                    ::std::string::String,
                    ::neuron_spec::spec::metadata::ParameterMetadata,
                >,
            ) -> ::neuron_spec::Result<()> {
                #collect_metadata
            }

            fn collect_tp_contexts(&self, #out: &mut ::std::vec::Vec<::neuron_spec::spec::contract::TpContext>) {
                #tp_contexts
            }

            fn load_rank_tensors(
                self,
                #prefix: &str,
                #src: &dyn ::neuron_spec::tensor::TensorSource,
                #device: &::neuron_spec::__private::Device,
            ) -> ::neuron_spec::Result<Self> {
                #load
            }

            fn save_rank_tensors(
                &self,
                #prefix: &str,
                #out: &mut ::neuron_spec::tensor::StateDict,
            ) -> ::neuron_spec::Result<()> {
                #save
            }
        }
    }
}

/// `<Type as CustomModule>::method(receiver, args)`, spanned on the type so an unsatisfied bound points at it.
fn call(ty: &Type, method: &str, receiver: TokenStream, args: TokenStream) -> TokenStream {
    let trait_ = trait_path();
    let method = Ident::new(method, Span::call_site());
    quote_spanned!(ty.span()=> <#ty as #trait_>::#method(#receiver, #args))
}

/// Each variant delegates every method to its module, under the same prefix.
fn expand_enum(e: &Enum) -> TokenStream {
    let l = Locals::new();
    let (prefix, out, src, device, item) = (&l.prefix, &l.out, &l.src, &l.device, &l.item);
    // `match self { Self::V(item) => <expression of item and its type>, .. }`
    let arms = |arm: &dyn Fn(&Variant) -> TokenStream| {
        let arms = e.variants.iter().map(|v| {
            let (ident, body) = (v.ident, arm(v));
            quote!(Self::#ident(#item) => #body)
        });
        quote!(match self { #(#arms,)* })
    };
    let by_ref =
        |method: &'static str| move |v: &Variant| call(v.ty, method, item.to_token_stream(), quote!(#prefix, #out));
    let bodies = Bodies {
        collect_specs: arms(&by_ref("collect_specs")),
        collect_metadata: arms(&by_ref("collect_parameter_metadata")),
        tp_contexts: arms(&|v| call(v.ty, "collect_tp_contexts", item.to_token_stream(), out.to_token_stream())),
        load: {
            let load = arms(&|v| {
                let (ident, load) =
                    (v.ident, call(v.ty, "load_rank_tensors", quote!(#item), quote!(#prefix, #src, #device)));
                quote!(Self::#ident(#load?))
            });
            quote!(::core::result::Result::Ok(#load))
        },
        save: arms(&by_ref("save_rank_tensors")),
    };
    let bounds = bounds(e.generics, e.variants.iter().map(|v| (v.ty, &[][..])));
    impl_block(e.ident, e.generics, &bounds, &l, !e.variants.is_empty(), bodies)
}

/// Every method walks the HF fields in declaration order.
fn expand_struct(s: &Struct) -> TokenStream {
    let live: Vec<&Field> = s.fields.iter().filter(|f| f.skip.is_none()).collect();
    let l = Locals::new();
    let (prefix, out, src, device, specs) = (&l.prefix, &l.out, &l.src, &l.device, &l.specs);

    // A by-reference call of `method` on each field, as statements.
    let visit = |method: &'static str| {
        let visits = live.iter().map(|f| {
            let m = f.member;
            match &f.index_offset {
                None => {
                    let path = path_of(f, prefix);
                    let call = call(f.ty, method, quote!(&self.#m), quote!(&#path, #out));
                    quote!(#call?;)
                }
                Some(offset) => {
                    let (item, index) = (&l.item, &l.index);
                    let path = indexed_path_of(s, f, offset, quote!(self.#offset), &l);
                    let call = element_call(f, method, quote!(#item), quote!(&#path?, #out));
                    let items = quote!(::core::iter::IntoIterator::into_iter(&self.#m));
                    quote! {
                        for (#index, #item) in ::core::iter::Iterator::enumerate(#items) {
                            #call?;
                        }
                    }
                }
            }
        });
        quote!(#(#visits)* ::core::result::Result::Ok(()))
    };
    let tp_contexts = live.iter().map(|f| {
        let m = f.member;
        call(f.ty, "collect_tp_contexts", quote!(&self.#m), out.to_token_stream())
    });
    // HF fields are loaded; the others are moved over unchanged.
    let rebuilt = s.fields.iter().map(|f| {
        let m = f.member;
        match (&f.skip, &f.index_offset) {
            (Some(_), _) => quote!(#m: self.#m),
            (None, None) => {
                let path = path_of(f, prefix);
                let load = call(f.ty, "load_rank_tensors", quote!(self.#m), quote!(&#path, #src, #device));
                quote!(#m: #load?)
            }
            (None, Some(offset)) => {
                let (item, index) = (&l.item, &l.index);
                // The offset is copied out first: the closure must not borrow a partly moved `self`.
                let value = &l.offset;
                let path = indexed_path_of(s, f, offset, value.to_token_stream(), &l);
                let load = element_call(f, "load_rank_tensors", quote!(#item), quote!(&#path?, #src, #device));
                quote! {
                    #m: {
                        let #value = self.#offset;
                        ::core::iter::Iterator::collect::<::neuron_spec::Result<_>>(::core::iter::Iterator::map(
                            ::core::iter::Iterator::enumerate(::core::iter::IntoIterator::into_iter(self.#m)),
                            |(#index, #item)| #load,
                        ))?
                    }
                }
            }
        }
    });

    let own_specs = own_specs(&live);
    let push_own = if own_specs.is_empty() {
        quote!()
    } else {
        quote! {
            let #specs = ::std::vec![#(#own_specs),*];
            #out.push(::neuron_spec::spec::ModelWeightTransformationSpecs {
                module_fully_qualified_name: ::std::string::ToString::to_string(#prefix),
                specs: #specs,
            });
        }
    };
    let collect_specs = visit("collect_specs");
    let bodies = Bodies {
        collect_specs: quote!(#push_own #collect_specs),
        collect_metadata: visit("collect_parameter_metadata"),
        tp_contexts: quote!(#(#tp_contexts;)*),
        load: quote!(::core::result::Result::Ok(Self { #(#rebuilt,)* })),
        save: visit("save_rank_tensors"),
    };
    let bounds = bounds(s.generics, live.iter().map(|f| (bound_type(f), &f.specs[..])));
    impl_block(s.ident, s.generics, &bounds, &l, !live.is_empty(), bodies)
}

/// `join_path(prefix, "hf.name")`.
fn path_of(f: &Field, prefix: &Ident) -> TokenStream {
    let hf = f.hf_name();
    quote!(::neuron_spec::spec::contract::join_path(#prefix, #hf))
}

/// The `Result` of `prefix.hf.name.<offset + index>` for an `#[hf(index_offset = offset)]` field, where
/// `value` reads the offset field.
fn indexed_path_of(s: &Struct, f: &Field, offset: &Ident, value: TokenStream, l: &Locals) -> TokenStream {
    let (hf, prefix, index) = (f.hf_name(), &l.prefix, &l.index);
    let field = format!("{}.{}", s.ident, name_of(offset));
    quote!(::neuron_spec::spec::contract::offset_index_path(#prefix, #hf, #value, #index, #field))
}

/// A call of `method` on an element of a `Vec` field, spanned on the field type.
fn element_call(f: &Field, method: &str, receiver: TokenStream, args: TokenStream) -> TokenStream {
    match vec_element(f.ty) {
        Some(elem) => call(elem, method, receiver, args),
        // `validate` rejects an `index_offset` field that is not a `Vec<..>`.
        None => {
            let (trait_, method) = (trait_path(), Ident::new(method, Span::call_site()));
            quote_spanned!(f.ty.span()=> #trait_::#method(#receiver, #args))
        }
    }
}

/// The type a field's methods are called on: its element type if `#[hf(index_offset)]` walks it.
fn bound_type<'a>(f: &Field<'a>) -> &'a Type {
    match f.index_offset {
        Some(_) => vec_element(f.ty).unwrap_or(f.ty),
        None => f.ty,
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
                        <#ty as ::neuron_spec::spec::contract::FusedLinearLayer>::fused_linears_spec(&self.#m, #hf, &[#(#names),*])?
                    }
                }
                SpecKind::FusedPacked(p) => {
                    let p = name_of(p);
                    quote_spanned! {ty.span()=>
                        ::neuron_spec::spec::Spec::with_packed_source(
                            <#ty as ::neuron_spec::spec::contract::FusedLinearLayer>::fused_linears_spec(&self.#m, #hf, &[])?,
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
                                <#ty as ::neuron_spec::spec::contract::GqaQkvLayer>::gqa_qkv_spec(&self.#m, #hf, #q, #k, #v, #o)?
                            }
                        }
                        Qkv::Packed(p) => {
                            let p = name_of(p);
                            quote_spanned! {ty.span()=>
                                ::neuron_spec::spec::Spec::with_packed_source(
                                    <#ty as ::neuron_spec::spec::contract::GqaQkvLayer>::gqa_qkv_spec(&self.#m, #hf, #p, #p, #p, #o)?,
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

/// For a generic type, the bounds its parts need: `CustomModule` for every part type (field or variant) that
/// mentions a type parameter, plus the spec trait of a spec field. Concrete types need none: the calls
/// themselves check them.
fn bounds<'a>(generics: &Generics, parts: impl Iterator<Item = (&'a Type, &'a [SpecAttr])>) -> Vec<TokenStream> {
    let params: Vec<&Ident> = generics.type_params().map(|p| &p.ident).collect();
    if params.is_empty() {
        return Vec::new();
    }
    let mut bounds = Vec::new();
    for (ty, specs) in parts.filter(|(ty, _)| mentions(ty.to_token_stream(), &params)) {
        bounds.push(quote!(#ty: ::neuron_spec::spec::contract::CustomModule));
        for spec in specs {
            bounds.push(match spec.kind {
                SpecKind::FusedLinears(_) | SpecKind::FusedPacked(_) => {
                    quote!(#ty: ::neuron_spec::spec::contract::FusedLinearLayer)
                }
                SpecKind::GqaQkv(_) => quote!(#ty: ::neuron_spec::spec::contract::GqaQkvLayer),
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
