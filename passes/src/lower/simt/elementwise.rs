//! The SIMT elementwise template: each thread computes [`ITEMS`] output elements a workgroup
//! apart — consecutive threads touch consecutive elements, so loads and stores coalesce —
//! evaluating the whole body per element with broadcasting inputs (the tail guarded). Also
//! serves `Layout` kernels as a gathering copy, and the epilogue step of a matmul whose
//! epilogue moves elements between rows ([`lower_with`]).

use super::super::elementwise::store_element;
use super::super::expr::{Body, Hook};
use super::WORKGROUP;
use tessera_ir::lir::{Axis, BufRef, KernelBuilder, SizeExpr, Special};

/// Output elements per thread: fewer workgroups (a grid axis holds at most 65,535 on many
/// devices, so up to 67M elements here) and the index math shared across them.
const ITEMS: u32 = 4;

/// Writes the elementwise kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(b: &mut KernelBuilder, body: &Body, out: BufRef) -> Result<(), String> {
    lower_with(b, body, out, None)
}

/// The elementwise kernel with `hook` computing one op (a template's core op, read from where
/// an earlier step stored it) at whatever index of it the body reads at each output element.
pub(super) fn lower_with(
    b: &mut KernelBuilder,
    body: &Body,
    out: BufRef,
    hook: Option<Hook>,
) -> Result<(), String> {
    let shape = &body.ty(body.result()).shape;
    let numel = body.symbols.numel_size(shape)?;
    b.grid([
        numel.ceil_div(u64::from(WORKGROUP * ITEMS)),
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let n = body.symbols.numel(b, shape)?;
    let group = b.special(Special::GroupId(Axis::X));
    let lane = b.special(Special::LocalId(Axis::X));
    let span = b.const_i(i64::from(WORKGROUP * ITEMS));
    let first = b.mul(group, span);
    let first = b.add(first, lane);
    for item in 0..ITEMS {
        let offset = b.const_i(i64::from(item * WORKGROUP));
        let e = b.add(first, offset);
        store_element(b, body, out, (e, n), hook)?;
    }
    Ok(())
}
