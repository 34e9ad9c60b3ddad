//! The attention template, for both `FlashAttention` and `FlashDecoding` kernels:
//! `[elementwise/layout/RoPE prologue on q, k, v or the mask] Attention [elementwise, permute or
//! reshape epilogue]`. A group computes query row `i` of batch `b` for all the query heads that
//! share one KV head (grouped-query attention: each K and V row is read from memory once for the
//! group's `Hq/Hkv` heads, then from L1). The queries (times the scale) go to a Private array,
//! then the visible keys — the causal and window bounds limit the range — are walked in blocks of
//! [`BLOCK_K`] with FlashAttention's online softmax per head: a block's scores go to a Private
//! array, the running max moves once per block (one rescale of the Dv accumulator and one `exp`
//! per block instead of per key), and the block's probabilities accumulate its V rows. The
//! normalized rows are written through the epilogue at the output index each element maps to
//! ([`Body::forward`]). Operands are read through [`Body::value`], so prologues are evaluated in
//! place — except K and V read as they are from dense f32 buffers (the KV cache, decode and
//! prefill alike), whose rows are read as vectors of the target's width (`Body::lanes`) with the
//! head dims unrolled and the V accumulation carried in registers [`V_CHUNK`] vectors at a time.
//!
//! `FlashDecoding { splits }` with more than one split is a two-step program ([`lower_split`]):
//! the splits of each row's keys are swept by separate groups (parallel work when `B·Hkv` groups
//! are fewer than the threads, or the KV is long) and merged by log-sum-exp. FlashAttention's
//! `block_q` is not used: a CPU pool is kept busy by the `B·Hkv·S` groups of prefill. D, Dv and
//! the head counts must be constants.

use super::expr::{fold, fold_many, fold_range, for_each, load_f32, Body};
use super::index::broadcast;
use super::Steps;
use tessera_ir::kernel::BodyArg;
use tessera_ir::lir::{
    self, Access, Axis, BinaryOp, BufRef, CmpOp, KernelBuilder, MemorySpace, ScalarType, SizeExpr,
    Special, Value,
};
use tessera_ir::{Dim, Op};

/// Keys per block of the online softmax.
const BLOCK_K: u32 = 16;

/// Accumulator vectors of a V row carried together through a block's keys (with the key's
/// probability splat and a V load, 6 registers of the 16 a 128-bit x86 core has).
const V_CHUNK: u32 = 4;

/// The constant size of an attention head dim, the length of a Private array.
fn head_dim(d: &Dim, what: &str) -> Result<u32, String> {
    d.as_const()
        .and_then(|d| u32::try_from(d).ok())
        .ok_or_else(|| format!("attention {what} head dim `{d}` that is not a constant"))
}

/// An attention body: its operands, sizes and flags.
pub(super) struct Attention<'a> {
    pub body: &'a Body<'a>,
    /// The position of the attention op in the body.
    pub at: usize,
    pub scale: f32,
    pub causal: bool,
    pub window: Option<usize>,
    pub q: BodyArg,
    pub k: BodyArg,
    pub v: BodyArg,
    pub mask: Option<BodyArg>,
    /// `[batch, hq, s, t, hkv]`.
    pub dims: [Dim; 5],
    pub d: u32,
    pub dv: u32,
    /// Query heads per KV head.
    pub heads: u32,
}

/// What a group works on — query row `i` of batch `bi` for the query heads from `first_head`
/// that share KV head `kv_head`; `row` is its linear index over `[batch, hkv, s]` — and its
/// private state: per head the queries (times the scale), the running max and sum, and the
/// `Dv` accumulator.
struct Group {
    row: Value,
    bi: Value,
    kv_head: Value,
    i: Value,
    first_head: Value,
    acc: BufRef,
    max: BufRef,
    sum: BufRef,
}

impl<'a> Attention<'a> {
    pub(super) fn of(body: &'a Body<'a>) -> Result<Attention<'a>, String> {
        let at = body
            .ops
            .iter()
            .position(|s| matches!(s.op, Op::Attention { .. }))
            .ok_or("an attention kernel without an attention")?;
        let Op::Attention {
            scale,
            causal,
            window,
        } = body.ops[at].op
        else {
            unreachable!("position found an attention");
        };
        let (q, k, v, mask) = match body.ops[at].args[..] {
            [q, k, v] => (q, k, v, None),
            [q, k, v, m] => (q, k, v, Some(m)),
            _ => return Err("attention without three or four operands".into()),
        };
        let dims = |arg: BodyArg| match body.ty(arg).shape.as_slice() {
            [b, h, l, d] => Ok([b, h, l, d]),
            _ => Err("attention operand of a rank other than 4".to_string()),
        };
        let ([batch, hq, s, d], [_, hkv, t, _], [.., dv]) = (dims(q)?, dims(k)?, dims(v)?);
        let heads = match (hq.as_const(), hkv.as_const()) {
            (Some(hq), Some(hkv)) if hkv > 0 && hq % hkv == 0 => u32::try_from(hq / hkv)
                .map_err(|_| "attention with too many query heads per KV head")?,
            _ => {
                return Err(format!(
                    "attention with {hq} query heads over {hkv} KV heads"
                ))
            }
        };
        Ok(Attention {
            body,
            at,
            scale,
            causal,
            window,
            q,
            k,
            v,
            mask,
            dims: [batch, hq, s, t, hkv].map(Dim::clone),
            d: head_dim(d, "q/k")?,
            dv: head_dim(dv, "v")?,
            heads,
        })
    }

    /// The dims groups are laid over: `[batch, hkv, s]`.
    pub(super) fn rows(&self) -> [Dim; 3] {
        let [batch, _, s, _, hkv] = &self.dims;
        [batch.clone(), hkv.clone(), s.clone()]
    }

    /// A grid of one group per query row (times `splits` along y) and this launch's group.
    fn launch(&self, b: &mut KernelBuilder, splits: u32) -> Result<Group, String> {
        b.grid([
            self.body.symbols.numel_size(&self.rows())?,
            SizeExpr::Const(u64::from(splits)),
            SizeExpr::Const(1),
        ]);
        self.group(b)
    }

    /// The group of `GroupId(X)`, its state initialized (accumulators 0, max −∞, sum 0).
    fn group(&self, b: &mut KernelBuilder) -> Result<Group, String> {
        let row = b.special(Special::GroupId(Axis::X));
        let idx = self.body.symbols.unravel(b, row, &self.rows())?;
        let [bi, kv_head, i] = idx[..] else {
            unreachable!("three dims unravel to three indices");
        };
        let heads = b.const_i(i64::from(self.heads));
        let first_head = b.mul(kv_head, heads);
        let g = Group {
            row,
            bi,
            kv_head,
            i,
            first_head,
            acc: b.local(
                "acc",
                MemorySpace::Private,
                ScalarType::F32,
                self.heads * self.dv,
            ),
            max: b.local("max", MemorySpace::Private, ScalarType::F32, self.heads),
            sum: b.local("sum", MemorySpace::Private, ScalarType::F32, self.heads),
        };
        let (zero, zero_f) = (b.const_i(0), b.const_f(0.0));
        let neg_inf = b.const_f(f64::NEG_INFINITY);
        let len = b.const_i(i64::from(self.heads * self.dv));
        for_each(b, zero, len, |b, e| {
            b.store(g.acc, e, zero_f);
            Ok(())
        })?;
        for_each(b, zero, heads, |b, h| {
            b.store(g.max, h, neg_inf);
            b.store(g.sum, h, zero_f);
            Ok(())
        })?;
        Ok(g)
    }

    /// The keys `lo..hi` query row `i` sees: the causal and window bounds.
    pub(super) fn visible(
        &self,
        b: &mut KernelBuilder,
        i: Value,
    ) -> Result<(Value, Value), String> {
        let [_, _, s, t, _] = &self.dims;
        let (s_v, t_v) = (self.body.symbols.dim(b, s)?, self.body.symbols.dim(b, t)?);
        let (zero, one) = (b.const_i(0), b.const_i(1));
        // `newest` is this query's own position among the keys.
        let past = b.sub(t_v, s_v);
        let newest = b.add(past, i);
        let through_newest = b.add(newest, one);
        let hi = if self.causal {
            b.binary(BinaryOp::Min, through_newest, t_v)
        } else {
            t_v
        };
        let lo = match self.window {
            Some(w) => {
                let w = b.const_i(i64::try_from(w).map_err(|_| "attention window")?);
                let first = b.sub(through_newest, w);
                b.binary(BinaryOp::Max, first, zero)
            }
            None => zero,
        };
        Ok((lo, hi))
    }

    /// Folds keys `lo..hi` into `g`'s state: the queries (times the scale) into a Private array,
    /// then blocks of [`BLOCK_K`] keys with the online softmax.
    fn sweep(&self, b: &mut KernelBuilder, g: &Group, lo: Value, hi: Value) -> Result<(), String> {
        let (body, heads, d, dv, lanes) = (self.body, self.heads, self.d, self.dv, self.body.lanes);
        let (bi, kv_head, i) = (g.bi, g.kv_head, g.i);
        let zero = b.const_i(0);
        let heads_v = b.const_i(i64::from(heads));
        let (d_v, dv_v) = (b.const_i(i64::from(d)), b.const_i(i64::from(dv)));
        let scale_v = b.const_f(f64::from(self.scale));
        let zero_f = b.const_f(0.0);
        let neg_inf = b.const_f(f64::NEG_INFINITY);
        let q_rows = b.local("q", MemorySpace::Private, ScalarType::F32, heads * d);
        let scores = b.local("scores", MemorySpace::Private, ScalarType::F32, BLOCK_K);
        for_each(b, zero, heads_v, |b, h| {
            let head = b.add(g.first_head, h);
            let q_base = b.mul(h, d_v);
            for_each(b, zero, d_v, |b, c| {
                let x = body.value(b, self.q, &[bi, head, i, c], None)?;
                let x = b.mul(x, scale_v);
                let at = b.add(q_base, c);
                b.store(q_rows, at, x);
                Ok(())
            })
        })?;
        // K and V read straight from dense f32 buffers (the KV cache) with whole vectors per row.
        let rows = match (body.float_input(self.k), body.float_input(self.v)) {
            (Some(kb), Some(vb)) if d % lanes == 0 && dv % lanes == 0 => Some((kb, vb)),
            _ => None,
        };
        let origin = |b: &mut KernelBuilder, arg: BodyArg, j: Value| {
            body.symbols
                .ravel(b, &[bi, kv_head, j, zero], &body.ty(arg).shape)
        };
        let block_v = b.const_i(i64::from(BLOCK_K));
        let mut failure = Ok(());
        b.for_range(lo, hi, BLOCK_K, &[], |b, j0, _| {
            let block_end = b.add(j0, block_v);
            let block_end = b.binary(BinaryOp::Min, block_end, hi);
            failure = for_each(b, zero, heads_v, |b, h| {
                let head = b.add(g.first_head, h);
                let q_base = b.mul(h, d_v);
                // The block's scores (into `scores`) and their max.
                let block_max = fold_range(b, (j0, block_end, 1), neg_inf, |b, j, m| {
                    let score = match rows {
                        Some((kb, _)) => {
                            let base = origin(b, self.k, j)?;
                            let zero4 = b.splat(zero_f, lanes);
                            let sums = (0..d / lanes).try_fold(zero4, |sum, c| {
                                let at = b.const_i(i64::from(c * lanes));
                                let q_at = b.add(q_base, at);
                                let x = b.load(q_rows, q_at, lanes);
                                let at = b.add(base, at);
                                let y = load_f32(b, kb, at, lanes);
                                Ok::<_, String>(b.fma(x, y, sum))
                            })?;
                            b.reduce_lanes(lir::ReduceOp::Add, sums)
                        }
                        None => fold(b, d_v, zero_f, |b, c, sum| {
                            let q_at = b.add(q_base, c);
                            let x = b.load(q_rows, q_at, 1);
                            let y = body.value(b, self.k, &[bi, kv_head, j, c], None)?;
                            Ok(b.fma(x, y, sum))
                        })?,
                    };
                    let score = self.masked(b, score, [bi, head, i, j])?;
                    let slot = b.sub(j, j0);
                    b.store(scores, slot, score);
                    Ok(b.binary(BinaryOp::Max, m, score))
                })?;
                // With every score so far −∞, subtract 0 instead of −∞ so that exp gives 0, not NaN.
                let m_old = b.load(g.max, h, 1);
                let m_new = b.binary(BinaryOp::Max, m_old, block_max);
                let m_safe = finite_or_zero(b, m_new);
                let shift = b.sub(m_old, m_safe);
                let alpha = b.unary(lir::UnaryOp::Exp, shift);
                let p_sum = fold_range(b, (j0, block_end, 1), zero_f, |b, j, total| {
                    let slot = b.sub(j, j0);
                    let score = b.load(scores, slot, 1);
                    let centered = b.sub(score, m_safe);
                    let p = b.unary(lir::UnaryOp::Exp, centered);
                    b.store(scores, slot, p);
                    Ok(b.add(total, p))
                })?;
                let l_old = b.load(g.sum, h, 1);
                let l_new = b.fma(l_old, alpha, p_sum);
                b.store(g.sum, h, l_new);
                b.store(g.max, h, m_new);
                let acc_base = b.mul(h, dv_v);
                match rows {
                    Some((_, vb)) => accumulate_rows(
                        b,
                        (g.acc, acc_base, dv, lanes),
                        alpha,
                        |b, j| {
                            let slot = b.sub(j, j0);
                            let p = b.load(scores, slot, 1);
                            Ok((p, origin(b, self.v, j)?))
                        },
                        (vb, j0, block_end),
                    ),
                    None => for_each(b, zero, dv_v, |b, c| {
                        let at = b.add(acc_base, c);
                        let o = b.load(g.acc, at, 1);
                        let o = b.mul(o, alpha);
                        let o = fold_range(b, (j0, block_end, 1), o, |b, j, o| {
                            let slot = b.sub(j, j0);
                            let p = b.load(scores, slot, 1);
                            let x = body.value(b, self.v, &[bi, kv_head, j, c], None)?;
                            Ok(b.fma(p, x, o))
                        })?;
                        b.store(g.acc, at, o);
                        Ok(())
                    }),
                }
            });
            vec![]
        });
        failure
    }

    /// `score` of query row `i` (of batch `bi`, query head `head`) for key `j` plus the
    /// additive mask there, when the attention has one.
    pub(super) fn masked(
        &self,
        b: &mut KernelBuilder,
        score: Value,
        [bi, head, i, j]: [Value; 4],
    ) -> Result<Value, String> {
        let Some(mask) = self.mask else {
            return Ok(score);
        };
        let [batch, hq, s, t, _] = &self.dims;
        let scores_shape = [batch.clone(), hq.clone(), s.clone(), t.clone()];
        let at = broadcast(
            b,
            &[bi, head, i, j],
            &scores_shape,
            &self.body.ty(mask).shape,
        )?;
        let bias = self.body.value(b, mask, &at, None)?;
        Ok(b.add(score, bias))
    }

    /// Normalizes `g`'s accumulators by their sums and writes them through the epilogue. A row
    /// that saw no key, or only −∞ scores, has sum 0 and is zeros.
    fn finish(&self, b: &mut KernelBuilder, g: &Group, out: BufRef) -> Result<(), String> {
        let zero = b.const_i(0);
        let heads_v = b.const_i(i64::from(self.heads));
        let dv_v = b.const_i(i64::from(self.dv));
        for_each(b, zero, heads_v, |b, h| {
            let head = b.add(g.first_head, h);
            let l = b.load(g.sum, h, 1);
            let acc_base = b.mul(h, dv_v);
            for_each(b, zero, dv_v, |b, c| {
                let at = b.add(acc_base, c);
                let o = b.load(g.acc, at, 1);
                let o = normalized(b, o, l);
                self.store(b, [g.bi, head, g.i, c], o, out)
            })
        })
    }

    /// Writes `o`, the attention's element at `[bi, head, i, c]`, through the epilogue to the
    /// output element it maps to ([`Body::forward`]: that element reads no other).
    pub(super) fn store(
        &self,
        b: &mut KernelBuilder,
        at: [Value; 4],
        o: Value,
        out: BufRef,
    ) -> Result<(), String> {
        let body = self.body;
        let idx = body.forward(b, self.at, &at)?;
        let hook = |_: &mut KernelBuilder, _: &[Value]| Ok(o);
        let x = body.value(b, body.result(), &idx, Some((self.at, &hook)))?;
        let e = body.symbols.ravel(b, &idx, &body.ty(body.result()).shape)?;
        b.store(out, e, x);
        Ok(())
    }

    /// The log-sum-exp weights `e^(mᵢ−m*)` of head `h`'s splits of group row `row` (into the
    /// Private `weights`) and their combined sum `Σ sumᵢ·e^(mᵢ−m*)`.
    pub(super) fn merge_weights(
        &self,
        b: &mut KernelBuilder,
        (row, h): (Value, Value),
        partials: BufRef,
        splits: u32,
        weights: BufRef,
    ) -> Result<Value, String> {
        let one = b.const_i(1);
        let (zero_f, neg_inf) = (b.const_f(0.0), b.const_f(f64::NEG_INFINITY));
        let (dv, splits_v) = (b.const_i(i64::from(self.dv)), b.const_i(i64::from(splits)));
        let m = fold(b, splits_v, neg_inf, |b, c, m| {
            let at = self.partial_at(b, row, h, c, splits);
            let at = b.add(at, dv);
            let mc = b.load(partials, at, 1);
            Ok(b.binary(BinaryOp::Max, m, mc))
        })?;
        let m_safe = finite_or_zero(b, m);
        fold(b, splits_v, zero_f, |b, c, l| {
            let at = self.partial_at(b, row, h, c, splits);
            let at = b.add(at, dv);
            let mc = b.load(partials, at, 1);
            let shift = b.sub(mc, m_safe);
            let w = b.unary(lir::UnaryOp::Exp, shift);
            b.store(weights, c, w);
            let at = b.add(at, one);
            let lc = b.load(partials, at, 1);
            Ok(b.fma(lc, w, l))
        })
    }

    /// Column `c` of head `h`'s accumulators of group row `row` merged over the splits with
    /// the [`Self::merge_weights`] `weights`: `Σ accᵢ·e^(mᵢ−m*)`.
    pub(super) fn merged(
        &self,
        b: &mut KernelBuilder,
        (row, h, c): (Value, Value, Value),
        partials: BufRef,
        splits: u32,
        weights: BufRef,
    ) -> Result<Value, String> {
        let zero_f = b.const_f(0.0);
        let splits_v = b.const_i(i64::from(splits));
        fold(b, splits_v, zero_f, |b, split, o| {
            let at = self.partial_at(b, row, h, split, splits);
            let at = b.add(at, c);
            let x = b.load(partials, at, 1);
            let w = b.load(weights, split, 1);
            Ok(b.fma(x, w, o))
        })
    }

    /// Elements of one split's partial row: the `Dv` accumulators, then the max and the sum.
    pub(super) fn partial_len(&self) -> u32 {
        self.dv + 2
    }

    /// The first element of the partial row of split `split` in the scratch for head `h` (of
    /// those sharing a KV head) of group row `row` (linear over [`Self::rows`]).
    pub(super) fn partial_at(
        &self,
        b: &mut KernelBuilder,
        row: Value,
        h: Value,
        split: Value,
        splits: u32,
    ) -> Value {
        let heads = b.const_i(i64::from(self.heads));
        let splits = b.const_i(i64::from(splits));
        let len = b.const_i(i64::from(self.partial_len()));
        let head_row = b.mul(row, heads);
        let head_row = b.add(head_row, h);
        let split_row = b.mul(head_row, splits);
        let split_row = b.add(split_row, split);
        b.mul(split_row, len)
    }
}

/// `acc / sum`, or 0 for a row that saw no key or only −∞ scores (sum 0).
pub(super) fn normalized(b: &mut KernelBuilder, acc: Value, sum: Value) -> Value {
    let zero_f = b.const_f(0.0);
    let seen = b.cmp(CmpOp::Lt, zero_f, sum);
    let o = b.div(acc, sum);
    b.select(seen, o, zero_f)
}

/// `m`, or 0 where it is −∞: the shift that makes `exp` of an all-−∞ row's terms 0, not NaN.
pub(super) fn finite_or_zero(b: &mut KernelBuilder, m: Value) -> Value {
    let (zero_f, neg_inf) = (b.const_f(0.0), b.const_f(f64::NEG_INFINITY));
    let empty = b.cmp(CmpOp::Eq, m, neg_inf);
    b.select(empty, zero_f, m)
}

/// Writes the attention kernel of `body` into `b` (one step: every visible key in one group),
/// storing to `out`.
pub(super) fn lower(b: &mut KernelBuilder, body: &Body, out: BufRef) -> Result<(), String> {
    let att = Attention::of(body)?;
    let g = att.launch(b, 1)?;
    let (lo, hi) = att.visible(b, g.i)?;
    att.sweep(b, &g, lo, hi)?;
    att.finish(b, &g, out)
}

/// FlashDecoding with `splits > 1`: a first step whose groups each sweep one split of a query
/// row's visible keys (`⌈keys / splits⌉` each, the last ones shorter or empty) and write
/// their unnormalized `(acc, max, sum)` per head to a scratch buffer, and a second that merges
/// a row's splits by log-sum-exp — `m* = max mᵢ`, `acc = Σ accᵢ·e^(mᵢ−m*)`,
/// `sum = Σ sumᵢ·e^(mᵢ−m*)` — and finishes it like the one-step kernel.
pub(super) fn lower_split(steps: &Steps, splits: u32) -> Result<lir::Program, String> {
    split_program(
        steps,
        splits,
        |b, att, partials| {
            let g = att.launch(b, splits)?;
            let (lo, hi) = att.visible(b, g.i)?;
            let (c, first, last) = split_keys(b, (lo, hi), splits);
            att.sweep(b, &g, first, last)?;
            let zero = b.const_i(0);
            let heads = b.const_i(i64::from(att.heads));
            let dv = b.const_i(i64::from(att.dv));
            let one = b.const_i(1);
            for_each(b, zero, heads, |b, h| {
                let at = att.partial_at(b, g.row, h, c, splits);
                let acc_base = b.mul(h, dv);
                for_each(b, zero, dv, |b, e| {
                    let from = b.add(acc_base, e);
                    let x = b.load(g.acc, from, 1);
                    let to = b.add(at, e);
                    b.store(partials, to, x);
                    Ok(())
                })?;
                let stats = b.add(at, dv);
                let m = b.load(g.max, h, 1);
                b.store(partials, stats, m);
                let l = b.load(g.sum, h, 1);
                let stats = b.add(stats, one);
                b.store(partials, stats, l);
                Ok(())
            })
        },
        |b, att, out, partials| {
            let g = att.launch(b, 1)?;
            let weights = b.local("weights", MemorySpace::Private, ScalarType::F32, splits);
            let zero = b.const_i(0);
            let heads = b.const_i(i64::from(att.heads));
            let dv = b.const_i(i64::from(att.dv));
            for_each(b, zero, heads, |b, h| {
                let l = att.merge_weights(b, (g.row, h), partials, splits, weights)?;
                b.store(g.sum, h, l);
                let acc_base = b.mul(h, dv);
                for_each(b, zero, dv, |b, e| {
                    let o = att.merged(b, (g.row, h, e), partials, splits, weights)?;
                    let to = b.add(acc_base, e);
                    b.store(g.acc, to, o);
                    Ok(())
                })
            })?;
            att.finish(b, &g, out)
        },
    )
}

/// The two-step program of a split FlashDecoding kernel, for the CPU and SIMT templates alike:
/// `split` writes a step's partials (given the scratch buffer), `merge` reads them and writes
/// the output. The scratch holds `rows · heads · splits` partial rows ([`Attention::partial_at`]).
pub(super) fn split_program(
    steps: &Steps,
    splits: u32,
    split: impl FnOnce(&mut KernelBuilder, &Attention, BufRef) -> Result<(), String>,
    merge: impl FnOnce(&mut KernelBuilder, &Attention, BufRef, BufRef) -> Result<(), String>,
) -> Result<lir::Program, String> {
    let mut scratch_len = None;
    let split = steps.build(
        ".split",
        &[("partials", ScalarType::F32, Access::Write)],
        |b, body, _, scratch| {
            let att = Attention::of(body)?;
            let rows = body.symbols.numel_size(&att.rows())?;
            let per_row = att.heads * splits * att.partial_len();
            scratch_len = Some(SizeExpr::Mul(
                Box::new(rows),
                Box::new(SizeExpr::Const(u64::from(per_row))),
            ));
            split(b, &att, scratch[0])
        },
    )?;
    let merge = steps.build(
        ".merge",
        &[("partials", ScalarType::F32, Access::Read)],
        |b, body, out, scratch| merge(b, &Attention::of(body)?, out, scratch[0]),
    )?;
    Ok(lir::Program {
        scratch: vec![lir::Scratch {
            name: "partials".into(),
            elem: ScalarType::F32,
            len: scratch_len.expect("the split step sets the scratch length"),
        }],
        steps: vec![split, merge],
    })
}

/// This group's split (`GroupId(Y)`) of the keys `lo..hi` — splits of `⌈len / splits⌉` keys,
/// the last ones shorter or empty — as `(split, first, last)`.
pub(super) fn split_keys(
    b: &mut KernelBuilder,
    (lo, hi): (Value, Value),
    splits: u32,
) -> (Value, Value, Value) {
    let zero = b.const_i(0);
    let len = b.sub(hi, lo);
    let len = b.binary(BinaryOp::Max, len, zero);
    let (splits_v, round) = (
        b.const_i(i64::from(splits)),
        b.const_i(i64::from(splits - 1)),
    );
    let chunk = b.add(len, round);
    let chunk = b.div(chunk, splits_v);
    let c = b.special(Special::GroupId(Axis::Y));
    let skip = b.mul(c, chunk);
    let first = b.add(lo, skip);
    let first = b.binary(BinaryOp::Min, first, hi);
    let last = b.add(first, chunk);
    let last = b.binary(BinaryOp::Min, last, hi);
    (c, first, last)
}

/// `acc[base..base + dv] = acc·alpha + Σ_j p_j·V[row_j]` over keys `j0..end` of the dense f32 V
/// buffer `vb`, where `key(j)` gives key j's probability and the element where its V row starts:
/// [`V_CHUNK`] accumulator vectors carried through the keys at a time.
fn accumulate_rows(
    b: &mut KernelBuilder,
    (acc, base, dv, lanes): (BufRef, Value, u32, u32),
    alpha: Value,
    key: impl Fn(&mut KernelBuilder, Value) -> Result<(Value, Value), String>,
    (vb, j0, end): (BufRef, Value, Value),
) -> Result<(), String> {
    let alpha4 = b.splat(alpha, lanes);
    let vectors: Vec<u32> = (0..dv / lanes).collect();
    for chunk in vectors.chunks(V_CHUNK as usize) {
        let ats: Vec<Value> = chunk
            .iter()
            .map(|&c| {
                let off = b.const_i(i64::from(c * lanes));
                b.add(base, off)
            })
            .collect();
        let init: Vec<Value> = ats
            .iter()
            .map(|&at| {
                let o = b.load(acc, at, lanes);
                b.mul(o, alpha4)
            })
            .collect();
        let sums = fold_many(b, (j0, end, 1), &init, |b, j, os| {
            let (p, row) = key(b, j)?;
            let p4 = b.splat(p, lanes);
            Ok(chunk
                .iter()
                .zip(os)
                .map(|(&c, &o)| {
                    let off = b.const_i(i64::from(c * lanes));
                    let from = b.add(row, off);
                    let x = load_f32(b, vb, from, lanes);
                    b.fma(p4, x, o)
                })
                .collect())
        })?;
        for (&at, &o) in ats.iter().zip(&sums) {
            b.store(acc, at, o);
        }
    }
    Ok(())
}
