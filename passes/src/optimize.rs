//! The optimizer's entry point: Graph → KernelGraph for one shape bucket. Segments (see
//! `rolling`) are optimized once per distinct structure — saturate in phases, extract by cost,
//! lower to kernels — and instantiated for every layer that shares them.

use crate::cost::{CostModel, TargetSpec};
use crate::rolling::{self, unroll_name, Segment};
use crate::saturate::analysis::{TEGraph, Types};
use crate::saturate::convert::graph_to_egraph;
use crate::saturate::extract::extract;
use crate::saturate::lang::TNode;
use crate::saturate::rules::RuleContext;
use crate::saturate::runner::{saturate, Budget, PhaseStats};
use crate::saturate::to_kernels::to_kernel_graph;
use egg::Id;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;
use tessera_ir::kernel::{Buffer, BufferId, BufferSource, DerivedWeight, Kernel, KernelGraph};
use tessera_ir::{DimEnv, EntryPoint, Graph, ModelInfo, Module, NodeId};

/// Why optimization failed; the message names the entry point and segment.
#[derive(Debug, thiserror::Error)]
#[error("optimizing {entry}{}: {message}", if scope.is_empty() { String::new() } else { format!(" ({scope})") })]
pub struct PassError {
    pub entry: String,
    pub scope: String,
    pub message: String,
}

/// What happened to one distinct segment.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentReport {
    /// `model.layers.{L}` for a rolled block, `prologue` / `epilogue` otherwise.
    pub scope: String,
    /// The layers sharing this optimization (empty outside blocks).
    pub layers: Vec<usize>,
    pub phases: Vec<PhaseStats>,
    pub extract_seconds: f64,
    /// Launched kernels of one instance.
    pub kernels: usize,
    pub estimated_seconds: f64,
}

/// What happened to one entry point.
#[derive(Clone, Debug, Serialize)]
pub struct EntryReport {
    pub entry: String,
    /// The shape bucket the choices were made for.
    pub bucket: DimEnv,
    pub segments: Vec<SegmentReport>,
    /// Launched kernels of one transformer block.
    pub kernels_per_layer: usize,
    pub kernels: usize,
    pub estimated_seconds: f64,
    /// Activation arena for the bucket, after liveness-based reuse.
    pub arena_bytes: usize,
    pub optimize_seconds: f64,
}

/// The shape bucket an entry point is optimized for: prefill of a 512-token prompt, decode at a
/// 1024-token context (both capped by the model's context).
pub fn default_bucket(entry: &str, info: &ModelInfo) -> DimEnv {
    let ctx = info.max_context.max(2);
    let mut env = DimEnv::new();
    env.insert("batch".into(), 1);
    if entry == "decode" {
        env.insert("seq".into(), 1);
        env.insert("past".into(), 1024.min(ctx - 1));
    } else {
        env.insert("seq".into(), 512.min(ctx));
        env.insert("past".into(), 0);
    }
    env
}

/// Optimizes every entry point of `module` for its default bucket, storing the KernelGraphs.
pub fn optimize_module(
    module: &mut Module,
    target: &TargetSpec,
    cost: &dyn CostModel,
) -> Result<Vec<EntryReport>, PassError> {
    let info = module.info.clone();
    let mut reports = Vec::new();
    for entry in &mut module.entries {
        let env = default_bucket(&entry.name, &info);
        let (kg, report) = optimize_entry(entry, target, cost, &env)?;
        entry.kernels = Some(kg);
        reports.push(report);
    }
    Ok(reports)
}

/// Optimizes one entry point's Graph for the bucket `env`.
pub fn optimize_entry(
    entry: &EntryPoint,
    target: &TargetSpec,
    cost: &dyn CostModel,
    env: &DimEnv,
) -> Result<(KernelGraph, EntryReport), PassError> {
    let start = Instant::now();
    let fail = |scope: &str, message: String| PassError {
        entry: entry.name.clone(),
        scope: scope.into(),
        message,
    };
    let graph = &entry.graph;
    let segments = rolling::split(graph).map_err(|e| fail("", e.to_string()))?;
    let mut optimized: HashMap<&str, (KernelGraph, usize)> = HashMap::new();
    let mut reports: Vec<SegmentReport> = Vec::new();
    let mut assembly = Assembly::default();
    for seg in &segments {
        let scope = segment_scope(graph, seg);
        if !optimized.contains_key(seg.key.as_str()) {
            let (kg, report) =
                optimize_segment(seg, &scope, target, cost, env).map_err(|m| fail(&scope, m))?;
            optimized.insert(&seg.key, (kg, reports.len()));
            reports.push(report);
        }
        let (kg, report) = &optimized[seg.key.as_str()];
        if let Some(layer) = seg.layer {
            reports[*report].layers.push(layer);
        }
        assembly
            .instantiate(kg, seg, &unroll_name(&scope, seg.layer))
            .map_err(|m| fail(&scope, m))?;
    }
    let mut kg = assembly.finish(graph).map_err(|m| fail("", m))?;
    kg.verify().map_err(|e| fail("", e.to_string()))?;
    kg.plan = crate::plan::plan(&kg).map_err(|e| fail("memory plan", e.to_string()))?;
    let (_, arena_bytes) = kg
        .plan
        .offsets(env)
        .map_err(|e| fail("memory plan", e.to_string()))?;
    let kernels_per_layer = reports
        .iter()
        .find(|r| !r.layers.is_empty())
        .map_or(0, |r| r.kernels);
    let report = EntryReport {
        entry: entry.name.clone(),
        bucket: env.clone(),
        kernels_per_layer,
        kernels: kg.kernels.iter().filter(|k| k.is_launched()).count(),
        estimated_seconds: kg.kernels.iter().map(|k| k.estimate_seconds).sum(),
        arena_bytes,
        segments: reports,
        optimize_seconds: start.elapsed().as_secs_f64(),
    };
    Ok((kg, report))
}

fn segment_scope(graph: &Graph, seg: &Segment) -> String {
    match seg.layer {
        Some(i) => {
            let first = seg
                .exports
                .first()
                .map(|id| graph.node(*id).scope.as_str())
                .unwrap_or("");
            let block = first
                .split('.')
                .take_while(|p| *p != i.to_string())
                .collect::<Vec<_>>()
                .join(".");
            format!("{block}.{}", rolling::LAYER)
        }
        None if seg.externals.is_empty() => "prologue".into(),
        None => "epilogue".into(),
    }
}

fn optimize_segment(
    seg: &Segment,
    scope: &str,
    target: &TargetSpec,
    cost: &dyn CostModel,
    env: &DimEnv,
) -> Result<(KernelGraph, SegmentReport), String> {
    let mut egraph = TEGraph::new(Types::default());
    let ids = graph_to_egraph(&seg.graph, &mut egraph);
    let outputs: Vec<(String, Id)> = seg
        .graph
        .outputs
        .iter()
        .map(|(n, id)| (n.clone(), ids[id]))
        .collect();
    let roots: Vec<Id> = outputs.iter().map(|(_, id)| *id).collect();
    let ctx = RuleContext { target, env };
    let (egraph, roots, phases) = saturate(egraph, &roots, &ctx, &Budget::default_for)?;
    let outputs: Vec<(String, Id)> = outputs
        .into_iter()
        .zip(roots)
        .map(|((n, _), id)| (n, id))
        .collect();
    let start = Instant::now();
    let node_cost = |class: Id, node: &TNode| price(&egraph, class, node, cost, env);
    let roots: Vec<Id> = outputs.iter().map(|(_, id)| *id).collect();
    let extraction = extract(&egraph, &roots, &node_cost)?;
    let extract_seconds = start.elapsed().as_secs_f64();
    let kg = to_kernel_graph(&egraph, &extraction, &outputs, scope, cost, env)?;
    let report = SegmentReport {
        scope: scope.to_string(),
        layers: vec![],
        phases,
        extract_seconds,
        kernels: kg.kernels.iter().filter(|k| k.is_launched()).count(),
        estimated_seconds: kg.kernels.iter().map(|k| k.estimate_seconds).sum(),
    };
    Ok((kg, report))
}

/// A node's own run-time cost: kernels by the cost model, leaves nothing, weight-only work
/// nothing (done at compile time), anything else infinite (it must become a kernel).
fn price(egraph: &TEGraph, class: Id, node: &TNode, cost: &dyn CostModel, env: &DimEnv) -> f64 {
    let data = &egraph[class].data;
    match node {
        TNode::Attr(_) | TNode::Input(_) | TNode::Weight(_) => 0.0,
        TNode::Kernel(_) if data.weight_only() => f64::INFINITY,
        TNode::Kernel(children) => {
            let (
                Some(crate::saturate::lang::Attr::Kind(kind)),
                Some(crate::saturate::lang::Attr::Body(body)),
            ) = (
                egraph[children[0]].data.attr(),
                egraph[children[1]].data.attr(),
            )
            else {
                return f64::INFINITY;
            };
            let inputs: Option<Vec<_>> = children[2..]
                .iter()
                .map(|c| egraph[*c].data.ty().cloned())
                .collect();
            match (inputs, data.ty()) {
                (Some(inputs), Some(out)) => cost.kernel_cost(kind, &body.ops, &inputs, out, env),
                _ => f64::INFINITY,
            }
        }
        TNode::Fused(_) => f64::INFINITY,
        _ if data.weight_only() => 0.0,
        _ => f64::INFINITY,
    }
}

/// Builds the entry point's KernelGraph from segment instances.
#[derive(Default)]
struct Assembly {
    kg: KernelGraph,
    /// Global buffers of named inputs and weights.
    named: HashMap<(bool, String), BufferId>,
    /// Global buffer of each exported original node.
    exported: HashMap<NodeId, BufferId>,
}

impl Assembly {
    fn named_buffer(&mut self, source: BufferSource, ty: tessera_ir::TensorType) -> BufferId {
        let key = match &source {
            BufferSource::Input(n) => (true, n.clone()),
            BufferSource::Weight(n) => (false, n.clone()),
            BufferSource::Computed => unreachable!("computed buffers are not named"),
        };
        let kg = &mut self.kg;
        *self.named.entry(key).or_insert_with(|| {
            kg.buffers.push(Buffer { ty, source });
            BufferId(kg.buffers.len() as u32 - 1)
        })
    }

    /// Adds one instance of a segment's kernels, mapping its buffers to global ones.
    fn instantiate(
        &mut self,
        frag: &KernelGraph,
        seg: &Segment,
        scope: &str,
    ) -> Result<(), String> {
        let unroll = |n: &str| unroll_name(n, seg.layer);
        let mut map = Vec::with_capacity(frag.buffers.len());
        for b in &frag.buffers {
            let id = match &b.source {
                BufferSource::Input(n) if n.starts_with("in.") => {
                    let k: usize = n[3..]
                        .parse()
                        .map_err(|_| format!("bad segment input `{n}`"))?;
                    let orig = seg
                        .externals
                        .get(k)
                        .ok_or_else(|| format!("segment input `{n}` out of range"))?;
                    *self
                        .exported
                        .get(orig)
                        .ok_or_else(|| format!("segment input `{n}` is computed nowhere"))?
                }
                BufferSource::Input(n) => {
                    self.named_buffer(BufferSource::Input(unroll(n)), b.ty.clone())
                }
                BufferSource::Weight(n) => {
                    self.named_buffer(BufferSource::Weight(unroll(n)), b.ty.clone())
                }
                BufferSource::Computed => {
                    self.kg.buffers.push(b.clone());
                    BufferId(self.kg.buffers.len() as u32 - 1)
                }
            };
            map.push(id);
        }
        for k in &frag.kernels {
            self.kg.kernels.push(Kernel {
                scope: scope.to_string(),
                inputs: k.inputs.iter().map(|b| map[b.0 as usize]).collect(),
                output: map[k.output.0 as usize],
                ..k.clone()
            });
        }
        for d in &frag.derived_weights {
            let name = unroll(&d.name);
            if !self.kg.derived_weights.iter().any(|x| x.name == name) {
                let sources = d.sources.iter().map(|s| unroll(s)).collect();
                self.kg.derived_weights.push(DerivedWeight {
                    name,
                    sources,
                    body: d.body.clone(),
                });
            }
        }
        for (name, b) in &frag.outputs {
            let k: usize = name
                .strip_prefix("out.")
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| format!("bad segment output `{name}`"))?;
            self.exported.insert(seg.exports[k], map[b.0 as usize]);
        }
        Ok(())
    }

    fn finish(mut self, graph: &Graph) -> Result<KernelGraph, String> {
        for (name, id) in &graph.outputs {
            let b = match self.exported.get(id) {
                Some(b) => *b,
                None => return Err(format!("graph output `{name}` is produced by no segment")),
            };
            self.kg.outputs.push((name.clone(), b));
        }
        Ok(self.kg)
    }
}
