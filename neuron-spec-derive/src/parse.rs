//! syn → [`ast`](crate::ast): the grammar of the attributes.
//!
//! A shape the derive cannot handle at all (union, tuple struct) stops here. Anything wrong inside an
//! attribute, or with one enum variant, is recorded and parsing goes on, so `validate` still sees the rest.

use crate::ast::{name_of, Enum, Field, GqaQkv, Input, Qkv, Skip, SpecAttr, SpecKind, Struct, Variant};
use crate::errors::Errors;
use quote::ToTokens;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{
    Attribute, Data, DataEnum, DeriveInput, Expr, ExprLit, ExprPath, Fields, Ident, Lit, LitStr, Meta, MetaList, Token,
    Type,
};

/// The attributes this derive owns (declared as helpers on the derive).
const HELPERS: [&str; 3] = ["fused_linears", "gqa_qkv", "hf"];

/// Parses the input; `Err` only when it is neither a struct with named fields (or a unit struct) nor an enum.
pub(crate) fn parse<'a>(input: &'a DeriveInput, errors: &mut Errors) -> syn::Result<Input<'a>> {
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => named.named.iter().collect(),
            Fields::Unit => Vec::new(),
            Fields::Unnamed(unnamed) => {
                return Err(syn::Error::new_spanned(
                    unnamed,
                    "#[derive(CustomModule)] needs named fields: HF paths are built from field names, \
                     and a tuple struct has none",
                ))
            }
        },
        Data::Enum(data) => return Ok(Input::Enum(parse_enum(input, data, errors))),
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span,
                "#[derive(CustomModule)] supports structs and enums: a union has no fixed HF module layout",
            ))
        }
    };

    for attr in helpers(&input.attrs) {
        errors.push(syn::Error::new_spanned(
            attr.path(),
            "this attribute goes on a field of the struct, not on the struct itself",
        ));
    }

    let fields = fields
        .into_iter()
        .filter_map(|field| {
            // Named fields always have an ident; nothing to report if not.
            let member = field.ident.as_ref()?;
            Some(parse_field(member, &field.ty, &field.attrs, errors))
        })
        .collect();
    Ok(Input::Struct(Struct { ident: &input.ident, generics: &input.generics, fields }))
}

/// Records this derive's attributes on an enum, a variant or a variant's field (`place`): none means anything there.
fn reject_on_enum(attrs: &[Attribute], place: &str, errors: &mut Errors) {
    for attr in helpers(attrs) {
        errors.push(syn::Error::new_spanned(
            attr.path(),
            format!(
                "#[{}] does nothing on {place}: a variant delegates to its module under the same HF path; \
                 put it on a field of the module's struct",
                attr.path().to_token_stream()
            ),
        ));
    }
}

/// The attributes among `attrs` that this derive owns.
fn helpers(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|attr| HELPERS.iter().any(|h| attr.path().is_ident(h)))
}

/// An enum of one-field tuple variants. Any other variant, an empty enum, and this derive's attributes
/// anywhere on the enum are recorded as errors; the well-formed variants are kept.
fn parse_enum<'a>(input: &'a DeriveInput, data: &'a DataEnum, errors: &mut Errors) -> Enum<'a> {
    let ident = &input.ident;
    if data.variants.is_empty() {
        errors.push(syn::Error::new(
            ident.span(),
            format!("#[derive(CustomModule)] on an empty enum: `{ident}` has no variant to delegate to"),
        ));
    }
    reject_on_enum(&input.attrs, "an enum", errors);
    let mut variants = Vec::new();
    for v in &data.variants {
        reject_on_enum(&v.attrs, "an enum variant", errors);
        let name = &v.ident;
        match &v.fields {
            Fields::Unnamed(f) if f.unnamed.len() == 1 => {
                for field in &f.unnamed {
                    reject_on_enum(&field.attrs, "the field of an enum variant", errors);
                    variants.push(Variant { ident: name, ty: &field.ty });
                }
            }
            Fields::Unnamed(f) => errors.push(syn::Error::new_spanned(
                f,
                format!(
                    "variant `{name}` has {} fields; a variant holds exactly one module: `{name}(Module)`",
                    f.unnamed.len()
                ),
            )),
            Fields::Named(f) => errors.push(syn::Error::new_spanned(
                f,
                format!(
                    "variant `{name}` has named fields; a variant holds one module as a tuple variant: \
                     `{name}(Module)`, where `Module` is a struct deriving CustomModule"
                ),
            )),
            Fields::Unit => errors.push(syn::Error::new(
                name.span(),
                format!("unit variant `{name}` holds no module; each variant holds one: `{name}(Module)`"),
            )),
        }
    }
    Enum { ident, generics: &input.generics, variants }
}

fn parse_field<'a>(member: &'a Ident, ty: &'a Type, attrs: &[Attribute], errors: &mut Errors) -> Field<'a> {
    let mut field = Field { member, ty, rename: None, index_offset: None, skip: None, specs: Vec::new() };
    let mut hf_skip = false;
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("fused_linears") || path.is_ident("gqa_qkv") {
            match parse_spec(attr, errors) {
                Ok(Some(spec)) => field.specs.push(spec),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        } else if path.is_ident("hf") {
            if let Err(e) = parse_hf(attr, &mut field, &mut hf_skip, errors) {
                errors.push(e);
            }
        } else if path.is_ident("module") && has_burn_skip(attr) {
            field.skip = Some(Skip::Burn);
        }
    }
    if hf_skip {
        field.skip = Some(Skip::Hf);
    } else if field.skip.is_none() && is_constant_type(ty) {
        field.skip = Some(Skip::Constant);
    }
    field
}

/// The attribute's `name(..)` list, or an error showing the expected form.
fn require_list<'m>(attr: &'m Attribute, expected: &str) -> syn::Result<&'m MetaList> {
    match &attr.meta {
        Meta::List(list) => Ok(list),
        other => Err(syn::Error::new_spanned(other, format!("expected {expected}"))),
    }
}

/// `#[fused_linears(a, b)]` or `#[gqa_qkv(q = .., k = .., v = .., o = ..)]`. `Ok(None)` when the
/// errors are already recorded.
fn parse_spec(attr: &Attribute, errors: &mut Errors) -> syn::Result<Option<SpecAttr>> {
    let Some(name) = attr.path().get_ident().cloned() else {
        return Ok(None);
    };
    let kind = if name == "fused_linears" {
        let list = require_list(attr, "#[fused_linears(gate_proj, up_proj)]: the HF names of the fused linears")?;
        if is_packed_entry(list) {
            let entries = list.parse_args_with(Punctuated::<Entry, Token![,]>::parse_terminated)?;
            match fused_packed_from_entries(entries, errors) {
                Some(p) => SpecKind::FusedPacked(p),
                None => return Ok(None),
            }
        } else {
            let names = list.parse_args_with(|input: ParseStream| {
                Punctuated::<Ident, Token![,]>::parse_terminated_with(input, parse_name)
            })?;
            SpecKind::FusedLinears(names.into_iter().collect())
        }
    } else {
        let list = require_list(attr, "#[gqa_qkv(q = q_proj, k = k_proj, v = v_proj, o = o_proj)]")?;
        let entries = list.parse_args_with(Punctuated::<Entry, Token![,]>::parse_terminated)?;
        match gqa_from_entries(&name, entries, errors) {
            Some(gqa) => SpecKind::GqaQkv(gqa),
            None => return Ok(None),
        }
    };
    Ok(Some(SpecAttr { name, meta: attr.meta.to_token_stream(), kind }))
}

/// Whether a #[fused_linears] list starts with `key =` (the packed form).
fn is_packed_entry(list: &MetaList) -> bool {
    list.parse_args_with(|input: ParseStream| {
        let ok = input.peek(Ident) && input.peek2(Token![=]);
        input.parse::<proc_macro2::TokenStream>()?;
        Ok(ok)
    })
    .unwrap_or(false)
}

/// `#[fused_linears(packed = name)]`: exactly the one key.
fn fused_packed_from_entries(entries: Punctuated<Entry, Token![,]>, errors: &mut Errors) -> Option<Ident> {
    let mut packed: Option<Ident> = None;
    let mut ok = true;
    for Entry { key, value } in entries {
        let key_name = name_of(&key);
        if key_name != "packed" {
            errors.push(syn::Error::new(
                key.span(),
                format!(
                    "unknown key `{key_name}` in #[fused_linears]; it takes the HF names of the linears, \
                     or `packed = name` for one HF tensor holding them all"
                ),
            ));
            ok = false;
        } else if packed.is_some() {
            errors.push(syn::Error::new(key.span(), "duplicate key `packed` in #[fused_linears]"));
            ok = false;
        } else {
            packed = Some(value);
        }
    }
    packed.filter(|_| ok)
}

/// `key = value` in #[gqa_qkv], both identifiers.
struct Entry {
    key: Ident,
    value: Ident,
}

impl Parse for Entry {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key = input.parse()?;
        input.parse::<Token![=]>()?;
        let value = parse_name(input)?;
        Ok(Entry { key, value })
    }
}

/// An HF name in a spec attribute: an identifier. A quoted name gets a hint instead of syn's bare
/// "expected identifier".
fn parse_name(input: ParseStream) -> syn::Result<Ident> {
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            "write the HF name as an identifier, without quotes (only #[hf(rename)] takes a string)",
        ));
    }
    input.parse()
}

/// Assigns `q`/`k`/`v`/`o` (or `packed`/`o`), recording unknown, duplicate and missing keys; `None` if any was
/// wrong.
fn gqa_from_entries(name: &Ident, entries: Punctuated<Entry, Token![,]>, errors: &mut Errors) -> Option<GqaQkv> {
    const KEYS: [&str; 5] = ["q", "k", "v", "o", "packed"];
    let mut slots: [Option<Ident>; 5] = Default::default();
    let mut keys: [Option<Ident>; 5] = Default::default();
    let mut ok = true;
    for Entry { key, value } in entries {
        let key_name = name_of(&key);
        let Some(i) = KEYS.iter().position(|k| *k == key_name) else {
            errors.push(syn::Error::new(
                key.span(),
                format!("unknown key `{key_name}` in #[gqa_qkv]; expected `q`, `k`, `v` and `o` (or `packed` and `o`)"),
            ));
            ok = false;
            continue;
        };
        if slots[i].is_some() {
            errors.push(syn::Error::new(key.span(), format!("duplicate key `{key_name}` in #[gqa_qkv]")));
            ok = false;
            continue;
        }
        slots[i] = Some(value);
        keys[i] = Some(key);
    }
    let [q, k, v, o, packed] = slots;
    if let (Some(p), Some(pkey)) = (packed, &keys[4]) {
        let given: Vec<String> =
            KEYS[..3].iter().zip(&keys[..3]).filter(|(_, s)| s.is_some()).map(|(k, _)| format!("`{k}`")).collect();
        if !given.is_empty() {
            errors.push(syn::Error::new(
                pkey.span(),
                format!(
                    "`packed` names one HF tensor holding q, k and v; drop {} (or drop `packed` and name all three)",
                    given.join(", ")
                ),
            ));
            return None;
        }
        let Some(o) = o else {
            errors.push(syn::Error::new(
                name.span(),
                "#[gqa_qkv(packed = ..)] is missing `o`, the sibling output projection",
            ));
            return None;
        };
        return ok.then_some(GqaQkv { qkv: Qkv::Packed(p), o });
    }
    let missing: Vec<String> =
        KEYS[..4].iter().zip([&q, &k, &v, &o]).filter(|(_, s)| s.is_none()).map(|(k, _)| format!("`{k}`")).collect();
    if !missing.is_empty() {
        errors.push(syn::Error::new(
            name.span(),
            format!(
                "#[gqa_qkv] is missing {}; it needs all of q, k, v (the HF projections this layer replaces) \
                 and o (the sibling output projection)",
                missing.join(", ")
            ),
        ));
        return None;
    }
    let (Some(q), Some(k), Some(v), Some(o)) = (q, k, v, o) else {
        return None;
    };
    ok.then_some(GqaQkv { qkv: Qkv::Separate { q, k, v }, o })
}

/// `#[hf(rename = "..")]`, `#[hf(index_offset = field)]`, `#[hf(skip)]` or several options in one list;
/// options may be split over several `#[hf]` attributes but not repeated.
fn parse_hf(attr: &Attribute, field: &mut Field, skip: &mut bool, errors: &mut Errors) -> syn::Result<()> {
    let list = require_list(attr, "#[hf(rename = \"hf_name\")], #[hf(index_offset = field)] or #[hf(skip)]")?;
    let options = list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
    for option in options {
        let path = option.path();
        let value = match &option {
            Meta::NameValue(nv) => Some(&nv.value),
            _ => None,
        };
        if path.is_ident("skip") {
            if !matches!(option, Meta::Path(_)) {
                errors.push(syn::Error::new_spanned(&option, "`skip` takes no value: #[hf(skip)]"));
            } else if *skip {
                errors.push(syn::Error::new_spanned(path, "duplicate #[hf] option `skip`"));
            } else {
                *skip = true;
            }
        } else if path.is_ident("rename") {
            let lit = match value {
                Some(Expr::Lit(ExprLit { lit: Lit::Str(lit), .. })) => Some(lit.clone()),
                _ => None,
            };
            set_option(&mut field.rename, lit, &option, "rename = \"hf_name\"", errors);
        } else if path.is_ident("index_offset") {
            let ident = match value {
                Some(Expr::Path(ExprPath { qself: None, path, .. })) => path.get_ident().cloned(),
                _ => None,
            };
            set_option(&mut field.index_offset, ident, &option, "index_offset = sibling_field", errors);
        } else {
            errors.push(syn::Error::new_spanned(
                path,
                format!(
                    "unknown #[hf] option `{}`; expected `rename = \"hf_name\"`, `index_offset = field` or `skip`",
                    path.to_token_stream()
                ),
            ));
        }
    }
    Ok(())
}

/// Stores the value of a `key = value` #[hf] option, recording a malformed (`None`) or repeated one.
fn set_option<T>(slot: &mut Option<T>, value: Option<T>, option: &Meta, expected: &str, errors: &mut Errors) {
    match value {
        None => errors.push(syn::Error::new_spanned(option, format!("expected `{expected}`"))),
        Some(_) if slot.is_some() => errors.push(syn::Error::new_spanned(
            option.path(),
            format!("duplicate #[hf] option `{}`", option.path().to_token_stream()),
        )),
        Some(value) => *slot = Some(value),
    }
}

/// Whether burn's `#[module(..)]` says `skip`. Malformed content is burn's derive's to report.
fn has_burn_skip(attr: &Attribute) -> bool {
    let Meta::List(list) = &attr.meta else {
        return false;
    };
    Punctuated::<Meta, Token![,]>::parse_terminated
        .parse2(list.tokens.clone())
        .is_ok_and(|options| options.iter().any(|m| m.path().is_ident("skip")))
}

/// Primitive names burn's `Module` derive treats as constants.
pub(crate) fn is_primitive_ident(name: &str) -> bool {
    matches!(
        name,
        "bool"
            | "char"
            | "str"
            | "u8"
            | "u16"
            | "u32"
            | "u64"
            | "u128"
            | "usize"
            | "i8"
            | "i16"
            | "i32"
            | "i64"
            | "i128"
            | "isize"
            | "f32"
            | "f64"
            | "String"
    )
}

/// Whether the type is a primitive integer (`usize`, `u32`, `i64`, ...).
pub(crate) fn is_integer_type(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().is_some_and(|seg| {
            seg.arguments.is_none()
                && matches!(
                    seg.ident.to_string().as_str(),
                    "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128" | "isize"
                )
        }),
        Type::Paren(p) => is_integer_type(&p.elem),
        Type::Group(g) => is_integer_type(&g.elem),
        _ => false,
    }
}

/// The element type of `Vec<T>` (written as a path ending in `Vec`), if the type is one.
pub(crate) fn vec_element(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            let seg = p.path.segments.last().filter(|seg| seg.ident == "Vec")?;
            match &seg.arguments {
                syn::PathArguments::AngleBracketed(args) if args.args.len() == 1 => match args.args.first() {
                    Some(syn::GenericArgument::Type(t)) => Some(t),
                    _ => None,
                },
                _ => None,
            }
        }
        Type::Paren(p) => vec_element(&p.elem),
        Type::Group(g) => vec_element(&g.elem),
        _ => None,
    }
}

/// Containers that hold several values or an optional one; a spec attribute never sits on one, and
/// burn treats one of constants as a constant.
pub(crate) fn is_container_ident(name: &str) -> bool {
    matches!(
        name,
        "Option"
            | "Result"
            | "Vec"
            | "Box"
            | "Rc"
            | "Arc"
            | "Weak"
            | "HashMap"
            | "BTreeMap"
            | "HashSet"
            | "BTreeSet"
            | "VecDeque"
            | "LinkedList"
            | "BinaryHeap"
            | "PhantomData"
            | "Cell"
            | "RefCell"
            | "Mutex"
            | "RwLock"
    )
}

/// Whether burn's `Module` derive treats the type as a constant rather than a module (same rule as
/// burn-derive 0.22: primitives, `String`, and tuples, arrays, references and known containers of them),
/// so such a field needs no `#[module(skip)]` and is not part of the HF tree either.
fn is_constant_type(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|seg| {
            let name = seg.ident.to_string();
            is_primitive_ident(&name)
                || match &seg.arguments {
                    syn::PathArguments::AngleBracketed(args) if is_container_ident(&name) => {
                        args.args.iter().all(|a| match a {
                            syn::GenericArgument::Type(t) => is_constant_type(t),
                            _ => false,
                        })
                    }
                    _ => false,
                }
        }),
        Type::Tuple(t) => t.elems.iter().all(is_constant_type),
        Type::Array(a) => is_constant_type(&a.elem),
        Type::Reference(r) => is_constant_type(&r.elem),
        Type::Ptr(p) => is_constant_type(&p.elem),
        Type::Paren(p) => is_constant_type(&p.elem),
        Type::Group(g) => is_constant_type(&g.elem),
        Type::Slice(s) => is_constant_type(&s.elem),
        _ => false,
    }
}
