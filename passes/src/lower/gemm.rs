//! The CPU GEMM template (prefill): the bodies the [`super::gemv`] template accepts, `[elementwise
//! prologue, at most one RmsNorm or LayerNorm] MatMul{transpose_b} [epilogue]` with an f32 weight
//! `W [N, K]`, computed for many lhs rows at once: C[m, n] = Σ_k A[m, k]·W[n, k], both operands
//! contiguous in k.
//!
//! **Register block.** The inner kernel computes an [`MR`]×[`NR`] block of C with one f32x4
//! accumulator per element, carried over the k loop: per k step of 4 it loads NR W vectors, then
//! for each of the MR rows one A vector and NR fmas, so each loaded vector feeds several fmas
//! instead of one (the gemv's 2 loads per fma). The lanes are reduced once at the end and the
//! K % 4 tail is scalar. Cranelift neither unrolls nor vectorizes and x86-64 has 16 xmm
//! registers, so the block is sized to them: 4×3 keeps 12 accumulators + 3 W + 1 A vectors live
//! (16) and issues 12 fmas per 7 loads. Measured single-threaded on the 2.6 GHz EPYC dev VM
//! (M = 512, N = 2048, K = 2048, CPU time, medians of 5–7, others compiling): 4×3, 3×4, 2×4 and
//! 4×2 all reach 22–24 GFLOP/s, 4×4 (spilling) 21, 2×2 21, 3×3 19, the gemv path 6.4; with 4×3,
//! [`UNROLL`] = 1, 2, 4 k steps per loop iteration gives 20.5, 22.4, 21.3.
//!
//! **Cache tiling.** A group computes MR rows × a [`PANEL`]-column panel of C (the register block
//! slid along the panel); grid x walks the M blocks and is the fastest-varying group id, so
//! consecutive groups reuse one W panel (PANEL·K floats, L2-resident) while A streams, and each
//! weight row comes from memory once per kernel rather than once per lhs row.
//!
//! **Tails.** Rows past M and columns past N (M is symbolic, `seq`) are computed on the last
//! row/column (clamped indices keep every load in bounds) and not stored.
//!
//! **Prologues and epilogues.** An RmsNorm of a direct f32 lhs is applied as
//! `r_m · Σ_k x[m, k]·(g[k]·W[n, k])`: the norm weight g is folded into the W vectors (NR
//! multiplies per k step, not MR) and each row's factor r_m — computed once per group — scales
//! the reduced sum. Any other prologue (a residual add, a LayerNorm, SwiGLU feeding the down
//! projection) is evaluated once per row and group into a private row ([`gemv::row_source`]),
//! which the register block then reads like a direct lhs. An epilogue that keeps the rows
//! is applied per output column to the block's sums of the matmul columns it reads
//! ([`Gemv::epilogue_columns`]: SwiGLU over merged gate/up reads `j` and `j + H`, computed in the
//! same block, whose output columns shrink so the accumulators still fit); an epilogue that
//! moves elements within their rows (a head split with RoPE) is applied after a group's whole
//! matmul rows are computed into a private tile ([`whole_rows`]); any other remapping takes the
//! gemv template's per-element path ([`gemv::remapped`]).
//!
//! The `tile_m`/`tile_n`/`tile_k` of `Gemm`/`FlatGemm` kernels are the cost model's GPU tiles
//! (shared-memory tiles of 32–128); the CPU block is bound by the register file instead, so they
//! are not used here.

use super::expr::{fold_many, for_each, load_f32, Body};
use super::gemv::{self, Gemv, RowSource};
use tessera_ir::lir::{
    Axis, BinaryOp, BufRef, CmpOp, KernelBuilder, MemorySpace, ReduceOp, ScalarType, SizeExpr,
    Special, Value,
};

/// Rows of C per register block.
const MR: usize = 4;
/// Columns of C per register block.
const NR: usize = 3;
/// Columns of C per group: the register block slides along them, so the rows' norm factors are
/// computed once per PANEL columns and W is read in PANEL-row panels.
const PANEL: i64 = 48;
/// k steps (of 4 lanes for a direct lhs) per iteration of the main k loop.
const UNROLL: i64 = 2;

/// One of a group's MR lhs rows.
struct Row {
    /// Its row-major row number over the matmul's leading dims, unclamped: stored if `< M`.
    raw: Value,
    /// Its multi-index over the leading dims (clamped to the last row).
    lead_idx: Vec<Value>,
    /// Where its values are read (clamped): in place, or its prologue evaluated once.
    src: RowSource,
}

/// Writes the GEMM kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(b: &mut KernelBuilder, body: &Body, out: BufRef) -> Result<(), String> {
    let g = Gemv::parse(body)?;
    let Some((offsets, cols)) = g.epilogue_columns() else {
        return match body.keeps_rows(g.m) {
            Ok(()) => whole_rows(b, &g, out),
            Err(_) => gemv::remapped(b, &g, out),
        };
    };
    // Output columns per register block: each reads `offsets.len()` matmul columns.
    let nr = (NR / offsets.len()).max(1);
    b.grid([
        body.symbols.numel_size(g.lead())?.ceil_div(MR as u64),
        SizeExpr::Const(cols as u64).ceil_div(PANEL as u64),
        SizeExpr::Const(1),
    ]);
    let panel = b.special(Special::GroupId(Axis::Y));
    let (rows, rows_v) = block_rows(b, &g)?;

    let panel_v = b.const_i(PANEL);
    let n0 = b.mul(panel, panel_v);
    let cols_v = b.const_i(cols);
    let n_end = b.add(n0, panel_v);
    let n_end = b.binary(BinaryOp::Min, n_end, cols_v);
    let last_col = b.const_i(cols - 1);
    let k_v = b.const_i(g.k);
    let mut failure = Ok(());
    b.for_range(n0, n_end, nr as u32, &[], |b, c0, _| {
        let outs: Vec<Value> = (0..nr as i64)
            .map(|j| {
                let j = b.const_i(j);
                let col = b.add(c0, j);
                b.binary(BinaryOp::Min, col, last_col)
            })
            .collect();
        let mut mm_cols = Vec::with_capacity(nr * offsets.len());
        for &col in &outs {
            for &o in &offsets {
                let o = b.const_i(o);
                mm_cols.push(b.add(col, o));
            }
        }
        let w_bases: Vec<Value> = mm_cols.iter().map(|&col| b.mul(col, k_v)).collect();
        failure = block(b, &g, &rows, &w_bases).and_then(|sums| {
            for (r, sums) in rows.iter().zip(sums.chunks(mm_cols.len())) {
                let dots: Vec<Value> = sums
                    .iter()
                    .map(|&s| r.src.norm.map_or(s, |(factor, _)| b.mul(s, factor)))
                    .collect();
                for (j, &col) in outs.iter().enumerate() {
                    let j_v = b.const_i(j as i64);
                    let raw_col = b.add(c0, j_v);
                    let row_in = b.cmp(CmpOp::Lt, r.raw, rows_v);
                    let col_in = b.cmp(CmpOp::Lt, raw_col, cols_v);
                    let inside = b.binary(BinaryOp::And, row_in, col_in);
                    let idx: Vec<Value> = r.lead_idx.iter().copied().chain([col]).collect();
                    let mut stored = Ok(());
                    b.if_then(inside, |b| {
                        let found = (false, mm_cols.as_slice(), dots.as_slice());
                        stored = gemv::store_output(b, body, g.m, found, &idx, out);
                    });
                    stored?;
                }
            }
            Ok(())
        });
        vec![]
    });
    failure
}

/// The kernel of an epilogue that moves elements within their rows (a head split with RoPE on
/// the projection, [`Body::keeps_rows`]): a group computes its MR lhs rows' whole matmul rows
/// into a private tile with the register block, then evaluates every output element they map to
/// ([`Body::forward_in_row`]) reading the tile — instead of the per-element dot products of
/// [`gemv::remapped`]. W is streamed once per group rather than kept in L2 panels.
fn whole_rows(b: &mut KernelBuilder, g: &Gemv, out: BufRef) -> Result<(), String> {
    let body = g.body;
    let n = body.types[g.m]
        .shape
        .last()
        .and_then(|d| d.as_const())
        .ok_or("a matmul with a symbolic column count")?;
    let len = u32::try_from(MR as i64 * n).map_err(|_| "matmul rows too long for a tile")?;
    b.grid([
        body.symbols.numel_size(g.lead())?.ceil_div(MR as u64),
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let tile = b.local("rows", MemorySpace::Private, ScalarType::F32, len);
    let (rows, rows_v) = block_rows(b, g)?;
    let (zero, n_v, k_v) = (b.const_i(0), b.const_i(n), b.const_i(g.k));
    let last_col = b.const_i(n - 1);
    let mut failure = Ok(());
    b.for_range(zero, n_v, NR as u32, &[], |b, c0, _| {
        let cols: Vec<Value> = (0..NR as i64)
            .map(|j| {
                let j = b.const_i(j);
                let col = b.add(c0, j);
                b.binary(BinaryOp::Min, col, last_col)
            })
            .collect();
        let w_bases: Vec<Value> = cols.iter().map(|&col| b.mul(col, k_v)).collect();
        failure = block(b, g, &rows, &w_bases).map(|sums| {
            for (i, (r, sums)) in rows.iter().zip(sums.chunks(NR)).enumerate() {
                let row_base = b.const_i(i as i64 * n);
                for (&s, &col) in sums.iter().zip(&cols) {
                    let dot = r.src.norm.map_or(s, |(factor, _)| b.mul(s, factor));
                    let at = b.add(row_base, col);
                    b.store(tile, at, dot);
                }
            }
        });
        vec![]
    });
    failure?;
    let out_shape = &body.ty(body.result()).shape;
    for (i, r) in rows.iter().enumerate() {
        let inside = b.cmp(CmpOp::Lt, r.raw, rows_v);
        let mut stored = Ok(());
        b.if_then(inside, |b| {
            let row_base = b.const_i(i as i64 * n);
            stored = for_each(b, zero, n_v, |b, c| {
                let idx: Vec<Value> = r.lead_idx.iter().copied().chain([c]).collect();
                let at = body.forward_in_row(b, g.m, &idx)?;
                let hook = |b: &mut KernelBuilder, want: &[Value]| {
                    let col = *want.last().ok_or("a matmul of a scalar")?;
                    let e = b.add(row_base, col);
                    Ok(b.load(tile, e, 1))
                };
                let x = body.value(b, body.result(), &at, Some((g.m, &hook)))?;
                let e = body.symbols.ravel(b, &at, out_shape)?;
                b.store(out, e, x);
                Ok(())
            });
        });
        stored?;
    }
    Ok(())
}

/// The MR rows of the block of `GroupId(X)` and the matmul's row count.
fn block_rows(b: &mut KernelBuilder, g: &Gemv) -> Result<(Vec<Row>, Value), String> {
    let m_block = b.special(Special::GroupId(Axis::X));
    let rows_v = g.body.symbols.numel(b, g.lead())?;
    let one = b.const_i(1);
    let last_row = b.sub(rows_v, one);
    let mr = b.const_i(MR as i64);
    let m0 = b.mul(m_block, mr);
    let rows = (0..MR)
        .map(|i| row(b, g, m0, i, last_row))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, rows_v))
}

/// Row `i` of the block starting at row `m0`: its indices, clamped to `last_row`, and where its
/// values are read ([`Gemv::row_source`]).
fn row(
    b: &mut KernelBuilder,
    g: &Gemv,
    m0: Value,
    i: usize,
    last_row: Value,
) -> Result<Row, String> {
    let i_v = b.const_i(i as i64);
    let raw = b.add(m0, i_v);
    let clamped = b.binary(BinaryOp::Min, raw, last_row);
    let lead_idx = g.body.symbols.unravel(b, clamped, g.lead())?;
    let src = g.row_source(b, clamped, &lead_idx)?;
    Ok(Row { raw, lead_idx, src })
}

/// The MR×NR sums Σ_k A[row_i, k]·W[col_j, k] (row-major in the block) for `rows` and the weight
/// rows starting at `w_bases`: vector k steps in an unrolled loop, then the leftover vector
/// steps and the scalar tail straight-line (K is a constant). A direct RmsNorm's factor is left
/// to the caller (`src.norm`), its weight folded into the W vectors.
fn block(
    b: &mut KernelBuilder,
    g: &Gemv,
    rows: &[Row],
    w_bases: &[Value],
) -> Result<Vec<Value>, String> {
    let lanes = g.body.lanes;
    let width = i64::from(lanes);
    let k_vec = g.k - g.k % width;
    let chunk = width * UNROLL;
    let k_main = k_vec - k_vec % chunk;
    let zero_f = b.const_f(0.0);
    let zero = b.splat(zero_f, lanes);
    let mut accs = vec![zero; rows.len() * w_bases.len()];
    if k_main > 0 {
        let start = b.const_i(0);
        let end = b.const_i(k_main);
        let step = u32::try_from(chunk).expect("a small chunk");
        accs = fold_many(b, (start, end, step), &accs, |b, k, accs| {
            let mut accs = accs.to_vec();
            for u in 0..UNROLL {
                let du = b.const_i(u * width);
                let ku = b.add(k, du);
                accs = k_step(b, g, rows, w_bases, ku, lanes, &accs);
            }
            Ok(accs)
        })?;
    }
    for k in (k_main..k_vec).step_by(lanes as usize) {
        let k = b.const_i(k);
        accs = k_step(b, g, rows, w_bases, k, lanes, &accs);
    }
    accs = accs
        .iter()
        .map(|&a| b.reduce_lanes(ReduceOp::Add, a))
        .collect();
    for k in k_vec..g.k {
        let k = b.const_i(k);
        accs = k_step(b, g, rows, w_bases, k, 1, &accs);
    }
    Ok(accs)
}

/// One k step of `lanes` lanes: NR W loads (times the norm weight for a direct norm), then per
/// row one A value and NR fmas.
fn k_step(
    b: &mut KernelBuilder,
    g: &Gemv,
    rows: &[Row],
    w_bases: &[Value],
    k: Value,
    lanes: u32,
    accs: &[Value],
) -> Vec<Value> {
    let norm_w = rows[0].src.norm.map(|(_, nw)| load_f32(b, nw, k, lanes));
    let ws: Vec<Value> = w_bases
        .iter()
        .map(|&base| {
            let at = b.add(base, k);
            let w = load_f32(b, g.w, at, lanes);
            norm_w.map_or(w, |nw| b.mul(w, nw))
        })
        .collect();
    let mut next = Vec::with_capacity(accs.len());
    for (r, accs) in rows.iter().zip(accs.chunks(ws.len())) {
        let at = b.add(r.src.base, k);
        let a = load_f32(b, r.src.buf, at, lanes);
        next.extend(ws.iter().zip(accs).map(|(&w, &acc)| b.fma(a, w, acc)));
    }
    next
}
