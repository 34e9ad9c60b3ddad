//! The gemv template: `[elementwise prologue, at most one RmsNorm or LayerNorm] MatMul{transpose_b}
//! [elementwise epilogue]` with an f32 weight `[N, K]`. A group computes `tile_n` output columns
//! of one lhs row. When the lhs is an f32 input (or an RmsNorm of one), the K loop runs on f32x4
//! carried accumulators with vector loads (a scalar loop takes the K % 4 tail) and the norm is
//! applied while loading x; any other prologue (a residual add feeding the norm or the matmul)
//! is evaluated per element through `Body::value`, the norm's statistics computed over the
//! prologue's values first. A pure elementwise epilogue is applied per output; one that remaps
//! indices (reshape, permute, RoPE, …) is evaluated over the output's index space with one dot
//! product per matmul element it reads (correct, not tuned). `split_k` is ignored: one CPU
//! thread runs the whole K loop.
//!
//! The body parsing ([`Gemv::parse`]), the epilogue store ([`Gemv::store`]) and the remapping
//! path ([`remapped`]) are shared with the [`super::gemm`] template.

use super::elementwise;
use super::expr::{fold_range, for_each, Body};
use super::row_reduce::{norm_at, norm_stats, NormStats};
use tessera_ir::kernel::BodyArg;
use tessera_ir::lir::{Axis, BufRef, CmpOp, KernelBuilder, ReduceOp, SizeExpr, Special, Value};
use tessera_ir::{Dim, Op};

/// f32 lanes of one 128-bit vector.
pub(super) const LANES: u32 = 4;

/// How the gemv reads its lhs rows.
pub(super) enum Lhs {
    /// An f32 input (times the factor and weight of an RmsNorm prologue on it) read straight
    /// from memory with vector loads: the x buffer and, with the norm, its weight buffer and eps.
    Direct {
        x: BufRef,
        norm: Option<(BufRef, f32)>,
    },
    /// A multi-op prologue evaluated element by element through [`Body::value`].
    Computed,
}

/// An f32 input's buffer, or why the operand is not one.
fn f32_input(body: &Body, arg: BodyArg) -> Result<BufRef, String> {
    body.f32_input(arg).ok_or_else(|| match arg {
        BodyArg::Input(i) => format!("gemv operand of dtype {}", body.inputs[i].dtype),
        BodyArg::Op(j) => format!("gemv operand computed by `{}`", body.ops[j].op.name()),
    })
}

/// How the lhs of the matmul at `m` is read, given the prologue's norm ([`prologue_norm`]):
/// in place when it is an input, or the RmsNorm of one as the only prologue op; evaluated
/// through the prologue otherwise (a LayerNorm, a residual add feeding the norm).
pub(super) fn lhs_of(body: &Body, m: usize, norm: Option<usize>) -> Result<Lhs, String> {
    Ok(match (body.ops[m].args[0], norm, &body.ops[0].op) {
        (lhs @ BodyArg::Input(_), None, _) => Lhs::Direct {
            x: f32_input(body, lhs)?,
            norm: None,
        },
        (BodyArg::Op(0), Some(0), &Op::RmsNorm { eps }) if m == 1 => Lhs::Direct {
            x: f32_input(body, body.ops[0].args[0])?,
            norm: Some((f32_input(body, body.ops[0].args[1])?, eps)),
        },
        _ => Lhs::Computed,
    })
}

/// The position of the prologue's RmsNorm or LayerNorm (ops before the matmul `m`), if any; its
/// shape must be the lhs shape, so that its rows are the lhs rows.
pub(super) fn prologue_norm(body: &Body, m: usize) -> Result<Option<usize>, String> {
    let norms: Vec<usize> = (0..m)
        .filter(|&j| matches!(body.ops[j].op, Op::RmsNorm { .. } | Op::LayerNorm { .. }))
        .collect();
    match norms.as_slice() {
        [] => Ok(None),
        &[r] if body.types[r].shape == body.ty(body.ops[m].args[0]).shape => Ok(Some(r)),
        [_] => Err("a matmul prologue norm of another shape than the lhs".into()),
        _ => Err("a matmul prologue of several norms".into()),
    }
}

/// The position of a body's matmul (`QuantMatMul` when `quantized`), which must be `transpose_b`
/// with a constant-shaped weight `[N, K]`, and N and K.
pub(super) fn transposed_matmul(body: &Body, quantized: bool) -> Result<(usize, i64, i64), String> {
    let m = body
        .ops
        .iter()
        .position(|s| match s.op {
            Op::MatMul { .. } => !quantized,
            Op::QuantMatMul { .. } => quantized,
            _ => false,
        })
        .ok_or("a matmul kernel without a matmul")?;
    let mm = &body.ops[m];
    if !matches!(
        mm.op,
        Op::MatMul { transpose_b: true } | Op::QuantMatMul { transpose_b: true }
    ) {
        return Err(format!("{} without transpose_b", mm.op.name()));
    }
    let weight = body.ty(mm.args[1]);
    match weight.shape.as_slice() {
        [n, k] => n.as_const().zip(k.as_const()).map(|(n, k)| (m, n, k)),
        _ => None,
    }
    .ok_or_else(|| format!("{} weight of shape {weight}", mm.op.name()))
}

/// A parsed gemv body: the matmul at `m` of an `[N, K]` f32 weight `w`, how its lhs is read,
/// and the position of the prologue's norm, if any.
pub(super) struct Gemv<'a> {
    pub body: &'a Body<'a>,
    pub m: usize,
    pub w: BufRef,
    pub lhs: Lhs,
    pub norm: Option<usize>,
    pub n: i64,
    pub k: i64,
}

impl<'a> Gemv<'a> {
    /// Parses a matmul kernel's body: its matmul must be `transpose_b` with a constant-shaped
    /// f32 weight `[N, K]`.
    pub(super) fn parse(body: &'a Body<'a>) -> Result<Gemv<'a>, String> {
        let (m, n, k) = transposed_matmul(body, false)?;
        let mm = &body.ops[m];
        let w = f32_input(body, mm.args[1])?;
        let norm = prologue_norm(body, m)?;
        let lhs = lhs_of(body, m, norm)?;
        Ok(Gemv {
            body,
            m,
            w,
            lhs,
            norm,
            n,
            k,
        })
    }

    /// Whether the ops after the matmul keep every element at its index: no layout op or RoPE
    /// (which read other elements) and the matmul's shape as the result's.
    pub(super) fn elementwise_epilogue(&self) -> bool {
        let body = self.body;
        body.ty(body.result()).shape == body.types[self.m].shape
            && body.ops[self.m + 1..].iter().all(|s| {
                !matches!(
                    s.op,
                    Op::Reshape { .. }
                        | Op::Permute { .. }
                        | Op::Slice { .. }
                        | Op::Expand { .. }
                        | Op::Rope { .. }
                )
            })
    }

    /// For an elementwise epilogue: stores the body's result at the output element of matmul
    /// element (`row`, `col`) (row-major row number over [`Gemv::lead`]) whose value is `acc`.
    pub(super) fn store(
        &self,
        b: &mut KernelBuilder,
        out: BufRef,
        row: Value,
        col: Value,
        acc: Value,
    ) -> Result<(), String> {
        let body = self.body;
        let n_v = b.const_i(self.n);
        let out_base = b.mul(row, n_v);
        let e = b.add(out_base, col);
        let idx = body.symbols.unravel(b, e, &body.types[self.m].shape)?;
        let hook = |_: &mut KernelBuilder, at: &[Value]| {
            if at == idx.as_slice() {
                Ok(acc)
            } else {
                Err("an epilogue reading the matmul at another element".to_string())
            }
        };
        let v = body.value(b, body.result(), &idx, Some((self.m, &hook)))?;
        b.store(out, e, v);
        Ok(())
    }

    /// The matmul's leading dims (all but the output column).
    pub(super) fn lead(&self) -> &[Dim] {
        let shape = &self.body.types[self.m].shape;
        &shape[..shape.len() - 1]
    }

    /// The prologue norm's statistics for the lhs row at `lead_idx`, if there is a norm.
    pub(super) fn row_stats(
        &self,
        b: &mut KernelBuilder,
        lead_idx: &[Value],
    ) -> Result<Option<NormStats>, String> {
        let body = self.body;
        self.norm
            .map(|r| {
                let x = body.ops[r].args[0];
                let k = b.const_i(self.k);
                norm_stats(b, &body.ops[r].op, k, |b, i| {
                    body.value(b, x, &[lead_idx, &[i]].concat(), None)
                })
            })
            .transpose()
    }

    /// The dot product of the lhs row at `lead_idx` (row-major row number `row`, prologue norm
    /// statistics `stats`) with weight row `col`: f32x4 accumulators and a scalar tail for a direct
    /// lhs, a scalar loop over the prologue's values otherwise.
    fn dot(
        &self,
        b: &mut KernelBuilder,
        lead_idx: &[Value],
        row: Value,
        stats: Option<NormStats>,
        col: Value,
    ) -> Result<Value, String> {
        let (body, w, k) = (self.body, self.w, self.k);
        let k_v = b.const_i(k);
        let x_base = b.mul(row, k_v);
        let norm_hook = self
            .norm
            .zip(stats)
            .map(|(r, s)| (r, norm_at(body, &body.ops[r], s)));
        let lhs_arg = body.ops[self.m].args[0];
        // lhs[row, i] as `lanes` lanes (more than one only for a direct lhs).
        let x_at = |b: &mut KernelBuilder, i: Value, lanes: u32| match self.lhs {
            Lhs::Direct { x, norm: g } => {
                let at = b.add(x_base, i);
                let x = b.load(x, at, lanes);
                Ok(match (g, stats) {
                    (Some((g, _)), Some(NormStats { r, .. })) => {
                        let r = if lanes > 1 { b.splat(r, lanes) } else { r };
                        let xr = b.mul(x, r);
                        let g = b.load(g, i, lanes);
                        b.mul(xr, g)
                    }
                    _ => x,
                })
            }
            Lhs::Computed => {
                let hook = norm_hook.as_ref().map(|(r, f)| (*r, &**f));
                body.value(b, lhs_arg, &[lead_idx, &[i]].concat(), hook)
            }
        };
        let k_vec = match self.lhs {
            Lhs::Direct { .. } => k - k % i64::from(LANES),
            Lhs::Computed => 0,
        };
        let w_base = b.mul(col, k_v);
        let dot = |lanes: u32| {
            move |b: &mut KernelBuilder, i: Value, acc: Value| {
                let x = x_at(b, i, lanes)?;
                let at = b.add(w_base, i);
                let wv = b.load(w, at, lanes);
                Ok(b.fma(x, wv, acc))
            }
        };
        let zero_f = b.const_f(0.0);
        let start = b.const_i(0);
        let mut acc = zero_f;
        if k_vec > 0 {
            let zero = b.splat(zero_f, LANES);
            let end = b.const_i(k_vec);
            let v = fold_range(b, (start, end, LANES), zero, dot(LANES))?;
            acc = b.reduce_lanes(ReduceOp::Add, v);
        }
        if k_vec < k {
            let from = b.const_i(k_vec);
            acc = fold_range(b, (from, k_v, 1), acc, dot(1))?;
        }
        Ok(acc)
    }
}

/// Writes the gemv kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
    tile_n: u32,
) -> Result<(), String> {
    let g = Gemv::parse(body)?;
    if g.elementwise_epilogue() {
        rows(b, &g, out, tile_n)
    } else {
        remapped(b, &g, out)
    }
}

/// The kernel of an epilogue that remaps indices: the elementwise template over the output's
/// index space, with one dot product (and the row's norm factor) per matmul element it reads.
pub(super) fn remapped(b: &mut KernelBuilder, g: &Gemv, out: BufRef) -> Result<(), String> {
    let body = g.body;
    let hook = |b: &mut KernelBuilder, at: &[Value]| {
        let (&col, lead_idx) = at.split_last().ok_or("a matmul of a scalar")?;
        let row = body.symbols.ravel(b, lead_idx, g.lead())?;
        let stats = g.row_stats(b, lead_idx)?;
        g.dot(b, lead_idx, row, stats, col)
    };
    elementwise::lower_with(b, body, out, Some((g.m, &hook)))
}

/// The fast path for an elementwise epilogue: a group computes `tile_n` output columns of one
/// lhs row, the norm's factor once for the row, and applies the epilogue to each dot product.
fn rows(b: &mut KernelBuilder, g: &Gemv, out: BufRef, tile_n: u32) -> Result<(), String> {
    let body = g.body;
    let tile = u64::from(tile_n.max(1));
    b.grid([
        SizeExpr::Const(g.n as u64).ceil_div(tile),
        body.symbols.numel_size(g.lead())?,
        SizeExpr::Const(1),
    ]);
    let row = b.special(Special::GroupId(Axis::Y));
    let col_group = b.special(Special::GroupId(Axis::X));
    let tile_v = b.const_i(tile as i64);
    let col0 = b.mul(col_group, tile_v);
    let n_v = b.const_i(g.n);
    let lead_idx = body.symbols.unravel(b, row, g.lead())?;
    let stats = g.row_stats(b, &lead_idx)?;
    let start = b.const_i(0);
    let tile_end = b.const_i(tile as i64);
    for_each(b, start, tile_end, |b, c| {
        let col = b.add(col0, c);
        let inside = b.cmp(CmpOp::Lt, col, n_v);
        let mut failure = Ok(());
        b.if_then(inside, |b| {
            let acc = match g.dot(b, &lead_idx, row, stats, col) {
                Ok(acc) => acc,
                Err(e) => {
                    failure = Err(e);
                    return;
                }
            };
            failure = g.store(b, out, row, col, acc);
        });
        failure
    })
}
