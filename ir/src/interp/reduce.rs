//! Reductions (sum, max, mean) over any sorted set of axes, accumulated in f32 (wrapping i32 for
//! integer sums) in row-major order of the input.

use super::elementwise::nan_max;
use super::layout::{broadcast_strides, strides, walk};
use super::{Tensor, TensorData};
use crate::ReduceOp;

/// Reduces `axes` of `x`. Empty reductions give the identity: 0 for sum, −∞ (or `i32::MIN`) for
/// max, and NaN (0/0) for mean, as torch does for `mean`.
pub(super) fn reduce(
    x: &Tensor,
    op: ReduceOp,
    axes: &[usize],
    keep_dims: bool,
) -> Result<Tensor, String> {
    let rank = x.shape.len();
    if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|&a| a >= rank) {
        return Err(format!(
            "axes {axes:?} must be sorted, unique and < rank {rank}"
        ));
    }
    // The result with reduced axes kept as 1, read back with stride 0 along them.
    let kept: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let into = broadcast_strides(&kept, &x.shape)?;
    let own = strides(&x.shape);
    fn fold<T: Copy>(
        shape: &[usize],
        strides: [&[usize]; 2],
        x: &[T],
        init: T,
        n: usize,
        f: impl Fn(T, T) -> T,
    ) -> Vec<T> {
        let mut acc = vec![init; n];
        walk(shape, strides, |[i, o]| acc[o] = f(acc[o], x[i]));
        acc
    }
    let n: usize = kept.iter().product();
    let strides = [own.as_slice(), into.as_slice()];
    let data = match (&x.data, op) {
        (TensorData::F32(v), ReduceOp::Sum) => {
            TensorData::F32(fold(&x.shape, strides, v, 0.0, n, |a, b| a + b))
        }
        (TensorData::F32(v), ReduceOp::Max) => {
            TensorData::F32(fold(&x.shape, strides, v, f32::NEG_INFINITY, n, nan_max))
        }
        (TensorData::F32(v), ReduceOp::Mean) => {
            let count = axes.iter().map(|&a| x.shape[a]).product::<usize>() as f32;
            let sums = fold(&x.shape, strides, v, 0.0, n, |a, b| a + b);
            TensorData::F32(sums.into_iter().map(|s| s / count).collect())
        }
        (TensorData::I32(v), ReduceOp::Sum) => {
            TensorData::I32(fold(&x.shape, strides, v, 0, n, i32::wrapping_add))
        }
        (TensorData::I32(v), ReduceOp::Max) => {
            TensorData::I32(fold(&x.shape, strides, v, i32::MIN, n, i32::max))
        }
        _ => return Err(format!("{op:?} is not defined on {}", x.describe())),
    };
    let shape = if keep_dims {
        kept
    } else {
        x.shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    Ok(Tensor {
        dtype: x.dtype,
        shape,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_chosen_axes() {
        // x[i, j, k] = 12i + 4j + k over [2, 3, 4].
        let x = Tensor::f32(vec![2, 3, 4], (0..24).map(|v| v as f32).collect());
        let sum = reduce(&x, ReduceOp::Sum, &[0, 2], false).unwrap();
        assert_eq!(sum.shape, vec![3]);
        // Σ_i Σ_k (12i + 4j + k) = 4·12 + 8·4j + 2·6 = 60 + 32j.
        assert_eq!(sum.as_f32(), Some(&[60.0, 92.0, 124.0][..]));
        let max = reduce(&x, ReduceOp::Max, &[1], true).unwrap();
        assert_eq!(max.shape, vec![2, 1, 4]);
        assert_eq!(
            max.as_f32(),
            Some(&[8., 9., 10., 11., 20., 21., 22., 23.][..])
        );
        let mean = reduce(&x, ReduceOp::Mean, &[2], false).unwrap();
        assert_eq!(mean.as_f32(), Some(&[1.5, 5.5, 9.5, 13.5, 17.5, 21.5][..]));
        let all = reduce(&x, ReduceOp::Sum, &[0, 1, 2], false).unwrap();
        assert_eq!((all.shape.len(), all.as_f32()), (0, Some(&[276.0][..])));
    }

    #[test]
    fn integer_and_empty_reductions() {
        let x = Tensor::i32(vec![2, 2], vec![1, -5, 3, 2]);
        let max = reduce(&x, ReduceOp::Max, &[0], false).unwrap();
        assert_eq!(max.as_i32(), Some(&[3, 2][..]));
        let sum = reduce(&x, ReduceOp::Sum, &[1], false).unwrap();
        assert_eq!(sum.as_i32(), Some(&[-4, 5][..]));
        assert!(reduce(&x, ReduceOp::Mean, &[0], false).is_err());
        assert!(reduce(&x, ReduceOp::Sum, &[1, 0], false).is_err());
        let empty = Tensor::f32(vec![2, 0], vec![]);
        let s = reduce(&empty, ReduceOp::Sum, &[1], false).unwrap();
        assert_eq!(s.as_f32(), Some(&[0.0, 0.0][..]));
        let m = reduce(&empty, ReduceOp::Mean, &[1], false).unwrap();
        assert!(m.as_f32().unwrap().iter().all(|v| v.is_nan()));
    }
}
