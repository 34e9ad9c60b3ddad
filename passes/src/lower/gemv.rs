//! The gemv template: `[elementwise prologue, at most one RmsNorm or LayerNorm] MatMul{transpose_b}
//! [epilogue]` with a float weight `[N, K]` (f16/bf16 widened as loaded). A group computes
//! `tile_n` output columns of one lhs row; the K loop runs on carried f32 vector accumulators of the target's width (`Body::lanes`) with
//! vector loads (a scalar loop takes the tail). The lhs row is read in place when it is an
//! input (an RmsNorm of it applied while loading x); any other prologue (a residual add feeding
//! the norm or the matmul, a LayerNorm, SwiGLU feeding the down projection) is evaluated once per
//! group into a private row, the norm's statistics first ([`row_source`]), and the group widened
//! to 1/[`GROUPS_PER_ROW`] of the row. An epilogue that keeps the rows is applied per output column to
//! the dot products of the matmul columns it reads ([`column_offsets`]: one for an elementwise
//! epilogue, `j` and `j + H` for SwiGLU over merged gate/up); one that remaps indices (reshape,
//! permute, RoPE, …) is evaluated over the output's index space with one dot product per matmul
//! element it reads (correct, not tuned). `split_k` is ignored: one CPU thread runs the whole K
//! loop.
//!
//! The body parsing ([`Gemv::parse`]), the lhs rows ([`row_source`]), the epilogue's columns and
//! store ([`column_offsets`], [`store_output`]) and the remapping path ([`remapped`]) are shared
//! with the [`super::gemm`] and [`super::qgemv`] templates.

use super::elementwise;
use super::expr::{fold_range, for_each, load_f32, Body};
use super::lanes::{lane_of, sum_runs, workgroup_reduce};
use super::row_reduce::{inv_std, norm_at, norm_stats};
use tessera_ir::kernel::BodyArg;
use tessera_ir::lir::{
    Axis, BufRef, CmpOp, KernelBuilder, MemorySpace, ReduceOp, ScalarType, SizeExpr, Special, Value,
};
use tessera_ir::{Dim, Op};

/// How many groups one lhs row is cut into when each group first evaluates the row's prologue
/// (or quantizes the row): enough for a thread pool to balance, few enough that the per-group
/// row work is a small fraction of the group's dot products.
pub(super) const GROUPS_PER_ROW: i64 = 16;

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

/// A float input's buffer, or why the operand is not one.
fn float_input(body: &Body, arg: BodyArg) -> Result<BufRef, String> {
    body.float_input(arg).ok_or_else(|| match arg {
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
            x: float_input(body, lhs)?,
            norm: None,
        },
        (BodyArg::Op(0), Some(0), &Op::RmsNorm { eps }) if m == 1 => Lhs::Direct {
            x: float_input(body, body.ops[0].args[0])?,
            norm: Some((float_input(body, body.ops[0].args[1])?, eps)),
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

/// A parsed gemv body: the matmul at `m` of an `[N, K]` float weight `w` and how its lhs is
/// read.
pub(super) struct Gemv<'a> {
    pub body: &'a Body<'a>,
    pub m: usize,
    pub w: BufRef,
    pub lhs: Lhs,
    pub n: i64,
    pub k: i64,
}

impl<'a> Gemv<'a> {
    /// Parses a matmul kernel's body: its matmul must be `transpose_b` with a constant-shaped
    /// f32 weight `[N, K]`.
    pub(super) fn parse(body: &'a Body<'a>) -> Result<Gemv<'a>, String> {
        let (m, n, k) = transposed_matmul(body, false)?;
        let mm = &body.ops[m];
        let w = float_input(body, mm.args[1])?;
        let norm = prologue_norm(body, m)?;
        let lhs = lhs_of(body, m, norm)?;
        Ok(Gemv {
            body,
            m,
            w,
            lhs,
            n,
            k,
        })
    }

    /// The matmul columns each output column of an epilogue that keeps the rows reads, as
    /// offsets from it ([`column_offsets`]: `[0]` for an elementwise epilogue, `[0, H]` for
    /// SwiGLU over merged gate/up), and the output's column count; `None` for an epilogue that
    /// remaps indices.
    pub(super) fn epilogue_columns(&self) -> Option<(Vec<i64>, i64)> {
        let body = self.body;
        let (cols, lead) = body.ty(body.result()).shape.split_last()?;
        let offsets = column_offsets(body, body.result(), self.m)?;
        (lead == self.lead() && !offsets.is_empty()).then_some((offsets, cols.as_const()?))
    }

    /// The matmul's leading dims (all but the output column).
    pub(super) fn lead(&self) -> &[Dim] {
        let shape = &self.body.types[self.m].shape;
        &shape[..shape.len() - 1]
    }

    /// Where the lhs row at `lead_idx` (row-major row number `row`) is read from
    /// ([`row_source`]).
    pub(super) fn row_source(
        &self,
        b: &mut KernelBuilder,
        row: Value,
        lead_idx: &[Value],
    ) -> Result<RowSource, String> {
        row_source(b, self.body, self.m, self.k, row, lead_idx)
    }

    /// The dot product of the lhs row read from `src` with weight row `col`: f32x4 accumulators
    /// and a scalar tail.
    fn dot(&self, b: &mut KernelBuilder, src: &RowSource, col: Value) -> Result<Value, String> {
        let (w, k, lanes) = (self.w, self.k, self.body.lanes);
        let k_v = b.const_i(k);
        let k_vec = k - k % i64::from(lanes);
        let w_base = b.mul(col, k_v);
        let dot = |lanes: u32| {
            move |b: &mut KernelBuilder, i: Value, acc: Value| {
                let x = src.load(b, i, lanes);
                let at = b.add(w_base, i);
                let wv = load_f32(b, w, at, lanes);
                Ok(b.fma(x, wv, acc))
            }
        };
        let zero_f = b.const_f(0.0);
        let start = b.const_i(0);
        let mut acc = zero_f;
        if k_vec > 0 {
            let zero = b.splat(zero_f, lanes);
            let end = b.const_i(k_vec);
            let v = fold_range(b, (start, end, lanes), zero, dot(lanes))?;
            acc = b.reduce_lanes(ReduceOp::Add, v);
        }
        if k_vec < k {
            let from = b.const_i(k_vec);
            acc = fold_range(b, (from, k_v, 1), acc, dot(1))?;
        }
        Ok(acc)
    }
}

/// Where a group reads an lhs row from: a float buffer (an input, or the private row the
/// prologue was evaluated into) at element `base`, times an RmsNorm factor and weight when a
/// norm of a direct input is read in place.
pub(super) struct RowSource {
    pub buf: BufRef,
    pub base: Value,
    pub norm: Option<(Value, BufRef)>,
}

impl RowSource {
    /// `lanes` lhs values from element `i` of the row, as f32 (normed when read in place).
    pub(super) fn load(&self, b: &mut KernelBuilder, i: Value, lanes: u32) -> Value {
        let at = b.add(self.base, i);
        let x = load_f32(b, self.buf, at, lanes);
        match self.norm {
            Some((r, g)) => {
                let r = b.splat(r, lanes);
                let xr = b.mul(x, r);
                let g = load_f32(b, g, i, lanes);
                b.mul(xr, g)
            }
            None => x,
        }
    }
}

/// The RmsNorm factor `1/sqrt(Σx²/k + eps)` of the `k` float values of `x` from `base`: sums of
/// squares over runs of `width` elements (vector loads) and a scalar tail ([`sum_runs`]), split
/// between a SIMT workgroup's threads and combined across it. Reached by the whole workgroup.
pub(super) fn direct_rms_factor(
    b: &mut KernelBuilder,
    body: &Body,
    width: u32,
    (x, base, k): (BufRef, Value, i64),
    eps: f32,
) -> Result<Value, String> {
    let (lane, threads) = lane_of(b, body);
    let ss = sum_runs(b, (lane, threads), (width, k), 1, |b, j, lanes, acc| {
        let at = b.add(base, j);
        let v = load_f32(b, x, at, lanes);
        Ok(vec![b.fma(v, v, acc[0])])
    })?;
    let ss = match threads {
        1 => ss[0],
        _ => workgroup_reduce(b, body.workgroup(), &ss, ReduceOp::Add)[0],
    };
    let k_v = b.const_i(k);
    let kf = b.cast(ScalarType::F32, k_v);
    Ok(inv_std(b, ss, kf, eps))
}

/// Where the lhs row `row` (at `lead_idx`) of the matmul at `m` with reduction length `k` is
/// read from: a float input in place (with an RmsNorm of it applied while reading), or otherwise
/// the prologue — norm statistics first — evaluated element by element into a private row once,
/// so the dot products run on vectors whatever the prologue.
pub(super) fn row_source(
    b: &mut KernelBuilder,
    body: &Body,
    m: usize,
    k: i64,
    row: Value,
    lead_idx: &[Value],
) -> Result<RowSource, String> {
    let lhs = body.ops[m].args[0];
    let norm = prologue_norm(body, m)?;
    let k_v = b.const_i(k);
    let stats = |b: &mut KernelBuilder, r: usize| {
        let x = body.ops[r].args[0];
        norm_stats(b, body, &body.ops[r].op, k_v, |b, i| {
            let idx: Vec<Value> = lead_idx.iter().copied().chain([i]).collect();
            body.value(b, x, &idx, None)
        })
    };
    if let Lhs::Direct { x, norm: g } = lhs_of(body, m, norm)? {
        let base = b.mul(row, k_v);
        let norm = match g {
            Some((g, eps)) => Some((
                direct_rms_factor(b, body, body.lanes, (x, base, k), eps)?,
                g,
            )),
            None => None,
        };
        return Ok(RowSource { buf: x, base, norm });
    }
    let len = u32::try_from(k).map_err(|_| "a reduction longer than u32")?;
    let private = b.local("lhs_row", MemorySpace::Private, ScalarType::F32, len);
    let hook = match norm {
        Some(r) => Some((r, norm_at(body, &body.ops[r], stats(b, r)?))),
        None => None,
    };
    let zero = b.const_i(0);
    for_each(b, zero, k_v, |b, i| {
        let idx: Vec<Value> = lead_idx.iter().copied().chain([i]).collect();
        let v = body.value(b, lhs, &idx, hook.as_ref().map(|(r, f)| (*r, &**f)))?;
        b.store(private, i, v);
        Ok(())
    })?;
    Ok(RowSource {
        buf: private,
        base: zero,
        norm: None,
    })
}

/// Writes the gemv kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
    tile_n: u32,
) -> Result<(), String> {
    let g = Gemv::parse(body)?;
    match g.epilogue_columns() {
        Some((offsets, cols)) => rows(b, &g, out, tile_n, &offsets, cols),
        None => remapped(b, &g, out),
    }
}

/// The kernel of an epilogue that remaps indices: the elementwise template over the output's
/// index space, with one dot product (and the row's norm factor) per matmul element it reads.
pub(super) fn remapped(b: &mut KernelBuilder, g: &Gemv, out: BufRef) -> Result<(), String> {
    let body = g.body;
    let hook = |b: &mut KernelBuilder, at: &[Value]| {
        let (&col, lead_idx) = at.split_last().ok_or("a matmul of a scalar")?;
        let row = body.symbols.ravel(b, lead_idx, g.lead())?;
        let src = g.row_source(b, row, lead_idx)?;
        g.dot(b, &src, col)
    };
    elementwise::lower_with(b, body, out, Some((g.m, &hook)))
}

/// The fast path for an epilogue that keeps the rows: a group computes `tile_n` of the `cols`
/// output columns of one lhs row, the norm's statistics once for the row, and applies the
/// epilogue to the dot products of the matmul columns each output column reads (`offsets`).
fn rows(
    b: &mut KernelBuilder,
    g: &Gemv,
    out: BufRef,
    tile_n: u32,
    offsets: &[i64],
    cols: i64,
) -> Result<(), String> {
    let body = g.body;
    // A computed lhs row is evaluated once per group: take wider groups so that is a small part
    // of each group's work.
    let tile = match g.lhs {
        Lhs::Direct { .. } => i64::from(tile_n.max(1)),
        Lhs::Computed => i64::from(tile_n.max(1)).max((cols + GROUPS_PER_ROW - 1) / GROUPS_PER_ROW),
    } as u64;
    b.grid([
        SizeExpr::Const(cols as u64).ceil_div(tile),
        body.symbols.numel_size(g.lead())?,
        SizeExpr::Const(1),
    ]);
    let row = b.special(Special::GroupId(Axis::Y));
    let col_group = b.special(Special::GroupId(Axis::X));
    let tile_v = b.const_i(tile as i64);
    let col0 = b.mul(col_group, tile_v);
    let cols_v = b.const_i(cols);
    let lead_idx = body.symbols.unravel(b, row, g.lead())?;
    let src = g.row_source(b, row, &lead_idx)?;
    let start = b.const_i(0);
    let tile_end = b.const_i(tile as i64);
    for_each(b, start, tile_end, |b, c| {
        let col = b.add(col0, c);
        let inside = b.cmp(CmpOp::Lt, col, cols_v);
        let mut failure = Ok(());
        b.if_then(inside, |b| {
            failure = (|| {
                let mut mm_cols = Vec::with_capacity(offsets.len());
                let mut dots = Vec::with_capacity(offsets.len());
                for &o in offsets {
                    let o = b.const_i(o);
                    let mm_col = b.add(col, o);
                    dots.push(g.dot(b, &src, mm_col)?);
                    mm_cols.push(mm_col);
                }
                let idx: Vec<Value> = lead_idx.iter().copied().chain([col]).collect();
                store_output(b, body, g.m, (false, &mm_cols, &dots), &idx, out)
            })();
        });
        failure
    })
}

/// The matmul columns output column `j` of the result reads, as offsets `o` (it reads `j + o`),
/// when every path from the result to the matmul `m` goes through elementwise ops of one shape
/// and constant last-axis slices; `None` otherwise (the epilogue then computes each column it
/// asks for on its own).
pub(super) fn column_offsets(body: &Body, arg: BodyArg, m: usize) -> Option<Vec<i64>> {
    let j = match arg {
        BodyArg::Input(_) => return Some(vec![]),
        BodyArg::Op(j) if j == m => return Some(vec![0]),
        BodyArg::Op(j) => j,
    };
    let step = &body.ops[j];
    let shape = &body.types[j].shape;
    let mut offsets = Vec::new();
    for &a in &step.args {
        let inner = column_offsets(body, a, m)?;
        let shifted = match &step.op {
            _ if inner.is_empty() => inner,
            Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast { .. }
                if body.ty(a).shape == *shape =>
            {
                inner
            }
            Op::Slice { axis, start, .. } if *axis + 1 == shape.len() => {
                let start = start.as_const()?;
                inner.into_iter().map(|o| o + start).collect()
            }
            _ => return None,
        };
        offsets.extend(shifted);
    }
    offsets.sort_unstable();
    offsets.dedup();
    Some(offsets)
}

/// Writes the output element whose matmul column is `idx`'s last index, given the dot products
/// `dots` of the row's matmul columns `mm_cols`: through the epilogue in place (each matmul
/// element it asks for is picked among `dots` by comparing columns), or, for an epilogue that
/// moves elements to other rows, where [`Body::forward`] maps it.
pub(super) fn store_output(
    b: &mut KernelBuilder,
    body: &Body,
    m: usize,
    (scatter, mm_cols, dots): (bool, &[Value], &[Value]),
    idx: &[Value],
    out: BufRef,
) -> Result<(), String> {
    let col = *idx.last().ok_or("a matmul of a scalar")?;
    let pick = |b: &mut KernelBuilder, want: Value| {
        let missing = b.const_f(f64::NAN);
        mm_cols.iter().zip(dots).rev().fold(missing, |v, (&c, &d)| {
            let hit = b.cmp(CmpOp::Eq, want, c);
            b.select(hit, d, v)
        })
    };
    let at = if scatter {
        body.forward(b, m, idx)?
    } else {
        idx.to_vec()
    };
    let hook = |b: &mut KernelBuilder, want: &[Value]| {
        let want = if scatter {
            col
        } else {
            *want.last().ok_or("a matmul of a scalar")?
        };
        Ok(pick(b, want))
    };
    let value = body.value(b, body.result(), &at, Some((m, &hook)))?;
    let offset = body.symbols.ravel(b, &at, &body.ty(body.result()).shape)?;
    b.store(out, offset, value);
    Ok(())
}
