//! Fusion: ops become `fused` bodies, and a producer's body is inlined into its consumer's when
//! one kernel template can run the result — elementwise and layout prologues, an elementwise
//! epilogue after one anchor op (matmul, attention, norm, …), a norm as a matmul's prologue.
//! The producer's class keeps its own representation, so extraction decides (with sharing
//! counted once) whether fusing, and so recomputing, pays.

use super::class_rule::{args, class_rule};
use super::Rule;
use crate::saturate::analysis::TEGraph;
use crate::saturate::lang::{Attr, Body, TNode};
use crate::saturate::ops::node_op;
use egg::Id;
use tessera_ir::kernel::{BodyArg, BodyOp};
use tessera_ir::Op;

/// Largest body fusion may build, and most inputs: bounds the e-graph's growth.
const MAX_BODY_OPS: usize = 16;
const MAX_BODY_INPUTS: usize = 8;

pub(super) fn rules() -> Vec<Rule> {
    vec![
        class_rule("lift-to-fused", has_liftable, lift),
        class_rule("fuse-producer", has_fused, fuse),
    ]
}

/// Ops a kernel is built around; everything else is elementwise or data movement.
pub(crate) fn is_anchor(op: &Op) -> bool {
    matches!(
        op,
        Op::MatMul { .. }
            | Op::QuantMatMul { .. }
            | Op::Attention { .. }
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Softmax
            | Op::Reduce { .. }
            | Op::Gather
            | Op::KvAppend
            | Op::Dequantize
    )
}

fn attr_of(egraph: &TEGraph) -> impl Fn(Id) -> Option<Attr> + '_ {
    |id| egraph[id].data.attr().cloned()
}

/// The scalar value of a class that holds a constant.
fn constant(egraph: &TEGraph, id: Id) -> Option<f64> {
    egraph[id].nodes.iter().find_map(|n| match n {
        TNode::Const([v]) => match egraph[*v].data.attr() {
            Some(Attr::Float(b)) => Some(b.get()),
            _ => None,
        },
        _ => None,
    })
}

/// The op a node's kernel would be built from, unless it is a leaf or a matmul over a
/// dequantized weight: the latter's class also holds the `quant_matmul` that reads the weight
/// quantized (recognition), which is lifted instead — exploring both would double the fused
/// variants of every projection for kernels that read the weight as f32 from memory.
fn liftable(egraph: &TEGraph, node: &TNode) -> Option<(Op, Vec<Id>)> {
    match node_op(node, &attr_of(egraph))? {
        (Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. }, _) => None,
        (Op::MatMul { .. }, inputs)
            if egraph[inputs[1]]
                .nodes
                .iter()
                .any(|n| matches!(n, TNode::Dequantize(_))) =>
        {
            None
        }
        lifted => Some(lifted),
    }
}

fn has_liftable(egraph: &TEGraph, id: Id) -> bool {
    !egraph[id].data.weight_only()
        && egraph[id]
            .nodes
            .iter()
            .any(|n| liftable(egraph, n).is_some())
}

/// `(op args…)` → `(fused [op] args…)`, with constant arguments inlined into the body.
fn lift(egraph: &mut TEGraph, id: Id) -> Vec<Id> {
    let lifted: Vec<(Op, Vec<Id>)> = egraph[id]
        .nodes
        .iter()
        .filter_map(|n| liftable(egraph, n))
        .collect();
    lifted
        .into_iter()
        .map(|(op, inputs)| {
            let mut body = Vec::new();
            let mut args = Vec::new();
            let mut refs = Vec::new();
            for c in inputs {
                match constant(egraph, c) {
                    Some(value) => {
                        body.push(BodyOp {
                            op: Op::Constant { value },
                            args: vec![],
                        });
                        refs.push(BodyArg::Op(body.len() - 1));
                    }
                    None => refs.push(BodyArg::Input(position(&mut args, c))),
                }
            }
            body.push(BodyOp { op, args: refs });
            add_fused(egraph, body, &args)
        })
        .collect()
}

/// Index of `id` in `args`, appending it if new (bodies read each distinct class once).
fn position(args: &mut Vec<Id>, id: Id) -> usize {
    args.iter().position(|&a| a == id).unwrap_or_else(|| {
        args.push(id);
        args.len() - 1
    })
}

fn add_fused(egraph: &mut TEGraph, body: Vec<BodyOp>, args: &[Id]) -> Id {
    let body = egraph.add(TNode::Attr(Attr::Body(Body::new(body))));
    let mut children = vec![body];
    children.extend_from_slice(args);
    egraph.add(TNode::Fused(children.into()))
}

fn fused_parts(egraph: &TEGraph, node: &TNode) -> Option<(Body, Vec<Id>)> {
    match node {
        TNode::Fused(children) => match egraph[children[0]].data.attr()? {
            Attr::Body(b) => Some((b.clone(), args(node).to_vec())),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn has_fused(egraph: &TEGraph, id: Id) -> bool {
    egraph[id]
        .nodes
        .iter()
        .any(|n| matches!(n, TNode::Fused(_)))
}

/// For every fused node of the class and every argument produced by a fused node, the merged
/// body when a template can run it.
fn fuse(egraph: &mut TEGraph, id: Id) -> Vec<Id> {
    let consumers: Vec<(Body, Vec<Id>)> = egraph[id]
        .nodes
        .iter()
        .filter_map(|n| fused_parts(egraph, n))
        .collect();
    let mut merged = Vec::new();
    for (body, args) in &consumers {
        for (j, &arg) in args.iter().enumerate() {
            let producers: Vec<(Body, Vec<Id>)> = egraph[arg]
                .nodes
                .iter()
                .filter_map(|n| fused_parts(egraph, n))
                .collect();
            for (p_body, p_args) in producers {
                merged.extend(inline(&body.ops, args, j, &p_body.ops, &p_args));
            }
        }
    }
    merged
        .into_iter()
        .map(|(ops, new_args)| add_fused(egraph, ops, &new_args))
        .collect()
}

/// Inlines the producer body (over `p_args`) into the consumer body at its input `j`, if legal.
fn inline(
    consumer: &[BodyOp],
    c_args: &[Id],
    j: usize,
    producer: &[BodyOp],
    p_args: &[Id],
) -> Option<(Vec<BodyOp>, Vec<Id>)> {
    if consumer.len() + producer.len() > MAX_BODY_OPS || !legal(consumer, j, producer) {
        return None;
    }
    let mut args = Vec::new();
    let c_map: Vec<Option<usize>> = c_args
        .iter()
        .enumerate()
        .map(|(i, &a)| (i != j).then(|| position(&mut args, a)))
        .collect();
    let p_map: Vec<usize> = p_args.iter().map(|&a| position(&mut args, a)).collect();
    if args.len() > MAX_BODY_INPUTS {
        return None;
    }
    let produced = producer.len() - 1;
    let remap = |b: &BodyOp, f: &dyn Fn(BodyArg) -> BodyArg| BodyOp {
        op: b.op.clone(),
        args: b.args.iter().map(|&a| f(a)).collect(),
    };
    let mut ops: Vec<BodyOp> = producer
        .iter()
        .map(|b| {
            remap(b, &|a| match a {
                BodyArg::Input(i) => BodyArg::Input(p_map[i]),
                other => other,
            })
        })
        .collect();
    for b in consumer {
        ops.push(remap(b, &|a| match a {
            BodyArg::Input(i) if i == j => BodyArg::Op(produced),
            BodyArg::Input(i) => BodyArg::Input(c_map[i].expect("only input j is unmapped")),
            BodyArg::Op(o) => BodyArg::Op(o + producer.len()),
        }));
    }
    Some((ops, args))
}

/// Whether one template can run the producer inlined into the consumer at input `j`.
fn legal(consumer: &[BodyOp], j: usize, producer: &[BodyOp]) -> bool {
    let anchors = |ops: &[BodyOp]| {
        ops.iter()
            .filter(|b| is_anchor(&b.op))
            .map(|b| b.op.clone())
            .collect::<Vec<_>>()
    };
    match (anchors(producer).as_slice(), anchors(consumer).as_slice()) {
        // Elementwise and layout work folds into whatever reads it (a prologue).
        ([], _) => true,
        // An elementwise consumer becomes the producer's epilogue.
        ([_], []) => true,
        // A norm becomes the prologue of the matmul whose left operand it feeds.
        (
            [Op::RmsNorm { .. } | Op::LayerNorm { .. }],
            [Op::MatMul { .. } | Op::QuantMatMul { .. }],
        ) => consumer.iter().any(|b| {
            matches!(b.op, Op::MatMul { .. } | Op::QuantMatMul { .. })
                && feeds(consumer, b.args[0], j)
        }),
        _ => false,
    }
}

/// Whether `arg` is input `j` reached through non-anchor ops only (a prologue chain).
fn feeds(body: &[BodyOp], arg: BodyArg, j: usize) -> bool {
    match arg {
        BodyArg::Input(i) => i == j,
        BodyArg::Op(o) => {
            let b = &body[o];
            !is_anchor(&b.op) && b.args.iter().any(|&a| feeds(body, a, j))
        }
    }
}
