//! Pipeline-parallel stage assignment: which stage holds which parameter, as an explicit value.
//!
//! Layers are split evenly; when `pp` does not divide the layer count, the first `layers % pp` stages hold
//! one layer more. `model.embed_tokens` goes to the first stage, `model.norm` and `lm_head` to the last.
//! With tied embeddings (an `embed_tokens` and no `lm_head`), the last stage also holds a copy of
//! `model.embed_tokens.weight`, the one its output projection uses; consolidation checks the copies agree.

use crate::error::{Error, Result};
use crate::spec::metadata::CheckpointMetadata;
use std::ops::Range;

/// Most pipeline stages.
pub const MAX_PP: usize = 1024;

/// The stage of every parameter of a model with `layers` decoder layers over `pp` stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageAssignment {
    /// The decoder layers of each stage.
    pub layers: Vec<Range<usize>>,
    /// Whether the last stage holds a copy of the tied embedding.
    pub tied_embeddings: bool,
}

/// The layer index of a name under `model.layers.<i>`, if any.
pub fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("model.layers.")?;
    rest.split('.').next()?.parse().ok()
}

impl StageAssignment {
    /// `layers` decoder layers split evenly over `pp` stages (the first `layers % pp` stages get one more).
    pub fn evenly(layers: usize, pp: usize, tied_embeddings: bool) -> Result<Self> {
        if pp == 0 || pp > MAX_PP {
            return Err(Error::Stage(format!("pp {pp} is out of range (1 to {MAX_PP})")));
        }
        // One stage holds everything, also a model without decoder layers (any annotated model).
        if layers < pp && pp > 1 {
            return Err(Error::Stage(format!(
                "cannot split {layers} decoder layers over {pp} pipeline stages: every stage needs at least one layer (use --pp {layers} or less)"
            )));
        }
        let (base, extra) = (layers / pp, layers % pp);
        let mut start = 0;
        let ranges = (0..pp)
            .map(|s| {
                let n = base + usize::from(s < extra);
                let r = start..start + n;
                start += n;
                r
            })
            .collect();
        Ok(Self { layers: ranges, tied_embeddings })
    }

    /// The assignment for `meta`'s parameters (the layer count and tying read from their names).
    pub fn for_metadata(meta: &CheckpointMetadata, pp: usize) -> Result<Self> {
        let layers = meta.parameters.keys().filter_map(|n| layer_index(n)).max().map_or(0, |m| m + 1);
        let has = |n: &str| meta.parameters.keys().any(|k| k.starts_with(n));
        Self::evenly(layers, pp, has("model.embed_tokens.") && !has("lm_head."))
    }

    /// The number of stages.
    pub fn pp(&self) -> usize {
        self.layers.len()
    }

    /// The stages holding parameter (or module) `name`, in order; more than one only for a tied embedding.
    pub fn stages_of(&self, name: &str) -> Result<Vec<usize>> {
        let last = self.pp().saturating_sub(1);
        if self.pp() == 1 {
            return Ok(vec![0]); // one stage: every parameter, whatever the model's names
        }
        if let Some(l) = layer_index(name) {
            return self
                .layers
                .iter()
                .position(|r| r.contains(&l))
                .map(|s| vec![s])
                .ok_or_else(|| Error::Stage(format!("{name}: layer {l} is beyond the {} layers", self.num_layers())));
        }
        let top = |p: &str| name == p || name.starts_with(&format!("{p}."));
        if top("model.embed_tokens") {
            return Ok(if self.tied_embeddings && last > 0 { vec![0, last] } else { vec![0] });
        }
        if top("model.norm") || top("lm_head") {
            return Ok(vec![last]);
        }
        Err(Error::Stage(format!(
            "{name}: no pipeline stage for this parameter (stages hold model.embed_tokens, model.layers.N, model.norm and lm_head)"
        )))
    }

    /// Total decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.last().map_or(0, |r| r.end)
    }

    /// `meta` restricted to each stage: its parameters and the specs of its modules.
    pub fn split_metadata(&self, meta: &CheckpointMetadata) -> Result<Vec<CheckpointMetadata>> {
        let mut out: Vec<CheckpointMetadata> = (0..self.pp())
            .map(|_| CheckpointMetadata {
                parameters: Default::default(),
                model_weight_transformation_specs: vec![],
                rank_files: vec![],
                ..meta.clone()
            })
            .collect();
        for (name, p) in &meta.parameters {
            for s in self.stages_of(name)? {
                if let Some(m) = out.get_mut(s) {
                    m.parameters.insert(name.clone(), p.clone());
                }
            }
        }
        for spec in &meta.model_weight_transformation_specs {
            for s in self.stages_of(&spec.module_fully_qualified_name)? {
                if let Some(m) = out.get_mut(s) {
                    m.model_weight_transformation_specs.push(spec.clone());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remainder_goes_to_the_first_stages() {
        let a = StageAssignment::evenly(7, 3, false).unwrap();
        assert_eq!(a.layers, vec![0..3, 3..5, 5..7]);
        assert_eq!(a.stages_of("model.layers.4.mlp.down_proj.weight").unwrap(), vec![1]);
        assert_eq!(a.stages_of("lm_head.weight").unwrap(), vec![2]);
        assert_eq!(a.stages_of("model.embed_tokens.weight").unwrap(), vec![0]);
        let t = StageAssignment::evenly(2, 2, true).unwrap();
        assert_eq!(t.stages_of("model.embed_tokens.weight").unwrap(), vec![0, 1]);
        assert!(StageAssignment::evenly(2, 3, false).is_err());
        assert!(a.stages_of("model.rotary.inv_freq").is_err());
    }

    #[test]
    fn one_stage_holds_any_model() {
        // A model without decoder layers and with its own names (examples/custom_model.rs) shards at pp 1.
        let a = StageAssignment::evenly(0, 1, false).unwrap();
        assert_eq!(a.stages_of("block.attn.o_proj.weight").unwrap(), vec![0]);
        assert!(StageAssignment::evenly(0, 2, false).is_err());
    }
}
