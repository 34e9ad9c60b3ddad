//! The attention template, for both `FlashAttention` and `FlashDecoding` kernels:
//! `[elementwise/layout/RoPE prologue on q, k, v or the mask] Attention [elementwise, permute or
//! reshape epilogue]`. A group computes one query row `(b, h, i)`: the query (times the scale)
//! goes to a Private array of D, then one pass over the visible keys — the causal and window
//! bounds limit the loop range — keeps the online softmax's running max and sum as carried
//! values and the Dv accumulator in a Private array; the normalized row is written through the
//! epilogue at the output index each element maps to ([`Body::forward`]). Operands are read
//! through [`Body::value`], so prologues are evaluated in place — except K and V read as they are
//! from dense f32 buffers (the KV cache, decode and prefill alike), whose rows are read as f32x4
//! vectors with the head dims unrolled. The block and split parameters are not used yet (one
//! query row per group is parallel enough for a CPU pool), and D and Dv must be constants.

use super::expr::{fold, fold_many, for_each, Body};
use super::gemv::LANES;
use super::index::broadcast;
use tessera_ir::kernel::BodyArg;
use tessera_ir::lir::{
    self, Axis, BinaryOp, BufRef, CmpOp, KernelBuilder, MemorySpace, ScalarType, SizeExpr, Special,
    Value,
};
use tessera_ir::{Dim, Op};

/// The constant size of an attention head dim, the length of a Private array.
fn head_dim(d: &Dim, what: &str) -> Result<u32, String> {
    d.as_const()
        .and_then(|d| u32::try_from(d).ok())
        .ok_or_else(|| format!("attention {what} head dim `{d}` that is not a constant"))
}

/// Writes the attention kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(b: &mut KernelBuilder, body: &Body, out: BufRef) -> Result<(), String> {
    let a = body
        .ops
        .iter()
        .position(|s| matches!(s.op, Op::Attention { .. }))
        .ok_or("an attention kernel without an attention")?;
    let Op::Attention {
        scale,
        causal,
        window,
    } = body.ops[a].op
    else {
        unreachable!("position found an attention");
    };
    let (q, k, v, mask) = match body.ops[a].args[..] {
        [q, k, v] => (q, k, v, None),
        [q, k, v, m] => (q, k, v, Some(m)),
        _ => return Err("attention without three or four operands".into()),
    };
    let dims = |arg: BodyArg| match body.ty(arg).shape.as_slice() {
        [b, h, l, d] => Ok([b, h, l, d]),
        _ => Err("attention operand of a rank other than 4".to_string()),
    };
    let ([batch, hq, s, d], [_, hkv, t, _], [.., dv]) = (dims(q)?, dims(k)?, dims(v)?);
    let (d, dv) = (head_dim(d, "q/k")?, head_dim(dv, "v")?);
    b.grid([
        body.symbols
            .numel_size(&[batch.clone(), hq.clone(), s.clone()])?,
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let group = b.special(Special::GroupId(Axis::X));
    let row = body
        .symbols
        .unravel(b, group, &[batch.clone(), hq.clone(), s.clone()])?;
    let [bi, h, i] = row[..] else {
        unreachable!("three dims unravel to three indices");
    };
    let (hq_v, hkv_v) = (body.symbols.dim(b, hq)?, body.symbols.dim(b, hkv)?);
    let heads_per_kv = b.div(hq_v, hkv_v);
    let kv_head = b.div(h, heads_per_kv);
    let (s_v, t_v) = (body.symbols.dim(b, s)?, body.symbols.dim(b, t)?);
    let (zero, one) = (b.const_i(0), b.const_i(1));
    // Keys lo..hi are visible; `newest` is this query's own position among the keys.
    let past = b.sub(t_v, s_v);
    let newest = b.add(past, i);
    let through_newest = b.add(newest, one);
    let hi = if causal {
        b.binary(BinaryOp::Min, through_newest, t_v)
    } else {
        t_v
    };
    let lo = match window {
        Some(w) => {
            let w = b.const_i(i64::try_from(w).map_err(|_| "attention window")?);
            let first = b.sub(through_newest, w);
            b.binary(BinaryOp::Max, first, zero)
        }
        None => zero,
    };

    let (d_v, dv_v) = (b.const_i(i64::from(d)), b.const_i(i64::from(dv)));
    let scale_v = b.const_f(f64::from(scale));
    let q_row = b.local("q", MemorySpace::Private, ScalarType::F32, d);
    for_each(b, zero, d_v, |b, c| {
        let x = body.value(b, q, &[bi, h, i, c], None)?;
        let x = b.mul(x, scale_v);
        b.store(q_row, c, x);
        Ok(())
    })?;
    let acc = b.local("acc", MemorySpace::Private, ScalarType::F32, dv);
    let zero_f = b.const_f(0.0);
    for_each(b, zero, dv_v, |b, c| {
        b.store(acc, c, zero_f);
        Ok(())
    })?;
    let scores_shape = [batch.clone(), hq.clone(), s.clone(), t.clone()];
    let neg_inf = b.const_f(f64::NEG_INFINITY);
    let init = [neg_inf, zero_f];
    // K and V read straight from dense f32 buffers (the KV cache) with whole vectors per row.
    let rows = match (body.f32_input(k), body.f32_input(v)) {
        (Some(kb), Some(vb)) if d % LANES == 0 && dv % LANES == 0 => {
            let origin = |b: &mut KernelBuilder, arg: BodyArg, j: Value| {
                body.symbols
                    .ravel(b, &[bi, kv_head, j, zero], &body.ty(arg).shape)
            };
            Some((kb, vb, origin))
        }
        _ => None,
    };
    let ml = fold_many(b, (lo, hi, 1), &init, |b, j, ml| {
        let [m, l] = ml[..] else {
            unreachable!("two carried values");
        };
        let mut score = match &rows {
            Some((kb, _, origin)) => {
                let base = origin(b, k, j)?;
                let zero4 = b.splat(zero_f, LANES);
                let sums = (0..d / LANES).try_fold(zero4, |sum, c| {
                    let at = b.const_i(i64::from(c * LANES));
                    let x = b.load(q_row, at, LANES);
                    let at = b.add(base, at);
                    let y = b.load(*kb, at, LANES);
                    Ok::<_, String>(b.fma(x, y, sum))
                })?;
                b.reduce_lanes(lir::ReduceOp::Add, sums)
            }
            None => fold(b, d_v, zero_f, |b, c, sum| {
                let x = b.load(q_row, c, 1);
                let y = body.value(b, k, &[bi, kv_head, j, c], None)?;
                Ok(b.fma(x, y, sum))
            })?,
        };
        if let Some(mask) = mask {
            let at = broadcast(b, &[bi, h, i, j], &scores_shape, &body.ty(mask).shape)?;
            let bias = body.value(b, mask, &at, None)?;
            score = b.add(score, bias);
        }
        // With every score so far −∞, subtract 0 instead of −∞ so that exp gives 0, not NaN.
        let m_new = b.binary(BinaryOp::Max, m, score);
        let empty = b.cmp(CmpOp::Eq, m_new, neg_inf);
        let m_safe = b.select(empty, zero_f, m_new);
        let shift = b.sub(m, m_safe);
        let alpha = b.unary(lir::UnaryOp::Exp, shift);
        let centered = b.sub(score, m_safe);
        let p = b.unary(lir::UnaryOp::Exp, centered);
        let l_scaled = b.mul(l, alpha);
        let l_new = b.add(l_scaled, p);
        match &rows {
            Some((_, vb, origin)) => {
                let base = origin(b, v, j)?;
                let (alpha4, p4) = (b.splat(alpha, LANES), b.splat(p, LANES));
                for c in 0..dv / LANES {
                    let at = b.const_i(i64::from(c * LANES));
                    let o = b.load(acc, at, LANES);
                    let o = b.mul(o, alpha4);
                    let from = b.add(base, at);
                    let x = b.load(*vb, from, LANES);
                    let o = b.fma(p4, x, o);
                    b.store(acc, at, o);
                }
            }
            None => for_each(b, zero, dv_v, |b, c| {
                let o = b.load(acc, c, 1);
                let o = b.mul(o, alpha);
                let x = body.value(b, v, &[bi, kv_head, j, c], None)?;
                let o = b.fma(p, x, o);
                b.store(acc, c, o);
                Ok(())
            })?,
        }
        Ok(vec![m_new, l_new])
    })?;
    // A row that sees no key, or only −∞ scores, has l = 0 and is zeros.
    let seen = b.cmp(CmpOp::Lt, zero_f, ml[1]);
    let out_shape = &body.ty(body.result()).shape;
    for_each(b, zero, dv_v, |b, c| {
        let o = b.load(acc, c, 1);
        let o = b.div(o, ml[1]);
        let o = b.select(seen, o, zero_f);
        b.store(acc, c, o);
        let idx = body.forward(b, a, &[bi, h, i, c])?;
        let hook = |b: &mut KernelBuilder, at: &[Value]| Ok(b.load(acc, at[3], 1));
        let x = body.value(b, body.result(), &idx, Some((a, &hook)))?;
        let e = body.symbols.ravel(b, &idx, out_shape)?;
        b.store(out, e, x);
        Ok(())
    })
}
