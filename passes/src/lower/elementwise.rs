//! The elementwise template: each group computes [`CHUNK`] consecutive output elements (the
//! last group guards its tail), evaluating the whole body per element with broadcasting inputs.
//! Also serves `Layout` kernels (reshapes, permutes, expands, slices) as a gathering copy, and
//! templates whose epilogue remaps indices (see [`lower_with`]).

use super::expr::{for_each, Body, Hook};
use tessera_ir::lir::{Axis, BufRef, CmpOp, KernelBuilder, SizeExpr, Special, Value};

/// Output elements per group: enough work to amortize a group's dispatch on a CPU thread pool.
pub(super) const CHUNK: u32 = 256;

/// Writes the elementwise kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(b: &mut KernelBuilder, body: &Body, out: BufRef) -> Result<(), String> {
    lower_with(b, body, out, None)
}

/// The elementwise kernel over the output's index space with `hook` computing one op (a
/// template's core op) at whatever index of it the body reads at each output element.
pub(super) fn lower_with(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
    hook: Option<Hook>,
) -> Result<(), String> {
    let shape = &body.ty(body.result()).shape;
    let numel = body.symbols.numel_size(shape)?;
    b.grid([
        numel.ceil_div(u64::from(CHUNK)),
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let n = body.symbols.numel(b, shape)?;
    let group = b.special(Special::GroupId(Axis::X));
    let chunk = b.const_i(i64::from(CHUNK));
    let base = b.mul(group, chunk);
    let zero = b.const_i(0);
    for_each(b, zero, chunk, |b, i| {
        let e = b.add(base, i);
        store_element(b, body, out, (e, n), hook)
    })
}

/// Evaluates the body's result at its linear element `e`, when `e < n`, and stores it there.
pub(super) fn store_element(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
    (e, n): (Value, Value),
    hook: Option<Hook>,
) -> Result<(), String> {
    let shape = &body.ty(body.result()).shape;
    let inside = b.cmp(CmpOp::Lt, e, n);
    let mut failure = Ok(());
    b.if_then(inside, |b| {
        failure = body
            .symbols
            .unravel(b, e, shape)
            .and_then(|idx| body.value(b, body.result(), &idx, hook))
            .map(|v| b.store(out, e, v));
    });
    failure
}
