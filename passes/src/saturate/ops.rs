//! The bridge between `ir::Op` and e-nodes: an op becomes one e-node whose attribute children are
//! [`Attr`] leaves, and an e-node (given its children's attributes) becomes an op again.

use super::lang::{Attr, Bits, TNode};
use egg::{Id, Symbol};
use tessera_ir::Op;

/// Builds the e-node for `op` over `inputs`, adding its attribute leaves through `add`.
pub fn op_node(op: &Op, inputs: &[Id], add: &mut dyn FnMut(TNode) -> Id) -> TNode {
    let mut attr = |a: Attr| add(TNode::Attr(a));
    let i = |k: usize| inputs[k];
    match op {
        Op::Input { name } => TNode::Input([attr(Attr::Name(Symbol::from(name)))]),
        Op::Weight { name } => TNode::Weight([attr(Attr::Name(Symbol::from(name)))]),
        Op::Constant { value } => TNode::Const([attr(Attr::Float(Bits::new(*value)))]),
        Op::Unary(u) => TNode::Unary([attr(Attr::Unary(*u)), i(0)]),
        Op::Binary(b) => TNode::Binary([attr(Attr::Binary(*b)), i(0), i(1)]),
        Op::Select => TNode::Select([i(0), i(1), i(2)]),
        Op::Cast { to } => TNode::Cast([attr(Attr::DType(*to)), i(0)]),
        Op::Reduce {
            op,
            axes,
            keep_dims,
        } => TNode::Reduce([
            attr(Attr::Reduce(*op)),
            attr(Attr::Axes(axes.clone())),
            attr(Attr::Bool(*keep_dims)),
            i(0),
        ]),
        Op::Reshape { shape } => TNode::Reshape([attr(Attr::Dims(shape.clone())), i(0)]),
        Op::Permute { perm } => TNode::Permute([attr(Attr::Axes(perm.clone())), i(0)]),
        Op::Expand { shape } => TNode::Expand([attr(Attr::Dims(shape.clone())), i(0)]),
        Op::Slice { axis, start, end } => TNode::Slice([
            attr(Attr::Int(*axis as i64)),
            attr(Attr::Dim(start.clone())),
            attr(Attr::Dim(end.clone())),
            i(0),
        ]),
        Op::Concat { axis } => {
            let mut children = vec![attr(Attr::Int(*axis as i64))];
            children.extend_from_slice(inputs);
            TNode::Concat(children.into())
        }
        Op::Gather => TNode::Gather([i(0), i(1)]),
        Op::MatMul { transpose_b } => TNode::MatMul([attr(Attr::Bool(*transpose_b)), i(0), i(1)]),
        Op::Softmax => TNode::Softmax([i(0)]),
        Op::RmsNorm { eps } => {
            TNode::RmsNorm([attr(Attr::Float(Bits::new(*eps as f64))), i(0), i(1)])
        }
        Op::LayerNorm { eps } => {
            TNode::LayerNorm([attr(Attr::Float(Bits::new(*eps as f64))), i(0), i(1), i(2)])
        }
        Op::Rope { layout } => TNode::Rope([attr(Attr::Layout(*layout)), i(0), i(1), i(2)]),
        Op::Attention {
            scale,
            causal,
            window,
        } => {
            let (s, c, w) = (
                attr(Attr::Float(Bits::new(*scale as f64))),
                attr(Attr::Bool(*causal)),
                attr(Attr::Window(*window)),
            );
            match inputs {
                [q, k, v, mask] => TNode::AttentionMasked([s, c, w, *q, *k, *v, *mask]),
                _ => TNode::Attention([s, c, w, i(0), i(1), i(2)]),
            }
        }
        Op::Dequantize => TNode::Dequantize([i(0)]),
        Op::QuantMatMul { transpose_b } => {
            TNode::QuantMatMul([attr(Attr::Bool(*transpose_b)), i(0), i(1)])
        }
        Op::KvAppend => TNode::KvAppend([i(0), i(1)]),
    }
}

/// How many leading children of a fused or kernel node are attributes (KIND and/or BODY).
pub fn attr_prefix(node: &TNode) -> usize {
    match node {
        TNode::Fused(_) => 1,
        TNode::Kernel(_) => 2,
        _ => 0,
    }
}

/// The op an e-node stands for and the ids of its tensor inputs; `attr` reads a child's attribute.
/// `None` for attribute leaves, fused and kernel nodes, and malformed attribute children.
pub fn node_op(node: &TNode, attr: &dyn Fn(Id) -> Option<Attr>) -> Option<(Op, Vec<Id>)> {
    let float = |id: Id| match attr(id)? {
        Attr::Float(b) => Some(b.get()),
        _ => None,
    };
    let boolean = |id: Id| match attr(id)? {
        Attr::Bool(b) => Some(b),
        _ => None,
    };
    let int = |id: Id| match attr(id)? {
        Attr::Int(v) => usize::try_from(v).ok(),
        _ => None,
    };
    let name = |id: Id| match attr(id)? {
        Attr::Name(s) => Some(s.to_string()),
        _ => None,
    };
    let dims = |id: Id| match attr(id)? {
        Attr::Dims(d) => Some(d),
        _ => None,
    };
    let axes = |id: Id| match attr(id)? {
        Attr::Axes(a) => Some(a),
        _ => None,
    };
    let dim = |id: Id| match attr(id)? {
        Attr::Dim(d) => Some(d),
        _ => None,
    };
    Some(match node {
        TNode::Input([n]) => (Op::Input { name: name(*n)? }, vec![]),
        TNode::Weight([n]) => (Op::Weight { name: name(*n)? }, vec![]),
        TNode::Const([v]) => (Op::Constant { value: float(*v)? }, vec![]),
        TNode::Unary([u, x]) => match attr(*u)? {
            Attr::Unary(u) => (Op::Unary(u), vec![*x]),
            _ => return None,
        },
        TNode::Binary([b, x, y]) => match attr(*b)? {
            Attr::Binary(b) => (Op::Binary(b), vec![*x, *y]),
            _ => return None,
        },
        TNode::Select([c, x, y]) => (Op::Select, vec![*c, *x, *y]),
        TNode::Cast([t, x]) => match attr(*t)? {
            Attr::DType(to) => (Op::Cast { to }, vec![*x]),
            _ => return None,
        },
        TNode::Reduce([r, a, k, x]) => match attr(*r)? {
            Attr::Reduce(op) => (
                Op::Reduce {
                    op,
                    axes: axes(*a)?,
                    keep_dims: boolean(*k)?,
                },
                vec![*x],
            ),
            _ => return None,
        },
        TNode::Reshape([s, x]) => (Op::Reshape { shape: dims(*s)? }, vec![*x]),
        TNode::Permute([p, x]) => (Op::Permute { perm: axes(*p)? }, vec![*x]),
        TNode::Expand([s, x]) => (Op::Expand { shape: dims(*s)? }, vec![*x]),
        TNode::Slice([a, s, e, x]) => (
            Op::Slice {
                axis: int(*a)?,
                start: dim(*s)?,
                end: dim(*e)?,
            },
            vec![*x],
        ),
        TNode::Concat(children) => {
            let (axis, xs) = children.split_first()?;
            (Op::Concat { axis: int(*axis)? }, xs.to_vec())
        }
        TNode::Gather([t, ids]) => (Op::Gather, vec![*t, *ids]),
        TNode::MatMul([tb, a, b]) => (
            Op::MatMul {
                transpose_b: boolean(*tb)?,
            },
            vec![*a, *b],
        ),
        TNode::Softmax([x]) => (Op::Softmax, vec![*x]),
        TNode::RmsNorm([e, x, w]) => (
            Op::RmsNorm {
                eps: float(*e)? as f32,
            },
            vec![*x, *w],
        ),
        TNode::LayerNorm([e, x, w, b]) => (
            Op::LayerNorm {
                eps: float(*e)? as f32,
            },
            vec![*x, *w, *b],
        ),
        TNode::Rope([l, x, p, f]) => match attr(*l)? {
            Attr::Layout(layout) => (Op::Rope { layout }, vec![*x, *p, *f]),
            _ => return None,
        },
        TNode::Attention([s, c, w, q, k, v]) => match attr(*w)? {
            Attr::Window(window) => (
                Op::Attention {
                    scale: float(*s)? as f32,
                    causal: boolean(*c)?,
                    window,
                },
                vec![*q, *k, *v],
            ),
            _ => return None,
        },
        TNode::AttentionMasked([s, c, w, q, k, v, mask]) => match attr(*w)? {
            Attr::Window(window) => (
                Op::Attention {
                    scale: float(*s)? as f32,
                    causal: boolean(*c)?,
                    window,
                },
                vec![*q, *k, *v, *mask],
            ),
            _ => return None,
        },
        TNode::Dequantize([w]) => (Op::Dequantize, vec![*w]),
        TNode::QuantMatMul([tb, a, b]) => (
            Op::QuantMatMul {
                transpose_b: boolean(*tb)?,
            },
            vec![*a, *b],
        ),
        TNode::KvAppend([c, n]) => (Op::KvAppend, vec![*c, *n]),
        TNode::Fused(_) | TNode::Kernel(_) | TNode::Attr(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use egg::RecExpr;
    use tessera_ir::{BinaryOp, DType, Dim, ReduceOp, RopeLayout, UnaryOp};

    #[test]
    fn every_op_round_trips() {
        let ops = vec![
            Op::Input { name: "x".into() },
            Op::Weight { name: "w".into() },
            Op::Constant { value: 0.5 },
            Op::Unary(UnaryOp::Silu),
            Op::Binary(BinaryOp::Mul),
            Op::Select,
            Op::Cast { to: DType::F16 },
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: vec![1, 2],
                keep_dims: true,
            },
            Op::Reshape {
                shape: vec![Dim::sym("seq"), Dim::c(4)],
            },
            Op::Permute {
                perm: vec![0, 2, 1, 3],
            },
            Op::Expand {
                shape: vec![Dim::c(2), Dim::sym("seq")],
            },
            Op::Slice {
                axis: 1,
                start: Dim::sym("seq") - Dim::c(1),
                end: Dim::sym("seq"),
            },
            Op::Concat { axis: 0 },
            Op::Gather,
            Op::MatMul { transpose_b: true },
            Op::Softmax,
            Op::RmsNorm { eps: 1e-6 },
            Op::LayerNorm { eps: 1e-5 },
            Op::Rope {
                layout: RopeLayout::Interleaved,
            },
            Op::Attention {
                scale: 0.125,
                causal: true,
                window: Some(8),
            },
            Op::Dequantize,
            Op::QuantMatMul { transpose_b: false },
            Op::KvAppend,
        ];
        for op in ops {
            let mut expr: RecExpr<TNode> = RecExpr::default();
            let x = expr.add(TNode::Attr(Attr::Int(0)));
            let inputs = [x, x, x];
            let node = op_node(&op, &inputs, &mut |n| expr.add(n));
            let attr = |id: Id| match &expr[id] {
                TNode::Attr(a) => Some(a.clone()),
                _ => None,
            };
            let (back, _) =
                node_op(&node, &attr).unwrap_or_else(|| panic!("{op:?} did not convert back"));
            assert_eq!(back, op);
        }
        // Attention with a mask (a fourth input) is its own node and keeps all four inputs.
        let mut expr: RecExpr<TNode> = RecExpr::default();
        let ids: Vec<Id> = (0..4)
            .map(|n| expr.add(TNode::Attr(Attr::Int(n))))
            .collect();
        let op = Op::Attention {
            scale: 0.5,
            causal: false,
            window: None,
        };
        let node = op_node(&op, &ids, &mut |n| expr.add(n));
        assert!(matches!(node, TNode::AttentionMasked(_)), "{node:?}");
        let attr = |id: Id| match &expr[id] {
            TNode::Attr(a) => Some(a.clone()),
            _ => None,
        };
        let (back, inputs) = node_op(&node, &attr).expect("masked attention converts back");
        assert_eq!((back, inputs), (op.clone(), ids.clone()));
        let node = op_node(&op, &ids[..3], &mut |n| expr.add(n));
        assert!(matches!(node, TNode::Attention(_)), "{node:?}");
    }
}
