//! A safe pickle reader for what `torch.save` writes: it never imports or calls anything. It interprets the
//! opcodes of protocols 2 to 5 that a torch state dict and neuronx-distributed's xser layout use, resolves
//! only the globals listed in [`Global`], and refuses anything else with an error naming the opcode or class.
//! Sizes are bounded: the stack, the memo, strings, and the values copied out of the memo.

pub use super::value::{Global, StorageRef, TensorRef, Value};

/// Most values the memo may hand out (`BINGET` copies), counted in nodes: a pickle that duplicates a
/// container again and again would otherwise grow exponentially.
const MAX_COPIED_NODES: usize = 1 << 22;
/// Deepest stack and largest memo.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 20;

/// One pickle step's failure: what and at which byte.
fn err(pos: usize, m: impl std::fmt::Display) -> String {
    format!("pickle byte {pos}: {m}")
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len()).ok_or_else(|| {
            err(self.pos, format!("truncated: needs {n} more bytes, {} left", self.data.len() - self.pos))
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn len_u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }
    fn len_u64(&mut self) -> Result<usize, String> {
        usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| err(self.pos, "length too large"))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|b| *b == b'\n').ok_or_else(|| err(self.pos, "unterminated line"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| err(self.pos, "a line that is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> Result<String, String> {
        let p = self.pos;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| err(p, "a str that is not UTF-8"))
    }
}

struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<usize, Value>,
    copied: usize,
}

impl Machine {
    fn push(&mut self, pos: usize, v: Value) -> Result<(), String> {
        if self.stack.len() >= MAX_STACK {
            return Err(err(pos, "stack too deep"));
        }
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self, pos: usize) -> Result<Value, String> {
        if self.marks.last().is_some_and(|m| *m >= self.stack.len()) {
            return Err(err(pos, "pop across a mark"));
        }
        self.stack.pop().ok_or_else(|| err(pos, "stack underflow"))
    }
    fn top(&mut self, pos: usize) -> Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| err(pos, "stack underflow"))
    }
    fn pop_mark(&mut self, pos: usize) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or_else(|| err(pos, "no mark"))?;
        if m > self.stack.len() {
            return Err(err(pos, "mark beyond the stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn memo_put(&mut self, pos: usize, idx: usize) -> Result<(), String> {
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(err(pos, "memo too large"));
        }
        let v = self.stack.last().ok_or_else(|| err(pos, "memoize on an empty stack"))?.clone();
        // A memoized value is copied in: count it like a copy out.
        self.charge(pos, &v)?;
        self.memo.insert(idx, v);
        Ok(())
    }
    fn charge(&mut self, pos: usize, v: &Value) -> Result<(), String> {
        let budget = MAX_COPIED_NODES.saturating_sub(self.copied);
        let n = v.nodes(budget.saturating_add(1));
        if n > budget {
            return Err(err(pos, "values copied out of the memo exceed the size bound"));
        }
        self.copied += n;
        Ok(())
    }
    fn memo_get(&mut self, pos: usize, idx: usize) -> Result<(), String> {
        let v = self.memo.get(&idx).cloned().ok_or_else(|| err(pos, format!("memo entry {idx} is not set")))?;
        self.charge(pos, &v)?;
        self.push(pos, v)
    }
}

fn set_items(pos: usize, target: &mut Value, items: Vec<Value>) -> Result<(), String> {
    let Value::Dict(d) = target else {
        return Err(err(pos, format!("SETITEM(S) on a {}", target.kind())));
    };
    if !items.len().is_multiple_of(2) {
        return Err(err(pos, "SETITEMS with an odd number of items"));
    }
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Some(slot) = d.iter_mut().find(|(x, _)| *x == k) {
            slot.1 = v;
        } else {
            d.push((k, v));
        }
    }
    Ok(())
}

/// A global as a value: a torch dtype is a value in itself, everything else a callable.
fn global_value(g: Global) -> Value {
    match g {
        Global::DType(d) => Value::DType(d),
        other => Value::Global(other),
    }
}

/// Calls an allowed global with `args` (REDUCE).
fn call(pos: usize, g: Global, args: Vec<Value>) -> Result<Value, String> {
    match g {
        Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
        Global::Size => match args.as_slice() {
            [shape] => Ok(Value::Size(shape.as_usizes("torch.Size").map_err(|m| err(pos, m))?)),
            _ => Err(err(pos, "torch.Size takes one tuple")),
        },
        Global::RebuildTensorV2 => {
            let (storage, offset, shape, stride) =
                match args.as_slice() {
                    [Value::Storage(s), o, sh, st, ..] if args.len() >= 6 && args.len() <= 7 => (s, o, sh, st),
                    _ => return Err(err(
                        pos,
                        "_rebuild_tensor_v2 takes (storage, offset, size, stride, requires_grad, hooks[, metadata])",
                    )),
                };
            let shape = shape.as_usizes("tensor size").map_err(|m| err(pos, m))?;
            let stride = stride.as_usizes("tensor stride").map_err(|m| err(pos, m))?;
            if shape.len() != stride.len() {
                return Err(err(pos, format!("tensor size {shape:?} and stride {stride:?} differ in rank")));
            }
            let offset = offset.as_usize("storage offset").map_err(|m| err(pos, m))?;
            Ok(Value::Tensor(TensorRef { storage: storage.clone(), offset, shape, stride }))
        }
        Global::RebuildParameter => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err(err(pos, "_rebuild_parameter takes a tensor")),
        },
        other => Err(err(pos, format!("calling {other:?} is not supported"))),
    }
}

/// Parses a pickle, returning its value (persistent ids become [`Value::Storage`]).
pub fn parse(data: &[u8]) -> Result<Value, String> {
    let mut r = Reader { data, pos: 0 };
    let mut m = Machine { stack: Vec::new(), marks: Vec::new(), memo: Default::default(), copied: 0 };
    loop {
        let pos = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if !(2..=5).contains(&proto) {
                    return Err(err(pos, format!("pickle protocol {proto} is not supported (2 to 5)")));
                }
            }
            0x95 => {
                r.take(8)?; // FRAME: a length hint
            }
            b'.' => {
                let v = m.pop(pos)?;
                if !m.stack.is_empty() || !m.marks.is_empty() {
                    return Err(err(pos, "STOP with values left on the stack"));
                }
                return Ok(v);
            }
            b'(' => {
                if m.marks.len() >= MAX_STACK {
                    return Err(err(pos, "too many marks"));
                }
                m.marks.push(m.stack.len());
            }
            b'0' => {
                m.pop(pos)?;
            }
            b'}' => m.push(pos, Value::Dict(Vec::new()))?,
            b']' => m.push(pos, Value::List(Vec::new()))?,
            b')' => m.push(pos, Value::Tuple(Vec::new()))?,
            b'N' => m.push(pos, Value::None)?,
            0x88 => m.push(pos, Value::Bool(true))?,
            0x89 => m.push(pos, Value::Bool(false))?,
            b'K' => {
                let v = r.u8()?;
                m.push(pos, Value::Int(i64::from(v)))?
            }
            b'M' => {
                let v = u16::from_le_bytes(r.le()?);
                m.push(pos, Value::Int(i64::from(v)))?
            }
            b'J' => {
                let v = i32::from_le_bytes(r.le()?);
                m.push(pos, Value::Int(i64::from(v)))?
            }
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err(err(pos, format!("a {n}-byte int does not fit in 64 bits")));
                }
                let neg = b.last().is_some_and(|x| x & 0x80 != 0);
                let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
                a[..n].copy_from_slice(b);
                m.push(pos, Value::Int(i64::from_le_bytes(a)))?
            }
            b'G' => {
                let v = f64::from_be_bytes(r.le()?);
                m.push(pos, Value::Float(v))?
            }
            b'X' => {
                let n = r.len_u32()?;
                let s = r.utf8(n)?;
                m.push(pos, Value::Str(s))?
            }
            0x8c => {
                let n = r.u8()? as usize;
                let s = r.utf8(n)?;
                m.push(pos, Value::Str(s))?
            }
            0x8d => {
                let n = r.len_u64()?;
                let s = r.utf8(n)?;
                m.push(pos, Value::Str(s))?
            }
            b'C' => {
                let n = r.u8()? as usize;
                let b = r.take(n)?.to_vec();
                m.push(pos, Value::Bytes(b))?
            }
            b'B' => {
                let n = r.len_u32()?;
                let b = r.take(n)?.to_vec();
                m.push(pos, Value::Bytes(b))?
            }
            b'q' => {
                let i = r.u8()? as usize;
                m.memo_put(pos, i)?
            }
            b'r' => {
                let i = r.len_u32()?;
                m.memo_put(pos, i)?
            }
            0x94 => {
                let i = m.memo.len();
                m.memo_put(pos, i)?
            }
            b'h' => {
                let i = r.u8()? as usize;
                m.memo_get(pos, i)?
            }
            b'j' => {
                let i = r.len_u32()?;
                m.memo_get(pos, i)?
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                let g = Global::resolve(module, name).ok_or_else(|| {
                    err(pos, format!("refusing class {module}.{name} (not part of a torch state dict)"))
                })?;
                m.push(pos, global_value(g))?
            }
            0x93 => {
                let name = m.pop(pos)?;
                let module = m.pop(pos)?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err(err(pos, "STACK_GLOBAL needs two strs"));
                };
                let g = Global::resolve(&module, &name).ok_or_else(|| {
                    err(pos, format!("refusing class {module}.{name} (not part of a torch state dict)"))
                })?;
                m.push(pos, global_value(g))?
            }
            b't' => {
                let items = m.pop_mark(pos)?;
                m.push(pos, Value::Tuple(items))?
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(m.pop(pos)?);
                }
                items.reverse();
                m.push(pos, Value::Tuple(items))?
            }
            b's' => {
                let v = m.pop(pos)?;
                let k = m.pop(pos)?;
                set_items(pos, m.top(pos)?, vec![k, v])?
            }
            b'u' => {
                let items = m.pop_mark(pos)?;
                set_items(pos, m.top(pos)?, items)?
            }
            b'a' => {
                let v = m.pop(pos)?;
                match m.top(pos)? {
                    Value::List(l) => l.push(v),
                    other => return Err(err(pos, format!("APPEND on a {}", other.kind()))),
                }
            }
            b'e' => {
                let items = m.pop_mark(pos)?;
                match m.top(pos)? {
                    Value::List(l) => l.extend(items),
                    other => return Err(err(pos, format!("APPENDS on a {}", other.kind()))),
                }
            }
            b'l' => {
                let items = m.pop_mark(pos)?;
                m.push(pos, Value::List(items))?
            }
            b'd' => {
                let items = m.pop_mark(pos)?;
                let mut d = Value::Dict(Vec::new());
                set_items(pos, &mut d, items)?;
                m.push(pos, d)?
            }
            b'R' => {
                let args = m.pop(pos)?;
                let f = m.pop(pos)?;
                let (Value::Global(g), Value::Tuple(args)) = (f, args) else {
                    return Err(err(pos, "REDUCE needs a class and a tuple"));
                };
                let v = call(pos, g, args)?;
                m.push(pos, v)?
            }
            0x81 => {
                let args = m.pop(pos)?;
                let cls = m.pop(pos)?;
                match (cls, args) {
                    (Value::Global(Global::TensorReference), Value::Tuple(a)) if a.is_empty() => {
                        m.push(pos, Value::TensorReference(None))?
                    }
                    (Value::Global(g), _) => return Err(err(pos, format!("NEWOBJ of {g:?} is not supported"))),
                    _ => return Err(err(pos, "NEWOBJ needs a class")),
                }
            }
            b'b' => {
                let state = m.pop(pos)?;
                match m.top(pos)? {
                    Value::TensorReference(tid) => {
                        let Value::Dict(items) = &state else {
                            return Err(err(pos, "TensorReference state must be a dict"));
                        };
                        let [(Value::Str(k), Value::Int(t))] = items.as_slice() else {
                            return Err(err(pos, "TensorReference state must be {\"tid\": int}"));
                        };
                        if k != "tid" {
                            return Err(err(pos, format!("TensorReference state has field {k:?}, expected \"tid\"")));
                        }
                        *tid = Some(*t);
                    }
                    // An OrderedDict's attributes (a state dict's `_metadata`): not weights.
                    Value::Dict(_) if matches!(state, Value::Dict(_) | Value::None) => {}
                    other => return Err(err(pos, format!("BUILD on a {}", other.kind()))),
                }
            }
            b'Q' => {
                let pid = m.pop(pos)?;
                let Value::Tuple(items) = pid else {
                    return Err(err(pos, "a persistent id that is not a tuple"));
                };
                let storage = match items.as_slice() {
                    [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), Value::Str(_), n]
                        if tag == "storage" =>
                    {
                        StorageRef {
                            dtype: *dtype,
                            key: key.clone(),
                            numel: n.as_usize("storage size").map_err(|e| err(pos, e))?,
                        }
                    }
                    _ => {
                        return Err(err(
                            pos,
                            "a persistent id that is not ('storage', torch.<T>Storage, key, location, numel)",
                        ))
                    }
                };
                m.push(pos, Value::Storage(storage))?
            }
            other => return Err(err(pos, format!("opcode 0x{other:02x} is not supported in a torch checkpoint"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_classes_naming_them() {
        let p = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R.";
        let e = parse(p).unwrap_err();
        assert!(e.contains("os.system"), "{e}");
    }

    #[test]
    fn reads_dicts_ints_and_memo() {
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x05X\x01\x00\x00\x00bh\x00u.";
        let v = parse(p).unwrap();
        let Value::Dict(d) = v else { panic!() };
        assert_eq!(d[0], (Value::Str("a".into()), Value::Int(5)));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn bounds_memo_copies() {
        // ]q\x00 then repeat: h\x00 h\x00 \x86 q\x00 (a tuple of two copies, memoized again): doubles each time.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..64 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00\x94\x30");
        }
        p.push(b'.');
        assert!(parse(&p).is_err());
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert!(parse(b"\x80\x02X\xff\x00\x00\x00ab").is_err());
        assert!(parse(b"").is_err());
    }
}
