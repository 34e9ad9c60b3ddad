//! Rules written as Rust functions over whole e-classes, for rewrites that patterns cannot spell
//! (variadic children, bodies that grow, choices that read the cost model's candidates).

use super::Rule;
use crate::saturate::analysis::{TEGraph, Types};
use crate::saturate::lang::TNode;
use egg::{Applier, Id, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};

/// Which classes a rule looks at, and what it adds for one of them.
type Matches = Box<dyn Fn(&TEGraph, Id) -> bool + Send + Sync>;
type Expand = Box<dyn Fn(&mut TEGraph, Id) -> Vec<Id> + Send + Sync>;

struct ClassSearcher(Matches);
struct ClassApplier(Expand);

impl Searcher<TNode, Types> for ClassSearcher {
    fn search_eclass_with_limit(
        &self,
        egraph: &TEGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, TNode>> {
        (limit > 0 && (self.0)(egraph, eclass)).then(|| SearchMatches {
            eclass,
            substs: vec![Subst::default()],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl Applier<TNode, Types> for ClassApplier {
    fn apply_one(
        &self,
        egraph: &mut TEGraph,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<TNode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let equivalents = (self.0)(egraph, eclass);
        equivalents
            .into_iter()
            .filter(|&id| egraph.union(eclass, id))
            .map(|_| eclass)
            .collect()
    }
}

/// A rule that, for every class where `matches` holds, adds the terms `expand` builds and unions
/// them with the class.
pub(super) fn class_rule(
    name: &str,
    matches: impl Fn(&TEGraph, Id) -> bool + Send + Sync + 'static,
    expand: impl Fn(&mut TEGraph, Id) -> Vec<Id> + Send + Sync + 'static,
) -> Rule {
    Rewrite::new(
        name,
        ClassSearcher(Box::new(matches)),
        ClassApplier(Box::new(expand)),
    )
    .expect("class rules bind no variables")
}

/// The tensor-input children of a fused or kernel node (after its attribute prefix).
pub(super) fn args(node: &TNode) -> &[Id] {
    let k = crate::saturate::ops::attr_prefix(node);
    match node {
        TNode::Fused(c) | TNode::Kernel(c) => &c[k..],
        _ => &[],
    }
}
