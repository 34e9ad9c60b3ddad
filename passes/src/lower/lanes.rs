//! How a group's threads share a loop, so one template serves both target classes: on a CPU a
//! group is one thread and these are the serial loops; on a SIMT target (`Body::threads` > 1)
//! each thread takes every `threads`-th element from its lane (adjacent threads, adjacent
//! elements: coalesced accesses) and reductions combine the threads' partial results through
//! shared memory.

use super::expr::{fold, fold_many, fold_range, for_each, Body};
use tessera_ir::lir::{
    Axis, BinaryOp, CmpOp, Intrinsic, KernelBuilder, MemorySpace, ReduceOp, ScalarType, Special,
    Value,
};

/// The calling thread's lane and the group's threads: 0 and 1 on a CPU.
pub(super) fn lane_of(b: &mut KernelBuilder, body: &Body) -> (Value, u32) {
    match body.threads {
        1 => (b.const_i(0), 1),
        threads => (b.special(Special::LocalId(Axis::X)), threads),
    }
}

/// Runs `f` for each `j` in `start..end` the calling thread owns.
pub(super) fn for_each_lane(
    b: &mut KernelBuilder,
    body: &Body,
    start: Value,
    end: Value,
    f: impl FnOnce(&mut KernelBuilder, Value) -> Result<(), String>,
) -> Result<(), String> {
    if body.threads == 1 {
        return for_each(b, start, end, f);
    }
    let lane = b.special(Special::LocalId(Axis::X));
    let first = b.add(start, lane);
    let mut failure = Ok(());
    b.for_range(first, end, body.threads, &[], |b, j, _| {
        failure = f(b, j);
        vec![]
    });
    failure
}

/// A sum over `0..len` (a constant) shared by `threads` threads (the calling one `lane`; 0 and
/// 1 for a serial loop) in runs of `width` consecutive elements, so that each run can be read
/// with one vector load: thread `lane` takes the runs from `lane·width` by `width·threads` below
/// `len − len % width`, then the tail from there plus `lane` by `threads`, element by element.
/// The runs' starts are products of constants and loop counters with aligned starts and steps,
/// so `known_alignment` proves them multiples of `width` (a wide access on a GPU when the
/// indices built from them are too). `step(b, j, lanes, accs)` adds the terms of elements
/// `j..j + lanes` to the `count` accumulators, `lanes` wide; returns this thread's partial sums,
/// one scalar per accumulator (the workgroup's are not combined).
pub(super) fn sum_runs(
    b: &mut KernelBuilder,
    (lane, threads): (Value, u32),
    (width, len): (u32, i64),
    count: usize,
    mut step: impl FnMut(&mut KernelBuilder, Value, u32, &[Value]) -> Result<Vec<Value>, String>,
) -> Result<Vec<Value>, String> {
    let zero_f = b.const_f(0.0);
    let mut sums = vec![zero_f; count];
    let runs_end = len - len % i64::from(width);
    if runs_end > 0 {
        let zero = b.splat(zero_f, width);
        let (width_v, end) = (b.const_i(i64::from(width)), b.const_i(runs_end));
        let start = b.mul(lane, width_v);
        let range = (start, end, width * threads);
        let accs = fold_many(b, range, &vec![zero; count], |b, j, accs| {
            step(b, j, width, accs)
        })?;
        sums = accs
            .into_iter()
            .map(|v| b.reduce_lanes(ReduceOp::Add, v))
            .collect();
    }
    if runs_end < len {
        let (tail, end) = (b.const_i(runs_end), b.const_i(len));
        let start = b.add(tail, lane);
        sums = fold_many(b, (start, end, threads), &sums, |b, j, accs| {
            step(b, j, 1, accs)
        })?;
    }
    Ok(sums)
}

/// Runs `f(b, r, c)` for each run of `lanes` consecutive columns `c..c + lanes` of a
/// `rows × width` block (`width` a multiple of `lanes`) that the calling thread owns: the runs
/// are split lane-strided between the workgroup's threads ([`for_each_lane`]: adjacent threads,
/// adjacent runs), and each `c` is the run's number times `lanes`, which `known_alignment`
/// proves a multiple of `lanes` — so the thread can read the run with one vector load.
pub(super) fn for_each_run(
    b: &mut KernelBuilder,
    body: &Body,
    (rows, width): (u32, u32),
    lanes: u32,
    f: impl FnOnce(&mut KernelBuilder, Value, Value) -> Result<(), String>,
) -> Result<(), String> {
    let per_row = width / lanes;
    let (zero, count) = (b.const_i(0), b.const_i(i64::from(rows * per_row)));
    let (per_row_v, lanes_v) = (b.const_i(i64::from(per_row)), b.const_i(i64::from(lanes)));
    for_each_lane(b, body, zero, count, |b, e| {
        let r = b.div(e, per_row_v);
        let run = b.binary(BinaryOp::Rem, e, per_row_v);
        let c = b.mul(run, lanes_v);
        f(b, r, c)
    })
}

/// A fold of `f` over `0..n` whose steps combine by `op` (`f(acc, j)` must be `op(acc, term_j)`,
/// `init` its identity): serial on a CPU; on a SIMT target each thread folds its own elements
/// and the workgroup combines the partial results, every thread getting the total. Must be
/// reached by the whole workgroup (it has barriers).
pub(super) fn fold_lanes(
    b: &mut KernelBuilder,
    body: &Body,
    n: Value,
    (init, op): (Value, ReduceOp),
    f: impl FnOnce(&mut KernelBuilder, Value, Value) -> Result<Value, String>,
) -> Result<Value, String> {
    if body.threads == 1 {
        return fold(b, n, init, f);
    }
    let lane = b.special(Special::LocalId(Axis::X));
    let partial = fold_range(b, (lane, n, body.threads), init, f)?;
    Ok(workgroup_reduce(b, body.workgroup(), &[partial], op)[0])
}

/// Values a [`workgroup_reduce`] combines per pass: more take turns in the same shared array,
/// so a reduction holds at most this many floats per thread (8 KiB at 256 threads) in shared
/// memory, whatever its count.
const REDUCE_CHUNK: usize = 8;

/// A workgroup's shape as its reductions see it: `threads` threads (a power of two) and, when
/// the device has subgroup reductions, the smallest subgroup it may run.
#[derive(Clone, Copy, Debug)]
pub(super) struct Workgroup {
    pub threads: u32,
    pub subgroup: Option<u32>,
}

/// `op` over every thread's `values` (each position separately), returned to all of them.
/// With subgroups, each subgroup reduces in registers and the subgroups' results meet in shared
/// memory (two barriers); else a tree through shared memory halving the active threads each
/// level. [`REDUCE_CHUNK`] values per pass. Must be reached by the whole workgroup.
pub(super) fn workgroup_reduce(
    b: &mut KernelBuilder,
    wg: Workgroup,
    values: &[Value],
    op: ReduceOp,
) -> Vec<Value> {
    let combine = match op {
        ReduceOp::Add => BinaryOp::Add,
        ReduceOp::Max => BinaryOp::Max,
        ReduceOp::Min => BinaryOp::Min,
    };
    // Per value, a slot for each thread (the tree) or each subgroup.
    let slots = wg.threads / wg.subgroup.unwrap_or(1);
    let width = values.len().min(REDUCE_CHUNK) as u32;
    let partials = b.local(
        "partials",
        MemorySpace::Shared,
        ScalarType::F32,
        width * slots,
    );
    let slot = |b: &mut KernelBuilder, v: u32, at: Value| {
        let base = b.const_i(i64::from(v * slots));
        b.add(base, at)
    };
    let mut totals = Vec::with_capacity(values.len());
    for chunk in values.chunks(REDUCE_CHUNK) {
        let n = chunk.len() as u32;
        match wg.subgroup {
            Some(_) => {
                let reduced: Vec<Value> = chunk
                    .iter()
                    .map(|&v| b.intrinsic(Intrinsic::SubgroupReduce(op), &[v]))
                    .collect();
                let (id, sub_lane) = (
                    b.special(Special::SubgroupId),
                    b.special(Special::SubgroupLane),
                );
                let zero = b.const_i(0);
                let leader = b.cmp(CmpOp::Eq, sub_lane, zero);
                b.if_then(leader, |b| {
                    for (v, &r) in (0..n).zip(&reduced) {
                        let at = slot(b, v, id);
                        b.store(partials, at, r);
                    }
                });
                b.barrier();
                let size = b.special(Special::SubgroupSize);
                let threads = b.const_i(i64::from(wg.threads));
                let count = b.binary(BinaryOp::Div, threads, size);
                for v in 0..n {
                    let first = slot(b, v, zero);
                    let init = b.load(partials, first, 1);
                    let one = b.const_i(1);
                    let total = fold_range(b, (one, count, 1), init, |b, s, acc| {
                        let at = slot(b, v, s);
                        let x = b.load(partials, at, 1);
                        Ok(b.binary(combine, acc, x))
                    })
                    .expect("the fold's body cannot fail");
                    totals.push(total);
                }
            }
            None => {
                let lane = b.special(Special::LocalId(Axis::X));
                for (v, &value) in (0..n).zip(chunk) {
                    let at = slot(b, v, lane);
                    b.store(partials, at, value);
                }
                b.barrier();
                let mut half = wg.threads / 2;
                while half > 0 {
                    let h = b.const_i(i64::from(half));
                    let active = b.cmp(CmpOp::Lt, lane, h);
                    b.if_then(active, |b| {
                        let other = b.add(lane, h);
                        for v in 0..n {
                            let (mine, theirs) = (slot(b, v, lane), slot(b, v, other));
                            let (x, y) = (b.load(partials, mine, 1), b.load(partials, theirs, 1));
                            let r = b.binary(combine, x, y);
                            b.store(partials, mine, r);
                        }
                    });
                    b.barrier();
                    half /= 2;
                }
                let zero = b.const_i(0);
                for v in 0..n {
                    let at = slot(b, v, zero);
                    totals.push(b.load(partials, at, 1));
                }
            }
        }
        // Every thread has read the totals before the next pass (or a later reduction) reuses
        // shared memory.
        b.barrier();
    }
    totals
}
