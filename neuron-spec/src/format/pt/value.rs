//! The values the pickle machine ([`super::pickle`]) builds: plain Python data, the few torch globals it
//! resolves ([`Global`]), and the storage and tensor references of a torch checkpoint.

use crate::tensor::DType;

/// The only globals (module + name) a torch checkpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch.<Type>Storage`, with its element type.
    Storage(DType),
    /// `torch.Size`.
    Size,
    /// `torch.<dtype>` (`torch.float32`, ...).
    DType(DType),
    /// `torch_xla.utils.serialization.TensorReference`.
    TensorReference,
}

impl Global {
    pub(crate) fn resolve(module: &str, name: &str) -> Option<Global> {
        let storage = |n: &str| {
            Some(match n {
                "FloatStorage" => DType::F32,
                "DoubleStorage" => DType::F64,
                "HalfStorage" => DType::F16,
                "BFloat16Storage" => DType::BF16,
                "LongStorage" => DType::I64,
                "IntStorage" => DType::I32,
                "ShortStorage" => DType::I16,
                "CharStorage" => DType::I8,
                "ByteStorage" => DType::U8,
                "BoolStorage" => DType::BOOL,
                _ => return None,
            })
        };
        let dtype = |n: &str| {
            Some(match n {
                "float32" | "float" => DType::F32,
                "float64" | "double" => DType::F64,
                "float16" | "half" => DType::F16,
                "bfloat16" => DType::BF16,
                "int64" | "long" => DType::I64,
                "int32" | "int" => DType::I32,
                "int16" | "short" => DType::I16,
                "int8" => DType::I8,
                "uint8" => DType::U8,
                "bool" => DType::BOOL,
                _ => return None,
            })
        };
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", "Size") => Some(Global::Size),
            ("torch_xla.utils.serialization", "TensorReference") => Some(Global::TensorReference),
            ("torch", n) => storage(n).map(Global::Storage).or_else(|| dtype(n).map(Global::DType)),
            _ => None,
        }
    }
}

/// A storage named by a persistent id: `('storage', torch.<T>Storage, key, location, numel)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Element type.
    pub dtype: DType,
    /// The record name under `<archive>/data/`.
    pub key: String,
    /// Number of elements.
    pub numel: usize,
}

/// A tensor rebuilt by `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Its storage.
    pub storage: StorageRef,
    /// Offset into the storage, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// A pickled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int that fits in i64.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict (or OrderedDict), in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A resolved global, not yet called.
    Global(Global),
    /// A storage persistent id.
    Storage(StorageRef),
    /// A tensor.
    Tensor(TensorRef),
    /// A `torch.Size`.
    Size(Vec<usize>),
    /// A torch dtype.
    DType(DType),
    /// An xser `TensorReference`, with its `tid` once its state is set.
    TensorReference(Option<i64>),
}

impl Value {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Size(_) => "torch.Size",
            Value::DType(_) => "torch.dtype",
            Value::TensorReference(_) => "TensorReference",
        }
    }

    /// Nodes in this value, counting at most up to `cap`.
    pub(crate) fn nodes(&self, cap: usize) -> usize {
        let mut n = 1;
        let add = |v: &Value, n: &mut usize| {
            if *n < cap {
                *n += v.nodes(cap - *n);
            }
        };
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().for_each(|x| add(x, &mut n)),
            Value::Dict(v) => v.iter().for_each(|(k, x)| {
                add(k, &mut n);
                add(x, &mut n);
            }),
            Value::Str(s) => n += s.len() / 64,
            Value::Bytes(b) => n += b.len() / 64,
            Value::Size(s) => n += s.len(),
            Value::Tensor(t) => n += t.shape.len() + t.stride.len(),
            _ => {}
        }
        n.min(cap.max(1))
    }

    /// The value as a non-negative integer.
    pub fn as_usize(&self, what: &str) -> Result<usize, String> {
        match self {
            Value::Int(i) if *i >= 0 => usize::try_from(*i).map_err(|_| format!("{what} {i} is too large")),
            Value::Bool(b) => Ok(usize::from(*b)),
            other => Err(format!("{what}: expected a non-negative int, found {}", other.kind_desc())),
        }
    }

    fn kind_desc(&self) -> String {
        match self {
            Value::Int(i) => format!("int {i}"),
            Value::Str(s) => format!("str {s:?}"),
            other => other.kind().to_string(),
        }
    }

    /// A tuple (or list, or torch.Size) of non-negative ints.
    pub fn as_usizes(&self, what: &str) -> Result<Vec<usize>, String> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(|x| x.as_usize(what)).collect(),
            Value::Size(s) => Ok(s.clone()),
            other => Err(format!("{what}: expected a tuple of ints, found {}", other.kind())),
        }
    }
}
