//! Generators of small graphs, each exercising one rule: random shapes within small bounds (the
//! first axis, or a matmul's M, often the symbolic `seq`, since rules must hold for symbolic
//! shapes), random constants and attribute choices, and a seed for the input values.

use super::Case;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use tessera_ir::{BinaryOp, DType, Dim, DimEnv, Graph, NodeId, Op, Shape, UnaryOp};

const UNARY: [UnaryOp; 15] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Recip,
    UnaryOp::Abs,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Silu,
    UnaryOp::GeluTanh,
    UnaryOp::GeluErf,
];

/// The binary ops with a float result (comparisons give bools, which constants are not).
const ARITHMETIC: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Pow,
];

/// Builds a case whose output is what `build` returns.
fn case(env: DimEnv, seed: u64, build: impl FnOnce(&mut Graph) -> NodeId) -> Case {
    let mut graph = Graph::new();
    let out = build(&mut graph);
    graph.output("out", out);
    Case { graph, env, seed }
}

/// Adds an op the generator knows to be well typed.
fn add(g: &mut Graph, op: Op, inputs: &[NodeId]) -> NodeId {
    g.add(op, inputs)
        .unwrap_or_else(|e| panic!("a generator built an ill-typed graph: {e}\n{g}"))
}

/// `sizes` as a shape whose axis `symbolic` (if any, and in range) is `seq`, bound in `env`.
fn dims(sizes: &[usize], symbolic: Option<usize>, env: &mut DimEnv) -> Shape {
    let dim = |(i, &s): (usize, &usize)| {
        if Some(i) == symbolic {
            env.insert("seq".into(), s);
            Dim::sym("seq")
        } else {
            Dim::from(s)
        }
    };
    sizes.iter().enumerate().map(dim).collect()
}

/// An f32 input `x` of rank 0..=3 (first axis `seq` when `symbolic`).
fn tensor() -> impl Strategy<Value = (Vec<usize>, bool, u64)> {
    (vec(1usize..4, 0..=3), any::<bool>(), any::<u64>())
}

/// The case `build(graph, x)` makes over an f32 input `x` of `sizes` (first axis `seq` when
/// `symbolic`).
fn with_x(
    sizes: &[usize],
    symbolic: bool,
    seed: u64,
    build: impl FnOnce(&mut Graph, NodeId) -> NodeId,
) -> Case {
    let mut env = DimEnv::new();
    let shape = dims(sizes, symbolic.then_some(0), &mut env);
    case(env, seed, |g| {
        let x = g.input("x", DType::F32, shape);
        build(g, x)
    })
}

/// A constant that is a multiple of 1/16 in `lo/16 .. hi/16`.
fn sixteenths(lo: i32, hi: i32) -> impl Strategy<Value = f64> {
    (lo..hi).prop_map(|v| f64::from(v) / 16.0)
}

fn perm(rank: usize) -> impl Strategy<Value = Vec<usize>> {
    Just((0..rank).collect::<Vec<usize>>()).prop_shuffle()
}

/// `x` of rank 1..=4 permuted by `q`, then by `p`.
pub(super) fn permute_chain() -> impl Strategy<Value = Case> {
    (1usize..=4)
        .prop_flat_map(|r| {
            (
                vec(1usize..4, r),
                perm(r),
                perm(r),
                any::<bool>(),
                any::<u64>(),
            )
        })
        .prop_map(|(sizes, p, q, symbolic, seed)| {
            let mut env = DimEnv::new();
            let shape = dims(&sizes, symbolic.then_some(0), &mut env);
            case(env, seed, |g| {
                let x = g.input("x", DType::F32, shape);
                let y = add(g, Op::Permute { perm: q }, &[x]);
                add(g, Op::Permute { perm: p }, &[y])
            })
        })
}

/// `x` of rank 1..=4 permuted by the identity.
pub(super) fn identity_permute() -> impl Strategy<Value = Case> {
    (vec(1usize..4, 1..=4), any::<bool>(), any::<u64>()).prop_map(|(sizes, symbolic, seed)| {
        let perm = (0..sizes.len()).collect();
        with_x(&sizes, symbolic, seed, |g, x| {
            add(g, Op::Permute { perm }, &[x])
        })
    })
}

/// Groups `factors`, taken in `order`, into a shape: an axis ends after factor i when `cuts[i]`.
fn group(factors: &[Dim], order: &[usize], cuts: &[bool]) -> Shape {
    let mut shape = Vec::new();
    let mut axis = Dim::c(1);
    for (i, &f) in order.iter().enumerate() {
        axis = axis * factors[f].clone();
        if cuts[i] || i + 1 == order.len() {
            shape.push(std::mem::replace(&mut axis, Dim::c(1)));
        }
    }
    shape
}

/// `x` reshaped twice: three random groupings of the same 2..=4 factors (the first a lone
/// `seq` axis when symbolic, so the input binds it).
pub(super) fn reshape_chain() -> impl Strategy<Value = Case> {
    (2usize..=4)
        .prop_flat_map(|n| {
            let cuts = || vec(any::<bool>(), n);
            (
                vec(1usize..4, n),
                perm(n),
                perm(n),
                (cuts(), cuts(), cuts()),
                any::<bool>(),
                any::<u64>(),
            )
        })
        .prop_map(
            |(sizes, order_b, order_c, (mut cuts_a, cuts_b, cuts_c), symbolic, seed)| {
                let mut env = DimEnv::new();
                let factors = dims(&sizes, symbolic.then_some(0), &mut env);
                cuts_a[0] |= symbolic;
                let natural: Vec<usize> = (0..sizes.len()).collect();
                let (a, b, c) = (
                    group(&factors, &natural, &cuts_a),
                    group(&factors, &order_b, &cuts_b),
                    group(&factors, &order_c, &cuts_c),
                );
                case(env, seed, |g| {
                    let x = g.input("x", DType::F32, a);
                    let y = add(g, Op::Reshape { shape: b }, &[x]);
                    add(g, Op::Reshape { shape: c }, &[y])
                })
            },
        )
}

/// `x` reshaped to its own shape.
pub(super) fn same_shape_reshape() -> impl Strategy<Value = Case> {
    tensor().prop_map(|(sizes, symbolic, seed)| {
        with_x(&sizes, symbolic, seed, |g, x| {
            let shape = g.ty(x).shape.clone();
            add(g, Op::Reshape { shape }, &[x])
        })
    })
}

/// `cast(cast(cast(x, d), d), f32)` for a float dtype `d`: the middle cast changes nothing.
pub(super) fn same_dtype_casts() -> impl Strategy<Value = Case> {
    (tensor(), select(vec![DType::F32, DType::F16, DType::Bf16])).prop_map(
        |((sizes, symbolic, seed), to)| {
            with_x(&sizes, symbolic, seed, |g, x| {
                let y = add(g, Op::Cast { to }, &[x]);
                let z = add(g, Op::Cast { to }, &[y]);
                add(g, Op::Cast { to: DType::F32 }, &[z])
            })
        },
    )
}

/// `x ∘ c` (or `c ∘ x` when `const_first`) for the constants `value` generates.
pub(super) fn scalar_op(
    op: BinaryOp,
    value: impl Strategy<Value = f64>,
    const_first: bool,
) -> impl Strategy<Value = Case> {
    (tensor(), value).prop_map(move |((sizes, symbolic, seed), value)| {
        with_x(&sizes, symbolic, seed, |g, x| {
            let c = g.constant(value, DType::F32);
            let args = if const_first { [c, x] } else { [x, c] };
            add(g, Op::Binary(op), &args)
        })
    })
}

/// A constant operand for `scalar_op`: a multiple of 1/16 in [-2, 2).
pub(super) fn any_constant() -> impl Strategy<Value = f64> {
    sixteenths(-32, 32)
}

/// `x + u(c)` for a random unary op and a constant in [0.125, 2) where every op is finite.
pub(super) fn unary_of_constant() -> impl Strategy<Value = Case> {
    (tensor(), select(UNARY.to_vec()), sixteenths(2, 32)).prop_map(
        |((sizes, symbolic, seed), u, c)| {
            with_x(&sizes, symbolic, seed, |g, x| {
                let c = g.constant(c, DType::F32);
                let y = add(g, Op::Unary(u), &[c]);
                add(g, Op::Binary(BinaryOp::Add), &[x, y])
            })
        },
    )
}

/// `x + (a ∘ c)` for a random arithmetic op and constants in [0.25, 2).
pub(super) fn binary_of_constants() -> impl Strategy<Value = Case> {
    (
        tensor(),
        select(ARITHMETIC.to_vec()),
        sixteenths(4, 32),
        sixteenths(4, 32),
    )
        .prop_map(|((sizes, symbolic, seed), op, a, c)| {
            with_x(&sizes, symbolic, seed, |g, x| {
                let (a, c) = (g.constant(a, DType::F32), g.constant(c, DType::F32));
                let y = add(g, Op::Binary(op), &[a, c]);
                add(g, Op::Binary(BinaryOp::Add), &[x, y])
            })
        })
}

/// Matmul operands: a [batch…, M, K] (M = `seq` when symbolic), b a weight [N, K] when
/// `transpose_b` else [K, N], and a scale constant.
#[derive(Clone, Debug)]
pub(super) struct Matmul {
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    transpose_b: bool,
    symbolic: bool,
    scale: f64,
    seed: u64,
}

fn matmul() -> impl Strategy<Value = Matmul> {
    (
        vec(1usize..3, 0..=2),
        1usize..4,
        1usize..5,
        1usize..4,
        any::<bool>(),
        any::<bool>(),
        sixteenths(4, 32),
        any::<u64>(),
    )
        .prop_map(
            |(batch, m, k, n, transpose_b, symbolic, scale, seed)| Matmul {
                batch,
                m,
                k,
                n,
                transpose_b,
                symbolic,
                scale,
                seed,
            },
        )
}

impl Matmul {
    /// The case `build(graph, a, b, scale)` makes.
    fn case(self, build: impl FnOnce(&mut Graph, NodeId, NodeId, NodeId) -> NodeId) -> Case {
        let mut env = DimEnv::new();
        let mut sizes = self.batch.clone();
        sizes.extend([self.m, self.k]);
        let a_shape = dims(&sizes, self.symbolic.then_some(self.batch.len()), &mut env);
        let b_shape = if self.transpose_b {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        };
        case(env, self.seed, |g| {
            let a = g.input("a", DType::F32, a_shape);
            let b = g.weight("b", DType::F32, &b_shape);
            let c = g.constant(self.scale, DType::F32);
            build(g, a, b, c)
        })
    }
}

fn mul(g: &mut Graph, x: NodeId, c: NodeId) -> NodeId {
    add(g, Op::Binary(BinaryOp::Mul), &[x, c])
}

/// `matmul(a·c, b)`.
pub(super) fn scaled_lhs() -> impl Strategy<Value = Case> {
    matmul().prop_map(|mm| {
        let tb = mm.transpose_b;
        mm.case(|g, a, b, c| {
            let a = mul(g, a, c);
            add(g, Op::MatMul { transpose_b: tb }, &[a, b])
        })
    })
}

/// `matmul(a, b·c)`.
pub(super) fn scaled_rhs() -> impl Strategy<Value = Case> {
    matmul().prop_map(|mm| {
        let tb = mm.transpose_b;
        mm.case(|g, a, b, c| {
            let b = mul(g, b, c);
            add(g, Op::MatMul { transpose_b: tb }, &[a, b])
        })
    })
}

/// `matmul(a, b)·c`.
pub(super) fn scaled_product() -> impl Strategy<Value = Case> {
    matmul().prop_map(|mm| {
        let tb = mm.transpose_b;
        mm.case(|g, a, b, c| {
            let p = add(g, Op::MatMul { transpose_b: tb }, &[a, b]);
            mul(g, p, c)
        })
    })
}

/// `matmul(a, permute(b, swap last two)) + matmul(a, permute(b2, q))`: b an input
/// [batch…, N, K] whose batch axes are a's or none (broadcast); q also shuffles the batch axes,
/// so the rule must leave that matmul alone unless the shuffle is the identity.
pub(super) fn transposed_rhs() -> impl Strategy<Value = Case> {
    let parts = matmul().prop_flat_map(|mm| {
        let n = mm.batch.len();
        (Just(mm), perm(n), any::<bool>())
    });
    parts.prop_map(|(mm, shuffle, batched)| {
        let mut env = DimEnv::new();
        let mut a_sizes = mm.batch.clone();
        a_sizes.extend([mm.m, mm.k]);
        let a_shape = dims(&a_sizes, mm.symbolic.then_some(mm.batch.len()), &mut env);
        let mut b_sizes = if batched { mm.batch.clone() } else { vec![] };
        b_sizes.extend([mm.n, mm.k]);
        let rank = mm.batch.len() + 2;
        let mut q = shuffle;
        q.extend([rank - 1, rank - 2]);
        // permute(b2, q) must be [batch…, K, N]: axis q[i] of b2 has the size of output axis i.
        let mut out_sizes = mm.batch.clone();
        out_sizes.extend([mm.k, mm.n]);
        let mut b2_sizes = vec![0; rank];
        for (i, &axis) in q.iter().enumerate() {
            b2_sizes[axis] = out_sizes[i];
        }
        case(env, mm.seed, |g| {
            let a = g.input("a", DType::F32, a_shape);
            let b = g.input(
                "b",
                DType::F32,
                b_sizes.iter().map(|&s| Dim::from(s)).collect(),
            );
            let b2 = g.input(
                "b2",
                DType::F32,
                b2_sizes.iter().map(|&s| Dim::from(s)).collect(),
            );
            let swap = add(
                g,
                Op::Permute {
                    perm: swap_last_two(b_sizes.len()),
                },
                &[b],
            );
            let shuffled = add(g, Op::Permute { perm: q }, &[b2]);
            let p1 = add(g, Op::MatMul { transpose_b: false }, &[a, swap]);
            let p2 = add(g, Op::MatMul { transpose_b: false }, &[a, shuffled]);
            add(g, Op::Binary(BinaryOp::Add), &[p1, p2])
        })
    })
}

fn swap_last_two(rank: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(rank - 2, rank - 1);
    perm
}

/// How an attention case scales its scores.
#[derive(Clone, Copy, Debug)]
enum Scale {
    MulRight,
    MulLeft,
    Div,
    None,
}

/// The shape of an attention case's additive mask, relative to the scores [B, Hq, S, T].
#[derive(Clone, Copy, Debug)]
enum MaskShape {
    /// [S, T]
    Rows,
    /// [B, 1, S, T]
    PerBatch,
    /// [B, Hq, S, T]
    Full,
}

/// `softmax(scale(q·kᵀ))·v` over q [B, Hkv·G, S, D] (S = `seq` when symbolic) and k, v
/// [B, H, T, D|Dv] — H = Hkv with k and v repeated to the query heads by the `repeat_kv` chain
/// when `gqa`, else H = Hkv·G — with kᵀ a permute or the matmul's `transpose_b`. When `masked`,
/// an f32 input `mask` ([S, T], [B, 1, S, T] or [B, Hq, S, T]; finite, multiples of 1/16) is
/// added to the scaled scores before the softmax, on either side of the add.
pub(super) fn written_out_attention(masked: bool) -> impl Strategy<Value = Case> {
    let sizes = (
        1usize..=2,
        1usize..=2,
        1usize..=3,
        1usize..=4,
        1usize..=5,
        1usize..=4,
        1usize..=4,
    );
    let forms = (
        any::<bool>(),
        any::<bool>(),
        select(vec![
            Scale::MulRight,
            Scale::MulLeft,
            Scale::Div,
            Scale::None,
        ]),
    );
    let mask = (
        select(vec![MaskShape::Rows, MaskShape::PerBatch, MaskShape::Full]),
        any::<bool>(),
    );
    (
        sizes,
        forms,
        sixteenths(2, 16),
        any::<bool>(),
        mask,
        any::<u64>(),
    )
        .prop_map(
            move |(
                (b, hkv, groups, s, t, d, dv),
                (gqa, permuted, scale),
                c,
                symbolic,
                (mask_shape, mask_left),
                seed,
            )| {
                let mut env = DimEnv::new();
                let hq = hkv * groups;
                let h = if gqa { hkv } else { hq };
                let q_shape = dims(&[b, hq, s, d], symbolic.then_some(2), &mut env);
                let seq = q_shape[2].clone();
                case(env, seed, |g| {
                    let q = g.input("q", DType::F32, q_shape);
                    let k = g.input("k", DType::F32, [b, h, t, d].map(Dim::from).to_vec());
                    let v = g.input("v", DType::F32, [b, h, t, dv].map(Dim::from).to_vec());
                    let (k, v) = if gqa {
                        (repeat_kv(g, k, groups), repeat_kv(g, v, groups))
                    } else {
                        (k, v)
                    };
                    let scores = if permuted {
                        let kt = add(
                            g,
                            Op::Permute {
                                perm: vec![0, 1, 3, 2],
                            },
                            &[k],
                        );
                        add(g, Op::MatMul { transpose_b: false }, &[q, kt])
                    } else {
                        add(g, Op::MatMul { transpose_b: true }, &[q, k])
                    };
                    let c = g.constant(c, DType::F32);
                    let z = match scale {
                        Scale::MulRight => mul(g, scores, c),
                        Scale::MulLeft => add(g, Op::Binary(BinaryOp::Mul), &[c, scores]),
                        Scale::Div => add(g, Op::Binary(BinaryOp::Div), &[scores, c]),
                        Scale::None => scores,
                    };
                    let z = if masked {
                        let (b, hq, t) = (Dim::from(b), Dim::from(hq), Dim::from(t));
                        let shape = match mask_shape {
                            MaskShape::Rows => vec![seq, t],
                            MaskShape::PerBatch => vec![b, Dim::c(1), seq, t],
                            MaskShape::Full => vec![b, hq, seq, t],
                        };
                        let mask = g.input("mask", DType::F32, shape);
                        let operands = if mask_left { [mask, z] } else { [z, mask] };
                        add(g, Op::Binary(BinaryOp::Add), &operands)
                    } else {
                        z
                    };
                    let p = add(g, Op::Softmax, &[z]);
                    add(g, Op::MatMul { transpose_b: false }, &[p, v])
                })
            },
        )
}

/// HF's `repeat_kv`: [B, H, T, D] → [B, H·groups, T, D], query head h reading KV head h / groups.
fn repeat_kv(g: &mut Graph, x: NodeId, groups: usize) -> NodeId {
    let [b, h, t, d] = <[Dim; 4]>::try_from(g.ty(x).shape.clone()).expect("rank 4");
    let unsqueezed = vec![b.clone(), h.clone(), Dim::c(1), t.clone(), d.clone()];
    let expanded = vec![
        b.clone(),
        h.clone(),
        Dim::from(groups),
        t.clone(),
        d.clone(),
    ];
    let x = add(g, Op::Reshape { shape: unsqueezed }, &[x]);
    let x = add(g, Op::Expand { shape: expanded }, &[x]);
    add(
        g,
        Op::Reshape {
            shape: vec![b, h * Dim::from(groups), t, d],
        },
        &[x],
    )
}

/// The K of a matmul over a weight [small, 32·blocks] (whole blocks along the last axis, as
/// quantized weights need): [N, K] when `transpose_b`, else [K, N].
fn blocked_k(transpose_b: bool, small: usize, blocks: usize) -> usize {
    if transpose_b {
        32 * blocks
    } else {
        small
    }
}

/// `matmul(x, dequantize(w))` for a q8_0 or q4_0 weight w [small, 32·blocks] in either layout.
pub(super) fn dequantized_matmul() -> impl Strategy<Value = Case> {
    let format = select(vec![DType::Q8_0, DType::Q4_0]);
    (
        format,
        any::<bool>(),
        vec(1usize..3, 0..=1),
        1usize..4,
        1usize..4,
        1usize..=2,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(format, tb, batch, m, small, blocks, symbolic, seed)| {
            let mut env = DimEnv::new();
            let mut sizes = batch.clone();
            sizes.extend([m, blocked_k(tb, small, blocks)]);
            let x_shape = dims(&sizes, symbolic.then_some(batch.len()), &mut env);
            case(env, seed, |g| {
                let x = g.input("x", DType::F32, x_shape);
                let w = g.weight("w", format, &[small, 32 * blocks]);
                let w = add(g, Op::Dequantize, &[w]);
                add(g, Op::MatMul { transpose_b: tb }, &[x, w])
            })
        })
}

/// Projections of one input, as Q/K/V or gate/up: x [batch…, M, K] times 2..=3 weights named
/// `q_proj`, `k_proj`, `v_proj` (graph order differs from name order), f32/f16 or — when
/// `quantized` — q8_0/q4_0 through `quant_matmul`, all in one layout, the products joined along
/// the last axis as the output.
pub(super) fn projections(quantized: bool) -> impl Strategy<Value = Case> {
    let dtypes = if quantized {
        vec![DType::Q8_0, DType::Q4_0]
    } else {
        vec![DType::F32, DType::F16]
    };
    let shapes = (
        vec(1usize..3, 0..=1),
        1usize..4,
        1usize..4,
        vec(1usize..3, 3),
    );
    (
        select(dtypes),
        2usize..=3,
        any::<bool>(),
        shapes,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            move |(dtype, count, tb, (batch, m, small, ns), symbolic, seed)| {
                let mut env = DimEnv::new();
                // Quantized weights need whole blocks along their last axis: K when
                // transposed, else N.
                let k = if quantized && tb { 32 } else { small };
                let n = |i: usize| if quantized && !tb { 32 * ns[i] } else { ns[i] };
                let mut sizes = batch.clone();
                sizes.extend([m, k]);
                let x_shape = dims(&sizes, symbolic.then_some(batch.len()), &mut env);
                let rank = sizes.len();
                case(env, seed, |g| {
                    let x = g.input("x", DType::F32, x_shape);
                    let products: Vec<NodeId> = ["q_proj", "k_proj", "v_proj"][..count]
                        .iter()
                        .enumerate()
                        .map(|(i, name)| {
                            let shape = if tb { [n(i), k] } else { [k, n(i)] };
                            let w = g.weight(name, dtype, &shape);
                            let op = if quantized {
                                Op::QuantMatMul { transpose_b: tb }
                            } else {
                                Op::MatMul { transpose_b: tb }
                            };
                            add(g, op, &[x, w])
                        })
                        .collect();
                    add(g, Op::Concat { axis: rank - 1 }, &products)
                })
            },
        )
}

/// A transformer block in miniature over `x` [1, seq, H·D]: RMSNorm, Q/K/V projections, RoPE,
/// KV cache append (symbolic `past`), attention with GQA, output projection and the residual —
/// every producer/consumer pair fusion and selection meet in a real model.
pub(super) fn mini_block() -> impl Strategy<Value = Case> {
    (
        1usize..=2,
        any::<bool>(),
        select(vec![2usize, 4]),
        1usize..4,
        0usize..3,
        select(vec![DType::F32, DType::F16]),
        any::<u64>(),
    )
        .prop_map(|(kv_heads, grouped, d, seq, past, wdtype, seed)| {
            let heads = if grouped { 2 * kv_heads } else { kv_heads };
            let e = heads * d;
            let env: DimEnv = [("seq".to_string(), seq), ("past".to_string(), past)].into();
            case(env, seed, |g| {
                let (s, p) = (Dim::sym("seq"), Dim::sym("past"));
                let x = g.input("x", DType::F32, vec![Dim::c(1), s.clone(), Dim::from(e)]);
                let pos = g.input("positions", DType::I32, vec![Dim::c(1), s.clone()]);
                let freq = g.weight("inv_freq", DType::F32, &[d / 2]);
                let norm = g.weight("norm", wdtype, &[e]);
                let h = add(g, Op::RmsNorm { eps: 1e-5 }, &[x, norm]);
                let heads_of = |g: &mut Graph, name: &str, n: usize, rope: bool| {
                    let w = g.weight(name, wdtype, &[n * d, e]);
                    let y = add(g, Op::MatMul { transpose_b: true }, &[h, w]);
                    let shape = vec![Dim::c(1), s.clone(), Dim::from(n), Dim::from(d)];
                    let y = add(g, Op::Reshape { shape }, &[y]);
                    let y = add(
                        g,
                        Op::Permute {
                            perm: vec![0, 2, 1, 3],
                        },
                        &[y],
                    );
                    match rope {
                        true => add(
                            g,
                            Op::Rope {
                                layout: tessera_ir::RopeLayout::Half,
                            },
                            &[y, pos, freq],
                        ),
                        false => y,
                    }
                };
                let q = heads_of(g, "q_proj", heads, true);
                let k = heads_of(g, "k_proj", kv_heads, true);
                let v = heads_of(g, "v_proj", kv_heads, false);
                let cache_shape = vec![Dim::c(1), Dim::from(kv_heads), p.clone(), Dim::from(d)];
                let ck = g.input("cache.k", DType::F32, cache_shape.clone());
                let cv = g.input("cache.v", DType::F32, cache_shape);
                let k = add(g, Op::KvAppend, &[ck, k]);
                let v = add(g, Op::KvAppend, &[cv, v]);
                let scale = 1.0 / (d as f32).sqrt();
                let a = add(
                    g,
                    Op::Attention {
                        scale,
                        causal: true,
                        window: None,
                    },
                    &[q, k, v],
                );
                let a = add(
                    g,
                    Op::Permute {
                        perm: vec![0, 2, 1, 3],
                    },
                    &[a],
                );
                let a = add(
                    g,
                    Op::Reshape {
                        shape: vec![Dim::c(1), s, Dim::from(e)],
                    },
                    &[a],
                );
                let wo = g.weight("o_proj", wdtype, &[e, e]);
                let o = add(g, Op::MatMul { transpose_b: true }, &[a, wo]);
                let o = add(g, Op::Unary(UnaryOp::Silu), &[o]);
                add(g, Op::Binary(BinaryOp::Add), &[x, o])
            })
        })
}
