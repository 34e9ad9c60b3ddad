//! The KernelGraph: what the optimizer chooses (DESIGN.md §3). Each kernel is a template instance
//! — a [`KernelKind`] with its tile configuration — plus a *body*: the short chain of Graph ops it
//! computes over its inputs (the fused prologue, core op and epilogue). The body is the kernel's
//! reference semantics: [`run_kernels`] evaluates it with the interpreter, so every optimized
//! program is checked against the same oracle as the plain Graph.

use crate::interp::{self, Tensor, Weights};
use crate::{DType, Graph, IrError, NodeId, Op, TensorType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Index of a buffer in its KernelGraph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BufferId(pub u32);

impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// Where a buffer's contents come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferSource {
    /// A runtime input of the entry point (tokens, positions, KV cache state).
    Input(String),
    /// A module weight (possibly one derived at compile time, see [`DerivedWeight`]).
    Weight(String),
    /// Written by a kernel; lives in the activation arena (see the memory plan).
    Computed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffer {
    pub ty: TensorType,
    pub source: BufferSource,
}

/// An argument of a body op: one of the kernel's inputs, or the result of an earlier body op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyArg {
    Input(usize),
    Op(usize),
}

/// One step of a kernel body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BodyOp {
    pub op: Op,
    pub args: Vec<BodyArg>,
}

/// The template a kernel instantiates, with its tile configuration. The meaning is always the
/// body; the kind says how a backend computes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelKind {
    /// Large-M matmul: `tile_m × tile_n` output tiles, `tile_k` reduction steps, `stages`-deep
    /// software pipeline.
    Gemm {
        tile_m: u32,
        tile_n: u32,
        tile_k: u32,
        stages: u32,
    },
    /// Small-M matmul (FlashDecoding++): M padded to 8, fine N tiles, the K loop inside one
    /// block, double-buffered.
    FlatGemm { tile_n: u32, tile_k: u32 },
    /// M = 1: `tile_n` output rows per work group, the K reduction split `split_k` ways.
    Gemv { tile_n: u32, split_k: u32 },
    /// Gemm over a block-quantized weight, dequantized in registers.
    QGemm {
        format: DType,
        tile_m: u32,
        tile_n: u32,
        tile_k: u32,
    },
    /// Gemv over a block-quantized weight.
    QGemv {
        format: DType,
        tile_n: u32,
        split_k: u32,
    },
    /// Prefill attention: `block_q` query rows against `block_kv` key rows at a time, online softmax.
    FlashAttention { block_q: u32, block_kv: u32 },
    /// Decode attention: the KV length split `splits` ways, partial results merged by log-sum-exp.
    FlashDecoding { splits: u32 },
    /// One row per work item: norms, softmax, with fused elementwise work before and after.
    RowReduce,
    /// Pure elementwise (and broadcasting) work.
    Elementwise,
    /// Row lookup (embeddings).
    Gather,
    /// Append new K/V rows to the cache (in place on compiled targets).
    KvAppend,
    /// Data movement only: reshape (free on contiguous data), permute, slice, concat, expand.
    Layout,
}

impl KernelKind {
    /// The short name used in dumps and `explain`.
    pub fn name(&self) -> &'static str {
        match self {
            KernelKind::Gemm { .. } => "gemm",
            KernelKind::FlatGemm { .. } => "flat_gemm",
            KernelKind::Gemv { .. } => "gemv",
            KernelKind::QGemm { .. } => "qgemm",
            KernelKind::QGemv { .. } => "qgemv",
            KernelKind::FlashAttention { .. } => "flash_attention",
            KernelKind::FlashDecoding { .. } => "flash_decoding",
            KernelKind::RowReduce => "row_reduce",
            KernelKind::Elementwise => "elementwise",
            KernelKind::Gather => "gather",
            KernelKind::KvAppend => "kv_append",
            KernelKind::Layout => "layout",
        }
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelKind::Gemm {
                tile_m,
                tile_n,
                tile_k,
                stages,
            } => {
                write!(
                    f,
                    "gemm{{tile {tile_m}x{tile_n}x{tile_k}, stages {stages}}}"
                )
            }
            KernelKind::FlatGemm { tile_n, tile_k } => {
                write!(f, "flat_gemm{{tile_n {tile_n}, tile_k {tile_k}}}")
            }
            KernelKind::Gemv { tile_n, split_k } => {
                write!(f, "gemv{{tile_n {tile_n}, split_k {split_k}}}")
            }
            KernelKind::QGemm {
                format,
                tile_m,
                tile_n,
                tile_k,
            } => {
                write!(f, "qgemm{{{format}, tile {tile_m}x{tile_n}x{tile_k}}}")
            }
            KernelKind::QGemv {
                format,
                tile_n,
                split_k,
            } => {
                write!(f, "qgemv{{{format}, tile_n {tile_n}, split_k {split_k}}}")
            }
            KernelKind::FlashAttention { block_q, block_kv } => {
                write!(
                    f,
                    "flash_attention{{block_q {block_q}, block_kv {block_kv}}}"
                )
            }
            KernelKind::FlashDecoding { splits } => write!(f, "flash_decoding{{splits {splits}}}"),
            other => f.write_str(other.name()),
        }
    }
}

/// One kernel launch (or, for a pure reshape, none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    /// Where in the model it comes from (`model.layers.3.self_attn`), for dumps and profiles.
    pub scope: String,
    pub kind: KernelKind,
    pub body: Vec<BodyOp>,
    pub inputs: Vec<BufferId>,
    pub output: BufferId,
    /// The cost model's estimate for the shape bucket it was selected for.
    pub estimate_seconds: f64,
}

impl Kernel {
    /// Whether a compiled backend launches anything for this kernel (a lone reshape is free).
    pub fn is_launched(&self) -> bool {
        !(self.kind == KernelKind::Layout
            && self.body.iter().all(|b| matches!(b.op, Op::Reshape { .. })))
    }
}

/// A weight computed from other weights at compile time (e.g. Q, K and V projections
/// concatenated for one merged matmul): `body` over the weights named in `sources`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DerivedWeight {
    pub name: String,
    pub sources: Vec<String>,
    pub body: Vec<BodyOp>,
}

/// The optimized program of one entry point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelGraph {
    pub buffers: Vec<Buffer>,
    /// In execution order.
    pub kernels: Vec<Kernel>,
    pub outputs: Vec<(String, BufferId)>,
    pub derived_weights: Vec<DerivedWeight>,
}

impl KernelGraph {
    pub fn buffer(&self, id: BufferId) -> &Buffer {
        &self.buffers[id.0 as usize]
    }

    /// How a kernel body sees buffer `id` (of type `ty`): weights by name, everything else by value.
    fn body_input(&self, id: BufferId, ty: TensorType) -> BodyInput<'_> {
        match &self.buffer(id).source {
            BufferSource::Weight(name) => BodyInput::Weight(name, ty),
            _ => BodyInput::Value(ty),
        }
    }

    /// Launched kernels whose scope starts with `prefix` (e.g. one transformer block).
    pub fn launches_in(&self, prefix: &str) -> usize {
        self.kernels
            .iter()
            .filter(|k| k.is_launched() && k.scope.starts_with(prefix))
            .count()
    }

    /// Checks that buffers are written once before they are read, bodies reference only earlier
    /// values, and each body's inferred type equals its output buffer's type.
    pub fn verify(&self) -> Result<(), IrError> {
        let mut written: Vec<bool> = self
            .buffers
            .iter()
            .map(|b| b.source != BufferSource::Computed)
            .collect();
        for (k, kernel) in self.kernels.iter().enumerate() {
            let at = |msg: String| {
                IrError::Invalid(format!(
                    "kernel {k} ({}, {}): {msg}",
                    kernel.kind, kernel.scope
                ))
            };
            for &i in &kernel.inputs {
                if !written.get(i.0 as usize).copied().unwrap_or(false) {
                    return Err(at(format!("reads {i} before it is written")));
                }
            }
            let out = written
                .get_mut(kernel.output.0 as usize)
                .ok_or_else(|| at("output does not exist".into()))?;
            if *out {
                return Err(at(format!(
                    "writes {} which is already written",
                    kernel.output
                )));
            }
            *out = true;
            let inputs: Vec<BodyInput> = kernel
                .inputs
                .iter()
                .map(|&i| self.body_input(i, self.buffer(i).ty.clone()))
                .collect();
            let (graph, result) =
                body_graph(&kernel.body, &inputs).map_err(|e| at(e.to_string()))?;
            if graph.ty(result) != &self.buffer(kernel.output).ty {
                return Err(at(format!(
                    "body yields {} but the output is {}",
                    graph.ty(result),
                    self.buffer(kernel.output).ty
                )));
            }
        }
        for (name, id) in &self.outputs {
            if !written.get(id.0 as usize).copied().unwrap_or(false) {
                return Err(IrError::Invalid(format!(
                    "output `{name}` ({id}) is never written"
                )));
            }
        }
        Ok(())
    }
}

/// A kernel input as its body sees it: a runtime value (named by its position) or a weight read by
/// name from the weight store.
pub enum BodyInput<'a> {
    Value(TensorType),
    Weight(&'a str, TensorType),
}

/// Builds the body as a Graph over its inputs (values named `0`, `1`, … by position); returns the
/// graph and the node of the last op's result.
pub fn body_graph(body: &[BodyOp], inputs: &[BodyInput]) -> Result<(Graph, NodeId), IrError> {
    let mut g = Graph::new();
    let mut ins = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        ins.push(match input {
            BodyInput::Value(t) => g.input(&i.to_string(), t.dtype, t.shape.clone()),
            BodyInput::Weight(name, t) => {
                let dims = t
                    .shape
                    .iter()
                    .map(|d| d.as_const().map(|v| v as usize))
                    .collect::<Option<Vec<_>>>();
                let dims = dims.ok_or_else(|| {
                    IrError::Invalid(format!("weight `{name}` has a symbolic shape"))
                })?;
                g.weight(name, t.dtype, &dims)
            }
        });
    }
    let mut results: Vec<NodeId> = Vec::with_capacity(body.len());
    for (j, step) in body.iter().enumerate() {
        let args = step
            .args
            .iter()
            .map(|a| match *a {
                BodyArg::Input(i) => ins.get(i).copied(),
                BodyArg::Op(o) if o < j => results.get(o).copied(),
                BodyArg::Op(_) => None,
            })
            .collect::<Option<Vec<NodeId>>>()
            .ok_or_else(|| {
                IrError::Invalid(format!(
                    "body op {j} ({}) has an argument out of range",
                    step.op.name()
                ))
            })?;
        let id = match &step.op {
            // Body constants are scalars of the activation dtype.
            Op::Constant { value } => g.constant(*value, DType::F32),
            op => g.add(op.clone(), &args)?,
        };
        results.push(id);
    }
    let last = *results
        .last()
        .ok_or_else(|| IrError::Invalid("empty kernel body".into()))?;
    g.output("out", last);
    Ok((g, last))
}

/// Runs a KernelGraph in the reference interpreter: each kernel's body on its input buffers, in
/// order. Derived weights must already be present in `weights`.
pub fn run_kernels(
    kg: &KernelGraph,
    weights: &dyn Weights,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, IrError> {
    let mut values: Vec<Option<Tensor>> = vec![None; kg.buffers.len()];
    for (k, kernel) in kg.kernels.iter().enumerate() {
        let fail = |msg: String| {
            IrError::Eval(format!(
                "kernel {k} ({}, {}): {msg}",
                kernel.kind, kernel.scope
            ))
        };
        let mut args = BTreeMap::new();
        let mut body_inputs = Vec::with_capacity(kernel.inputs.len());
        for (i, &b) in kernel.inputs.iter().enumerate() {
            let t = match &kg.buffer(b).source {
                BufferSource::Input(name) => inputs.get(name),
                BufferSource::Weight(name) => weights.weight(name),
                BufferSource::Computed => values[b.0 as usize].as_ref(),
            }
            .ok_or_else(|| fail(format!("buffer {b} has no value")))?;
            let ty = TensorType::new(t.dtype, t.shape.iter().map(|&d| d.into()).collect());
            if !matches!(kg.buffer(b).source, BufferSource::Weight(_)) {
                args.insert(i.to_string(), t.clone());
            }
            body_inputs.push(kg.body_input(b, ty));
        }
        let (graph, _) = body_graph(&kernel.body, &body_inputs)?;
        let mut out = interp::run(&graph, weights, &args).map_err(|e| fail(e.to_string()))?;
        values[kernel.output.0 as usize] = out.remove("out");
    }
    kg.outputs
        .iter()
        .map(|(name, b)| {
            let t = match &kg.buffer(*b).source {
                BufferSource::Computed => values[b.0 as usize].clone(),
                BufferSource::Input(n) => inputs.get(n).cloned(),
                BufferSource::Weight(n) => weights.weight(n).cloned(),
            };
            t.map(|t| (name.clone(), t))
                .ok_or_else(|| IrError::Eval(format!("output `{name}` has no value")))
        })
        .collect()
}
