//! The SIMT GEMM template (prefill, `Gemm` and `FlatGemm`): the bodies the gemv templates take,
//! `[elementwise prologue, at most one RmsNorm or LayerNorm] MatMul{transpose_b} [epilogue]`
//! with a float weight `W [N, K]` (f16/bf16 widened as loaded), tiled through shared memory.
//!
//! A workgroup of [`WORKGROUP`] threads, a `threads_y × threads_x` grid, computes a [`Tile`] of
//! the output: each thread `rows × cols` outputs strided by the thread grid (so adjacent threads
//! store adjacent columns). The prologue norm's statistics are computed first, once per tile
//! row, into shared memory ([`RowStats`]). Then K is walked in chunks of `tk`: the threads load
//! the lhs chunk and the weight chunk of every matmul column the tile's epilogue reads (SwiGLU
//! over merged gate/up: `j` and `j + H`) into shared memory, lane-strided so adjacent threads
//! read adjacent k (coalesced); a barrier; each thread accumulates its micro-tile from shared
//! memory; a barrier before the next chunk overwrites it. When K and the chunk are multiples of
//! [`VEC`], a thread loads runs of 4 consecutive k (one 8- or 16-byte load each; the layout in
//! shared memory is unchanged): of the weight, and of the lhs when it is an input (an RmsNorm of
//! it applied as the row's factor × the norm's weight); a computed prologue is evaluated element
//! by element.
//! Each thread finally stores its outputs through the [`Sink`].
//!
//! **Tails.** Rows past M and columns past N are loaded clamped to the last row / column and not
//! stored; lhs elements past K are loaded as zero, so the last chunk adds nothing for them.

use super::super::expr::{fold_many, for_each, load_f32, Body, HookFn};
use super::super::gemv::{prologue_norm, Gemv, Lhs, RowSource};
use super::super::lanes::for_each_run;
use super::super::row_reduce::{norm_at, norm_stats, NormStats};
use super::super::Precision;
use super::matmul_store::Sink;
use super::{run_lanes, VEC, WORKGROUP};
use tessera_ir::lir::{
    Axis, BinaryOp, BufRef, Capabilities, CmpOp, KernelBuilder, Literal, MemorySpace, ScalarType,
    SizeExpr, Special, Type, Value,
};
use tessera_ir::Op;

/// A workgroup's output tile: a `threads_y × threads_x` grid of threads ([`WORKGROUP`] in all),
/// each computing `rows × cols` outputs.
#[derive(Clone, Copy)]
pub(super) struct Tile {
    threads_y: u32,
    threads_x: u32,
    rows: u32,
    cols: u32,
}

/// `Gemm`: 64×64 outputs, 4×4 per thread, so each value loaded from shared memory feeds 4 fmas.
pub(super) const SQUARE: Tile = Tile {
    threads_y: 16,
    threads_x: 16,
    rows: 4,
    cols: 4,
};

/// `FlatGemm` (few rows): 8×128 outputs, 1×4 per thread, wasting less of the tile past M.
pub(super) const FLAT: Tile = Tile {
    threads_y: 8,
    threads_x: 32,
    rows: 1,
    cols: 4,
};

/// k per shared-memory chunk, when the device's shared memory holds it ([`chunk_k`]).
const TK: u32 = 16;

/// Writes the SIMT GEMM kernel of `body` with output tile `tile` into `b`, storing to `sink`.
pub(super) fn lower(
    b: &mut KernelBuilder,
    body: &Body,
    sink: &Sink,
    tile: Tile,
    (caps, precision): (&Capabilities, Precision),
) -> Result<(), String> {
    let g = Gemv::parse(body)?;
    let half = precision == Precision::F16;
    if half && !caps.f16 {
        return Err("f16 arithmetic (--precision f16) on a device without shader-f16".into());
    }
    let staged = if half {
        ScalarType::F16
    } else {
        ScalarType::F32
    };
    let (offsets, cols) = sink.columns();
    let (tm, tn) = (tile.threads_y * tile.rows, tile.threads_x * tile.cols);
    // Weight rows per chunk: the tile's columns for each offset the epilogue reads.
    let nw = tn * offsets.len() as u32;
    let norm = prologue_norm(body, g.m)?;
    let tk = chunk_k(caps, (tm, nw), norm.is_some(), staged)?;
    b.grid([
        SizeExpr::Const(cols as u64).ceil_div(u64::from(tn)),
        body.symbols.numel_size(g.lead())?.ceil_div(u64::from(tm)),
        SizeExpr::Const(1),
    ]);
    let lane = b.special(Special::LocalId(Axis::X));
    let threads_x = b.const_i(i64::from(tile.threads_x));
    let (ty, tx) = (
        b.div(lane, threads_x),
        b.binary(BinaryOp::Rem, lane, threads_x),
    );
    let (row_group, col_group) = (
        b.special(Special::GroupId(Axis::Y)),
        b.special(Special::GroupId(Axis::X)),
    );
    let (tm_v, tn_v) = (b.const_i(i64::from(tm)), b.const_i(i64::from(tn)));
    let row0 = b.mul(row_group, tm_v);
    let col0 = b.mul(col_group, tn_v);
    let rows_v = body.symbols.numel(b, g.lead())?;
    let one = b.const_i(1);
    let last_row = b.sub(rows_v, one);
    let rows = TileRows { row0, last_row };
    let stats = RowStats::compute(b, &g, norm, &rows, tm)?;

    let a_tile = b.local("a_tile", MemorySpace::Shared, staged, tk * tm);
    let w_tile = b.local("w_tile", MemorySpace::Shared, staged, tk * nw);
    let (zero, k_v, tk_v) = (b.const_i(0), b.const_i(g.k), b.const_i(i64::from(tk)));
    // Runs of VEC k (one wide load each) when they tile K and the chunk; the last run's start
    // is where reads past K are clamped to.
    let lanes = match run_lanes(g.k) {
        VEC if tk % VEC == 0 => VEC,
        _ => 1,
    };
    let last_run = b.const_i(g.k - i64::from(lanes));
    let (last_col, cols_v) = (b.const_i(cols - 1), b.const_i(cols));
    let zero_f = b.const_f(0.0);
    let zero_run = b.splat(zero_f, lanes);
    let init = vec![zero_f; (tile.rows * tile.cols) as usize * offsets.len()];
    let lhs = body.ops[g.m].args[0];
    let nw_v = b.const_i(i64::from(nw));
    let accs = fold_many(b, (zero, k_v, tk), &init, |b, k0, accs| {
        // The lhs chunk, a_tile[kk·tm + i] = A[row0 + i, k0 + kk].
        for_each_run(b, body, (tm, tk), lanes, |b, i, kk| {
            let k = b.add(k0, kk);
            let inside = b.cmp(CmpOp::Lt, k, k_v);
            let k = b.binary(BinaryOp::Min, k, last_run);
            let x = match g.lhs {
                Lhs::Direct { x, norm } => {
                    let row = rows.row(b, i);
                    let base = b.mul(row, k_v);
                    let norm = match (norm, &stats) {
                        (Some((w, _)), Some(stats)) => Some((b.load(stats.factors, i, 1), w)),
                        _ => None,
                    };
                    RowSource { buf: x, base, norm }.load(b, k, lanes)
                }
                Lhs::Computed => {
                    let lead_idx = rows.lead_idx(b, &g, i)?;
                    let hook = stats.as_ref().map(|s| s.hook(b, body, i));
                    let hook = hook.as_ref().map(|(r, f)| (*r, &**f));
                    let at: Vec<Value> = lead_idx.into_iter().chain([k]).collect();
                    body.values(b, lhs, &at, lanes, hook)?
                }
            };
            let x = b.select(inside, x, zero_run);
            let x = narrowed(b, x, staged);
            store_k_major(b, (a_tile, tm_v), (kk, i), x);
            Ok(())
        })?;
        // The weight chunk, w_tile[kk·nw + o·tn + c] = W[col0 + c + offset o, k0 + kk].
        for (o, &offset) in offsets.iter().enumerate() {
            let (offset, o_base) = (b.const_i(offset), b.const_i(o as i64 * i64::from(tn)));
            for_each_run(b, body, (tn, tk), lanes, |b, c, kk| {
                let col = b.add(col0, c);
                let col = b.binary(BinaryOp::Min, col, last_col);
                let col = b.add(col, offset);
                let k = b.add(k0, kk);
                let k = b.binary(BinaryOp::Min, k, last_run);
                let at = b.mul(col, k_v);
                let at = b.add(at, k);
                let w = load_f32(b, g.w, at, lanes);
                let w = narrowed(b, w, staged);
                let slot = b.add(o_base, c);
                store_k_major(b, (w_tile, nw_v), (kk, slot), w);
                Ok(())
            })?;
        }
        b.barrier();
        // In f16, the chunk's products are summed apart and added to the f32 sums after it.
        let chunk_init = if half {
            let zero_h = b.constant(Type::scalar(ScalarType::F16), Literal::F(0.0));
            vec![zero_h; accs.len()]
        } else {
            accs.to_vec()
        };
        let sums = fold_many(b, (zero, tk_v, 1), &chunk_init, |b, kk, accs| {
            let a_base = b.mul(kk, tm_v);
            let a_base = b.add(a_base, ty);
            let a: Vec<Value> = (0..tile.rows)
                .map(|r| {
                    let at = b.const_i(i64::from(r * tile.threads_y));
                    let at = b.add(a_base, at);
                    b.load(a_tile, at, 1)
                })
                .collect();
            let w_base = b.mul(kk, nw_v);
            let w_base = b.add(w_base, tx);
            // w[c·offsets + o]: the weights of the thread's column c for offset o.
            let mut w = Vec::with_capacity(tile.cols as usize * offsets.len());
            for c in 0..tile.cols {
                for o in 0..offsets.len() as u32 {
                    let at = b.const_i(i64::from(o * tn + c * tile.threads_x));
                    let at = b.add(w_base, at);
                    w.push(b.load(w_tile, at, 1));
                }
            }
            Ok(accs
                .chunks(w.len())
                .zip(&a)
                .flat_map(|(accs, &a)| {
                    accs.iter()
                        .zip(&w)
                        .map(|(&acc, &w)| b.fma(a, w, acc))
                        .collect::<Vec<_>>()
                })
                .collect())
        })?;
        b.barrier();
        if !half {
            return Ok(sums);
        }
        Ok(accs
            .iter()
            .zip(sums)
            .map(|(&acc, s)| {
                let s = b.cast(ScalarType::F32, s);
                b.add(acc, s)
            })
            .collect())
    })?;

    let per_output = accs.chunks(offsets.len());
    for (n, dots) in per_output.enumerate() {
        let (r, c) = (n as u32 / tile.cols, n as u32 % tile.cols);
        let i = b.const_i(i64::from(r * tile.threads_y));
        let i = b.add(ty, i);
        let row = b.add(row0, i);
        let j = b.const_i(i64::from(c * tile.threads_x));
        let j = b.add(tx, j);
        let col = b.add(col0, j);
        let row_in = b.cmp(CmpOp::Lt, row, rows_v);
        let col_in = b.cmp(CmpOp::Lt, col, cols_v);
        let inside = b.binary(BinaryOp::And, row_in, col_in);
        let mut stored = Ok(());
        b.if_then(inside, |b| {
            stored = (|| {
                let lead_idx = rows.lead_idx(b, &g, i)?;
                let mm_cols: Vec<Value> = offsets
                    .iter()
                    .map(|&o| {
                        let o = b.const_i(o);
                        b.add(col, o)
                    })
                    .collect();
                sink.store(b, body, g.m, (row, &lead_idx, col), (&mm_cols, dots))
            })();
        });
        stored?;
    }
    Ok(())
}

/// Stores the run `x` of consecutive k from chunk offset `kk` into the k-major shared tile
/// `tile` (rows of `stride` elements per k) at column `at`: lane `l` to `tile[(kk + l)·stride +
/// at]`, so the inner loop reads a k's row of the tile contiguously.
fn store_k_major(
    b: &mut KernelBuilder,
    (tile, stride): (BufRef, Value),
    (kk, at): (Value, Value),
    x: Value,
) {
    let lanes = b.type_of(x).lanes;
    for l in 0..lanes {
        let k = b.const_i(i64::from(l));
        let k = b.add(kk, k);
        let slot = b.mul(k, stride);
        let slot = b.add(slot, at);
        let v = match lanes {
            1 => x,
            _ => b.extract(x, l),
        };
        b.store(tile, slot, v);
    }
}

/// `x` (f32) as the tiles' element type `staged`.
fn narrowed(b: &mut KernelBuilder, x: Value, staged: ScalarType) -> Value {
    match staged {
        ScalarType::F32 => x,
        _ => b.cast(staged, x),
    }
}

/// The largest k chunk, from [`TK`] down by halves, for which the lhs tile (`tm` rows) and the
/// weight tile (`nw` rows) of `staged` elements — plus a norm's statistics and reductions, with
/// `norm` — fit the device's shared memory.
fn chunk_k(
    caps: &Capabilities,
    (tm, nw): (u32, u32),
    norm: bool,
    staged: ScalarType,
) -> Result<u32, String> {
    let f32_bytes = ScalarType::F32.bytes();
    // Per row a factor and a mean; LayerNorm's two reductions of one value per thread.
    let reserved = if norm {
        (2 * tm + 2 * WORKGROUP) * f32_bytes
    } else {
        0
    };
    let fits = |tk: u32| reserved + tk * (tm + nw) * staged.bytes() <= caps.shared_bytes;
    let mut tk = TK;
    while tk > 1 && !fits(tk) {
        tk /= 2;
    }
    if fits(tk) {
        Ok(tk)
    } else {
        Err(format!(
            "a GEMM tile of {tm} lhs and {nw} weight rows beyond {} bytes of shared memory",
            caps.shared_bytes
        ))
    }
}

/// Where a workgroup's tile rows start, and the matmul's last row (tail rows are clamped to it).
struct TileRows {
    row0: Value,
    last_row: Value,
}

impl TileRows {
    /// The matmul row of tile row `i` (clamped).
    fn row(&self, b: &mut KernelBuilder, i: Value) -> Value {
        let row = b.add(self.row0, i);
        b.binary(BinaryOp::Min, row, self.last_row)
    }

    /// The multi-index over the matmul's leading dims of tile row `i` (clamped).
    fn lead_idx(&self, b: &mut KernelBuilder, g: &Gemv, i: Value) -> Result<Vec<Value>, String> {
        let row = self.row(b, i);
        g.body.symbols.unravel(b, row, g.lead())
    }
}

/// The prologue norm's statistics of a workgroup's tile rows, in shared memory.
struct RowStats {
    /// The norm's position in the body.
    norm: usize,
    /// Per tile row, `r = 1/sqrt(var + eps)`.
    factors: BufRef,
    /// Per tile row, the mean (LayerNorm only).
    means: Option<BufRef>,
}

impl RowStats {
    /// The statistics of the `tm` tile rows of the prologue norm at `norm`, if any: a row at a
    /// time, each pass over K shared by the workgroup ([`norm_stats`]), then a barrier.
    fn compute(
        b: &mut KernelBuilder,
        g: &Gemv,
        norm: Option<usize>,
        rows: &TileRows,
        tm: u32,
    ) -> Result<Option<RowStats>, String> {
        let Some(norm) = norm else {
            return Ok(None);
        };
        let body = g.body;
        let op = &body.ops[norm].op;
        let factors = b.local("norm_factors", MemorySpace::Shared, ScalarType::F32, tm);
        let means = matches!(op, Op::LayerNorm { .. })
            .then(|| b.local("norm_means", MemorySpace::Shared, ScalarType::F32, tm));
        let x = body.ops[norm].args[0];
        let lane = b.special(Special::LocalId(Axis::X));
        let (zero, k_v, tm_v) = (b.const_i(0), b.const_i(g.k), b.const_i(i64::from(tm)));
        let first = b.cmp(CmpOp::Eq, lane, zero);
        for_each(b, zero, tm_v, |b, i| {
            let lead_idx = rows.lead_idx(b, g, i)?;
            let stats = norm_stats(b, body, op, k_v, |b, k| {
                let at: Vec<Value> = lead_idx.iter().copied().chain([k]).collect();
                body.value(b, x, &at, None)
            })?;
            b.if_then(first, |b| {
                b.store(factors, i, stats.r);
                if let (Some(means), Some(mean)) = (means, stats.mean) {
                    b.store(means, i, mean);
                }
            });
            Ok(())
        })?;
        b.barrier();
        Ok(Some(RowStats {
            norm,
            factors,
            means,
        }))
    }

    /// The norm at tile row `i`, as a hook for [`Body::value`].
    fn hook<'a>(
        &self,
        b: &mut KernelBuilder,
        body: &'a Body,
        i: Value,
    ) -> (usize, Box<HookFn<'a>>) {
        let r = b.load(self.factors, i, 1);
        let mean = self.means.map(|m| b.load(m, i, 1));
        let stats = NormStats { mean, r };
        (self.norm, norm_at(body, &body.ops[self.norm], stats))
    }
}
