//! The derive's model of the input struct or enum: `parse` builds it, `validate` checks it, `expand` emits it.
//!
//! It keeps the tokens errors point at, so every later check can span the offending token.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::{Generics, Ident, LitStr, Type};

/// The derive's input: a struct or an enum.
pub(crate) enum Input<'a> {
    Struct(Struct<'a>),
    Enum(Enum<'a>),
}

/// A struct with named fields (a unit struct has none).
pub(crate) struct Struct<'a> {
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub fields: Vec<Field<'a>>,
}

/// An enum whose variants each hold one module; the variants `parse` rejected are left out.
pub(crate) struct Enum<'a> {
    pub ident: &'a Ident,
    pub generics: &'a Generics,
    pub variants: Vec<Variant<'a>>,
}

/// A one-field tuple variant: `Gqa(GqaAttention)`.
pub(crate) struct Variant<'a> {
    pub ident: &'a Ident,
    pub ty: &'a Type,
}

/// One field and what its attributes say about it.
pub(crate) struct Field<'a> {
    /// The Rust field name.
    pub member: &'a Ident,
    pub ty: &'a Type,
    /// `#[hf(rename = "..")]`: the HF path (one segment, or several joined by `.`) when it differs from the
    /// Rust name.
    pub rename: Option<LitStr>,
    /// `#[hf(index_offset = field)]`: the sibling field holding the HF index of the list's first element.
    pub index_offset: Option<Ident>,
    /// Why the field is not part of the HF tree, if it is not.
    pub skip: Option<Skip>,
    /// Spec attributes in source order; `validate` allows at most one.
    pub specs: Vec<SpecAttr>,
}

impl Field<'_> {
    /// The field's HF path: the rename, or the Rust name without `r#`.
    pub fn hf_name(&self) -> String {
        match &self.rename {
            Some(lit) => lit.value(),
            None => self.member.unraw().to_string(),
        }
    }

    /// The token that names the field in the HF tree, for errors about that name.
    pub fn hf_name_span(&self) -> Span {
        match &self.rename {
            Some(lit) => lit.span(),
            None => self.member.span(),
        }
    }
}

/// Why a field is left out of the HF tree.
pub(crate) enum Skip {
    /// `#[hf(skip)]`.
    Hf,
    /// burn's `#[module(skip)]`.
    Burn,
    /// A type burn's `Module` derive treats as a constant (`usize`, `String`, `Vec<f32>`, ...).
    Constant,
}

impl Skip {
    /// The reason, as errors phrase it.
    pub fn describe(&self) -> &'static str {
        match self {
            Skip::Hf => "#[hf(skip)]",
            Skip::Burn => "#[module(skip)]",
            Skip::Constant => "its constant type (burn does not treat it as a module)",
        }
    }
}

/// A spec attribute (`#[fused_linears(..)]` or `#[gqa_qkv(..)]`) on a field.
pub(crate) struct SpecAttr {
    /// The attribute's name token (`fused_linears`, `gqa_qkv`).
    pub name: Ident,
    /// The whole meta (`fused_linears(..)`), for errors about the attribute as a whole.
    pub meta: TokenStream,
    pub kind: SpecKind,
}

/// What a spec attribute says.
pub(crate) enum SpecKind {
    /// The HF names of the linears the field replaces, in fusing order.
    FusedLinears(Vec<Ident>),
    /// `#[fused_linears(packed = name)]`: the HF checkpoint stores the members as one tensor `name`.
    FusedPacked(Ident),
    /// The HF names of the q/k/v projections the field replaces and of the sibling output projection.
    GqaQkv(GqaQkv),
}

/// `#[gqa_qkv(q = .., k = .., v = .., o = ..)]` or `#[gqa_qkv(packed = .., o = ..)]`.
pub(crate) struct GqaQkv {
    pub qkv: Qkv,
    pub o: Ident,
}

/// Where q, k and v come from in the HF checkpoint.
pub(crate) enum Qkv {
    /// Three linears.
    Separate { q: Ident, k: Ident, v: Ident },
    /// One packed tensor (q rows, then k, then v).
    Packed(Ident),
}

impl GqaQkv {
    /// The keys and their values, in the attribute's canonical order.
    pub fn entries(&self) -> Vec<(&'static str, &Ident)> {
        match &self.qkv {
            Qkv::Separate { q, k, v } => vec![("q", q), ("k", k), ("v", v), ("o", &self.o)],
            Qkv::Packed(p) => vec![("packed", p), ("o", &self.o)],
        }
    }
}

/// The HF name an identifier in an attribute stands for (`r#type` → `type`).
pub(crate) fn name_of(ident: &Ident) -> String {
    ident.unraw().to_string()
}
