//! Element types, including GGUF's block-quantized formats with their exact byte layouts.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The element type of a tensor.
///
/// `Q8_0` and `Q4_0` are block-quantized exactly as GGUF stores them: blocks of 32 weights along
/// the last axis, each block an f16 scale followed by the quantized values (see [`QuantBlock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    Bf16,
    I32,
    I8,
    U8,
    Bool,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
}

/// Layout facts of a block-quantized dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantBlock {
    /// Weights per block (along the tensor's last axis).
    pub elems: usize,
    /// Bytes per block: the f16 scale plus the packed values.
    pub bytes: usize,
}

/// Weights per GGUF quantization block.
pub const QK: usize = 32;

impl DType {
    pub const ALL: [DType; 9] = [
        DType::F32,
        DType::F16,
        DType::Bf16,
        DType::I32,
        DType::I8,
        DType::U8,
        DType::Bool,
        DType::Q8_0,
        DType::Q4_0,
    ];

    /// The block layout for quantized types, `None` for plain element types.
    pub fn quant_block(self) -> Option<QuantBlock> {
        match self {
            DType::Q8_0 => Some(QuantBlock {
                elems: QK,
                bytes: 2 + QK,
            }),
            DType::Q4_0 => Some(QuantBlock {
                elems: QK,
                bytes: 2 + QK / 2,
            }),
            _ => None,
        }
    }

    /// Bytes of one element for plain types; `None` for block-quantized ones.
    pub fn elem_bytes(self) -> Option<usize> {
        match self {
            DType::F32 | DType::I32 => Some(4),
            DType::F16 | DType::Bf16 => Some(2),
            DType::I8 | DType::U8 | DType::Bool => Some(1),
            DType::Q8_0 | DType::Q4_0 => None,
        }
    }

    /// Bytes needed to store a tensor of this dtype and shape, or why it cannot be stored
    /// (a quantized tensor's last axis must be a whole number of blocks).
    pub fn storage_bytes(self, shape: &[usize]) -> Result<usize, String> {
        let numel: usize = shape.iter().product();
        match self.quant_block() {
            None => Ok(numel * self.elem_bytes().unwrap_or(1)),
            Some(b) => {
                let last = shape.last().copied().unwrap_or(1);
                if last % b.elems != 0 {
                    return Err(format!(
                        "{self} needs the last axis to be a multiple of {}, got shape {shape:?}",
                        b.elems
                    ));
                }
                Ok(numel / b.elems * b.bytes)
            }
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::Bf16)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I8 | DType::U8)
    }

    pub fn is_quantized(self) -> bool {
        self.quant_block().is_some()
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
        }
    }

    /// Parses the names printed by [`DType::name`] (used by the CLI and text formats).
    pub fn parse(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_block_sizes() {
        assert_eq!(DType::Q8_0.storage_bytes(&[2, 64]).unwrap(), 2 * 2 * 34);
        assert_eq!(DType::Q4_0.storage_bytes(&[3, 32]).unwrap(), 3 * 18);
        assert!(DType::Q4_0.storage_bytes(&[3, 33]).is_err());
        assert_eq!(DType::Bf16.storage_bytes(&[5, 7]).unwrap(), 70);
    }

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
        }
    }
}
