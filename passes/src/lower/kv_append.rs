//! The KV-append template: `[elementwise/layout prologue on the new entries] KvAppend(cache, new)`
//! with output `[B, H, P + S, D]`. A group writes one `(b, h, position)` row (its threads
//! splitting it on a SIMT target): the cache row for positions below P, else the prologue's
//! value of the new row at position − P. The kernel writes the whole output, as the interpreter
//! does; appending in place is the runtime's concern.

use super::expr::Body;
use super::lanes::for_each_lane;
use tessera_ir::lir::{Axis, BufRef, CmpOp, KernelBuilder, SizeExpr, Special, Value};
use tessera_ir::Op;

/// Writes the KV-append kernel of `body` into `b`, storing to `out`.
pub(super) fn lower(b: &mut KernelBuilder, body: &Body, out: BufRef) -> Result<(), String> {
    let last = &body.ops[body.ops.len() - 1];
    if last.op != Op::KvAppend {
        return Err(format!("a kv_append kernel ending in `{}`", last.op.name()));
    }
    let [cache, new] = last.args[..] else {
        return Err("kv_append without its two operands".into());
    };
    let shape = &body.ty(body.result()).shape;
    let (rows, [d]) = shape.split_at(shape.len().saturating_sub(1)) else {
        return Err("kv_append of a scalar".into());
    };
    let past = match body.ty(cache).shape.as_slice() {
        [_, _, p, _] => p,
        _ => return Err("kv_append cache of a rank other than 4".into()),
    };
    b.grid([
        body.symbols.numel_size(rows)?,
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let row = b.special(Special::GroupId(Axis::X));
    let d = body.symbols.dim(b, d)?;
    let past = body.symbols.dim(b, past)?;
    let base = b.mul(row, d);
    let at = body.symbols.unravel(b, row, rows)?;
    let [batch, head, pos] = at[..] else {
        return Err("kv_append of a rank other than 4".into());
    };
    // Copies row `pos` of `arg` to this group's output row.
    let copy = |b: &mut KernelBuilder, arg, pos: Value| {
        let start = b.const_i(0);
        for_each_lane(b, body, start, d, |b, j| {
            let v = body.value(b, arg, &[batch, head, pos, j], None)?;
            let e = b.add(base, j);
            b.store(out, e, v);
            Ok(())
        })
    };
    let mut failure = Ok(());
    let cached = b.cmp(CmpOp::Lt, pos, past);
    b.if_then(cached, |b| failure = copy(b, cache, pos));
    let appended = b.cmp(CmpOp::Le, past, pos);
    let mut appended_failure = Ok(());
    b.if_then(appended, |b| {
        let p = b.sub(pos, past);
        appended_failure = copy(b, new, p);
    });
    failure.and(appended_failure)
}
