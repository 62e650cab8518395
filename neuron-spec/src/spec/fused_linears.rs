//! `FusedLinearsSpec`: several linears (gate_proj, up_proj) fused into one (gate_up_proj).

use super::check_spec_tp;
use super::layout::{join, Group, IndexMap, Layout, LocalTensor, Packing, Part};
use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};

/// The fuse axis: column (0, outputs concatenated) or row (1, inputs concatenated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "usize")]
pub enum FuseAxis {
    /// Axis 0: a column-parallel fused linear.
    Column,
    /// Axis 1: a row-parallel fused linear.
    Row,
}

impl FuseAxis {
    /// The tensor axis (0 or 1).
    pub fn axis(self) -> usize {
        match self {
            FuseAxis::Column => 0,
            FuseAxis::Row => 1,
        }
    }
}

impl From<FuseAxis> for usize {
    fn from(a: FuseAxis) -> usize {
        a.axis()
    }
}

impl<'de> Deserialize<'de> for FuseAxis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // The reference accepts 0, 1, "column" and "row".
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) if n.as_u64() == Some(0) => Ok(FuseAxis::Column),
            serde_json::Value::Number(n) if n.as_u64() == Some(1) => Ok(FuseAxis::Row),
            serde_json::Value::String(s) if s == "column" => Ok(FuseAxis::Column),
            serde_json::Value::String(s) if s == "row" => Ok(FuseAxis::Row),
            other => {
                Err(serde::de::Error::custom(format!("fuse_axis must be 0, 1, \"column\" or \"row\", found {other}")))
            }
        }
    }
}

/// Linears fused into one, sharded like the fused layer (reference: `FusedLinearsSpec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusedLinearsSpec {
    /// Name of the fused linear in the custom module (`gate_up_proj`).
    pub fused_linear_name: String,
    /// HF names of the member linears, in fusing order.
    pub linear_names: Vec<String>,
    /// Whether the linears have a bias.
    pub bias: bool,
    /// The axis the members are concatenated along.
    pub fuse_axis: FuseAxis,
    /// Each member's full size along the fuse axis.
    pub original_dims: Vec<usize>,
    /// The TP size the spec was built for.
    pub tp_size: usize,
    /// `"lora"` when the module carries LoRA adapters.
    #[serde(default)]
    pub peft_type: Option<String>,
    /// The HF checkpoint's own fused tensor (Phi-3's `gate_up_proj`), when the members are its ranges along the
    /// fuse axis, in order, instead of separate linears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed_linear_name: Option<String>,
}

impl FusedLinearsSpec {
    /// The reference's class name.
    pub const CLASS_NAME: &'static str = "FusedLinearsSpec";

    fn param_names(&self) -> &'static [&'static str] {
        if self.bias {
            &["weight", "bias"]
        } else {
            &["weight"]
        }
    }

    /// Checks tp, names, dims and axis.
    pub fn validate(&self, tp: usize) -> Result<()> {
        let c = Self::CLASS_NAME;
        check_spec_tp(c, self.tp_size, tp)?;
        if self.linear_names.is_empty() {
            return Err(Error::spec(c, "linear_names", "must name at least one linear"));
        }
        if self.original_dims.len() != self.linear_names.len() {
            return Err(Error::spec(
                c,
                "original_dims",
                format!("has {} entries for {} linear_names", self.original_dims.len(), self.linear_names.len()),
            ));
        }
        for (n, d) in self.linear_names.iter().zip(&self.original_dims) {
            // A size tp does not divide is padded per member, like the vocabulary.
            if *d == 0 {
                return Err(Error::spec(c, "original_dims", format!("{n} has size 0")));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for n in self.linear_names.iter().filter(|_| self.packed_linear_name.is_none()) {
            if !seen.insert(n) {
                return Err(Error::spec(c, "linear_names", format!("{n} is listed twice")));
            }
        }
        if self.bias && self.fuse_axis == FuseAxis::Row {
            return Err(Error::spec(c, "bias", "a row-fused linear has no per-member bias to split"));
        }
        Ok(())
    }

    /// The rank-local tensors as data: each member's shard (zero-padded where tp does not divide it), read from
    /// the member linear or from its range of the packed HF tensor, concatenated along the fuse axis. For a LoRA
    /// spec, its factors: the shared one whole, the members' own factors sharded like the weight.
    pub fn layout(&self, module: &str) -> Layout {
        let f = &self.fused_linear_name;
        let axis = self.fuse_axis.axis();
        let total: usize = self.original_dims.iter().fold(0usize, |a, d| a.saturating_add(*d));
        // Member `i` of parameter `p`: its own tensor, or its rows (columns) of the packed one.
        let member = |i: usize, p: &str, map_len: usize| -> Part {
            match &self.packed_linear_name {
                Some(k) => Part {
                    original: join(module, &format!("{k}.{p}")),
                    packing: Some(Packing { offset: self.original_dims[..i].iter().sum(), total }),
                    map: IndexMap::Split { len: map_len },
                },
                None => {
                    Part::new(join(module, &format!("{}.{p}", self.linear_names[i])), IndexMap::Split { len: map_len })
                }
            }
        };
        let members = |p: &str| -> Vec<Part> {
            self.original_dims.iter().enumerate().take(self.linear_names.len()).map(|(i, d)| member(i, p, *d)).collect()
        };
        if self.is_lora() {
            let (shared, own) = self.lora_factors();
            let shared_name = join(module, &format!("{f}.{shared}.weight"));
            let tensors = vec![
                LocalTensor { name: shared_name.clone(), dim: 0, parts: vec![Part::new(shared_name, IndexMap::Whole)] },
                LocalTensor {
                    name: join(module, &format!("{f}.{own}.weight")),
                    dim: axis,
                    parts: members(&format!("{own}.weight")),
                },
            ];
            return Layout { groups: vec![Group { tensors, optional: true }] };
        }
        let tensors = self
            .param_names()
            .iter()
            .map(|p| LocalTensor {
                name: join(module, &format!("{f}.{p}")),
                // A bias is 1-D: it only exists for column fusing, along axis 0.
                dim: if *p == "bias" { 0 } else { axis },
                parts: members(p),
            })
            .collect();
        Layout { groups: vec![Group { tensors, optional: false }] }
    }

    fn is_lora(&self) -> bool {
        self.peft_type.as_deref() == Some(crate::spec::PEFT_TYPE_LORA)
    }

    /// Checks the fused parameter's partition dim against the fuse axis.
    pub(crate) fn check_partition_dim(&self, partition_dim: Option<usize>) -> Result<()> {
        let axis = self.fuse_axis.axis();
        match partition_dim {
            Some(d) if d != axis => Err(Error::spec(
                Self::CLASS_NAME,
                "fuse_axis",
                format!("fuse axis {axis} differs from the fused parameter's partition_dim {d}"),
            )),
            _ => Ok(()),
        }
    }

    /// (shared factor, per-member factor): the member factor is the one along the fused axis.
    fn lora_factors(&self) -> (&'static str, &'static str) {
        match self.fuse_axis {
            FuseAxis::Column => ("lora_A", "lora_B"),
            FuseAxis::Row => ("lora_B", "lora_A"),
        }
    }
}
