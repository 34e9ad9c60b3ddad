//! The KernelGraph: what the optimizer chooses (DESIGN.md §3). Each kernel is a template instance
//! — a [`KernelKind`] with its tile configuration — plus a *body*: the short chain of Graph ops it
//! computes over its inputs (the fused prologue, core op and epilogue). The body is the kernel's
//! reference semantics: [`run_kernels`] evaluates it with the interpreter, so every optimized
//! program is checked against the same oracle as the plain Graph.

use crate::graph::bind_dims;
use crate::interp::{self, Tensor, Weights};
use crate::{eval_shape, DType, Dim, DimEnv, Graph, IrError, NodeId, Op, Shape, TensorType};
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

/// A tensor kernels read or write. Its type may be symbolic (`[batch, seq, 64]`), like the
/// Graph's, so one KernelGraph serves every length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffer {
    pub ty: TensorType,
    pub source: BufferSource,
}

/// An argument of a body op: one of the kernel's inputs, or the result of an earlier body op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyArg {
    /// The kernel's input at this position (`Kernel::inputs`, or `DerivedWeight::sources`).
    Input(usize),
    /// The result of the body op at this (earlier) position.
    Op(usize),
}

/// One step of a kernel body: a Graph op (a `Constant` is an f32 scalar and takes no arguments)
/// applied to its arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BodyOp {
    pub op: Op,
    pub args: Vec<BodyArg>,
}

/// The name of a body's result in the Graph [`body_graph`] builds.
pub const BODY_OUTPUT: &str = "out";

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
    /// Whether this template running `body` launches anything: a layout kernel made only of
    /// reshapes is a view of its input on contiguous data, so it costs and launches nothing.
    pub fn launches(&self, body: &[BodyOp]) -> bool {
        !(*self == KernelKind::Layout && body.iter().all(|b| matches!(b.op, Op::Reshape { .. })))
    }

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
    /// The template and its tiles: how a backend computes the body.
    pub kind: KernelKind,
    /// What the kernel computes: the last op's result is the output.
    pub body: Vec<BodyOp>,
    /// The buffers the body's `BodyArg::Input`s refer to, by position.
    pub inputs: Vec<BufferId>,
    /// The one buffer the kernel writes.
    pub output: BufferId,
    /// The cost model's estimate for the shape bucket it was selected for.
    pub estimate_seconds: f64,
}

impl Kernel {
    /// Whether a compiled backend launches anything for this kernel (a lone reshape is free).
    pub fn is_launched(&self) -> bool {
        self.kind.launches(&self.body)
    }
}

/// A weight computed from other weights at compile time (e.g. Q, K and V projections
/// concatenated for one merged matmul): `body` over the weights named in `sources`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DerivedWeight {
    /// The new weight's name; kernels read it through a `BufferSource::Weight` buffer.
    pub name: String,
    /// The weights the body's `BodyArg::Input`s refer to, by position.
    pub sources: Vec<String>,
    pub body: Vec<BodyOp>,
}

impl DerivedWeight {
    /// The body as a Graph over its source weights, each typed by `source_type` (the module's
    /// declaration); returns the graph and the node of the derived weight's value.
    pub fn body_graph(
        &self,
        source_type: impl Fn(&str) -> Option<TensorType>,
    ) -> Result<(Graph, NodeId), IrError> {
        let at = |msg: String| IrError::Invalid(format!("derived weight `{}`: {msg}", self.name));
        let inputs = self
            .sources
            .iter()
            .map(|s| {
                source_type(s)
                    .map(|t| BodyInput::Weight(s, t))
                    .ok_or_else(|| at(format!("source `{s}` is not declared")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        body_graph(&self.body, &inputs).map_err(|e| at(e.to_string()))
    }
}

/// The optimized program of one entry point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelGraph {
    /// Indexed by [`BufferId`].
    pub buffers: Vec<Buffer>,
    /// In execution order.
    pub kernels: Vec<Kernel>,
    /// The entry point's named outputs (the same names as its Graph's).
    pub outputs: Vec<(String, BufferId)>,
    /// Weights the compile driver computes from the imported ones before writing the artifact.
    pub derived_weights: Vec<DerivedWeight>,
    /// Where computed buffers live in the activation arena (empty when not planned).
    #[serde(default)]
    pub plan: crate::memory_plan::MemoryPlan,
}

impl KernelGraph {
    /// The buffer `id`; panics when it does not exist (a verified KernelGraph has every one).
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
    /// A graph input named by the position, of this type.
    Value(TensorType),
    /// A weight of this name and (concrete) type.
    Weight(&'a str, TensorType),
}

/// Builds the body as a Graph over its inputs (values named `0`, `1`, … by position); returns the
/// graph and the node of the last op's result, which is the graph's output [`BODY_OUTPUT`].
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
            Op::Constant { value } if args.is_empty() => g.constant(*value, DType::F32),
            Op::Constant { .. } => {
                return Err(IrError::Invalid(format!(
                    "body op {j} (constant) takes no arguments"
                )))
            }
            op => g.add(op.clone(), &args)?,
        };
        results.push(id);
    }
    let last = *results
        .last()
        .ok_or_else(|| IrError::Invalid("empty kernel body".into()))?;
    g.output(BODY_OUTPUT, last);
    Ok((g, last))
}

/// Runs a KernelGraph in the reference interpreter: binds the symbolic dims from the input
/// buffers' shapes (as `interp::run` binds a Graph's), then runs each kernel's body, with those
/// dims substituted, on its input buffers, in order. Derived weights must already be present in
/// `weights`. Like `interp::run`, nothing a caller passes makes it panic: a missing input or
/// weight, a buffer read before it is written, … are errors naming the kernel.
pub fn run_kernels(
    kg: &KernelGraph,
    weights: &dyn Weights,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, IrError> {
    let declared: Vec<(&str, &Shape)> = kg
        .buffers
        .iter()
        .filter_map(|b| match &b.source {
            BufferSource::Input(name) => Some((name.as_str(), &b.ty.shape)),
            _ => None,
        })
        .collect();
    let shapes = inputs
        .iter()
        .map(|(name, t)| (name.clone(), t.shape.clone()))
        .collect();
    let env = bind_dims(&declared, &shapes)?;
    let last_read = last_reads(kg);
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
            let buffer = kg
                .buffers
                .get(b.0 as usize)
                .ok_or_else(|| fail(format!("buffer {b} does not exist")))?;
            let shape = eval_shape(&buffer.ty.shape, &env).map_err(&fail)?;
            let ty = TensorType::new(buffer.ty.dtype, shape.into_iter().map(Dim::from).collect());
            let value = match &buffer.source {
                BufferSource::Weight(name) => {
                    body_inputs.push(BodyInput::Weight(name, ty));
                    continue;
                }
                BufferSource::Input(name) => inputs.get(name),
                BufferSource::Computed => values[b.0 as usize].as_ref(),
            };
            let value = value.ok_or_else(|| fail(format!("buffer {b} has no value")))?;
            args.insert(i.to_string(), value.clone());
            body_inputs.push(BodyInput::Value(ty));
        }
        let body = kernel
            .body
            .iter()
            .map(|step| {
                Ok(BodyOp {
                    op: bind_op(&step.op, &env)?,
                    args: step.args.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(&fail)?;
        let (graph, _) = body_graph(&body, &body_inputs).map_err(|e| fail(e.to_string()))?;
        let mut out = interp::run(&graph, weights, &args).map_err(|e| fail(e.to_string()))?;
        let slot = values
            .get_mut(kernel.output.0 as usize)
            .ok_or_else(|| fail(format!("output {} does not exist", kernel.output)))?;
        *slot = out.remove(BODY_OUTPUT);
        for b in &kernel.inputs {
            if last_read.get(b.0 as usize) == Some(&k) {
                values[b.0 as usize] = None;
            }
        }
    }
    kg.outputs
        .iter()
        .map(|(name, b)| {
            let t = match kg.buffers.get(b.0 as usize).map(|x| &x.source) {
                Some(BufferSource::Computed) => values[b.0 as usize].clone(),
                Some(BufferSource::Input(n)) => inputs.get(n).cloned(),
                Some(BufferSource::Weight(n)) => weights.weight(n).cloned(),
                None => None,
            };
            t.map(|t| (name.clone(), t))
                .ok_or_else(|| IrError::Eval(format!("output `{name}` has no value")))
        })
        .collect()
}

/// For each buffer, the index of the last kernel reading it; `usize::MAX` for outputs and buffers
/// nothing reads (kept to the end), so `run_kernels` frees values as `interp::run` does.
fn last_reads(kg: &KernelGraph) -> Vec<usize> {
    let mut last = vec![usize::MAX; kg.buffers.len()];
    for (k, kernel) in kg.kernels.iter().enumerate() {
        for b in &kernel.inputs {
            if let Some(l) = last.get_mut(b.0 as usize) {
                *l = k;
            }
        }
    }
    for (_, b) in &kg.outputs {
        if let Some(l) = last.get_mut(b.0 as usize) {
            *l = usize::MAX;
        }
    }
    last
}

/// `op` with the symbolic dims of its attributes replaced by their values under `env`, so a body
/// over concrete inputs type-checks (a reshape to `[batch, seq, 4, 16]` becomes `[2, 7, 4, 16]`).
fn bind_op(op: &Op, env: &DimEnv) -> Result<Op, String> {
    let dim = |d: &Dim| d.eval(env).map(Dim::from);
    let shape = |s: &Shape| s.iter().map(dim).collect::<Result<Shape, String>>();
    Ok(match op {
        Op::Reshape { shape: s } => Op::Reshape { shape: shape(s)? },
        Op::Expand { shape: s } => Op::Expand { shape: shape(s)? },
        Op::Slice { axis, start, end } => Op::Slice {
            axis: *axis,
            start: dim(start)?,
            end: dim(end)?,
        },
        Op::Input { .. }
        | Op::Weight { .. }
        | Op::Constant { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Select
        | Op::Cast { .. }
        | Op::Reduce { .. }
        | Op::Permute { .. }
        | Op::Concat { .. }
        | Op::Gather
        | Op::MatMul { .. }
        | Op::Softmax
        | Op::RmsNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Rope { .. }
        | Op::Attention { .. }
        | Op::Dequantize
        | Op::QuantMatMul { .. }
        | Op::KvAppend => op.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::interp::testutil::{feed, rand_f32, weights};
    use crate::{BinaryOp, EntryPoint, ModelInfo, Module, StateSpec, UnaryOp, WeightSpec};

    fn shape(dims: &[&str]) -> Shape {
        dims.iter().map(|d| Dim::parse(d).unwrap()).collect()
    }

    fn ty(dtype: DType, dims: &[&str]) -> TensorType {
        TensorType::new(dtype, shape(dims))
    }

    /// The Graph the sample KernelGraph computes: embedding gather, a linear layer with bias and
    /// SiLU, an RMSNorm (output `y`), and the linear's output split into 2 heads appended to the
    /// state `cache`.
    fn sample_graph() -> Graph {
        let mut g = Graph::new();
        let tokens = g.input("tokens", DType::I32, shape(&["batch", "seq"]));
        let cache = g.input("cache", DType::F32, shape(&["batch", "2", "past", "4"]));
        g.set_scope("model.embed_tokens");
        let embed = g.weight("embed", DType::F32, &[10, 4]);
        let x = g.add(Op::Gather, &[embed, tokens]).unwrap();
        g.set_scope("model.layers.0.mlp");
        let w1 = g.weight("w1", DType::F32, &[8, 4]);
        let b1 = g.weight("b1", DType::F32, &[8]);
        let h = g.add(Op::MatMul { transpose_b: true }, &[x, w1]).unwrap();
        let h = g.add(Op::Binary(BinaryOp::Add), &[h, b1]).unwrap();
        let h = g.add(Op::Unary(UnaryOp::Silu), &[h]).unwrap();
        g.set_scope("model.layers.0.norm");
        let norm = g.weight("norm", DType::F32, &[8]);
        let y = g.add(Op::RmsNorm { eps: 1e-5 }, &[h, norm]).unwrap();
        g.set_scope("model.layers.0.attn");
        let heads = Op::Reshape {
            shape: shape(&["batch", "seq", "2", "4"]),
        };
        let r = g.add(heads, &[h]).unwrap();
        let perm = Op::Permute {
            perm: vec![0, 2, 1, 3],
        };
        let p = g.add(perm, &[r]).unwrap();
        let kv = g.add(Op::KvAppend, &[cache, p]).unwrap();
        g.output("y", y);
        g.output("cache", kv);
        g.set_scope("");
        g
    }

    fn computed(ty: TensorType) -> Buffer {
        Buffer {
            ty,
            source: BufferSource::Computed,
        }
    }

    fn named(ty: TensorType, source: fn(String) -> BufferSource, name: &str) -> Buffer {
        Buffer {
            ty,
            source: source(name.into()),
        }
    }

    fn kernel(scope: &str, kind: KernelKind, body: Vec<BodyOp>, io: (&[u32], u32)) -> Kernel {
        Kernel {
            scope: scope.into(),
            kind,
            body,
            inputs: io.0.iter().map(|&b| BufferId(b)).collect(),
            output: BufferId(io.1),
            estimate_seconds: 1.5e-6,
        }
    }

    fn step(op: Op, args: &[BodyArg]) -> BodyOp {
        BodyOp {
            op,
            args: args.to_vec(),
        }
    }

    /// [`sample_graph`] as five kernels: gather; gemm with the bias add and SiLU fused as its
    /// epilogue; RMSNorm; a free reshape into heads; KV append with the permute as its prologue.
    pub(crate) fn sample() -> KernelGraph {
        use BodyArg::{Input as In, Op as At};
        let f32_ = |dims: &[&str]| ty(DType::F32, dims);
        let buffers = vec![
            named(
                ty(DType::I32, &["batch", "seq"]),
                BufferSource::Input,
                "tokens",
            ),
            named(f32_(&["10", "4"]), BufferSource::Weight, "embed"),
            computed(f32_(&["batch", "seq", "4"])),
            named(f32_(&["8", "4"]), BufferSource::Weight, "w1"),
            named(f32_(&["8"]), BufferSource::Weight, "b1"),
            computed(f32_(&["batch", "seq", "8"])),
            named(f32_(&["8"]), BufferSource::Weight, "norm"),
            computed(f32_(&["batch", "seq", "8"])),
            named(
                f32_(&["batch", "2", "past", "4"]),
                BufferSource::Input,
                "cache",
            ),
            computed(f32_(&["batch", "seq", "2", "4"])),
            computed(f32_(&["batch", "2", "past + seq", "4"])),
        ];
        let gemm = KernelKind::Gemm {
            tile_m: 64,
            tile_n: 64,
            tile_k: 32,
            stages: 2,
        };
        let kernels = vec![
            kernel(
                "model.embed_tokens",
                KernelKind::Gather,
                vec![step(Op::Gather, &[In(0), In(1)])],
                (&[1, 0], 2),
            ),
            kernel(
                "model.layers.0.mlp",
                gemm,
                vec![
                    step(Op::MatMul { transpose_b: true }, &[In(0), In(1)]),
                    step(Op::Binary(BinaryOp::Add), &[At(0), In(2)]),
                    step(Op::Unary(UnaryOp::Silu), &[At(1)]),
                ],
                (&[2, 3, 4], 5),
            ),
            kernel(
                "model.layers.0.norm",
                KernelKind::RowReduce,
                vec![step(Op::RmsNorm { eps: 1e-5 }, &[In(0), In(1)])],
                (&[5, 6], 7),
            ),
            kernel(
                "model.layers.0.attn",
                KernelKind::Layout,
                vec![step(
                    Op::Reshape {
                        shape: shape(&["batch", "seq", "2", "4"]),
                    },
                    &[In(0)],
                )],
                (&[5], 9),
            ),
            kernel(
                "model.layers.0.attn",
                KernelKind::KvAppend,
                vec![
                    step(
                        Op::Permute {
                            perm: vec![0, 2, 1, 3],
                        },
                        &[In(1)],
                    ),
                    step(Op::KvAppend, &[In(0), At(0)]),
                ],
                (&[8, 9], 10),
            ),
        ];
        KernelGraph {
            buffers,
            kernels,
            outputs: vec![("y".into(), BufferId(7)), ("cache".into(), BufferId(10))],
            derived_weights: vec![],
            plan: Default::default(),
        }
    }

    fn sample_weights() -> BTreeMap<String, Tensor> {
        weights(&[
            ("embed", Tensor::f32(vec![10, 4], rand_f32(1, 40))),
            ("w1", Tensor::f32(vec![8, 4], rand_f32(2, 32))),
            ("b1", Tensor::f32(vec![8], rand_f32(3, 8))),
            ("norm", Tensor::f32(vec![8], rand_f32(4, 8))),
        ])
    }

    /// batch 2, seq 3, past 2.
    fn sample_inputs() -> BTreeMap<String, Tensor> {
        feed(&[
            ("tokens", Tensor::i32(vec![2, 3], vec![1, 9, 0, 4, 4, 7])),
            ("cache", Tensor::f32(vec![2, 2, 2, 4], rand_f32(5, 32))),
        ])
    }

    fn sample_module(kernels: KernelGraph) -> Module {
        let spec = |name: &str, shape: &[usize]| WeightSpec {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.to_vec(),
        };
        Module {
            info: ModelInfo {
                architecture: "test".into(),
                vocab_size: 10,
                max_context: 16,
                bos_token_id: None,
                eos_token_ids: vec![],
                num_layers: 1,
                hidden_size: 8,
            },
            weights: vec![
                spec("embed", &[10, 4]),
                spec("w1", &[8, 4]),
                spec("b1", &[8]),
                spec("norm", &[8]),
            ],
            state: vec![StateSpec {
                name: "cache".into(),
                dtype: DType::F32,
                shape: shape(&["batch", "2", "past", "4"]),
            }],
            entries: vec![EntryPoint {
                name: "main".into(),
                graph: sample_graph(),
                kernels: Some(kernels),
                cpu_code: vec![],
                gpu_code: vec![],
            }],
        }
    }

    #[track_caller]
    fn rejects(kg: &KernelGraph, what: &str) {
        let err = kg.verify().unwrap_err().to_string();
        assert!(err.contains(what), "{err}\n{kg}");
    }

    #[test]
    fn runs_exactly_like_the_graph() {
        let kg = sample();
        kg.verify().unwrap();
        let w = sample_weights();
        let inputs = sample_inputs();
        let got = run_kernels(&kg, &w, &inputs).unwrap();
        let want = interp::run(&sample_graph(), &w, &inputs).unwrap();
        assert_eq!(got, want);
        assert_eq!(got["cache"].shape, vec![2, 2, 5, 4]);
        // decode: seq 1, past 5, so the symbolic reshape is bound again.
        let next = feed(&[
            ("tokens", Tensor::i32(vec![2, 1], vec![3, 8])),
            ("cache", got["cache"].clone()),
        ]);
        let got = run_kernels(&kg, &w, &next).unwrap();
        assert_eq!(got, interp::run(&sample_graph(), &w, &next).unwrap());
    }

    #[test]
    fn run_errors_name_the_problem_without_panicking() {
        let kg = sample();
        let w = sample_weights();
        let mut inputs = sample_inputs();
        inputs.remove("cache");
        let err = run_kernels(&kg, &w, &inputs).unwrap_err();
        assert!(err.to_string().contains("input `cache`"), "{err}");
        let mut short = sample_weights();
        short.remove("norm");
        let err = run_kernels(&kg, &short, &sample_inputs()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("kernel 2 (row_reduce") && msg.contains("`norm`"),
            "{msg}"
        );
        let mut broken = sample();
        broken.kernels[1].inputs[0] = BufferId(99);
        let err = run_kernels(&broken, &w, &sample_inputs()).unwrap_err();
        assert!(err.to_string().contains("b99 does not exist"), "{err}");
        broken.kernels.swap(1, 2);
        broken.kernels[2].output = BufferId(99);
        assert!(run_kernels(&broken, &w, &sample_inputs()).is_err());
    }

    #[test]
    fn verify_rejects_malformed_graphs() {
        let mut early = sample();
        early.kernels.swap(1, 2);
        rejects(&early, "reads b5 before it is written");

        let mut twice = sample();
        twice.kernels[3].output = BufferId(7);
        rejects(&twice, "writes b7 which is already written");
        let mut into_input = sample();
        into_input.kernels[4].output = BufferId(8);
        rejects(&into_input, "writes b8 which is already written");

        let mut mistyped = sample();
        mistyped.buffers[7].ty = ty(DType::F32, &["batch", "seq", "9"]);
        rejects(
            &mistyped,
            "body yields f32[batch, seq, 8] but the output is",
        );

        let mut out_of_range = sample();
        out_of_range.kernels[1].body[1].args[1] = BodyArg::Input(3);
        rejects(
            &out_of_range,
            "body op 1 (binary) has an argument out of range",
        );
        let mut forward = sample();
        forward.kernels[1].body[1].args[0] = BodyArg::Op(1);
        rejects(&forward, "out of range");

        let mut unwritten = sample();
        unwritten.kernels.pop();
        rejects(&unwritten, "output `cache` (b10) is never written");
        let mut empty = sample();
        empty.kernels[2].body.clear();
        rejects(&empty, "empty kernel body");
        let mut constant = sample();
        constant.kernels[1].body[1] = step(Op::Constant { value: 1.0 }, &[BodyArg::Op(0)]);
        rejects(&constant, "constant) takes no arguments");
    }

    #[test]
    fn launches() {
        let kg = sample();
        let launched: Vec<bool> = kg.kernels.iter().map(Kernel::is_launched).collect();
        assert_eq!(launched, [true, true, true, false, true]);
        assert_eq!(kg.launches_in(""), 4);
        assert_eq!(kg.launches_in("model.layers.0"), 3);
        assert_eq!(kg.launches_in("model.layers.0.attn"), 1);
        assert_eq!(kg.launches_in("model.layers.1"), 0);
    }

    fn kg(m: &mut Module) -> &mut KernelGraph {
        m.entries[0].kernels.as_mut().unwrap()
    }

    #[test]
    fn module_validate_checks_the_kernel_graph() {
        let module = sample_module(sample());
        module.validate().unwrap();
        let invalid = |edit: &dyn Fn(&mut Module), what: &str| {
            let mut m = module.clone();
            edit(&mut m);
            let err = m.validate().unwrap_err().to_string();
            assert!(
                err.contains("entry point `main`: kernels: ") && err.contains(what),
                "{err}"
            );
        };
        invalid(
            &|m| kg(m).kernels.swap(1, 2),
            "reads b5 before it is written",
        );
        invalid(
            &|m| kg(m).buffers[0].source = BufferSource::Input("ids".into()),
            "b0 reads input `ids`, which is not declared",
        );
        invalid(
            &|m| kg(m).buffers[0].ty = ty(DType::I8, &["batch", "seq"]),
            "b0 reads input `tokens` as i8[batch, seq] but it is i32[batch, seq]",
        );
        invalid(
            &|m| kg(m).buffers[4].source = BufferSource::Weight("bias".into()),
            "b4 reads weight `bias`, which is not declared",
        );
        // A broadcasting bias of one element still type-checks in the body, not in the module.
        invalid(
            &|m| kg(m).buffers[4].ty = ty(DType::F32, &["1"]),
            "b4 reads weight `b1` as f32[1] but it is f32[8]",
        );
        invalid(
            &|m| kg(m).outputs[0].0 = "z".into(),
            "output `y` is missing",
        );
        invalid(
            &|m| kg(m).outputs.push(("x".into(), BufferId(2))),
            "yields `x`, which the graph does not",
        );
        invalid(
            &|m| kg(m).outputs.push(("y".into(), BufferId(5))),
            "yields `y` twice",
        );
        invalid(
            &|m| kg(m).outputs[0].1 = BufferId(2),
            "output `y` is f32[batch, seq, 4] but the graph yields f32[batch, seq, 8]",
        );
    }

    #[test]
    fn derived_weights_must_be_declared_with_their_body_type() {
        let mut with_derived = sample();
        with_derived.derived_weights.push(DerivedWeight {
            name: "w1x2".into(),
            sources: vec!["w1".into(), "w1".into()],
            body: vec![step(
                Op::Concat { axis: 0 },
                &[BodyArg::Input(0), BodyArg::Input(1)],
            )],
        });
        let mut module = sample_module(with_derived);
        let err = module.validate().unwrap_err().to_string();
        assert!(
            err.contains("`w1x2` is not declared (not materialized)"),
            "{err}"
        );
        module.weights.push(WeightSpec {
            name: "w1x2".into(),
            dtype: DType::F32,
            shape: vec![8, 4],
        });
        let err = module.validate().unwrap_err().to_string();
        assert!(
            err.contains("`w1x2` is declared f32[8, 4] but its body yields f32[16, 4]"),
            "{err}"
        );
        module.weights.last_mut().unwrap().shape = vec![16, 4];
        module.validate().unwrap();
        kg(&mut module).derived_weights[0].sources[1] = "w2".into();
        let err = module.validate().unwrap_err().to_string();
        assert!(
            err.contains("derived weight `w1x2`: source `w2` is not declared"),
            "{err}"
        );
    }

    #[test]
    fn serde_keeps_kernels_and_omits_none() {
        let module = sample_module(sample());
        let json = serde_json::to_string(&module).unwrap();
        let back: Module = serde_json::from_str(&json).unwrap();
        assert_eq!(back, module);
        let mut plain = module;
        plain.entries[0].kernels = None;
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("kernels"), "{json}");
        assert_eq!(serde_json::from_str::<Module>(&json).unwrap(), plain);
    }
}
