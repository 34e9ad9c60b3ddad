//! The e-class analysis: every class knows its tensor type (shape and dtype, inferred by
//! `ir::infer` exactly as the Graph builder does) or its attribute value, and whether it depends
//! on weights only (then it is computed once at compile time and costs nothing at run time).

use super::lang::{Attr, TNode};
use super::ops::{attr_prefix, node_op};
use egg::{Analysis, DidMerge, EGraph, Id, Symbol};
use std::collections::HashMap;
use tessera_ir::kernel::{body_graph, BodyInput};
use tessera_ir::TensorType;

/// What the analysis knows about an e-class.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Attr(Attr),
    Tensor {
        ty: TensorType,
        weight_only: bool,
    },
    /// A node whose type could not be inferred: only an unsound rule produces one.
    Invalid(String),
}

impl Data {
    pub fn ty(&self) -> Option<&TensorType> {
        match self {
            Data::Tensor { ty, .. } => Some(ty),
            _ => None,
        }
    }

    pub fn attr(&self) -> Option<&Attr> {
        match self {
            Data::Attr(a) => Some(a),
            _ => None,
        }
    }

    pub fn weight_only(&self) -> bool {
        matches!(
            self,
            Data::Tensor {
                weight_only: true,
                ..
            }
        )
    }
}

/// Types of the leaves (inputs and weights by name); everything else is inferred.
#[derive(Default, Debug, Clone)]
pub struct Types {
    pub leaves: HashMap<Symbol, TensorType>,
}

pub type TEGraph = EGraph<TNode, Types>;

impl Analysis<TNode> for Types {
    type Data = Data;

    fn make(egraph: &mut TEGraph, enode: &TNode, _id: Id) -> Data {
        let data = |id: Id| &egraph[id].data;
        let attr = |id: Id| data(id).attr().cloned();
        let leaf = |id: Id, weight_only: bool| match attr(id) {
            Some(Attr::Name(name)) => match egraph.analysis.leaves.get(&name) {
                Some(ty) => Data::Tensor {
                    ty: ty.clone(),
                    weight_only,
                },
                None => Data::Invalid(format!("leaf `{name}` has no declared type")),
            },
            _ => Data::Invalid("leaf without a name".into()),
        };
        let tensor_children = |ids: &[Id]| -> Result<(Vec<TensorType>, bool), String> {
            let mut types = Vec::with_capacity(ids.len());
            let mut weight_only = true;
            for &c in ids {
                match data(c) {
                    Data::Tensor { ty, weight_only: w } => {
                        types.push(ty.clone());
                        weight_only &= *w;
                    }
                    other => return Err(format!("child {c} is not a tensor: {other:?}")),
                }
            }
            Ok((types, weight_only))
        };
        let result = match enode {
            TNode::Attr(a) => return Data::Attr(a.clone()),
            TNode::Input([n]) => return leaf(*n, false),
            TNode::Weight([n]) => return leaf(*n, true),
            // Constants are f32 scalars, like every activation.
            TNode::Const(_) => Ok((TensorType::new(tessera_ir::DType::F32, vec![]), true)),
            TNode::Fused(children) | TNode::Kernel(children) => {
                let k = attr_prefix(enode);
                match attr(children[k - 1]) {
                    Some(Attr::Body(body)) => {
                        tensor_children(&children[k..]).and_then(|(types, w)| {
                            let inputs: Vec<BodyInput> =
                                types.into_iter().map(BodyInput::Value).collect();
                            body_graph(&body.ops, &inputs)
                                .map(|(g, out)| (g.ty(out).clone(), w))
                                .map_err(|e| e.to_string())
                        })
                    }
                    _ => Err("fused/kernel node without a body".into()),
                }
            }
            node => match node_op(node, &attr) {
                Some((op, inputs)) => tensor_children(&inputs).and_then(|(types, w)| {
                    let refs: Vec<&TensorType> = types.iter().collect();
                    tessera_ir::infer(&op, &refs).map(|ty| (ty, w))
                }),
                None => Err(format!("malformed {node} node")),
            },
        };
        match result {
            Ok((ty, weight_only)) => Data::Tensor { ty, weight_only },
            Err(msg) => Data::Invalid(msg),
        }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        match (&*a, &b) {
            (x, y) if x == y => DidMerge(false, false),
            (Data::Invalid(_), Data::Tensor { .. }) => {
                *a = b;
                DidMerge(true, false)
            }
            (
                Data::Tensor { ty, weight_only },
                Data::Tensor {
                    ty: ty_b,
                    weight_only: w_b,
                },
            ) if ty == ty_b => {
                // Equal values: weight-only if either representation is.
                let w = *weight_only || *w_b;
                let changed = w != *weight_only;
                *a = Data::Tensor {
                    ty: ty.clone(),
                    weight_only: w,
                };
                DidMerge(changed, w != *w_b)
            }
            (Data::Tensor { ty, .. }, Data::Tensor { ty: ty_b, .. }) => {
                *a = Data::Invalid(format!("a rewrite equated {ty} with {ty_b}"));
                DidMerge(true, true)
            }
            _ => DidMerge(false, true),
        }
    }
}

/// Checks that no class is `Invalid` (an untypable node, or two types merged into one class): a
/// failure is a bug in a rewrite rule, reported with the offending class.
pub fn check_types(egraph: &TEGraph) -> Result<(), String> {
    for class in egraph.classes() {
        if let Data::Invalid(msg) = &class.data {
            let node = class
                .nodes
                .first()
                .map(|n| n.to_string())
                .unwrap_or_default();
            return Err(format!("e-class {} ({node} …): {msg}", class.id));
        }
    }
    Ok(())
}
