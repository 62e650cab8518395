//! `plan --svg FILE`: one layer drawn from the plan. Ranks are columns; each rank tensor is a bar along its
//! sharded dimension, cut into the HF rows (or columns) it holds, coloured by source: query heads, kv heads (a
//! replica, i.e. a kv head some lower rank holds too, is hatched), fused members, padding (rows no block fills).

use neuron_spec::error::{Error, Result};
use neuron_spec::plan::{ShardPlan, TensorPlan};
use neuron_spec::spec::metadata::CheckpointMetadata;
use neuron_spec::Spec;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

const COL_W: f64 = 190.0;
const BAR_H: f64 = 240.0;
const TOP: f64 = 70.0;
const LEFT: f64 = 20.0;

/// A colour per HF source tensor kind.
fn colour(src: &str) -> &'static str {
    let leaf = src.rsplit('.').nth(1).unwrap_or(src);
    match leaf {
        "q_proj" => "#4e79a7",
        "k_proj" => "#59a14f",
        "v_proj" => "#8cd17d",
        "o_proj" => "#76b7b2",
        "gate_proj" => "#f28e2b",
        "up_proj" => "#edc948",
        "down_proj" => "#b07aa1",
        "embed_tokens" | "lm_head" => "#9c755f",
        _ => "#bab0ac",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The layer drawn: the first `.layers.N.` prefix in the plan (or every tensor when there is none).
fn first_layer(plan: &ShardPlan) -> Option<String> {
    let name = plan.ranks.first()?.iter().map(|t| t.name.as_str()).find(|n| n.contains(".layers."))?;
    let i = name.find(".layers.")? + ".layers.".len();
    let rest = &name[i..];
    let n = rest.split('.').next()?;
    Some(format!("{}{n}.", &name[..i]))
}

/// Head size by source tensor, from the GQA specs (q/k/v rows and o columns are heads).
fn head_dims(meta: &CheckpointMetadata) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (module, spec) in meta.specs() {
        if let Spec::GqaQkv(g) = spec {
            let per_rank = g.num_attention_heads / g.tp_size.max(1);
            if per_rank == 0 {
                continue;
            }
            let hd = g.q_output_size_per_partition / per_rank;
            for p in
                [&g.query_projection_name, &g.key_projection_name, &g.value_projection_name, &g.output_projection_name]
            {
                out.insert(format!("{module}.{p}."), hd);
            }
        }
    }
    out
}

/// Writes the picture of `plan`'s first layer to `path`.
pub fn write_svg(path: &Path, plan: &ShardPlan, meta: &CheckpointMetadata) -> Result<()> {
    let svg = render(plan, meta);
    std::fs::write(path, svg).map_err(|e| Error::io(path, e))
}

/// The SVG text.
pub fn render(plan: &ShardPlan, meta: &CheckpointMetadata) -> String {
    let prefix = first_layer(plan).unwrap_or_default();
    let hds = head_dims(meta);
    let head_dim = |src: &str| hds.iter().find(|(k, _)| src.starts_with(k.as_str())).map(|(_, v)| *v);
    let originals: BTreeMap<&str, &Vec<usize>> = plan.originals.iter().map(|o| (o.name.as_str(), &o.shape)).collect();
    // Tensor names of the layer (rank 0's order), weights only (biases follow their rows).
    let names: Vec<String> = plan
        .ranks
        .first()
        .into_iter()
        .flatten()
        // The layer, and the tensors outside every layer (embedding, lm_head: where vocab padding shows).
        .filter(|t| t.name.starts_with(&prefix) || !t.name.contains(".layers."))
        .filter(|t| t.name.ends_with("weight") || t.name.contains("weight_"))
        // Sharded tensors only: a replicated one (a norm) is the same picture on every rank.
        .filter(|t| {
            plan.tp == 1
                || t.blocks
                    .iter()
                    .any(|b| originals.get(b.src.name.as_str()).and_then(|s| s.get(b.dim)).is_some_and(|n| b.len < *n))
        })
        .map(|t| t.name.clone())
        .collect();
    let rows = names.len().max(1) as f64;
    let width = LEFT * 2.0 + COL_W * plan.tp as f64 + 280.0;
    let height = TOP + rows * (BAR_H + 60.0) + 40.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">
<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="white" fill-opacity="0.0"/><line x1="0" y1="0" x2="0" y2="6" stroke="white" stroke-width="3"/></pattern>
<pattern id="pad" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="8" height="8" fill="#fde0dd"/><line x1="0" y1="0" x2="0" y2="8" stroke="#e15759" stroke-width="2"/></pattern></defs>
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{} at tp {} (one layer; the others are the same)</text>
"##,
        esc(prefix.trim_end_matches('.')),
        plan.tp
    );
    for r in 0..plan.tp {
        let x = LEFT + COL_W * r as f64;
        let _ = writeln!(s, r#"<text x="{}" y="48" font-weight="bold">rank {r}</text>"#, x + 8.0);
    }
    // Which source ranges a lower rank already holds (kv replicas).
    let mut seen: BTreeSet<(String, usize, usize)> = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let y0 = TOP + i as f64 * (BAR_H + 60.0);
        let _ = writeln!(s, r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#, y0 + 10.0, esc(name));
        for (r, tensors) in plan.ranks.iter().enumerate() {
            let Some(t) = tensors.iter().find(|t| &t.name == name) else { continue };
            draw_tensor(&mut s, t, LEFT + COL_W * r as f64 + 8.0, y0 + 18.0, &head_dim, &mut seen);
        }
    }
    // Legend.
    let lx = LEFT + COL_W * plan.tp as f64 + 10.0;
    let legend = [
        ("#4e79a7", "q heads", ""),
        ("#59a14f", "k heads", ""),
        ("#8cd17d", "v heads", ""),
        ("#59a14f", "kv replica (also on a lower rank)", "url(#hatch)"),
        ("#76b7b2", "o_proj columns (by q head)", ""),
        ("#f28e2b", "fused member gate_proj", ""),
        ("#edc948", "fused member up_proj", ""),
        ("#b07aa1", "down_proj columns", ""),
        ("#bab0ac", "other", ""),
        ("url(#pad)", "padding (zeros, never read back)", ""),
    ];
    for (k, (fill, label, overlay)) in legend.iter().enumerate() {
        let y = TOP + 18.0 * k as f64;
        let _ = writeln!(s, r##"<rect x="{lx}" y="{y}" width="14" height="12" fill="{fill}" stroke="#333"/>"##);
        if !overlay.is_empty() {
            let _ = writeln!(s, r#"<rect x="{lx}" y="{y}" width="14" height="12" fill="{overlay}"/>"#);
        }
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, lx + 20.0, y + 10.0, esc(label));
    }
    s.push_str("</svg>\n");
    s
}

fn draw_tensor(
    s: &mut String,
    t: &TensorPlan,
    x: f64,
    y: f64,
    head_dim: &dyn Fn(&str) -> Option<usize>,
    seen: &mut BTreeSet<(String, usize, usize)>,
) {
    let dim = t.blocks.first().map_or(0, |b| b.dim);
    let extent = t.shape.get(dim).copied().unwrap_or(1).max(1);
    let scale = BAR_H / extent as f64;
    let w = COL_W - 24.0;
    let axis = if dim == 0 { "rows" } else { "columns" };
    let _ = writeln!(s, r##"<rect x="{x}" y="{y}" width="{w}" height="{BAR_H}" fill="url(#pad)" stroke="#333"/>"##);
    for b in &t.blocks {
        let by = y + b.dst_offset as f64 * scale;
        let bh = (b.len as f64 * scale).max(1.0);
        let key = (b.src.name.clone(), b.src_offset, b.len);
        let replica = !seen.insert(key);
        let leaf = b.src.name.rsplit('.').nth(1).unwrap_or(&b.src.name).to_string();
        let label = match head_dim(&b.src.name) {
            Some(hd) if hd > 0 && b.src_offset % hd == 0 && b.len % hd == 0 => {
                let (h0, n) = (b.src_offset / hd, b.len / hd);
                let kind = if leaf == "k_proj" || leaf == "v_proj" { "kv" } else { "q" };
                let heads = if n == 1 { format!("{h0}") } else { format!("{h0}–{}", h0 + n - 1) };
                format!("{leaf} {kind} head {heads}")
            }
            _ => format!("{leaf} {axis} {}–{}", b.src_offset, b.src_offset + b.len - 1),
        };
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="{by}" width="{w}" height="{bh}" fill="{}" stroke="#222" stroke-width="0.5"><title>{}</title></rect>"##,
            colour(&b.src.name),
            esc(&format!("{}[{axis} {}..{}] → {}..", b.src.name, b.src_offset, b.src_offset + b.len, b.dst_offset))
        );
        if replica {
            let _ = writeln!(s, r##"<rect x="{x}" y="{by}" width="{w}" height="{bh}" fill="url(#hatch)"/>"##);
        }
        if bh >= 11.0 {
            let suffix = if replica { " (replica)" } else { "" };
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">{}</text>"#,
                x + 4.0,
                by + bh / 2.0 + 4.0,
                esc(&format!("{label}{suffix}"))
            );
        }
    }
    // Rows (or columns) no block fills: zero padding.
    let mut covered: Vec<(usize, usize)> = t.blocks.iter().map(|b| (b.dst_offset, b.dst_offset + b.len)).collect();
    covered.sort();
    let mut at = 0;
    for (a, e) in covered.into_iter().chain([(extent, extent)]) {
        if a > at {
            let (py, ph) = (y + at as f64 * scale, (a - at) as f64 * scale);
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" fill="#a00">padding {axis} {at}–{} (zeros)</text>"##,
                x + 4.0,
                py + (ph / 2.0).max(6.0) + 4.0,
                a - 1
            );
        }
        at = at.max(e);
    }
    let _ = writeln!(
        s,
        r##"<text x="{x}" y="{}" fill="#555">{:?} {} ({axis} {extent})</text>"##,
        y + BAR_H + 14.0,
        t.shape,
        t.dtype
    );
}
