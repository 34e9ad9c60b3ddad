//! Reference LIR kernels shared by the IR's own tests and by every code generator's tests, so
//! each backend is checked on the same programs.

use super::*;

/// One output row per group: `y[row] = Σ_k w[row, k]·x[k]`, four lanes at a time (K a multiple
/// of 4).
pub fn gemv_row() -> Kernel {
    let mut b = KernelBuilder::new("gemv");
    let w = b.buffer("w", ScalarType::F32, Access::Read);
    let x = b.buffer("x", ScalarType::F32, Access::Read);
    let y = b.buffer("y", ScalarType::F32, Access::Write);
    let _n = b.scalar("n", ScalarType::I64);
    let k = b.scalar("k", ScalarType::I64);
    b.grid([SizeExpr::Param(0), SizeExpr::Const(1), SizeExpr::Const(1)]);
    let row = b.special(Special::GroupId(Axis::X));
    let zero = b.const_f(0.0);
    let acc0 = b.splat(zero, 4);
    let start = b.const_i(0);
    let base = b.mul(row, k);
    let acc = b.for_range(start, k, 4, &[acc0], |b, kk, acc| {
        let wi = b.add(base, kk);
        let wv = b.load(w, wi, 4);
        let xv = b.load(x, kk, 4);
        vec![b.fma(wv, xv, acc[0])]
    });
    let sum = b.reduce_lanes(ReduceOp::Add, acc[0]);
    b.store(y, row, sum);
    b.finish()
}
