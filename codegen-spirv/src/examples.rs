//! Reference SIMT kernels (workgroups of many threads) shared by this crate's tests, which check
//! that they translate to valid SPIR-V, and the runtime's Vulkan tests, which run them on a
//! device against values computed in Rust. Each one exercises one feature of the translation.

use tessera_ir::lir::{
    Access, Axis, BinaryOp, CmpOp, Intrinsic, Kernel, KernelBuilder, Literal, MemorySpace,
    ReduceOp, ScalarType, SizeExpr, Special, Type, Value,
};

const F32: ScalarType = ScalarType::F32;
const I64: ScalarType = ScalarType::I64;

/// Bytes per Q8_0 block: an `f16` scale and 32 `i8` codes.
pub const Q8_0_BLOCK_BYTES: i64 = 34;

/// The global thread index along x, `GroupId·GroupSize + LocalId`.
fn global_x(b: &mut KernelBuilder) -> Value {
    let group = b.special(Special::GroupId(Axis::X));
    let size = b.special(Special::GroupSize(Axis::X));
    let local = b.special(Special::LocalId(Axis::X));
    let base = b.mul(group, size);
    b.add(base, local)
}

/// `⌈n / wg⌉` workgroups along x for scalar param 0.
fn grid_over_param0(b: &mut KernelBuilder, wg: u32) {
    b.workgroup_size([wg, 1, 1]);
    b.grid([
        SizeExpr::Param(0).ceil_div(u64::from(wg)),
        SizeExpr::Const(1),
        SizeExpr::Const(1),
    ]);
}

/// `c[i] = a[i] + b[i]` for `i < n`, `wg` threads per group, the tail bounds-checked.
pub fn add_tail(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("add_tail");
    let x = b.buffer("a", F32, Access::Read);
    let y = b.buffer("b", F32, Access::Read);
    let z = b.buffer("c", F32, Access::Write);
    let n = b.scalar("n", I64);
    grid_over_param0(&mut b, wg);
    let i = global_x(&mut b);
    let inside = b.cmp(CmpOp::Lt, i, n);
    b.if_then(inside, |b| {
        let (u, v) = (b.load(x, i, 1), b.load(y, i, 1));
        let s = b.add(u, v);
        b.store(z, i, s);
    });
    b.finish()
}

/// `y[g]` = the sum of group `g`'s `wg` elements of `x` (zero past `n`), by a tree reduction
/// through a Shared local with a barrier per level (`wg` a power of two).
pub fn tree_sum(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("tree_sum");
    let x = b.buffer("x", F32, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let n = b.scalar("n", I64);
    grid_over_param0(&mut b, wg);
    let tile = b.local("tile", MemorySpace::Shared, F32, wg);
    let i = global_x(&mut b);
    let local = b.special(Special::LocalId(Axis::X));
    let inside = b.cmp(CmpOp::Lt, i, n);
    let zero = b.const_f(0.0);
    let safe = b.select(inside, i, local);
    let v = b.load(x, safe, 1);
    let v = b.select(inside, v, zero);
    b.store(tile, local, v);
    b.barrier();
    let (start, levels, half) = (
        b.const_i(0),
        b.const_i(i64::from(wg.trailing_zeros())),
        b.const_i(i64::from(wg / 2)),
    );
    b.for_range(start, levels, 1, &[half], |b, _, stride| {
        let s = stride[0];
        let active = b.cmp(CmpOp::Lt, local, s);
        b.if_then(active, |b| {
            let other = b.add(local, s);
            let (u, w) = (b.load(tile, local, 1), b.load(tile, other, 1));
            let sum = b.add(u, w);
            b.store(tile, local, sum);
        });
        b.barrier();
        let two = b.const_i(2);
        vec![b.div(s, two)]
    });
    let first = b.const_i(0);
    let leader = b.cmp(CmpOp::Eq, local, first);
    b.if_then(leader, |b| {
        let total = b.load(tile, first, 1);
        let g = b.special(Special::GroupId(Axis::X));
        b.store(y, g, total);
    });
    b.finish()
}

/// For each `i < n`: `sum[i]` = the subgroup-wide sum of `x`, `first[i]` = `x` of lane 0 of its
/// subgroup, `size[i]` = the subgroup size (so a test can group the expected values).
pub fn subgroup_sum(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("subgroup_sum");
    let x = b.buffer("x", F32, Access::Read);
    let sum = b.buffer("sum", F32, Access::Write);
    let first = b.buffer("first", F32, Access::Write);
    let size = b.buffer("size", ScalarType::I32, Access::Write);
    let n = b.scalar("n", I64);
    grid_over_param0(&mut b, wg);
    let i = global_x(&mut b);
    let inside = b.cmp(CmpOp::Lt, i, n);
    let local = b.special(Special::LocalId(Axis::X));
    let safe = b.select(inside, i, local);
    let v = b.load(x, safe, 1);
    let s = b.intrinsic(Intrinsic::SubgroupReduce(ReduceOp::Add), &[v]);
    let lane0 = b.const_i(0);
    let f = b.intrinsic(Intrinsic::SubgroupBroadcast, &[v, lane0]);
    let width = b.special(Special::SubgroupSize);
    let width = b.cast(ScalarType::I32, width);
    b.if_then(inside, |b| {
        b.store(sum, i, s);
        b.store(first, i, f);
        b.store(size, i, width);
    });
    b.finish()
}

/// Per thread `r < rows`: `sum[r]` and `max[r]` over the `k` elements of row `r` of `x`, a loop
/// carrying two values; the elements are read two at a time as `f32x2` (`k` even).
pub fn row_sum_max(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("row_sum_max");
    let x = b.buffer("x", F32, Access::Read);
    let sum = b.buffer("sum", F32, Access::Write);
    let max = b.buffer("max", F32, Access::Write);
    let rows = b.scalar("rows", I64);
    let k = b.scalar("k", I64);
    grid_over_param0(&mut b, wg);
    let r = global_x(&mut b);
    let inside = b.cmp(CmpOp::Lt, r, rows);
    b.if_then(inside, |b| {
        let base = b.mul(r, k);
        let (start, zero) = (b.const_i(0), b.const_f(0.0));
        let lowest = b.const_f(f64::NEG_INFINITY);
        let out = b.for_range(start, k, 2, &[zero, lowest], |b, j, acc| {
            let at = b.add(base, j);
            let pair = b.load(x, at, 2);
            let s = b.reduce_lanes(ReduceOp::Add, pair);
            let m = b.reduce_lanes(ReduceOp::Max, pair);
            vec![b.add(acc[0], s), b.binary(BinaryOp::Max, acc[1], m)]
        });
        b.store(sum, r, out[0]);
        b.store(max, r, out[1]);
    });
    b.finish()
}

/// Q8_0 dequantization from a byte-addressed `u8` buffer: block `blk = i / 32` is 34 bytes, an
/// `f16` scale then 32 `i8` codes; `y[i] = scale · code[i % 32]` for `i < n`.
pub fn q8_0_dequant(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("q8_0_dequant");
    let w = b.buffer("w", ScalarType::U8, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let n = b.scalar("n", I64);
    grid_over_param0(&mut b, wg);
    let i = global_x(&mut b);
    let inside = b.cmp(CmpOp::Lt, i, n);
    b.if_then(inside, |b| {
        let (per_block, block_bytes, two) =
            (b.const_i(32), b.const_i(Q8_0_BLOCK_BYTES), b.const_i(2));
        let blk = b.div(i, per_block);
        let j = b.binary(BinaryOp::Rem, i, per_block);
        let at = b.mul(blk, block_bytes);
        let scale = b.load_bytes(w, at, Type::scalar(ScalarType::F16));
        let scale = b.cast(F32, scale);
        let codes = b.add(at, two);
        let code_at = b.add(codes, j);
        let code = b.load_bytes(w, code_at, Type::scalar(ScalarType::I8));
        let code = b.cast(F32, code);
        let v = b.mul(scale, code);
        b.store(y, i, v);
    });
    b.finish()
}

/// One thread per Q8_0 block `blk < blocks` of `w` against packed `i8` activations `x` (eight
/// `u32` words per block): `signed[blk] = scale · Σ code·x` through `Dot4I8Packed` and
/// `unsigned[blk] = Σ byte·x` through `Dot4U8I8Packed` (the codes read as `u8`), the code words
/// read as unaligned `u32`s from the byte buffer.
pub fn q8_0_dot(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("q8_0_dot");
    let w = b.buffer("w", ScalarType::U8, Access::Read);
    let x = b.buffer("x", ScalarType::U32, Access::Read);
    let signed = b.buffer("signed", F32, Access::Write);
    let unsigned = b.buffer("unsigned", ScalarType::I32, Access::Write);
    let blocks = b.scalar("blocks", I64);
    grid_over_param0(&mut b, wg);
    let blk = global_x(&mut b);
    let inside = b.cmp(CmpOp::Lt, blk, blocks);
    b.if_then(inside, |b| {
        let (block_bytes, two, four, eight) = (
            b.const_i(Q8_0_BLOCK_BYTES),
            b.const_i(2),
            b.const_i(4),
            b.const_i(8),
        );
        let at = b.mul(blk, block_bytes);
        let scale = b.load_bytes(w, at, Type::scalar(ScalarType::F16));
        let scale = b.cast(F32, scale);
        let codes = b.add(at, two);
        let xs = b.mul(blk, eight);
        let start = b.const_i(0);
        let zero = b.constant(Type::scalar(ScalarType::I32), Literal::I(0));
        let acc = b.for_range(start, eight, 1, &[zero, zero], |b, k, acc| {
            let off = b.mul(k, four);
            let word_at = b.add(codes, off);
            let word = b.load_bytes(w, word_at, Type::scalar(ScalarType::U32));
            let x_at = b.add(xs, k);
            let xv = b.load(x, x_at, 1);
            vec![
                b.intrinsic(Intrinsic::Dot4I8Packed, &[word, xv, acc[0]]),
                b.intrinsic(Intrinsic::Dot4U8I8Packed, &[word, xv, acc[1]]),
            ]
        });
        let total = b.cast(F32, acc[0]);
        let v = b.mul(scale, total);
        b.store(signed, blk, v);
        b.store(unsigned, blk, acc[1]);
    });
    b.finish()
}

/// `y[i] = x[i]` where positive, `-2·x[i]` elsewhere, through an `If` with both arms storing.
pub fn signed_scale(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("signed_scale");
    let x = b.buffer("x", F32, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let n = b.scalar("n", I64);
    grid_over_param0(&mut b, wg);
    let i = global_x(&mut b);
    let inside = b.cmp(CmpOp::Lt, i, n);
    b.if_then(inside, |b| {
        let v = b.load(x, i, 1);
        let zero = b.const_f(0.0);
        let positive = b.cmp(CmpOp::Gt, v, zero);
        b.if_else(
            positive,
            |b| b.store(y, i, v),
            |b| {
                let factor = b.const_f(-2.0);
                let scaled = b.mul(v, factor);
                b.store(y, i, scaled);
            },
        );
    });
    b.finish()
}

/// Reads of the buffer types without a 32-bit storage form and the `i64` store: for `i < n`,
/// `y[i] = h[i] + b[i] + c[i]` from `f16`, `bf16` and `i8` buffers, rounded to `f16` precision
/// (a `Cast` to `f16` and back), and `index[i] = i` into an `i64` buffer.
pub fn mixed_precision_sum(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("mixed_precision_sum");
    let h = b.buffer("h", ScalarType::F16, Access::Read);
    let bf = b.buffer("b", ScalarType::Bf16, Access::Read);
    let c = b.buffer("c", ScalarType::I8, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let index = b.buffer("index", I64, Access::Write);
    let n = b.scalar("n", I64);
    grid_over_param0(&mut b, wg);
    let i = global_x(&mut b);
    let inside = b.cmp(CmpOp::Lt, i, n);
    b.if_then(inside, |b| {
        let values = [b.load(h, i, 1), b.load(bf, i, 1), b.load(c, i, 1)];
        let [u, v, w] = values.map(|x| b.cast(F32, x));
        let s = b.add(u, v);
        let s = b.add(s, w);
        let rounded = b.cast(ScalarType::F16, s);
        let s = b.cast(F32, rounded);
        b.store(y, i, s);
        b.store(index, i, i);
    });
    b.finish()
}

/// Byte lanes and per-thread memory: for `i < n`, the four bytes of `w` at the unaligned byte
/// `4i + 1`, read as `u8x4`, bitcast through one `u32` word to `i8x4`, doubled with 8-bit
/// wrap-around, stored into a Private local and summed back from it: `y[i] = Σ (2·b) as i8`.
pub fn byte_lanes(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("byte_lanes");
    let w = b.buffer("w", ScalarType::U8, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let n = b.scalar("n", I64);
    grid_over_param0(&mut b, wg);
    let lanes = b.local("lanes", MemorySpace::Private, ScalarType::I32, 4);
    let i = global_x(&mut b);
    let inside = b.cmp(CmpOp::Lt, i, n);
    b.if_then(inside, |b| {
        let (four, one) = (b.const_i(4), b.const_i(1));
        let at = b.mul(i, four);
        let at = b.add(at, one);
        let bytes = b.load_bytes(w, at, Type::vector(ScalarType::U8, 4));
        let word = b.bitcast(ScalarType::U32, 1, bytes);
        let signed = b.bitcast(ScalarType::I8, 4, word);
        let doubled = b.add(signed, signed);
        for lane in 0..4 {
            let v = b.extract(doubled, lane);
            let v = b.cast(ScalarType::I32, v);
            let slot = b.const_i(i64::from(lane));
            b.store(lanes, slot, v);
        }
        let (start, zero) = (b.const_i(0), b.const_f(0.0));
        let sum = b.for_range(start, four, 1, &[zero], |b, j, acc| {
            let v = b.load(lanes, j, 1);
            let v = b.cast(F32, v);
            vec![b.add(acc[0], v)]
        });
        b.store(y, i, sum[0]);
    });
    b.finish()
}

/// Wide and narrow accesses to the same buffers: thread `t` takes elements `4t..4t + 4` of
/// `x` (`f32`) and `h` (`f16`) with 4-lane loads at indices provably multiples of 4 (one wide
/// access each), adds `x[4t + 1]` read alone, and stores the four sums with one 4-lane store;
/// `y[i] = x[i] + h[i] + x[4t + 1]` for the `⌊n / 4⌋` whole quads, the tail `i ≥ 4⌊n/4⌋`
/// per element (`y[i] = x[i] + h[i]`).
pub fn wide_quads(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("wide_quads");
    let x = b.buffer("x", F32, Access::Read);
    let h = b.buffer("h", ScalarType::F16, Access::Read);
    let y = b.buffer("y", F32, Access::Write);
    let n = b.scalar("n", I64);
    grid_over_param0(&mut b, wg);
    let t = global_x(&mut b);
    let (four, one) = (b.const_i(4), b.const_i(1));
    let quad = b.mul(t, four);
    let end = b.add(quad, four);
    let whole = b.cmp(CmpOp::Le, end, n);
    b.if_else(
        whole,
        |b| {
            let xs = b.load(x, quad, 4);
            let hs = b.load(h, quad, 4);
            let hs = b.cast(F32, hs);
            let second = b.add(quad, one);
            let lone = b.load(x, second, 1);
            let lone = b.splat(lone, 4);
            let s = b.add(xs, hs);
            let s = b.add(s, lone);
            b.store(y, quad, s);
        },
        |b| {
            b.for_range(quad, n, 1, &[], |b, i, _| {
                let xi = b.load(x, i, 1);
                let hi = b.load(h, i, 1);
                let hi = b.cast(F32, hi);
                let s = b.add(xi, hi);
                b.store(y, i, s);
                vec![]
            });
        },
    );
    b.finish()
}

/// `f16` arithmetic and an `f16` store (a device with `shader-f16`): `y[i] = fma(a[i], b[i],
/// 0.5)` computed in `f16` for `i < n` (`n` even), on 2-lane vectors (elements `2t`, `2t + 1`).
pub fn half_fma(wg: u32) -> Kernel {
    let mut b = KernelBuilder::new("half_fma");
    let a = b.buffer("a", ScalarType::F16, Access::Read);
    let c = b.buffer("b", ScalarType::F16, Access::Read);
    let y = b.buffer("y", ScalarType::F16, Access::Write);
    let n = b.scalar("n", I64);
    grid_over_param0(&mut b, wg);
    let t = global_x(&mut b);
    let two = b.const_i(2);
    let pair = b.mul(t, two);
    let inside = b.cmp(CmpOp::Lt, pair, n);
    b.if_then(inside, |b| {
        let u = b.load(a, pair, 2);
        let v = b.load(c, pair, 2);
        let half = b.constant(Type::scalar(ScalarType::F16), Literal::F(0.5));
        let half = b.splat(half, 2);
        let r = b.fma(u, v, half);
        b.store(y, pair, r);
    });
    b.finish()
}
