//! The quantized matmul template (`QGemv`, and `QGemm` with [`GEMM_ROWS`] rows per group):
//! `[elementwise prologue, at most one RmsNorm or LayerNorm] QuantMatMul{transpose_b}(x, w)
//! [epilogue]` with `w` a Q8_0 or Q4_0 weight `[N, K]` in GGUF blocks (see `ir::quant`), read
//! as bytes and never dequantized to memory. A group computes `tile` output columns of its lhs
//! rows:
//!
//! 1. each lhs row (the prologue evaluated, the norm applied) is quantized to 8 bits per block of
//!    32 — `d_x = amax/127`, `q = round(x/d_x)`, as llama.cpp's `quantize_row_q8_0` — into
//!    private memory, once per group;
//! 2. each weight block is an integer dot product of its codes with the row's codes, always the
//!    unsigned × signed [`Intrinsic::Dot4U8I8Packed`] (one `vpdpbusd` on VNNI hosts): Q4_0's
//!    unsigned 4-bit codes against the signed row, its `−8` offset applied once per block as
//!    `8·Σq`; for Q8_0 the row is stored offset by +128 and `128·Σw` (a dot product with ones)
//!    subtracted; scaled by `d_w·d_x` into an f32x4 accumulator. One pass over the blocks serves
//!    several weight rows (each row's codes loaded once) and all the group's lhs rows (each
//!    weight block decoded once);
//! 3. the epilogue is evaluated per output element. The matmul columns it reads are found from
//!    its slices (SwiGLU's `silu(gate)·up` over merged gate/up reads `j` and `j + H`) and computed
//!    in that one pass; an epilogue that moves elements to other rows (a head split) is written
//!    where [`Body::forward`] maps each element; any other gets each column it asks for alone.
//!
//! Rounding the activations to 8 bits is the approximation llama.cpp's quantized kernels make;
//! the weights are exact. The tile is chosen so a row splits into about [`GROUPS_PER_ROW`]
//! groups: enough for a thread pool to balance, few enough that quantizing the row once per
//! group is a small fraction of the group's work.

use super::expr::{fold_many, for_each, load_f32, Body};
use super::gemv::{
    column_offsets, row_source, store_output, transposed_matmul, RowSource, GROUPS_PER_ROW,
};
use tessera_ir::kernel::BodyArg;
use tessera_ir::lir::{
    Axis, BinaryOp, BufRef, CmpOp, Intrinsic, KernelBuilder, Literal, MemorySpace, ReduceOp,
    ScalarType, SizeExpr, Special, Type, UnaryOp, Value,
};
use tessera_ir::{DType, QK};

/// Rows of a QGemm group: each decoded weight block feeds this many rows' dot products.
pub(super) const GEMM_ROWS: i64 = 4;

/// What Q8_0 kernels add to the activation codes to make them unsigned (a power of two: its
/// `log2` is the shift in [`column_dots`]), so both formats use the unsigned × signed dot product.
const Q8_OFFSET: i64 = 128;

/// f32x4 vectors (and packed `u32` code words) per block of 32 values.
const VECTORS_PER_BLOCK: i64 = QK as i64 / 4;

/// The byte layout of a weight block format.
#[derive(Clone, Copy)]
struct Format {
    /// Bytes per block of 32 values (f16 scale + codes).
    block_bytes: i64,
    /// Q4_0: unsigned 4-bit codes with an offset of 8; Q8_0: signed bytes.
    nibbles: bool,
}

impl Format {
    fn of(dtype: DType) -> Result<Format, String> {
        match (dtype, dtype.quant_block()) {
            (DType::Q8_0 | DType::Q4_0, Some(block)) if block.elems == QK => Ok(Format {
                block_bytes: block.bytes as i64,
                nibbles: dtype == DType::Q4_0,
            }),
            _ => Err(format!("quantized matmul weight of dtype {dtype}")),
        }
    }
}

/// The private buffers holding a group's quantized lhs row.
struct QuantizedRow {
    /// The 8-bit codes, four per `u32`.
    codes: BufRef,
    /// `d_x` per block.
    scales: BufRef,
    /// Q4_0's offset correction as the integer dot products' starting value: `[−8·Σq, 0, 0, 0]`
    /// per block.
    offsets: BufRef,
}

/// Writes the quantized matmul kernel of `body` into `b`, storing to `out`.
/// `rows_per_group` lhs rows share each weight block's decoding (QGemm; 1 for QGemv).
pub(super) fn lower(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
    rows_per_group: i64,
) -> Result<(), String> {
    let (m, n, k) = transposed_matmul(body, true)?;
    let mm = &body.ops[m];
    let format = Format::of(body.ty(mm.args[1]).dtype)?;
    let w = match mm.args[1] {
        BodyArg::Input(i) => body.buffers[i],
        BodyArg::Op(_) => return Err("a computed quantized weight".into()),
    };
    let mm_shape = &body.types[m].shape;
    let lead = &mm_shape[..mm_shape.len() - 1];
    let out_shape = &body.ty(body.result()).shape;
    let (out_cols, out_lead) = out_shape.split_last().ok_or("a matmul of a scalar")?;
    // An epilogue that keeps the rows is evaluated per output column (it may read several
    // matmul columns); one that moves elements to other rows (a head split: reshape + permute)
    // must map each matmul element to one output element, which is written where it lands.
    let scatter = out_lead != lead;
    let cols = if scatter {
        n
    } else {
        out_cols
            .as_const()
            .ok_or("an output with a symbolic last axis")?
    };
    let tile = (cols + GROUPS_PER_ROW - 1) / GROUPS_PER_ROW;
    let tile = ((tile + 3) / 4 * 4).max(4);
    b.grid([
        SizeExpr::Const(cols as u64).ceil_div(tile as u64),
        body.symbols
            .numel_size(lead)?
            .ceil_div(rows_per_group as u64),
        SizeExpr::Const(1),
    ]);
    let row_group = b.special(Special::GroupId(Axis::Y));
    let col_group = b.special(Special::GroupId(Axis::X));
    // Rows past the last (in the last group) are computed on the last row and not stored.
    let total_rows = body.symbols.numel(b, lead)?;
    let one = b.const_i(1);
    let last_row = b.sub(total_rows, one);
    let per_group = b.const_i(rows_per_group);
    let first_row = b.mul(row_group, per_group);
    let mut rows = Vec::new();
    for r in 0..rows_per_group {
        let r = b.const_i(r);
        let row = b.add(first_row, r);
        let clamped = b.binary(BinaryOp::Min, row, last_row);
        let lead_idx = body.symbols.unravel(b, clamped, lead)?;
        let source = row_source(b, body, m, k, clamped, &lead_idx)?;
        let q = quantize_row(b, &source, k, format)?;
        rows.push((row, lead_idx, q));
    }
    let quantized: Vec<&QuantizedRow> = rows.iter().map(|(_, _, q)| q).collect();
    let weight = (w, format, k);
    // The matmul columns an output column reads, as offsets from it: known for the scatter
    // path and for epilogues of elementwise ops and last-axis slices (SwiGLU reads j and j + H).
    // Their dot products share the row's loads in one pass over the blocks; a lone column is
    // paired with the next output column for the same reason.
    let offsets = if scatter {
        Some(vec![0])
    } else {
        column_offsets(body, body.result(), m)
    };
    let step = match &offsets {
        Some(o) if o.len() == 1 => 2,
        _ => 1,
    };
    let (tile_v, step_v) = (b.const_i(tile), b.const_i(step));
    let col0 = b.mul(col_group, tile_v);
    let (cols_v, last_col) = (b.const_i(cols), b.const_i(cols - 1));
    let (zero, steps) = (b.const_i(0), b.const_i(tile / step));
    for_each(b, zero, steps, |b, c| {
        let first = b.mul(c, step_v);
        let first = b.add(col0, first);
        let inside = b.cmp(CmpOp::Lt, first, cols_v);
        let mut failure = Ok(());
        b.if_then(inside, |b| {
            // Columns past the end (the second of a pair) are computed on the last column and
            // not stored, so every read stays in bounds.
            let outs: Vec<Value> = (0..step)
                .map(|s| {
                    let s = b.const_i(s);
                    let o = b.add(first, s);
                    b.binary(BinaryOp::Min, o, last_col)
                })
                .collect();
            failure = match &offsets {
                Some(offsets) => {
                    let mut mm_cols = Vec::with_capacity(outs.len() * offsets.len());
                    for &o in &outs {
                        for &off in offsets {
                            let off = b.const_i(off);
                            mm_cols.push(b.add(o, off));
                        }
                    }
                    let dots = column_dots(b, weight, &quantized, &mm_cols);
                    dots.and_then(|dots| {
                        for_rows(b, &rows, total_rows, |b, r, lead_idx| {
                            outs.iter().enumerate().try_for_each(|(s, &col)| {
                                let idx: Vec<Value> =
                                    lead_idx.iter().copied().chain([col]).collect();
                                let found = (scatter, mm_cols.as_slice(), dots[r].as_slice());
                                let stored = (s > 0).then(|| {
                                    let s = b.const_i(s as i64);
                                    let next = b.add(first, s);
                                    b.cmp(CmpOp::Lt, next, cols_v)
                                });
                                when(b, stored, |b| store_output(b, body, m, found, &idx, out))
                            })
                        })
                    })
                }
                None => for_rows(b, &rows, total_rows, |b, r, lead_idx| {
                    let hook = |b: &mut KernelBuilder, at: &[Value]| {
                        let (&mm_col, at_lead) = at.split_last().ok_or("a matmul of a scalar")?;
                        if at_lead != lead_idx {
                            return Err("an epilogue reading the matmul at another row".into());
                        }
                        column_dots(b, weight, &quantized[r..=r], &[mm_col]).map(|d| d[0][0])
                    };
                    let idx: Vec<Value> = lead_idx.iter().copied().chain([first]).collect();
                    let v = body.value(b, body.result(), &idx, Some((m, &hook)))?;
                    let at = body.symbols.ravel(b, &idx, out_shape)?;
                    b.store(out, at, v);
                    Ok(())
                }),
            };
        });
        failure
    })
}

/// Runs `f(b, r, lead index)` for each of the group's rows that exists (the first always does).
fn for_rows(
    b: &mut KernelBuilder,
    rows: &[(Value, Vec<Value>, QuantizedRow)],
    total_rows: Value,
    mut f: impl FnMut(&mut KernelBuilder, usize, &[Value]) -> Result<(), String>,
) -> Result<(), String> {
    rows.iter()
        .enumerate()
        .try_for_each(|(r, (row, lead_idx, _))| {
            let exists = (r > 0).then(|| b.cmp(CmpOp::Lt, *row, total_rows));
            when(b, exists, |b| f(b, r, lead_idx))
        })
}

/// Emits `f` under `condition`, or unconditionally without one; a loop or branch body cannot
/// return an error, so `f`'s is returned after it.
fn when(
    b: &mut KernelBuilder,
    condition: Option<Value>,
    f: impl FnOnce(&mut KernelBuilder) -> Result<(), String>,
) -> Result<(), String> {
    let Some(condition) = condition else {
        return f(b);
    };
    let mut result = Ok(());
    b.if_then(condition, |b| result = f(b));
    result
}

/// Quantizes the row read from `src` block by block into private codes, scales and (for Q4_0)
/// offset corrections.
fn quantize_row(
    b: &mut KernelBuilder,
    src: &RowSource,
    k: i64,
    format: Format,
) -> Result<QuantizedRow, String> {
    if k % QK as i64 != 0 {
        return Err(format!("a reduction of {k}, not whole blocks of {QK}"));
    }
    let blocks = k / QK as i64;
    let len = |n: i64| u32::try_from(n).map_err(|_| "a reduction longer than u32".to_string());
    let row = QuantizedRow {
        codes: b.local(
            "x_codes",
            MemorySpace::Private,
            ScalarType::U32,
            len(k / 4)?,
        ),
        scales: b.local(
            "x_scales",
            MemorySpace::Private,
            ScalarType::F32,
            len(blocks)?,
        ),
        offsets: b.local(
            "x_offsets",
            MemorySpace::Private,
            ScalarType::I32,
            len(blocks * 4)?,
        ),
    };
    let zero = b.const_i(0);
    let blocks_v = b.const_i(blocks);
    let qk = b.const_i(QK as i64);
    let words_per_block = b.const_i(VECTORS_PER_BLOCK);
    let (fzero, f127) = (b.const_f(0.0), b.const_f(127.0));
    let minus_eight = b.constant(Type::scalar(ScalarType::I32), Literal::I(-8));
    let izero = b.constant(Type::scalar(ScalarType::I32), Literal::I(0));
    let (half, neg_half) = (b.const_f(0.5), b.const_f(-0.5));
    let (half, neg_half, fzero4) = (b.splat(half, 4), b.splat(neg_half, 4), b.splat(fzero, 4));
    let byte = b.constant(Type::scalar(ScalarType::I32), Literal::I(0xff));
    let byte = b.splat(byte, 4);
    let offset = b.constant(Type::scalar(ScalarType::I32), Literal::I(Q8_OFFSET));
    let offset = b.splat(offset, 4);
    let shifts: Vec<Value> = (0..4)
        .map(|l| b.constant(Type::scalar(ScalarType::I32), Literal::I(8 * l)))
        .collect();
    for_each(b, zero, blocks_v, |b, j| {
        let first = b.mul(j, qk);
        let values: Vec<Value> = (0..VECTORS_PER_BLOCK)
            .map(|v| {
                let off = b.const_i(v * 4);
                let i = b.add(first, off);
                let at = b.add(src.base, i);
                let x = load_f32(b, src.buf, at, 4);
                match src.norm {
                    Some((r, g)) => {
                        let r = b.splat(r, 4);
                        let xr = b.mul(x, r);
                        let gv = load_f32(b, g, i, 4);
                        b.mul(xr, gv)
                    }
                    None => x,
                }
            })
            .collect();
        let amax = values
            .iter()
            .map(|&v| b.unary(UnaryOp::Abs, v))
            .collect::<Vec<_>>()
            .into_iter()
            .reduce(|a, c| b.binary(BinaryOp::Max, a, c))
            .expect("a block has vectors");
        let amax = b.reduce_lanes(ReduceOp::Max, amax);
        let d = b.div(amax, f127);
        b.store(row.scales, j, d);
        let positive = b.cmp(CmpOp::Gt, amax, fzero);
        let inv = b.div(f127, amax);
        let inv = b.select(positive, inv, fzero);
        let inv = b.splat(inv, 4);
        let words = b.mul(j, words_per_block);
        let mut sum = None;
        for (v, &x) in values.iter().enumerate() {
            // Round half away from zero: truncate x/d ± 0.5.
            let negative = b.cmp(CmpOp::Lt, x, fzero4);
            let bias = b.select(negative, neg_half, half);
            let scaled = b.fma(x, inv, bias);
            let q = b.cast(ScalarType::I32, scaled);
            sum = Some(match sum {
                None => q,
                Some(s) => b.add(s, q),
            });
            let code = if format.nibbles { q } else { b.add(q, offset) };
            let bytes = b.binary(BinaryOp::And, code, byte);
            let word = (0..4)
                .map(|l| {
                    let lane = b.extract(bytes, l);
                    b.binary(BinaryOp::Shl, lane, shifts[l as usize])
                })
                .collect::<Vec<_>>()
                .into_iter()
                .reduce(|a, c| b.binary(BinaryOp::Or, a, c))
                .expect("four lanes");
            let word = b.bitcast(ScalarType::U32, 1, word);
            let v = b.const_i(v as i64);
            let at = b.add(words, v);
            b.store(row.codes, at, word);
        }
        if format.nibbles {
            let total = b.reduce_lanes(ReduceOp::Add, sum.expect("a block has vectors"));
            let offset = b.mul(total, minus_eight);
            let four = b.const_i(4);
            let at = b.mul(j, four);
            b.store(row.offsets, at, offset);
            for lane in 1..4 {
                let l = b.const_i(lane);
                let at = b.add(at, l);
                b.store(row.offsets, at, izero);
            }
        }
        Ok(())
    })?;
    Ok(row)
}

/// The dot products of the quantized lhs rows `rows` with weight rows `cols` (`[row][col]`), in
/// one pass over the blocks: each weight block is decoded once for all rows and each row's codes
/// loaded once for all columns; per block, row and column, an integer dot product of the codes
/// (Q4_0's starting at the row's offset correction) scaled by `d_w·d_x`, in an f32x4
/// accumulator.
fn column_dots(
    b: &mut KernelBuilder,
    (w, format, k): (BufRef, Format, i64),
    rows: &[&QuantizedRow],
    cols: &[Value],
) -> Result<Vec<Vec<Value>>, String> {
    let blocks = k / QK as i64;
    let row_bytes = b.const_i(blocks * format.block_bytes);
    let block_bytes = b.const_i(format.block_bytes);
    let zero = b.const_i(0);
    let blocks_v = b.const_i(blocks);
    let fzero = b.const_f(0.0);
    let acc0 = b.splat(fzero, 4);
    let izero = b.constant(Type::scalar(ScalarType::I32), Literal::I(0));
    let izero = b.splat(izero, 4);
    let words_per_block = b.const_i(VECTORS_PER_BLOCK);
    let (two, four, sixteen) = (b.const_i(2), b.const_i(4), b.const_i(16));
    let u32x4 = Type::vector(ScalarType::U32, 4);
    let byte = |b: &mut KernelBuilder, v: i64| {
        let c = b.constant(Type::scalar(ScalarType::U8), Literal::I(v));
        b.splat(c, 16)
    };
    let (low_nibble, nibble_shift) = (byte(b, 0x0f), byte(b, 4));
    let ones = byte(b, 1);
    let ones = b.bitcast(ScalarType::U32, 4, ones);
    let offset_shift = Literal::I(i64::from(Q8_OFFSET.trailing_zeros()));
    let offset_shift = b.constant(Type::scalar(ScalarType::I32), offset_shift);
    let offset_shift = b.splat(offset_shift, 4);
    let (nr, nc) = (rows.len(), cols.len());
    let mut init = vec![acc0; nr * nc];
    for &c in cols {
        init.push(b.mul(c, row_bytes));
    }
    let carried = fold_many(b, (zero, blocks_v, 1), &init, |b, j, carried| {
        let x_at = b.mul(j, words_per_block);
        let x_hi_at = b.add(x_at, four);
        let offset_at = b.mul(j, four);
        let xs: Vec<_> = rows
            .iter()
            .map(|q| {
                let dx = b.load(q.scales, j, 1);
                let lo = b.load(q.codes, x_at, 4);
                let hi = b.load(q.codes, x_hi_at, 4);
                let offset = format.nibbles.then(|| b.load(q.offsets, offset_at, 4));
                (dx, lo, hi, offset)
            })
            .collect();
        let mut next = carried.to_vec();
        for i in 0..nc {
            let at = carried[nr * nc + i];
            let dw = block_scale(b, w, at);
            let codes_at = b.add(at, two);
            // The block's codes as two u32x4 (Q4_0: the low and high nibbles) and, for Q8_0,
            // 128·Σw (the row offset's correction).
            let (lo, hi, correction) = if format.nibbles {
                let packed = b.load_bytes(w, codes_at, Type::vector(ScalarType::U8, 16));
                let lo = b.binary(BinaryOp::And, packed, low_nibble);
                let hi = b.binary(BinaryOp::Shr, packed, nibble_shift);
                let lo = b.bitcast(ScalarType::U32, 4, lo);
                (lo, b.bitcast(ScalarType::U32, 4, hi), None)
            } else {
                let lo = b.load_bytes(w, codes_at, u32x4);
                let hi_at = b.add(codes_at, sixteen);
                let hi = b.load_bytes(w, hi_at, u32x4);
                let sw = b.intrinsic(Intrinsic::Dot4U8I8Packed, &[ones, lo, izero]);
                let sw = b.intrinsic(Intrinsic::Dot4U8I8Packed, &[ones, hi, sw]);
                (lo, hi, Some(b.binary(BinaryOp::Shl, sw, offset_shift)))
            };
            for (r, &(dx, x_lo, x_hi, offset)) in xs.iter().enumerate() {
                let isum = match (offset, correction) {
                    (Some(offset), _) => {
                        let s = b.intrinsic(Intrinsic::Dot4U8I8Packed, &[lo, x_lo, offset]);
                        b.intrinsic(Intrinsic::Dot4U8I8Packed, &[hi, x_hi, s])
                    }
                    (None, Some(sw)) => {
                        // Σ(q + 128)·w − 128·Σw, both unsigned × signed.
                        let s = b.intrinsic(Intrinsic::Dot4U8I8Packed, &[x_lo, lo, izero]);
                        let s = b.intrinsic(Intrinsic::Dot4U8I8Packed, &[x_hi, hi, s]);
                        b.sub(s, sw)
                    }
                    (None, None) => unreachable!("Q8_0 blocks have a correction"),
                };
                let d = b.mul(dw, dx);
                let sum = b.cast(ScalarType::F32, isum);
                let dv = b.splat(d, 4);
                next[r * nc + i] = b.fma(sum, dv, carried[r * nc + i]);
            }
            next[nr * nc + i] = b.add(at, block_bytes);
        }
        Ok(next)
    })?;
    Ok(carried[..nr * nc]
        .chunks(nc)
        .map(|row| {
            row.iter()
                .map(|&acc| b.reduce_lanes(ReduceOp::Add, acc))
                .collect()
        })
        .collect())
}

/// The f16 scale `d` starting at byte `at` of a block, as f32, in integer ops: exponent and
/// mantissa shifted into place with the sign, then rescaled by 2^112 (which also normalizes
/// subnormals). Exact for finite scales — quantizing finite weights only produces finite ones,
/// and `compile --quant` refuses non-finite weights — and 8 instructions where the general
/// conversion (`Cast`, which also rebuilds infinities and NaNs) takes 16. Reads 4 bytes: the
/// scale and the block's first two code bytes.
fn block_scale(b: &mut KernelBuilder, w: BufRef, at: Value) -> Value {
    let int =
        |b: &mut KernelBuilder, v: i64| b.constant(Type::scalar(ScalarType::I32), Literal::I(v));
    let word = b.load_bytes(w, at, Type::scalar(ScalarType::I32));
    let (magnitude_mask, sign_mask) = (int(b, 0x7fff), int(b, 0x8000));
    let (thirteen, sixteen) = (int(b, 13), int(b, 16));
    let magnitude = b.binary(BinaryOp::And, word, magnitude_mask);
    let magnitude = b.binary(BinaryOp::Shl, magnitude, thirteen);
    let sign = b.binary(BinaryOp::And, word, sign_mask);
    let sign = b.binary(BinaryOp::Shl, sign, sixteen);
    let bits = b.binary(BinaryOp::Or, magnitude, sign);
    let f = b.bitcast(ScalarType::F32, 1, bits);
    let rescale = b.const_f(2f64.powi(112));
    b.mul(f, rescale)
}
