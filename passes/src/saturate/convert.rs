//! Graph → e-graph: each Graph node becomes one e-node (through `op_node`), so saturation starts
//! from exactly the program it was given.

use super::analysis::TEGraph;
use super::lang::{Attr, TNode};
use super::ops::op_node;
use egg::{Id, Symbol};
use std::collections::HashMap;
use tessera_ir::{DType, Graph, NodeId, Op};

/// Adds every node of `graph` to `egraph` and returns the class of each node. Input and weight
/// types are declared in `egraph.analysis.leaves` by name, so graphs that share weights can be
/// added to one e-graph. E-graph constants are f32 scalars: a constant of another dtype becomes
/// a cast of one (the same value wherever f32 holds it exactly).
pub fn graph_to_egraph(graph: &Graph, egraph: &mut TEGraph) -> HashMap<NodeId, Id> {
    let mut ids: HashMap<NodeId, Id> = HashMap::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Op::Input { name } | Op::Weight { name } = &node.op {
            egraph
                .analysis
                .leaves
                .insert(Symbol::from(name), node.ty.clone());
        }
        let inputs: Vec<Id> = node.inputs.iter().map(|x| ids[x]).collect();
        let enode = op_node(&node.op, &inputs, &mut |n| egraph.add(n));
        let mut id = egraph.add(enode);
        if matches!(node.op, Op::Constant { .. }) && node.ty.dtype != DType::F32 {
            let to = egraph.add(TNode::Attr(Attr::DType(node.ty.dtype)));
            id = egraph.add(TNode::Cast([to, id]));
        }
        ids.insert(NodeId(i as u32), id);
    }
    ids
}
