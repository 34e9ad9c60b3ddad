use super::examples::gemv_row;
use super::*;

fn cpu() -> Capabilities {
    Capabilities {
        subgroup_sizes: vec![],
        intrinsics: BTreeSet::new(),
        max_workgroup_size: 1,
        shared_bytes: 0,
        f16: false,
    }
}

fn gpu() -> Capabilities {
    Capabilities {
        subgroup_sizes: vec![32],
        intrinsics: [IntrinsicKind::SubgroupReduce, IntrinsicKind::AsyncCopy]
            .into_iter()
            .collect(),
        max_workgroup_size: 1024,
        shared_bytes: 48 * 1024,
        f16: true,
    }
}

const F32: ScalarType = ScalarType::F32;
const I64: ScalarType = ScalarType::I64;

/// 256 threads sum 256 elements per group through shared memory, halving the active threads
/// each step (8 steps, a uniform loop).
fn block_sum() -> Kernel {
    let mut b = KernelBuilder::new("block_sum");
    let x = b.buffer("x", F32, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let n = b.scalar("n", I64);
    b.workgroup_size([256, 1, 1]);
    b.grid([
        SizeExpr::Param(0).ceil_div(256),
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let tile = b.local("tile", MemorySpace::Shared, F32, 256);
    let group = b.special(Special::GroupId(Axis::X));
    let lid = b.special(Special::LocalId(Axis::X));
    let size = b.const_i(256);
    let base = b.mul(group, size);
    let i = b.add(base, lid);
    let inside = b.cmp(CmpOp::Lt, i, n);
    let zero = b.const_f(0.0);
    b.store(tile, lid, zero);
    b.if_then(inside, |b| {
        let v = b.load(x, i, 1);
        b.store(tile, lid, v);
    });
    b.barrier();
    let (start, end) = (b.const_i(0), b.const_i(8));
    b.for_range(start, end, 1, &[], |b, step, _| {
        let one = b.const_i(1);
        let s1 = b.add(step, one);
        let half = b.binary(BinaryOp::Shr, size, s1);
        let active = b.cmp(CmpOp::Lt, lid, half);
        b.if_then(active, |b| {
            let other = b.add(lid, half);
            let a = b.load(tile, lid, 1);
            let c = b.load(tile, other, 1);
            let s = b.add(a, c);
            b.store(tile, lid, s);
        });
        b.barrier();
        vec![]
    });
    let first = b.cmp(CmpOp::Eq, lid, start);
    b.if_then(first, |b| {
        let total = b.load(tile, start, 1);
        b.store(y, group, total);
    });
    b.finish()
}

/// `y[i] = exp(x[i])` for 64 elements per group, the tail guarded by an `If`.
fn elementwise() -> Kernel {
    let mut b = KernelBuilder::new("exp");
    let x = b.buffer("x", F32, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let n = b.scalar("n", I64);
    b.workgroup_size([64, 1, 1]);
    b.grid([
        SizeExpr::Param(0).ceil_div(64),
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
    let group = b.special(Special::GroupId(Axis::X));
    let size = b.special(Special::GroupSize(Axis::X));
    let lid = b.special(Special::LocalId(Axis::X));
    let base = b.mul(group, size);
    let i = b.add(base, lid);
    let inside = b.cmp(CmpOp::Lt, i, n);
    b.if_else(
        inside,
        |b| {
            let v = b.load(x, i, 1);
            let e = b.unary(UnaryOp::Exp, v);
            b.store(y, i, e);
        },
        |_| {},
    );
    b.finish()
}

#[test]
fn realistic_kernels_verify_and_print() {
    let gemv = gemv_row();
    verify(&gemv, &cpu()).unwrap();
    let text = gemv.to_string();
    for line in [
        "kernel gemv(w: global f32 read, x: global f32 read, y: global f32 write; n: i64, k: i64) workgroup [1,1,1] grid [n, 1, 1]",
        "  %2: i64 = group_id.x",
        "  %4: f32x4 = splat %3",
        "  for %7: i64 in %5..%1 step 4 carry(%8 = %4) {",
        "    %10: f32x4 = load w[%9]",
        "    %12: f32x4 = fma %10, %11, %8",
        "    yield %12",
        "  } -> %13",
        "  %14: f32 = reduce_lanes.add %13",
        "  store y[%2] = %14",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    let sum = block_sum();
    verify(&sum, &gpu()).unwrap();
    let text = sum.to_string();
    for line in [
        "workgroup [256,1,1] grid [ceil(n/256), 1, 1]",
        "  local tile: shared f32[256]",
        "  store tile[%2] = %7",
        "  if %6 {\n    %8: f32 = load x[%5]\n    store tile[%2] = %8\n  }\n  barrier\n",
        "  for %11: i64 in %9..%10 step 1 {",
        "    %14: i64 = shr %3, %13",
        "    if %15 {",
        "    barrier",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // The CPU target has neither 256-thread workgroups nor shared memory.
    assert!(matches!(
        verify(&sum, &cpu()),
        Err(LirError::Unsupported { .. })
    ));

    let ew = elementwise();
    verify(&ew, &gpu()).unwrap();
    let text = ew.to_string();
    for line in [
        "  %6: bool = cmp.lt %5, %0",
        "  if %6 {",
        "    %8: f32 = exp %7",
        "    store y[%5] = %8",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn serde_round_trip() {
    for k in [gemv_row(), block_sum(), elementwise()] {
        let json = serde_json::to_string(&k).unwrap();
        let back: Kernel = serde_json::from_str(&json).unwrap();
        assert_eq!(back, k);
    }
}

#[test]
fn size_expr_eval() {
    let e = SizeExpr::Param(1).ceil_div(4);
    assert_eq!(e.eval(&[0, 8]), Ok(2));
    assert_eq!(e.eval(&[0, 9]), Ok(3));
    assert_eq!(e.eval(&[0, 0]), Ok(0));
    let sum = SizeExpr::Add(
        Box::new(SizeExpr::Mul(
            Box::new(SizeExpr::Param(0)),
            Box::new(SizeExpr::Const(3)),
        )),
        Box::new(SizeExpr::Const(1)),
    );
    assert_eq!(sum.eval(&[5]), Ok(16));
    assert!(e.eval(&[0]).is_err(), "missing param");
    assert!(e.eval(&[0, -1]).is_err(), "negative param");
    assert!(SizeExpr::Const(1).ceil_div(0).eval(&[]).is_err());
    let huge = SizeExpr::Mul(
        Box::new(SizeExpr::Const(u64::MAX)),
        Box::new(SizeExpr::Const(2)),
    );
    assert!(huge.eval(&[]).is_err());
}

/// A kernel with one f32 read buffer, one f32 write buffer and `%0 = group_id.x`, extended by `f`.
fn small(f: impl FnOnce(&mut KernelBuilder, BufRef, BufRef, Value)) -> Kernel {
    let mut b = KernelBuilder::new("t");
    let x = b.buffer("x", F32, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let g = b.special(Special::GroupId(Axis::X));
    f(&mut b, x, y, g);
    b.finish()
}

#[test]
fn use_before_definition() {
    let mut k = small(|b, x, _, g| {
        b.load(x, g, 1);
    });
    k.body.swap(0, 1);
    let e = verify(&k, &cpu()).unwrap_err();
    assert_eq!(
        e,
        LirError::Undefined {
            kernel: "t".into(),
            path: "body[0]".into(),
            value: Value(0),
        }
    );
    assert_eq!(e.to_string(), "kernel t, body[0]: %0 is not defined here");
}

#[test]
fn value_escaping_a_loop() {
    let k = small(|b, x, y, g| {
        let (s, e) = (b.const_i(0), b.const_i(4));
        let mut inner = None;
        b.for_range(s, e, 1, &[], |b, i, _| {
            inner = Some(b.load(x, i, 1));
            vec![]
        });
        b.store(y, g, inner.unwrap());
    });
    let e = verify(&k, &cpu()).unwrap_err();
    assert!(
        matches!(&e, LirError::Undefined { path, value: Value(4), .. } if path == "body[4]"),
        "{e}"
    );
}

#[test]
fn binary_type_mismatch() {
    let k = small(|b, x, _, g| {
        let v = b.load(x, g, 1);
        b.add(v, g);
    });
    let e = verify(&k, &cpu()).unwrap_err();
    assert!(
        matches!(&e, LirError::Type { path, .. } if path == "body[2]"),
        "{e}"
    );
    assert!(
        e.to_string().contains("operands differ: f32 and i64"),
        "{e}"
    );
}

#[test]
fn store_to_read_only_buffer() {
    let k = small(|b, x, _, g| {
        let v = b.const_f(1.0);
        b.store(x, g, v);
    });
    let e = verify(&k, &cpu()).unwrap_err();
    assert!(
        matches!(&e, LirError::ReadOnly { buffer, .. } if buffer == "x"),
        "{e}"
    );
}

#[test]
fn barrier_under_local_id_condition() {
    let k = small(|b, _, _, g| {
        b.workgroup_size([32, 1, 1]);
        let lid = b.special(Special::LocalId(Axis::X));
        let c = b.cmp(CmpOp::Lt, lid, g);
        b.if_then(c, |b| b.barrier());
    });
    let e = verify(&k, &gpu()).unwrap_err();
    assert!(
        matches!(&e, LirError::DivergentBarrier { path, .. } if path == "body[3].then[0]"),
        "{e}"
    );
    // The same guard on a uniform condition is fine.
    let k = small(|b, _, _, g| {
        b.workgroup_size([32, 1, 1]);
        let n = b.special(Special::NumGroups(Axis::X));
        let c = b.cmp(CmpOp::Lt, n, g);
        b.if_then(c, |b| b.barrier());
    });
    verify(&k, &gpu()).unwrap();
}

#[test]
fn barrier_in_loop_with_non_uniform_bound() {
    let k = small(|b, x, _, g| {
        b.workgroup_size([32, 1, 1]);
        let end = b.load(x, g, 1);
        let end = b.cast(I64, end);
        b.for_range(g, end, 1, &[], |b, _, _| {
            b.barrier();
            vec![]
        });
    });
    let e = verify(&k, &gpu()).unwrap_err();
    assert!(matches!(&e, LirError::DivergentBarrier { .. }), "{e}");
    assert!(
        e.to_string().contains("loop bounds %0..%2 are not uniform"),
        "{e}"
    );
}

#[test]
fn loop_carried_uniformity_reaches_a_fixpoint() {
    // The carried value becomes non-uniform through its yield, so the later loop bounded by
    // the result diverges.
    let k = small(|b, _, _, g| {
        b.workgroup_size([32, 1, 1]);
        let (s, e) = (b.const_i(0), b.const_i(4));
        let r = b.for_range(s, e, 1, &[s], |b, _, c| {
            let lid = b.special(Special::LocalId(Axis::X));
            vec![b.add(c[0], lid)]
        });
        b.for_range(g, r[0], 1, &[], |b, _, _| {
            b.barrier();
            vec![]
        });
    });
    assert!(matches!(
        verify(&k, &gpu()),
        Err(LirError::DivergentBarrier { .. })
    ));
}

#[test]
fn undeclared_intrinsic() {
    let k = small(|b, x, _, g| {
        let v = b.load(x, g, 1);
        b.intrinsic(Intrinsic::SubgroupReduce(ReduceOp::Add), &[v]);
    });
    verify(&k, &gpu()).unwrap();
    let e = verify(&k, &cpu()).unwrap_err();
    assert!(
        matches!(&e, LirError::Unsupported { path, .. } if path == "body[2]"),
        "{e}"
    );
}

#[test]
fn intrinsic_signatures() {
    let mut caps = gpu();
    caps.intrinsics
        .insert(IntrinsicKind::MmaSync { m: 16, n: 8, k: 16 });
    caps.intrinsics.insert(IntrinsicKind::Dot4I8Packed);
    let mma = Intrinsic::MmaSync { m: 16, n: 8, k: 16 };
    let k = small(|b, _, _, _| {
        let h = b.constant(Type::scalar(ScalarType::F16), Literal::F(1.0));
        let f = b.const_f(0.0);
        let a = b.splat(h, 8);
        let bb = b.splat(h, 4);
        let c = b.splat(f, 4);
        b.intrinsic(mma, &[a, bb, c]);
    });
    verify(&k, &caps).unwrap();
    let bad = small(|b, _, _, _| {
        let h = b.constant(Type::scalar(ScalarType::F16), Literal::F(1.0));
        let a = b.splat(h, 8);
        b.intrinsic(mma, &[a, a, a]);
    });
    assert!(matches!(verify(&bad, &caps), Err(LirError::Type { .. })));
    let dp4a = small(|b, _, _, _| {
        let u = b.constant(Type::scalar(ScalarType::U32), Literal::I(7));
        let acc = b.constant(Type::scalar(ScalarType::I32), Literal::I(0));
        b.intrinsic(Intrinsic::Dot4I8Packed, &[u, u, acc]);
        b.intrinsic(Intrinsic::Dot4I8Packed, &[u, acc, acc]);
    });
    let e = verify(&dp4a, &caps).unwrap_err();
    assert!(
        matches!(&e, LirError::Type { path, .. } if path == "body[4]"),
        "{e}"
    );
}

#[test]
fn too_much_shared_memory() {
    let k = small(|b, _, _, _| {
        b.workgroup_size([128, 1, 1]);
        b.local("a", MemorySpace::Shared, F32, 8 * 1024);
        b.local("b", MemorySpace::Shared, F32, 4 * 1024 + 1);
        b.local("p", MemorySpace::Private, F32, 1 << 20);
    });
    let e = verify(&k, &gpu()).unwrap_err();
    assert!(matches!(&e, LirError::Unsupported { .. }), "{e}");
    assert!(
        e.to_string().contains("49156 bytes of shared memory"),
        "{e}"
    );
    let mut big = gpu();
    big.shared_bytes = 49156;
    verify(&k, &big).unwrap();
}

#[test]
fn workgroup_too_large() {
    let k = small(|b, _, _, _| {
        b.workgroup_size([32, 33, 1]);
    });
    assert!(matches!(
        verify(&k, &gpu()),
        Err(LirError::Unsupported { .. })
    ));
}

#[test]
fn wrong_yield_types() {
    let k = small(|b, x, _, _| {
        let (s, e) = (b.const_i(0), b.const_i(4));
        let acc = b.const_f(0.0);
        b.for_range(s, e, 1, &[acc], |b, i, _| vec![b.load(x, i, 4)]);
    });
    let e = verify(&k, &cpu()).unwrap_err();
    assert!(
        matches!(&e, LirError::Type { path, .. } if path == "body[4]"),
        "{e}"
    );
    assert!(e.to_string().contains("yield %6 f32x4"), "{e}");
}

#[test]
fn redefinition_and_recorded_type_mismatch() {
    let mut k = small(|b, x, _, g| {
        b.load(x, g, 1);
    });
    k.body.push(k.body[1].clone());
    assert!(matches!(
        verify(&k, &cpu()),
        Err(LirError::Redefined {
            value: Value(1),
            ..
        })
    ));
    k.body.pop();
    k.values[1] = Type::vector(F32, 2);
    let e = verify(&k, &cpu()).unwrap_err();
    assert!(
        e.to_string()
            .contains("%1 is declared f32x2 but its instruction produces f32"),
        "{e}"
    );
}

/// A `u8` buffer is byte-addressed: it may be read as any type; other buffers only as their
/// element type.
#[test]
fn byte_buffers_are_read_as_any_type() {
    let k = small(|b, _, _, g| {
        let q = b.buffer("q", ScalarType::U8, Access::Read);
        b.load_bytes(q, g, Type::vector(ScalarType::U32, 4));
        b.load_bytes(q, g, Type::scalar(ScalarType::F16));
    });
    verify(&k, &cpu()).unwrap();
    let k = small(|b, x, _, g| {
        b.load_bytes(x, g, Type::scalar(ScalarType::I32));
    });
    assert!(matches!(verify(&k, &cpu()), Err(LirError::Type { .. })));
}

#[test]
fn bitcasts_keep_the_width() {
    let k = small(|b, x, _, g| {
        let v = b.load(x, g, 4);
        let w = b.bitcast(ScalarType::U8, 16, v);
        b.bitcast(ScalarType::I32, 4, w);
    });
    verify(&k, &cpu()).unwrap();
    let k = small(|b, x, _, g| {
        let v = b.load(x, g, 4);
        b.bitcast(ScalarType::U8, 8, v);
    });
    assert!(matches!(verify(&k, &cpu()), Err(LirError::Type { .. })));
}

/// Without `f16` capability, half values may be loaded and widened but not computed with.
#[test]
fn half_precision_is_storage_only_without_the_capability() {
    let widen = small(|b, _, _, g| {
        let q = b.buffer("q", ScalarType::U8, Access::Read);
        let h = b.load_bytes(q, g, Type::scalar(ScalarType::F16));
        b.cast(F32, h);
    });
    verify(&widen, &cpu()).unwrap();
    let arithmetic = small(|b, _, _, g| {
        let q = b.buffer("q", ScalarType::U8, Access::Read);
        let h = b.load_bytes(q, g, Type::scalar(ScalarType::F16));
        b.add(h, h);
    });
    assert!(matches!(
        verify(&arithmetic, &cpu()),
        Err(LirError::Unsupported { .. })
    ));
    verify(&arithmetic, &gpu()).unwrap();
}

/// `Concat` joins values of one scalar type (scalars as one lane) into one vector, and prints
/// its operands in order.
#[test]
fn concat_joins_lanes_of_one_scalar_type() {
    let k = small(|b, _, _, g| {
        let q = b.buffer("q", ScalarType::U8, Access::Read);
        let u32x4 = Type::vector(ScalarType::U32, 4);
        let lo = b.load_bytes(q, g, u32x4);
        let hi = b.load_bytes(q, g, u32x4);
        let word = b.load_bytes(q, g, Type::scalar(ScalarType::U32));
        b.concat(&[lo, hi, word]);
        let h = b.load_bytes(q, g, Type::vector(ScalarType::F16, 4));
        b.concat(&[h, h]);
    });
    verify(&k, &cpu()).unwrap();
    assert_eq!(k.values[4], Type::vector(ScalarType::U32, 9));
    assert_eq!(k.values[6], Type::vector(ScalarType::F16, 8));
    let text = k.to_string();
    assert!(
        text.contains("%4: u32x9 = concat %1, %2, %3"),
        "missing the concat in\n{text}"
    );

    let mixed = small(|b, x, _, g| {
        let v = b.load(x, g, 4);
        b.concat(&[v, g]);
    });
    let e = verify(&mixed, &cpu()).unwrap_err();
    assert!(
        e.to_string()
            .contains("concat of different scalar types: f32x4, i64"),
        "{e}"
    );
    let empty = small(|b, _, _, _| {
        b.concat(&[]);
    });
    let e = verify(&empty, &cpu()).unwrap_err();
    assert!(e.to_string().contains("concat of no values"), "{e}");
}
