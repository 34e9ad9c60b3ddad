//! Horizontal merging (phase 3): projections that share an input — Q/K/V, gate/up — become one
//! matmul on concatenated weights, read back through slices, so the input is read once and one
//! launch replaces several. For `a = x·wa` and `b = x·wb` (same `transpose_b`, both weights
//! weight-only of one dtype with the same K), the rule adds `m = x·concat(wa, wb)` — along axis 0
//! of [N, K] weights when `transpose_b`, else along the last axis of [K, N] ones — and unions `a`
//! with `slice(m, last axis, 0..Na)` and `b` with `slice(m, last axis, Na..Na+Nb)`. The concat of
//! weights is weight-only, so it is computed once at compile time.
//!
//! Merges grow left-deep in weight-name order — `wa`'s weights all sort before `wb`'s and `wb` is
//! one weight — so repeated application merges three or more projections (q, k, v gives k·q,
//! then (k·q)·v) without building every order of every subset, and never a weight twice.

use super::Rule;
use crate::saturate::analysis::{TEGraph, Types};
use crate::saturate::custom::{add_op, flag, ty, Bindings};
use crate::saturate::lang::{Attr, TNode};
use egg::{Applier, Id, Language, MultiPattern, PatternAst, Rewrite, Subst, Symbol};
use std::collections::BTreeSet;
use tessera_ir::{infer, Dim, Op};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        merge_rule("merge-matmul", "matmul", |transpose_b| Op::MatMul {
            transpose_b,
        }),
        merge_rule("merge-quant-matmul", "quant_matmul", |transpose_b| {
            Op::QuantMatMul { transpose_b }
        }),
    ]
}

/// Merges pairs of `head` nodes (matmul or quant_matmul) that share their lhs and `transpose_b`.
fn merge_rule(name: &str, head: &str, op: fn(bool) -> Op) -> Rule {
    let pairs: MultiPattern<TNode> = format!("?a = ({head} ?tb ?x ?wa), ?b = ({head} ?tb ?x ?wb)")
        .parse()
        .unwrap_or_else(|e| panic!("rule {name}: bad pattern: {e:?}"));
    Rewrite::new(name, pairs, Merge(op)).unwrap_or_else(|e| panic!("rule {name}: {e}"))
}

struct Merge(fn(bool) -> Op);

impl Applier<TNode, Types> for Merge {
    fn apply_one(
        &self,
        egraph: &mut TEGraph,
        _eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TNode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        merge(egraph, self.0, &Bindings(subst)).unwrap_or_default()
    }
}

/// Adds the merged matmul and unions both projections with its slices; `[a]` when that changed
/// the e-graph (one application per merge).
fn merge(egraph: &mut TEGraph, op: fn(bool) -> Op, m: &Bindings) -> Option<Vec<Id>> {
    let (a, b, x, wa, wb) = (m["?a"], m["?b"], m["?x"], m["?wa"], m["?wb"]);
    let weight_only = |w: Id| egraph[w].data.weight_only();
    if egraph.find(a) == egraph.find(b) || !weight_only(wa) || !weight_only(wb) {
        return None;
    }
    // Dequantized weights merge as `quant_matmul`s, on their blocks: a plain matmul over the
    // concatenation would store the merged weight dequantized.
    let dequantized = |w: Id| {
        egraph[w]
            .nodes
            .iter()
            .any(|n| matches!(n, TNode::Dequantize(_)))
    };
    if matches!(op(false), Op::MatMul { .. }) && (dequantized(wa) || dequantized(wb)) {
        return None;
    }
    let (names_a, names_b) = (weights_under(egraph, wa), weights_under(egraph, wb));
    if names_b.len() != 1 || names_a.last()? >= names_b.first()? {
        return None;
    }
    let transpose_b = flag(egraph, m["?tb"])?;
    let op = op(transpose_b);
    let (wa_ty, wb_ty, x_ty) = (ty(egraph, wa)?, ty(egraph, wb)?, ty(egraph, x)?);
    let axis = wa_ty.rank().checked_sub(if transpose_b { 2 } else { 1 })?;
    let concat = Op::Concat { axis };
    let merged_ty = infer(&op, &[x_ty, &infer(&concat, &[wa_ty, wb_ty]).ok()?]).ok()?;
    let (na, nb) = (wa_ty.shape[axis].clone(), wb_ty.shape[axis].clone());
    let last = merged_ty.rank() - 1;
    let slices = [
        (
            a,
            Op::Slice {
                axis: last,
                start: Dim::c(0),
                end: na.clone(),
            },
        ),
        (
            b,
            Op::Slice {
                axis: last,
                start: na.clone(),
                end: na + nb,
            },
        ),
    ];
    for (class, slice) in &slices {
        if infer(slice, &[&merged_ty]).ok().as_ref() != ty(egraph, *class) {
            return None;
        }
    }
    let weights = add_op(egraph, &concat, &[wa, wb]);
    let merged = add_op(egraph, &op, &[x, weights]);
    let mut changed = false;
    for (class, slice) in slices {
        let part = add_op(egraph, &slice, &[merged]);
        changed |= egraph.union(class, part);
    }
    Some(if changed { vec![a] } else { vec![] })
}

/// The names of the weights a weight-only class is computed from, over all its representations.
fn weights_under(egraph: &TEGraph, id: Id) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut todo = vec![egraph.find(id)];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for node in &egraph[id].nodes {
            match node {
                TNode::Weight([n]) => {
                    if let Some(Attr::Name(name)) = egraph[*n].data.attr() {
                        names.insert(name.to_string());
                    }
                }
                other => todo.extend(other.children().iter().map(|&c| egraph.find(c))),
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::rules;
    use crate::saturate::analysis::TEGraph;
    use crate::saturate::convert::graph_to_egraph;
    use crate::saturate::custom::ty;
    use crate::saturate::lang::TNode;
    use egg::Runner;
    use tessera_ir::{DType, Dim, Graph, Op};

    /// q (16 wide), k and v (4 each) projections of one input: four merges — k·q (20), k·v (8),
    /// q·v (20), then (k·q)·v (24) — and no weight concatenated twice (nothing wider than 24).
    #[test]
    fn merges_three_projections_left_deep() {
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, vec![Dim::sym("seq"), Dim::c(16)]);
        let mut outs = Vec::new();
        for (name, n) in [("q_proj", 16), ("k_proj", 4), ("v_proj", 4)] {
            let w = g.weight(name, DType::F32, &[n, 16]);
            outs.push(g.add(Op::MatMul { transpose_b: true }, &[x, w]).unwrap());
        }
        let mut egraph = TEGraph::default();
        let ids = graph_to_egraph(&g, &mut egraph);
        let runner = Runner::default().with_egraph(egraph).run(&rules());
        let merges: usize = runner
            .iterations
            .iter()
            .filter_map(|i| i.applied.get(&egg::Symbol::from("merge-matmul")))
            .sum();
        assert_eq!(merges, 4);
        let egraph = runner.egraph;
        let widths: Vec<String> = egraph
            .classes()
            .filter(|c| c.nodes.iter().any(|n| matches!(n, TNode::MatMul(_))))
            .filter_map(|c| ty(&egraph, c.id).map(|t| t.shape[1].to_string()))
            .collect();
        for n in ["8", "20", "24"] {
            assert!(
                widths.iter().any(|w| w == n),
                "no merged matmul of width {n}: {widths:?}"
            );
        }
        assert!(
            !widths.iter().any(|w| w.parse::<usize>().unwrap() > 24),
            "{widths:?}"
        );
        for out in outs {
            let class = &egraph[egraph.find(ids[&out])];
            assert!(
                class.nodes.iter().any(|n| matches!(n, TNode::Slice(_))),
                "{:?}",
                class.nodes
            );
        }
    }
}
