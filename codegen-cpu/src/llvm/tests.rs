//! What only the LLVM backend does: vectors wider than 128 bits, the VNNI and generic dot
//! products side by side, the optimized IR. The shared tests (`crate::tests`) run every kernel
//! through both backends.

use super::{compile, compile_for, ir_text, DotInstructions, Host};
use crate::tests::{
    assert_close, check_dot4, check_half_widening, dot_kernel, f32_bytes, grid_x, random, to_f32,
};
use crate::CompiledKernel;
use tessera_ir::lir::examples::gemv_row;
use tessera_ir::lir::{
    Access, Axis, BinaryOp, CmpOp, Kernel, KernelBuilder, ReduceOp, ScalarType, SizeExpr, Special,
    Type,
};

/// `kernel` compiled by LLVM for this host without its dot-product instructions: the generic
/// form, which hosts without VNNI run.
pub(crate) fn generic_dot(kernel: &Kernel) -> Vec<(String, CompiledKernel)> {
    let host = Host::native().unwrap().with_dot(DotInstructions::NONE);
    vec![(
        "llvm (generic dot)".to_string(),
        compile_for(kernel, &host).unwrap(),
    )]
}

/// LLVM as it compiles for this host, and with the generic dot product.
fn llvm_forms(kernel: &Kernel) -> Vec<(String, CompiledKernel)> {
    let mut all = vec![("llvm".to_string(), compile(kernel).unwrap())];
    all.extend(generic_dot(kernel));
    all
}

#[test]
fn wide_dot_products_are_exact() {
    for lanes in [8, 16] {
        check_dot4(lanes, llvm_forms);
    }
}

#[test]
fn vnni_is_used_where_the_host_has_it() {
    let host = Host::native().unwrap();
    let ir = ir_text(&dot_kernel(true, 4)).unwrap();
    assert_eq!(
        ir.contains("vpdpbusd"),
        host.dot.u8i8_narrow,
        "{host:?}\n{ir}"
    );
    let generic = compile_for(&dot_kernel(true, 4), &host.with_dot(DotInstructions::NONE));
    assert!(generic.is_ok());
}

#[test]
fn half_vectors_widen_exactly() {
    for lanes in [8, 16] {
        check_half_widening(lanes, |k| vec![("llvm".to_string(), compile(k).unwrap())]);
    }
}

/// `y = Σ_row a[i] · x[i]` per row of `n`, `lanes` at a time with the sum kept in a vector, then
/// the remaining `n % lanes` one by one; and `z[i] = max(a[i], x[i])` on the way. Vector main
/// loops with scalar tails, as the templates write them.
fn rows_with_tails(lanes: u32) -> Kernel {
    let f32 = ScalarType::F32;
    let mut b = KernelBuilder::new("rows");
    let a = b.buffer("a", f32, Access::Read);
    let x = b.buffer("x", f32, Access::Read);
    let y = b.buffer("y", f32, Access::Write);
    let z = b.buffer("z", f32, Access::Write);
    let _rows = b.scalar("rows", ScalarType::I64);
    let n = b.scalar("n", ScalarType::I64);
    grid_x(&mut b, SizeExpr::Param(0));
    let row = b.special(Special::GroupId(Axis::X));
    let base = b.mul(row, n);
    let width = b.const_i(i64::from(lanes));
    let whole = b.binary(BinaryOp::Div, n, width);
    let whole = b.mul(whole, width);
    let zero = b.const_f(0.0);
    let zeros = b.splat(zero, lanes);
    let start = b.const_i(0);
    let acc = b.for_range(start, whole, lanes, &[zeros], |b, c, acc| {
        let i = b.add(base, c);
        let (va, vx) = (b.load(a, i, lanes), b.load(x, i, lanes));
        let m = b.binary(BinaryOp::Max, va, vx);
        b.store(z, i, m);
        vec![b.fma(va, vx, acc[0])]
    });
    let sum = b.reduce_lanes(ReduceOp::Add, acc[0]);
    let total = b.for_range(whole, n, 1, &[sum], |b, c, s| {
        let i = b.add(base, c);
        let (va, vx) = (b.load(a, i, 1), b.load(x, i, 1));
        let bigger = b.cmp(CmpOp::Gt, va, vx);
        let m = b.select(bigger, va, vx);
        b.store(z, i, m);
        vec![b.fma(va, vx, s[0])]
    });
    b.store(y, row, total[0]);
    b.finish()
}

#[test]
fn wide_vectors_with_tails() {
    let rows = 3;
    for lanes in [8, 16] {
        let compiled = compile(&rows_with_tails(lanes)).unwrap();
        for n in [1, 7, 8, 15, 16, 17, 100] {
            let (a, x) = (random(rows * n, 11), random(rows * n, 12));
            let (mut ab, mut xb) = (f32_bytes(&a), f32_bytes(&x));
            let (mut yb, mut zb) = (vec![0u8; 4 * rows], vec![0u8; 4 * rows * n]);
            compiled
                .launch(
                    &mut [&mut ab, &mut xb, &mut yb, &mut zb],
                    &[rows as i64, n as i64],
                )
                .unwrap();
            let what = format!("f32x{lanes}, n = {n}");
            let want_y: Vec<f32> = (0..rows)
                .map(|r| (0..n).map(|c| a[r * n + c] * x[r * n + c]).sum())
                .collect();
            assert_close(&to_f32(&yb), &want_y, 1e-5, &what);
            let want_z: Vec<f32> = a.iter().zip(&x).map(|(p, q)| p.max(*q)).collect();
            assert_eq!(to_f32(&zb), want_z, "{what}");
        }
    }
}

#[test]
fn ir_text_is_optimized_for_the_host() {
    let ir = ir_text(&gemv_row()).unwrap();
    assert!(ir.contains("define void @gemv("), "{ir}");
    assert!(ir.contains("llvm.fma") || ir.contains("fmul"), "{ir}");
    assert!(ir.contains("\"target-cpu\""), "{ir}");
    // The body was inlined into the exported function.
    assert!(!ir.contains("define internal void @gemv.body"), "{ir}");
    // The read-only buffers stayed `noalias` through inlining, as alias scopes.
    assert!(ir.contains("!noalias"), "{ir}");
}

/// Four unaligned 16-byte runs 18 bytes apart (Q4_0 blocks' codes) joined into one `u8x64`,
/// and a mix of vectors and scalars (`i32x4, i32, i32x2, i32`) joined lane by lane.
#[test]
fn concatenations_of_any_width() {
    let mut b = KernelBuilder::new("concat");
    let x = b.buffer("x", ScalarType::U8, Access::Read);
    let y = b.buffer("y", ScalarType::U8, Access::Write);
    let z = b.buffer("z", ScalarType::I32, Access::Write);
    grid_x(&mut b, SizeExpr::Const(1));
    let runs: Vec<_> = (0..4)
        .map(|r| {
            let at = b.const_i(2 + 18 * r);
            b.load(x, at, 16)
        })
        .collect();
    let v = b.concat(&runs);
    let zero = b.const_i(0);
    b.store(y, zero, v);
    let int = |b: &mut KernelBuilder, at: i64, lanes: u32| {
        let at = b.const_i(at);
        b.load_bytes(x, at, Type::vector(ScalarType::I32, lanes))
    };
    let parts = [
        int(&mut b, 0, 4),
        int(&mut b, 16, 1),
        int(&mut b, 20, 2),
        int(&mut b, 28, 1),
    ];
    let v = b.concat(&parts);
    b.store(z, zero, v);
    let compiled = compile(&b.finish()).unwrap();
    let mut xb: Vec<u8> = (0..80).collect();
    let (mut yb, mut zb) = (vec![0u8; 64], vec![0u8; 32]);
    compiled
        .launch(&mut [&mut xb, &mut yb, &mut zb], &[])
        .unwrap();
    let want: Vec<u8> = (0..4).flat_map(|r| 2 + 18 * r..18 + 18 * r).collect();
    assert_eq!(yb, want);
    assert_eq!(zb, xb[..32]);
}
