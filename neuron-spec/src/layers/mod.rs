//! Tensor-parallel burn layers that know their HF layout: each one implements
//! [`CustomModule`](crate::spec::contract::CustomModule) as a leaf (parameter names, TP attributes, loading and
//! saving rank-local tensors), and runs its forward pass with a [`Communicator`](crate::comm::Communicator).
//!
//! Conventions shared by every layer:
//! * the TP size and rank are explicit (`TpContext`, a `#[module(skip)]` field), never global state;
//! * rank-local tensors are named and oriented as in HF (`prefix.weight`, linear weights `[out, in]`);
//!   burn holds linear weights as `[in, out]`, so loading and saving transpose ([`transpose_2d`]);
//! * burn holds f32: bf16/f16 checkpoint tensors are converted when a burn tensor is filled, and saved
//!   rank tensors are F32;
//! * where `tp` does not divide a partitioned size, every rank holds `ceil(len / tp)` rows (zero padding at
//!   the tail) and gathered outputs are truncated to the true size.

mod burn_leaves;
mod column;
mod embedding;
mod linear;
mod lora_branch;
mod qkv_column;
mod rms_norm;
mod row;
mod store;
mod transpose;

pub use column::{ColumnParallelLinear, ColumnParallelLinearConfig};
pub use embedding::{ParallelEmbedding, ParallelEmbeddingConfig};
pub use linear::linear;
pub use lora_branch::{GqaLoraBranch, LoraBranch};
pub use qkv_column::{GqaQkvColumnParallelLinear, GqaQkvColumnParallelLinearConfig, QkvOutput};
pub use row::{RowParallelLinear, RowParallelLinearConfig};
pub use store::{HfRankStore, HfRankStoreError};
pub use transpose::transpose_2d;

use crate::error::{Error, Result};
use crate::spec::metadata::ParameterMetadata;
use crate::tensor::TensorSource;
use crate::tensor::{HostTensor, StateDict};
use burn::module::{Param, ParamId};
use burn::tensor::{Device, Tensor};

pub(crate) use crate::comm::{f32_tensor, tensor_to_f32};

/// A parameter of `shape` that is only allocated (as zeros) if it is read before being loaded.
pub(crate) fn lazy_zeros<const D: usize>(shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::uninitialized(ParamId::new(), move |d, _| Tensor::zeros(shape, d), device.clone(), false, shape.into())
}

/// `prefix.name`.
pub(crate) fn pname(prefix: &str, name: &str) -> String {
    crate::spec::contract::join_path(prefix, name)
}

/// Reads `name` from `src` as f32 values, checking its shape.
pub(crate) fn read_f32(src: &dyn TensorSource, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
    let Some(info) = src.info(name) else {
        let names = src.names();
        let c: Vec<&str> = names.iter().map(String::as_str).collect();
        return Err(Error::key_mismatch("rank tensors", vec![name.to_string()], vec![], &c));
    };
    if info.shape != expected {
        return Err(Error::ShapeMismatch {
            tensor: name.to_string(),
            expected: expected.to_vec(),
            found: info.shape,
            file: None,
        });
    }
    let t = src.tensor(name)?;
    if !matches!(
        t.dtype(),
        crate::tensor::DType::F32 | crate::tensor::DType::F16 | crate::tensor::DType::BF16 | crate::tensor::DType::F64
    ) {
        return Err(Error::DtypeMismatch {
            tensor: name.to_string(),
            expected: "a float dtype".into(),
            found: t.dtype().to_string(),
            file: None,
        });
    }
    Ok(t.to_f32_vec())
}

/// A new value for `old`, keeping its id.
fn replace<const D: usize>(old: &Param<Tensor<D>>, value: Tensor<D>) -> Param<Tensor<D>> {
    Param::initialized(old.id, value)
}

/// Loads an HF `[out, in]` linear weight into a burn `[in, out]` parameter.
pub(crate) fn load_linear_weight(
    src: &dyn TensorSource,
    name: &str,
    old: &Param<Tensor<2>>,
    out: usize,
    inp: usize,
    device: &Device,
) -> Result<Param<Tensor<2>>> {
    let v = read_f32(src, name, &[out, inp])?;
    let t = transpose_2d(&v, out, inp)?;
    Ok(replace(old, f32_tensor(t, [inp, out], device, name)?))
}

/// Loads a tensor whose HF and burn layouts agree (biases, norms, embeddings).
pub(crate) fn load_same<const D: usize>(
    src: &dyn TensorSource,
    name: &str,
    old: &Param<Tensor<D>>,
    shape: [usize; D],
    device: &Device,
) -> Result<Param<Tensor<D>>> {
    let v = read_f32(src, name, &shape)?;
    Ok(replace(old, f32_tensor(v, shape, device, name)?))
}

/// Saves a burn `[in, out]` linear weight as an HF `[out, in]` F32 tensor.
pub(crate) fn save_linear_weight(p: &Param<Tensor<2>>, name: &str, out: &mut StateDict) -> Result<()> {
    let (shape, v) = tensor_to_f32(p.val(), name)?;
    let [inp, o] =
        <[usize; 2]>::try_from(shape.as_slice()).map_err(|_| Error::Tensor(format!("{name}: not a matrix")))?;
    let t = transpose_2d(&v, inp, o)?;
    out.insert(name.to_string(), HostTensor::from_f32(vec![o, inp], &t)?);
    Ok(())
}

/// Saves a tensor whose HF and burn layouts agree, as F32.
pub(crate) fn save_same<const D: usize>(p: &Param<Tensor<D>>, name: &str, out: &mut StateDict) -> Result<()> {
    let (shape, v) = tensor_to_f32(p.val(), name)?;
    out.insert(name.to_string(), HostTensor::from_f32(shape, &v)?);
    Ok(())
}

/// A sharded parameter's metadata with its global (unpadded) shape.
pub(crate) fn parallel_meta(dim: usize, stride: usize, tp: usize, global_shape: Vec<usize>) -> ParameterMetadata {
    ParameterMetadata { shape: Some(global_shape), ..ParameterMetadata::parallel(dim, stride, tp) }
}

/// A replicated parameter's metadata with its shape.
pub(crate) fn replicated_meta(shape: Vec<usize>) -> ParameterMetadata {
    ParameterMetadata { shape: Some(shape), ..ParameterMetadata::replicated() }
}

/// Checks the last dimension of a layer input, so a wrong input is an error rather than a burn panic.
pub(crate) fn check_last_dim<const D: usize>(x: &Tensor<D>, expected: usize, what: &str) -> Result<()> {
    let dims = x.dims();
    if D == 0 || dims[D - 1] != expected {
        let mut e = dims.to_vec();
        if let Some(l) = e.last_mut() {
            *l = expected;
        }
        return Err(Error::ShapeMismatch { tensor: what.to_string(), expected: e, found: dims.to_vec(), file: None });
    }
    Ok(())
}

/// Each member's size along the fuse axis: `configured`, or `total` split equally among `members`.
pub(crate) fn fused_dims(
    layer: &str,
    configured: Option<&[usize]>,
    total: usize,
    members: usize,
) -> Result<Vec<usize>> {
    if let Some(d) = configured {
        // No names (a packed source, see `Spec::with_packed_source`): one member per configured size.
        if members == 0 {
            return Ok(d.to_vec());
        }
        if d.len() != members {
            return Err(Error::spec(
                "FusedLinearsSpec",
                "linear_names",
                format!("{layer} fuses {} linears, {members} names given", d.len()),
            ));
        }
        return Ok(d.to_vec());
    }
    if members == 0 {
        return Err(Error::spec(
            "FusedLinearsSpec",
            "packed",
            format!("{layer}: a packed source needs the layer's member sizes (with_fused_dims or with_fused_members)"),
        ));
    }
    if total.checked_rem(members) != Some(0) {
        return Err(Error::spec(
            "FusedLinearsSpec",
            "original_dims",
            format!("{layer}: size {total} cannot be split equally among {members} linears"),
        ));
    }
    Ok(vec![total / members; members])
}

/// Validates fused member sizes for a layer: positive, adding up to `total`. Where `tp` does not divide a
/// member, each rank holds `ceil(d / tp)` of it, zero-padded (like the vocabulary).
pub(crate) fn check_fused(layer: &str, dims: &[usize], total: usize, _tp: usize) -> Result<()> {
    if dims.is_empty() || dims.iter().sum::<usize>() != total {
        return Err(Error::spec(layer, "fused_dims", format!("{dims:?} do not add up to {total}")));
    }
    if dims.contains(&0) {
        return Err(Error::spec(layer, "fused_dims", format!("{dims:?}: a member of size 0")));
    }
    Ok(())
}

/// The smallest and largest value of an integer tensor (`(i64::MAX, i64::MIN)` when empty), read back to the host.
pub(crate) fn int_range<const D: usize>(t: &Tensor<D, burn::tensor::Int>) -> Result<(i64, i64)> {
    let data = t.try_to_data().map_err(|e| Error::InputData(format!("reading token ids back failed: {e:?}")))?;
    let data = if data.dtype() == burn::tensor::DType::I64 {
        data
    } else {
        data.try_cast_as::<i64>().map_err(|e| Error::InputData(format!("token ids: {e:?}")))?
    };
    let v = data.as_slice::<i64>().map_err(|e| Error::InputData(format!("token ids: {e:?}")))?;
    Ok(v.iter().fold((i64::MAX, i64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x))))
}

/// Loads a burn `Linear` from HF-oriented `prefix.weight` ([out, in]) and `prefix.bias`, plus the LoRA
/// branches named under `prefix`: the shared body of the column- and row-parallel layers.
pub(crate) fn load_linear_and_lora(
    mut linear: burn::nn::Linear,
    prefix: &str,
    src: &dyn TensorSource,
    (out_local, in_local): (usize, usize),
    device: &Device,
) -> Result<(burn::nn::Linear, Vec<lora_branch::LoraBranch>)> {
    linear.weight = load_linear_weight(src, &pname(prefix, "weight"), &linear.weight, out_local, in_local, device)?;
    if let Some(b) = &linear.bias {
        linear.bias = Some(load_same(src, &pname(prefix, "bias"), b, [out_local], device)?);
    }
    let branches = lora_branch::load_branches(src, prefix, in_local, out_local, device)?;
    Ok((linear, branches))
}

/// Saves what [`load_linear_and_lora`] loads.
pub(crate) fn save_linear_and_lora(
    linear: &burn::nn::Linear,
    branches: &[lora_branch::LoraBranch],
    prefix: &str,
    out: &mut StateDict,
) -> Result<()> {
    save_linear_weight(&linear.weight, &pname(prefix, "weight"), out)?;
    if let Some(b) = &linear.bias {
        save_same(b, &pname(prefix, "bias"), out)?;
    }
    lora_branch::save_branches(branches, prefix, out)
}

/// The `FusedLinearsSpec` of a column- or row-parallel layer fusing `linear_names` along `axis`.
pub(crate) fn fused_linears_spec(
    fused_linear_name: &str,
    linear_names: &[&str],
    (bias, has_lora): (bool, bool),
    axis: crate::spec::FuseAxis,
    (configured, total): (Option<&[usize]>, usize),
    tp: usize,
) -> Result<crate::spec::Spec> {
    let spec = crate::spec::FusedLinearsSpec {
        fused_linear_name: fused_linear_name.to_string(),
        linear_names: linear_names.iter().map(|s| s.to_string()).collect(),
        bias,
        fuse_axis: axis,
        original_dims: fused_dims(fused_linear_name, configured, total, linear_names.len())?,
        tp_size: tp,
        // guess_peft_type: the layer carries LoRA.
        peft_type: has_lora.then(|| crate::lora::PEFT_TYPE_LORA.to_string()),
        packed_linear_name: None,
    };
    // No names: the members come from one packed tensor, named by `Spec::with_packed_source`, which validates.
    if !linear_names.is_empty() {
        spec.validate(tp)?;
    }
    Ok(crate::spec::Spec::FusedLinears(spec))
}
