//! Semantic checks on the parsed struct: what is well-formed but still cannot describe an HF layout. An enum
//! needs none beyond its shape, which `parse` checks.

use crate::ast::{name_of, Field, GqaQkv, Input, Skip, SpecAttr, SpecKind, Struct};
use crate::errors::Errors;
use crate::parse::{is_container_ident, is_integer_type, is_primitive_ident, vec_element};
use quote::ToTokens;
use std::collections::HashMap;
use syn::{Ident, Type};

/// Records every problem; `expand` runs only if there is none.
pub(crate) fn validate(input: &Input, errors: &mut Errors) {
    let Input::Struct(s) = input else {
        return;
    };
    for field in &s.fields {
        check_rename(field, errors);
        check_specs(s, field, errors);
        check_index_offset(s, field, errors);
    }
    check_unique_hf_names(s, errors);
}

/// A rename is a non-empty path (segments joined by `.`, none empty), on a field that is in the HF tree.
fn check_rename(field: &Field, errors: &mut Errors) {
    let Some(lit) = &field.rename else {
        return;
    };
    let value = lit.value();
    if value.is_empty() {
        errors.push(syn::Error::new(lit.span(), "#[hf(rename)] needs a non-empty HF name"));
    } else if value.split('.').any(str::is_empty) {
        errors.push(syn::Error::new(
            lit.span(),
            format!("#[hf(rename = \"{value}\")] has an empty path segment; write `a.b`, one `.` between names"),
        ));
    }
    if let Some(skip) = &field.skip {
        errors.push(syn::Error::new(
            lit.span(),
            format!("#[hf(rename)] has no effect: `{}` is not part of the HF tree ({})", field.member, skip.describe()),
        ));
    }
}

fn check_specs(s: &Struct, field: &Field, errors: &mut Errors) {
    let Some(first) = field.specs.first() else {
        return;
    };
    for extra in field.specs.iter().skip(1) {
        errors.push(syn::Error::new(
            extra.name.span(),
            format!("a field takes one spec attribute; `{}` already has #[{}]", field.member, first.name),
        ));
    }
    if let Some(found) = not_a_layer(field.ty) {
        let example = match first.kind {
            SpecKind::FusedLinears(_) | SpecKind::FusedPacked(_) => "ColumnParallelLinear",
            SpecKind::GqaQkv(_) => "GqaQkvColumnParallelLinear",
        };
        errors.push(syn::Error::new_spanned(
            field.ty,
            format!(
                "#[{}] must be on a field holding exactly one layer, of a plain path type like `{example}`, \
                 not {found}",
                first.name
            ),
        ));
    } else if let Some(skip @ (Skip::Hf | Skip::Burn)) = &field.skip {
        errors.push(syn::Error::new(
            first.name.span(),
            format!("#[{}] on a field that {} leaves out of the HF tree", first.name, skip.describe()),
        ));
    }
    if let Some(lit) = field.rename.as_ref().filter(|lit| lit.value().contains('.')) {
        errors.push(syn::Error::new(
            lit.span(),
            format!(
                "#[{}] names linears relative to this struct, so its field's HF name is one path segment, \
                 not `{}`; nest a struct for the deeper path",
                first.name,
                lit.value()
            ),
        ));
    }
    for spec in &field.specs {
        match &spec.kind {
            SpecKind::FusedLinears(names) => check_fused(spec, names, errors),
            SpecKind::FusedPacked(_) => {}
            SpecKind::GqaQkv(gqa) => check_gqa(s, field, gqa, errors),
        }
    }
}

/// What the type is, if it is not a single layer: a container, a primitive or a non-path type.
fn not_a_layer(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            let name = last.ident.to_string();
            if is_container_ident(&name) {
                Some(format!("`{name}<..>`"))
            } else if is_primitive_ident(&name) {
                Some(format!("the primitive `{name}`"))
            } else {
                None
            }
        }
        Type::Paren(p) => not_a_layer(&p.elem),
        Type::Group(g) => not_a_layer(&g.elem),
        other => Some(format!("`{}`", other.to_token_stream())),
    }
}

/// At least one linear, each once.
fn check_fused(spec: &SpecAttr, names: &[Ident], errors: &mut Errors) {
    if names.is_empty() {
        errors.push(syn::Error::new_spanned(
            &spec.meta,
            "#[fused_linears] needs the HF names of the linears it replaces, e.g. #[fused_linears(gate_proj, up_proj)]",
        ));
    }
    for (i, name) in names.iter().enumerate() {
        let n = name_of(name);
        if names[..i].iter().any(|earlier| name_of(earlier) == n) {
            errors.push(syn::Error::new(name.span(), format!("`{n}` is listed twice in #[fused_linears]")));
        }
    }
}

/// q, k, v, o name four different HF linears, and `o` is a sibling field in the HF tree.
fn check_gqa(s: &Struct, field: &Field, gqa: &GqaQkv, errors: &mut Errors) {
    let entries = gqa.entries();
    for (i, (key, value)) in entries.iter().enumerate() {
        let n = name_of(value);
        if let Some((earlier, _)) = entries[..i].iter().find(|(_, v)| name_of(v) == n) {
            errors.push(syn::Error::new(
                value.span(),
                format!("`{key} = {n}` repeats `{earlier} = {n}`; q, k, v and o are four different linears (packed and o two)"),
            ));
        }
    }

    let o = name_of(&gqa.o);
    let own = field.hf_name();
    let siblings: Vec<&Field> = s.fields.iter().filter(|f| f.skip.is_none() && f.hf_name() != own).collect();
    if siblings.iter().any(|f| f.hf_name() == o) {
        return;
    }
    let message = if o == own {
        format!("`o = {o}` names this field; `o` is the sibling output projection")
    } else if let Some(renamed) = siblings.iter().find(|f| f.rename.is_some() && name_of(f.member) == o) {
        format!("`o = {o}`: field `{o}` is renamed; use its HF name `{}`", renamed.hf_name())
    } else if let Some(skipped) = s.fields.iter().find(|f| f.skip.is_some() && f.hf_name() == o) {
        let reason = skipped.skip.as_ref().map_or("", Skip::describe);
        format!("`o = {o}` names a field that {reason} leaves out of the HF tree")
    } else {
        let names: Vec<String> = siblings.iter().map(|f| format!("`{}`", f.hf_name())).collect();
        let known = if names.is_empty() { "none".to_string() } else { names.join(", ") };
        format!("`o = {o}` names no sibling field of `{}` (its HF names: {known})", s.ident)
    };
    errors.push(syn::Error::new(gqa.o.span(), message));
}

/// `#[hf(index_offset = n)]` sits on a `Vec<..>` field of the HF tree, and `n` names a sibling field of
/// integer type (never in the HF tree: burn treats an integer as a constant).
fn check_index_offset(s: &Struct, field: &Field, errors: &mut Errors) {
    let Some(offset) = &field.index_offset else {
        return;
    };
    if let Some(skip) = &field.skip {
        errors.push(syn::Error::new(
            offset.span(),
            format!(
                "#[hf(index_offset)] has no effect: `{}` is not part of the HF tree ({})",
                field.member,
                skip.describe()
            ),
        ));
    } else if vec_element(field.ty).is_none() {
        errors.push(syn::Error::new_spanned(
            field.ty,
            format!("#[hf(index_offset)] numbers the elements of a `Vec<..>` field; `{}` is not one", field.member),
        ));
    }
    let n = name_of(offset);
    match s.fields.iter().find(|f| name_of(f.member) == n) {
        None => {
            let names: Vec<String> =
                s.fields.iter().filter(|f| is_integer_type(f.ty)).map(|f| format!("`{}`", f.member)).collect();
            let known = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            errors.push(syn::Error::new(
                offset.span(),
                format!("`index_offset = {n}` names no field of `{}` (its integer fields: {known})", s.ident),
            ));
        }
        Some(f) if !is_integer_type(f.ty) => errors.push(syn::Error::new(
            offset.span(),
            format!("`index_offset = {n}`: field `{n}` is not of a primitive integer type like `usize`"),
        )),
        Some(_) => {}
    }
}

/// Two fields of the HF tree never share a path segment.
fn check_unique_hf_names(s: &Struct, errors: &mut Errors) {
    let mut seen: HashMap<String, &Field> = HashMap::new();
    for field in s.fields.iter().filter(|f| f.skip.is_none()) {
        let name = field.hf_name();
        if name.is_empty() {
            continue; // reported by check_rename
        }
        if let Some(first) = seen.get(&name) {
            errors.push(syn::Error::new(
                field.hf_name_span(),
                format!(
                    "fields `{}` and `{}` both have the HF name `{name}`; rename one with #[hf(rename = \"..\")]",
                    first.member, field.member
                ),
            ));
        } else {
            seen.insert(name, field);
        }
    }
}
