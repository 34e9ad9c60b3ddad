//! Layer rolling: a transformer's blocks are structurally identical, so the Graph is cut into
//! segments (the part before the first block, one per block, the part after) and each distinct
//! segment is optimized once. Layer-specific names (`model.layers.7.mlp.up_proj.weight`,
//! `cache.7.k`) are rewritten with the placeholder [`LAYER`], so identical blocks have identical
//! segment graphs and the optimizer's time does not grow with depth.

use std::collections::BTreeMap;
use tessera_ir::{Graph, IrError, NodeId, Op};

/// What stands for the layer index in a rolled segment's names.
pub const LAYER: &str = "{L}";

/// A run of consecutive nodes of the Graph as a graph of its own.
pub struct Segment {
    /// The block index, for a transformer block.
    pub layer: Option<usize>,
    /// Leaves copied in (names rolled), values from other segments as inputs `in.{k}`, values
    /// needed later as outputs `out.{k}`.
    pub graph: Graph,
    /// The original node behind each `in.{k}`.
    pub externals: Vec<NodeId>,
    /// The original node behind each `out.{k}`.
    pub exports: Vec<NodeId>,
    /// The canonical text of `graph`: equal keys, equal optimization.
    pub key: String,
}

/// The block index a scope names (`model.layers.3.mlp` → 3, `transformer.h.11` → 11).
pub fn layer_of(scope: &str) -> Option<usize> {
    let parts: Vec<&str> = scope.split('.').collect();
    parts.windows(2).find_map(|w| match w[0] {
        "layers" | "h" | "blocks" | "layer" => w[1].parse().ok(),
        _ => None,
    })
}

/// Replaces the layer index component of a dotted name with [`LAYER`].
pub fn roll_name(name: &str, layer: usize) -> String {
    let index = layer.to_string();
    let parts: Vec<&str> = name.split('.').collect();
    let rolled: Vec<&str> = parts
        .iter()
        .map(|p| if *p == index { LAYER } else { p })
        .collect();
    rolled.join(".")
}

/// Puts the layer index back into a rolled name.
pub fn unroll_name(name: &str, layer: Option<usize>) -> String {
    match layer {
        Some(i) => name.replace(LAYER, &i.to_string()),
        None => name.to_string(),
    }
}

fn is_leaf(op: &Op) -> bool {
    matches!(
        op,
        Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. }
    )
}

/// Cuts `graph` into segments of consecutive non-leaf nodes with the same block index.
pub fn split(graph: &Graph) -> Result<Vec<Segment>, IrError> {
    let mut runs: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if is_leaf(&node.op) {
            continue;
        }
        let layer = layer_of(&node.scope);
        match runs.last_mut() {
            Some((l, nodes)) if *l == layer => nodes.push(i),
            _ => runs.push((layer, vec![i])),
        }
    }
    let mut segment_of = vec![usize::MAX; graph.nodes.len()];
    for (s, (_, nodes)) in runs.iter().enumerate() {
        for &n in nodes {
            segment_of[n] = s;
        }
    }
    let graph_outputs: Vec<usize> = graph.outputs.iter().map(|(_, id)| id.0 as usize).collect();
    let mut used_later = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        for x in &node.inputs {
            let x = x.0 as usize;
            if segment_of[x] != usize::MAX && segment_of[x] != segment_of[i] {
                used_later[x] = true;
            }
        }
    }
    runs.into_iter()
        .map(|(layer, nodes)| build(graph, layer, &nodes, &used_later, &graph_outputs))
        .collect()
}

fn build(
    graph: &Graph,
    layer: Option<usize>,
    nodes: &[usize],
    used_later: &[bool],
    graph_outputs: &[usize],
) -> Result<Segment, IrError> {
    let roll = |name: &str| match layer {
        Some(i) => roll_name(name, i),
        None => name.to_string(),
    };
    let mut g = Graph::new();
    let mut map: BTreeMap<usize, NodeId> = BTreeMap::new();
    let mut externals = Vec::new();
    for &n in nodes {
        let node = &graph.nodes[n];
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for x in &node.inputs {
            let xi = x.0 as usize;
            if let Some(id) = map.get(&xi) {
                inputs.push(*id);
                continue;
            }
            let src = &graph.nodes[xi];
            let id = match &src.op {
                Op::Input { name } => g.input(&roll(name), src.ty.dtype, src.ty.shape.clone()),
                Op::Weight { name } => {
                    let dims: Option<Vec<usize>> = src
                        .ty
                        .shape
                        .iter()
                        .map(|d| d.as_const().map(|v| v as usize))
                        .collect();
                    let dims = dims.ok_or_else(|| {
                        IrError::Invalid(format!("weight `{name}` has a symbolic shape"))
                    })?;
                    g.weight(&roll(name), src.ty.dtype, &dims)
                }
                Op::Constant { value } => g.constant(*value, src.ty.dtype),
                _ => {
                    externals.push(*x);
                    g.input(
                        &format!("in.{}", externals.len() - 1),
                        src.ty.dtype,
                        src.ty.shape.clone(),
                    )
                }
            };
            map.insert(xi, id);
            inputs.push(id);
        }
        let id = g.add(node.op.clone(), &inputs)?;
        map.insert(n, id);
    }
    let mut exports = Vec::new();
    for &n in nodes {
        if used_later[n] || graph_outputs.contains(&n) {
            g.output(&format!("out.{}", exports.len()), map[&n]);
            exports.push(NodeId(n as u32));
        }
    }
    let key = g.to_string();
    Ok(Segment {
        layer,
        graph: g,
        externals,
        exports,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roll_and_unroll() {
        assert_eq!(layer_of("model.layers.12.self_attn"), Some(12));
        assert_eq!(layer_of("transformer.h.3.mlp"), Some(3));
        assert_eq!(layer_of("model.norm"), None);
        let rolled = roll_name("model.layers.12.mlp.up_proj.weight", 12);
        assert_eq!(rolled, "model.layers.{L}.mlp.up_proj.weight");
        assert_eq!(
            unroll_name(&rolled, Some(4)),
            "model.layers.4.mlp.up_proj.weight"
        );
        assert_eq!(roll_name("cache.12.k", 12), "cache.{L}.k");
    }
}
