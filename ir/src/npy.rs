//! NumPy `.npy` (format 1.0/2.0/3.0) for float32 and int32 arrays: how users and fixtures exchange
//! logits and token ids with tessera.

use crate::IrError;
use std::path::Path;

/// A dense little-endian array read from or written to `.npy`.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// Element types `.npy` files may hold here.
pub trait NpyElem: Copy {
    const DESCR: &'static str;
    fn from_le(bytes: [u8; 4]) -> Self;
    fn to_le(self) -> [u8; 4];
}

impl NpyElem for f32 {
    const DESCR: &'static str = "<f4";
    fn from_le(b: [u8; 4]) -> f32 {
        f32::from_le_bytes(b)
    }
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl NpyElem for i32 {
    const DESCR: &'static str = "<i4";
    fn from_le(b: [u8; 4]) -> i32 {
        i32::from_le_bytes(b)
    }
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Encodes an array as a version 1.0 `.npy` file.
pub fn encode<T: NpyElem>(shape: &[usize], data: &[T]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}",
        T::DESCR
    );
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(unpadded + 64 + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le());
    }
    out
}

/// Decodes a `.npy` file holding `T`; `what` names the file in errors.
pub fn decode<T: NpyElem>(bytes: &[u8], what: &str) -> Result<NpyArray<T>, IrError> {
    let bad = |msg: &str| IrError::Format(format!("{what}: not a valid .npy file: {msg}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing \\x93NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Result<&str, IrError> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or_else(|| bad(&format!("header lacks '{key}'")))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    if !descr.starts_with(&format!("'{}'", T::DESCR)) {
        let got = descr.split('\'').nth(1).unwrap_or("?");
        return Err(bad(&format!("dtype is {got}, expected {}", T::DESCR)));
    }
    if field("fortran_order")?.starts_with("True") {
        return Err(bad("fortran_order arrays are not supported"));
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("malformed shape"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(&format!("bad shape entry `{s}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count: usize = shape.iter().product();
    let body = &bytes[start + header_len..];
    if body.len() != count * 4 {
        return Err(bad(&format!(
            "shape {shape:?} needs {} data bytes, file has {}",
            count * 4,
            body.len()
        )));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| T::from_le([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(NpyArray { shape, data })
}

/// Reads a `.npy` file.
pub fn read<T: NpyElem>(path: &Path) -> Result<NpyArray<T>, IrError> {
    let bytes =
        std::fs::read(path).map_err(|e| IrError::Format(format!("{}: {e}", path.display())))?;
    decode(&bytes, &path.display().to_string())
}

/// Writes a `.npy` file.
pub fn write<T: NpyElem>(path: &Path, shape: &[usize], data: &[T]) -> Result<(), IrError> {
    std::fs::write(path, encode(shape, data))
        .map_err(|e| IrError::Format(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let bytes = encode(&[3, 4], &data);
        assert_eq!(
            (bytes.len() - data.len() * 4) % 64,
            0,
            "header padded to 64 bytes"
        );
        let back: NpyArray<f32> = decode(&bytes, "x.npy").unwrap();
        assert_eq!(
            back,
            NpyArray {
                shape: vec![3, 4],
                data
            }
        );
        let ids = encode(&[5], &[1i32, 2, 3, 4, 5]);
        assert_eq!(decode::<i32>(&ids, "ids.npy").unwrap().shape, vec![5]);
    }

    #[test]
    fn errors_name_the_problem() {
        let bytes = encode(&[2], &[1.0f32, 2.0]);
        let err = decode::<i32>(&bytes, "x.npy").unwrap_err().to_string();
        assert!(err.contains("x.npy") && err.contains("<f4"), "{err}");
        let err = decode::<f32>(&bytes[..bytes.len() - 1], "x.npy")
            .unwrap_err()
            .to_string();
        assert!(err.contains("data bytes"), "{err}");
        assert!(decode::<f32>(b"hello", "x.npy").is_err());
    }
}
