//! The SIMT attention templates, over the body the CPU template parses ([`Attention`]: its
//! prologues are evaluated in place, its epilogue through [`Attention::store`]).
//!
//! **FlashDecoding** ([`lower_decoding`], [`lower_split`]): a workgroup per (query row, query
//! head[, split]). One query row per head is little work, so a workgroup per query head rather
//! than per KV head gives `Hq/Hkv` times more workgroups to fill the device with, and keeps the
//! shared memory a few KiB whatever the GQA ratio (the group's heads re-read their K/V rows
//! from L2). The keys go in blocks of one per thread: each thread scores its key (the scaled
//! query in shared memory), the block's max and then its sum of probabilities are reduced
//! across the workgroup ([`workgroup_reduce`]'s shared-memory tree, on every device, subgroups
//! or not), the probabilities go through shared memory, and the V rows are accumulated by the
//! threads laid over `Dv` columns × key chunks (adjacent threads read adjacent V elements),
//! each carrying its columns' partial sums rescaled once per block (online softmax: any KV
//! length). The chunks' partial rows are summed through shared memory at the end. With several
//! splits the two steps and the scratch layout are the CPU's ([`split_program`]). When a head
//! dim is a multiple of 4, its rows are read in runs of 4 — the q·k dot products a run of K
//! (and of the query) per step ([`sum_runs`]), each thread's V columns runs of 4 — so that each
//! read is one 16-byte load.
//!
//! **FlashAttention** ([`lower_prefill`]): a workgroup per (block of query rows, batch, query
//! head). Tiles of keys are staged in shared memory and reused by the block's rows: the K tile,
//! then the V tile in the same array. Per tile, the threads compute the `rows × keys` scores
//! (causal, window and mask applied), one thread per row moves its row's online-softmax state,
//! and the threads laid over the `rows × Dv` outputs accumulate the tile's V rows. The tile
//! sizes come from the head dims and the device's shared memory ([`tiles`]), not from the
//! kernel's `block_q`/`block_kv` (tuned for the CPU). The query rows and the tiles are loaded
//! in runs of 4 (one 16-byte load each, [`for_each_run`]) when their head dim is a multiple of 4,
//! and the scores read them from shared memory so too.

use super::super::attention::{finite_or_zero, normalized, split_keys, split_program, Attention};
use super::super::expr::{fold, fold_many, fold_range, Body};
use super::super::lanes::{for_each_lane, for_each_run, sum_runs, workgroup_reduce};
use super::super::Steps;
use super::run_lanes;
use tessera_ir::lir::{
    self, Axis, BinaryOp, BufRef, CmpOp, KernelBuilder, MemorySpace, ReduceOp, ScalarType,
    SizeExpr, Special, UnaryOp, Value,
};

/// Where a workgroup works: query row `i` of batch `bi` (its group row `row`, linear over
/// [`Attention::rows`]) for query head `head`, the `h`-th of those sharing KV head `kv_head`.
struct Head {
    row: Value,
    bi: Value,
    kv_head: Value,
    i: Value,
    h: Value,
    head: Value,
}

/// A grid of one workgroup per group row, split (along y) and query head of its KV head (along
/// z), and this workgroup's [`Head`].
fn launch(att: &Attention, b: &mut KernelBuilder, splits: u32) -> Result<Head, String> {
    let symbols = &att.body.symbols;
    b.grid([
        symbols.numel_size(&att.rows())?,
        SizeExpr::Const(u64::from(splits)),
        SizeExpr::Const(u64::from(att.heads)),
    ]);
    let row = b.special(Special::GroupId(Axis::X));
    let [bi, kv_head, i] = symbols.unravel(b, row, &att.rows())?[..] else {
        unreachable!("three dims unravel to three indices");
    };
    let h = b.special(Special::GroupId(Axis::Z));
    let heads = b.const_i(i64::from(att.heads));
    let first_head = b.mul(kv_head, heads);
    let head = b.add(first_head, h);
    Ok(Head {
        row,
        bi,
        kv_head,
        i,
        h,
        head,
    })
}

/// A decoding workgroup's state after its keys: the running max and sum (the same in every
/// thread) and the unnormalized output row, as `chunks` partial rows of `Dv` in shared memory.
struct Partial {
    max: Value,
    sum: Value,
    parts: BufRef,
    chunks: u32,
    dv: u32,
}

impl Partial {
    /// Column `c` of the output row: the sum of its chunks' partials.
    fn acc(&self, b: &mut KernelBuilder, c: Value) -> Result<Value, String> {
        let (chunks, dv) = (
            b.const_i(i64::from(self.chunks)),
            b.const_i(i64::from(self.dv)),
        );
        let zero_f = b.const_f(0.0);
        fold(b, chunks, zero_f, |b, chunk, o| {
            let at = b.mul(chunk, dv);
            let at = b.add(at, c);
            let x = b.load(self.parts, at, 1);
            Ok(b.add(o, x))
        })
    }
}

/// Folds keys `lo..hi` into the online softmax of `at`'s query row, in blocks of one key per
/// thread (see the module doc). Reached by the whole workgroup (it has barriers).
fn sweep(
    att: &Attention,
    b: &mut KernelBuilder,
    at: &Head,
    (lo, hi): (Value, Value),
) -> Result<Partial, String> {
    let (body, threads, d, dv) = (att.body, att.body.threads, att.d, att.dv);
    let (zero, zero_f) = (b.const_i(0), b.const_f(0.0));
    let neg_inf = b.const_f(f64::NEG_INFINITY);
    let threads_v = b.const_i(i64::from(threads));
    let lane = b.special(Special::LocalId(Axis::X));
    let q = b.local("q", MemorySpace::Shared, ScalarType::F32, d);
    let scale = b.const_f(f64::from(att.scale));
    let (ql, vl) = (run_lanes(i64::from(d)), run_lanes(i64::from(dv)));
    for_each_run(b, body, (1, d), ql, |b, _, c| {
        let x = body.values(b, att.q, &[at.bi, at.head, at.i, c], ql, None)?;
        let scale = b.splat(scale, ql);
        let x = b.mul(x, scale);
        b.store(q, c, x);
        Ok(())
    })?;
    b.barrier();
    // V columns in runs of `vl` (one wide load each when Dv is a multiple of 4): `chunks`
    // groups of `width` threads, each thread `slots` runs `width` runs apart.
    let runs = dv / vl;
    let chunks = (threads / runs).max(1);
    let width = threads / chunks;
    let slots = runs.div_ceil(width);
    let (width_v, vl_v) = (b.const_i(i64::from(width)), b.const_i(i64::from(vl)));
    let chunk = b.div(lane, width_v);
    let first_run = b.binary(BinaryOp::Rem, lane, width_v);
    let last_run = b.const_i(i64::from(runs - 1));
    let run_of = |b: &mut KernelBuilder, s: u32| {
        let off = b.const_i(i64::from(s * width));
        b.add(first_run, off)
    };
    let cols: Vec<Value> = (0..slots)
        .map(|s| {
            let run = run_of(b, s);
            let run = b.binary(BinaryOp::Min, run, last_run);
            b.mul(run, vl_v)
        })
        .collect();
    let chunks_v = b.const_i(i64::from(chunks));
    let in_chunk = b.cmp(CmpOp::Lt, chunk, chunks_v);
    let probs = b.local("probs", MemorySpace::Shared, ScalarType::F32, threads);
    let one = b.const_i(1);
    let last_key = b.sub(hi, one);
    let mut init = vec![neg_inf, zero_f];
    let zero_run = b.splat(zero_f, vl);
    init.extend(cols.iter().map(|_| zero_run));
    let state = fold_many(b, (lo, hi, threads), &init, |b, j0, state| {
        let (m_old, l_old, accs) = (state[0], state[1], &state[2..]);
        // This thread's key (past the end: the last key's row, scored −∞).
        let j = b.add(j0, lane);
        let inside = b.cmp(CmpOp::Lt, j, hi);
        let key = b.binary(BinaryOp::Min, j, last_key);
        let dot = sum_runs(b, (zero, 1), (ql, i64::from(d)), 1, |b, c, lanes, sum| {
            let x = b.load(q, c, lanes);
            let y = body.values(b, att.k, &[at.bi, at.kv_head, key, c], lanes, None)?;
            Ok(vec![b.fma(x, y, sum[0])])
        })?[0];
        let score = att.masked(b, dot, [at.bi, at.head, at.i, key])?;
        let score = b.select(inside, score, neg_inf);
        let block_max = workgroup_reduce(b, body.workgroup(), &[score], ReduceOp::Max)[0];
        let m_new = b.binary(BinaryOp::Max, m_old, block_max);
        let m_safe = finite_or_zero(b, m_new);
        let shift = b.sub(m_old, m_safe);
        let alpha = b.unary(UnaryOp::Exp, shift);
        let centered = b.sub(score, m_safe);
        let p = b.unary(UnaryOp::Exp, centered);
        b.store(probs, lane, p);
        // The reduction's barrier also publishes `probs`.
        let p_sum = workgroup_reduce(b, body.workgroup(), &[p], ReduceOp::Add)[0];
        let l_new = b.fma(l_old, alpha, p_sum);
        let left = b.sub(hi, j0);
        let keys = b.binary(BinaryOp::Min, left, threads_v);
        let first = b.select(in_chunk, chunk, keys);
        let alpha = b.splat(alpha, vl);
        let rescaled: Vec<Value> = accs.iter().map(|&o| b.mul(o, alpha)).collect();
        let accs = fold_many(b, (first, keys, chunks), &rescaled, |b, k, os| {
            let p = b.load(probs, k, 1);
            let p = b.splat(p, vl);
            let j = b.add(j0, k);
            cols.iter()
                .zip(os)
                .map(|(&c, &o)| {
                    let x = body.values(b, att.v, &[at.bi, at.kv_head, j, c], vl, None)?;
                    Ok(b.fma(p, x, o))
                })
                .collect()
        })?;
        // Every thread has read `probs` before the next block writes it.
        b.barrier();
        Ok([m_new, l_new].into_iter().chain(accs).collect())
    })?;
    let parts = b.local("parts", MemorySpace::Shared, ScalarType::F32, chunks * dv);
    let dv_v = b.const_i(i64::from(dv));
    let base = b.mul(chunk, dv_v);
    let runs_v = b.const_i(i64::from(runs));
    b.if_then(in_chunk, |b| {
        for (s, &o) in (0..slots).zip(&state[2..]) {
            let run = run_of(b, s);
            let real = b.cmp(CmpOp::Lt, run, runs_v);
            b.if_then(real, |b| {
                let col = b.mul(run, vl_v);
                let e = b.add(base, col);
                b.store(parts, e, o);
            });
        }
    });
    b.barrier();
    Ok(Partial {
        max: state[0],
        sum: state[1],
        parts,
        chunks,
        dv,
    })
}

/// Writes the one-step FlashDecoding kernel of `body` into `b`, storing to `out`.
pub(super) fn lower_decoding(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
) -> Result<(), String> {
    let att = Attention::of(body)?;
    let at = launch(&att, b, 1)?;
    let keys = att.visible(b, at.i)?;
    let part = sweep(&att, b, &at, keys)?;
    let (zero, dv) = (b.const_i(0), b.const_i(i64::from(att.dv)));
    for_each_lane(b, body, zero, dv, |b, c| {
        let o = part.acc(b, c)?;
        let o = normalized(b, o, part.sum);
        att.store(b, [at.bi, at.head, at.i, c], o, out)
    })
}

/// FlashDecoding with `splits > 1`: the CPU's two steps and scratch layout, each step a SIMT
/// kernel — the splits' workgroups sweep their keys and write their partial rows, and the
/// merge's workgroups (one per query row and head) combine a row's splits, a column per thread.
pub(super) fn lower_split(steps: &Steps, splits: u32) -> Result<lir::Program, String> {
    split_program(
        steps,
        splits,
        |b, att, partials| {
            let at = launch(att, b, splits)?;
            let keys = att.visible(b, at.i)?;
            let (split, first, last) = split_keys(b, keys, splits);
            let part = sweep(att, b, &at, (first, last))?;
            let row = att.partial_at(b, at.row, at.h, split, splits);
            let (zero, dv) = (b.const_i(0), b.const_i(i64::from(att.dv)));
            for_each_lane(b, att.body, zero, dv, |b, c| {
                let o = part.acc(b, c)?;
                let e = b.add(row, c);
                b.store(partials, e, o);
                Ok(())
            })?;
            let lane = b.special(Special::LocalId(Axis::X));
            let first_lane = b.cmp(CmpOp::Eq, lane, zero);
            b.if_then(first_lane, |b| {
                let stats = b.add(row, dv);
                b.store(partials, stats, part.max);
                let one = b.const_i(1);
                let stats = b.add(stats, one);
                b.store(partials, stats, part.sum);
            });
            Ok(())
        },
        |b, att, out, partials| {
            let at = launch(att, b, 1)?;
            let weights = b.local("weights", MemorySpace::Private, ScalarType::F32, splits);
            let sum = att.merge_weights(b, (at.row, at.h), partials, splits, weights)?;
            let (zero, dv) = (b.const_i(0), b.const_i(i64::from(att.dv)));
            for_each_lane(b, att.body, zero, dv, |b, c| {
                let o = att.merged(b, (at.row, at.h, c), partials, splits, weights)?;
                let o = normalized(b, o, sum);
                att.store(b, [at.bi, at.head, at.i, c], o, out)
            })
        },
    )
}

/// Query rows and keys per FlashAttention tile: the largest (16 × 32 down to 1 × 2) whose
/// shared memory — the query rows, the K or V tile, the scores and three per-row statistics —
/// fits in `shared_bytes`.
fn tiles(d: u32, dv: u32, shared_bytes: u32) -> Result<(u32, u32), String> {
    [16, 8, 4, 2, 1]
        .into_iter()
        .map(|rows| (rows, 2 * rows))
        .find(|&(rows, keys)| {
            let floats = rows * d + keys * d.max(dv) + rows * keys + 3 * rows;
            u64::from(floats) * 4 <= u64::from(shared_bytes)
        })
        .ok_or_else(|| {
            format!(
                "attention with head dims {d} and {dv}: one query row and two keys need more \
                 than the device's {shared_bytes} bytes of shared memory"
            )
        })
}

/// Writes the FlashAttention (prefill) kernel of `body` into `b` for a device with
/// `shared_bytes` of shared memory per workgroup, storing to `out`.
pub(super) fn lower_prefill(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
    shared_bytes: u32,
) -> Result<(), String> {
    let att = Attention::of(body)?;
    let (threads, d, dv) = (body.threads, att.d, att.dv);
    let (rows, keys) = tiles(d, dv, shared_bytes)?;
    let [batch, _, s, _, hkv] = &att.dims;
    let pairs = [batch.clone(), hkv.clone()];
    b.grid([
        body.symbols
            .numel_size(std::slice::from_ref(s))?
            .ceil_div(u64::from(rows)),
        body.symbols.numel_size(&pairs)?,
        SizeExpr::Const(u64::from(att.heads)),
    ]);
    let block = b.special(Special::GroupId(Axis::X));
    let pair = b.special(Special::GroupId(Axis::Y));
    let [bi, kv_head] = body.symbols.unravel(b, pair, &pairs)?[..] else {
        unreachable!("two dims unravel to two indices");
    };
    let h = b.special(Special::GroupId(Axis::Z));
    let heads = b.const_i(i64::from(att.heads));
    let first_head = b.mul(kv_head, heads);
    let head = b.add(first_head, h);
    let lane = b.special(Special::LocalId(Axis::X));
    let (zero, one) = (b.const_i(0), b.const_i(1));
    let (zero_f, neg_inf) = (b.const_f(0.0), b.const_f(f64::NEG_INFINITY));
    let (d_v, dv_v) = (b.const_i(i64::from(d)), b.const_i(i64::from(dv)));
    let (rows_v, keys_v) = (b.const_i(i64::from(rows)), b.const_i(i64::from(keys)));
    let s_v = body.symbols.dim(b, s)?;
    let last_row = b.sub(s_v, one);
    let i0 = b.mul(block, rows_v);
    // The query row of the block's `r`-th (rows past the last compute on the last one and
    // are not stored).
    let row_of = |b: &mut KernelBuilder, r: Value| {
        let i = b.add(i0, r);
        b.binary(BinaryOp::Min, i, last_row)
    };
    let block_last = b.add(i0, rows_v);
    let block_last = b.sub(block_last, one);
    let block_last = b.binary(BinaryOp::Min, block_last, last_row);
    let (lo, _) = att.visible(b, i0)?;
    let (_, hi) = att.visible(b, block_last)?;
    let last_key = b.sub(hi, one);

    let q = b.local("q", MemorySpace::Shared, ScalarType::F32, rows * d);
    let kv = b.local("kv", MemorySpace::Shared, ScalarType::F32, keys * d.max(dv));
    let scores = b.local("scores", MemorySpace::Shared, ScalarType::F32, rows * keys);
    let max = b.local("max", MemorySpace::Shared, ScalarType::F32, rows);
    let sum = b.local("sum", MemorySpace::Shared, ScalarType::F32, rows);
    let alpha = b.local("alpha", MemorySpace::Shared, ScalarType::F32, rows);
    let scale = b.const_f(f64::from(att.scale));
    // Q, K and V rows in runs of 4 (one wide load each) when the head dims allow it.
    let (ql, vl) = (run_lanes(i64::from(d)), run_lanes(i64::from(dv)));
    for_each_run(b, body, (rows, d), ql, |b, r, c| {
        let i = row_of(b, r);
        let x = body.values(b, att.q, &[bi, head, i, c], ql, None)?;
        let scale = b.splat(scale, ql);
        let x = b.mul(x, scale);
        let e = b.mul(r, d_v);
        let e = b.add(e, c);
        b.store(q, e, x);
        Ok(())
    })?;
    for_each_lane(b, body, zero, rows_v, |b, r| {
        b.store(max, r, neg_inf);
        b.store(sum, r, zero_f);
        Ok(())
    })?;
    b.barrier();

    // Each thread's outputs: elements `lane + s·threads` of the block's `rows × Dv`.
    let out_len = rows * dv;
    let slots = out_len.div_ceil(threads);
    let last_out = b.const_i(i64::from(out_len - 1));
    let outs: Vec<(Value, Value)> = (0..slots)
        .map(|s| {
            let off = b.const_i(i64::from(s * threads));
            let e = b.add(lane, off);
            let e = b.binary(BinaryOp::Min, e, last_out);
            (b.div(e, dv_v), b.binary(BinaryOp::Rem, e, dv_v))
        })
        .collect();
    let init = vec![zero_f; outs.len()];
    let zero_v = b.splat(zero_f, vl);
    let accs = fold_many(b, (lo, hi, keys), &init, |b, j0, accs| {
        for_each_run(b, body, (keys, d), ql, |b, k, c| {
            let j = b.add(j0, k);
            let j = b.binary(BinaryOp::Min, j, last_key);
            let x = body.values(b, att.k, &[bi, kv_head, j, c], ql, None)?;
            let e = b.mul(k, d_v);
            let e = b.add(e, c);
            b.store(kv, e, x);
            Ok(())
        })?;
        b.barrier();
        let s_len = b.const_i(i64::from(rows * keys));
        for_each_lane(b, body, zero, s_len, |b, e| {
            let r = b.div(e, keys_v);
            let k = b.binary(BinaryOp::Rem, e, keys_v);
            let (q_row, k_row) = (b.mul(r, d_v), b.mul(k, d_v));
            let dot = sum_runs(b, (zero, 1), (ql, i64::from(d)), 1, |b, c, lanes, acc| {
                let (qa, ka) = (b.add(q_row, c), b.add(k_row, c));
                let (x, y) = (b.load(q, qa, lanes), b.load(kv, ka, lanes));
                Ok(vec![b.fma(x, y, acc[0])])
            })?[0];
            let i = row_of(b, r);
            let j = b.add(j0, k);
            let key = b.binary(BinaryOp::Min, j, last_key);
            let score = att.masked(b, dot, [bi, head, i, key])?;
            let (row_lo, row_hi) = att.visible(b, i)?;
            let before = b.cmp(CmpOp::Lt, j, row_hi);
            let score = b.select(before, score, neg_inf);
            let after = b.cmp(CmpOp::Le, row_lo, j);
            let score = b.select(after, score, neg_inf);
            b.store(scores, e, score);
            Ok(())
        })?;
        b.barrier();
        // The K tile is read: the V tile replaces it while the rows' softmax state moves.
        for_each_run(b, body, (keys, dv), vl, |b, k, c| {
            let j = b.add(j0, k);
            let inside = b.cmp(CmpOp::Lt, j, hi);
            let j = b.binary(BinaryOp::Min, j, last_key);
            let x = body.values(b, att.v, &[bi, kv_head, j, c], vl, None)?;
            let x = b.select(inside, x, zero_v);
            let e = b.mul(k, dv_v);
            let e = b.add(e, c);
            b.store(kv, e, x);
            Ok(())
        })?;
        for_each_lane(b, body, zero, rows_v, |b, r| {
            let base = b.mul(r, keys_v);
            let m_old = b.load(max, r, 1);
            let block_max = fold(b, keys_v, neg_inf, |b, k, m| {
                let at = b.add(base, k);
                let x = b.load(scores, at, 1);
                Ok(b.binary(BinaryOp::Max, m, x))
            })?;
            let m_new = b.binary(BinaryOp::Max, m_old, block_max);
            let m_safe = finite_or_zero(b, m_new);
            let shift = b.sub(m_old, m_safe);
            let a = b.unary(UnaryOp::Exp, shift);
            let p_sum = fold(b, keys_v, zero_f, |b, k, total| {
                let at = b.add(base, k);
                let x = b.load(scores, at, 1);
                let centered = b.sub(x, m_safe);
                let p = b.unary(UnaryOp::Exp, centered);
                b.store(scores, at, p);
                Ok(b.add(total, p))
            })?;
            let l_old = b.load(sum, r, 1);
            let l_new = b.fma(l_old, a, p_sum);
            b.store(sum, r, l_new);
            b.store(max, r, m_new);
            b.store(alpha, r, a);
            Ok(())
        })?;
        b.barrier();
        let accs = outs
            .iter()
            .zip(accs)
            .map(|(&(r, c), &o)| {
                let a = b.load(alpha, r, 1);
                let o = b.mul(o, a);
                let base = b.mul(r, keys_v);
                fold_range(b, (zero, keys_v, 1), o, |b, k, o| {
                    let at = b.add(base, k);
                    let p = b.load(scores, at, 1);
                    let at = b.mul(k, dv_v);
                    let at = b.add(at, c);
                    let x = b.load(kv, at, 1);
                    Ok(b.fma(p, x, o))
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        // Every thread is done with the tile before the next one overwrites it.
        b.barrier();
        Ok(accs)
    })?;

    let mut failure = Ok(());
    for (slot, (&(r, c), &o)) in (0..slots).zip(outs.iter().zip(&accs)) {
        let off = b.const_i(i64::from(slot * threads));
        let e = b.add(lane, off);
        let len = b.const_i(i64::from(out_len));
        let real = b.cmp(CmpOp::Lt, e, len);
        let i = b.add(i0, r);
        let in_seq = b.cmp(CmpOp::Lt, i, s_v);
        b.if_then(real, |b| {
            b.if_then(in_seq, |b| {
                let l = b.load(sum, r, 1);
                let o = normalized(b, o, l);
                if let Err(e) = att.store(b, [bi, head, i, c], o, out) {
                    failure = Err(e);
                }
            });
        });
    }
    failure
}
