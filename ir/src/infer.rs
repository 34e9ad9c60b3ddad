//! Shape and dtype inference: the output type of each op from its input types, or a message that
//! says what does not fit. `Graph::add` wraps the message with the node it belongs to.

use crate::dim::shape_string;
use crate::{DType, Dim, Op, ReduceOp, Shape, TensorType};

type Res = Result<TensorType, String>;

fn arity(op: &Op, inputs: &[&TensorType], n: usize) -> Result<(), String> {
    if inputs.len() == n {
        Ok(())
    } else {
        Err(format!(
            "{} takes {n} inputs, got {}",
            op.name(),
            inputs.len()
        ))
    }
}

fn want_float(what: &str, t: &TensorType) -> Result<(), String> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(format!("{what} must be a float tensor, got {t}"))
    }
}

fn want_rank(what: &str, t: &TensorType, rank: usize) -> Result<(), String> {
    if t.rank() == rank {
        Ok(())
    } else {
        Err(format!("{what} must have rank {rank}, got {t}"))
    }
}

fn same_dim(what: &str, a: &Dim, b: &Dim) -> Result<(), String> {
    if a == b {
        Ok(())
    } else {
        Err(format!("{what}: {a} vs {b}"))
    }
}

fn is_one(d: &Dim) -> bool {
    d.as_const() == Some(1)
}

/// Numpy broadcasting of two shapes: axes align from the right; a dim of 1 stretches.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Shape, String> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = (i + a.len()).checked_sub(rank).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(rank).map(|j| &b[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y || is_one(y) => x.clone(),
            (Some(x), Some(y)) if is_one(x) => y.clone(),
            _ => {
                return Err(format!(
                    "shapes {} and {} do not broadcast",
                    shape_string(a),
                    shape_string(b)
                ))
            }
        });
    }
    Ok(out)
}

fn product(shape: &[Dim]) -> Dim {
    shape.iter().cloned().fold(Dim::c(1), |acc, d| acc * d)
}

/// Infers the output type of `op` applied to `inputs`.
pub fn infer(op: &Op, inputs: &[&TensorType]) -> Res {
    match op {
        Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. } => {
            Err(format!("{} has no inputs to infer from", op.name()))
        }
        Op::Unary(u) => {
            arity(op, inputs, 1)?;
            want_float(&format!("{u:?} input"), inputs[0])?;
            Ok(inputs[0].clone())
        }
        Op::Binary(b) => {
            arity(op, inputs, 2)?;
            let (x, y) = (inputs[0], inputs[1]);
            if x.dtype != y.dtype {
                return Err(format!(
                    "{b:?} needs equal dtypes, got {} and {}",
                    x.dtype, y.dtype
                ));
            }
            if x.dtype.is_quantized() || x.dtype == DType::Bool {
                return Err(format!("{b:?} is not defined on {}", x.dtype));
            }
            let shape = broadcast(&x.shape, &y.shape)?;
            let dtype = if b.is_comparison() {
                DType::Bool
            } else {
                x.dtype
            };
            Ok(TensorType::new(dtype, shape))
        }
        Op::Select => {
            arity(op, inputs, 3)?;
            let (c, x, y) = (inputs[0], inputs[1], inputs[2]);
            if c.dtype != DType::Bool {
                return Err(format!("select condition must be bool, got {c}"));
            }
            if x.dtype != y.dtype {
                return Err(format!(
                    "select branches differ in dtype: {} and {}",
                    x.dtype, y.dtype
                ));
            }
            let shape = broadcast(&broadcast(&c.shape, &x.shape)?, &y.shape)?;
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::Cast { to } => {
            arity(op, inputs, 1)?;
            if to.is_quantized() || inputs[0].dtype.is_quantized() {
                return Err(format!(
                    "cast between {} and {to}: quantization is Dequantize, not Cast",
                    inputs[0].dtype
                ));
            }
            Ok(TensorType::new(*to, inputs[0].shape.clone()))
        }
        Op::Reduce {
            op: r,
            axes,
            keep_dims,
        } => {
            arity(op, inputs, 1)?;
            let x = inputs[0];
            if x.dtype.is_quantized() || x.dtype == DType::Bool {
                return Err(format!("reduce is not defined on {}", x.dtype));
            }
            if *r == ReduceOp::Mean {
                want_float("mean input", x)?;
            }
            if axes.is_empty()
                || axes.windows(2).any(|w| w[0] >= w[1])
                || axes.iter().any(|&a| a >= x.rank())
            {
                return Err(format!(
                    "reduce axes {axes:?} must be sorted, unique and < rank {}",
                    x.rank()
                ));
            }
            let mut shape = Vec::new();
            for (i, d) in x.shape.iter().enumerate() {
                if !axes.contains(&i) {
                    shape.push(d.clone());
                } else if *keep_dims {
                    shape.push(Dim::c(1));
                }
            }
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::Reshape { shape } => {
            arity(op, inputs, 1)?;
            let x = inputs[0];
            if x.dtype.is_quantized() {
                return Err(format!("reshape of quantized {x} would split blocks"));
            }
            if product(&x.shape) != product(shape) {
                return Err(format!(
                    "reshape {} → {}: element counts differ",
                    shape_string(&x.shape),
                    shape_string(shape)
                ));
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Permute { perm } => {
            arity(op, inputs, 1)?;
            let x = inputs[0];
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.rank()).collect::<Vec<_>>() {
                return Err(format!(
                    "{perm:?} is not a permutation of rank {}",
                    x.rank()
                ));
            }
            if x.dtype.is_quantized() && perm.last() != Some(&(x.rank() - 1)) {
                return Err(format!("permuting the blocked last axis of quantized {x}"));
            }
            Ok(TensorType::new(
                x.dtype,
                perm.iter().map(|&p| x.shape[p].clone()).collect(),
            ))
        }
        Op::Expand { shape } => {
            arity(op, inputs, 1)?;
            let x = inputs[0];
            if shape.len() < x.rank() {
                return Err(format!(
                    "expand to {} drops axes of {x}",
                    shape_string(shape)
                ));
            }
            let offset = shape.len() - x.rank();
            for (i, d) in x.shape.iter().enumerate() {
                if d != &shape[offset + i] && !is_one(d) {
                    return Err(format!(
                        "expand axis {i}: {d} cannot stretch to {}",
                        shape[offset + i]
                    ));
                }
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Slice { axis, start, end } => {
            arity(op, inputs, 1)?;
            let x = inputs[0];
            if *axis >= x.rank() {
                return Err(format!("slice axis {axis} out of rank {}", x.rank()));
            }
            if let (Some(s), Some(e)) = (start.as_const(), end.as_const()) {
                if s > e || s < 0 {
                    return Err(format!("slice {s}..{e} is empty or negative"));
                }
                if let Some(n) = x.shape[*axis].as_const() {
                    if e > n {
                        return Err(format!("slice {s}..{e} exceeds axis size {n}"));
                    }
                }
            }
            let mut shape = x.shape.clone();
            shape[*axis] = end.clone() - start.clone();
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::Concat { axis } => {
            if inputs.is_empty() {
                return Err("concat needs at least one input".into());
            }
            let first = inputs[0];
            if *axis >= first.rank() {
                return Err(format!("concat axis {axis} out of rank {}", first.rank()));
            }
            let mut total = Dim::c(0);
            for (k, t) in inputs.iter().enumerate() {
                if t.dtype != first.dtype || t.rank() != first.rank() {
                    return Err(format!("concat input {k} is {t}, input 0 is {first}"));
                }
                for (i, (a, b)) in t.shape.iter().zip(&first.shape).enumerate() {
                    if i != *axis {
                        same_dim(&format!("concat input {k} axis {i}"), a, b)?;
                    }
                }
                total = total + t.shape[*axis].clone();
            }
            let mut shape = first.shape.clone();
            shape[*axis] = total;
            Ok(TensorType::new(first.dtype, shape))
        }
        Op::Gather => {
            arity(op, inputs, 2)?;
            let (table, ids) = (inputs[0], inputs[1]);
            if !ids.dtype.is_int() {
                return Err(format!("gather ids must be integers, got {ids}"));
            }
            if table.rank() < 1 {
                return Err(format!("gather table must have rank ≥ 1, got {table}"));
            }
            let mut shape = ids.shape.clone();
            shape.extend(table.shape[1..].iter().cloned());
            let dtype = if table.dtype.is_quantized() {
                DType::F32
            } else {
                table.dtype
            };
            Ok(TensorType::new(dtype, shape))
        }
        Op::MatMul { transpose_b } | Op::QuantMatMul { transpose_b } => {
            arity(op, inputs, 2)?;
            let (a, b) = (inputs[0], inputs[1]);
            want_float("matmul lhs", a)?;
            match op {
                Op::QuantMatMul { .. } if !b.dtype.is_quantized() => {
                    return Err(format!("quant_matmul weight must be q8_0 or q4_0, got {b}"))
                }
                Op::MatMul { .. } => want_float("matmul rhs", b)?,
                _ => {}
            }
            if a.rank() < 2 || b.rank() < 2 {
                return Err(format!("matmul needs rank ≥ 2, got {a} and {b}"));
            }
            let (m, k) = (&a.shape[a.rank() - 2], &a.shape[a.rank() - 1]);
            let (bk, n) = if *transpose_b {
                (&b.shape[b.rank() - 1], &b.shape[b.rank() - 2])
            } else {
                (&b.shape[b.rank() - 2], &b.shape[b.rank() - 1])
            };
            same_dim("matmul inner dims differ", k, bk)?;
            let mut shape = broadcast(&a.shape[..a.rank() - 2], &b.shape[..b.rank() - 2])?;
            shape.push(m.clone());
            shape.push(n.clone());
            Ok(TensorType::new(a.dtype, shape))
        }
        Op::Softmax => {
            arity(op, inputs, 1)?;
            want_float("softmax input", inputs[0])?;
            if inputs[0].rank() == 0 {
                return Err("softmax of a scalar".into());
            }
            Ok(inputs[0].clone())
        }
        Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
            let n = if matches!(op, Op::RmsNorm { .. }) {
                2
            } else {
                3
            };
            arity(op, inputs, n)?;
            let x = inputs[0];
            want_float("norm input", x)?;
            let d = x.shape.last().ok_or("norm of a scalar")?;
            for p in &inputs[1..] {
                want_float("norm parameter", p)?;
                want_rank("norm parameter", p, 1)?;
                same_dim(
                    "norm parameter length differs from the last axis",
                    &p.shape[0],
                    d,
                )?;
            }
            Ok(x.clone())
        }
        Op::Rope { .. } => {
            arity(op, inputs, 3)?;
            let (x, pos, freq) = (inputs[0], inputs[1], inputs[2]);
            want_float("rope input", x)?;
            want_rank("rope input [B, H, S, D]", x, 4)?;
            want_rank("rope positions [B, S]", pos, 2)?;
            want_rank("rope inv_freq", freq, 1)?;
            if pos.dtype != DType::I32 {
                return Err(format!("rope positions must be i32, got {pos}"));
            }
            want_float("rope inv_freq", freq)?;
            same_dim("rope batch", &pos.shape[0], &x.shape[0])?;
            same_dim("rope seq", &pos.shape[1], &x.shape[2])?;
            match (freq.shape[0].as_const(), x.shape[3].as_const()) {
                (Some(r), Some(d)) if r > 0 && 2 * r <= d => Ok(x.clone()),
                _ => Err(format!(
                    "rope inv_freq length {} must be in 1..=D/2 for D = {}",
                    freq.shape[0], x.shape[3]
                )),
            }
        }
        Op::Attention { window, .. } => {
            if inputs.len() != 4 {
                arity(op, inputs, 3)?;
            }
            let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
            for (what, t) in [("q", q), ("k", k), ("v", v)] {
                want_float(what, t)?;
                want_rank(&format!("attention {what} [B, H, S, D]"), t, 4)?;
            }
            same_dim("attention batch (q vs k)", &q.shape[0], &k.shape[0])?;
            same_dim("attention batch (k vs v)", &k.shape[0], &v.shape[0])?;
            same_dim("attention kv heads (k vs v)", &k.shape[1], &v.shape[1])?;
            same_dim("attention kv length (k vs v)", &k.shape[2], &v.shape[2])?;
            same_dim("attention head dim (q vs k)", &q.shape[3], &k.shape[3])?;
            match (q.shape[1].as_const(), k.shape[1].as_const()) {
                (Some(hq), Some(hkv)) if hkv > 0 && hq % hkv == 0 => {}
                _ => {
                    return Err(format!(
                        "query heads {} must be a multiple of kv heads {}",
                        q.shape[1], k.shape[1]
                    ))
                }
            }
            if *window == Some(0) {
                return Err("attention window must be ≥ 1".into());
            }
            if let Some(mask) = inputs.get(3) {
                want_float("attention mask", mask)?;
                let scores = [
                    q.shape[0].clone(),
                    q.shape[1].clone(),
                    q.shape[2].clone(),
                    k.shape[2].clone(),
                ];
                if broadcast(&mask.shape, &scores).as_deref() != Ok(&scores[..]) {
                    return Err(format!(
                        "attention mask {} does not broadcast to the scores {}",
                        shape_string(&mask.shape),
                        shape_string(&scores)
                    ));
                }
            }
            let shape = vec![
                q.shape[0].clone(),
                q.shape[1].clone(),
                q.shape[2].clone(),
                v.shape[3].clone(),
            ];
            Ok(TensorType::new(q.dtype, shape))
        }
        Op::Dequantize => {
            arity(op, inputs, 1)?;
            if !inputs[0].dtype.is_quantized() {
                return Err(format!(
                    "dequantize needs a q8_0 or q4_0 tensor, got {}",
                    inputs[0]
                ));
            }
            Ok(TensorType::new(DType::F32, inputs[0].shape.clone()))
        }
        Op::KvAppend => {
            arity(op, inputs, 2)?;
            let (cache, new) = (inputs[0], inputs[1]);
            want_rank("kv cache [B, H, P, D]", cache, 4)?;
            want_rank("kv_append new [B, H, S, D]", new, 4)?;
            if cache.dtype != new.dtype {
                return Err(format!(
                    "kv cache is {} but new entries are {}",
                    cache.dtype, new.dtype
                ));
            }
            for i in [0, 1, 3] {
                same_dim(
                    &format!("kv_append axis {i}"),
                    &cache.shape[i],
                    &new.shape[i],
                )?;
            }
            let mut shape = cache.shape.clone();
            shape[2] = cache.shape[2].clone() + new.shape[2].clone();
            Ok(TensorType::new(cache.dtype, shape))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Graph, RopeLayout};

    fn s(dims: &[&str]) -> Shape {
        dims.iter().map(|d| Dim::parse(d).unwrap()).collect()
    }

    #[test]
    fn broadcasting() {
        assert_eq!(
            broadcast(&s(&["batch", "1", "64"]), &s(&["seq", "1"])).unwrap(),
            s(&["batch", "seq", "64"])
        );
        assert!(broadcast(&s(&["3"]), &s(&["4"])).is_err());
        assert!(broadcast(&s(&["seq"]), &s(&["past"])).is_err());
    }

    #[test]
    fn matmul_error_names_node_and_shapes() {
        let mut g = Graph::new();
        g.set_scope("model.layers.0.mlp");
        let x = g.input("x", DType::F32, s(&["batch", "seq", "64"]));
        let w = g.weight("w", DType::F16, &[128, 32]);
        let err = g
            .add(Op::MatMul { transpose_b: true }, &[x, w])
            .unwrap_err()
            .to_string();
        assert!(err.contains("%2 matmul"), "{err}");
        assert!(err.contains("model.layers.0.mlp"), "{err}");
        assert!(err.contains("64 vs 32"), "{err}");
    }

    #[test]
    fn attention_and_cache_shapes() {
        let mut g = Graph::new();
        let q = g.input("q", DType::F32, s(&["b", "8", "seq", "16"]));
        let cache = g.input("k_cache", DType::F32, s(&["b", "2", "past", "16"]));
        let k = g.input("k", DType::F32, s(&["b", "2", "seq", "16"]));
        let kk = g.add(Op::KvAppend, &[cache, k]).unwrap();
        assert_eq!(g.ty(kk).shape, s(&["b", "2", "past + seq", "16"]));
        let a = g
            .add(
                Op::Attention {
                    scale: 0.25,
                    causal: true,
                    window: None,
                },
                &[q, kk, kk],
            )
            .unwrap();
        assert_eq!(g.ty(a).shape, s(&["b", "8", "seq", "16"]));
        let q3 = g.input("q3", DType::F32, s(&["b", "3", "seq", "16"]));
        let err = g
            .add(
                Op::Attention {
                    scale: 0.25,
                    causal: true,
                    window: None,
                },
                &[q3, kk, kk],
            )
            .unwrap_err();
        assert!(err.to_string().contains("multiple of kv heads"), "{err}");
        let attention = Op::Attention {
            scale: 0.25,
            causal: false,
            window: None,
        };
        for (name, mask) in [
            ("m0", s(&["seq", "past + seq"])),
            ("m1", s(&["b", "1", "seq", "past + seq"])),
            ("m2", s(&["b", "8", "1", "past + seq"])),
        ] {
            let m = g.input(name, DType::F32, mask);
            let a = g.add(attention.clone(), &[q, kk, kk, m]).unwrap();
            assert_eq!(g.ty(a).shape, s(&["b", "8", "seq", "16"]));
        }
        let wide = g.input("wide", DType::F32, s(&["2", "b", "8", "seq", "past + seq"]));
        let err = g.add(attention.clone(), &[q, kk, kk, wide]).unwrap_err();
        assert!(err.to_string().contains("does not broadcast"), "{err}");
        let short = g.input("short", DType::F32, s(&["seq", "seq"]));
        let err = g.add(attention.clone(), &[q, kk, kk, short]).unwrap_err();
        assert!(err.to_string().contains("does not broadcast"), "{err}");
        let flags = g.input("flags", DType::Bool, s(&["seq", "past + seq"]));
        let err = g.add(attention.clone(), &[q, kk, kk, flags]).unwrap_err();
        assert!(err.to_string().contains("float"), "{err}");
        let err = g.add(attention, &[q, kk]).unwrap_err();
        assert!(err.to_string().contains("takes 3 inputs"), "{err}");
    }

    #[test]
    fn reshape_checks_symbolic_counts() {
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, s(&["b", "seq", "64"]));
        assert!(g
            .add(
                Op::Reshape {
                    shape: s(&["b", "seq", "4", "16"])
                },
                &[x]
            )
            .is_ok());
        assert!(g
            .add(
                Op::Reshape {
                    shape: s(&["b*seq", "64"])
                },
                &[x]
            )
            .is_ok());
        assert!(g
            .add(
                Op::Reshape {
                    shape: s(&["b", "seq", "4", "15"])
                },
                &[x]
            )
            .is_err());
    }

    #[test]
    fn rope_and_slice_types() {
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, s(&["b", "4", "seq", "16"]));
        let p = g.input("pos", DType::I32, s(&["b", "seq"]));
        let f = g.weight("inv_freq", DType::F32, &[8]);
        assert!(g
            .add(
                Op::Rope {
                    layout: RopeLayout::Half
                },
                &[x, p, f]
            )
            .is_ok());
        let f9 = g.weight("inv_freq9", DType::F32, &[9]);
        assert!(g
            .add(
                Op::Rope {
                    layout: RopeLayout::Half
                },
                &[x, p, f9]
            )
            .is_err());
        let last = Op::Slice {
            axis: 2,
            start: Dim::sym("seq") - Dim::c(1),
            end: Dim::sym("seq"),
        };
        let y = g.add(last, &[x]).unwrap();
        assert_eq!(g.ty(y).shape, s(&["b", "4", "1", "16"]));
    }
}
