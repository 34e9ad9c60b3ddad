//! Extraction: the cheapest program the e-graph holds, counting a shared value once.
//!
//! egg's tree extractor charges a node once per use, so a merged Q/K/V matmul feeding three
//! consumers would look three times as expensive as it is. This is the greedy DAG extraction of
//! the extraction-gym literature — each class's best choice carries the set of classes its
//! program needs, and a candidate costs the sum over the union of its children's sets — plus a
//! refinement greedy alone cannot find: a class that several consumers could share (a merged
//! projection) is tried as already paid for, and kept when the whole program gets cheaper.

use super::analysis::TEGraph;
use super::lang::TNode;
use egg::{Id, Language};
use std::collections::{HashMap, HashSet};

/// Rounds of refinement at most (each adds one shared class).
const REFINE_ROUNDS: usize = 3;
/// A refinement must save at least this much (a nanosecond: below any launch overhead).
const MIN_GAIN_SECONDS: f64 = 1e-9;

/// The chosen node of every class the roots need.
#[derive(Debug)]
pub struct Extraction {
    pub choice: HashMap<Id, TNode>,
    /// The chosen classes, every class after the classes it reads.
    pub order: Vec<Id>,
    /// Total cost of the program (each needed class once).
    pub cost: f64,
}

/// A set of classes by dense index.
#[derive(Clone, PartialEq)]
struct Set(Vec<u64>);

impl Set {
    fn new(n: usize) -> Set {
        Set(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn union(&mut self, other: &Set) {
        self.0.iter_mut().zip(&other.0).for_each(|(a, b)| *a |= b);
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

struct Best {
    node: TNode,
    own: f64,
    needs: Set,
    total: f64,
}

/// A priced node with its children's dense indices.
struct Candidate {
    node: TNode,
    own: f64,
    children: Vec<usize>,
}

/// Classes by dense index and each node's own cost, computed once.
struct Problem<'a> {
    egraph: &'a TEGraph,
    index: HashMap<Id, usize>,
    nodes: Vec<Vec<Candidate>>,
}

impl<'a> Problem<'a> {
    fn new(egraph: &'a TEGraph, node_cost: &dyn Fn(Id, &TNode) -> f64) -> Problem<'a> {
        let ids: Vec<Id> = egraph.classes().map(|c| c.id).collect();
        let index: HashMap<Id, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                egraph[id]
                    .nodes
                    .iter()
                    .map(|n| Candidate {
                        node: n.clone(),
                        own: node_cost(id, n),
                        children: n
                            .children()
                            .iter()
                            .map(|c| index[&egraph.find(*c)])
                            .collect(),
                    })
                    .filter(|c| c.own.is_finite())
                    .collect()
            })
            .collect();
        Problem {
            egraph,
            index,
            nodes,
        }
    }

    /// Greedy DAG extraction with the classes in `prepaid` counted as free.
    fn greedy(&self, prepaid: &Set) -> Vec<Option<Best>> {
        let n = self.nodes.len();
        let mut best: Vec<Option<Best>> = (0..n).map(|_| None).collect();
        let mut changed = true;
        while changed {
            changed = false;
            for class in 0..n {
                for Candidate {
                    node,
                    own,
                    children,
                } in &self.nodes[class]
                {
                    let mut needs = Set::new(n);
                    let complete = children.iter().all(|&c| match &best[c] {
                        Some(b) => {
                            needs.union(&b.needs);
                            true
                        }
                        None => false,
                    });
                    if !complete || needs.contains(class) {
                        continue;
                    }
                    needs.insert(class);
                    // A prepaid class is free to its readers, but still picks its own cheapest node.
                    let price = |i: usize| match (i == class, prepaid.contains(i)) {
                        (true, _) => *own,
                        (false, true) => 0.0,
                        (false, false) => best[i].as_ref().map_or(0.0, |b| b.own),
                    };
                    let total: f64 = needs.iter().map(price).sum();
                    if best[class]
                        .as_ref()
                        .is_none_or(|b| total < b.total * (1.0 - 1e-12))
                    {
                        best[class] = Some(Best {
                            node: node.clone(),
                            own: *own,
                            needs,
                            total,
                        });
                        changed = true;
                    }
                }
            }
        }
        best
    }

    /// The program the choices in `best` give for `roots`, with its actual cost.
    fn program(&self, best: &[Option<Best>], roots: &[Id]) -> Result<Extraction, String> {
        let mut out = Extraction {
            choice: HashMap::new(),
            order: Vec::new(),
            cost: 0.0,
        };
        for &root in roots {
            self.walk(best, self.egraph.find(root), &mut Vec::new(), &mut out)?;
        }
        Ok(out)
    }

    fn walk(
        &self,
        best: &[Option<Best>],
        id: Id,
        path: &mut Vec<Id>,
        out: &mut Extraction,
    ) -> Result<(), String> {
        if out.choice.contains_key(&id) {
            return Ok(());
        }
        if path.contains(&id) {
            return Err(format!("extraction found a cycle through e-class {id}"));
        }
        let b = best[self.index[&id]].as_ref().ok_or_else(|| {
            let node = self.egraph[id]
                .nodes
                .first()
                .map(|n| n.to_string())
                .unwrap_or_default();
            format!("no kernel implements e-class {id} ({node} …)")
        })?;
        path.push(id);
        for child in b.node.children() {
            self.walk(best, self.egraph.find(*child), path, out)?;
        }
        path.pop();
        out.cost += b.own;
        out.choice.insert(id, b.node.clone());
        out.order.push(id);
        Ok(())
    }

    /// Classes worth trying as shared: matmul results (merged projections are what several
    /// consumers share) that nodes of at least two other classes read.
    fn shareable(&self) -> Vec<usize> {
        let mut readers: Vec<HashSet<usize>> = vec![HashSet::new(); self.nodes.len()];
        for (class, nodes) in self.nodes.iter().enumerate() {
            for c in nodes.iter().flat_map(|n| &n.children) {
                readers[*c].insert(class);
            }
        }
        let matmul = |id: Id| {
            self.egraph[id]
                .nodes
                .iter()
                .any(|n| matches!(n, TNode::MatMul(_) | TNode::QuantMatMul(_)))
        };
        self.egraph
            .classes()
            .enumerate()
            .filter(|(i, c)| readers[*i].len() >= 2 && matmul(c.id))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Extracts the cheapest program for `roots`; `node_cost` prices a node by itself (infinite
/// where no kernel implements it). Fails, naming the class, if a root has no finite program.
pub fn extract(
    egraph: &TEGraph,
    roots: &[Id],
    node_cost: &dyn Fn(Id, &TNode) -> f64,
) -> Result<Extraction, String> {
    let problem = Problem::new(egraph, node_cost);
    let mut prepaid = Set::new(problem.nodes.len());
    let mut best = problem.program(&problem.greedy(&prepaid), roots)?;
    let candidates = problem.shareable();
    // Best improvement per round: accepting the first small gain would make its class look free
    // to later trials and hide a larger merge that needs a different path.
    for _ in 0..REFINE_ROUNDS {
        let mut round: Option<(Set, Extraction)> = None;
        for &candidate in &candidates {
            if prepaid.contains(candidate) {
                continue;
            }
            let mut trial = prepaid.clone();
            trial.insert(candidate);
            let Ok(program) = problem.program(&problem.greedy(&trial), roots) else {
                continue;
            };
            let floor = round
                .as_ref()
                .map_or(best.cost - MIN_GAIN_SECONDS, |(_, p)| p.cost);
            if program.cost < floor {
                round = Some((trial, program));
            }
        }
        match round {
            Some((trial, program)) => {
                prepaid = trial;
                best = program;
            }
            None => break,
        }
    }
    Ok(best)
}
