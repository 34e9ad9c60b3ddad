//! Algebra and canonical forms (phase 1): movement ops that cancel or compose (permute∘permute,
//! reshape∘reshape, identities), casts to the same dtype, neutral constants, constant folding of
//! scalar constants, scale hoisting through matmul, and a transposed rhs folded into the matmul's
//! `transpose_b`. Every rule is sound for every shape the analysis admits: where a rewrite needs a
//! fact the pattern cannot state, its builder checks the classes' types.

use super::Rule;
use crate::saturate::analysis::TEGraph;
use crate::saturate::custom::{
    add_constant, add_typed, axes, dims, dtype, flag, float, pattern_rule, ty, Bindings,
};
use crate::saturate::lang::Attr;
use egg::{rewrite, Id};
use std::collections::BTreeMap;
use tessera_ir::interp::{run, Tensor};
use tessera_ir::{BinaryOp, DType, Graph, Op};

pub(super) fn rules() -> Vec<Rule> {
    let mut rules = vec![
        pattern_rule(
            "permute-permute",
            "(permute ?p (permute ?q ?x))",
            compose_permutes,
        ),
        pattern_rule("permute-identity", "(permute ?p ?x)", |eg, _, m| {
            is_identity(axes(eg, m["?p"])?).then_some(m["?x"])
        }),
        rewrite!("reshape-reshape"; "(reshape ?s (reshape ?t ?x))" => "(reshape ?s ?x)"),
        pattern_rule("reshape-identity", "(reshape ?s ?x)", |eg, _, m| {
            (dims(eg, m["?s"])? == ty(eg, m["?x"])?.shape.as_slice()).then_some(m["?x"])
        }),
        pattern_rule("cast-identity", "(cast ?t ?x)", |eg, _, m| {
            (dtype(eg, m["?t"])? == ty(eg, m["?x"])?.dtype).then_some(m["?x"])
        }),
        pattern_rule("fold-unary", "(unary ?u (const ?a))", |eg, _, m| {
            match eg[m["?u"]].data.attr()? {
                Attr::Unary(u) => fold(eg, Op::Unary(*u), &[float(eg, m["?a"])?]),
                _ => None,
            }
        }),
        pattern_rule(
            "fold-binary",
            "(binary ?b (const ?a) (const ?c))",
            |eg, _, m| match eg[m["?b"]].data.attr()? {
                Attr::Binary(b) => {
                    let args = [float(eg, m["?a"])?, float(eg, m["?c"])?];
                    fold(eg, Op::Binary(*b), &args)
                }
                _ => None,
            },
        ),
        // Constants to the right of commutative ops, so later patterns need only one side.
        rewrite!("mul-const-right"; "(binary b:mul (const ?c) ?x)"
            => "(binary b:mul ?x (const ?c))"),
        rewrite!("add-const-right"; "(binary b:add (const ?c) ?x)"
            => "(binary b:add ?x (const ?c))"),
        // A scalar scale commutes with matmul: (a·c)·b = (a·b)·c = a·(b·c). Constants are f32, so
        // a scaled lhs is f32 and so is the product: the lhs forms always type-check. A rhs may be
        // stored in another float dtype; the builders check the rhs forms.
        rewrite!("hoist-scale-lhs"; "(matmul ?tb (binary b:mul ?a (const ?c)) ?b)"
            => "(binary b:mul (matmul ?tb ?a ?b) (const ?c))"),
        rewrite!("sink-scale-lhs"; "(binary b:mul (matmul ?tb ?a ?b) (const ?c))"
            => "(matmul ?tb (binary b:mul ?a (const ?c)) ?b)"),
        pattern_rule(
            "hoist-scale-rhs",
            "(matmul ?tb ?a (binary b:mul ?b (const ?c)))",
            |eg, class, m| {
                let want = ty(eg, class)?.clone();
                let matmul = Op::MatMul {
                    transpose_b: flag(eg, m["?tb"])?,
                };
                let product = add_typed(eg, &matmul, &[m["?a"], m["?b"]], &want)?;
                let scale = add_constant(eg, float(eg, m["?c"])?);
                add_typed(eg, &Op::Binary(BinaryOp::Mul), &[product, scale], &want)
            },
        ),
        pattern_rule(
            "sink-scale-rhs",
            "(binary b:mul (matmul ?tb ?a ?b) (const ?c))",
            |eg, class, m| {
                let (want, rhs) = (ty(eg, class)?.clone(), ty(eg, m["?b"])?.clone());
                let scale = add_constant(eg, float(eg, m["?c"])?);
                let scaled = add_typed(eg, &Op::Binary(BinaryOp::Mul), &[m["?b"], scale], &rhs)?;
                let matmul = Op::MatMul {
                    transpose_b: flag(eg, m["?tb"])?,
                };
                add_typed(eg, &matmul, &[m["?a"], scaled], &want)
            },
        ),
        pattern_rule(
            "matmul-transpose-b",
            "(matmul false ?a (permute ?p ?b))",
            |eg, class, m| {
                if !swaps_last_two(axes(eg, m["?p"])?) {
                    return None;
                }
                let want = ty(eg, class)?.clone();
                add_typed(
                    eg,
                    &Op::MatMul { transpose_b: true },
                    &[m["?a"], m["?b"]],
                    &want,
                )
            },
        ),
    ];
    rules.extend(
        [
            ("mul-one", "(binary b:mul ?x (const f:1))"),
            ("one-mul", "(binary b:mul (const f:1) ?x)"),
            ("div-one", "(binary b:div ?x (const f:1))"),
            ("add-zero", "(binary b:add ?x (const f:0))"),
            ("zero-add", "(binary b:add (const f:0) ?x)"),
            ("sub-zero", "(binary b:sub ?x (const f:0))"),
        ]
        .map(neutral_constant),
    );
    rules
}

/// `x ∘ e → x` for a neutral scalar constant `e`. Constants are f32 scalars, so `x` is f32 and
/// broadcasting leaves its shape alone: the result has `x`'s type exactly, and the same values
/// (adding 0 turns −0 into +0, a difference no kernel preserves either).
fn neutral_constant((name, pattern): (&str, &str)) -> Rule {
    pattern_rule(name, pattern, |_, _, m| Some(m["?x"]))
}

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &a)| i == a)
}

/// Whether `perm` swaps the last two axes and keeps the others (rank ≥ 2).
pub(super) fn swaps_last_two(perm: &[usize]) -> bool {
    let n = perm.len();
    n >= 2 && is_identity(&perm[..n - 2]) && perm[n - 2..] == [n - 1, n - 2]
}

/// `permute(p, permute(q, x))`: output axis i is axis `p[i]` of the inner result, which is axis
/// `q[p[i]]` of `x`. An identity composition is `x` itself.
fn compose_permutes(egraph: &mut TEGraph, class: Id, m: &Bindings) -> Option<Id> {
    let (p, q) = (axes(egraph, m["?p"])?, axes(egraph, m["?q"])?);
    let perm: Vec<usize> = p
        .iter()
        .map(|&i| q.get(i).copied())
        .collect::<Option<_>>()?;
    if is_identity(&perm) {
        return Some(m["?x"]);
    }
    let want = ty(egraph, class)?.clone();
    add_typed(egraph, &Op::Permute { perm }, &[m["?x"]], &want)
}

/// Folds `op` over scalar constants by running it in the reference interpreter, so the folded
/// value is bit for bit what the unfolded graph computes. Results that are not finite f32 values
/// (comparisons give bools, `log(-1)` a NaN) stay unfolded.
fn fold(egraph: &mut TEGraph, op: Op, args: &[f64]) -> Option<Id> {
    let mut g = Graph::new();
    let args: Vec<_> = args.iter().map(|&v| g.constant(v, DType::F32)).collect();
    let out = g.add(op, &args).ok()?;
    g.output("out", out);
    let values = run(&g, &BTreeMap::<String, Tensor>::new(), &BTreeMap::new()).ok()?;
    let value = *values.get("out")?.as_f32()?.first()?;
    value
        .is_finite()
        .then(|| add_constant(egraph, f64::from(value)))
}
