//! The quantized matmul template (`QGemv`, and `QGemm` with [`GEMM_ROWS`] rows per group):
//! `[elementwise prologue, at most one RmsNorm or LayerNorm] QuantMatMul{transpose_b}(x, w)
//! [epilogue]` with `w` a Q8_0 or Q4_0 weight `[N, K]` in GGUF blocks (see `ir::quant`), read
//! as bytes and never dequantized to memory. A group computes `tile` output columns of its lhs
//! rows:
//!
//! 1. each lhs row (the prologue evaluated, the norm applied) is quantized to 8 bits per block of
//!    32 — `d_x = amax/127`, `q = round(x/d_x)`, as llama.cpp's `quantize_row_q8_0` — into
//!    private memory, once per group, in the order the dot products read it ([`Layout`]);
//! 2. each weight block is an integer dot product of its codes with the row's codes, always the
//!    unsigned × signed [`Intrinsic::Dot4U8I8Packed`] (one `vpdpbusd` on VNNI hosts): Q4_0's
//!    unsigned 4-bit codes against the signed row, its `−8` offset applied once per block as
//!    `8·Σq`; for Q8_0 the row is stored offset by +128 and `128·Σw` (a dot product with ones)
//!    subtracted; scaled by `d_w·d_x` into an f32 accumulator. The dot products have the
//!    kernel's vector width ([`Body::lanes`]): four lanes cover half a block's codes, so 16
//!    lanes (AVX-512) cover the low (or high) halves of a run of four blocks — their code runs,
//!    unaligned in the 18- or 34-byte GGUF blocks, joined with `Concat` — and the run's scales
//!    multiply lane by lane; blocks left over after the last whole run take the 128-bit path,
//!    which is the whole kernel at 4 lanes (Cranelift). One pass over the blocks serves several
//!    weight rows (each row's codes loaded once) and all the group's lhs rows (each weight run
//!    decoded once); lanes are reduced once, after it;
//! 3. the epilogue is evaluated per output element. The matmul columns it reads are found from
//!    its slices (SwiGLU's `silu(gate)·up` over merged gate/up reads `j` and `j + H`) and computed
//!    in that one pass; an epilogue that moves elements to other rows (a head split) is written
//!    where [`Body::forward`] maps each element; any other gets each column it asks for alone.
//!
//! The weight and epilogue parsing ([`Format::weight`], [`Epilogue::of`]), the block quantizer
//! ([`BlockQuantizer`]) and the scales' decoding ([`block_scales`]) are shared with the SIMT
//! template (`simt/qgemv.rs`).
//!
//! Rounding the activations to 8 bits is the approximation llama.cpp's quantized kernels make;
//! the weights are exact. The tile is chosen so a row splits into about [`GROUPS_PER_ROW`]
//! groups: enough for a thread pool to balance, few enough that quantizing the row once per
//! group is a small fraction of the group's work.

use super::expr::{fold_many, for_each, Body};
use super::gemv::{
    column_offsets, row_source, store_output, transposed_matmul, RowSource, GROUPS_PER_ROW,
};
use tessera_ir::kernel::BodyArg;
use tessera_ir::lir::{
    Axis, BinaryOp, BufRef, CmpOp, Intrinsic, KernelBuilder, Literal, MemorySpace, ReduceOp,
    ScalarType, SizeExpr, Special, Type, UnaryOp, Value,
};
use tessera_ir::{DType, Dim, QK};

/// Rows of a QGemm group: each decoded weight block feeds this many rows' dot products.
pub(super) const GEMM_ROWS: i64 = 4;

/// What Q8_0 kernels add to the activation codes to make them unsigned (a power of two: its
/// `log2` is the shift in [`column_dots`]), so both formats use the unsigned × signed dot product.
const Q8_OFFSET: i64 = 128;

/// Packed `u32` code words (four codes each) per block of 32 values.
pub(super) const WORDS_PER_BLOCK: i64 = QK as i64 / 4;

/// Code words per half block: also the dot product lanes one block takes, its low half in one
/// dot product and its high half in the next.
pub(super) const HALF_WORDS: i64 = WORDS_PER_BLOCK / 2;

/// The byte layout of a weight block format.
#[derive(Clone, Copy)]
pub(super) struct Format {
    /// Bytes per block of 32 values (f16 scale + codes).
    pub block_bytes: i64,
    /// Q4_0: unsigned 4-bit codes with an offset of 8; Q8_0: signed bytes.
    pub nibbles: bool,
}

impl Format {
    /// The quantized weight of the matmul at `m` (an input, read as bytes): its buffer and format.
    pub(super) fn weight(body: &Body, m: usize) -> Result<(BufRef, Format), String> {
        let arg = body.ops[m].args[1];
        let format = Format::of(body.ty(arg).dtype)?;
        match arg {
            BodyArg::Input(i) => Ok((body.buffers[i], format)),
            BodyArg::Op(_) => Err("a computed quantized weight".into()),
        }
    }

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

/// Where a quantized row's blocks sit, for packed dot products of `4·run` lanes (one lane per
/// four codes, so one vector covers half of each of `run` blocks). The first `runs · run` blocks
/// are laid out in runs: each run's low-half code words (the codes of its blocks' first 16
/// values, Q4_0's low nibbles), block after block, then its high-half words, so the activation
/// operand of either dot product is one contiguous load. The remaining blocks (fewer than
/// `run`) follow block after block, each its low half then its high half (the layout of a run
/// of one), for the 128-bit path.
#[derive(Clone, Copy)]
struct Layout {
    /// Blocks per wide vector: `Body::lanes / 4`.
    run: i64,
    /// Whole runs in the row.
    runs: i64,
    /// Blocks in the row.
    blocks: i64,
}

impl Layout {
    fn new(k: i64, lanes: u32) -> Result<Layout, String> {
        if k % QK as i64 != 0 {
            return Err(format!("a reduction of {k}, not whole blocks of {QK}"));
        }
        let (run, blocks) = (i64::from(lanes / 4).max(1), k / QK as i64);
        Ok(Layout {
            run,
            runs: blocks / run,
            blocks,
        })
    }

    /// Each block's `d_x` is stored this many times: once for 128-bit vectors (a scalar
    /// multiplies `d_w`), four times for wider ones (one vector load gives a run's scales
    /// lane by lane).
    fn scale_stride(self) -> i64 {
        if self.run > 1 {
            4
        } else {
            1
        }
    }
}

/// The buffers holding a group's quantized lhs row (private on a CPU, one block per thread on
/// a SIMT target).
pub(super) struct QuantizedRow {
    /// The 8-bit codes, four per `u32`, in the [`Layout`]'s order.
    pub codes: BufRef,
    /// `d_x` per block, [`Layout::scale_stride`] times.
    pub scales: BufRef,
    /// Q4_0 on a CPU: the offset correction as the integer dot products' starting value:
    /// `[−8·Σq, 0, 0, 0]` per block.
    pub offsets: Option<BufRef>,
}

/// What a quantized matmul's epilogue needs of the template, given the matmul at `m` and its
/// leading dims `lead`.
pub(super) struct Epilogue {
    /// The epilogue moves elements to other rows (a head split: reshape + permute): each matmul
    /// element is written where [`Body::forward`] maps it.
    pub scatter: bool,
    /// Columns a group tiles: the output's last axis, or the matmul's N when scattering.
    pub cols: i64,
    /// The matmul columns an output column reads, as offsets from it: known for the scatter
    /// path and for epilogues of elementwise ops and last-axis slices (SwiGLU reads j and j + H);
    /// `None` for any other.
    pub offsets: Option<Vec<i64>>,
}

impl Epilogue {
    /// The epilogue of the matmul at `m` of `n` columns, its leading dims `lead`.
    pub(super) fn of(body: &Body, m: usize, n: i64, lead: &[Dim]) -> Result<Epilogue, String> {
        let out_shape = &body.ty(body.result()).shape;
        let (out_cols, out_lead) = out_shape.split_last().ok_or("a matmul of a scalar")?;
        // An epilogue that keeps the rows is evaluated per output column (it may read several
        // matmul columns); one that moves elements to other rows must map each matmul element
        // to one output element.
        let scatter = out_lead != lead;
        if scatter {
            return Ok(Epilogue {
                scatter,
                cols: n,
                offsets: Some(vec![0]),
            });
        }
        Ok(Epilogue {
            scatter,
            cols: out_cols
                .as_const()
                .ok_or("an output with a symbolic last axis")?,
            offsets: column_offsets(body, body.result(), m),
        })
    }
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
    let (w, format) = Format::weight(body, m)?;
    let mm_shape = &body.types[m].shape;
    let lead = &mm_shape[..mm_shape.len() - 1];
    let out_shape = &body.ty(body.result()).shape;
    let Epilogue {
        scatter,
        cols,
        offsets,
    } = Epilogue::of(body, m, n, lead)?;
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
    let layout = Layout::new(k, body.lanes)?;
    let mut rows = Vec::new();
    for r in 0..rows_per_group {
        let r = b.const_i(r);
        let row = b.add(first_row, r);
        let clamped = b.binary(BinaryOp::Min, row, last_row);
        let lead_idx = body.symbols.unravel(b, clamped, lead)?;
        let source = row_source(b, body, m, k, clamped, &lead_idx)?;
        let q = quantize_row(b, &source, layout, format, body.lanes)?;
        rows.push((row, lead_idx, q));
    }
    let quantized: Vec<&QuantizedRow> = rows.iter().map(|(_, _, q)| q).collect();
    let weight = (w, format, layout);
    // The dot products of the matmul columns an output column reads share the row's loads in
    // one pass over the blocks; a lone column is paired with the next output column for the
    // same reason.
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
pub(super) fn when(
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

/// Quantizes the row read from `src` block by block into private codes (in `layout`'s order),
/// scales and (for Q4_0) offset corrections, computing in vectors of `lanes`.
fn quantize_row(
    b: &mut KernelBuilder,
    src: &RowSource,
    layout: Layout,
    format: Format,
    lanes: u32,
) -> Result<QuantizedRow, String> {
    let len = |n: i64| u32::try_from(n).map_err(|_| "a reduction longer than u32".to_string());
    let blocks = layout.blocks;
    let row = QuantizedRow {
        codes: b.local(
            "x_codes",
            MemorySpace::Private,
            ScalarType::U32,
            len(blocks * WORDS_PER_BLOCK)?,
        ),
        scales: b.local(
            "x_scales",
            MemorySpace::Private,
            ScalarType::F32,
            len(blocks * layout.scale_stride())?,
        ),
        offsets: if format.nibbles {
            Some(b.local(
                "x_offsets",
                MemorySpace::Private,
                ScalarType::I32,
                len(blocks * 4)?,
            ))
        } else {
            None
        },
    };
    let quantize = BlockQuantizer::new(b, &row, layout.scale_stride(), !format.nibbles, lanes);
    let qk = b.const_i(QK as i64);
    let block = |b: &mut KernelBuilder, j: Value, lo: Value, hi: Value| {
        let first = b.mul(j, qk);
        let values: Vec<Value> = (0..QK as u32 / lanes)
            .map(|v| {
                let off = b.const_i(i64::from(v * lanes));
                let i = b.add(first, off);
                src.load(b, i, lanes)
            })
            .collect();
        quantize.block(b, &values, j, lo, hi);
    };
    let run = layout.run;
    let (zero, runs) = (b.const_i(0), b.const_i(layout.runs));
    let run_words = b.const_i(WORDS_PER_BLOCK * run);
    for_each(b, zero, runs, |b, r| {
        let first = plus(b, r, run, 0);
        let words = b.mul(r, run_words);
        for s in 0..run {
            let j = plus(b, first, 1, s);
            let lo = plus(b, words, 1, HALF_WORDS * s);
            let hi = b.const_i(HALF_WORDS * run);
            let hi = b.add(lo, hi);
            block(b, j, lo, hi);
        }
        Ok(())
    })?;
    if layout.runs * run < blocks {
        let (first, end) = (b.const_i(layout.runs * run), b.const_i(blocks));
        let (words, half) = (b.const_i(WORDS_PER_BLOCK), b.const_i(HALF_WORDS));
        for_each(b, first, end, |b, j| {
            let lo = b.mul(j, words);
            let hi = b.add(lo, half);
            block(b, j, lo, hi);
            Ok(())
        })?;
    }
    Ok(row)
}

/// `v·scale + offset`, leaving out a multiplication by 1 and an addition of 0: with runs of one
/// block (the 128-bit path) the kernel stays the per-block loop it was, without relying on a
/// backend to fold them.
fn plus(b: &mut KernelBuilder, v: Value, scale: i64, offset: i64) -> Value {
    let v = if scale == 1 {
        v
    } else {
        let scale = b.const_i(scale);
        b.mul(v, scale)
    };
    if offset == 0 {
        v
    } else {
        let offset = b.const_i(offset);
        b.add(v, offset)
    }
}

/// Quantizes one block of a row (llama.cpp's `quantize_row_q8_0` rule) in vectors of `lanes`,
/// with the constants it needs made once. The codes are signed, or offset by [`Q8_OFFSET`]
/// (`unsigned`) for the CPU's unsigned × signed Q8_0 dot products; Q4_0's offset corrections
/// are stored when the row has a buffer for them.
pub(super) struct BlockQuantizer {
    codes: BufRef,
    scales: BufRef,
    offsets: Option<BufRef>,
    lanes: u32,
    scale_stride: i64,
    fzero: Value,
    f127: Value,
    minus_eight: Value,
    izero: Value,
    half: Value,
    neg_half: Value,
    fzero_v: Value,
    offset: Option<Value>,
    /// 128-bit vectors only: the byte mask and lane shifts that pack four lanes into a word
    /// (Cranelift has no 32-bit `u8x4` to narrow into).
    pack: Option<(Value, Vec<Value>)>,
}

impl BlockQuantizer {
    /// A quantizer into `row`, storing each block's scale `scale_stride` times.
    pub(super) fn new(
        b: &mut KernelBuilder,
        row: &QuantizedRow,
        scale_stride: i64,
        unsigned: bool,
        lanes: u32,
    ) -> BlockQuantizer {
        let int = |b: &mut KernelBuilder, v: i64| {
            b.constant(Type::scalar(ScalarType::I32), Literal::I(v))
        };
        let (fzero, f127) = (b.const_f(0.0), b.const_f(127.0));
        let (half, neg_half) = (b.const_f(0.5), b.const_f(-0.5));
        let offset = unsigned.then(|| {
            let offset = int(b, Q8_OFFSET);
            b.splat(offset, lanes)
        });
        let pack = (lanes == 4).then(|| {
            let byte = int(b, 0xff);
            let byte = b.splat(byte, 4);
            let shifts = (0..4).map(|l| int(b, 8 * l)).collect();
            (byte, shifts)
        });
        BlockQuantizer {
            codes: row.codes,
            scales: row.scales,
            offsets: row.offsets,
            lanes,
            scale_stride,
            fzero,
            f127,
            minus_eight: int(b, -8),
            izero: int(b, 0),
            half: b.splat(half, lanes),
            neg_half: b.splat(neg_half, lanes),
            fzero_v: b.splat(fzero, lanes),
            offset,
            pack,
        }
    }

    /// Quantizes block `j` of the row, whose 32 values are `values` (vectors of `lanes`),
    /// storing its low-half code words from word `lo` and its high-half ones from word `hi`.
    pub(super) fn block(
        &self,
        b: &mut KernelBuilder,
        values: &[Value],
        j: Value,
        lo: Value,
        hi: Value,
    ) {
        let lanes = self.lanes;
        let amax = values
            .iter()
            .map(|&v| b.unary(UnaryOp::Abs, v))
            .collect::<Vec<_>>()
            .into_iter()
            .reduce(|a, c| b.binary(BinaryOp::Max, a, c))
            .expect("a block has vectors");
        let amax = b.reduce_lanes(ReduceOp::Max, amax);
        let d = b.div(amax, self.f127);
        let stride = b.const_i(self.scale_stride);
        let scale_at = b.mul(j, stride);
        let stored = if self.scale_stride > 1 {
            b.splat(d, self.scale_stride as u32)
        } else {
            d
        };
        b.store(self.scales, scale_at, stored);
        let positive = b.cmp(CmpOp::Gt, amax, self.fzero);
        let inv = b.div(self.f127, amax);
        let inv = b.select(positive, inv, self.fzero);
        let inv = b.splat(inv, lanes);
        let mut sum = None;
        let words = i64::from(lanes / 4);
        for (v, &x) in values.iter().enumerate() {
            // Round half away from zero: truncate x/d ± 0.5.
            let negative = b.cmp(CmpOp::Lt, x, self.fzero_v);
            let bias = b.select(negative, self.neg_half, self.half);
            let scaled = b.fma(x, inv, bias);
            let q = b.cast(ScalarType::I32, scaled);
            sum = Some(match sum {
                None => q,
                Some(s) => b.add(s, q),
            });
            let code = match self.offset {
                Some(offset) => b.add(q, offset),
                None => q,
            };
            let packed = match &self.pack {
                Some((byte, shifts)) => {
                    let bytes = b.binary(BinaryOp::And, code, *byte);
                    let word = (0..4)
                        .map(|l| {
                            let lane = b.extract(bytes, l);
                            b.binary(BinaryOp::Shl, lane, shifts[l as usize])
                        })
                        .collect::<Vec<_>>()
                        .into_iter()
                        .reduce(|a, c| b.binary(BinaryOp::Or, a, c))
                        .expect("four lanes");
                    b.bitcast(ScalarType::U32, 1, word)
                }
                None => {
                    let bytes = b.cast(ScalarType::U8, code);
                    b.bitcast(ScalarType::U32, lanes / 4, bytes)
                }
            };
            // Word `w` of the block: the first four are its low half, the next its high half.
            let w = v as i64 * words;
            let (half, within) = (if w < 4 { lo } else { hi }, b.const_i(w % 4));
            let at = b.add(half, within);
            b.store(self.codes, at, packed);
        }
        if let Some(offsets) = self.offsets {
            let total = b.reduce_lanes(ReduceOp::Add, sum.expect("a block has vectors"));
            let offset = b.mul(total, self.minus_eight);
            let four = b.const_i(4);
            let at = b.mul(j, four);
            b.store(offsets, at, offset);
            for lane in 1..4 {
                let l = b.const_i(lane);
                let at = b.add(at, l);
                b.store(offsets, at, self.izero);
            }
        }
    }
}

/// The dot products of the quantized lhs rows `rows` with weight rows `cols` (`[row][col]`), in
/// one pass over the blocks: each weight block is decoded once for all rows and each row's codes
/// loaded once for all columns. The whole runs of the [`Layout`] go through dot products of
/// `4·run` lanes, the remaining blocks through 128-bit ones; the lanes are reduced at the end.
fn column_dots(
    b: &mut KernelBuilder,
    (w, format, layout): (BufRef, Format, Layout),
    rows: &[&QuantizedRow],
    cols: &[Value],
) -> Result<Vec<Vec<Value>>, String> {
    let row_bytes = b.const_i(layout.blocks * format.block_bytes);
    let mut ats: Vec<Value> = cols.iter().map(|&c| b.mul(c, row_bytes)).collect();
    let mut totals: Vec<Option<Value>> = vec![None; rows.len() * cols.len()];
    let run = layout.run;
    let parts = [(run, 0, layout.runs), (1, layout.runs * run, layout.blocks)];
    for (run, start, end) in parts {
        if start == end {
            continue;
        }
        let step = RunStep {
            w,
            format,
            run,
            scale_stride: layout.scale_stride(),
        };
        let carried = step.fold(b, rows, &ats, (start, end))?;
        let (accs, next) = carried.split_at(totals.len());
        for (total, &acc) in totals.iter_mut().zip(accs) {
            let sum = b.reduce_lanes(ReduceOp::Add, acc);
            *total = Some(match *total {
                None => sum,
                Some(t) => b.add(t, sum),
            });
        }
        ats = next.to_vec();
    }
    Ok(totals
        .chunks(cols.len())
        .map(|row| row.iter().map(|t| t.expect("a row has blocks")).collect())
        .collect())
}

/// One loop of [`column_dots`] over runs of `run` blocks (a run of one: the 128-bit path).
struct RunStep {
    w: BufRef,
    format: Format,
    run: i64,
    scale_stride: i64,
}

impl RunStep {
    /// Loops over `start..end` (runs, or single blocks for a run of one) carrying an f32
    /// accumulator of `4·run` lanes per row and column, then each column's byte offset (from
    /// `ats`); returns them after the loop. Per run, row and column: an integer dot product of
    /// the codes (Q4_0's starting at the row's offset correction) scaled by `d_w·d_x` lane by
    /// lane.
    fn fold(
        &self,
        b: &mut KernelBuilder,
        rows: &[&QuantizedRow],
        ats: &[Value],
        (start, end): (i64, i64),
    ) -> Result<Vec<Value>, String> {
        let (run, format, w) = (self.run, self.format, self.w);
        let lanes = (HALF_WORDS * run) as u32;
        let block_bytes = format.block_bytes;
        let run_bytes = b.const_i(run * block_bytes);
        let (start, end) = (b.const_i(start), b.const_i(end));
        let fzero = b.const_f(0.0);
        let acc0 = b.splat(fzero, lanes);
        let izero = b.constant(Type::scalar(ScalarType::I32), Literal::I(0));
        let izero = b.splat(izero, lanes);
        let (run_words, half_words) = (
            b.const_i(WORDS_PER_BLOCK * run),
            b.const_i(HALF_WORDS * run),
        );
        let (run_lanes, scale_stride) = (b.const_i(HALF_WORDS * run), b.const_i(self.scale_stride));
        let (two, sixteen) = (b.const_i(2), b.const_i(16));
        let u32x4 = Type::vector(ScalarType::U32, 4);
        let byte = |b: &mut KernelBuilder, v: i64| {
            let c = b.constant(Type::scalar(ScalarType::U8), Literal::I(v));
            b.splat(c, 4 * lanes)
        };
        let (low_nibble, nibble_shift) = (byte(b, 0x0f), byte(b, 4));
        let ones = byte(b, 1);
        let ones = b.bitcast(ScalarType::U32, lanes, ones);
        let offset_shift = Literal::I(i64::from(Q8_OFFSET.trailing_zeros()));
        let offset_shift = b.constant(Type::scalar(ScalarType::I32), offset_shift);
        let offset_shift = b.splat(offset_shift, lanes);
        let (nr, nc) = (rows.len(), ats.len());
        let mut init = vec![acc0; nr * nc];
        init.extend_from_slice(ats);
        fold_many(b, (start, end, 1), &init, |b, j, carried| {
            let x_at = b.mul(j, run_words);
            let x_hi_at = b.add(x_at, half_words);
            let offset_at = b.mul(j, run_lanes);
            let xs: Vec<_> = rows
                .iter()
                .map(|q| {
                    // d_x: one scalar per block, or a run's scales lane by lane.
                    let dx = if run > 1 {
                        b.load(q.scales, offset_at, lanes)
                    } else {
                        let at = b.mul(j, scale_stride);
                        b.load(q.scales, at, 1)
                    };
                    let lo = b.load(q.codes, x_at, lanes);
                    let hi = b.load(q.codes, x_hi_at, lanes);
                    let offset = q.offsets.map(|o| b.load(o, offset_at, lanes));
                    (dx, lo, hi, offset)
                })
                .collect();
            let mut next = carried.to_vec();
            for i in 0..nc {
                let at = carried[nr * nc + i];
                let blocks: Vec<Value> =
                    (0..run).map(|s| plus(b, at, 1, s * block_bytes)).collect();
                let dw = block_scales(b, w, &blocks);
                let codes: Vec<Value> = blocks.iter().map(|&at| b.add(at, two)).collect();
                // The run's codes as two u32 vectors (Q4_0: the low and high nibbles, Q8_0:
                // each block's first and last 16 bytes) and, for Q8_0, 128·Σw (the row
                // offset's correction).
                let (lo, hi, correction) = if format.nibbles {
                    let packed = gather(b, w, &codes, Type::vector(ScalarType::U8, 16));
                    let lo = b.binary(BinaryOp::And, packed, low_nibble);
                    let hi = b.binary(BinaryOp::Shr, packed, nibble_shift);
                    let lo = b.bitcast(ScalarType::U32, lanes, lo);
                    (lo, b.bitcast(ScalarType::U32, lanes, hi), None)
                } else {
                    let lo = gather(b, w, &codes, u32x4);
                    let his: Vec<Value> = codes.iter().map(|&at| b.add(at, sixteen)).collect();
                    let hi = gather(b, w, &his, u32x4);
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
                    let d = if run > 1 { d } else { b.splat(d, lanes) };
                    next[r * nc + i] = b.fma(sum, d, carried[r * nc + i]);
                }
                next[nr * nc + i] = b.add(at, run_bytes);
            }
            Ok(next)
        })
    }
}

/// A `ty` read at each byte offset of `ats` in `w`, joined in order into one vector.
fn gather(b: &mut KernelBuilder, w: BufRef, ats: &[Value], ty: Type) -> Value {
    let parts: Vec<Value> = ats.iter().map(|&at| b.load_bytes(w, at, ty)).collect();
    match parts[..] {
        [one] => one,
        _ => b.concat(&parts),
    }
}

/// The f16 scales `d` of the blocks starting at bytes `ats`, as f32: a scalar for one block,
/// else each block's over four lanes. In integer ops: exponent and mantissa shifted into place
/// with the sign, then rescaled by 2^112 (which also normalizes subnormals). Exact for finite
/// scales — quantizing finite weights only produces finite ones, and `compile --quant` refuses
/// non-finite weights — and 8 instructions where the general conversion (`Cast`, which also
/// rebuilds infinities and NaNs) takes 16. Reads 4 bytes per block: the scale and the block's
/// first two code bytes.
pub(super) fn block_scales(b: &mut KernelBuilder, w: BufRef, ats: &[Value]) -> Value {
    let lanes = if ats.len() > 1 {
        4 * ats.len() as u32
    } else {
        1
    };
    let int = |b: &mut KernelBuilder, v: i64| {
        let c = b.constant(Type::scalar(ScalarType::I32), Literal::I(v));
        b.splat(c, lanes)
    };
    let words: Vec<Value> = ats
        .iter()
        .map(|&at| {
            let word = b.load_bytes(w, at, Type::scalar(ScalarType::I32));
            if lanes > 1 {
                b.splat(word, 4)
            } else {
                word
            }
        })
        .collect();
    let word = match words[..] {
        [one] => one,
        _ => b.concat(&words),
    };
    let (magnitude_mask, sign_mask) = (int(b, 0x7fff), int(b, 0x8000));
    let (thirteen, sixteen) = (int(b, 13), int(b, 16));
    let magnitude = b.binary(BinaryOp::And, word, magnitude_mask);
    let magnitude = b.binary(BinaryOp::Shl, magnitude, thirteen);
    let sign = b.binary(BinaryOp::And, word, sign_mask);
    let sign = b.binary(BinaryOp::Shl, sign, sixteen);
    let bits = b.binary(BinaryOp::Or, magnitude, sign);
    let f = b.bitcast(ScalarType::F32, lanes, bits);
    let rescale = b.const_f(2f64.powi(112));
    let rescale = b.splat(rescale, lanes);
    b.mul(f, rescale)
}
