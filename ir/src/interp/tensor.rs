//! Concrete tensors as the interpreter holds them: one storage class per kind of dtype, so that
//! every op is written once for f32 values and once (where it applies) for integers.

use crate::{quant, DType, IrError};
use half::{bf16, f16};

/// A dense, row-major tensor with concrete dims.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Element storage. Float dtypes (f32, f16, bf16) are held as f32 values — f16/bf16 values are
/// exactly representable, and a node of such a dtype rounds its results through it. Integer dtypes
/// (i32, i8, u8) are held as i32, wrapped into their range. Quantized dtypes keep the GGUF bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
    Bytes(Vec<u8>),
}

impl TensorData {
    /// Number of stored items (elements, or bytes for quantized data).
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::Bool(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn class(&self) -> &'static str {
        match self {
            TensorData::F32(_) => "f32 values",
            TensorData::I32(_) => "i32 values",
            TensorData::Bool(_) => "bools",
            TensorData::Bytes(_) => "bytes",
        }
    }
}

impl Tensor {
    /// An f32 tensor; `data` must hold `shape`'s element count (checked in debug builds, and by
    /// the interpreter whenever the tensor is used).
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            dtype: DType::F32,
            shape,
            data: TensorData::F32(data),
        }
    }

    /// An i32 tensor; length checked as for [`Tensor::f32`].
    pub fn i32(shape: Vec<usize>, data: Vec<i32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            dtype: DType::I32,
            shape,
            data: TensorData::I32(data),
        }
    }

    /// A bool tensor; length checked as for [`Tensor::f32`].
    pub fn bool(shape: Vec<usize>, data: Vec<bool>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            dtype: DType::Bool,
            shape,
            data: TensorData::Bool(data),
        }
    }

    /// Quantizes f32 `values` of `shape` into a q8_0/q4_0 tensor (llama.cpp's reference rounding);
    /// the last axis must be whole blocks.
    pub fn quantize(dtype: DType, shape: Vec<usize>, values: &[f32]) -> Result<Tensor, IrError> {
        if shape.iter().product::<usize>() != values.len() {
            return Err(IrError::Invalid(format!(
                "{} values do not fill shape {shape:?}",
                values.len()
            )));
        }
        dtype.storage_bytes(&shape).map_err(IrError::Invalid)?;
        Ok(Tensor {
            dtype,
            shape,
            data: TensorData::Bytes(quant::quantize(dtype, values)?),
        })
    }

    /// Decodes little-endian raw bytes as stored in safetensors/artifacts (f32, f16, bf16, i32,
    /// i8, u8, bool, q8_0, q4_0); the error names `what` on a length mismatch.
    pub fn from_le_bytes(
        dtype: DType,
        shape: Vec<usize>,
        bytes: &[u8],
        what: &str,
    ) -> Result<Tensor, IrError> {
        let want = dtype
            .storage_bytes(&shape)
            .map_err(|e| IrError::Format(format!("{what}: {e}")))?;
        if bytes.len() != want {
            return Err(IrError::Format(format!(
                "{what}: {dtype}{shape:?} needs {want} bytes, got {}",
                bytes.len()
            )));
        }
        fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        let data = match dtype {
            DType::F32 => TensorData::F32(le(bytes, f32::from_le_bytes)),
            DType::F16 => TensorData::F32(le(bytes, |b| f16::from_le_bytes(b).to_f32())),
            DType::Bf16 => TensorData::F32(le(bytes, |b| bf16::from_le_bytes(b).to_f32())),
            DType::I32 => TensorData::I32(le(bytes, i32::from_le_bytes)),
            DType::I8 => TensorData::I32(bytes.iter().map(|&b| i32::from(b as i8)).collect()),
            DType::U8 => TensorData::I32(bytes.iter().map(|&b| i32::from(b)).collect()),
            DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            DType::Q8_0 | DType::Q4_0 => TensorData::Bytes(bytes.to_vec()),
        };
        Ok(Tensor { dtype, shape, data })
    }

    /// Encodes as little-endian raw bytes of its dtype, the inverse of [`Tensor::from_le_bytes`]:
    /// how weights computed at compile time are stored. An inconsistent tensor is an error.
    pub fn to_le_bytes(&self) -> Result<Vec<u8>, IrError> {
        self.check()
            .map_err(|e| IrError::Format(format!("encoding {}: {e}", self.describe())))?;
        Ok(match (&self.data, self.dtype) {
            (TensorData::F32(v), DType::F16) => v
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
            (TensorData::F32(v), DType::Bf16) => v
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
            (TensorData::F32(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (TensorData::I32(v), DType::I8 | DType::U8) => v.iter().map(|&x| x as u8).collect(),
            (TensorData::I32(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (TensorData::Bool(v), _) => v.iter().map(|&b| u8::from(b)).collect(),
            (TensorData::Bytes(v), _) => v.clone(),
        })
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            TensorData::I32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<&[bool]> {
        match &self.data {
            TensorData::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The GGUF block bytes of a quantized tensor.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.data {
            TensorData::Bytes(v) => Some(v),
            _ => None,
        }
    }

    /// Number of elements (values, not bytes, for quantized tensors).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values of a float or quantized tensor as f32 (dequantizing), for ops that read either.
    pub(super) fn to_f32(&self) -> Result<Vec<f32>, String> {
        match &self.data {
            TensorData::F32(v) => Ok(v.clone()),
            TensorData::Bytes(b) => {
                let mut out = vec![0.0; self.numel()];
                quant::dequantize(self.dtype, b, &mut out).map_err(|e| e.to_string())?;
                Ok(out)
            }
            _ => Err(format!("expected a float tensor, got {}", self.describe())),
        }
    }

    /// The f32 values of a float tensor, or an error naming `what` it is.
    pub(super) fn floats(&self, what: &str) -> Result<&[f32], String> {
        self.as_f32()
            .ok_or_else(|| format!("{what} must be a float tensor, got {}", self.describe()))
    }

    /// `dtype[shape]`, for error messages.
    pub(super) fn describe(&self) -> String {
        format!("{}{:?}", self.dtype, self.shape)
    }

    /// Checks that the storage class fits the dtype and the length fits the shape (tensors have
    /// public fields, so one handed to the interpreter may be inconsistent).
    pub(super) fn check(&self) -> Result<(), String> {
        let class_fits = match &self.data {
            TensorData::F32(_) => self.dtype.is_float(),
            TensorData::I32(_) => self.dtype.is_int(),
            TensorData::Bool(_) => self.dtype == DType::Bool,
            TensorData::Bytes(_) => self.dtype.is_quantized(),
        };
        if !class_fits {
            return Err(format!(
                "a {} tensor cannot hold {}",
                self.dtype,
                self.data.class()
            ));
        }
        let want = match self.data {
            TensorData::Bytes(_) => self.dtype.storage_bytes(&self.shape)?,
            _ => self.numel(),
        };
        if self.data.len() != want {
            return Err(format!(
                "{} holds {} items, its shape needs {want}",
                self.describe(),
                self.data.len()
            ));
        }
        Ok(())
    }

    /// Gives a computed tensor the node's `dtype`: f16/bf16 values are rounded through it, i8/u8
    /// values wrapped into its range; then the result is checked like an input.
    pub(super) fn conform(mut self, dtype: DType) -> Result<Tensor, String> {
        if self.dtype.is_quantized() || dtype.is_quantized() {
            if self.dtype != dtype {
                return Err(format!(
                    "produced {} where {dtype} was declared",
                    self.dtype
                ));
            }
        } else {
            match &mut self.data {
                TensorData::F32(v) => round_to(dtype, v),
                TensorData::I32(v) => wrap_to(dtype, v),
                _ => {}
            }
        }
        self.dtype = dtype;
        self.check()?;
        Ok(self)
    }
}

/// Rounds f32 values to the nearest f16/bf16 (ties to even); other dtypes leave them alone.
fn round_to(dtype: DType, values: &mut [f32]) {
    match dtype {
        DType::F16 => values
            .iter_mut()
            .for_each(|x| *x = f16::from_f32(*x).to_f32()),
        DType::Bf16 => values
            .iter_mut()
            .for_each(|x| *x = bf16::from_f32(*x).to_f32()),
        _ => {}
    }
}

/// Wraps i32 values into i8/u8 (two's complement truncation, like torch's integer casts).
fn wrap_to(dtype: DType, values: &mut [i32]) {
    match dtype {
        DType::I8 => values.iter_mut().for_each(|x| *x = i32::from(*x as i8)),
        DType::U8 => values.iter_mut().for_each(|x| *x = i32::from(*x as u8)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_plain_dtype() {
        let t = Tensor::from_le_bytes(DType::F32, vec![2], &[0, 0, 128, 63, 0, 0, 0, 192], "x");
        assert_eq!(t.unwrap().as_f32(), Some(&[1.0, -2.0][..]));
        // f16 0x3C00 = 1, 0xC100 = −2.5; bf16 0x3F80 = 1, 0xC020 = −2.5.
        let h = Tensor::from_le_bytes(DType::F16, vec![2], &[0, 0x3C, 0, 0xC1], "h").unwrap();
        assert_eq!((h.dtype, h.as_f32()), (DType::F16, Some(&[1.0, -2.5][..])));
        let b = Tensor::from_le_bytes(DType::Bf16, vec![2], &[0x80, 0x3F, 0x20, 0xC0], "b");
        assert_eq!(b.unwrap().as_f32(), Some(&[1.0, -2.5][..]));
        let i = Tensor::from_le_bytes(DType::I32, vec![1], &[0xFE, 0xFF, 0xFF, 0xFF], "i");
        assert_eq!(i.unwrap().as_i32(), Some(&[-2][..]));
        let i8 = Tensor::from_le_bytes(DType::I8, vec![2], &[0xFF, 0x7F], "i8").unwrap();
        assert_eq!(i8.as_i32(), Some(&[-1, 127][..]));
        let u8 = Tensor::from_le_bytes(DType::U8, vec![2], &[0xFF, 0x7F], "u8").unwrap();
        assert_eq!(u8.as_i32(), Some(&[255, 127][..]));
        let bo = Tensor::from_le_bytes(DType::Bool, vec![3], &[0, 1, 2], "m").unwrap();
        assert_eq!(bo.as_bool(), Some(&[false, true, true][..]));
        let q = Tensor::from_le_bytes(DType::Q4_0, vec![1, 32], &[0x88; 18], "q").unwrap();
        assert_eq!(q.as_bytes().map(<[u8]>::len), Some(18));
        assert_eq!(q.to_f32(), Ok(vec![0.0; 32]));
    }

    #[test]
    fn to_le_bytes_inverts_from_le_bytes() {
        let cases: [(DType, Vec<usize>, Vec<u8>); 8] = [
            (DType::F32, vec![2], vec![0, 0, 128, 63, 0, 0, 0, 192]),
            (DType::F16, vec![2], vec![0, 0x3C, 0, 0xC1]),
            (DType::Bf16, vec![2], vec![0x80, 0x3F, 0x20, 0xC0]),
            (DType::I32, vec![1], vec![0xFE, 0xFF, 0xFF, 0xFF]),
            (DType::I8, vec![2], vec![0xFF, 0x7F]),
            (DType::U8, vec![2], vec![0xFF, 0x7F]),
            (DType::Bool, vec![2], vec![0, 1]),
            (DType::Q4_0, vec![1, 32], vec![0x88; 18]),
        ];
        for (dtype, shape, bytes) in cases {
            let t = Tensor::from_le_bytes(dtype, shape, &bytes, "t").unwrap();
            assert_eq!(t.to_le_bytes().unwrap(), bytes, "{dtype}");
        }
        let torn = Tensor {
            dtype: DType::F32,
            shape: vec![2],
            data: TensorData::F32(vec![0.0]),
        };
        assert!(torn.to_le_bytes().is_err());
    }

    #[test]
    fn length_mismatch_names_the_tensor() {
        let err = Tensor::from_le_bytes(DType::F16, vec![3], &[0; 4], "model.norm.weight");
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains("model.norm.weight") && msg.contains("needs 6 bytes"),
            "{msg}"
        );
        let err = Tensor::from_le_bytes(DType::Q8_0, vec![2, 16], &[0; 34], "w").unwrap_err();
        assert!(err.to_string().contains("multiple of 32"), "{err}");
    }

    #[test]
    fn conform_rounds_and_wraps() {
        let t = Tensor::f32(vec![3], vec![1.0001, 65519.0, 1.0 / 3.0]);
        let h = t.clone().conform(DType::F16).unwrap();
        assert_eq!(h.as_f32(), Some(&[1.0, 65504.0, 0.333_251_95][..]));
        let b = t.conform(DType::Bf16).unwrap();
        assert_eq!(b.as_f32(), Some(&[1.0, 65536.0, 0.333_984_38][..]));
        let i = Tensor::i32(vec![3], vec![200, -129, 256]);
        assert_eq!(
            i.clone().conform(DType::I8).unwrap().as_i32(),
            Some(&[-56, 127, 0][..])
        );
        assert_eq!(
            i.conform(DType::U8).unwrap().as_i32(),
            Some(&[200, 127, 0][..])
        );
        assert!(Tensor::f32(vec![1], vec![1.0]).conform(DType::I32).is_err());
    }

    #[test]
    fn check_rejects_inconsistent_tensors() {
        let bad = Tensor {
            dtype: DType::F32,
            shape: vec![2, 2],
            data: TensorData::F32(vec![0.0; 3]),
        };
        assert!(bad.check().unwrap_err().contains("needs 4"));
        let wrong_class = Tensor {
            dtype: DType::I32,
            shape: vec![1],
            data: TensorData::F32(vec![0.0]),
        };
        assert!(wrong_class.check().is_err());
        assert!(Tensor::quantize(DType::Q8_0, vec![2, 32], &[0.5; 64])
            .unwrap()
            .check()
            .is_ok());
        assert!(Tensor::quantize(DType::Q8_0, vec![2, 16], &[0.5; 32]).is_err());
    }
}
