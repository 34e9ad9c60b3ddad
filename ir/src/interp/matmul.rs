//! Batched matrix multiplication, plain and with a block-quantized right-hand side. Both read the
//! right-hand matrix one stored row at a time (dequantizing that row only), accumulate in f32 in
//! ascending k, and broadcast batch axes like numpy.

use super::layout::{broadcast_shapes, broadcast_strides, walk};
use super::{Tensor, TensorData};
use crate::{quant, DType};

/// Σ aᵢ·bᵢ in f32, in index order.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |acc, (x, y)| acc + x * y)
}

/// The right-hand matrices read one stored row at a time, as f32: plain rows are borrowed,
/// quantized rows are decoded into one reused buffer, so a quantized weight is never expanded whole.
enum Rhs<'a> {
    Plain(&'a [f32]),
    Quant {
        dtype: DType,
        bytes: &'a [u8],
        row_bytes: usize,
        row: Vec<f32>,
    },
}

impl<'a> Rhs<'a> {
    /// `row_len` is the length of b's stored rows (its last axis).
    fn new(b: &'a Tensor, row_len: usize) -> Result<Rhs<'a>, String> {
        match (&b.data, b.dtype.quant_block()) {
            (TensorData::F32(v), _) => Ok(Rhs::Plain(v)),
            (TensorData::Bytes(bytes), Some(block)) if row_len.is_multiple_of(block.elems) => {
                Ok(Rhs::Quant {
                    dtype: b.dtype,
                    bytes,
                    row_bytes: row_len / block.elems * block.bytes,
                    row: vec![0.0; row_len],
                })
            }
            _ => Err(format!(
                "matmul rhs must be float or quantized rows, got {}",
                b.describe()
            )),
        }
    }

    /// Stored row `r` (counting across all batch matrices), `len` values long.
    fn row(&mut self, r: usize, len: usize) -> Result<&[f32], String> {
        match self {
            Rhs::Plain(v) => Ok(&v[r * len..(r + 1) * len]),
            Rhs::Quant {
                dtype,
                bytes,
                row_bytes,
                row,
            } => {
                let src = &bytes[r * *row_bytes..(r + 1) * *row_bytes];
                quant::dequantize(*dtype, src, row).map_err(|e| e.to_string())?;
                Ok(row)
            }
        }
    }
}

/// Splits a shape into batch axes and the trailing matrix dims.
fn matrix<'s>(shape: &'s [usize], what: &str) -> Result<(&'s [usize], usize, usize), String> {
    match shape {
        [batch @ .., r, c] => Ok((batch, *r, *c)),
        _ => Err(format!("matmul {what} needs rank ≥ 2, got {shape:?}")),
    }
}

/// `a [..., M, K] · b [..., K, N]` (or `b [..., N, K]` with `transpose_b`) → `[..., M, N]`, for
/// float or q8_0/q4_0 `b` (MatMul and QuantMatMul share the definition).
pub(super) fn matmul(a: &Tensor, b: &Tensor, transpose_b: bool) -> Result<Tensor, String> {
    let av = a.floats("matmul lhs")?;
    let (a_batch, m, k) = matrix(&a.shape, "lhs")?;
    let (b_batch, b_rows, b_cols) = matrix(&b.shape, "rhs")?;
    let (bk, n) = if transpose_b {
        (b_cols, b_rows)
    } else {
        (b_rows, b_cols)
    };
    if bk != k {
        return Err(format!(
            "inner dims differ: {} · {}{}",
            a.describe(),
            b.describe(),
            if transpose_b { "ᵀ" } else { "" }
        ));
    }
    let batch = broadcast_shapes(&[a_batch, b_batch])?;
    let sa = broadcast_strides(a_batch, &batch)?;
    let sb = broadcast_strides(b_batch, &batch)?;
    let mut pairs = Vec::new();
    walk(&batch, [&sa, &sb], |[ia, ib]| pairs.push((ia, ib)));
    let mut rhs = Rhs::new(b, b_cols)?;
    let mut out = vec![0.0f32; pairs.len() * m * n];
    if m * n * k > 0 {
        for ((ia, ib), o) in pairs.into_iter().zip(out.chunks_exact_mut(m * n)) {
            let am = &av[ia * m * k..(ia + 1) * m * k];
            let first_row = ib * b_rows;
            if transpose_b {
                // out[i, j] = a[i, :] · b[j, :]
                for j in 0..n {
                    let bj = rhs.row(first_row + j, k)?;
                    for (i, ai) in am.chunks_exact(k).enumerate() {
                        o[i * n + j] = dot(ai, bj);
                    }
                }
            } else {
                // out[i, :] += a[i, kk] · b[kk, :], kk ascending
                for kk in 0..k {
                    let bk = rhs.row(first_row + kk, n)?;
                    for (oi, ai) in o.chunks_exact_mut(n).zip(am.chunks_exact(k)) {
                        let s = ai[kk];
                        oi.iter_mut().zip(bk).for_each(|(x, y)| *x += s * y);
                    }
                }
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(Tensor::f32(shape, out))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::{Dim, Graph, Op};
    use proptest::prelude::*;

    #[test]
    fn small_product_by_hand() {
        let a = Tensor::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let b = Tensor::f32(vec![3, 2], vec![7., 8., 9., 10., 11., 12.]);
        let c = matmul(&a, &b, false).unwrap();
        assert_eq!(c.as_f32(), Some(&[58., 64., 139., 154.][..]));
        let bt = Tensor::f32(vec![2, 3], vec![7., 9., 11., 8., 10., 12.]);
        assert_eq!(matmul(&a, &bt, true).unwrap().as_f32(), c.as_f32());
        assert!(matmul(&a, &a, false).unwrap_err().contains("inner dims"));
        assert!(matmul(&Tensor::f32(vec![3], vec![0.0; 3]), &b, false).is_err());
    }

    #[test]
    fn empty_inner_dim_gives_zeros() {
        let a = Tensor::f32(vec![2, 0], vec![]);
        let b = Tensor::f32(vec![0, 3], vec![]);
        assert_eq!(matmul(&a, &b, false).unwrap().as_f32(), Some(&[0.0; 6][..]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Batch broadcasting against the definition written out index by index.
        #[test]
        fn batched_matches_index_formula(
            m in 1usize..4, k in 1usize..5, n in 1usize..4, tb in any::<bool>(), seed in any::<u64>()
        ) {
            let (a_shape, b_shape) = (vec![2, 1, m, k], if tb { vec![3, n, k] } else { vec![3, k, n] });
            let av = rand_f32(seed, 2 * m * k);
            let bv = rand_f32(seed ^ 1, 3 * k * n);
            let got = matmul(&Tensor::f32(a_shape, av.clone()), &Tensor::f32(b_shape, bv.clone()), tb).unwrap();
            prop_assert_eq!(&got.shape, &vec![2, 3, m, n]);
            let mut want = Vec::new();
            for x in 0..2 {
                for y in 0..3 {
                    for i in 0..m {
                        for j in 0..n {
                            let b_at = |kk: usize| if tb { bv[y * n * k + j * k + kk] } else { bv[y * k * n + kk * n + j] };
                            want.push((0..k).map(|kk| av[x * m * k + i * k + kk] * b_at(kk)).sum::<f32>());
                        }
                    }
                }
            }
            assert_close(got.as_f32().unwrap(), &want, 1e-5);
        }

        /// QuantMatMul is MatMul on the dequantized weight, bit for bit.
        #[test]
        fn quant_matmul_is_matmul_of_dequantized(
            rows in 1usize..4, blocks in 1usize..3, other in 1usize..4, tb in any::<bool>(),
            q4 in any::<bool>(), seed in any::<u64>()
        ) {
            let dtype = if q4 { DType::Q4_0 } else { DType::Q8_0 };
            // The blocked axis is the weight's last: K when transposed, N otherwise.
            let blocked = 32 * blocks;
            let (k, n) = if tb { (blocked, other) } else { (other, blocked) };
            let w_shape = if tb { [n, k] } else { [k, n] };
            let w = Tensor::quantize(dtype, w_shape.to_vec(), &rand_f32(seed, k * n)).unwrap();
            let mut g = Graph::new();
            let a = g.input("a", DType::F32, vec![Dim::c(2), Dim::sym("m"), Dim::c(k as i64)]);
            let wn = g.weight("w", dtype, &w_shape);
            let fused = add(&mut g, Op::QuantMatMul { transpose_b: tb }, &[a, wn]);
            let deq = add(&mut g, Op::Dequantize, &[wn]);
            let plain = add(&mut g, Op::MatMul { transpose_b: tb }, &[a, deq]);
            g.output("fused", fused);
            g.output("plain", plain);
            let x = Tensor::f32(vec![2, rows, k], rand_f32(seed ^ 7, 2 * rows * k));
            let out = super::super::run(&g, &weights(&[("w", w)]), &feed(&[("a", x)])).unwrap();
            prop_assert_eq!(&out["fused"].shape, &vec![2, rows, n]);
            prop_assert_eq!(out["fused"].as_f32(), out["plain"].as_f32());
        }
    }

    #[test]
    fn dequantize_op_reads_hand_made_blocks() {
        // Q8_0 block: d = 0.5 (f16 0x3800), q = 0, 1, −2, 3, … (sign alternating every other).
        let mut block = vec![0x00, 0x38];
        let qs: Vec<i8> = (0..32).map(|j| if j % 2 == 0 { j } else { -j }).collect();
        block.extend(qs.iter().map(|&q| q as u8));
        let w = Tensor::from_le_bytes(DType::Q8_0, vec![1, 32], &block, "w").unwrap();
        let mut g = Graph::new();
        let wn = g.weight("w", DType::Q8_0, &[1, 32]);
        let d = add(&mut g, Op::Dequantize, &[wn]);
        g.output("d", d);
        let out = super::super::run(&g, &weights(&[("w", w)]), &feed(&[])).unwrap();
        let want: Vec<f32> = qs.iter().map(|&q| 0.5 * f32::from(q)).collect();
        assert_eq!(out["d"].as_f32(), Some(&want[..]));
        assert_eq!(out["d"].dtype, DType::F32);
    }
}
