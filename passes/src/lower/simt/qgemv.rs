//! The SIMT quantized matmul template (`QGemv` with [`GEMV_TILE`], `QGemm` with [`GEMM_TILE`]
//! lhs rows × output columns per workgroup) over Q8_0 and Q4_0 weights read as bytes, computing
//! what the CPU template ([`super::super::qgemv`]) computes: the lhs rounded to 8 bits per block
//! of 32 (llama.cpp's rule), integer dot products of the codes scaled by `d_w·d_x` per block.
//! A workgroup's threads form [`ThreadSplit`] groups, each taking a tile's columns: when a row
//! has fewer K blocks than the workgroup has threads (K = 2048 is 64 Q8_0 blocks), several
//! column tiles share the workgroup instead of leaving threads idle. A group's threads split the
//! K blocks (thread `t` takes blocks `t`, `t + group size`, …, adjacent threads reading adjacent
//! blocks); per block a thread
//!
//! 1. quantizes the block of each of the tile's lhs rows (the prologue evaluated, its norm's
//!    statistics computed by the whole workgroup beforehand) into private memory, once for all
//!    the tile's columns, with the CPU template's [`BlockQuantizer`];
//! 2. decodes the block of each matmul column the tile's outputs read (the epilogue's
//!    [`Epilogue::offsets`]: SwiGLU over merged gate/up reads `j` and `j + H`) once for all the
//!    tile's rows: its f16 scale and eight code words of signed bytes — Q8_0's codes read as
//!    unaligned `u32`s, Q4_0's nibbles split and moved from `0..16` to `−8..8`;
//! 3. takes `Dot4I8Packed` over the eight word pairs of each row and column, accumulating
//!    `Σ·d_w·d_x` in f32.
//!
//! The partial sums (zero for the other groups' columns) are reduced across the workgroup
//! ([`workgroup_reduce`]) and the first thread
//! applies the epilogue to each output element ([`store_output`]: a head split is written where
//! each element lands). Rows and columns past the ends (partial tiles) are computed on the last
//! one and not stored. No shared memory beyond the reductions', so any K (whole blocks) fits.
//! A device without `Dot4I8Packed` is refused: there is no float fallback.

use super::super::expr::{fold_many, Body, HookFn};
use super::super::gemv::{store_output, transposed_matmul};
use super::super::lanes::workgroup_reduce;
use super::super::qgemv::{
    block_scales, when, BlockQuantizer, Epilogue, Format, QuantizedRow, HALF_WORDS, WORDS_PER_BLOCK,
};
use super::gemv::{prologue_hook, tile_columns};
use tessera_ir::kernel::BodyArg;
use tessera_ir::lir::{
    Axis, BinaryOp, BufRef, Capabilities, CmpOp, Intrinsic, IntrinsicKind, KernelBuilder, Literal,
    MemorySpace, ReduceOp, ScalarType, SizeExpr, Special, Type, Value,
};
use tessera_ir::QK;

/// lhs rows × output columns per QGemv workgroup (decode: one row).
pub(super) const GEMV_TILE: (i64, i64) = (1, 4);

/// lhs rows × output columns per QGemm workgroup (prefill): each decoded weight block feeds four
/// rows, each quantized lhs block two output columns.
pub(super) const GEMM_TILE: (i64, i64) = (4, 2);

/// Writes the quantized matmul kernel of `body` into `b`, storing to `out`, a workgroup per
/// `tile` (lhs rows, output columns).
pub(super) fn lower(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
    caps: &Capabilities,
    (tile_rows, tile_cols): (i64, i64),
) -> Result<(), String> {
    if !caps.intrinsics.contains(&IntrinsicKind::Dot4I8Packed) {
        return Err(
            "a device without Dot4I8Packed (no float fallback for quantized matmuls)".into(),
        );
    }
    let (m, n, k) = transposed_matmul(body, true)?;
    let (w, format) = Format::weight(body, m)?;
    if k % QK as i64 != 0 {
        return Err(format!("a reduction of {k}, not whole blocks of {QK}"));
    }
    let mm_shape = &body.types[m].shape;
    let lead = &mm_shape[..mm_shape.len() - 1];
    let epilogue = Epilogue::of(body, m, n, lead)?;
    let offsets = epilogue
        .offsets
        .ok_or("an epilogue reading the matmul at columns other than fixed offsets of its own")?;
    let cols = epilogue.cols;
    let blocks_per_row = k / QK as i64;
    let split = ThreadSplit::new(body.threads, blocks_per_row, tile_rows * tile_cols);
    let group_cols = tile_cols * split.groups;
    b.grid([
        SizeExpr::Const(cols as u64).ceil_div(group_cols as u64),
        body.symbols.numel_size(lead)?.ceil_div(tile_rows as u64),
        SizeExpr::Const(1),
    ]);
    let row_group = b.special(Special::GroupId(Axis::Y));
    let col_group = b.special(Special::GroupId(Axis::X));
    let lane = b.special(Special::LocalId(Axis::X));
    let total_rows = body.symbols.numel(b, lead)?;
    let one = b.const_i(1);
    let last_row = b.sub(total_rows, one);
    let tile_rows_v = b.const_i(tile_rows);
    let first_row = b.mul(row_group, tile_rows_v);
    let k_v = b.const_i(k);
    let rows = (0..tile_rows)
        .map(|r| {
            let r = b.const_i(r);
            let row = b.add(first_row, r);
            let clamped = b.binary(BinaryOp::Min, row, last_row);
            let lead_idx = body.symbols.unravel(b, clamped, lead)?;
            let hook = prologue_hook(b, body, m, k_v, &lead_idx)?;
            Ok(LhsRow::new(b, row, lead_idx, hook))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let (col0, cols_v, outs, mm_cols) = tile_columns(b, col_group, group_cols, cols, &offsets);
    // This thread's column group and its first block; the group's columns follow the tile's.
    let per_group = b.const_i(split.threads_per_group);
    let group = b.div(lane, per_group);
    let first_block = b.binary(BinaryOp::Rem, lane, per_group);
    // The group's columns are tile `col_group · groups + group` of `tile_cols` columns.
    let groups = b.const_i(split.groups);
    let group_tile = b.mul(col_group, groups);
    let group_tile = b.add(group_tile, group);
    let (_, _, _, own_cols) = tile_columns(b, group_tile, tile_cols, cols, &offsets);
    let weight = WeightBlocks::new(b, w, format, k);
    let lhs = body.ops[m].args[0];
    let izero = b.constant(Type::scalar(ScalarType::I32), Literal::I(0));
    let zero_f = b.const_f(0.0);
    let init = vec![zero_f; rows.len() * own_cols.len()];
    let blocks = b.const_i(blocks_per_row);
    let step = split.threads_per_group as u32;
    let own = fold_many(b, (first_block, blocks, step), &init, |b, j, accs| {
        let xs = rows
            .iter()
            .map(|row| row.quantize(b, body, lhs, j))
            .collect::<Result<Vec<_>, String>>()?;
        let ws: Vec<(Vec<Value>, Value)> =
            own_cols.iter().map(|&c| weight.block(b, c, j)).collect();
        let mut next = Vec::with_capacity(accs.len());
        for (x_words, dx) in &xs {
            for (w_words, dw) in &ws {
                let isum = x_words.iter().zip(w_words).fold(izero, |acc, (&x, &w)| {
                    b.intrinsic(Intrinsic::Dot4I8Packed, &[w, x, acc])
                });
                let sum = b.cast(ScalarType::F32, isum);
                let d = b.mul(*dw, *dx);
                next.push(b.fma(sum, d, accs[next.len()]));
            }
        }
        Ok(next)
    })?;
    let partials = split.spread(b, group, &own, rows.len());
    let dots = workgroup_reduce(b, body.workgroup(), &partials, ReduceOp::Add);
    let zero = b.const_i(0);
    let first = b.cmp(CmpOp::Eq, lane, zero);
    let mut failure = Ok(());
    b.if_then(first, |b| {
        failure = rows
            .iter()
            .zip(dots.chunks(mm_cols.len()))
            .try_for_each(|(row, dots)| {
                let exists = b.cmp(CmpOp::Lt, row.row, total_rows);
                when(b, Some(exists), |b| {
                    (0..group_cols).zip(&outs).try_for_each(|(c, &col)| {
                        let c = b.const_i(c);
                        let raw = b.add(col0, c);
                        let inside = b.cmp(CmpOp::Lt, raw, cols_v);
                        let idx: Vec<Value> = row.lead_idx.iter().copied().chain([col]).collect();
                        let found = (epilogue.scatter, mm_cols.as_slice(), dots);
                        when(b, Some(inside), |b| {
                            store_output(b, body, m, found, &idx, out)
                        })
                    })
                })
            });
    });
    failure
}

/// Most column groups per workgroup: the partial sums of all of them meet in one reduction.
const MAX_GROUPS: i64 = 8;

/// How a workgroup's threads share its work: `groups` sets of `threads_per_group` threads, each
/// set taking a tile of columns and every K block of them, so that rows of few blocks (K = 2048
/// is 64 Q8_0 blocks, for 256 threads) still keep every thread busy.
struct ThreadSplit {
    groups: i64,
    threads_per_group: i64,
}

impl ThreadSplit {
    /// As many groups as `threads` hold sets of at least `blocks` threads (rounded up to a power
    /// of two), at most [`MAX_GROUPS`] and at most 32 reduced values for `per_tile` outputs.
    fn new(threads: u32, blocks: i64, per_tile: i64) -> ThreadSplit {
        let threads = i64::from(threads);
        let per_group = (blocks.max(1) as u64)
            .next_power_of_two()
            .min(threads as u64) as i64;
        let groups = (threads / per_group)
            .min(MAX_GROUPS)
            .min((32 / per_tile).max(1))
            .max(1);
        ThreadSplit {
            groups,
            threads_per_group: threads / groups,
        }
    }

    /// The partial sums of every group's outputs in the tile's order (row-major over `rows`
    /// rows, then the groups' columns), from this thread's `own` (of group `group`): its own
    /// where they belong, zero for the other groups' — the workgroup's sum of them is then each
    /// output's sum over its group's threads.
    fn spread(
        &self,
        b: &mut KernelBuilder,
        group: Value,
        own: &[Value],
        rows: usize,
    ) -> Vec<Value> {
        let zero = b.const_f(0.0);
        let per_row = own.len() / rows;
        let mut out = Vec::with_capacity(own.len() * self.groups as usize);
        for row in own.chunks(per_row) {
            for g in 0..self.groups {
                let g = b.const_i(g);
                let mine = b.cmp(CmpOp::Eq, group, g);
                out.extend(row.iter().map(|&v| b.select(mine, v, zero)));
            }
        }
        out
    }
}

/// One of a workgroup's lhs rows: its row number (past the last when the tile is partial), the
/// multi-index of the row it reads (clamped), its prologue norm and where a thread quantizes
/// its current block.
struct LhsRow<'a> {
    row: Value,
    lead_idx: Vec<Value>,
    hook: Option<(usize, Box<HookFn<'a>>)>,
    block: QuantizedRow,
    quantizer: BlockQuantizer,
}

impl<'a> LhsRow<'a> {
    fn new(
        b: &mut KernelBuilder,
        row: Value,
        lead_idx: Vec<Value>,
        hook: Option<(usize, Box<HookFn<'a>>)>,
    ) -> LhsRow<'a> {
        let block = QuantizedRow {
            codes: b.local(
                "x_codes",
                MemorySpace::Private,
                ScalarType::U32,
                WORDS_PER_BLOCK as u32,
            ),
            scales: b.local("x_scale", MemorySpace::Private, ScalarType::F32, 1),
            offsets: None,
        };
        let quantizer = BlockQuantizer::new(b, &block, 1, false, 4);
        LhsRow {
            row,
            lead_idx,
            hook,
            block,
            quantizer,
        }
    }

    /// Block `j` of the lhs `lhs` on this row, quantized: its eight code words (values `4t` to
    /// `4t + 3` in word `t`) and `d_x`.
    fn quantize(
        &self,
        b: &mut KernelBuilder,
        body: &Body,
        lhs: BodyArg,
        j: Value,
    ) -> Result<(Vec<Value>, Value), String> {
        let qk = b.const_i(QK as i64);
        let first = b.mul(j, qk);
        let hook = self.hook.as_ref().map(|(r, f)| (*r, &**f));
        let values = (0..QK as i64 / 4)
            .map(|v| {
                let lanes = (0..4)
                    .map(|l| {
                        let off = b.const_i(4 * v + l);
                        let i = b.add(first, off);
                        let idx: Vec<Value> = self.lead_idx.iter().copied().chain([i]).collect();
                        body.value(b, lhs, &idx, hook)
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(b.concat(&lanes))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let (zero, hi) = (b.const_i(0), b.const_i(HALF_WORDS));
        self.quantizer.block(b, &values, zero, zero, hi);
        let words = (0..WORDS_PER_BLOCK)
            .map(|t| {
                let t = b.const_i(t);
                b.load(self.block.codes, t, 1)
            })
            .collect();
        Ok((words, b.load(self.block.scales, zero, 1)))
    }
}

/// Reads a weight's blocks as signed code words, with the constants that takes made once.
struct WeightBlocks {
    w: BufRef,
    nibbles: bool,
    row_bytes: Value,
    block_bytes: Value,
    two: Value,
    /// Q4_0: the low-nibble mask, the high nibbles' shift, and the bias that moves a byte's
    /// `0..16` to `−8..8` without borrows between bytes (`(n | 0x80) − 8`, then `^ 0x80`).
    low_nibbles: Value,
    nibble_shift: Value,
    high_bits: Value,
    eights: Value,
}

impl WeightBlocks {
    fn new(b: &mut KernelBuilder, w: BufRef, format: Format, k: i64) -> WeightBlocks {
        let word = |b: &mut KernelBuilder, v: i64| {
            b.constant(Type::scalar(ScalarType::U32), Literal::I(v))
        };
        WeightBlocks {
            w,
            nibbles: format.nibbles,
            row_bytes: b.const_i(k / QK as i64 * format.block_bytes),
            block_bytes: b.const_i(format.block_bytes),
            two: b.const_i(2),
            low_nibbles: word(b, 0x0f0f_0f0f),
            nibble_shift: word(b, 4),
            high_bits: word(b, 0x8080_8080),
            eights: word(b, 0x0808_0808),
        }
    }

    /// Block `j` of weight row `col`: its eight code words of signed bytes (values `4t` to
    /// `4t + 3` in word `t`) and its scale `d_w`.
    fn block(&self, b: &mut KernelBuilder, col: Value, j: Value) -> (Vec<Value>, Value) {
        let row = b.mul(col, self.row_bytes);
        let within = b.mul(j, self.block_bytes);
        let at = b.add(row, within);
        let dw = block_scales(b, self.w, &[at]);
        let codes = b.add(at, self.two);
        let words = if self.nibbles {
            HALF_WORDS
        } else {
            WORDS_PER_BLOCK
        };
        let loaded: Vec<Value> = (0..words)
            .map(|t| {
                let off = b.const_i(4 * t);
                let word_at = b.add(codes, off);
                b.load_bytes(self.w, word_at, Type::scalar(ScalarType::U32))
            })
            .collect();
        if !self.nibbles {
            return (loaded, dw);
        }
        // Byte `t` of the packed codes holds value `t` in its low nibble, `t + 16` in its high.
        let low: Vec<Value> = loaded
            .iter()
            .map(|&p| b.binary(BinaryOp::And, p, self.low_nibbles))
            .collect();
        let high: Vec<Value> = loaded
            .iter()
            .map(|&p| {
                let p = b.binary(BinaryOp::Shr, p, self.nibble_shift);
                b.binary(BinaryOp::And, p, self.low_nibbles)
            })
            .collect();
        let signed = low
            .into_iter()
            .chain(high)
            .map(|n| {
                let biased = b.binary(BinaryOp::Or, n, self.high_bits);
                let moved = b.sub(biased, self.eights);
                b.binary(BinaryOp::Xor, moved, self.high_bits)
            })
            .collect();
        (signed, dw)
    }
}
