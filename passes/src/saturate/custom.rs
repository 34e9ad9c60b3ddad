//! Building blocks for rewrite rules written in Rust rather than as patterns alone: what an e-class
//! holds (its tensor type, its attribute, a constant's value), adding an op only when it has the
//! type it must have, and a rule that runs a Rust builder on each match of a pattern. A rule built
//! from these never puts an `Invalid` type into the e-graph, whatever it matched.

use super::analysis::{TEGraph, Types};
use super::lang::{Attr, Bits, TNode};
use super::ops::op_node;
use egg::{Applier, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};
use std::ops::Index;
use tessera_ir::{infer, DType, Dim, Op, TensorType};

/// The tensor type of a class (`None` for attribute classes).
pub(crate) fn ty(egraph: &TEGraph, id: Id) -> Option<&TensorType> {
    egraph[id].data.ty()
}

/// The attribute of an attribute class.
pub(crate) fn attr(egraph: &TEGraph, id: Id) -> Option<&Attr> {
    egraph[id].data.attr()
}

/// An `Axes` attribute (a permutation, reduced axes).
pub(crate) fn axes(egraph: &TEGraph, id: Id) -> Option<&[usize]> {
    match attr(egraph, id)? {
        Attr::Axes(a) => Some(a),
        _ => None,
    }
}

/// A `Dims` attribute (a reshape or expand target shape).
pub(crate) fn dims(egraph: &TEGraph, id: Id) -> Option<&[Dim]> {
    match attr(egraph, id)? {
        Attr::Dims(d) => Some(d),
        _ => None,
    }
}

/// A `DType` attribute (a cast's target).
pub(crate) fn dtype(egraph: &TEGraph, id: Id) -> Option<DType> {
    match attr(egraph, id)? {
        Attr::DType(t) => Some(*t),
        _ => None,
    }
}

/// A `Bool` attribute (`transpose_b`, `causal`, `keep_dims`).
pub(crate) fn flag(egraph: &TEGraph, id: Id) -> Option<bool> {
    match attr(egraph, id)? {
        Attr::Bool(b) => Some(*b),
        _ => None,
    }
}

/// A `Float` attribute (a constant's value, a norm's epsilon).
pub(crate) fn float(egraph: &TEGraph, id: Id) -> Option<f64> {
    match attr(egraph, id)? {
        Attr::Float(b) => Some(b.get()),
        _ => None,
    }
}

/// The value of the scalar constant the class holds, if it holds one.
pub(crate) fn constant(egraph: &TEGraph, id: Id) -> Option<f64> {
    egraph[id].nodes.iter().find_map(|n| match n {
        TNode::Const([v]) => float(egraph, *v),
        _ => None,
    })
}

/// The type `op` would have over the tensor classes `inputs`, or `None` when it does not
/// type-check (or an input is not a tensor).
pub(crate) fn infer_on(egraph: &TEGraph, op: &Op, inputs: &[Id]) -> Option<TensorType> {
    let types: Option<Vec<&TensorType>> = inputs.iter().map(|&i| ty(egraph, i)).collect();
    infer(op, &types?).ok()
}

/// Adds `op` over `inputs` (with its attribute leaves); the caller has checked its type.
pub(crate) fn add_op(egraph: &mut TEGraph, op: &Op, inputs: &[Id]) -> Id {
    let node = op_node(op, inputs, &mut |n| egraph.add(n));
    egraph.add(node)
}

/// Adds `op` over `inputs` only when its type is `want`.
pub(crate) fn add_typed(
    egraph: &mut TEGraph,
    op: &Op,
    inputs: &[Id],
    want: &TensorType,
) -> Option<Id> {
    (infer_on(egraph, op, inputs).as_ref() == Some(want)).then(|| add_op(egraph, op, inputs))
}

/// Adds the scalar constant `value`.
pub(crate) fn add_constant(egraph: &mut TEGraph, value: f64) -> Id {
    let v = egraph.add(TNode::Attr(Attr::Float(Bits::new(value))));
    egraph.add(TNode::Const([v]))
}

/// A match's variables by name: `m["?x"]`.
pub(crate) struct Bindings<'a>(pub(crate) &'a Subst);

impl Index<&str> for Bindings<'_> {
    type Output = Id;
    fn index(&self, var: &str) -> &Id {
        let var: Var = var
            .parse()
            .unwrap_or_else(|e| panic!("bad pattern variable `{var}`: {e}"));
        self.0
            .get(var)
            .unwrap_or_else(|| panic!("the pattern does not bind `{var}`"))
    }
}

/// What a builder does with one match: the class (matched class, bindings) ↦ an equal class.
type Build = dyn Fn(&mut TEGraph, Id, &Bindings) -> Option<Id> + Send + Sync;

struct BuildApplier(Box<Build>);

impl Applier<TNode, Types> for BuildApplier {
    fn apply_one(
        &self,
        egraph: &mut TEGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<TNode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let Some(id) = (self.0)(egraph, eclass, &Bindings(subst)) else {
            return vec![];
        };
        let same_type = ty(egraph, id).is_some() && ty(egraph, id) == ty(egraph, eclass);
        if same_type && egraph.union(eclass, id) {
            vec![eclass]
        } else {
            vec![]
        }
    }
}

/// A rule that, for each match of `pattern`, unions the matched class with what `build` returns
/// (nothing when it returns `None`, or a class of another type). Builders add only nodes they
/// union, so a phase whose rules find nothing new still saturates.
pub(crate) fn pattern_rule(
    name: &str,
    pattern: &str,
    build: impl Fn(&mut TEGraph, Id, &Bindings) -> Option<Id> + Send + Sync + 'static,
) -> Rewrite<TNode, Types> {
    let searcher: Pattern<TNode> = pattern
        .parse()
        .unwrap_or_else(|e| panic!("rule {name}: bad pattern: {e}"));
    Rewrite::new(name, searcher, BuildApplier(Box::new(build)))
        .unwrap_or_else(|e| panic!("rule {name}: {e}"))
}
