//! Reader for legacy (pre-1.6, non-zip) PyTorch checkpoints holding a `state_dict`.
//!
//! The file is a sequence of pickles: a magic number, the protocol version, a sys-info dict, the
//! state dict itself (tensors refer to storages through persistent ids), the list of storage keys,
//! and then the raw storages in that order (each an 8-byte little-endian element count followed by
//! the little-endian data). We run a small pickle VM that understands just the opcodes and globals a
//! state dict needs; nothing is ever executed, and a malformed file gives a [`TorchError`], never a
//! panic. Compound pickle values live in an arena and refer to each other by index, so even a
//! hostile, deeply nested file cannot overflow the stack when it is dropped.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// Legacy checkpoint magic number (`0x1950a86a20f9469cfc6c`) as little-endian `LONG1` bytes.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;
/// Caps on VM growth, far above what any real state dict needs.
const MAX_STACK: usize = 1 << 20;
const MAX_OBJECTS: usize = 1 << 22;
const MAX_DIMS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("truncated checkpoint: {0}")]
    Truncated(&'static str),
    #[error("not a legacy torch checkpoint: {0}")]
    NotLegacy(String),
    #[error("unsupported pickle opcode 0x{op:02x} ('{}') at byte {pos}", char::from(*.op).escape_default())]
    UnsupportedOpcode { op: u8, pos: usize },
    #[error("malformed pickle at byte {pos}: {msg}")]
    Pickle { pos: usize, msg: String },
    #[error("unsupported pickle callable {0}")]
    UnsupportedCallable(String),
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
}

type Result<T> = std::result::Result<T, TorchError>;
/// Raw storages by key: element type and little-endian bytes.
type Storages<'a> = HashMap<Rc<str>, (DType, &'a [u8])>;

/// Element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    fn from_storage_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Reads element `i` of little-endian `bytes` as f32 (caller guarantees bounds).
    fn read_f32(self, bytes: &[u8], i: usize) -> f32 {
        let s = self.size();
        let b = &bytes[i * s..(i + 1) * s];
        match self {
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F64 => {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            DType::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            DType::BF16 => f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
            DType::I64 => {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            DType::I16 => f32::from(i16::from_le_bytes([b[0], b[1]])),
            DType::I8 => f32::from(b[0] as i8),
            DType::U8 | DType::Bool => f32::from(b[0]),
        }
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // subnormal: value = man * 2^-24
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// A dense, row-major tensor converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// Element type on disk.
    pub dtype: DType,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Parses a legacy checkpoint and returns every tensor of its state dict, by name.
///
/// Entries of the state dict that are not tensors are skipped. A checkpoint that is a dict with a
/// `state_dict` entry (a common training-script layout) is unwrapped.
pub fn load_state_dict(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(TorchError::NotLegacy(
            "this is a zip-format checkpoint (torch >= 1.6), only the legacy format is supported"
                .into(),
        ));
    }
    let magic = Vm::new(bytes, 0).run()?;
    if magic.value != Value::BigInt(MAGIC.as_slice().into()) {
        return Err(TorchError::NotLegacy("bad magic number".into()));
    }
    let version = Vm::new(bytes, magic.vm.pos).run()?;
    if version.value != Value::Int(PROTOCOL_VERSION) {
        return Err(TorchError::NotLegacy(format!(
            "unsupported protocol version {:?}",
            version.value
        )));
    }
    let sys_info = Vm::new(bytes, version.vm.pos).run()?;
    if sys_info.vm.dict_get(&sys_info.value, "little_endian") != Some(&Value::Bool(true)) {
        return Err(TorchError::Malformed(
            "checkpoint is not little-endian".into(),
        ));
    }
    let state = Vm::new(bytes, sys_info.vm.pos).run()?;
    let keys = Vm::new(bytes, state.vm.pos).run()?;
    let mut pos = keys.vm.pos;
    let keys = keys
        .vm
        .str_list(&keys.value)
        .ok_or_else(|| malformed("storage key list is not a list of strings"))?;
    let storages = read_storages(bytes, &mut pos, &state.vm, &keys)?;
    collect_tensors(&state.vm, &state.value, &storages)
}

fn malformed(msg: impl Into<String>) -> TorchError {
    TorchError::Malformed(msg.into())
}

/// Reads the raw storages that follow the pickles, in the order of the key list.
fn read_storages<'a>(
    bytes: &'a [u8],
    pos: &mut usize,
    vm: &Vm,
    keys: &[Rc<str>],
) -> Result<Storages<'a>> {
    let mut out = HashMap::new();
    for key in keys {
        let decl = vm
            .storages
            .get(key)
            .ok_or_else(|| malformed(format!("storage {key} is not used by any tensor")))?;
        let count_bytes = bytes
            .get(*pos..pos.saturating_add(8))
            .ok_or(TorchError::Truncated("storage header"))?;
        let count = u64::from_le_bytes(count_bytes.try_into().expect("8 bytes"));
        *pos += 8;
        if count != decl.numel as u64 {
            return Err(malformed(format!(
                "storage {key}: {count} elements on disk, {} declared",
                decl.numel
            )));
        }
        let len = decl
            .numel
            .checked_mul(decl.dtype.size())
            .ok_or_else(|| malformed("storage size overflows"))?;
        let end = pos
            .checked_add(len)
            .ok_or_else(|| malformed("storage size overflows"))?;
        let data = bytes
            .get(*pos..end)
            .ok_or(TorchError::Truncated("storage data"))?;
        *pos = end;
        if out.insert(key.clone(), (decl.dtype, data)).is_some() {
            return Err(malformed(format!("storage {key} listed twice")));
        }
    }
    Ok(out)
}

fn collect_tensors(vm: &Vm, root: &Value, storages: &Storages) -> Result<BTreeMap<String, Tensor>> {
    let mut dict = vm
        .dict(root)
        .ok_or_else(|| malformed("the checkpoint is not a dict"))?;
    if let Some(inner) = vm.dict_get(root, "state_dict") {
        dict = vm
            .dict(inner)
            .ok_or_else(|| malformed("state_dict is not a dict"))?;
    }
    // Tensors may share storages (tied weights) or broadcast with stride 0; bound what we expand.
    let stored: usize = storages.values().map(|(t, b)| b.len() / t.size()).sum();
    let mut budget = stored.saturating_mul(4).saturating_add(1 << 20);
    let mut out = BTreeMap::new();
    for (k, v) in dict {
        let Value::Str(name) = k else {
            return Err(malformed("state dict key is not a string"));
        };
        let Value::Obj(id) = v else { continue };
        let Obj::Tensor(t) = &vm.objects[*id] else {
            continue;
        };
        let tensor = materialize(t, vm, storages, &mut budget)
            .map_err(|e| malformed(format!("tensor {name}: {e}")))?;
        out.insert(name.to_string(), tensor);
    }
    Ok(out)
}

/// Copies a (possibly strided, offset) view out of its storage into a dense row-major tensor.
fn materialize(
    t: &TensorRef,
    vm: &Vm,
    storages: &Storages,
    budget: &mut usize,
) -> std::result::Result<Tensor, String> {
    let decl = vm.storages.get(&t.storage).ok_or("unknown storage")?;
    let (dtype, bytes) = *storages
        .get(&decl.root)
        .ok_or_else(|| format!("storage {} has no data", decl.root))?;
    let storage_len = bytes.len() / dtype.size();
    // The view a tensor sees: [base, base + view_len) of the root storage.
    let (base, view_len) = match decl.view {
        Some((offset, size)) => (offset, size),
        None => (0, storage_len),
    };
    if base
        .checked_add(view_len)
        .is_none_or(|end| end > storage_len)
    {
        return Err("storage view out of bounds".into());
    }
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("size overflows")?;
    *budget = budget
        .checked_sub(numel)
        .ok_or("tensors expand to far more elements than stored")?;
    if numel > 0 {
        let mut last = t.offset;
        for (&d, &s) in t.size.iter().zip(&t.stride) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or("stride overflows")?;
        }
        if last >= view_len {
            return Err(format!(
                "view reaches element {last} of a {view_len}-element storage"
            ));
        }
    }
    let mut data = Vec::with_capacity(numel);
    let mut index = vec![0usize; t.size.len()];
    for _ in 0..numel {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        data.push(dtype.read_f32(bytes, base + at));
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < t.size[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Ok(Tensor {
        shape: t.size.clone(),
        data,
        dtype,
    })
}

// ---------------------------------------------------------------------------------------------
// The pickle VM

/// A pickle value. Compound values live in the VM's arena ([`Obj`]) and are referred to by index.
#[derive(Debug, Clone, PartialEq)]
enum Value {
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

#[derive(Debug)]
enum Obj {
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

#[derive(Debug)]
struct TensorRef {
    storage: Rc<str>,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// What a persistent id declared about a storage.
#[derive(Debug)]
struct StorageDecl {
    dtype: DType,
    /// Key of the storage whose bytes are on disk (differs from the key for legacy views).
    root: Rc<str>,
    numel: usize,
    /// `(offset, size)` of a view into `root`, in elements.
    view: Option<(usize, usize)>,
}

struct Vm<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Obj>,
    storages: HashMap<Rc<str>, StorageDecl>,
}

struct Loaded<'a> {
    value: Value,
    vm: Vm<'a>,
}

impl<'a> Vm<'a> {
    fn new(bytes: &'a [u8], pos: usize) -> Self {
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

    fn err(&self, msg: impl Into<String>) -> TorchError {
        TorchError::Pickle {
            pos: self.pos,
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(TorchError::Truncated("pickle"))?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(TorchError::Truncated("pickle"))?;
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
            .ok_or(TorchError::Truncated("pickle"))?;
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(TorchError::Truncated("pickle line"))?;
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

    fn run(mut self) -> Result<Loaded<'a>> {
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
                _ => return Err(TorchError::UnsupportedOpcode { op, pos: at }),
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
            _ => Err(TorchError::UnsupportedCallable(format!("{module}.{name}"))),
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

    fn dict(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match v {
            Value::Obj(i) => match &self.objects[*i] {
                Obj::Dict(d) => Some(d),
                _ => None,
            },
            _ => None,
        }
    }

    fn dict_get(&self, v: &Value, key: &str) -> Option<&Value> {
        self.dict(v)?
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
            .map(|(_, v)| v)
    }

    fn str_list(&self, v: &Value) -> Option<Vec<Rc<str>>> {
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
    fn half_floats() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn longs() {
        assert_eq!(long_value(&[]), Value::Int(0));
        assert_eq!(long_value(&[0xff]), Value::Int(-1));
        assert_eq!(long_value(&[0xe8, 0x03]), Value::Int(1000));
    }
}
