//! The pickle VM behind the checkpoint reader: runs one pickle of a legacy torch checkpoint and
//! returns its value. It understands just the opcodes and the globals a state dict needs
//! (`OrderedDict`, `_rebuild_tensor_v2`, `_rebuild_parameter`, storages as persistent ids);
//! nothing is ever executed, and a malformed pickle gives a [`PickleError`], never a panic.
//! Compound values live in an arena and refer to each other by index, so even a hostile, deeply
//! nested file cannot overflow the stack when it is dropped.

use std::collections::HashMap;
use std::rc::Rc;

use super::dtype::DType;

/// Caps on VM growth, far above what any real state dict needs.
const MAX_STACK: usize = 1 << 20;
const MAX_OBJECTS: usize = 1 << 22;
const MAX_DIMS: usize = 16;

/// Why a pickle could not be run.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The pickle ends before its `STOP` opcode (the argument says where).
    #[error("truncated checkpoint: {0}")]
    Truncated(&'static str),
    /// An opcode the VM does not implement.
    #[error("unsupported pickle opcode 0x{op:02x} ('{}') at byte {pos}", char::from(*.op).escape_default())]
    UnsupportedOpcode {
        /// The opcode byte.
        op: u8,
        /// Its offset in the file.
        pos: usize,
    },
    /// The opcodes do not make sense together (stack underflow, a bad argument, a cap reached).
    #[error("malformed pickle at byte {pos}: {msg}")]
    Malformed {
        /// Offset in the file where the VM stopped.
        pos: usize,
        /// What was wrong.
        msg: String,
    },
    /// A call of a global that a state dict does not need (`module.name`).
    #[error("unsupported pickle callable {0}")]
    UnsupportedCallable(String),
}

type Result<T> = std::result::Result<T, PickleError>;

/// A pickle value. Compound values live in the VM's arena ([`Obj`]) and are referred to by index.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64: little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Obj(usize),
}

/// A compound value in the VM's arena.
#[derive(Debug)]
pub(super) enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global {
        module: Rc<str>,
        name: Rc<str>,
    },
    /// A persistent id resolved to a storage key.
    Storage(Rc<str>),
    Tensor(TensorRef),
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage, in elements.
#[derive(Debug)]
pub(super) struct TensorRef {
    pub(super) storage: Rc<str>,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

/// What a persistent id declared about a storage.
#[derive(Debug)]
pub(super) struct StorageDecl {
    pub(super) dtype: DType,
    /// Key of the storage whose bytes are on disk (differs from the key for legacy views).
    pub(super) root: Rc<str>,
    pub(super) numel: usize,
    /// `(offset, size)` of a view into `root`, in elements.
    pub(super) view: Option<(usize, usize)>,
}

/// The VM over one pickle, starting at `pos` of the whole file; after a run it holds the arena
/// the value refers to and the storages the pickle declared.
pub(super) struct Vm<'a> {
    bytes: &'a [u8],
    /// Where the next opcode is read; after a run, the first byte after the pickle.
    pub(super) pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pub(super) objects: Vec<Obj>,
    pub(super) storages: HashMap<Rc<str>, StorageDecl>,
}

/// A pickle's value and the VM that holds what it refers to.
pub(super) struct Loaded<'a> {
    pub(super) value: Value,
    pub(super) vm: Vm<'a>,
}

impl<'a> Vm<'a> {
    pub(super) fn new(bytes: &'a [u8], pos: usize) -> Self {
        Vm {
            bytes,
            pos,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objects: Vec::new(),
            storages: HashMap::new(),
        }
    }

    fn err(&self, msg: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            pos: self.pos,
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(PickleError::Truncated("pickle"))?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(PickleError::Truncated("pickle"))?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = self
            .bytes
            .get(self.pos..)
            .ok_or(PickleError::Truncated("pickle"))?;
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated("pickle line"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err("non-UTF-8 text line"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.err("stack too deep"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.pop().expect("non-empty"))
    }

    fn top(&mut self) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.last_mut().expect("non-empty"))
    }

    /// Pops everything above the topmost mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no mark on the stack"))?;
        Ok(self.stack.split_off(m))
    }

    fn alloc(&mut self, o: Obj) -> Result<Value> {
        if self.objects.len() >= MAX_OBJECTS {
            return Err(self.err("too many objects"));
        }
        self.objects.push(o);
        Ok(Value::Obj(self.objects.len() - 1))
    }

    fn memo_get(&self, i: u32) -> Result<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {i} not found")))
    }

    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn obj_mut(&mut self, v: &Value) -> Result<&mut Obj> {
        match v {
            Value::Obj(i) => Ok(&mut self.objects[*i]),
            other => Err(self.err(format!("expected an object, found {other:?}"))),
        }
    }

    fn append(&mut self, target: &Value, items: Vec<Value>) -> Result<()> {
        match self.obj_mut(target)? {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(self.err("APPEND to a non-list")),
        }
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for SETITEMS"));
        }
        let Obj::Dict(d) = self.obj_mut(target)? else {
            return Err(self.err("SETITEM on a non-dict"));
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match d.iter_mut().find(|(old, _)| *old == k) {
                Some(slot) => slot.1 = v,
                None => d.push((k, v)),
            }
        }
        Ok(())
    }

    fn tuple(&mut self, items: Vec<Value>) -> Result<()> {
        let v = self.alloc(Obj::Tuple(items))?;
        self.push(v)
    }

    /// Runs the pickle up to its `STOP`.
    pub(super) fn run(mut self) -> Result<Loaded<'a>> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(format!("pickle protocol {p}")));
                    }
                }
                0x95 => {
                    // FRAME (protocol 4): just a length prefix
                    self.take(8)?;
                }
                b'.' => {
                    // STOP
                    let value = self.pop()?;
                    return Ok(Loaded { value, vm: self });
                }
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(self.err("too many marks"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(i64::from(v)))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)))?
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4
                    let n = if op == 0x8a {
                        usize::from(self.u8()?)
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    self.push(long_value(b))?
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.push(Value::Float(f64::from_be_bytes(
                        b.try_into().expect("8 bytes"),
                    )))?
                }
                b'X' | 0x8c | 0x8d => {
                    // BINUNICODE / SHORT_BINUNICODE / BINUNICODE8
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => usize::from(self.u8()?),
                        _ => usize::try_from(u64::from_le_bytes(
                            self.take(8)?.try_into().expect("8"),
                        ))
                        .map_err(|_| self.err("string too long"))?,
                    };
                    let b = self.take(n)?;
                    let s =
                        std::str::from_utf8(b).map_err(|_| self.err("invalid UTF-8 in string"))?;
                    self.push(Value::Str(s.into()))?
                }
                b'U' | b'T' | b'C' | b'B' => {
                    // SHORT_BINSTRING / BINSTRING / SHORT_BINBYTES / BINBYTES
                    let n = if op == b'U' || op == b'C' {
                        usize::from(self.u8()?)
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.into()))?
                }
                b')' => self.tuple(Vec::new())?,
                0x85 => {
                    let a = self.pop()?;
                    self.tuple(vec![a])?
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.tuple(vec![a, b])?
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.tuple(vec![a, b, c])?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items)?
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()))?;
                    self.push(v)?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::List(items))?;
                    self.push(v)?
                }
                b'}' => {
                    let v = self.alloc(Obj::Dict(Vec::new()))?;
                    self.push(v)?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::Dict(Vec::new()))?;
                    self.set_items(&v, items)?;
                    self.push(v)?
                }
                b'a' => {
                    let item = self.pop()?;
                    let target = self.top()?.clone();
                    self.append(&target, vec![item])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.append(&target, items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, items)?
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(u32::from(i))?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                0x94 => {
                    // MEMOIZE
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo full"))?;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(u32::from(i))?;
                    self.push(v)?
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.push(v)?
                }
                b'c' => {
                    let module: Rc<str> = self.line()?.into();
                    let name: Rc<str> = self.line()?.into();
                    let v = self.alloc(Obj::Global { module, name })?;
                    self.push(v)?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let v = self.alloc(Obj::Global { module, name })?;
                    self.push(v)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v)?
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: both call a whitelisted global with a tuple of arguments
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(&func, &args)?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict (its `_metadata`) or of a tensor is not needed.
                    self.pop()?;
                    self.top()?;
                }
                _ => return Err(PickleError::UnsupportedOpcode { op, pos: at }),
            }
        }
    }

    fn global_name(&self, v: &Value) -> Option<(&str, &str)> {
        match v {
            Value::Obj(i) => match &self.objects[*i] {
                Obj::Global { module, name } => Some((module, name)),
                _ => None,
            },
            _ => None,
        }
    }

    fn tuple_items(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Obj(i) => match &self.objects[*i] {
                Obj::Tuple(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    fn call(&mut self, func: &Value, args: &Value) -> Result<Value> {
        let (module, name) = self
            .global_name(func)
            .ok_or_else(|| self.err("call of a non-global"))?;
        let args = self
            .tuple_items(args)
            .ok_or_else(|| self.err("call arguments are not a tuple"))?;
        match (module, name) {
            ("collections", "OrderedDict") if args.is_empty() => self.alloc(Obj::Dict(Vec::new())),
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let t = self.rebuild_tensor(args)?;
                self.alloc(Obj::Tensor(t))
            }
            ("torch._utils", "_rebuild_parameter") => args
                .first()
                .cloned()
                .ok_or_else(|| self.err("_rebuild_parameter without arguments")),
            _ => Err(PickleError::UnsupportedCallable(format!("{module}.{name}"))),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks)`.
    fn rebuild_tensor(&self, args: &[Value]) -> Result<TensorRef> {
        if args.len() < 4 {
            return Err(self.err("_rebuild_tensor needs at least 4 arguments"));
        }
        let storage = match &args[0] {
            Value::Obj(i) => match &self.objects[*i] {
                Obj::Storage(key) => key.clone(),
                _ => return Err(self.err("tensor storage is not a persistent storage")),
            },
            _ => return Err(self.err("tensor storage is not a persistent storage")),
        };
        let offset = self.as_usize(&args[1])?;
        let size = self.usize_tuple(&args[2])?;
        let stride = self.usize_tuple(&args[3])?;
        if size.len() != stride.len() || size.len() > MAX_DIMS {
            return Err(self.err(format!(
                "tensor rank {} with {} strides",
                size.len(),
                stride.len()
            )));
        }
        Ok(TensorRef {
            storage,
            offset,
            size,
            stride,
        })
    }

    fn as_usize(&self, v: &Value) -> Result<usize> {
        match v {
            Value::Int(i) => {
                usize::try_from(*i).map_err(|_| self.err(format!("negative or huge integer {i}")))
            }
            other => Err(self.err(format!("expected an integer, found {other:?}"))),
        }
    }

    fn usize_tuple(&self, v: &Value) -> Result<Vec<usize>> {
        let items = self
            .tuple_items(v)
            .ok_or_else(|| self.err("expected a tuple of integers"))?;
        items.iter().map(|x| self.as_usize(x)).collect()
    }

    /// `('storage', storage_type, key, location, numel, view_metadata)`.
    fn persistent_load(&mut self, pid: &Value) -> Result<Value> {
        let items = self
            .tuple_items(pid)
            .ok_or_else(|| self.err("persistent id is not a tuple"))?;
        let [Value::Str(kind), ty, Value::Str(key), _location, numel, view] = items else {
            return Err(
                self.err("persistent id is not ('storage', type, key, location, numel, view)")
            );
        };
        if &**kind != "storage" {
            return Err(self.err(format!("unsupported persistent id kind {kind:?}")));
        }
        let dtype = match self.global_name(ty) {
            Some(("torch", name)) => DType::from_storage_name(name),
            _ => None,
        }
        .ok_or_else(|| {
            self.err(format!(
                "unsupported storage type {:?}",
                self.global_name(ty)
            ))
        })?;
        let numel = self.as_usize(numel)?;
        let (key, decl) = match view {
            Value::None => (
                key.clone(),
                StorageDecl {
                    dtype,
                    root: key.clone(),
                    numel,
                    view: None,
                },
            ),
            v => {
                let parts = self
                    .tuple_items(v)
                    .ok_or_else(|| self.err("view metadata is not a tuple"))?;
                let [Value::Str(view_key), offset, size] = parts else {
                    return Err(self.err("view metadata is not (key, offset, size)"));
                };
                let view = Some((self.as_usize(offset)?, self.as_usize(size)?));
                (
                    view_key.clone(),
                    StorageDecl {
                        dtype,
                        root: key.clone(),
                        numel,
                        view,
                    },
                )
            }
        };
        if decl.view.is_some() {
            // The root must also be known to read its bytes.
            let root = StorageDecl {
                dtype,
                root: decl.root.clone(),
                numel,
                view: None,
            };
            self.check_decl(&decl.root, root)?;
        }
        self.check_decl(&key, decl)?;
        self.alloc(Obj::Storage(key))
    }

    /// Records a storage declaration; a key seen twice must be declared the same way.
    fn check_decl(&mut self, key: &Rc<str>, decl: StorageDecl) -> Result<()> {
        match self.storages.get(key) {
            Some(old)
                if old.dtype != decl.dtype || old.numel != decl.numel || old.view != decl.view =>
            {
                Err(self.err(format!("storage {key} declared inconsistently")))
            }
            Some(_) => Ok(()),
            None => {
                self.storages.insert(key.clone(), decl);
                Ok(())
            }
        }
    }

    // Accessors used after the run.

    pub(super) fn dict(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match v {
            Value::Obj(i) => match &self.objects[*i] {
                Obj::Dict(d) => Some(d),
                _ => None,
            },
            _ => None,
        }
    }

    pub(super) fn dict_get(&self, v: &Value, key: &str) -> Option<&Value> {
        self.dict(v)?
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
            .map(|(_, v)| v)
    }

    pub(super) fn str_list(&self, v: &Value) -> Option<Vec<Rc<str>>> {
        let Value::Obj(i) = v else { return None };
        let Obj::List(items) = &self.objects[*i] else {
            return None;
        };
        items
            .iter()
            .map(|x| {
                if let Value::Str(s) = x {
                    Some(s.clone())
                } else {
                    None
                }
            })
            .collect()
    }
}

/// Decodes a little-endian two's complement integer (LONG1/LONG4).
fn long_value(b: &[u8]) -> Value {
    if b.len() <= 8 {
        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut buf = [fill; 8];
        buf[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(b.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs() {
        assert_eq!(long_value(&[]), Value::Int(0));
        assert_eq!(long_value(&[0xff]), Value::Int(-1));
        assert_eq!(long_value(&[0xe8, 0x03]), Value::Int(1000));
    }
}
