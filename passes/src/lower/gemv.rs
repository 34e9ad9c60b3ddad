//! The gemv template: `[RmsNorm prologue on the lhs] MatMul{transpose_b} [elementwise epilogue]`
//! with an f32 weight `[N, K]`. A group computes `tile_n` output columns of one lhs row: the K
//! loop runs on f32x4 carried accumulators with vector loads (a scalar loop takes the K % 4
//! tail); the RmsNorm factor of the row is computed first and applied while loading x; the
//! epilogue is applied per output. `split_k` is ignored: one CPU thread runs the whole K loop.
//!
//! `Gemm` and `FlatGemm` kernels are lowered the same way for now (one row of M at a time):
//! correct, but not tuned for large M.

use super::expr::{fold, for_each, Body};
use tessera_ir::kernel::BodyArg;
use tessera_ir::lir::{
    self, Axis, BufRef, CmpOp, KernelBuilder, ReduceOp, SizeExpr, Special, Value,
};
use tessera_ir::{DType, Op};

/// f32 lanes of one 128-bit vector.
const LANES: u32 = 4;

/// The lhs rows: the x buffer and, with an RmsNorm prologue, its weight buffer and eps.
struct Lhs {
    x: BufRef,
    norm: Option<(BufRef, f32)>,
}

/// An f32 input's buffer.
fn f32_input(body: &Body, arg: BodyArg) -> Result<BufRef, String> {
    match arg {
        BodyArg::Input(i) if body.inputs[i].dtype == DType::F32 => Ok(body.buffers[i]),
        BodyArg::Input(i) => Err(format!("gemv operand of dtype {}", body.inputs[i].dtype)),
        BodyArg::Op(j) => Err(format!(
            "gemv operand computed by `{}`",
            body.ops[j].op.name()
        )),
    }
}

/// Writes the gemv kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
    tile_n: u32,
) -> Result<(), String> {
    let m = body
        .ops
        .iter()
        .position(|s| matches!(s.op, Op::MatMul { .. }))
        .ok_or("a matmul kernel without a matmul")?;
    let mm = &body.ops[m];
    if mm.op != (Op::MatMul { transpose_b: true }) {
        return Err("matmul without transpose_b".into());
    }
    let weight = body.ty(mm.args[1]);
    let (n, k) = match weight.shape.as_slice() {
        [n, k] => (n.as_const(), k.as_const()),
        _ => (None, None),
    };
    let (Some(n), Some(k)) = (n, k) else {
        return Err(format!("matmul weight of shape {weight}"));
    };
    let w = f32_input(body, mm.args[1])?;
    let lhs = match (mm.args[0], m) {
        (BodyArg::Op(0), 1) => match body.ops[0].op {
            Op::RmsNorm { eps } => Lhs {
                x: f32_input(body, body.ops[0].args[0])?,
                norm: Some((f32_input(body, body.ops[0].args[1])?, eps)),
            },
            ref other => return Err(format!("matmul prologue `{}`", other.name())),
        },
        (arg, 0) => Lhs {
            x: f32_input(body, arg)?,
            norm: None,
        },
        _ => return Err("matmul prologue of several ops".into()),
    };
    let shape = &body.types[m].shape;
    if &body.ty(body.result()).shape != shape {
        return Err("an epilogue that changes the matmul's shape".into());
    }
    let lead = &shape[..shape.len() - 1];
    let tile = u64::from(tile_n.max(1));
    b.grid([
        SizeExpr::Const(n as u64).ceil_div(tile),
        body.symbols.numel_size(lead)?,
        SizeExpr::Const(1),
    ]);
    let row = b.special(Special::GroupId(Axis::Y));
    let col_group = b.special(Special::GroupId(Axis::X));
    let tile_v = b.const_i(tile as i64);
    let col0 = b.mul(col_group, tile_v);
    let (n_v, k_v) = (b.const_i(n), b.const_i(k));
    let x_base = b.mul(row, k_v);
    let out_base = b.mul(row, n_v);
    let zero_f = b.const_f(0.0);
    let scale = match lhs.norm {
        Some((_, eps)) => {
            let ss = fold(b, k_v, zero_f, |b, i, acc| {
                let at = b.add(x_base, i);
                let x = b.load(lhs.x, at, 1);
                Ok(b.fma(x, x, acc))
            })?;
            let kf = b.const_f(k as f64);
            let mean = b.div(ss, kf);
            let eps = b.const_f(f64::from(eps));
            let v = b.add(mean, eps);
            Some(b.unary(lir::UnaryOp::Rsqrt, v))
        }
        None => None,
    };
    // x[i] (times the RmsNorm factor and weight) as `lanes` lanes.
    let load_x = |b: &mut KernelBuilder, i: Value, lanes: u32| {
        let at = b.add(x_base, i);
        let x = b.load(lhs.x, at, lanes);
        match (lhs.norm, scale) {
            (Some((nw, _)), Some(r)) => {
                let r = if lanes > 1 { b.splat(r, lanes) } else { r };
                let xr = b.mul(x, r);
                let g = b.load(nw, i, lanes);
                b.mul(xr, g)
            }
            _ => x,
        }
    };
    let k_vec = k - k % i64::from(LANES);
    let start = b.const_i(0);
    let tile_end = b.const_i(tile as i64);
    for_each(b, start, tile_end, |b, c| {
        let col = b.add(col0, c);
        let inside = b.cmp(CmpOp::Lt, col, n_v);
        let mut failure = Ok(());
        b.if_then(inside, |b| {
            let w_base = b.mul(col, k_v);
            let dot = |b: &mut KernelBuilder, i: Value, acc: Value, lanes: u32| {
                let x = load_x(b, i, lanes);
                let at = b.add(w_base, i);
                let wv = b.load(w, at, lanes);
                b.fma(x, wv, acc)
            };
            let mut acc = zero_f;
            if k_vec > 0 {
                let zero = b.splat(zero_f, LANES);
                let end = b.const_i(k_vec);
                let v = b.for_range(start, end, LANES, &[zero], |b, i, a| {
                    vec![dot(b, i, a[0], LANES)]
                });
                acc = b.reduce_lanes(ReduceOp::Add, v[0]);
            }
            if k_vec < k {
                let from = b.const_i(k_vec);
                acc = b.for_range(from, k_v, 1, &[acc], |b, i, a| vec![dot(b, i, a[0], 1)])[0];
            }
            let e = b.add(out_base, col);
            failure = body
                .symbols
                .unravel(b, e, shape)
                .and_then(|idx| {
                    let hook = |_: &mut KernelBuilder, at: &[Value]| {
                        if at == idx.as_slice() {
                            Ok(acc)
                        } else {
                            Err("an epilogue reading the matmul at another element".to_string())
                        }
                    };
                    body.value(b, body.result(), &idx, Some((m, &hook)))
                })
                .map(|v| b.store(out, e, v));
        });
        failure
    })
}
