//! Reading one term out of an e-class as an `ir::Graph`: one e-node is chosen per class (per
//! depth), depth-bounded so the cycles rewrites create (`x = x·1`) always end; `fused` and
//! `kernel` nodes are inlined as their body ops over their arguments.

use crate::saturate::analysis::TEGraph;
use crate::saturate::lang::{Attr, TNode};
use crate::saturate::ops::{attr_prefix, node_op};
use egg::{Id, Language};
use std::collections::{HashMap, HashSet};
use tessera_ir::kernel::BodyArg;
use tessera_ir::{DType, Graph, NodeId, Op};

/// How to choose a class's e-node.
#[derive(Clone, Copy, Debug)]
pub(super) enum Pick {
    /// The node of least height: what a size-minimizing extraction would take.
    Shallowest,
    /// A node the rule added, where the class has one; otherwise random.
    Fresh(u64),
    /// Uniformly at random (seeded).
    Random(u64),
}

/// Slack above the root's least height: how much deeper than necessary a random term may go.
const SLACK: usize = 4;

/// Terms of one e-graph (`fresh`: the nodes a rule added), read out as graphs.
pub(super) struct Terms<'a> {
    egraph: &'a TEGraph,
    heights: HashMap<Id, usize>,
    fresh: &'a HashSet<TNode>,
}

impl<'a> Terms<'a> {
    pub(super) fn new(egraph: &'a TEGraph, fresh: &'a HashSet<TNode>) -> Terms<'a> {
        Terms {
            egraph,
            heights: heights(egraph),
            fresh,
        }
    }

    /// The term of `root` chosen by `pick`, as a graph with output `out`.
    pub(super) fn term_to_graph(&self, root: Id, pick: Pick) -> Result<Graph, String> {
        let root = self.egraph.find(root);
        let budget = self
            .heights
            .get(&root)
            .ok_or_else(|| format!("class {root} has no finite term"))?
            + SLACK;
        let seed = match pick {
            Pick::Shallowest => 1,
            Pick::Fresh(s) | Pick::Random(s) => s,
        };
        let mut sampler = Sampler {
            terms: self,
            pick,
            rng: seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1,
            graph: Graph::new(),
            memo: HashMap::new(),
            leaves: HashMap::new(),
        };
        let out = sampler.term(root, budget)?;
        let mut graph = sampler.graph;
        graph.output("out", out);
        Ok(graph)
    }
}

/// Each class's least height (leaves 0); classes without a finite term are absent.
fn heights(egraph: &TEGraph) -> HashMap<Id, usize> {
    let mut heights = HashMap::new();
    loop {
        let mut changed = false;
        for class in egraph.classes() {
            for node in &class.nodes {
                if let Some(h) = node_height(egraph, &heights, node) {
                    if heights.get(&class.id).is_none_or(|&old| h < old) {
                        heights.insert(class.id, h);
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            return heights;
        }
    }
}

fn node_height(egraph: &TEGraph, heights: &HashMap<Id, usize>, node: &TNode) -> Option<usize> {
    node.children().iter().try_fold(0, |h, &c| {
        heights.get(&egraph.find(c)).map(|&ch| h.max(ch + 1))
    })
}

/// The state of reading one term.
struct Sampler<'a> {
    terms: &'a Terms<'a>,
    pick: Pick,
    rng: u64,
    graph: Graph,
    /// The term built for (class, depth budget).
    memo: HashMap<(Id, usize), NodeId>,
    /// Inputs and weights by name: each appears once.
    leaves: HashMap<String, NodeId>,
}

impl<'a> Sampler<'a> {
    fn random(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    /// A term of `class` no deeper than `budget`.
    fn term(&mut self, class: Id, budget: usize) -> Result<NodeId, String> {
        let class = self.terms.egraph.find(class);
        if let Some(&id) = self.memo.get(&(class, budget)) {
            return Ok(id);
        }
        let fits = |n: &&TNode| {
            !matches!(n, TNode::Attr(_))
                && node_height(self.terms.egraph, &self.terms.heights, n)
                    .is_some_and(|h| h <= budget)
        };
        let candidates: Vec<&TNode> = self.terms.egraph[class].nodes.iter().filter(fits).collect();
        if candidates.is_empty() {
            return Err(format!(
                "class {class} has no tensor term within depth {budget}"
            ));
        }
        let node = match self.pick {
            Pick::Shallowest => {
                let height = |n: &&&TNode| node_height(self.terms.egraph, &self.terms.heights, n);
                candidates.iter().min_by_key(height).copied()
            }
            Pick::Fresh(_) => {
                let new: Vec<&TNode> = candidates
                    .iter()
                    .copied()
                    .filter(|n| self.terms.fresh.contains(*n))
                    .collect();
                let pool = if new.is_empty() { &candidates } else { &new };
                pool.get(self.random(pool.len())).copied()
            }
            Pick::Random(_) => candidates.get(self.random(candidates.len())).copied(),
        };
        let node = node.expect("candidates are not empty").clone();
        let id = self.build(class, &node, budget)?;
        let want = self.terms.egraph[class].data.ty();
        if want != Some(self.graph.ty(id)) {
            return Err(format!(
                "{node} gives {} in a class of {want:?}",
                self.graph.ty(id)
            ));
        }
        self.memo.insert((class, budget), id);
        Ok(id)
    }

    fn attr(&self, id: Id) -> Option<Attr> {
        self.terms.egraph[id].data.attr().cloned()
    }

    /// Adds `node` of `class` (its tensor children as terms within `budget - 1`) to the graph.
    fn build(&mut self, class: Id, node: &TNode, budget: usize) -> Result<NodeId, String> {
        let fail = |e: tessera_ir::IrError| format!("{node}: {e}");
        if let TNode::Fused(children) | TNode::Kernel(children) = node {
            let k = attr_prefix(node);
            let Some(Attr::Body(body)) = self.attr(children[k - 1]) else {
                return Err(format!("{node} has no body"));
            };
            let args = children[k..]
                .iter()
                .map(|&c| self.term(c, budget - 1))
                .collect::<Result<Vec<_>, _>>()?;
            let mut results: Vec<NodeId> = Vec::with_capacity(body.ops.len());
            for step in body.ops.iter() {
                let inputs: Vec<NodeId> = step
                    .args
                    .iter()
                    .map(|a| match *a {
                        BodyArg::Input(i) => args.get(i).copied(),
                        BodyArg::Op(o) => results.get(o).copied(),
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| format!("{node}: a body argument is out of range"))?;
                results.push(match &step.op {
                    Op::Constant { value } => self.graph.constant(*value, DType::F32),
                    op => self.graph.add(op.clone(), &inputs).map_err(fail)?,
                });
            }
            return results
                .last()
                .copied()
                .ok_or_else(|| format!("{node} has an empty body"));
        }
        let (op, inputs) =
            node_op(node, &|id| self.attr(id)).ok_or_else(|| format!("{node} is not an op"))?;
        let ty = self.terms.egraph[class]
            .data
            .ty()
            .ok_or_else(|| format!("class {class} is not a tensor"))?
            .clone();
        match op {
            Op::Input { name } | Op::Weight { name } if self.leaves.contains_key(&name) => {
                Ok(self.leaves[&name])
            }
            Op::Input { name } => {
                let id = self.graph.input(&name, ty.dtype, ty.shape);
                Ok(*self.leaves.entry(name).or_insert(id))
            }
            Op::Weight { name } => {
                let dims: Option<Vec<usize>> = ty
                    .shape
                    .iter()
                    .map(|d| d.as_const().map(|v| v as usize))
                    .collect();
                let id = self.graph.weight(
                    &name,
                    ty.dtype,
                    &dims.ok_or_else(|| format!("weight `{name}` is symbolic"))?,
                );
                Ok(*self.leaves.entry(name).or_insert(id))
            }
            Op::Constant { value } => Ok(self.graph.constant(value, DType::F32)),
            op => {
                let args = inputs
                    .iter()
                    .map(|&c| self.term(c, budget - 1))
                    .collect::<Result<Vec<_>, _>>()?;
                self.graph.add(op, &args).map_err(fail)
            }
        }
    }
}
