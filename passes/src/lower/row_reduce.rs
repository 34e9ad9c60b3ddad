//! The row-reduce template: one row (last axis) per group. Loops with carried accumulators
//! compute the row statistics of the anchor — RmsNorm (sum of squares), LayerNorm (mean, then
//! variance) or Softmax (max, then sum of exponentials) — over the prologue's values; a last loop
//! writes the normalized values with the epilogue applied. f32 only.

use super::expr::{fold, for_each, Body, HookFn};
use tessera_ir::kernel::{BodyArg, BodyOp};
use tessera_ir::lir::{
    self, Axis, BinaryOp, BufRef, KernelBuilder, ScalarType, SizeExpr, Special, Value,
};
use tessera_ir::{DType, Op};

/// `r = 1/sqrt(total/d + eps)`.
pub(super) fn inv_std(b: &mut KernelBuilder, total: Value, d: Value, eps: f32) -> Value {
    let mean = b.div(total, d);
    let eps = b.const_f(f64::from(eps));
    let v = b.add(mean, eps);
    b.unary(lir::UnaryOp::Rsqrt, v)
}

/// The RmsNorm factor `1/sqrt(Σx²/d + eps)` of a row of `d` elements whose j-th x is `x_at(j)`.
pub(super) fn rms_factor(
    b: &mut KernelBuilder,
    d: Value,
    eps: f32,
    x_at: impl FnOnce(&mut KernelBuilder, Value) -> Result<Value, String>,
) -> Result<Value, String> {
    let zero = b.const_f(0.0);
    let ss = fold(b, d, zero, |b, j, acc| {
        let x = x_at(b, j)?;
        Ok(b.fma(x, x, acc))
    })?;
    let df = b.cast(ScalarType::F32, d);
    Ok(inv_std(b, ss, df, eps))
}

/// The RmsNorm op `norm` at a multi-index of its shape, given its row's factor `r`: x·r·w.
pub(super) fn rms_norm_at<'a>(body: &'a Body, norm: &'a BodyOp, r: Value) -> Box<HookFn<'a>> {
    let (x, w) = (norm.args[0], norm.args[1]);
    Box::new(move |b, idx| {
        let xv = body.value(b, x, idx, None)?;
        let wj = body.value(b, w, &idx[idx.len() - 1..], None)?;
        let xr = b.mul(xv, r);
        Ok(b.mul(xr, wj))
    })
}

/// Writes the row-reduce kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(b: &mut KernelBuilder, body: &Body, out: BufRef) -> Result<(), String> {
    let a = body
        .ops
        .iter()
        .position(|s| {
            matches!(
                s.op,
                Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::Softmax
            )
        })
        .ok_or("a row-reduce body without a norm or softmax")?;
    let anchor = &body.ops[a];
    let shape = &body.types[a].shape;
    if body.types[a].dtype != DType::F32 {
        return Err(format!("{} over {}", anchor.op.name(), body.types[a].dtype));
    }
    if &body.ty(body.result()).shape != shape {
        return Err("an epilogue that changes the row shape".into());
    }
    let (last, lead) = shape.split_last().ok_or("a norm of a scalar")?;
    b.grid([
        body.symbols.numel_size(lead)?,
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let row = b.special(Special::GroupId(Axis::X));
    let d = body.symbols.dim(b, last)?;
    let base = b.mul(row, d);
    let df = b.cast(ScalarType::F32, d);
    let x_arg = anchor.args[0];
    let at = |b: &mut KernelBuilder, arg: BodyArg, idx: &[Value]| body.value(b, arg, idx, None);
    let x_at = |b: &mut KernelBuilder, j: Value| {
        let e = b.add(base, j);
        let idx = body.symbols.unravel(b, e, shape)?;
        at(b, x_arg, &idx)
    };
    let column = |idx: &[Value]| [idx[idx.len() - 1]];
    let zero = b.const_f(0.0);
    let hook: Box<HookFn> = match anchor.op {
        Op::RmsNorm { eps } => {
            let r = rms_factor(b, d, eps, x_at)?;
            rms_norm_at(body, anchor, r)
        }
        Op::LayerNorm { eps } => {
            let sum = fold(b, d, zero, |b, j, acc| {
                let x = x_at(b, j)?;
                Ok(b.add(acc, x))
            })?;
            let mean = b.div(sum, df);
            let sq = fold(b, d, zero, |b, j, acc| {
                let x = x_at(b, j)?;
                let c = b.sub(x, mean);
                Ok(b.fma(c, c, acc))
            })?;
            let r = inv_std(b, sq, df, eps);
            let (w, bias) = (anchor.args[1], anchor.args[2]);
            Box::new(move |b, idx| {
                let x = at(b, x_arg, idx)?;
                let c = b.sub(x, mean);
                let cr = b.mul(c, r);
                let wj = at(b, w, &column(idx))?;
                let bj = at(b, bias, &column(idx))?;
                Ok(b.fma(cr, wj, bj))
            })
        }
        _ => {
            let low = b.const_f(f64::NEG_INFINITY);
            let max = fold(b, d, low, |b, j, acc| {
                let x = x_at(b, j)?;
                Ok(b.binary(BinaryOp::Max, acc, x))
            })?;
            let exp_at = move |b: &mut KernelBuilder, x: Value| {
                let c = b.sub(x, max);
                b.unary(lir::UnaryOp::Exp, c)
            };
            let sum = fold(b, d, zero, |b, j, acc| {
                let x = x_at(b, j)?;
                let e = exp_at(b, x);
                Ok(b.add(acc, e))
            })?;
            Box::new(move |b, idx| {
                let x = at(b, x_arg, idx)?;
                let e = exp_at(b, x);
                Ok(b.div(e, sum))
            })
        }
    };
    let start = b.const_i(0);
    for_each(b, start, d, |b, j| {
        let e = b.add(base, j);
        let idx = body.symbols.unravel(b, e, shape)?;
        let v = body.value(b, body.result(), &idx, Some((a, &*hook)))?;
        b.store(out, e, v);
        Ok(())
    })
}
