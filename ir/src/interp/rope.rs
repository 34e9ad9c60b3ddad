//! Rotary position embedding. Angles are `position · inv_freq[i]` in f32 (as HF computes them);
//! the layout decides which dims form the rotated pairs.

use super::Tensor;
use crate::RopeLayout;

/// Rotates the first R = 2·len(inv_freq) dims of each `x [B, H, S, D]` row by the angles of its
/// position `positions [B, S]`: pair (a, b) becomes (a·cos − b·sin, b·cos + a·sin), where pair i
/// is (i, i + R/2) for [`RopeLayout::Half`] and (2i, 2i + 1) for [`RopeLayout::Interleaved`].
/// Dims from R on pass through.
pub(super) fn rope(
    x: &Tensor,
    positions: &Tensor,
    inv_freq: &Tensor,
    layout: RopeLayout,
) -> Result<Tensor, String> {
    let xv = x.floats("rope input")?;
    let &[b, h, s, d] = x.shape.as_slice() else {
        return Err(format!(
            "rope input must be [B, H, S, D], got {}",
            x.describe()
        ));
    };
    let pos = positions
        .as_i32()
        .filter(|_| positions.shape == [b, s])
        .ok_or_else(|| {
            format!(
                "rope positions must be int [{b}, {s}], got {}",
                positions.describe()
            )
        })?;
    let freq = inv_freq.floats("rope inv_freq")?;
    let half = freq.len();
    if inv_freq.shape.len() != 1 || half == 0 || 2 * half > d {
        return Err(format!(
            "rope inv_freq {} must have 1..={} entries",
            inv_freq.describe(),
            d / 2
        ));
    }
    // cos/sin for every (batch, position) row and frequency, shared by all heads.
    let mut cos = Vec::with_capacity(pos.len() * half);
    let mut sin = Vec::with_capacity(pos.len() * half);
    for &p in pos {
        for &f in freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let mut out = xv.to_vec();
    for (r, row) in out.chunks_exact_mut(d).enumerate() {
        // Row r is (batch, head, position) = (r / (H·S), _, r % S).
        let t = (r / (h * s) * s + r % s) * half;
        for i in 0..half {
            let (lo, hi) = match layout {
                RopeLayout::Half => (i, i + half),
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            };
            let (a, bb) = (row[lo], row[hi]);
            row[lo] = a * cos[t + i] - bb * sin[t + i];
            row[hi] = bb * cos[t + i] + a * sin[t + i];
        }
    }
    Ok(Tensor::f32(x.shape.clone(), out))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::{BinaryOp, DType, Graph, NodeId, Op, UnaryOp};
    use proptest::prelude::*;
    use std::f32::consts::{FRAC_PI_2, PI};

    #[test]
    fn rotations_by_hand() {
        // D = 6, R = 4: inv_freq [π/2, π] at position 1 → angles π/2 and π; dims 4, 5 pass.
        let x = Tensor::f32(vec![1, 1, 1, 6], vec![1., 2., 3., 4., 5., 6.]);
        let pos = Tensor::i32(vec![1, 1], vec![1]);
        let freq = Tensor::f32(vec![2], vec![FRAC_PI_2, PI]);
        // Half pairs (0, 2) by π/2 and (1, 3) by π.
        let half = rope(&x, &pos, &freq, RopeLayout::Half).unwrap();
        assert_close(half.as_f32().unwrap(), &[-3., -2., 1., -4., 5., 6.], 1e-6);
        // Interleaved pairs (0, 1) by π/2 and (2, 3) by π.
        let inter = rope(&x, &pos, &freq, RopeLayout::Interleaved).unwrap();
        assert_close(inter.as_f32().unwrap(), &[-2., 1., -3., -4., 5., 6.], 1e-6);
        // Position 0 is the identity.
        let zero = Tensor::i32(vec![1, 1], vec![0]);
        assert_eq!(rope(&x, &zero, &freq, RopeLayout::Half).unwrap(), x);
        let wide = Tensor::f32(vec![4], vec![1.0; 4]);
        assert!(rope(&x, &pos, &wide, RopeLayout::Half).is_err());
        assert!(rope(
            &x,
            &Tensor::i32(vec![1, 2], vec![0, 1]),
            &freq,
            RopeLayout::Half
        )
        .is_err());
    }

    /// RoPE written with Cast, Reshape, Cos/Sin, Slice, Binary and Concat.
    fn decomposed(
        g: &mut Graph,
        x: NodeId,
        pos: NodeId,
        freq: NodeId,
        shape: [usize; 4],
        r: usize,
        layout: RopeLayout,
    ) -> NodeId {
        let [b, h, s, d] = shape;
        let posf = add(g, Op::Cast { to: DType::F32 }, &[pos]);
        let (angle_shape, pair_shape) = match layout {
            RopeLayout::Half => (dims(&[b, 1, s, r]), None),
            RopeLayout::Interleaved => (dims(&[b, 1, s, r, 1]), Some(dims(&[b, h, s, r, 2]))),
        };
        let posr = add(
            g,
            Op::Reshape {
                shape: dims(&[b, 1, s, 1]),
            },
            &[posf],
        );
        let angle = bin(g, BinaryOp::Mul, posr, freq);
        let angle = add(g, Op::Reshape { shape: angle_shape }, &[angle]);
        let (c, sn) = (un(g, UnaryOp::Cos, angle), un(g, UnaryOp::Sin, angle));
        let slice = |g: &mut Graph, t, axis, a: usize, e: usize| {
            add(
                g,
                Op::Slice {
                    axis,
                    start: a.into(),
                    end: e.into(),
                },
                &[t],
            )
        };
        let rest = slice(g, x, 3, 2 * r, d);
        let rotated = slice(g, x, 3, 0, 2 * r);
        let (src, axis) = match &pair_shape {
            None => (rotated, 3),
            Some(p) => (add(g, Op::Reshape { shape: p.clone() }, &[rotated]), 4),
        };
        let (x1, x2) = match layout {
            RopeLayout::Half => (slice(g, src, axis, 0, r), slice(g, src, axis, r, 2 * r)),
            RopeLayout::Interleaved => (slice(g, src, axis, 0, 1), slice(g, src, axis, 1, 2)),
        };
        let (x1c, x2s) = (bin(g, BinaryOp::Mul, x1, c), bin(g, BinaryOp::Mul, x2, sn));
        let (x2c, x1s) = (bin(g, BinaryOp::Mul, x2, c), bin(g, BinaryOp::Mul, x1, sn));
        let o1 = bin(g, BinaryOp::Sub, x1c, x2s);
        let o2 = bin(g, BinaryOp::Add, x2c, x1s);
        let mut pair = add(g, Op::Concat { axis }, &[o1, o2]);
        if pair_shape.is_some() {
            pair = add(
                g,
                Op::Reshape {
                    shape: dims(&[b, h, s, 2 * r]),
                },
                &[pair],
            );
        }
        add(g, Op::Concat { axis: 3 }, &[pair, rest])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Both layouts, full and partial rotation, against the primitive decomposition.
        #[test]
        fn matches_decomposition(
            b in 1usize..3, h in 1usize..3, s in 1usize..4, r in 1usize..4, extra in 0usize..3,
            interleaved in any::<bool>(), seed in any::<u64>()
        ) {
            let layout = if interleaved { RopeLayout::Interleaved } else { RopeLayout::Half };
            let d = 2 * r + extra;
            let mut g = Graph::new();
            let x = g.input("x", DType::F32, dims(&[b, h, s, d]));
            let pos = g.input("pos", DType::I32, dims(&[b, s]));
            let freq = g.input("inv_freq", DType::F32, dims(&[r]));
            let fused = add(&mut g, Op::Rope { layout }, &[x, pos, freq]);
            let reference = decomposed(&mut g, x, pos, freq, [b, h, s, d], r, layout);
            g.output("fused", fused);
            g.output("reference", reference);
            let positions: Vec<i32> = (0..b * s).map(|i| (i as i32 * 7 + seed as i32 % 5) % 50).collect();
            let freqs: Vec<f32> = (0..r).map(|i| 10000f32.powf(-((2 * i) as f32) / (2 * r) as f32)).collect();
            let feeds = [
                ("x", Tensor::f32(vec![b, h, s, d], rand_f32(seed, b * h * s * d))),
                ("pos", Tensor::i32(vec![b, s], positions)),
                ("inv_freq", Tensor::f32(vec![r], freqs)),
            ];
            let out = super::super::run(&g, &weights(&[]), &feed(&feeds)).unwrap();
            assert_close(out["fused"].as_f32().unwrap(), out["reference"].as_f32().unwrap(), 1e-6);
        }
    }
}
