//! Extraction: the cheapest program the e-graph holds, counting a shared value once.
//!
//! egg's tree extractor charges a node once per use, so a merged Q/K/V matmul feeding three
//! consumers would look three times as expensive as it is. This is the greedy DAG extraction of
//! the extraction-gym literature: each class's best choice carries the set of classes its program
//! needs, and a candidate's cost is the sum over the union of its children's sets.

use super::analysis::TEGraph;
use super::lang::TNode;
use egg::{Id, Language};
use std::collections::HashMap;
use std::rc::Rc;

/// The chosen node of every class the roots need.
#[derive(Debug)]
pub struct Extraction {
    pub choice: HashMap<Id, TNode>,
    /// The chosen classes, every class after the classes it reads.
    pub order: Vec<Id>,
    /// Total cost of the program (each needed class once).
    pub cost: f64,
}

struct Best {
    node: TNode,
    /// Every class the choice needs (itself included), with that class's own node cost.
    needs: Rc<HashMap<Id, f64>>,
    total: f64,
}

/// Extracts the cheapest program for `roots`; `node_cost` prices a node by itself (infinite
/// where no kernel implements it). Fails, naming the class, if a root has no finite program.
pub fn extract(
    egraph: &TEGraph,
    roots: &[Id],
    node_cost: &dyn Fn(Id, &TNode) -> f64,
) -> Result<Extraction, String> {
    let mut best: HashMap<Id, Best> = HashMap::new();
    let mut changed = true;
    while changed {
        changed = false;
        for class in egraph.classes() {
            for node in &class.nodes {
                let own = node_cost(class.id, node);
                if !own.is_finite() {
                    continue;
                }
                let mut needs: HashMap<Id, f64> = HashMap::new();
                let mut complete = true;
                for child in node.children() {
                    match best.get(&egraph.find(*child)) {
                        Some(b) => needs.extend(b.needs.iter().map(|(k, v)| (*k, *v))),
                        None => {
                            complete = false;
                            break;
                        }
                    }
                }
                if !complete || needs.contains_key(&class.id) {
                    continue;
                }
                needs.insert(class.id, own);
                let total: f64 = needs.values().sum();
                let better = best
                    .get(&class.id)
                    .is_none_or(|b| total < b.total - 1e-15 * b.total.abs());
                if better {
                    best.insert(
                        class.id,
                        Best {
                            node: node.clone(),
                            needs: Rc::new(needs),
                            total,
                        },
                    );
                    changed = true;
                }
            }
        }
    }
    let mut extraction = Extraction {
        choice: HashMap::new(),
        order: Vec::new(),
        cost: 0.0,
    };
    for &root in roots {
        walk(
            egraph,
            &best,
            egraph.find(root),
            &mut Vec::new(),
            &mut extraction,
        )?;
    }
    Ok(extraction)
}

/// Collects the chosen nodes reachable from `id` (the current best of each class).
fn walk(
    egraph: &TEGraph,
    best: &HashMap<Id, Best>,
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
    let b = best.get(&id).ok_or_else(|| {
        let node = egraph[id]
            .nodes
            .first()
            .map(|n| n.to_string())
            .unwrap_or_default();
        format!("no kernel implements e-class {id} ({node} …)")
    })?;
    path.push(id);
    for child in b.node.children() {
        walk(egraph, best, egraph.find(*child), path, out)?;
    }
    path.pop();
    out.cost += b.needs[&id];
    out.choice.insert(id, b.node.clone());
    out.order.push(id);
    Ok(())
}
