//! `FusedLinearsSpec`: several linears (gate_proj, up_proj) fused into one (gate_up_proj).

use super::{check_spec_tp, require};
use crate::error::{Error, Result};
use crate::plan::{TensorInfo, TensorPlan, TensorSource};
use crate::sharding::fused_plan;
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
            if d % tp != 0 || *d == 0 {
                return Err(Error::spec(
                    c,
                    "original_dims",
                    format!("{n} has size {d}, not a positive multiple of tp {tp}"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for n in &self.linear_names {
            if !seen.insert(n) {
                return Err(Error::spec(c, "linear_names", format!("{n} is listed twice")));
            }
        }
        if self.bias && self.fuse_axis == FuseAxis::Row {
            return Err(Error::spec(c, "bias", "a row-fused linear has no per-member bias to split"));
        }
        Ok(())
    }

    /// `<module>.<fused>.weight` (and `.bias`).
    pub fn local_parameter_names(&self, module: &str) -> Vec<String> {
        self.param_names().iter().map(|p| format!("{module}.{}.{p}", self.fused_linear_name)).collect()
    }

    /// `<module>.<linear>.weight` (and `.bias`) for every member.
    pub fn original_parameter_names(&self, module: &str) -> Vec<String> {
        self.param_names()
            .iter()
            .flat_map(|p| self.linear_names.iter().map(move |l| format!("{module}.{l}.{p}")))
            .collect()
    }

    fn dim_for(&self, param: &str, partition_dim: Option<usize>) -> Result<usize> {
        let axis = self.fuse_axis.axis();
        match (param, partition_dim) {
            // A bias is 1-D: it only exists for column fusing, along axis 0.
            ("bias", _) => Ok(0),
            (_, Some(d)) if d != axis => Err(Error::spec(
                Self::CLASS_NAME,
                "fuse_axis",
                format!("fuse axis {axis} differs from the fused parameter's partition_dim {d}"),
            )),
            _ => Ok(axis),
        }
    }

    /// Plans of rank `rank`'s fused tensors.
    pub fn plan_rank(
        &self,
        module: &str,
        src: &dyn TensorSource,
        part: usize,
        partition_dim: Option<usize>,
        tp: usize,
        rank: usize,
    ) -> Result<Vec<TensorPlan>> {
        self.validate(tp)?;
        let mut plans = Vec::new();
        for p in self.param_names() {
            let dim = self.dim_for(p, partition_dim)?;
            let mut members = Vec::new();
            for (l, d) in self.linear_names.iter().zip(&self.original_dims) {
                let info = require(src, &format!("{module}.{l}.{p}"))?;
                if info.shape.get(dim) != Some(d) {
                    return Err(Error::spec(
                        Self::CLASS_NAME,
                        "original_dims",
                        format!("{} is {:?}, but original_dims says {d} along dim {dim}", info.name, info.shape),
                    ));
                }
                members.push(info);
            }
            let name = format!("{module}.{}.{p}", self.fused_linear_name);
            plans.push(fused_plan(&name, &members, part, dim, dim, tp, rank)?);
        }
        Ok(plans)
    }

    /// `<module>.<fused>.lora_A.weight` and `.lora_B.weight`.
    pub fn lora_local_parameter_names(&self, module: &str) -> Vec<String> {
        let f = &self.fused_linear_name;
        vec![format!("{module}.{f}.lora_A.weight"), format!("{module}.{f}.lora_B.weight")]
    }

    /// The full-rank factors: a column group's shared A and each member's B rows (a row group: each member's A
    /// columns and the shared B).
    pub fn lora_original_parameter_names(&self, module: &str) -> Vec<String> {
        let f = &self.fused_linear_name;
        let (shared, own) = self.lora_factors();
        let mut v = vec![format!("{module}.{f}.{shared}.weight")];
        v.extend(self.linear_names.iter().map(|l| format!("{module}.{l}.{own}.weight")));
        v
    }

    /// (shared factor, per-member factor): the member factor is the one along the fused axis.
    fn lora_factors(&self) -> (&'static str, &'static str) {
        match self.fuse_axis {
            FuseAxis::Column => ("lora_A", "lora_B"),
            FuseAxis::Row => ("lora_B", "lora_A"),
        }
    }

    /// Rank `rank`'s LoRA factors: the shared factor whole (replicated), the members' factors sharded and fused
    /// exactly like the weight (B's rows for a column group, A's columns for a row group).
    pub fn plan_rank_lora(
        &self,
        module: &str,
        src: &dyn TensorSource,
        part: usize,
        tp: usize,
        rank: usize,
    ) -> Result<Vec<TensorPlan>> {
        self.validate(tp)?;
        let f = &self.fused_linear_name;
        let (shared, own) = self.lora_factors();
        let shared_name = format!("{module}.{f}.{shared}.weight");
        let Some(shared_info) = src.info(&shared_name) else { return Ok(vec![]) };
        let dim = self.fuse_axis.axis();
        let mut members = Vec::new();
        for (l, d) in self.linear_names.iter().zip(&self.original_dims) {
            let info = require(src, &format!("{module}.{l}.{own}.weight"))?;
            if info.shape.get(dim) != Some(d) {
                return Err(Error::spec(
                    Self::CLASS_NAME,
                    "original_dims",
                    format!("{} is {:?}, but original_dims says {d} along dim {dim}", info.name, info.shape),
                ));
            }
            members.push(info);
        }
        let fused = fused_plan(&format!("{module}.{f}.{own}.weight"), &members, part, dim, dim, tp, rank)?;
        Ok(vec![TensorPlan::whole(&shared_name, &shared_info, part), fused])
    }

    /// The full-rank factors' shapes from one rank's LoRA factors.
    pub fn lora_original_infos(&self, module: &str, local: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
        self.validate(tp)?;
        let f = &self.fused_linear_name;
        let (shared, own) = self.lora_factors();
        let Some(s) = local.info(&format!("{module}.{f}.{shared}.weight")) else { return Ok(vec![]) };
        let fused = require(local, &format!("{module}.{f}.{own}.weight"))?;
        let dim = self.fuse_axis.axis();
        let expected: usize = self.original_dims.iter().sum::<usize>() / tp;
        if fused.shape.len() != 2 || fused.shape[dim] != expected {
            let mut e = fused.shape.clone();
            if let Some(x) = e.get_mut(dim) {
                *x = expected;
            }
            return Err(Error::ShapeMismatch { tensor: fused.name, expected: e, found: fused.shape, file: None });
        }
        let mut out = vec![s];
        for (l, d) in self.linear_names.iter().zip(&self.original_dims) {
            let mut shape = fused.shape.clone();
            shape[dim] = *d;
            out.push(TensorInfo { name: format!("{module}.{l}.{own}.weight"), dtype: fused.dtype, shape });
        }
        Ok(out)
    }

    /// The members' shapes, from one rank's fused tensor; its size must be `sum(original_dims) / tp`.
    pub fn original_infos(&self, module: &str, local: &dyn TensorSource, tp: usize) -> Result<Vec<TensorInfo>> {
        self.validate(tp)?;
        let mut out = Vec::new();
        for p in self.param_names() {
            let dim = self.dim_for(p, None)?;
            let fused = require(local, &format!("{module}.{}.{p}", self.fused_linear_name))?;
            let dims = &self.original_dims;
            let sum = dims.iter().try_fold(0usize, |a, d| a.checked_add(*d));
            let expected = sum.map(|s| s / tp);
            if expected.is_none() || fused.shape.get(dim) != expected.as_ref() {
                let mut e = fused.shape.clone();
                if let (Some(x), Some(v)) = (e.get_mut(dim), expected) {
                    *x = v;
                }
                return Err(Error::spec(
                    Self::CLASS_NAME,
                    "original_dims",
                    format!(
                        "{dims:?} sum to {}, so at tp {tp} each rank's {} should be {e:?}, found {:?}",
                        sum.map_or("an overflowing size".to_string(), |s| s.to_string()),
                        fused.name,
                        fused.shape
                    ),
                ));
            }
            for (l, d) in self.linear_names.iter().zip(&self.original_dims) {
                let mut shape = fused.shape.clone();
                shape[dim] = *d;
                out.push(TensorInfo { name: format!("{module}.{l}.{p}"), dtype: fused.dtype, shape });
            }
        }
        Ok(out)
    }
}
