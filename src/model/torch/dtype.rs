//! Element types of torch storages and their decoding to f32 (little-endian, as torch writes
//! them), half floats included.

/// Element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// `FloatStorage`: 32-bit float.
    F32,
    /// `DoubleStorage`: 64-bit float.
    F64,
    /// `HalfStorage`: IEEE 16-bit float.
    F16,
    /// `BFloat16Storage`: bfloat16.
    BF16,
    /// `LongStorage`: 64-bit signed integer.
    I64,
    /// `IntStorage`: 32-bit signed integer.
    I32,
    /// `ShortStorage`: 16-bit signed integer.
    I16,
    /// `CharStorage`: 8-bit signed integer.
    I8,
    /// `ByteStorage`: 8-bit unsigned integer.
    U8,
    /// `BoolStorage`: one byte, 0 or 1.
    Bool,
}

impl DType {
    /// The element type of a `torch.<name>` storage class, if it is one we read.
    pub(super) fn from_storage_name(name: &str) -> Option<Self> {
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

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Reads element `i` of little-endian `bytes` as f32 (caller guarantees bounds).
    pub(super) fn read_f32(self, bytes: &[u8], i: usize) -> f32 {
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
}
