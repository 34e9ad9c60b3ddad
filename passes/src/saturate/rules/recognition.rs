//! Recognition of composite ops written out of primitives (phase 2), so imported graphs that spell
//! attention or a dequantizing matmul reach the same kernels as graphs that use the ops:
//!
//! - `attention`: `softmax(s·q·kᵀ)·v` → `Attention { scale: s, causal: false, window: None }`, in
//!   f32 (lower precisions round between the written-out ops, which the fused op does not). The
//!   scale may be a multiplication by a constant (either side), a division by one, or absent; kᵀ
//!   may be a permute swapping k's last two axes or the matmul's `transpose_b`; k and v may be
//!   broadcast from KV heads to query heads the way `repeat_kv` does it
//!   (`reshape(expand(reshape(k, [B, Hkv, 1, T, D]), [B, Hkv, G, T, D]), [B, Hkv·G, T, D])`), in
//!   which case the op reads the KV heads directly (it does GQA itself). A mask given as
//!   `select(…, −∞)` or proven causal is not recognized (not worth its cost; models emit causal
//!   `Attention` themselves).
//! - `attention-masked`: `softmax(s·q·kᵀ + mask)·v` (the add in either operand order, the scores
//!   in any form `attention` accepts) → the same op with `mask` as its fourth input, which it adds
//!   to the scaled scores before the softmax. The mask must be f32 and broadcast to the scores.
//! - `quant-matmul`: `matmul(x, dequantize(w))` → `quant_matmul(x, w)`, same `transpose_b`.
//!   (`cast(dequantize(w), f32)` needs no rule here: dequantize yields f32, and `cast-identity`
//!   removes the cast.)

use super::algebra::swaps_last_two;
use super::Rule;
use crate::saturate::analysis::TEGraph;
use crate::saturate::custom::{add_typed, constant, infer_on, pattern_rule, ty, Bindings};
use crate::saturate::lang::{Attr, TNode};
use egg::{rewrite, Id};
use tessera_ir::{BinaryOp, DType, Dim, Op, TensorType};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        attention_rule("attention", "(matmul false (softmax ?z) ?v)", |eg, m| {
            attention_candidates(eg, m["?z"], m["?v"])
        }),
        attention_rule(
            "attention-masked",
            "(matmul false (softmax (binary b:add ?x ?y)) ?v)",
            |eg, m| {
                let mut out = Vec::new();
                for (z, mask) in [(m["?x"], m["?y"]), (m["?y"], m["?x"])] {
                    if ty(eg, mask).map(|t| t.dtype) != Some(DType::F32) {
                        continue;
                    }
                    for (op, mut args) in attention_candidates(eg, z, m["?v"]) {
                        args.push(mask);
                        out.push((op, args));
                    }
                }
                out
            },
        ),
        rewrite!("quant-matmul"; "(matmul ?tb ?x (dequantize ?w))" => "(quant_matmul ?tb ?x ?w)"),
    ]
}

/// Attention ops (each with its inputs) a match of an attention pattern may equal, best first.
type Candidates = fn(&TEGraph, &Bindings) -> Vec<(Op, Vec<Id>)>;

/// A rule turning the matches of `pattern` (a `matmul` of a softmax) into the first of
/// `candidates` that types as the matched class.
fn attention_rule(name: &str, pattern: &str, candidates: Candidates) -> Rule {
    pattern_rule(name, pattern, move |eg, class, m| {
        let want = ty(eg, class)?.clone();
        // In f16/bf16 the written-out form rounds the scores and probabilities between ops; the
        // fused op does not, so only f32 attention is the same computation.
        if want.dtype != DType::F32 {
            return None;
        }
        let candidate = candidates(eg, m)
            .into_iter()
            .find(|(op, args)| infer_on(eg, op, args).as_ref() == Some(&want))?;
        add_typed(eg, &candidate.0, &candidate.1, &want)
    })
}

/// Every `Attention` op (with its q, k, v) that `matmul(softmax(z), v)` equals, best first: scaled
/// before unscaled, KV heads before broadcast ones. Each candidate still has to type-check
/// against the matched class, which rules out matmul broadcasting that attention does not do.
fn attention_candidates(egraph: &TEGraph, z: Id, v: Id) -> Vec<(Op, Vec<Id>)> {
    let mut out = Vec::new();
    for (scores, scale) in scaled(egraph, z) {
        for (q, k) in q_kt(egraph, scores) {
            for k in unbroadcast_heads(egraph, k) {
                for v in unbroadcast_heads(egraph, v) {
                    let op = Op::Attention {
                        scale: scale as f32,
                        causal: false,
                        window: None,
                    };
                    out.push((op, vec![q, k, v]));
                }
            }
        }
    }
    out
}

/// The ways class `z` is `scores · scale` for a constant scale: `scores · c`, `c · scores`,
/// `scores / c`, and `z` itself with scale 1.
fn scaled(egraph: &TEGraph, z: Id) -> Vec<(Id, f64)> {
    let binary = |node: &TNode| match node {
        TNode::Binary([b, x, y]) => Some((egraph[*b].data.attr()?.clone(), *x, *y)),
        _ => None,
    };
    let mut out: Vec<(Id, f64)> = egraph[z]
        .nodes
        .iter()
        .filter_map(binary)
        .filter_map(
            |(b, x, y)| match (b, constant(egraph, x), constant(egraph, y)) {
                (Attr::Binary(BinaryOp::Mul), _, Some(c)) => Some((x, c)),
                (Attr::Binary(BinaryOp::Mul), Some(c), _) => Some((y, c)),
                (Attr::Binary(BinaryOp::Div), _, Some(c)) if c != 0.0 => Some((x, 1.0 / c)),
                _ => None,
            },
        )
        .collect();
    out.push((z, 1.0));
    out
}

/// The (q, k) pairs with `scores = q · kᵀ`: `matmul(q, k, transpose_b)` or `matmul(q, permute(k))`
/// with the permute swapping the last two axes.
fn q_kt(egraph: &TEGraph, scores: Id) -> Vec<(Id, Id)> {
    let mut out = Vec::new();
    for node in &egraph[scores].nodes {
        let TNode::MatMul([tb, q, kt]) = node else {
            continue;
        };
        match egraph[*tb].data.attr() {
            Some(Attr::Bool(true)) => out.push((*q, *kt)),
            Some(Attr::Bool(false)) => {
                out.extend(egraph[*kt].nodes.iter().filter_map(|n| match n {
                    TNode::Permute([p, k]) => match egraph[*p].data.attr()? {
                        Attr::Axes(p) if swaps_last_two(p) => Some((*q, *k)),
                        _ => None,
                    },
                    _ => None,
                }))
            }
            _ => {}
        }
    }
    out
}

/// `x` itself, preceded by the KV-head tensors `x` repeats per query head: classes `k` with
/// `x = reshape(expand(reshape(k, [B, H, 1, T, D]), [B, H, G, T, D]), [B, H·G, T, D])`, where query
/// head `h` reads KV head `h / G` — exactly `Attention`'s GQA rule.
fn unbroadcast_heads(egraph: &TEGraph, x: Id) -> Vec<Id> {
    let mut out = Vec::new();
    let Some(xt) = ty(egraph, x) else {
        return vec![x];
    };
    for expanded in inputs(egraph, x, reshape_input) {
        for unsqueezed in inputs(egraph, expanded, expand_input) {
            for k in inputs(egraph, unsqueezed, reshape_input) {
                if let (Some(kt), Some(et), Some(ut)) =
                    (ty(egraph, k), ty(egraph, expanded), ty(egraph, unsqueezed))
                {
                    if repeats_heads(kt, ut, et, xt) {
                        out.push(k);
                    }
                }
            }
        }
    }
    out.push(x);
    out
}

fn reshape_input(node: &TNode) -> Option<Id> {
    match node {
        TNode::Reshape([_, x]) => Some(*x),
        _ => None,
    }
}

fn expand_input(node: &TNode) -> Option<Id> {
    match node {
        TNode::Expand([_, x]) => Some(*x),
        _ => None,
    }
}

/// The inputs of the nodes of class `id` that `pick` accepts.
fn inputs(egraph: &TEGraph, id: Id, pick: fn(&TNode) -> Option<Id>) -> Vec<Id> {
    egraph[id].nodes.iter().filter_map(pick).collect()
}

/// Whether k [B, H, T, D] → unsqueezed [B, H, 1, T, D] → expanded [B, H, G, T, D] →
/// x [B, H·G, T, D] is the `repeat_kv` chain.
fn repeats_heads(
    k: &TensorType,
    unsqueezed: &TensorType,
    expanded: &TensorType,
    x: &TensorType,
) -> bool {
    let [b, h, t, d] = k.shape.as_slice() else {
        return false;
    };
    let Some(g) = expanded.shape.get(2) else {
        return false;
    };
    unsqueezed.shape == [b.clone(), h.clone(), Dim::c(1), t.clone(), d.clone()]
        && expanded.shape == [b.clone(), h.clone(), g.clone(), t.clone(), d.clone()]
        && x.shape == [b.clone(), h.clone() * g.clone(), t.clone(), d.clone()]
}
