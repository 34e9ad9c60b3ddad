//! The attention template, for both `FlashAttention` and `FlashDecoding` kernels:
//! `[elementwise/layout/RoPE prologue on q, k, v or the mask] Attention [elementwise, permute or
//! reshape epilogue]`. A group computes query row `i` of batch `b` for all the query heads that
//! share one KV head (grouped-query attention: each K and V row is read from memory once for the
//! group's `Hq/Hkv` heads, then from L1). The queries (times the scale) go to a Private array,
//! then the visible keys — the causal and window bounds limit the range — are walked in blocks of
//! [`BLOCK_K`] with FlashAttention's online softmax per head: a block's scores go to a Private
//! array, the running max moves once per block (one rescale of the Dv accumulator and one `exp`
//! per block instead of per key), and the block's probabilities accumulate its V rows. The
//! normalized rows are written through the epilogue at the output index each element maps to
//! ([`Body::forward`]). Operands are read through [`Body::value`], so prologues are evaluated in
//! place — except K and V read as they are from dense f32 buffers (the KV cache, decode and
//! prefill alike), whose rows are read as vectors of the target's width (`Body::lanes`) with the
//! head dims unrolled and the V accumulation carried in registers [`V_CHUNK`] vectors at a time.
//!
//! The kernel kind's `block_q` and `splits` are not used: a CPU pool is kept busy by the
//! `B·Hkv·S` groups in prefill, and decode's `B·Hkv` groups cover a 2-core host; splitting the KV
//! range (FlashDecoding's log-sum-exp merge) needs a second kernel the runtime does not run yet.
//! D, Dv and the head counts must be constants.

use super::expr::{fold, fold_many, fold_range, for_each, load_f32, Body};
use super::index::broadcast;
use tessera_ir::kernel::BodyArg;
use tessera_ir::lir::{
    self, Axis, BinaryOp, BufRef, CmpOp, KernelBuilder, MemorySpace, ScalarType, SizeExpr, Special,
    Value,
};
use tessera_ir::{Dim, Op};

/// Keys per block of the online softmax.
const BLOCK_K: u32 = 16;

/// Accumulator vectors of a V row carried together through a block's keys (with the key's
/// probability splat and a V load, 6 registers of the 16 a 128-bit x86 core has).
const V_CHUNK: u32 = 4;

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
    let lanes = body.lanes;
    let heads = match (hq.as_const(), hkv.as_const()) {
        (Some(hq), Some(hkv)) if hkv > 0 && hq % hkv == 0 => u32::try_from(hq / hkv)
            .map_err(|_| "attention with too many query heads per KV head")?,
        _ => {
            return Err(format!(
                "attention with {hq} query heads over {hkv} KV heads"
            ))
        }
    };
    b.grid([
        body.symbols
            .numel_size(&[batch.clone(), hkv.clone(), s.clone()])?,
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let group = b.special(Special::GroupId(Axis::X));
    let row = body
        .symbols
        .unravel(b, group, &[batch.clone(), hkv.clone(), s.clone()])?;
    let [bi, kv_head, i] = row[..] else {
        unreachable!("three dims unravel to three indices");
    };
    let heads_v = b.const_i(i64::from(heads));
    let first_head = b.mul(kv_head, heads_v);
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
    let zero_f = b.const_f(0.0);
    let neg_inf = b.const_f(f64::NEG_INFINITY);
    let q_rows = b.local("q", MemorySpace::Private, ScalarType::F32, heads * d);
    let acc = b.local("acc", MemorySpace::Private, ScalarType::F32, heads * dv);
    let max = b.local("max", MemorySpace::Private, ScalarType::F32, heads);
    let sum = b.local("sum", MemorySpace::Private, ScalarType::F32, heads);
    let scores = b.local("scores", MemorySpace::Private, ScalarType::F32, BLOCK_K);
    for_each(b, zero, heads_v, |b, g| {
        let h = b.add(first_head, g);
        let q_base = b.mul(g, d_v);
        for_each(b, zero, d_v, |b, c| {
            let x = body.value(b, q, &[bi, h, i, c], None)?;
            let x = b.mul(x, scale_v);
            let at = b.add(q_base, c);
            b.store(q_rows, at, x);
            Ok(())
        })?;
        let acc_base = b.mul(g, dv_v);
        for_each(b, zero, dv_v, |b, c| {
            let at = b.add(acc_base, c);
            b.store(acc, at, zero_f);
            Ok(())
        })?;
        b.store(max, g, neg_inf);
        b.store(sum, g, zero_f);
        Ok(())
    })?;
    // K and V read straight from dense f32 buffers (the KV cache) with whole vectors per row.
    let rows = match (body.float_input(k), body.float_input(v)) {
        (Some(kb), Some(vb)) if d % lanes == 0 && dv % lanes == 0 => Some((kb, vb)),
        _ => None,
    };
    let origin = |b: &mut KernelBuilder, arg: BodyArg, j: Value| {
        body.symbols
            .ravel(b, &[bi, kv_head, j, zero], &body.ty(arg).shape)
    };
    let scores_shape = [batch.clone(), hq.clone(), s.clone(), t.clone()];
    let block_v = b.const_i(i64::from(BLOCK_K));
    let mut failure = Ok(());
    b.for_range(lo, hi, BLOCK_K, &[], |b, j0, _| {
        let block_end = b.add(j0, block_v);
        let block_end = b.binary(BinaryOp::Min, block_end, hi);
        failure = for_each(b, zero, heads_v, |b, g| {
            let h = b.add(first_head, g);
            let q_base = b.mul(g, d_v);
            // The block's scores (into `scores`) and their max.
            let block_max = fold_range(b, (j0, block_end, 1), neg_inf, |b, j, m| {
                let mut score = match rows {
                    Some((kb, _)) => {
                        let base = origin(b, k, j)?;
                        let zero4 = b.splat(zero_f, lanes);
                        let sums = (0..d / lanes).try_fold(zero4, |sum, c| {
                            let at = b.const_i(i64::from(c * lanes));
                            let q_at = b.add(q_base, at);
                            let x = b.load(q_rows, q_at, lanes);
                            let at = b.add(base, at);
                            let y = load_f32(b, kb, at, lanes);
                            Ok::<_, String>(b.fma(x, y, sum))
                        })?;
                        b.reduce_lanes(lir::ReduceOp::Add, sums)
                    }
                    None => fold(b, d_v, zero_f, |b, c, sum| {
                        let q_at = b.add(q_base, c);
                        let x = b.load(q_rows, q_at, 1);
                        let y = body.value(b, k, &[bi, kv_head, j, c], None)?;
                        Ok(b.fma(x, y, sum))
                    })?,
                };
                if let Some(mask) = mask {
                    let at = broadcast(b, &[bi, h, i, j], &scores_shape, &body.ty(mask).shape)?;
                    let bias = body.value(b, mask, &at, None)?;
                    score = b.add(score, bias);
                }
                let slot = b.sub(j, j0);
                b.store(scores, slot, score);
                Ok(b.binary(BinaryOp::Max, m, score))
            })?;
            // With every score so far −∞, subtract 0 instead of −∞ so that exp gives 0, not NaN.
            let m_old = b.load(max, g, 1);
            let m_new = b.binary(BinaryOp::Max, m_old, block_max);
            let empty = b.cmp(CmpOp::Eq, m_new, neg_inf);
            let m_safe = b.select(empty, zero_f, m_new);
            let shift = b.sub(m_old, m_safe);
            let alpha = b.unary(lir::UnaryOp::Exp, shift);
            let p_sum = fold_range(b, (j0, block_end, 1), zero_f, |b, j, total| {
                let slot = b.sub(j, j0);
                let score = b.load(scores, slot, 1);
                let centered = b.sub(score, m_safe);
                let p = b.unary(lir::UnaryOp::Exp, centered);
                b.store(scores, slot, p);
                Ok(b.add(total, p))
            })?;
            let l_old = b.load(sum, g, 1);
            let l_new = b.fma(l_old, alpha, p_sum);
            b.store(sum, g, l_new);
            b.store(max, g, m_new);
            let acc_base = b.mul(g, dv_v);
            match rows {
                Some((_, vb)) => accumulate_rows(
                    b,
                    (acc, acc_base, dv, lanes),
                    alpha,
                    |b, j| {
                        let slot = b.sub(j, j0);
                        let p = b.load(scores, slot, 1);
                        Ok((p, origin(b, v, j)?))
                    },
                    (vb, j0, block_end),
                ),
                None => for_each(b, zero, dv_v, |b, c| {
                    let at = b.add(acc_base, c);
                    let o = b.load(acc, at, 1);
                    let o = b.mul(o, alpha);
                    let o = fold_range(b, (j0, block_end, 1), o, |b, j, o| {
                        let slot = b.sub(j, j0);
                        let p = b.load(scores, slot, 1);
                        let x = body.value(b, v, &[bi, kv_head, j, c], None)?;
                        Ok(b.fma(p, x, o))
                    })?;
                    b.store(acc, at, o);
                    Ok(())
                }),
            }
        });
        vec![]
    });
    failure?;
    // A row that sees no key, or only −∞ scores, has l = 0 and is zeros.
    let out_shape = &body.ty(body.result()).shape;
    for_each(b, zero, heads_v, |b, g| {
        let h = b.add(first_head, g);
        let l = b.load(sum, g, 1);
        let seen = b.cmp(CmpOp::Lt, zero_f, l);
        let acc_base = b.mul(g, dv_v);
        for_each(b, zero, dv_v, |b, c| {
            let at = b.add(acc_base, c);
            let o = b.load(acc, at, 1);
            let o = b.div(o, l);
            let o = b.select(seen, o, zero_f);
            b.store(acc, at, o);
            let idx = body.forward(b, a, &[bi, h, i, c])?;
            let hook = |b: &mut KernelBuilder, at: &[Value]| {
                let e = b.add(acc_base, at[3]);
                Ok(b.load(acc, e, 1))
            };
            let x = body.value(b, body.result(), &idx, Some((a, &hook)))?;
            let e = body.symbols.ravel(b, &idx, out_shape)?;
            b.store(out, e, x);
            Ok(())
        })
    })
}

/// `acc[base..base + dv] = acc·alpha + Σ_j p_j·V[row_j]` over keys `j0..end` of the dense f32 V
/// buffer `vb`, where `key(j)` gives key j's probability and the element where its V row starts:
/// [`V_CHUNK`] accumulator vectors carried through the keys at a time.
fn accumulate_rows(
    b: &mut KernelBuilder,
    (acc, base, dv, lanes): (BufRef, Value, u32, u32),
    alpha: Value,
    key: impl Fn(&mut KernelBuilder, Value) -> Result<(Value, Value), String>,
    (vb, j0, end): (BufRef, Value, Value),
) -> Result<(), String> {
    let alpha4 = b.splat(alpha, lanes);
    let vectors: Vec<u32> = (0..dv / lanes).collect();
    for chunk in vectors.chunks(V_CHUNK as usize) {
        let ats: Vec<Value> = chunk
            .iter()
            .map(|&c| {
                let off = b.const_i(i64::from(c * lanes));
                b.add(base, off)
            })
            .collect();
        let init: Vec<Value> = ats
            .iter()
            .map(|&at| {
                let o = b.load(acc, at, lanes);
                b.mul(o, alpha4)
            })
            .collect();
        let sums = fold_many(b, (j0, end, 1), &init, |b, j, os| {
            let (p, row) = key(b, j)?;
            let p4 = b.splat(p, lanes);
            Ok(chunk
                .iter()
                .zip(os)
                .map(|(&c, &o)| {
                    let off = b.const_i(i64::from(c * lanes));
                    let from = b.add(row, off);
                    let x = load_f32(b, vb, from, lanes);
                    b.fma(p4, x, o)
                })
                .collect())
        })?;
        for (&at, &o) in ats.iter().zip(&sums) {
            b.store(acc, at, o);
        }
    }
    Ok(())
}
