//! The gather template: `Gather(table [V, D], ids i32 [...]) [elementwise epilogue]` with output
//! `[ids..., D]`. A group reads one id and writes its row (its threads splitting the row on a
//! SIMT target), the epilogue applied per element.
//!
//! The interpreter reports an id outside `[0, V)` as an error, which a LIR kernel cannot do:
//! the runtime validates ids before launch (the engine rejects out-of-vocabulary prompt ids),
//! and the kernel only guards its loads, writing nothing for an invalid id.

use super::expr::Body;
use super::lanes::for_each_lane;
use tessera_ir::lir::{
    Axis, BinaryOp, BufRef, CmpOp, KernelBuilder, ScalarType, SizeExpr, Special, Value,
};
use tessera_ir::Op;

/// Writes the gather kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(b: &mut KernelBuilder, body: &Body, out: BufRef) -> Result<(), String> {
    let g = body
        .ops
        .iter()
        .position(|s| s.op == Op::Gather)
        .ok_or("a gather kernel without a gather")?;
    let [table, ids] = body.ops[g].args[..] else {
        return Err("gather without its two operands".into());
    };
    let [vocab, d] = body.ty(table).shape.as_slice() else {
        return Err(format!("gather table of shape {}", body.ty(table)));
    };
    let shape = &body.types[g].shape;
    if &body.ty(body.result()).shape != shape {
        return Err("an epilogue that changes the gather's shape".into());
    }
    let ids_shape = &body.ty(ids).shape;
    b.grid([
        body.symbols.numel_size(ids_shape)?,
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let group = b.special(Special::GroupId(Axis::X));
    let at = body.symbols.unravel(b, group, ids_shape)?;
    let id = body.value(b, ids, &at, None)?;
    let id = b.cast(ScalarType::I64, id);
    let vocab = body.symbols.dim(b, vocab)?;
    let d = body.symbols.dim(b, d)?;
    let zero = b.const_i(0);
    let low = b.cmp(CmpOp::Le, zero, id);
    let high = b.cmp(CmpOp::Lt, id, vocab);
    let valid = b.binary(BinaryOp::And, low, high);
    let base = b.mul(group, d);
    let mut failure = Ok(());
    b.if_then(valid, |b| {
        failure = for_each_lane(b, body, zero, d, |b, j| {
            let mut idx = at.clone();
            idx.push(j);
            let hook = |b: &mut KernelBuilder, i: &[Value]| {
                if i == idx.as_slice() {
                    body.value(b, table, &[id, j], None)
                } else {
                    Err("an epilogue reading the gather at another element".to_string())
                }
            };
            let v = body.value(b, body.result(), &idx, Some((g, &hook)))?;
            let e = b.add(base, j);
            b.store(out, e, v);
            Ok(())
        });
    });
    failure
}
