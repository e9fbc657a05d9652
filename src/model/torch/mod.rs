//! Reader for legacy (pre-1.6, non-zip) PyTorch checkpoints holding a `state_dict`.
//!
//! The file is a sequence of pickles: a magic number, the protocol version, a sys-info dict, the
//! state dict itself (tensors refer to storages through persistent ids), the list of storage keys,
//! and then the raw storages in that order (each an 8-byte little-endian element count followed by
//! the little-endian data). This file reads that sequence and copies the tensors out of their
//! storages; the VM in `pickle.rs` runs each pickle. A malformed file gives a [`TorchError`],
//! never a panic.

mod dtype;
mod pickle;

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

pub use dtype::DType;
pub use pickle::PickleError;
use pickle::{Obj, TensorRef, Value, Vm};

/// Legacy checkpoint magic number (`0x1950a86a20f9469cfc6c`) as little-endian `LONG1` bytes.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    /// The file ends inside the raw storages (the argument says where).
    #[error("truncated checkpoint: {0}")]
    Truncated(&'static str),
    /// Not a legacy checkpoint: a zip-format one, a bad magic number or protocol version.
    #[error("not a legacy torch checkpoint: {0}")]
    NotLegacy(String),
    /// One of the file's pickles could not be run.
    #[error(transparent)]
    Pickle(#[from] PickleError),
    /// The pickles ran but do not describe a state dict and its storages.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// A tensor's view does not fit its storage.
    #[error("malformed checkpoint: tensor {name}: {source}")]
    Tensor {
        /// The tensor's name in the state dict.
        name: String,
        /// What is wrong with its view.
        #[source]
        source: ViewError,
    },
}

/// Why a tensor could not be copied out of its storage.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The tensor names a storage that no persistent id declared.
    #[error("unknown storage")]
    UnknownStorage,
    /// The tensor's storage is not among the raw storages that follow the pickles.
    #[error("storage {0} has no data")]
    NoData(String),
    /// The storage view reaches past the end of the storage it is a view of.
    #[error("storage view out of bounds")]
    ViewOutOfBounds,
    /// The tensor's element count overflows.
    #[error("size overflows")]
    SizeOverflow,
    /// The tensors (through shared storages or zero strides) expand to far more elements than
    /// are stored: a hostile file.
    #[error("tensors expand to far more elements than stored")]
    TooLarge,
    /// The last element's offset overflows.
    #[error("stride overflows")]
    StrideOverflow,
    /// The tensor's last element lies past the end of its storage view.
    #[error("view reaches element {last} of a {len}-element storage")]
    OutOfBounds {
        /// Offset of the tensor's last element in the view.
        last: usize,
        /// Elements in the view.
        len: usize,
    },
}

type Result<T> = std::result::Result<T, TorchError>;
/// Raw storages by key: element type and little-endian bytes.
type Storages<'a> = HashMap<Rc<str>, (DType, &'a [u8])>;

/// A dense, row-major tensor converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Size of each axis.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<f32>,
    /// Element type on disk.
    pub dtype: DType,
}

impl Tensor {
    /// Number of elements.
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
        let tensor =
            materialize(t, vm, storages, &mut budget).map_err(|source| TorchError::Tensor {
                name: name.to_string(),
                source,
            })?;
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
) -> std::result::Result<Tensor, ViewError> {
    let decl = vm
        .storages
        .get(&t.storage)
        .ok_or(ViewError::UnknownStorage)?;
    let (dtype, bytes) = *storages
        .get(&decl.root)
        .ok_or_else(|| ViewError::NoData(decl.root.to_string()))?;
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
        return Err(ViewError::ViewOutOfBounds);
    }
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or(ViewError::SizeOverflow)?;
    *budget = budget.checked_sub(numel).ok_or(ViewError::TooLarge)?;
    if numel > 0 {
        let mut last = t.offset;
        for (&d, &s) in t.size.iter().zip(&t.stride) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or(ViewError::StrideOverflow)?;
        }
        if last >= view_len {
            return Err(ViewError::OutOfBounds {
                last,
                len: view_len,
            });
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
