//! The SIMT gemv template (decode): `[elementwise prologue, at most one RmsNorm or LayerNorm]
//! MatMul{transpose_b} [epilogue]` with a float weight `[N, K]` (f16/bf16 widened as loaded).
//! A workgroup computes [`COLUMNS`] output columns of one lhs row: its threads split K in runs
//! of [`VEC`] consecutive k ([`sum_runs`]: thread `t` takes `4t, 4t + 4·threads, …`, adjacent
//! threads reading adjacent runs: coalesced), so each weight read is one 8-byte (f16) or
//! 16-byte (f32) load when K is a multiple of 4; a scalar tail takes K % 4. Each thread carries
//! one f32x4 partial dot product per matmul column the epilogue reads ([`column_offsets`]:
//! SwiGLU over merged gate/up reads `j` and `j + H`). The lhs run is read with one vector load
//! when it is an input — an RmsNorm of it applied as the row's factor (computed by the
//! workgroup first) × the norm's weight — and otherwise evaluated through the prologue element
//! by element (the norm's statistics first, shared by the workgroup). The partials are summed
//! across their lanes and the workgroup, and the first thread stores through the [`Sink`]
//! (applying the epilogue, or storing the plain matmul for an epilogue that moves rows).

use super::super::expr::{load_f32, Body, HookFn};
use super::super::gemv::{direct_rms_factor, prologue_norm, Gemv, Lhs, RowSource};
use super::super::lanes::{sum_runs, workgroup_reduce};
use super::super::row_reduce::{norm_at, norm_stats};
use super::matmul_store::Sink;
use super::VEC;
use tessera_ir::lir::{Axis, BinaryOp, CmpOp, KernelBuilder, ReduceOp, SizeExpr, Special, Value};

/// Output columns per workgroup.
const COLUMNS: i64 = 4;

/// Writes the SIMT gemv kernel of `body` into `b`, storing to `sink`.
pub(super) fn lower(b: &mut KernelBuilder, body: &Body, sink: &Sink) -> Result<(), String> {
    let g = Gemv::parse(body)?;
    let (offsets, cols) = sink.columns();
    b.grid([
        SizeExpr::Const(cols as u64).ceil_div(COLUMNS as u64),
        body.symbols.numel_size(g.lead())?,
        SizeExpr::Const(1),
    ]);
    let row = b.special(Special::GroupId(Axis::Y));
    let col_group = b.special(Special::GroupId(Axis::X));
    let lane = b.special(Special::LocalId(Axis::X));
    let lead_idx = body.symbols.unravel(b, row, g.lead())?;
    let k_v = b.const_i(g.k);
    let direct = match g.lhs {
        Lhs::Direct { x, norm } => {
            let base = b.mul(row, k_v);
            let norm = match norm {
                Some((w, eps)) => Some((direct_rms_factor(b, body, VEC, (x, base, g.k), eps)?, w)),
                None => None,
            };
            Some(RowSource { buf: x, base, norm })
        }
        Lhs::Computed => None,
    };
    let hook = match direct {
        Some(_) => None,
        None => prologue_hook(b, body, g.m, k_v, &lead_idx)?,
    };
    let (col0, cols_v, outs, mm_cols) = tile_columns(b, col_group, COLUMNS, cols, offsets);
    // `col·K`: a multiple of 4 when K is, so the weight runs' indices are provably aligned.
    let w_bases: Vec<Value> = mm_cols.iter().map(|&c| b.mul(c, k_v)).collect();
    let lhs = body.ops[g.m].args[0];
    let partials = sum_runs(
        b,
        (lane, body.threads),
        (VEC, g.k),
        mm_cols.len(),
        |b, k, lanes, accs| {
            let x = match &direct {
                Some(src) => src.load(b, k, lanes),
                None => {
                    let at: Vec<Value> = lead_idx.iter().copied().chain([k]).collect();
                    let hook = hook.as_ref().map(|(r, f)| (*r, &**f));
                    body.values(b, lhs, &at, lanes, hook)?
                }
            };
            Ok(w_bases
                .iter()
                .zip(accs)
                .map(|(&base, &acc)| {
                    let at = b.add(base, k);
                    let w = load_f32(b, g.w, at, lanes);
                    b.fma(x, w, acc)
                })
                .collect())
        },
    )?;
    let dots = workgroup_reduce(b, body.workgroup(), &partials, ReduceOp::Add);
    let zero = b.const_i(0);
    let first = b.cmp(CmpOp::Eq, lane, zero);
    let mut failure = Ok(());
    b.if_then(first, |b| {
        let per_col = mm_cols
            .chunks(offsets.len())
            .zip(dots.chunks(offsets.len()));
        failure = (0..COLUMNS)
            .zip(&outs)
            .zip(per_col)
            .try_for_each(|((c, &col), found)| {
                let c = b.const_i(c);
                let raw = b.add(col0, c);
                let inside = b.cmp(CmpOp::Lt, raw, cols_v);
                let mut stored = Ok(());
                b.if_then(inside, |b| {
                    stored = sink.store(b, body, g.m, (row, &lead_idx, col), found);
                });
                stored
            });
    });
    failure
}

/// The columns of column tile `col_group` (`tile` wide) of an output of `cols` columns: its first
/// column, `cols` as a value, the tile's output columns — clamped to the last one (columns past
/// it, in the last tile, are computed on it and not stored) — and, for each, the matmul columns
/// the epilogue reads at `offsets` from it. Shared by gemv and qgemv.
pub(super) fn tile_columns(
    b: &mut KernelBuilder,
    col_group: Value,
    tile: i64,
    cols: i64,
    offsets: &[i64],
) -> (Value, Value, Vec<Value>, Vec<Value>) {
    let tile_v = b.const_i(tile);
    let col0 = b.mul(col_group, tile_v);
    let (cols_v, last_col) = (b.const_i(cols), b.const_i(cols - 1));
    let outs: Vec<Value> = (0..tile)
        .map(|c| {
            let c = b.const_i(c);
            let col = b.add(col0, c);
            b.binary(BinaryOp::Min, col, last_col)
        })
        .collect();
    let mut matmul = Vec::with_capacity(outs.len() * offsets.len());
    for &col in &outs {
        for &o in offsets {
            let o = b.const_i(o);
            matmul.push(b.add(col, o));
        }
    }
    (col0, cols_v, outs, matmul)
}

/// The prologue's norm (ops before the matmul at `m`) at the lhs row `lead_idx` of `k` values,
/// as the hook [`Body::value`] evaluates the lhs with — its statistics computed by the whole
/// workgroup, so this must be reached by all of it — or `None` without a norm.
pub(super) fn prologue_hook<'a>(
    b: &mut KernelBuilder,
    body: &'a Body,
    m: usize,
    k: Value,
    lead_idx: &[Value],
) -> Result<Option<(usize, Box<HookFn<'a>>)>, String> {
    let Some(r) = prologue_norm(body, m)? else {
        return Ok(None);
    };
    let x = body.ops[r].args[0];
    let stats = norm_stats(b, body, &body.ops[r].op, k, |b, i| {
        let at: Vec<Value> = lead_idx.iter().copied().chain([i]).collect();
        body.value(b, x, &at, None)
    })?;
    Ok(Some((r, norm_at(body, &body.ops[r], stats))))
}
