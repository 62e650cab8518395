//! `neuron-spec plan`: every validation result, a summary per rank, the per-tensor table on request, valid
//! JSON with `--json` whatever happens, and an optional SVG of one layer.

use crate::error::{CliError, Result};
use crate::exit::{EXIT_ERROR, EXIT_OK};
use crate::layouts::{hf_layout, is_sharded, layout_from_file, LayoutArgs};
use crate::out::human;
use neuron_spec::checkpoint::ShardedCheckpoint;
use neuron_spec::format::HfCheckpoint;
use neuron_spec::plan::{ShardPlan, TensorPlan};
use neuron_spec::spec::compile::{plan_shards, PlanOptions};
use neuron_spec::spec::metadata::CheckpointMetadata;
use neuron_spec::tensor::TensorSource;
use neuron_spec::Error;
use std::path::PathBuf;

/// `plan`'s options.
pub struct PlanArgs {
    /// HF or sharded checkpoint.
    pub dir: PathBuf,
    /// Target TP size.
    pub tp: Option<usize>,
    /// Pipeline stages (1 for an HF checkpoint, a sharded checkpoint's own by default).
    pub pp: Option<usize>,
    /// Attention layout (HF input).
    pub layout: LayoutArgs,
    /// A layout file instead of config.json.
    pub layout_file: Option<PathBuf>,
    /// JSON output.
    pub json: bool,
    /// The per-tensor table.
    pub tensors: bool,
    /// Where to draw one layer.
    pub svg: Option<PathBuf>,
}

/// One validation result.
struct Check {
    what: String,
    result: Result<String>,
}

/// What the checks led to.
struct Outcome {
    source: String,
    tp: Option<usize>,
    checks: Vec<Check>,
    plan: Option<(ShardPlan, CheckpointMetadata)>,
}

fn check<T, E: Into<CliError>>(
    checks: &mut Vec<Check>,
    what: &str,
    r: std::result::Result<T, E>,
    ok: impl FnOnce(&T) -> String,
) -> Option<T> {
    match r {
        Ok(v) => {
            checks.push(Check { what: what.to_string(), result: Ok(ok(&v)) });
            Some(v)
        }
        Err(e) => {
            checks.push(Check { what: what.to_string(), result: Err(e.into()) });
            None
        }
    }
}

/// Checks every spec of `meta` at `tp` (each its own result).
fn check_specs(checks: &mut Vec<Check>, meta: &CheckpointMetadata, tp: usize) -> bool {
    let mut all = true;
    for (module, spec) in meta.specs() {
        let r = spec.for_tp(tp).and_then(|s| s.validate(tp));
        all &= check(checks, &format!("{module}: {}", spec.class_name()), r, |_| format!("valid at tp {tp}")).is_some();
    }
    all
}

/// Adds the pipeline-stage assignment of `meta` at `pp` as a check (which layers and tensors each stage holds).
fn check_stages(checks: &mut Vec<Check>, meta: &CheckpointMetadata, pp: usize) {
    let r = neuron_spec::spec::pipeline::StageAssignment::for_metadata(meta, pp);
    check(checks, &format!("pipeline stages (pp {pp})"), r, |st| {
        st.layers
            .iter()
            .enumerate()
            .map(|(s, l)| {
                let mut v = format!("stage {s}: layers {}..{}", l.start, l.end);
                if s == 0 {
                    v += " + embed_tokens";
                }
                if s + 1 == st.pp() {
                    v += " + norm, lm_head";
                    if st.tied_embeddings && s > 0 {
                        v += " + a copy of the tied embed_tokens";
                    }
                }
                v
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
}

fn evaluate(a: &PlanArgs) -> Result<Outcome> {
    let dir = &a.dir;
    let mut checks = Vec::new();
    if is_sharded(dir) {
        let Some(ck) = check(&mut checks, "rank files and metadata", ShardedCheckpoint::open(dir), |ck| {
            format!("tp {}, {} rank files, sizes and checksums as recorded", ck.tp, ck.ranks.len())
        }) else {
            return Ok(Outcome { source: "sharded checkpoint".into(), tp: a.tp, checks, plan: None });
        };
        let tp = a.tp.unwrap_or(ck.tp);
        let source = format!("sharded checkpoint at tp {}, pp {}", ck.tp, ck.pp());
        if !check_specs(&mut checks, &ck.metadata, tp) {
            return Ok(Outcome { source, tp: Some(tp), checks, plan: None });
        }
        check_stages(&mut checks, &ck.metadata, a.pp.unwrap_or(ck.pp()));
        let plan = check(&mut checks, "reshard plan", neuron_spec::ops::reshard::reshard_plan(&ck, tp), |_| {
            format!("every tensor planned from tp {} to tp {tp}", ck.tp)
        });
        return Ok(Outcome { source, tp: Some(tp), checks, plan });
    }
    if !dir.is_dir() {
        let reason = if dir.exists() { "not a directory" } else { "no such directory" };
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, reason)).into());
    }
    let tp = a.tp.ok_or_else(|| CliError::Command("--tp is required for an HF checkpoint".into()))?;
    let source = "HF checkpoint".to_string();
    let qkv = a.layout.qkv();
    // The layout at tp 1 (always valid), then every spec at the requested tp, each its own result.
    let base = match &a.layout_file {
        Some(f) => check(&mut checks, &format!("layout {}", f.display()), CheckpointMetadata::read(f), |m| {
            format!("{} parameters, {} specs", m.parameters.len(), m.specs().count())
        }),
        None => check(&mut checks, "config.json", neuron_spec_models::layout_of_dir(dir, 1, qkv), |m| {
            format!("the family's layout: {} parameters, {} specs", m.parameters.len(), m.specs().count())
        }),
    };
    if a.layout_file.is_none() {
        if let Ok(ignored) = neuron_spec_models::ignored_keys(dir).map(|k| k.join(", ")) {
            if !ignored.is_empty() {
                let m = format!("ignored (transformers never reads them for this model_type): {ignored}");
                checks.push(Check { what: "config.json keys".into(), result: Ok(m) });
            }
        }
    }
    let hf = check(&mut checks, "checkpoint files", HfCheckpoint::open(dir), |h| {
        format!("{} tensors, {}", h.names().len(), human(h.total_bytes() as u64))
    });
    let Some(base) = base else { return Ok(Outcome { source, tp: Some(tp), checks, plan: None }) };
    if !check_specs(&mut checks, &base, tp) {
        // The hint with the tp sizes that fit.
        let hint = match &a.layout_file {
            Some(f) => layout_from_file(f, tp).map(|_| ()),
            None => hf_layout(dir, tp, qkv).map(|_| ()),
        };
        if let Err(e) = hint {
            checks.push(Check { what: format!("tp {tp}"), result: Err(e) });
        }
        return Ok(Outcome { source, tp: Some(tp), checks, plan: None });
    }
    let meta = match &a.layout_file {
        Some(f) => layout_from_file(f, tp),
        None => hf_layout(dir, tp, qkv),
    };
    let Some(meta) = check(&mut checks, &format!("layout at tp {tp}"), meta, |_| "built".into()) else {
        return Ok(Outcome { source, tp: Some(tp), checks, plan: None });
    };
    check_stages(&mut checks, &meta, a.pp.unwrap_or(1));
    let Some(hf) = hf else { return Ok(Outcome { source, tp: Some(tp), checks, plan: None }) };
    let plan = check(
        &mut checks,
        "tensors",
        plan_shards(&meta, &hf, tp, PlanOptions::default()).map_err(|e| e.in_checkpoint(dir)),
        |_| "no missing and no unexpected tensors; every shape as the layout says".into(),
    );
    Ok(Outcome { source, tp: Some(tp), checks, plan: plan.map(|p| (p, meta)) })
}

/// Runs `plan`; with `--json` the output is JSON also when the arguments or a check fail.
pub fn plan_command(a: &PlanArgs) -> Result<i32> {
    if is_sharded(&a.dir) && (a.layout.fuse_qkv || a.layout.plain_attention || a.layout_file.is_some()) {
        return crate::exit::usage(format!(
            "--fuse-qkv, --plain-attention and --layout describe an HF checkpoint's layout; {} is a sharded \
             checkpoint, whose metadata records its own",
            a.dir.display()
        ));
    }
    let o = match evaluate(a) {
        Ok(o) => o,
        Err(e) if a.json => {
            crate::out::json(&serde_json::json!({"ok": false, "dir": a.dir, "error": e.to_string(), "checks": []}))?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let failed = o.checks.iter().find_map(|c| c.result.as_ref().err());
    let (read, written, counts) = match &o.plan {
        Some((p, _)) => (
            p.bytes_read_per_rank(),
            p.ranks.iter().map(|ts| ts.iter().map(TensorPlan::nbytes).sum::<usize>()).collect::<Vec<_>>(),
            p.ranks.iter().map(Vec::len).collect::<Vec<_>>(),
        ),
        None => (vec![], vec![], vec![]),
    };
    if let (Some(svg), Some((plan, meta))) = (&a.svg, &o.plan) {
        crate::plan_svg::write_svg(svg, plan, meta)?;
    }
    if a.json {
        let checks: Vec<serde_json::Value> = o
            .checks
            .iter()
            .map(|c| match &c.result {
                Ok(m) => serde_json::json!({"check": c.what, "ok": true, "message": m}),
                Err(e) => serde_json::json!({"check": c.what, "ok": false, "message": e.to_string()}),
            })
            .collect();
        let mut v = serde_json::json!({
            "ok": failed.is_none(),
            "dir": a.dir,
            "source": o.source,
            "tp": o.tp,
            "checks": checks,
            "tensors_per_rank": counts,
            "bytes_read_per_rank": read,
            "bytes_written_per_rank": written,
        });
        if a.tensors {
            if let (Some(obj), Some((p, _))) = (v.as_object_mut(), &o.plan) {
                obj.insert(
                    "ranks".into(),
                    serde_json::to_value(&p.ranks).map_err(|e| CliError::Command(e.to_string()))?,
                );
            }
        }
        crate::out::json(&v)?;
    } else {
        let tp = o.tp.map_or("?".to_string(), |t| t.to_string());
        out!("plan for {} ({}) at tp {tp}", a.dir.display(), o.source);
        for c in &o.checks {
            match &c.result {
                Ok(m) => out!("  ok:     {}: {m}", c.what),
                Err(e) => out!("  FAILED: {}: {e}", c.what),
            }
        }
        if let Some((plan, _)) = &o.plan {
            out!("  {:>6}  {:>8}  {:>12}  {:>12}", "rank", "tensors", "reads", "writes");
            for r in 0..plan.ranks.len() {
                out!("  {r:>6}  {:>8}  {:>12}  {:>12}", counts[r], human(read[r] as u64), human(written[r] as u64));
            }
            out!(
                "  total   {:>8}  {:>12}  {:>12}",
                counts.iter().sum::<usize>(),
                human(read.iter().sum::<usize>() as u64),
                human(written.iter().sum::<usize>() as u64)
            );
            if a.tensors {
                print_tensors(plan, is_sharded(&a.dir))?;
            } else {
                out!("  (--tensors lists every rank tensor and its blocks)");
            }
            if let Some(svg) = &a.svg {
                out!("  drawn: {}", svg.display());
            }
        }
    }
    // The last failure is the most specific (the tp hint comes after the specs it sums up).
    match o.checks.into_iter().filter_map(|c| c.result.err()).last() {
        // The first failure on stderr (one line, as every error); the others are in the report above.
        Some(e) => {
            if a.json {
                errln!("error: {e}");
                Ok(EXIT_ERROR)
            } else {
                Err(e)
            }
        }
        None => Ok(EXIT_OK),
    }
}

fn print_tensors(plan: &ShardPlan, sharded: bool) -> Result<()> {
    for (r, tensors) in plan.ranks.iter().enumerate() {
        out!("rank {r}:");
        for t in tensors {
            let srcs: Vec<String> = t
                .blocks
                .iter()
                .map(|b| {
                    let part = if sharded { format!("rank{}:", b.src.part) } else { String::new() };
                    format!(
                        "{part}{}[dim{} {}..{}]→{}..",
                        b.src.name,
                        b.dim,
                        b.src_offset,
                        b.src_offset + b.len,
                        b.dst_offset
                    )
                })
                .collect();
            out!("  {} {:?} {} ← {}", t.name, t.shape, t.dtype, srcs.join(", "));
        }
    }
    Ok(())
}
