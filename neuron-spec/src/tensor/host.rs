//! Host tensors that keep the checkpoint's bytes as they are: bf16 stays bf16 until a backend asks for floats.

use crate::error::{Error, Result};
use crate::tensor::DType;
use indexmap::IndexMap;
use memmap2::Mmap;
use std::ops::Range;
use std::sync::Arc;

/// The span that [`HostTensor::release`] rounds out to: one page table (2 MiB on x86-64 and arm64 with 4 KiB
/// pages), the most a single fault maps, whether by fault-around or by mapping a whole large folio.
pub const RELEASE_ALIGN: usize = 2 << 20;

/// An ordered name → tensor map, in insertion order.
pub type StateDict = IndexMap<String, HostTensor>;

/// A read-only memory-mapped file that keeps its file open, so that a writer can copy a view's bytes file to
/// file in the kernel (`copy_file_range`) instead of through the mapping.
#[derive(Debug)]
pub(crate) struct MappedFile {
    pub(crate) map: Mmap,
    pub(crate) file: std::fs::File,
}

/// Where a tensor's bytes live: owned, or a range of a memory-mapped file (touched only when read).
#[derive(Clone, Debug)]
enum Bytes {
    Owned(Arc<Vec<u8>>, Range<usize>),
    Mapped(Arc<MappedFile>, Range<usize>),
}

/// A dense, row-major tensor of raw little-endian bytes with its dtype and shape.
#[derive(Clone, Debug)]
pub struct HostTensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Bytes,
}

impl PartialEq for HostTensor {
    fn eq(&self, other: &Self) -> bool {
        self.dtype == other.dtype && self.shape == other.shape && self.bytes() == other.bytes()
    }
}

/// Number of elements of `shape`.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl HostTensor {
    /// A tensor from owned bytes; the byte count must match dtype and shape.
    pub fn new(dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Self> {
        let expected = numel(&shape) * dtype.size();
        if bytes.len() != expected {
            return Err(Error::Tensor(format!(
                "tensor of dtype {dtype} and shape {shape:?} needs {expected} bytes, got {}",
                bytes.len()
            )));
        }
        let n = bytes.len();
        Ok(Self { dtype, shape, data: Bytes::Owned(Arc::new(bytes), 0..n) })
    }

    /// A tensor viewing `range` of a mapped file; the caller has checked the range against the header.
    pub(crate) fn mapped(dtype: DType, shape: Vec<usize>, map: Arc<MappedFile>, range: Range<usize>) -> Self {
        Self { dtype, shape, data: Bytes::Mapped(map, range) }
    }

    /// A zero-filled tensor.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Self {
        let n = numel(&shape) * dtype.size();
        Self { dtype, shape, data: Bytes::Owned(Arc::new(vec![0u8; n]), 0..n) }
    }

    /// An F32 tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        Self::new(DType::F32, shape, f32_le_bytes(values))
    }

    /// This tensor cast to `to` with round-to-nearest-even, as torch's `.to()` (f32 → bf16/f16 rounds from f32; NaN stays
    /// NaN); the tensor itself when it already has that dtype. Floating-point tensors only.
    pub fn cast(&self, to: DType) -> Result<HostTensor> {
        if self.dtype() == to {
            return Ok(self.clone());
        }
        if !self.dtype().is_float() || !to.is_float() {
            return Err(Error::Tensor(format!("cannot cast a {} tensor to {to}: floating-point only", self.dtype())));
        }
        HostTensor::from_f32_as(to, self.shape().to_vec(), &self.to_f32_vec())
    }

    /// A float tensor of `dtype` from f32 values (rounded to nearest even for f16/bf16).
    pub fn from_f32_as(dtype: DType, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        let bytes: Vec<u8> = match dtype {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F64 => values.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect(),
            DType::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            DType::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            other => return Err(Error::Tensor(format!("cannot build a {other} tensor from floats"))),
        };
        Self::new(dtype, shape, bytes)
    }

    /// An I64 tensor from values.
    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Result<Self> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(DType::I64, shape, bytes)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            // Ranges are validated when the view is made (header parsing, `narrow`).
            Bytes::Owned(v, r) => v.get(r.clone()).unwrap_or(&[]),
            Bytes::Mapped(m, r) => m.map.get(r.clone()).unwrap_or(&[]),
        }
    }

    /// For a view of a mapped file: the mapped file and the byte range (offset, length).
    pub(crate) fn mapped_range(&self) -> Option<(&MappedFile, u64, usize)> {
        match &self.data {
            Bytes::Mapped(m, r) => Some((m, r.start as u64, r.len())),
            Bytes::Owned(..) => None,
        }
    }

    /// For a view of a mapped file: the file and the byte range (the mapping starts at offset 0).
    pub(crate) fn file_range(&self) -> Option<(&std::fs::File, u64, usize)> {
        self.mapped_range().map(|(m, offset, len)| (&m.file, offset, len))
    }

    /// Drops this view's pages from the process (they stay in the page cache), so that streaming through a
    /// large memory-mapped checkpoint does not grow the resident set. No effect on owned tensors.
    ///
    /// The range is widened to [`RELEASE_ALIGN`] boundaries: a page fault also maps neighbouring pages (the
    /// kernel's fault-around, or the rest of a large folio), and pages mapped that way outside this view would
    /// otherwise stay resident for good once their own view has been released.
    pub fn release(&self) {
        if let Bytes::Mapped(m, r) = &self.data {
            if !r.is_empty() {
                // Windows are aligned in the address space, not in the file.
                let m = &m.map;
                let base = m.as_ptr() as usize;
                let start = r.start.saturating_sub((base + r.start) % RELEASE_ALIGN);
                let end_addr = (base + r.end).div_ceil(RELEASE_ALIGN).saturating_mul(RELEASE_ALIGN);
                let end = (end_addr - base).min(m.len());
                // SAFETY: the mapping is a read-only shared file mapping; after MADV_DONTNEED, reads fault the
                // same file bytes back in, so no view (this one or a neighbour) observes a change.
                let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
    }

    /// Maps this view's pages in one call before a full read (fewer page faults); no effect on owned tensors.
    pub fn prefault(&self) {
        if let Bytes::Mapped(m, r) = &self.data {
            if !r.is_empty() {
                // The file is mapped MADV_RANDOM (no read-around, for slices): ask for the whole range in large
                // reads first (MADV_WILLNEED starts readahead of exactly this range), then map it.
                let _ = m.map.advise_range(memmap2::Advice::WillNeed, r.start, r.len());
                // Older kernels lack MADV_POPULATE_READ: then the reads fault the pages in as usual.
                let _ = m.map.advise_range(memmap2::Advice::PopulateRead, r.start, r.len());
            }
        }
    }

    /// Indices `offset..offset + len` along `dim`: a zero-copy view when they are contiguous in memory
    /// (every dimension before `dim` has size 1), else a copy.
    pub fn narrow(&self, dim: usize, offset: usize, len: usize) -> Result<HostTensor> {
        let shape: Vec<usize> = if self.shape.is_empty() { vec![1] } else { self.shape.clone() };
        let full = *shape
            .get(dim)
            .ok_or_else(|| Error::Tensor(format!("dim {dim} out of range for shape {:?}", self.shape)))?;
        if offset.checked_add(len).is_none_or(|e| e > full) {
            return Err(Error::Tensor(format!(
                "indices {offset}..{} out of range for dim {dim} of shape {:?}",
                offset.saturating_add(len),
                self.shape
            )));
        }
        if offset == 0 && len == full {
            // The whole tensor: the same view.
            return Ok(self.clone());
        }
        let esize = self.dtype.size();
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product::<usize>() * esize;
        let mut new_shape = shape.clone();
        new_shape[dim] = len;
        if outer == 1 {
            let (start, end) = (offset * inner, (offset + len) * inner);
            let data = match &self.data {
                Bytes::Owned(v, r) => Bytes::Owned(v.clone(), r.start + start..r.start + end),
                Bytes::Mapped(m, r) => Bytes::Mapped(m.clone(), r.start + start..r.start + end),
            };
            return Ok(HostTensor { dtype: self.dtype, shape: new_shape, data });
        }
        let src = self.bytes();
        let run = len * inner;
        let mut out = Vec::with_capacity(outer * run);
        for o in 0..outer {
            let s0 = o * full * inner + offset * inner;
            out.extend_from_slice(&src[s0..s0 + run]);
        }
        // The strided gather touched pages across the whole source; the caller releases it once it has read
        // every slice it needs (`TensorSource::release`), rather than fault it in again slice after slice.
        HostTensor::new(self.dtype, new_shape, out)
    }

    /// The values as f32, converting f16/bf16/f64/integers; this is the only place bits change.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let b = self.bytes();
        match self.dtype {
            DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(b) {
                // Aligned (always, for our own buffers and safetensors data): one copy.
                Ok(v) if cfg!(target_endian = "little") => v.to_vec(),
                _ => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            },
            DType::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => match bytemuck::try_cast_slice::<u8, half::bf16>(b) {
                // half's slice conversion is vectorized where the CPU allows.
                Ok(v) if cfg!(target_endian = "little") => {
                    use half::slice::HalfFloatSliceExt;
                    let mut out = vec![0f32; v.len()];
                    v.convert_to_f32_slice(&mut out);
                    out
                }
                _ => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            },
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
            DType::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(),
            DType::I8 => b.iter().map(|v| *v as i8 as f32).collect(),
            DType::U8 | DType::BOOL => b.iter().map(|v| *v as f32).collect(),
        }
    }

    /// The values as i64 (integer tensors only).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        let b = self.bytes();
        Ok(match self.dtype {
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            other => return Err(Error::Tensor(format!("expected an integer tensor, found {other}"))),
        })
    }
}

/// A state dict holding one tensor.
pub fn single(name: &str, t: &HostTensor) -> StateDict {
    [(name.to_string(), t.clone())].into_iter().collect()
}

/// f32 values as little-endian bytes, in one copy.
pub(crate) fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice::<f32, u8>(values).to_vec()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}
