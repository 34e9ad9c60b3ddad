//! Every test compiles its kernel with each backend this build has ([`compiled`]) and checks
//! each against the same reference.

use super::*;
use tessera_ir::lir::examples::gemv_row;
use tessera_ir::lir::{
    Access, Axis, BinaryOp, CmpOp, Intrinsic, Kernel, KernelBuilder, Literal, MemorySpace,
    ReduceOp, ScalarType, SizeExpr, Special, Type, UnaryOp,
};

const F32: ScalarType = ScalarType::F32;
const I32: ScalarType = ScalarType::I32;
const I64: ScalarType = ScalarType::I64;

/// Deterministic pseudo-random numbers in `[-1, 1)` (xorshift).
pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub(crate) fn to_i32(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn to_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub(crate) fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs().max(1.0),
            "{what}, element {i}: got {g}, want {w}"
        );
    }
}

/// `kernel` compiled by every backend this build has, each named for assertion messages.
pub(crate) fn compiled(kernel: &Kernel) -> Vec<(String, CompiledKernel)> {
    Backend::ALL
        .iter()
        .map(|&b| {
            let code = compile_with(kernel, b).unwrap_or_else(|e| panic!("{}: {e}", b.name()));
            (b.name().to_string(), code)
        })
        .collect()
}

/// The errors every backend gives for `kernel`, which must not compile.
fn rejections(kernel: &Kernel) -> Vec<CodegenError> {
    Backend::ALL
        .iter()
        .map(|&b| {
            compile_with(kernel, b)
                .err()
                .unwrap_or_else(|| panic!("{} compiled {}", b.name(), kernel.name))
        })
        .collect()
}

/// A grid of `n` groups along x.
pub(crate) fn grid_x(b: &mut KernelBuilder, n: SizeExpr) {
    b.grid([n, SizeExpr::Const(1), SizeExpr::Const(1)]);
}

#[test]
fn gemv_matches_rust() {
    let (n, k) = (7, 64);
    let (w, x) = (random(n * k, 1), random(k, 2));
    let want: Vec<f32> = (0..n)
        .map(|r| (0..k).map(|c| w[r * k + c] * x[c]).sum())
        .collect();
    for (backend, compiled) in compiled(&gemv_row()) {
        let (mut wb, mut xb, mut yb) = (f32_bytes(&w), f32_bytes(&x), vec![0u8; 4 * n]);
        compiled
            .launch(&mut [&mut wb, &mut xb, &mut yb], &[n as i64, k as i64])
            .unwrap();
        assert_close(&to_f32(&yb), &want, 1e-5, &backend);
    }
}

#[test]
fn clif_text_shows_the_fused_multiply_add() {
    let text = clif_text(&gemv_row()).unwrap();
    assert!(text.contains("fma"), "{text}");
    assert!(text.contains("f32x4"), "{text}");
}

/// `y = exp(x) * 2 + 1`, four elements per group, the tail guarded by an `If`.
#[test]
fn elementwise_with_tail_guard() {
    let mut b = KernelBuilder::new("exp2p1");
    let x = b.buffer("x", F32, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let n = b.scalar("n", I64);
    grid_x(&mut b, SizeExpr::Param(0).ceil_div(4));
    let group = b.special(Special::GroupId(Axis::X));
    let four = b.const_i(4);
    let base = b.mul(group, four);
    let start = b.const_i(0);
    b.for_range(start, four, 1, &[], |b, j, _| {
        let i = b.add(base, j);
        let inside = b.cmp(CmpOp::Lt, i, n);
        b.if_then(inside, |b| {
            let v = b.load(x, i, 1);
            let e = b.unary(UnaryOp::Exp, v);
            let (two, one) = (b.const_f(2.0), b.const_f(1.0));
            let r = b.fma(e, two, one);
            b.store(y, i, r);
        });
        vec![]
    });
    let n = 37;
    let xs = random(n, 3);
    let mut want: Vec<f32> = xs.iter().map(|v| v.exp() * 2.0 + 1.0).collect();
    want.push(-7.0);
    for (backend, compiled) in compiled(&b.finish()) {
        // One element more than `n`: the guard must leave it alone.
        let (mut xb, mut yb) = (f32_bytes(&xs), f32_bytes(&vec![-7.0; n + 1]));
        compiled
            .launch(&mut [&mut xb, &mut yb], &[n as i64])
            .unwrap();
        assert_close(&to_f32(&yb), &want, 1e-6, &backend);
    }
}

/// Four lanes per group: `a < b ? (a + b) ^ b : (a << 3) >> 2` on `i32x4`.
#[test]
fn integer_vector_ops() {
    let mut b = KernelBuilder::new("ints");
    let a = b.buffer("a", I32, Access::Read);
    let bb = b.buffer("b", I32, Access::Read);
    let c = b.buffer("c", I32, Access::Write);
    let _n = b.scalar("n", I64);
    grid_x(&mut b, SizeExpr::Param(0).ceil_div(4));
    let group = b.special(Special::GroupId(Axis::X));
    let four = b.const_i(4);
    let i = b.mul(group, four);
    let (va, vb) = (b.load(a, i, 4), b.load(bb, i, 4));
    let sum = b.add(va, vb);
    let mixed = b.binary(BinaryOp::Xor, sum, vb);
    let (three, two) = (
        b.constant(Type::scalar(I32), Literal::I(3)),
        b.constant(Type::scalar(I32), Literal::I(2)),
    );
    let (three, two) = (b.splat(three, 4), b.splat(two, 4));
    let shl = b.binary(BinaryOp::Shl, va, three);
    let shifted = b.binary(BinaryOp::Shr, shl, two);
    let less = b.cmp(CmpOp::Lt, va, vb);
    let r = b.select(less, mixed, shifted);
    b.store(c, i, r);
    let len = 12;
    let xs: Vec<i32> = random(len, 4).iter().map(|v| (v * 1e9) as i32).collect();
    let ys: Vec<i32> = random(len, 5).iter().map(|v| (v * 1e9) as i32).collect();
    let want: Vec<i32> = xs
        .iter()
        .zip(&ys)
        .map(|(&a, &b)| {
            if a < b {
                a.wrapping_add(b) ^ b
            } else {
                a.wrapping_shl(3) >> 2
            }
        })
        .collect();
    for (backend, compiled) in compiled(&b.finish()) {
        let (mut ab, mut bbytes, mut cb) = (i32_bytes(&xs), i32_bytes(&ys), vec![0u8; 4 * len]);
        compiled
            .launch(&mut [&mut ab, &mut bbytes, &mut cb], &[len as i64])
            .unwrap();
        assert_eq!(to_i32(&cb), want, "{backend}");
    }
}

/// `y = max(x > 0 ? sqrt(x) : exp(x), 0.5)` on `f32x4`: a lane-mask select, a native vector op
/// and a transcendental run lane by lane.
#[test]
fn float_vector_select() {
    let mut b = KernelBuilder::new("vector_select");
    let x = b.buffer("x", F32, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let _n = b.scalar("n", I64);
    grid_x(&mut b, SizeExpr::Param(0).ceil_div(4));
    let group = b.special(Special::GroupId(Axis::X));
    let four = b.const_i(4);
    let i = b.mul(group, four);
    let v = b.load(x, i, 4);
    let (zero, half) = (b.const_f(0.0), b.const_f(0.5));
    let (zero, half) = (b.splat(zero, 4), b.splat(half, 4));
    let positive = b.cmp(CmpOp::Gt, v, zero);
    let (root, e) = (b.unary(UnaryOp::Sqrt, v), b.unary(UnaryOp::Exp, v));
    let picked = b.select(positive, root, e);
    let r = b.binary(BinaryOp::Max, picked, half);
    b.store(y, i, r);
    let xs: Vec<f32> = random(16, 7).iter().map(|v| v * 3.0).collect();
    let want: Vec<f32> = xs
        .iter()
        .map(|&v| if v > 0.0 { v.sqrt() } else { v.exp() }.max(0.5))
        .collect();
    for (backend, compiled) in compiled(&b.finish()) {
        let (mut xb, mut yb) = (f32_bytes(&xs), vec![0u8; 4 * xs.len()]);
        compiled
            .launch(&mut [&mut xb, &mut yb], &[xs.len() as i64])
            .unwrap();
        assert_close(&to_f32(&yb), &want, 1e-6, &backend);
    }
}

/// `f = x as f32; y = (f * 0.5) as i64`, one element per group.
#[test]
fn casts_i32_to_f32_to_i64() {
    let mut b = KernelBuilder::new("casts");
    let x = b.buffer("x", I32, Access::Read);
    let f = b.buffer("f", F32, Access::Write);
    let y = b.buffer("y", I64, Access::Write);
    let _n = b.scalar("n", I64);
    grid_x(&mut b, SizeExpr::Param(0));
    let i = b.special(Special::GroupId(Axis::X));
    let v = b.load(x, i, 1);
    let fv = b.cast(F32, v);
    b.store(f, i, fv);
    let half = b.const_f(0.5);
    let scaled = b.mul(fv, half);
    let iv = b.cast(I64, scaled);
    b.store(y, i, iv);
    let xs = [0, 1, -1, 3, -3, 1 << 20, i32::MIN, i32::MAX];
    let len = xs.len();
    let want_f: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
    let want_y: Vec<i64> = want_f.iter().map(|&v| (v * 0.5) as i64).collect();
    for (backend, compiled) in compiled(&b.finish()) {
        let (mut xb, mut fb, mut yb) = (i32_bytes(&xs), vec![0u8; 4 * len], vec![0u8; 8 * len]);
        compiled
            .launch(&mut [&mut xb, &mut fb, &mut yb], &[len as i64])
            .unwrap();
        assert_eq!(to_f32(&fb), want_f, "{backend}");
        assert_eq!(to_i64(&yb), want_y, "{backend}");
    }
}

/// Online softmax statistics of one row per group: a running max `m` and
/// `s = Σ exp(x - m)`, both loop-carried.
#[test]
fn running_max_and_sum() {
    let mut b = KernelBuilder::new("online_softmax");
    let x = b.buffer("x", F32, Access::Read);
    let stats = b.buffer("stats", F32, Access::Write);
    let _rows = b.scalar("rows", I64);
    let cols = b.scalar("cols", I64);
    grid_x(&mut b, SizeExpr::Param(0));
    let row = b.special(Special::GroupId(Axis::X));
    let base = b.mul(row, cols);
    let (m0, s0, start) = (b.const_f(f64::NEG_INFINITY), b.const_f(0.0), b.const_i(0));
    let out = b.for_range(start, cols, 1, &[m0, s0], |b, c, ms| {
        let i = b.add(base, c);
        let v = b.load(x, i, 1);
        let m = b.binary(BinaryOp::Max, ms[0], v);
        let dm = b.sub(ms[0], m);
        let scale = b.unary(UnaryOp::Exp, dm);
        let dv = b.sub(v, m);
        let e = b.unary(UnaryOp::Exp, dv);
        vec![m, b.fma(ms[1], scale, e)]
    });
    let two = b.const_i(2);
    let at = b.mul(row, two);
    b.store(stats, at, out[0]);
    let one = b.const_i(1);
    let at1 = b.add(at, one);
    b.store(stats, at1, out[1]);
    let (rows, cols) = (3, 50);
    let xs: Vec<f32> = random(rows * cols, 6).iter().map(|v| v * 8.0).collect();
    let want: Vec<f32> = xs
        .chunks(cols)
        .flat_map(|r| {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            [m, r.iter().map(|v| (v - m).exp()).sum()]
        })
        .collect();
    for (backend, compiled) in compiled(&b.finish()) {
        let (mut xb, mut sb) = (f32_bytes(&xs), vec![0u8; 8 * rows]);
        compiled
            .launch(&mut [&mut xb, &mut sb], &[rows as i64, cols as i64])
            .unwrap();
        assert_close(&to_f32(&sb), &want, 1e-5, &backend);
    }
}

/// A private array per group: reverses four elements through it.
#[test]
fn private_local_memory() {
    let mut b = KernelBuilder::new("reverse4");
    let x = b.buffer("x", F32, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let tmp = b.local("tmp", MemorySpace::Private, F32, 4);
    let (start, four, three) = (b.const_i(0), b.const_i(4), b.const_i(3));
    b.for_range(start, four, 1, &[], |b, i, _| {
        let v = b.load(x, i, 1);
        let j = b.sub(three, i);
        b.store(tmp, j, v);
        vec![]
    });
    let v = b.load(tmp, start, 4);
    b.store(y, start, v);
    for (backend, compiled) in compiled(&b.finish()) {
        let (mut xb, mut yb) = (f32_bytes(&[1.0, 2.0, 3.0, 4.0]), vec![0u8; 16]);
        compiled.launch(&mut [&mut xb, &mut yb], &[]).unwrap();
        assert_eq!(to_f32(&yb), [4.0, 3.0, 2.0, 1.0], "{backend}");
    }
}

#[test]
fn barrier_is_rejected() {
    let mut b = KernelBuilder::new("with_barrier");
    b.barrier();
    for err in rejections(&b.finish()) {
        let message = err.to_string();
        assert!(matches!(err, CodegenError::Unsupported { .. }), "{message}");
        assert!(message.contains("with_barrier") && message.contains("barrier"));
    }
}

#[test]
fn shared_memory_fails_verification() {
    let mut b = KernelBuilder::new("with_shared");
    let tile = b.local("tile", MemorySpace::Shared, F32, 16);
    let (i, v) = (b.const_i(0), b.const_f(1.0));
    b.store(tile, i, v);
    for err in rejections(&b.finish()) {
        assert!(matches!(err, CodegenError::Verify(_)), "{err}");
        assert!(err.to_string().contains("with_shared"), "{err}");
    }
}

/// Cranelift only: LLVM splits wide vectors itself (`llvm::tests` runs them).
#[test]
fn cranelift_rejects_vectors_wider_than_128_bits() {
    let mut b = KernelBuilder::new("wide");
    let x = b.buffer("x", F32, Access::ReadWrite);
    let i = b.const_i(0);
    let v = b.load(x, i, 8);
    b.store(x, i, v);
    let err = compile_with(&b.finish(), Backend::Cranelift)
        .err()
        .expect("f32x8 must not compile");
    assert!(matches!(err, CodegenError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("f32x8"), "{err}");
}

#[test]
fn launch_checks_its_arguments() {
    // The checks are the backends' shared `CompiledKernel`'s: one backend is enough.
    let compiled = compile(&gemv_row()).unwrap();
    let (mut w, mut x) = (vec![0u8; 16], vec![0u8; 16]);
    let err = compiled.launch(&mut [&mut w, &mut x], &[1, 4]).unwrap_err();
    assert!(matches!(err, CodegenError::Launch { .. }), "{err}");
    assert!(err.to_string().contains("2 buffers"), "{err}");
    let mut y = vec![0u8; 3];
    let err = compiled
        .launch(&mut [&mut w, &mut x, &mut y], &[1, 4])
        .unwrap_err();
    assert!(err.to_string().contains("not a multiple"), "{err}");
    let mut y = vec![0u8; 4];
    let err = compiled
        .launch_range(&mut [&mut w, &mut x, &mut y], &[1, 4], 0..2)
        .unwrap_err();
    assert!(err.to_string().contains("outside the grid"), "{err}");
}

/// Bytes of a xorshift stream.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    random(n, seed)
        .iter()
        .map(|v| (v.to_bits() >> 7) as u8)
        .collect()
}

/// Lanes every dot-product test covers, `lanes` per group.
const DOT_LANES: u32 = 16;

/// `out[l] = Dot4(a[4l..], b[4l..], acc = group)` over `u32 × lanes` (scalars for one lane),
/// [`DOT_LANES`] lanes in all.
pub(crate) fn dot_kernel(unsigned: bool, lanes: u32) -> Kernel {
    let intrinsic = if unsigned {
        Intrinsic::Dot4U8I8Packed
    } else {
        Intrinsic::Dot4I8Packed
    };
    let mut b = KernelBuilder::new("dot4");
    let a = b.buffer("a", ScalarType::U8, Access::Read);
    let bb = b.buffer("b", ScalarType::U8, Access::Read);
    let out = b.buffer("out", I32, Access::Write);
    grid_x(&mut b, SizeExpr::Const(u64::from(DOT_LANES / lanes)));
    let g = b.special(Special::GroupId(Axis::X));
    let bytes = b.const_i(4 * i64::from(lanes));
    let at = b.mul(g, bytes);
    let u32s = Type::vector(ScalarType::U32, lanes);
    let (x, y) = (b.load_bytes(a, at, u32s), b.load_bytes(bb, at, u32s));
    let acc = b.cast(I32, g);
    let acc = if lanes > 1 { b.splat(acc, lanes) } else { acc };
    let r = b.intrinsic(intrinsic, &[x, y, acc]);
    let lanes_v = b.const_i(i64::from(lanes));
    let i = b.mul(g, lanes_v);
    b.store(out, i, r);
    b.finish()
}

/// Checks `Dot4U8I8Packed` and `Dot4I8Packed` over `u32 × lanes` against the definition, for
/// every compiled form `compile` gives, on random bytes and on the extremes (0 and 255 as `u8`,
/// -128 and 127 as `i8`, in every pairing and all at once).
pub(crate) fn check_dot4(lanes: u32, compile: impl Fn(&Kernel) -> Vec<(String, CompiledKernel)>) {
    let n = 4 * DOT_LANES as usize;
    let extremes = [0u8, 255, 0x80, 0x7f];
    let inputs = [
        (random_bytes(n, 5), random_bytes(n, 6)),
        (
            (0..n).map(|i| extremes[i % 4]).collect(),
            (0..n).map(|i| extremes[i / 4 % 4]).collect(),
        ),
        (vec![255; n], vec![0x80; n]),
        (vec![0x80; n], vec![0x80; n]),
        (vec![0x7f; n], vec![0x7f; n]),
    ];
    for unsigned in [false, true] {
        for (backend, compiled) in compile(&dot_kernel(unsigned, lanes)) {
            for (a, b) in &inputs {
                let (mut ab, mut bb) = (a.clone(), b.clone());
                let mut ob = vec![0u8; 4 * DOT_LANES as usize];
                compiled
                    .launch(&mut [&mut ab, &mut bb, &mut ob], &[])
                    .unwrap();
                let want: Vec<i32> = (0..DOT_LANES as usize)
                    .map(|l| {
                        let acc = (l / lanes as usize) as i32;
                        acc + (0..4)
                            .map(|j| {
                                let x = if unsigned {
                                    i32::from(a[4 * l + j])
                                } else {
                                    i32::from(a[4 * l + j] as i8)
                                };
                                x * i32::from(b[4 * l + j] as i8)
                            })
                            .sum::<i32>()
                    })
                    .collect();
                assert_eq!(
                    to_i32(&ob),
                    want,
                    "{backend}, unsigned {unsigned}, lanes {lanes}, a {a:?}, b {b:?}"
                );
            }
        }
    }
}

/// [`compiled`], and under LLVM the generic dot-product form as well.
#[cfg(feature = "llvm")]
fn dot_forms(kernel: &Kernel) -> Vec<(String, CompiledKernel)> {
    let mut all = compiled(kernel);
    all.extend(crate::llvm::tests::generic_dot(kernel));
    all
}

#[cfg(not(feature = "llvm"))]
use compiled as dot_forms;

/// Both packings over `u32x4` and scalars, with every backend (and, under LLVM, both the VNNI
/// and the generic form).
#[test]
fn packed_byte_dot_products() {
    for lanes in [1, 4] {
        check_dot4(lanes, dot_forms);
    }
}

/// Every f16 and bf16 bit pattern, read from a byte buffer at a byte offset and widened to f32,
/// equals the `half` crate's conversion (NaNs stay NaN): one or four per load on every backend
/// (Cranelift holds four halves in an `i32x4`; `llvm::tests` widens wider vectors).
#[test]
fn half_precision_widens_exactly() {
    for lanes in [1, 4] {
        check_half_widening(lanes, compiled);
    }
}

/// Checks the widening of all 65,536 `f16` and `bf16` patterns, `lanes` per group, for every
/// compiled form `compile` gives.
pub(crate) fn check_half_widening(
    lanes: u32,
    compile: impl Fn(&Kernel) -> Vec<(String, CompiledKernel)>,
) {
    for half in [ScalarType::F16, ScalarType::Bf16] {
        for (backend, compiled) in compile(&widen_kernel(half, lanes)) {
            let mut xb: Vec<u8> = [0u8]
                .into_iter()
                .chain((0..=u16::MAX).flat_map(u16::to_le_bytes))
                .collect();
            let mut yb = vec![0u8; 4 << 16];
            compiled.launch(&mut [&mut xb, &mut yb], &[]).unwrap();
            for (bits, got) in (0..=u16::MAX).zip(to_f32(&yb)) {
                let want = match half {
                    ScalarType::F16 => half::f16::from_bits(bits).to_f32(),
                    _ => half::bf16::from_bits(bits).to_f32(),
                };
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{backend}, {half:?}x{lanes} {bits:#06x}: got {got}, want {want}"
                );
            }
        }
    }
}

/// `y[i] = x[2i + 1] as f32` for every 16-bit pattern `x` holds: `lanes` per group (one byte
/// of padding in front, so the loads are unaligned).
pub(crate) fn widen_kernel(half: ScalarType, lanes: u32) -> Kernel {
    let mut b = KernelBuilder::new("widen");
    let x = b.buffer("x", ScalarType::U8, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    grid_x(&mut b, SizeExpr::Const((1 << 16) / u64::from(lanes)));
    let g = b.special(Special::GroupId(Axis::X));
    let (per_group, two, one) = (b.const_i(i64::from(lanes)), b.const_i(2), b.const_i(1));
    let first = b.mul(g, per_group);
    let at = b.mul(first, two);
    let at = b.add(at, one);
    let h = b.load_bytes(x, at, Type::vector(half, lanes));
    let f = b.cast(F32, h);
    b.store(y, first, f);
    b.finish()
}

/// `u8x16` reinterpreted as `u32x4` keeps the bytes little-endian; `i32` → `f32x4` casts.
#[test]
fn bitcasts_keep_memory_order() {
    let mut b = KernelBuilder::new("bitcast");
    let x = b.buffer("x", ScalarType::U8, Access::Read);
    let y = b.buffer("y", I32, Access::Write);
    grid_x(&mut b, SizeExpr::Const(1));
    let zero = b.const_i(0);
    let v = b.load(x, zero, 16);
    let words = b.bitcast(ScalarType::U32, 4, v);
    let words = b.bitcast(I32, 4, words);
    b.store(y, zero, words);
    for (backend, compiled) in compiled(&b.finish()) {
        let mut xb: Vec<u8> = (0..16).collect();
        let mut yb = vec![0u8; 16];
        compiled.launch(&mut [&mut xb, &mut yb], &[]).unwrap();
        assert_eq!(yb, xb, "{backend}");
    }
}

/// The transcendental and rounding ops on `f32x4` and on scalars, against Rust's `f32` (libm):
/// Cranelift calls Rust functions lane by lane, LLVM its intrinsics (libm underneath).
#[test]
fn math_functions_match_rust() {
    type Reference = fn(f32) -> f32;
    let ops: [(UnaryOp, Reference); 9] = [
        (UnaryOp::Exp, f32::exp),
        (UnaryOp::Log, |v| v.abs().ln()),
        (UnaryOp::Tanh, f32::tanh),
        (UnaryOp::Sin, f32::sin),
        (UnaryOp::Cos, f32::cos),
        (UnaryOp::Sqrt, |v| v.abs().sqrt()),
        (UnaryOp::Rsqrt, |v| 1.0 / v.abs().sqrt()),
        (UnaryOp::Recip, |v| 1.0 / v),
        (UnaryOp::Floor, f32::floor),
    ];
    let xs: Vec<f32> = random(16, 9).iter().map(|v| v * 6.0).collect();
    for (op, reference) in ops {
        let takes_abs = matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt);
        for lanes in [1, 4] {
            let mut b = KernelBuilder::new("math");
            let x = b.buffer("x", F32, Access::Read);
            let y = b.buffer("y", F32, Access::Write);
            grid_x(&mut b, SizeExpr::Const(16 / u64::from(lanes)));
            let g = b.special(Special::GroupId(Axis::X));
            let per_group = b.const_i(i64::from(lanes));
            let i = b.mul(g, per_group);
            let mut v = b.load(x, i, lanes);
            if takes_abs {
                v = b.unary(UnaryOp::Abs, v);
            }
            let r = b.unary(op, v);
            b.store(y, i, r);
            let want: Vec<f32> = xs.iter().map(|&v| reference(v)).collect();
            for (backend, compiled) in compiled(&b.finish()) {
                let (mut xb, mut yb) = (f32_bytes(&xs), vec![0u8; 4 * xs.len()]);
                compiled.launch(&mut [&mut xb, &mut yb], &[]).unwrap();
                assert_close(
                    &to_f32(&yb),
                    &want,
                    1e-6,
                    &format!("{backend} {op:?}x{lanes}"),
                );
            }
        }
    }
}

/// Lane reductions of `f32x4` and `i32x4` (add, max, min), one vector per group.
#[test]
fn lane_reductions() {
    for scalar in [F32, I32] {
        let mut b = KernelBuilder::new("reductions");
        let x = b.buffer("x", scalar, Access::Read);
        let y = b.buffer("y", scalar, Access::Write);
        grid_x(&mut b, SizeExpr::Const(4));
        let g = b.special(Special::GroupId(Axis::X));
        let (four, three) = (b.const_i(4), b.const_i(3));
        let at = b.mul(g, four);
        let v = b.load(x, at, 4);
        let out = b.mul(g, three);
        for (k, op) in [ReduceOp::Add, ReduceOp::Max, ReduceOp::Min]
            .into_iter()
            .enumerate()
        {
            let r = b.reduce_lanes(op, v);
            let k = b.const_i(k as i64);
            let at = b.add(out, k);
            b.store(y, at, r);
        }
        let xs: Vec<f32> = random(16, 13).iter().map(|v| (v * 100.0).round()).collect();
        let want: Vec<f32> = xs
            .chunks(4)
            .flat_map(|c| {
                let max = c.iter().copied().fold(f32::MIN, f32::max);
                let min = c.iter().copied().fold(f32::MAX, f32::min);
                [c.iter().sum(), max, min]
            })
            .collect();
        for (backend, compiled) in compiled(&b.finish()) {
            let mut xb = if scalar == F32 {
                f32_bytes(&xs)
            } else {
                i32_bytes(&xs.iter().map(|&v| v as i32).collect::<Vec<_>>())
            };
            let mut yb = vec![0u8; 4 * want.len()];
            compiled.launch(&mut [&mut xb, &mut yb], &[]).unwrap();
            let got = if scalar == F32 {
                to_f32(&yb)
            } else {
                to_i32(&yb).iter().map(|&v| v as f32).collect()
            };
            assert_eq!(got, want, "{backend} {scalar:?}");
        }
    }
}

/// Float remainder (a libm call on both backends), on `f32x4`.
#[test]
fn float_remainder() {
    let mut b = KernelBuilder::new("remainder");
    let x = b.buffer("x", F32, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    grid_x(&mut b, SizeExpr::Const(4));
    let g = b.special(Special::GroupId(Axis::X));
    let four = b.const_i(4);
    let i = b.mul(g, four);
    let v = b.load(x, i, 4);
    let d = b.const_f(0.7);
    let d = b.splat(d, 4);
    let r = b.binary(BinaryOp::Rem, v, d);
    b.store(y, i, r);
    let xs: Vec<f32> = random(16, 14).iter().map(|v| v * 5.0).collect();
    let want: Vec<f32> = xs.iter().map(|v| v % 0.7).collect();
    for (backend, compiled) in compiled(&b.finish()) {
        let (mut xb, mut yb) = (f32_bytes(&xs), vec![0u8; 4 * xs.len()]);
        compiled.launch(&mut [&mut xb, &mut yb], &[]).unwrap();
        assert_eq!(to_f32(&yb), want, "{backend}");
    }
}

/// `y = concat(x[3], x[1], x[2], x[0])` and `y[4..8] = concat(x[4..8])`: the concatenations
/// every backend has (scalars into a 128-bit vector; one part).
#[test]
fn concat_of_scalars_and_of_one_vector() {
    let mut b = KernelBuilder::new("concat");
    let x = b.buffer("x", I32, Access::Read);
    let y = b.buffer("y", I32, Access::Write);
    grid_x(&mut b, SizeExpr::Const(1));
    let lanes: Vec<_> = [3, 1, 2, 0]
        .into_iter()
        .map(|i| {
            let i = b.const_i(i);
            b.load(x, i, 1)
        })
        .collect();
    let v = b.concat(&lanes);
    let zero = b.const_i(0);
    b.store(y, zero, v);
    let four = b.const_i(4);
    let v = b.load(x, four, 4);
    let v = b.concat(&[v]);
    b.store(y, four, v);
    for (backend, compiled) in compiled(&b.finish()) {
        let mut xb = i32_bytes(&[10, 11, 12, 13, 14, 15, 16, 17]);
        let mut yb = vec![0u8; 32];
        compiled.launch(&mut [&mut xb, &mut yb], &[]).unwrap();
        assert_eq!(to_i32(&yb), [13, 11, 12, 10, 14, 15, 16, 17], "{backend}");
    }
}

/// Cranelift only: a concatenation wider than 128 bits (LLVM's are in `llvm::tests`).
#[test]
fn cranelift_rejects_wide_concatenations() {
    let mut b = KernelBuilder::new("wide_concat");
    let x = b.buffer("x", ScalarType::U8, Access::ReadWrite);
    let i = b.const_i(0);
    let v = b.load(x, i, 16);
    let v = b.concat(&[v, v]);
    b.store(x, i, v);
    let err = compile_with(&b.finish(), Backend::Cranelift)
        .err()
        .expect("u8x32 must not compile");
    assert!(
        err.to_string().contains("wide_concat") && err.to_string().contains("u8x32"),
        "{err}"
    );
}
