//! Row-wise normalizations over the last axis: softmax (max-subtracted), RMSNorm and LayerNorm
//! (biased variance, as torch), all in f32.

use super::elementwise::nan_max;
use super::Tensor;

/// Runs `f` on every row (last axis) of a float tensor, producing a tensor of the same shape.
fn per_row(
    x: &Tensor,
    what: &str,
    mut f: impl FnMut(&[f32], &mut [f32]),
) -> Result<Tensor, String> {
    let v = x.floats(what)?;
    let d = *x
        .shape
        .last()
        .ok_or_else(|| format!("{what} is a scalar"))?;
    let mut out = vec![0.0; v.len()];
    if d > 0 {
        for (row, o) in v.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            f(row, o);
        }
    }
    Ok(Tensor::f32(x.shape.clone(), out))
}

/// A norm parameter: a float vector as long as `x`'s last axis.
fn param<'t>(p: &'t Tensor, x: &Tensor, what: &str) -> Result<&'t [f32], String> {
    let v = p.floats(what)?;
    if p.shape.len() != 1 || x.shape.last() != Some(&v.len()) {
        return Err(format!(
            "{what} {} does not fit input {}",
            p.describe(),
            x.describe()
        ));
    }
    Ok(v)
}

/// exp(x − max) / Σ exp(x − max) along the last axis.
pub(super) fn softmax(x: &Tensor) -> Result<Tensor, String> {
    per_row(x, "softmax input", |row, out| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, nan_max);
        let mut sum = 0.0;
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v - max).exp();
            sum += *o;
        }
        out.iter_mut().for_each(|o| *o /= sum);
    })
}

/// x / sqrt(mean(x²) + eps) · weight.
pub(super) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor, String> {
    let w = param(weight, x, "rms_norm weight")?;
    per_row(x, "rms_norm input", |row, out| {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        let r = 1.0 / (mean_sq + eps).sqrt();
        for ((o, &v), &wi) in out.iter_mut().zip(row).zip(w) {
            *o = v * r * wi;
        }
    })
}

/// (x − mean) / sqrt(var + eps) · weight + bias, with the biased (1/D) variance.
pub(super) fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<Tensor, String> {
    let w = param(weight, x, "layer_norm weight")?;
    let b = param(bias, x, "layer_norm bias")?;
    per_row(x, "layer_norm input", |row, out| {
        let d = row.len() as f32;
        let mean = row.iter().sum::<f32>() / d;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
        let r = 1.0 / (var + eps).sqrt();
        for (((o, &v), &wi), &bi) in out.iter_mut().zip(row).zip(w).zip(b) {
            *o = (v - mean) * r * wi + bi;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::{BinaryOp, DType, Dim, Graph, Op, ReduceOp, UnaryOp};
    use proptest::prelude::*;

    fn row(v: &[f32]) -> Tensor {
        Tensor::f32(vec![1, v.len()], v.to_vec())
    }

    #[test]
    fn values_by_hand() {
        let s = softmax(&row(&[1.0, 2.0, 3.0])).unwrap();
        assert_close(
            s.as_f32().unwrap(),
            &[0.090_030_57, 0.244_728_47, 0.665_240_96],
            1e-6,
        );
        // Shifting a row does not change its softmax; a huge entry does not overflow.
        let big = softmax(&row(&[1001.0, 1002.0, 1003.0])).unwrap();
        assert_close(big.as_f32().unwrap(), s.as_f32().unwrap(), 1e-6);

        // mean(x²) = 7.5 → r = 1/√7.5.
        let x = row(&[1.0, 2.0, 3.0, 4.0]);
        let w = Tensor::f32(vec![4], vec![1.0, 1.0, 2.0, 0.5]);
        let r = 1.0 / 7.5f32.sqrt();
        let rms = rms_norm(&x, &w, 0.0).unwrap();
        assert_close(rms.as_f32().unwrap(), &[r, 2.0 * r, 6.0 * r, 2.0 * r], 1e-6);

        // mean 2.5, biased var 1.25 → (x − 2.5)/√1.25 · w + b.
        let b = Tensor::f32(vec![4], vec![0.0, 1.0, 0.0, -1.0]);
        let ln = layer_norm(&x, &w, &b, 0.0).unwrap();
        let z = 1.0 / 1.25f32.sqrt();
        assert_close(
            ln.as_f32().unwrap(),
            &[-1.5 * z, -0.5 * z + 1.0, 1.0 * z, 0.75 * z - 1.0],
            1e-6,
        );

        assert!(rms_norm(&x, &b, 1e-6).is_ok());
        assert!(rms_norm(&x, &Tensor::f32(vec![3], vec![1.0; 3]), 1e-6).is_err());
        assert!(softmax(&Tensor::f32(vec![], vec![1.0])).is_err());
    }

    /// x [rows, d] and a [d] parameter as graph inputs.
    fn inputs(g: &mut Graph, d: usize) -> (crate::NodeId, crate::NodeId, crate::NodeId) {
        let x = g.input("x", DType::F32, vec![Dim::sym("rows"), Dim::c(d as i64)]);
        let w = g.input("w", DType::F32, dims(&[d]));
        let b = g.input("b", DType::F32, dims(&[d]));
        (x, w, b)
    }

    fn reduce_last(g: &mut Graph, op: ReduceOp, x: crate::NodeId) -> crate::NodeId {
        add(
            g,
            Op::Reduce {
                op,
                axes: vec![1],
                keep_dims: true,
            },
            &[x],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Each norm against its decomposition into Reduce, Binary and Unary primitives.
        #[test]
        fn norms_match_their_decompositions(rows in 1usize..4, d in 1usize..9, seed in any::<u64>()) {
            let eps = 1e-5;
            let mut g = Graph::new();
            let (x, w, b) = inputs(&mut g, d);
            let e = g.constant(f64::from(eps), DType::F32);

            let sm = add(&mut g, Op::Softmax, &[x]);
            let max = reduce_last(&mut g, ReduceOp::Max, x);
            let shifted = bin(&mut g, BinaryOp::Sub, x, max);
            let ex = un(&mut g, UnaryOp::Exp, shifted);
            let sum = reduce_last(&mut g, ReduceOp::Sum, ex);
            let sm_ref = bin(&mut g, BinaryOp::Div, ex, sum);

            let rms = add(&mut g, Op::RmsNorm { eps }, &[x, w]);
            let sq = bin(&mut g, BinaryOp::Mul, x, x);
            let ms = reduce_last(&mut g, ReduceOp::Mean, sq);
            let ms_eps = bin(&mut g, BinaryOp::Add, ms, e);
            let r = un(&mut g, UnaryOp::Rsqrt, ms_eps);
            let xr = bin(&mut g, BinaryOp::Mul, x, r);
            let rms_ref = bin(&mut g, BinaryOp::Mul, xr, w);

            let ln = add(&mut g, Op::LayerNorm { eps }, &[x, w, b]);
            let mean = reduce_last(&mut g, ReduceOp::Mean, x);
            let xc = bin(&mut g, BinaryOp::Sub, x, mean);
            let xc2 = bin(&mut g, BinaryOp::Mul, xc, xc);
            let var = reduce_last(&mut g, ReduceOp::Mean, xc2);
            let var_eps = bin(&mut g, BinaryOp::Add, var, e);
            let rv = un(&mut g, UnaryOp::Rsqrt, var_eps);
            let norm = bin(&mut g, BinaryOp::Mul, xc, rv);
            let scaled = bin(&mut g, BinaryOp::Mul, norm, w);
            let ln_ref = bin(&mut g, BinaryOp::Add, scaled, b);

            for (name, id) in [("sm", sm), ("sm_ref", sm_ref), ("rms", rms), ("rms_ref", rms_ref), ("ln", ln), ("ln_ref", ln_ref)] {
                g.output(name, id);
            }
            let feeds = [
                ("x", Tensor::f32(vec![rows, d], rand_f32(seed, rows * d))),
                ("w", Tensor::f32(vec![d], rand_f32(seed ^ 1, d))),
                ("b", Tensor::f32(vec![d], rand_f32(seed ^ 2, d))),
            ];
            let out = super::super::run(&g, &weights(&[]), &feed(&feeds)).unwrap();
            for name in ["sm", "rms", "ln"] {
                let want = out[&format!("{name}_ref")].as_f32().unwrap();
                assert_close(out[name].as_f32().unwrap(), want, 1e-5);
            }
        }
    }
}
