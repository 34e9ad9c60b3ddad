//! From an extraction to a KernelGraph: every chosen `kernel` node becomes a kernel writing a
//! fresh buffer, leaves become input and weight buffers, and weight-only computations (Q/K/V
//! weights concatenated, constants) become derived weights computed once at compile time.

use super::analysis::TEGraph;
use super::extract::Extraction;
use super::lang::{Attr, TNode};
use super::ops::node_op;
use crate::cost::CostModel;
use egg::Id;
use std::collections::HashMap;
use tessera_ir::kernel::{
    BodyArg, BodyOp, Buffer, BufferId, BufferSource, DerivedWeight, Kernel, KernelGraph,
};
use tessera_ir::{DimEnv, Op, TensorType};

/// Builds the KernelGraph of `outputs` (name, class) from `extraction`; kernels get `scope`.
pub fn to_kernel_graph(
    egraph: &TEGraph,
    extraction: &Extraction,
    outputs: &[(String, Id)],
    scope: &str,
    cost: &dyn CostModel,
    env: &DimEnv,
) -> Result<KernelGraph, String> {
    let mut lowering = Lowering {
        egraph,
        extraction,
        kg: KernelGraph::default(),
        buffers: HashMap::new(),
    };
    for &id in &extraction.order {
        if let TNode::Kernel(children) = &extraction.choice[&id] {
            lowering.kernel(id, children, scope, cost, env)?;
        }
    }
    for (name, id) in outputs {
        let b = lowering.buffer(egraph.find(*id))?;
        lowering.kg.outputs.push((name.clone(), b));
    }
    Ok(lowering.kg)
}

/// The KernelGraph being built: kernels in extraction order; input and weight buffers created
/// when something reads them (the sources of a derived weight are read at compile time only).
struct Lowering<'a> {
    egraph: &'a TEGraph,
    extraction: &'a Extraction,
    kg: KernelGraph,
    buffers: HashMap<Id, BufferId>,
}

impl Lowering<'_> {
    fn attr(&self, id: Id) -> Option<Attr> {
        self.egraph[id].data.attr().cloned()
    }

    fn kernel(
        &mut self,
        id: Id,
        children: &[Id],
        scope: &str,
        cost: &dyn CostModel,
        env: &DimEnv,
    ) -> Result<(), String> {
        let (Some(Attr::Kind(kind)), Some(Attr::Body(body))) =
            (self.attr(children[0]), self.attr(children[1]))
        else {
            return Err(format!(
                "kernel node of e-class {id} lacks its kind or body"
            ));
        };
        let inputs = children[2..]
            .iter()
            .map(|a| self.buffer(self.egraph.find(*a)))
            .collect::<Result<Vec<_>, _>>()?;
        let input_types: Vec<TensorType> = inputs
            .iter()
            .map(|b| self.kg.buffer(*b).ty.clone())
            .collect();
        let ty = self.egraph[id]
            .data
            .ty()
            .cloned()
            .ok_or_else(|| format!("kernel e-class {id} is not a tensor"))?;
        let estimate_seconds = cost.kernel_cost(&kind, &body.ops, &input_types, &ty, env);
        let output = push(&mut self.kg, ty, BufferSource::Computed);
        self.kg.kernels.push(Kernel {
            scope: scope.to_string(),
            kind,
            body: body.ops.to_vec(),
            inputs,
            output,
            estimate_seconds,
        });
        self.buffers.insert(id, output);
        Ok(())
    }

    /// The buffer holding class `id`: a kernel's output (already lowered), or an input, weight or
    /// derived weight, created on first use.
    fn buffer(&mut self, id: Id) -> Result<BufferId, String> {
        if let Some(b) = self.buffers.get(&id) {
            return Ok(*b);
        }
        let ty = self.egraph[id]
            .data
            .ty()
            .cloned()
            .ok_or_else(|| format!("e-class {id} is not a tensor"))?;
        let source = match &self.extraction.choice[&id] {
            TNode::Input([n]) => BufferSource::Input(name(&self.attr(*n))?),
            TNode::Weight([n]) => BufferSource::Weight(name(&self.attr(*n))?),
            _ if self.egraph[id].data.weight_only() => {
                let derived = derive_weight(self.egraph, self.extraction, id)?;
                let source = BufferSource::Weight(derived.name.clone());
                if !self
                    .kg
                    .derived_weights
                    .iter()
                    .any(|d| d.name == derived.name)
                {
                    self.kg.derived_weights.push(derived);
                }
                source
            }
            other => {
                return Err(format!(
                    "e-class {id} chose {other}, which no kernel implements"
                ))
            }
        };
        let b = push(&mut self.kg, ty, source);
        self.buffers.insert(id, b);
        Ok(b)
    }
}

fn push(kg: &mut KernelGraph, ty: TensorType, source: BufferSource) -> BufferId {
    kg.buffers.push(Buffer { ty, source });
    BufferId(kg.buffers.len() as u32 - 1)
}

fn name(a: &Option<Attr>) -> Result<String, String> {
    match a {
        Some(Attr::Name(s)) => Ok(s.to_string()),
        _ => Err("leaf without a name".into()),
    }
}

/// The compile-time computation of a weight-only class as a body over its source weights, named
/// by the term it computes (deterministic, and renamable per layer like the weights it reads).
fn derive_weight(
    egraph: &TEGraph,
    extraction: &Extraction,
    id: Id,
) -> Result<DerivedWeight, String> {
    let mut body = Vec::new();
    let mut sources = Vec::new();
    let (_, term) = derived_term(egraph, extraction, id, &mut body, &mut sources)?;
    Ok(DerivedWeight {
        name: format!("derived:{term}"),
        sources,
        body,
    })
}

/// Appends the ops computing class `id` to `body`; returns the argument that refers to its value
/// and its text form.
fn derived_term(
    egraph: &TEGraph,
    extraction: &Extraction,
    id: Id,
    body: &mut Vec<BodyOp>,
    sources: &mut Vec<String>,
) -> Result<(BodyArg, String), String> {
    let node = &extraction.choice[&egraph.find(id)];
    let attr = |id: Id| egraph[id].data.attr().cloned();
    let (op, inputs) =
        node_op(node, &attr).ok_or_else(|| format!("weight-only e-class {id} chose {node}"))?;
    if let Op::Weight { name } = &op {
        let index = sources.iter().position(|s| s == name).unwrap_or_else(|| {
            sources.push(name.clone());
            sources.len() - 1
        });
        return Ok((BodyArg::Input(index), name.clone()));
    }
    let mut args = Vec::with_capacity(inputs.len());
    let mut texts = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (arg, text) = derived_term(egraph, extraction, input, body, sources)?;
        args.push(arg);
        texts.push(text);
    }
    let text = format!("{}({})", op_text(&op), texts.join(","));
    body.push(BodyOp { op, args });
    Ok((BodyArg::Op(body.len() - 1), text))
}

fn op_text(op: &Op) -> String {
    serde_json::to_string(op)
        .unwrap_or_else(|_| op.name().to_string())
        .replace([' ', '"'], "")
}
