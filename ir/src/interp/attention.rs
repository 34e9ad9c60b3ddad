//! Scaled dot-product attention with grouped KV heads, an optional additive mask, causal and
//! sliding-window masks, and queries that are the newest rows of a longer KV sequence (decode and
//! chunked prefill).

use super::elementwise::nan_max;
use super::layout::broadcast_strides;
use super::matmul::dot;
use super::Tensor;

/// The `[B, H, L, D]` dims of an attention operand.
fn dims4(t: &Tensor, what: &str) -> Result<[usize; 4], String> {
    <[usize; 4]>::try_from(t.shape.as_slice()).map_err(|_| {
        format!(
            "attention {what} must be [B, H, L, D], got {}",
            t.describe()
        )
    })
}

/// softmax(scale·q·kᵀ + mask)·v per head, `q [B, Hq, S, D]`, `k [B, Hkv, T, D]`,
/// `v [B, Hkv, T, Dv]`, `mask` (if any) broadcasting to the scores `[B, Hq, S, T]`.
/// Query head h reads KV head h / (Hq / Hkv). Query i is position T − S + i of the keys: with
/// `causal` it sees keys j ≤ T − S + i, with `window = Some(w)` only keys j > T − S + i − w.
/// A row that sees no key at all, or whose visible scores are all −∞, is zeros. Everything is f32;
/// probabilities are normalized before they weight `v`, as in the unfused `softmax(…)·v`.
pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f32,
    causal: bool,
    window: Option<usize>,
) -> Result<Tensor, String> {
    let (qv, kv, vv) = (q.floats("q")?, k.floats("k")?, v.floats("v")?);
    let [b, hq, s, d] = dims4(q, "q")?;
    let [bk, hkv, t, dk] = dims4(k, "k")?;
    let [bv, hv, tv, dv] = dims4(v, "v")?;
    if b != bk || b != bv || hkv != hv || t != tv || d != dk {
        return Err(format!(
            "attention operands do not fit: q {}, k {}, v {}",
            q.describe(),
            k.describe(),
            v.describe()
        ));
    }
    if hkv == 0 || hq % hkv != 0 {
        return Err(format!("{hq} query heads do not group onto {hkv} kv heads"));
    }
    let group = hq / hkv;
    // The mask's values and its strides over the scores [B, Hq, S, T] (0 along broadcast axes).
    let mask = match mask {
        Some(m) => {
            let strides = broadcast_strides(&m.shape, &[b, hq, s, t])
                .map_err(|e| format!("attention mask: {e}"))?;
            Some((m.floats("mask")?, strides))
        }
        None => None,
    };
    let mut out = vec![0.0f32; b * hq * s * dv];
    let mut probs = vec![0.0f32; t];
    for bi in 0..b {
        for h in 0..hq {
            let kv_head = bi * hkv + h / group;
            let keys = &kv[kv_head * t * d..(kv_head + 1) * t * d];
            let values = &vv[kv_head * t * dv..(kv_head + 1) * t * dv];
            for i in 0..s {
                let row = (bi * hq + h) * s + i;
                let qi = &qv[row * d..(row + 1) * d];
                let oi = &mut out[row * dv..(row + 1) * dv];
                // Visible keys lo..=hi; `newest` is this query's own position among the keys.
                let newest = (t + i) as i64 - s as i64;
                let hi = if causal {
                    newest.min(t as i64 - 1)
                } else {
                    t as i64 - 1
                };
                let lo = window.map_or(0, |w| (newest - w as i64 + 1).max(0));
                if hi < lo {
                    continue;
                }
                let (lo, hi) = (lo as usize, hi as usize);
                let p = &mut probs[lo..=hi];
                for (j, pj) in (lo..=hi).zip(p.iter_mut()) {
                    *pj = scale * dot(qi, &keys[j * d..(j + 1) * d]);
                }
                if let Some((m, st)) = &mask {
                    let base = bi * st[0] + h * st[1] + i * st[2];
                    for (j, pj) in (lo..=hi).zip(p.iter_mut()) {
                        *pj += m[base + j * st[3]];
                    }
                }
                let max = p.iter().copied().fold(f32::NEG_INFINITY, nan_max);
                if max == f32::NEG_INFINITY {
                    continue;
                }
                let mut sum = 0.0;
                for pj in p.iter_mut() {
                    *pj = (*pj - max).exp();
                    sum += *pj;
                }
                for (j, &pj) in (lo..=hi).zip(p.iter()) {
                    let w = pj / sum;
                    let vj = &values[j * dv..(j + 1) * dv];
                    oi.iter_mut().zip(vj).for_each(|(o, x)| *o += w * x);
                }
            }
        }
    }
    Ok(Tensor::f32(vec![b, hq, s, dv], out))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::{DType, Dim, Graph, NodeId, Op};
    use proptest::prelude::*;

    fn t4(shape: [usize; 4], v: Vec<f32>) -> Tensor {
        Tensor::f32(shape.to_vec(), v)
    }

    #[test]
    fn weights_by_hand() {
        // Scores [0, ln 3] → probabilities [1/4, 3/4] → 1/4·4 + 3/4·8 = 7.
        let q = t4([1, 1, 1, 1], vec![1.0]);
        let k = t4([1, 1, 2, 1], vec![0.0, 3f32.ln()]);
        let v = t4([1, 1, 2, 1], vec![4.0, 8.0]);
        let out = attention(&q, &k, &v, None, 1.0, true, None).unwrap();
        assert_close(out.as_f32().unwrap(), &[7.0], 1e-6);
        // A window of 1 sees only the newest key.
        let out = attention(&q, &k, &v, None, 1.0, true, Some(1)).unwrap();
        assert_close(out.as_f32().unwrap(), &[8.0], 1e-6);
        // Scale 0 averages uniformly.
        let out = attention(&q, &k, &v, None, 0.0, false, None).unwrap();
        assert_close(out.as_f32().unwrap(), &[6.0], 1e-6);
    }

    #[test]
    fn causal_rows_and_fully_masked_rows() {
        // T = 1 < S = 2: query 0 sits at position −1 and sees nothing (zeros); query 1 sees key 0.
        let q = t4([1, 1, 2, 2], vec![1.0, 0.0, 0.0, 1.0]);
        let k = t4([1, 1, 1, 2], vec![1.0, 1.0]);
        let v = t4([1, 1, 1, 3], vec![1.0, 2.0, 3.0]);
        let out = attention(&q, &k, &v, None, 1.0, true, None).unwrap();
        assert_eq!(out.shape, vec![1, 1, 2, 3]);
        assert_eq!(out.as_f32(), Some(&[0.0, 0.0, 0.0, 1.0, 2.0, 3.0][..]));
        let bad_heads = t4([1, 3, 1, 2], vec![0.0; 6]);
        let k2 = t4([1, 2, 1, 2], vec![0.0; 4]);
        assert!(attention(&bad_heads, &k2, &k2, None, 1.0, true, None).is_err());
        assert!(attention(&q, &v, &v, None, 1.0, true, None).is_err());
    }

    /// Random q [b, hq, s, d], k [b, hkv, t, d], v [b, hkv, t, dv].
    fn random_qkv(dims: [usize; 6], seed: u64) -> [Tensor; 3] {
        let [b, hq, hkv, s, t, d] = dims;
        [
            t4([b, hq, s, d], rand_f32(seed, b * hq * s * d)),
            t4([b, hkv, t, d], rand_f32(seed ^ 1, b * hkv * t * d)),
            t4([b, hkv, t, 3], rand_f32(seed ^ 2, b * hkv * t * 3)),
        ]
    }

    #[test]
    fn zero_mask_changes_nothing() {
        for (dims, mask_shape) in [
            ([1, 2, 1, 3, 5, 4], vec![3, 5]),
            ([2, 4, 2, 2, 2, 3], vec![2, 1, 2, 2]),
            ([2, 2, 2, 1, 4, 2], vec![2, 2, 1, 4]),
            ([1, 1, 1, 2, 3, 2], vec![]),
        ] {
            let [q, k, v] = random_qkv(dims, 7);
            let n = mask_shape.iter().product();
            let zeros = Tensor::f32(mask_shape, vec![0.0; n]);
            for (causal, window) in [(false, None), (true, None), (true, Some(2))] {
                let plain = attention(&q, &k, &v, None, 0.5, causal, window).unwrap();
                let masked = attention(&q, &k, &v, Some(&zeros), 0.5, causal, window).unwrap();
                assert_eq!(plain, masked);
            }
        }
    }

    #[test]
    fn infinite_upper_triangle_is_causal() {
        // S = 3 queries at positions 2..5 of T = 5 keys: −∞ where j > T − S + i.
        let (s, t) = (3, 5);
        let [q, k, v] = random_qkv([2, 4, 2, s, t, 3], 11);
        let tri: Vec<f32> = (0..s)
            .flat_map(|i| {
                (0..t).map(move |j| {
                    if j > t - s + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::f32(vec![s, t], tri);
        let causal = attention(&q, &k, &v, None, 0.5, true, None).unwrap();
        let masked = attention(&q, &k, &v, Some(&mask), 0.5, false, None).unwrap();
        assert_close(masked.as_f32().unwrap(), causal.as_f32().unwrap(), 1e-6);
        // A row the mask hides entirely is zeros, like a row no key is visible to.
        let hidden = Tensor::f32(vec![1, t], vec![f32::NEG_INFINITY; t]);
        let out = attention(&q, &k, &v, Some(&hidden), 0.5, false, None).unwrap();
        assert!(out.as_f32().unwrap().iter().all(|&x| x == 0.0));
        // A mask that does not broadcast to the scores is an error.
        let wrong = Tensor::f32(vec![s, t + 1], vec![0.0; s * (t + 1)]);
        assert!(attention(&q, &k, &v, Some(&wrong), 0.5, false, None).is_err());
    }

    /// KV of shape [b, hkv, t, dd] expanded to [b, hkv·group, t, dd] (each KV head repeated for
    /// its group of query heads) with Reshape/Expand/Reshape.
    fn repeat_heads(
        g: &mut Graph,
        x: NodeId,
        b: usize,
        hkv: usize,
        group: usize,
        dd: usize,
    ) -> NodeId {
        let t = Dim::sym("past") + Dim::sym("seq");
        let five = vec![b.into(), hkv.into(), Dim::c(1), t.clone(), dd.into()];
        let x = add(g, Op::Reshape { shape: five }, &[x]);
        let wide = vec![b.into(), hkv.into(), group.into(), t.clone(), dd.into()];
        let x = add(g, Op::Expand { shape: wide }, &[x]);
        add(
            g,
            Op::Reshape {
                shape: vec![b.into(), (hkv * group).into(), t, dd.into()],
            },
            &[x],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Attention over a KV cache (past ≥ 0 via KvAppend), with GQA, an optional additive mask
        /// ([S, T], [B, 1, S, T] or [B, Hq, S, T]), causal and sliding-window masks, against
        /// softmax(select(visible, scale·q·kᵀ + mask, −∞))·v built from primitives.
        #[test]
        fn matches_decomposition(
            b in 1usize..3, hkv in 1usize..3, group in 1usize..4, s in 1usize..5, past in 0usize..5,
            d in 1usize..5, dv in 1usize..4, causal in any::<bool>(), window in prop::option::of(1usize..5),
            additive in 0usize..4, seed in any::<u64>()
        ) {
            let hq = hkv * group;
            let t = past + s;
            let scale = 1.0 / (d as f32).sqrt();
            let seq = Dim::sym("seq");
            let past_d = Dim::sym("past");
            let mut g = Graph::new();
            let q = g.input("q", DType::F32, vec![b.into(), hq.into(), seq.clone(), d.into()]);
            let mut kv = Vec::new();
            for (name, dd) in [("k", d), ("v", dv)] {
                let cache = g.input(&format!("{name}_cache"), DType::F32, vec![b.into(), hkv.into(), past_d.clone(), dd.into()]);
                let new = g.input(&format!("{name}_new"), DType::F32, vec![b.into(), hkv.into(), seq.clone(), dd.into()]);
                kv.push(add(&mut g, Op::KvAppend, &[cache, new]));
            }
            let mask = g.input("mask", DType::Bool, vec![seq.clone(), past_d.clone() + seq.clone()]);
            let total = past_d.clone() + seq.clone();
            // The additive mask's shape (numeric and symbolic), if any.
            let additive = match additive {
                1 => Some((vec![s, t], vec![seq.clone(), total])),
                2 => Some((vec![b, 1, s, t], vec![b.into(), Dim::c(1), seq.clone(), total])),
                3 => Some((vec![b, hq, s, t], vec![b.into(), hq.into(), seq.clone(), total])),
                _ => None,
            };
            let bias = additive.as_ref().map(|(_, dims)| g.input("bias", DType::F32, dims.clone()));
            let mut args = vec![q, kv[0], kv[1]];
            args.extend(bias);
            let fused = add(&mut g, Op::Attention { scale, causal, window }, &args);

            let k = repeat_heads(&mut g, kv[0], b, hkv, group, d);
            let v = repeat_heads(&mut g, kv[1], b, hkv, group, dv);
            let scores = add(&mut g, Op::MatMul { transpose_b: true }, &[q, k]);
            let sc = g.constant(f64::from(scale), DType::F32);
            let mut scaled = bin(&mut g, crate::BinaryOp::Mul, scores, sc);
            if let Some(bias) = bias {
                scaled = bin(&mut g, crate::BinaryOp::Add, scaled, bias);
            }
            let neg_inf = g.constant(f64::NEG_INFINITY, DType::F32);
            let masked = add(&mut g, Op::Select, &[mask, scaled, neg_inf]);
            let p = add(&mut g, Op::Softmax, &[masked]);
            let reference = add(&mut g, Op::MatMul { transpose_b: false }, &[p, v]);
            g.output("fused", fused);
            g.output("reference", reference);

            // Query i is key position past + i.
            let visible = |i: usize, j: usize| {
                (!causal || j <= past + i) && window.is_none_or(|w| j + w > past + i)
            };
            let mask_v: Vec<bool> = (0..s).flat_map(|i| (0..t).map(move |j| visible(i, j))).collect();
            let mut feeds = vec![
                ("q", t4([b, hq, s, d], rand_f32(seed, b * hq * s * d))),
                ("k_cache", t4([b, hkv, past, d], rand_f32(seed ^ 1, b * hkv * past * d))),
                ("k_new", t4([b, hkv, s, d], rand_f32(seed ^ 2, b * hkv * s * d))),
                ("v_cache", t4([b, hkv, past, dv], rand_f32(seed ^ 3, b * hkv * past * dv))),
                ("v_new", t4([b, hkv, s, dv], rand_f32(seed ^ 4, b * hkv * s * dv))),
                ("mask", Tensor::bool(vec![s, t], mask_v)),
            ];
            if let Some((shape, _)) = additive {
                let n = shape.iter().product();
                feeds.push(("bias", Tensor::f32(shape, rand_f32(seed ^ 5, n))));
            }
            let out = super::super::run(&g, &weights(&[]), &feed(&feeds)).unwrap();
            prop_assert_eq!(&out["fused"].shape, &vec![b, hq, s, dv]);
            assert_close(out["fused"].as_f32().unwrap(), out["reference"].as_f32().unwrap(), 1e-5);
        }
    }
}
