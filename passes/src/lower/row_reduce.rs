//! The row-reduce template: one row (last axis) per group (its threads sharing each pass on a
//! SIMT target, partial results combined across the workgroup). Loops with carried accumulators
//! compute the row statistics of the anchor — RmsNorm (sum of squares), LayerNorm (mean, then
//! variance) or Softmax (max, then sum of exponentials) — over the prologue's values; a last loop
//! writes the normalized values with the epilogue applied. f32 only.

use super::expr::{Body, HookFn};
use super::lanes::{fold_lanes, for_each_lane};
use tessera_ir::kernel::{BodyArg, BodyOp};
use tessera_ir::lir::{
    self, Axis, BinaryOp, BufRef, KernelBuilder, ReduceOp, ScalarType, SizeExpr, Special, Value,
};
use tessera_ir::{DType, Op};

/// `r = 1/sqrt(total/d + eps)`.
pub(super) fn inv_std(b: &mut KernelBuilder, total: Value, d: Value, eps: f32) -> Value {
    let mean = b.div(total, d);
    let eps = b.const_f(f64::from(eps));
    let v = b.add(mean, eps);
    b.unary(lir::UnaryOp::Rsqrt, v)
}

/// What a norm applies to its row: the factor `r = 1/sqrt(var + eps)` and, for LayerNorm, the
/// row's mean (RmsNorm's "variance" is the mean square, uncentered).
#[derive(Clone, Copy)]
pub(super) struct NormStats {
    pub mean: Option<Value>,
    pub r: Value,
}

/// The statistics of the RmsNorm or LayerNorm `op` over a row of `d` elements whose j-th x is
/// `x_at(j)` (evaluated once per pass: one for RmsNorm, two for LayerNorm), the passes shared by
/// the group's threads ([`fold_lanes`]).
pub(super) fn norm_stats(
    b: &mut KernelBuilder,
    body: &Body,
    op: &Op,
    d: Value,
    x_at: impl Fn(&mut KernelBuilder, Value) -> Result<Value, String>,
) -> Result<NormStats, String> {
    let zero = b.const_f(0.0);
    let df = b.cast(ScalarType::F32, d);
    let (mean, eps) = match *op {
        Op::RmsNorm { eps } => (None, eps),
        Op::LayerNorm { eps } => {
            let sum = fold_lanes(b, body, d, (zero, ReduceOp::Add), |b, j, acc| {
                let x = x_at(b, j)?;
                Ok(b.add(acc, x))
            })?;
            (Some(b.div(sum, df)), eps)
        }
        ref other => return Err(format!("`{}` as a norm", other.name())),
    };
    let squares = fold_lanes(b, body, d, (zero, ReduceOp::Add), |b, j, acc| {
        let x = x_at(b, j)?;
        let c = mean.map_or(x, |m| b.sub(x, m));
        Ok(b.fma(c, c, acc))
    })?;
    let r = inv_std(b, squares, df, eps);
    Ok(NormStats { mean, r })
}

/// The norm op `norm` at a multi-index of its shape, given its row's statistics: `x·r·w`
/// (RmsNorm) or `(x − mean)·r·w + bias` (LayerNorm).
pub(super) fn norm_at<'a>(body: &'a Body, norm: &'a BodyOp, stats: NormStats) -> Box<HookFn<'a>> {
    let (x, w, bias) = (norm.args[0], norm.args[1], norm.args.get(2).copied());
    Box::new(move |b, idx| {
        let column = &idx[idx.len() - 1..];
        let xv = body.value(b, x, idx, None)?;
        let c = stats.mean.map_or(xv, |m| b.sub(xv, m));
        let cr = b.mul(c, stats.r);
        let wj = body.value(b, w, column, None)?;
        match bias {
            Some(bias) => {
                let bj = body.value(b, bias, column, None)?;
                Ok(b.fma(cr, wj, bj))
            }
            None => Ok(b.mul(cr, wj)),
        }
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
    let x_arg = anchor.args[0];
    let at = |b: &mut KernelBuilder, arg: BodyArg, idx: &[Value]| body.value(b, arg, idx, None);
    let x_at = |b: &mut KernelBuilder, j: Value| {
        let e = b.add(base, j);
        let idx = body.symbols.unravel(b, e, shape)?;
        at(b, x_arg, &idx)
    };
    let zero = b.const_f(0.0);
    let hook: Box<HookFn> = match anchor.op {
        Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
            norm_at(body, anchor, norm_stats(b, body, &anchor.op, d, x_at)?)
        }
        _ => {
            let low = b.const_f(f64::NEG_INFINITY);
            let max = fold_lanes(b, body, d, (low, ReduceOp::Max), |b, j, acc| {
                let x = x_at(b, j)?;
                Ok(b.binary(BinaryOp::Max, acc, x))
            })?;
            let exp_at = move |b: &mut KernelBuilder, x: Value| {
                let c = b.sub(x, max);
                b.unary(lir::UnaryOp::Exp, c)
            };
            let sum = fold_lanes(b, body, d, (zero, ReduceOp::Add), |b, j, acc| {
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
    for_each_lane(b, body, start, d, |b, j| {
        let e = b.add(base, j);
        let idx = body.symbols.unravel(b, e, shape)?;
        let v = body.value(b, body.result(), &idx, Some((a, &*hook)))?;
        b.store(out, e, v);
        Ok(())
    })
}
