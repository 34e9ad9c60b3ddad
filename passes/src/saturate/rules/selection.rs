//! Selection and tiling: every fused body gets one `kernel` alternative per template that can run
//! it and per tile configuration the target admits — matmuls as GEMV / FlatGEMM / GEMM (quantized
//! variants for quantized weights), attention as FlashAttention (prefill) or FlashDecoding
//! (decode, with several split counts), norms as row reductions. The cost model picks among them
//! at extraction, per shape bucket.

use super::class_rule::{args, class_rule};
use super::fusion::has_fused;
use super::{Rule, RuleContext};
use crate::cost::{attention_candidates, matmul_candidates, quant_matmul_candidates, TargetSpec};
use crate::saturate::analysis::TEGraph;
use crate::saturate::lang::{Attr, TNode};
use egg::Id;
use tessera_ir::kernel::{body_graph, BodyArg, BodyInput, BodyOp, KernelKind};
use tessera_ir::{eval_shape, Dim, DimEnv, Op, TensorType};

pub(super) fn rules(ctx: &RuleContext) -> Vec<Rule> {
    let target = ctx.target.clone();
    let env = ctx.env.clone();
    vec![class_rule(
        "select-template",
        has_fused,
        move |egraph, id| select(egraph, id, &target, &env),
    )]
}

fn select(egraph: &mut TEGraph, id: Id, target: &TargetSpec, env: &DimEnv) -> Vec<Id> {
    let mut kernels = Vec::new();
    for node in egraph[id].nodes.clone() {
        let TNode::Fused(children) = &node else {
            continue;
        };
        let Some(Attr::Body(body)) = egraph[children[0]].data.attr().cloned() else {
            continue;
        };
        let inputs: Option<Vec<TensorType>> = args(&node)
            .iter()
            .map(|&a| egraph[a].data.ty().cloned())
            .collect();
        let Some(inputs) = inputs else { continue };
        for kind in templates(&body.ops, &inputs, target, env) {
            let kind = egraph.add(TNode::Attr(Attr::Kind(kind)));
            let mut kernel = vec![kind, children[0]];
            kernel.extend_from_slice(args(&node));
            kernels.push(egraph.add(TNode::Kernel(kernel.into())));
        }
    }
    kernels
}

/// The templates (with tile alternatives) that can run `body` over inputs of these types.
pub(crate) fn templates(
    body: &[BodyOp],
    inputs: &[TensorType],
    target: &TargetSpec,
    env: &DimEnv,
) -> Vec<KernelKind> {
    let body_inputs: Vec<BodyInput> = inputs.iter().cloned().map(BodyInput::Value).collect();
    let Ok((graph, _)) = body_graph(body, &body_inputs) else {
        return vec![];
    };
    // The body graph adds its inputs first, then one node per body op.
    let ty = |arg: BodyArg| match arg {
        BodyArg::Input(i) => inputs[i].clone(),
        BodyArg::Op(o) => graph.nodes[inputs.len() + o].ty.clone(),
    };
    let anchor = |want: fn(&Op) -> bool| body.iter().find(|b| want(&b.op));
    if let Some(mm) = anchor(|op| matches!(op, Op::MatMul { .. } | Op::QuantMatMul { .. })) {
        let lhs = ty(mm.args[0]);
        let rows = eval_shape(&lhs.shape[..lhs.rank().saturating_sub(1)], env)
            .ok()
            .map(|d| d.iter().product());
        return match mm.op {
            Op::QuantMatMul { .. } => quant_matmul_candidates(target, ty(mm.args[1]).dtype, rows),
            _ => matmul_candidates(target, rows),
        };
    }
    if let Some(att) = anchor(|op| matches!(op, Op::Attention { .. })) {
        let q = ty(att.args[0]);
        let decode = q.shape.get(2) == Some(&Dim::c(1));
        let head_dim = q.shape.get(3).and_then(Dim::as_const).unwrap_or(0) as usize;
        return attention_candidates(target, decode, head_dim);
    }
    if anchor(|op| {
        matches!(
            op,
            Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::Softmax | Op::Reduce { .. }
        )
    })
    .is_some()
    {
        return vec![KernelKind::RowReduce];
    }
    if anchor(|op| matches!(op, Op::Gather)).is_some() {
        return vec![KernelKind::Gather];
    }
    if anchor(|op| matches!(op, Op::KvAppend)).is_some() {
        return vec![KernelKind::KvAppend];
    }
    let layout_only = body.iter().all(|b| {
        matches!(
            b.op,
            Op::Reshape { .. }
                | Op::Permute { .. }
                | Op::Slice { .. }
                | Op::Concat { .. }
                | Op::Expand { .. }
        )
    });
    vec![if layout_only {
        KernelKind::Layout
    } else {
        KernelKind::Elementwise
    }]
}
