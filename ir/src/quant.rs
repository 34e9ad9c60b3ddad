//! GGUF block quantization (Q8_0, Q4_0), bit-exact with llama.cpp's reference quantizers so that
//! weights we quantize and weights read from a `.gguf` file mean the same thing.
//!
//! Both formats cut the last axis into blocks of [`QK`] = 32 values. A block starts with its scale
//! `d` as a little-endian f16, followed by the quantized values:
//! - **Q8_0**: 32 × i8 `q`; the value is `d·q` (34 bytes per block).
//! - **Q4_0**: 16 bytes of nibbles; value `j < 16` is the low nibble of byte `j`, value `j + 16` its
//!   high nibble; the value is `d·(q − 8)` (18 bytes per block).

use crate::{DType, IrError, QK};
use half::f16;

/// Quantizes `values` to Q8_0 the way llama.cpp's `quantize_row_q8_0_ref` does: per block,
/// `d = amax / 127` and `q = round(x / d)` (halves away from zero).
///
/// GGUF stores whole blocks only; a ragged tail (when `values.len()` is not a multiple of [`QK`]) is
/// quantized as if padded with zeros. [`quantize`] rejects such lengths instead.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    quantize_blocks(values, DType::Q8_0, |x, qs| {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
        d
    })
}

/// Quantizes `values` to Q4_0 the way llama.cpp's `quantize_row_q4_0_ref` does: per block, take
/// the value `max` of largest magnitude (keeping its sign), `d = max / −8`, and
/// `q = min(15, trunc(x / d + 8.5))`, so `max` itself maps exactly to `q = 0`.
///
/// A ragged tail is zero-padded as in [`quantize_q8_0`].
pub fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    quantize_blocks(values, DType::Q4_0, |x, qs| {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let nibble = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        let (lo, hi) = x.split_at(QK / 2);
        for ((q, &a), &b) in qs.iter_mut().zip(lo).zip(hi) {
            *q = nibble(a) | (nibble(b) << 4);
        }
        d
    })
}

/// Quantizes `values` to a block-quantized `dtype`, checking that the length is whole blocks.
pub fn quantize(dtype: DType, values: &[f32]) -> Result<Vec<u8>, IrError> {
    if !values.len().is_multiple_of(QK) {
        return Err(IrError::Invalid(format!(
            "{dtype} quantizes whole blocks of {QK} values, got {}",
            values.len()
        )));
    }
    match dtype {
        DType::Q8_0 => Ok(quantize_q8_0(values)),
        DType::Q4_0 => Ok(quantize_q4_0(values)),
        _ => Err(not_quantized(dtype)),
    }
}

/// Decodes `bytes` of a block-quantized `dtype` into `out`, one f32 per value; `out.len()` must be
/// whole blocks and `bytes` exactly those blocks.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<(), IrError> {
    let block = dtype.quant_block().ok_or_else(|| not_quantized(dtype))?;
    if !out.len().is_multiple_of(block.elems)
        || bytes.len() != out.len() / block.elems * block.bytes
    {
        return Err(IrError::Format(format!(
            "{dtype}: {} bytes do not hold {} values",
            bytes.len(),
            out.len()
        )));
    }
    let blocks = bytes
        .chunks_exact(block.bytes)
        .zip(out.chunks_exact_mut(block.elems));
    for (b, o) in blocks {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let qs = &b[2..];
        if dtype == DType::Q8_0 {
            for (w, &q) in o.iter_mut().zip(qs) {
                *w = d * f32::from(q as i8);
            }
        } else {
            let (lo, hi) = o.split_at_mut(QK / 2);
            for ((a, b), &q) in lo.iter_mut().zip(hi).zip(qs) {
                *a = d * f32::from(i16::from(q & 0x0F) - 8);
                *b = d * f32::from(i16::from(q >> 4) - 8);
            }
        }
    }
    Ok(())
}

fn not_quantized(dtype: DType) -> IrError {
    IrError::Invalid(format!("{dtype} is not a block-quantized type"))
}

/// Runs `block` on each zero-padded chunk of [`QK`] values; it fills the packed values and returns
/// the scale, which is stored (as f16) in front of them.
fn quantize_blocks(
    values: &[f32],
    dtype: DType,
    block: impl Fn(&[f32; QK], &mut [u8]) -> f32,
) -> Vec<u8> {
    let size = dtype.quant_block().map_or(0, |b| b.bytes);
    let mut out = Vec::with_capacity(values.len().div_ceil(QK) * size);
    for chunk in values.chunks(QK) {
        let mut x = [0.0f32; QK];
        x[..chunk.len()].copy_from_slice(chunk);
        let start = out.len();
        out.resize(start + size, 0);
        let d = block(&x, &mut out[start + 2..]);
        out[start..start + 2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(dtype: DType, x: &[f32]) -> Vec<f32> {
        let bytes = quantize(dtype, x).unwrap();
        assert_eq!(bytes.len(), dtype.storage_bytes(&[x.len()]).unwrap());
        let mut back = vec![0.0; x.len()];
        dequantize(dtype, &bytes, &mut back).unwrap();
        back
    }

    #[test]
    fn q8_0_block_bytes_by_hand() {
        // amax = 127 → d = 1.0 (f16 0x3C00); q = round(x), halves away from zero.
        let mut x = [0.0f32; QK];
        x[..6].copy_from_slice(&[127.0, -127.0, 0.5, -0.5, 1.49, 2.5]);
        let bytes = quantize_q8_0(&x);
        let mut want = vec![0u8; 34];
        want[..8].copy_from_slice(&[0x00, 0x3C, 0x7F, 0x81, 0x01, 0xFF, 0x01, 0x03]);
        assert_eq!(bytes, want);
        let mut back = [0.0f32; QK];
        dequantize(DType::Q8_0, &bytes, &mut back).unwrap();
        assert_eq!(&back[..6], &[127.0, -127.0, 1.0, -1.0, 1.0, 3.0]);
    }

    #[test]
    fn q4_0_block_bytes_and_nibble_layout_by_hand() {
        // max = −8 → d = 1.0; q = min(15, trunc(x + 8.5)).
        let mut x = [0.0f32; QK];
        x[..5].copy_from_slice(&[-8.0, 7.0, 0.0, 3.4, -2.5]);
        x[16] = 1.0;
        x[17] = -1.0;
        let bytes = quantize_q4_0(&x);
        // q: [0, 15, 8, 11, 6, 8, …] low nibbles; [9, 7, 8, …] high nibbles.
        let mut want = vec![0x00, 0x3C, 0x90, 0x7F, 0x88, 0x8B, 0x86];
        want.resize(18, 0x88);
        assert_eq!(bytes, want);
        let mut back = [0.0f32; QK];
        dequantize(DType::Q4_0, &bytes, &mut back).unwrap();
        assert_eq!(&back[..5], &[-8.0, 7.0, 0.0, 3.0, -2.0]);
        assert_eq!((back[16], back[17], back[31]), (1.0, -1.0, 0.0));
    }

    #[test]
    fn q4_0_positive_max_gets_negative_scale_and_clamps() {
        // max = 16 → d = −2 (f16 0xC000); 16 → q 0 → 16; −16 → trunc(16.5) = 16 → clamped to 15 → −14.
        let mut x = [0.0f32; QK];
        x[0] = 16.0;
        x[1] = -16.0;
        let bytes = quantize_q4_0(&x);
        assert_eq!(&bytes[..4], &[0x00, 0xC0, 0x80, 0x8F]);
        let mut back = [0.0f32; QK];
        dequantize(DType::Q4_0, &bytes, &mut back).unwrap();
        assert_eq!(&back[..3], &[16.0, -14.0, 0.0]);
    }

    #[test]
    fn zero_block_and_ragged_tail() {
        assert_eq!(quantize_q8_0(&[0.0; QK]), vec![0u8; 34]);
        let tail = quantize_q8_0(&[127.0; 33]);
        assert_eq!(tail.len(), 68);
        assert_eq!(&tail[34..37], &[0x00, 0x3C, 0x7F]);
        assert!(quantize(DType::Q8_0, &[1.0; 33]).is_err());
        assert!(quantize(DType::F16, &[1.0; 32]).is_err());
    }

    #[test]
    fn dequantize_checks_lengths() {
        let mut out = [0.0f32; QK];
        assert!(dequantize(DType::Q8_0, &[0u8; 33], &mut out).is_err());
        assert!(dequantize(DType::Q4_0, &[0u8; 18], &mut out[..31]).is_err());
        assert!(dequantize(DType::F32, &[0u8; 128], &mut out).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn q8_0_round_trip_error(x in prop::collection::vec(-100.0f32..100.0, QK * 3)) {
            let back = round_trip(DType::Q8_0, &x);
            for (xb, bb) in x.chunks(QK).zip(back.chunks(QK)) {
                let d = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                // Half a step of rounding plus the f16 scale's relative error (2^-11) times |q| ≤ 127.
                for (a, b) in xb.iter().zip(bb) {
                    prop_assert!((a - b).abs() <= d * (0.5 + 127.0 / 2048.0) + 1e-6, "{a} vs {b}");
                }
            }
        }

        #[test]
        fn q4_0_round_trip_error(x in prop::collection::vec(-100.0f32..100.0, QK * 3)) {
            let back = round_trip(DType::Q4_0, &x);
            for (xb, bb) in x.chunks(QK).zip(back.chunks(QK)) {
                let d = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 8.0;
                // One step at most (the clamp at 15), plus the f16 scale's error times |q − 8| ≤ 8.
                for (a, b) in xb.iter().zip(bb) {
                    prop_assert!((a - b).abs() <= d * (1.0 + 8.0 / 2048.0) + 1e-6, "{a} vs {b}");
                }
                // The largest-magnitude value is reproduced up to the scale's rounding.
                let (i, amax) = xb.iter().enumerate().fold((0, 0.0f32), |(bi, bm), (i, v)| {
                    if bm < v.abs() { (i, v.abs()) } else { (bi, bm) }
                });
                prop_assert!((xb[i] - bb[i]).abs() <= amax / 1024.0);
            }
        }
    }
}
