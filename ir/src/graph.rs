//! The tensor Graph: typed nodes in topological order, built through a builder that infers and
//! checks every node's type as it is added, and the Module that groups entry points sharing weights.

use crate::dim::shape_string;
use crate::kernel::{BufferSource, KernelGraph};
use crate::{infer, DType, Dim, IrError, Op, Shape};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Index of a node in its Graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// A node's result type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> TensorType {
        TensorType { dtype, shape }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, shape_string(&self.shape))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub ty: TensorType,
    /// Where in the model the node comes from (`model.layers.3.mlp`), for dumps and errors.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// A dataflow graph of one entry point. Nodes are appended in topological order; every node's
/// type is inferred (and checked) when it is added, so a Graph that exists is well typed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub outputs: Vec<(String, NodeId)>,
    #[serde(skip)]
    scope: String,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Sets the scope recorded on nodes added from now on.
    pub fn set_scope(&mut self, scope: impl Into<String>) {
        self.scope = scope.into();
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.node(id).ty
    }

    /// Adds a runtime input.
    pub fn input(&mut self, name: &str, dtype: DType, shape: Shape) -> NodeId {
        self.push(
            Op::Input { name: name.into() },
            vec![],
            TensorType::new(dtype, shape),
        )
    }

    /// Adds a reference to a module weight of the given (concrete) type.
    pub fn weight(&mut self, name: &str, dtype: DType, shape: &[usize]) -> NodeId {
        let shape = shape.iter().map(|&d| Dim::from(d)).collect();
        self.push(
            Op::Weight { name: name.into() },
            vec![],
            TensorType::new(dtype, shape),
        )
    }

    /// Adds a scalar constant.
    pub fn constant(&mut self, value: f64, dtype: DType) -> NodeId {
        self.push(
            Op::Constant { value },
            vec![],
            TensorType::new(dtype, vec![]),
        )
    }

    /// Adds an op whose type is inferred from its inputs; a mismatch is an error naming the node.
    pub fn add(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId, IrError> {
        if matches!(
            op,
            Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. }
        ) {
            return Err(self.error(&op, inputs, "leaf ops are added with input/weight/constant"));
        }
        if let Some(bad) = inputs.iter().find(|i| i.0 as usize >= self.nodes.len()) {
            return Err(self.error(&op, inputs, &format!("input {bad} does not exist")));
        }
        let types: Vec<&TensorType> = inputs.iter().map(|&i| self.ty(i)).collect();
        let ty = infer::infer(&op, &types).map_err(|msg| self.error(&op, inputs, &msg))?;
        Ok(self.push(op, inputs.to_vec(), ty))
    }

    /// Marks a node as a named output.
    pub fn output(&mut self, name: &str, id: NodeId) {
        self.outputs.push((name.into(), id));
    }

    pub fn output_node(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    /// Input nodes by name.
    pub fn inputs(&self) -> impl Iterator<Item = (&str, NodeId)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Input { name } => Some((name.as_str(), NodeId(i as u32))),
                _ => None,
            })
    }

    /// Names of the weights this graph reads.
    pub fn weight_names(&self) -> BTreeSet<&str> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Weight { name } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Checks a graph that did not come from the builder (e.g. deserialized): inputs precede their
    /// users and every stored type equals the inferred one.
    pub fn verify(&self) -> Result<(), IrError> {
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(bad) = node.inputs.iter().find(|x| x.0 as usize >= i) {
                return Err(self.error(
                    &node.op,
                    &node.inputs,
                    &format!("input {bad} is not defined before %{i}"),
                ));
            }
            if matches!(
                node.op,
                Op::Input { .. } | Op::Weight { .. } | Op::Constant { .. }
            ) {
                continue;
            }
            let types: Vec<&TensorType> = node.inputs.iter().map(|&x| self.ty(x)).collect();
            let ty = infer::infer(&node.op, &types)
                .map_err(|m| self.error(&node.op, &node.inputs, &m))?;
            if ty != node.ty {
                let msg = format!("stored type {} differs from inferred {ty}", node.ty);
                return Err(self.error(&node.op, &node.inputs, &msg));
            }
        }
        for (name, id) in &self.outputs {
            if id.0 as usize >= self.nodes.len() {
                return Err(IrError::Invalid(format!(
                    "output `{name}` refers to missing node {id}"
                )));
            }
        }
        Ok(())
    }

    /// Binds the symbols of the input shapes from concrete input shapes: a declared dim that is a
    /// lone symbol takes the actual size; every other dim is checked against the binding.
    pub fn bind_dims(
        &self,
        actual: &BTreeMap<String, Vec<usize>>,
    ) -> Result<crate::DimEnv, IrError> {
        let declared: Vec<(&str, &Shape)> = self
            .inputs()
            .map(|(name, id)| (name, &self.ty(id).shape))
            .collect();
        bind_dims(&declared, actual)
    }

    fn push(&mut self, op: Op, inputs: Vec<NodeId>, ty: TensorType) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            op,
            inputs,
            ty,
            scope: self.scope.clone(),
        });
        id
    }

    fn error(&self, op: &Op, inputs: &[NodeId], msg: &str) -> IrError {
        let args: Vec<String> = inputs
            .iter()
            .map(|&i| match self.nodes.get(i.0 as usize) {
                Some(n) => format!("{i}: {}", n.ty),
                None => i.to_string(),
            })
            .collect();
        IrError::Type {
            node: format!("%{} {}", self.nodes.len(), op.name()),
            scope: self.scope.clone(),
            message: format!("{msg} (inputs: {})", args.join(", ")),
        }
    }
}

/// Binds the symbols of `declared` input shapes from the `actual` ones: a declared dim that is a
/// lone symbol takes the actual size; every other dim is checked against the binding. A missing
/// input, a rank or size that does not fit, or a symbol bound to two sizes is an
/// [`IrError::Binding`].
pub(crate) fn bind_dims(
    declared: &[(&str, &Shape)],
    actual: &BTreeMap<String, Vec<usize>>,
) -> Result<crate::DimEnv, IrError> {
    let mut env = crate::DimEnv::new();
    for &(name, decl) in declared {
        let shape = actual
            .get(name)
            .ok_or_else(|| IrError::Binding(format!("input `{name}` was not given")))?;
        if decl.len() != shape.len() {
            let msg = format!(
                "input `{name}` has rank {} but {} was declared",
                shape.len(),
                shape_string(decl)
            );
            return Err(IrError::Binding(msg));
        }
        for (d, &v) in decl.iter().zip(shape) {
            let mut syms = d.symbols();
            if let (Some(s), None) = (syms.next(), syms.next()) {
                if *d == Dim::sym(s) {
                    if let Some(prev) = env.insert(s.to_string(), v) {
                        if prev != v {
                            let msg = format!(
                                "symbol `{s}` is {prev} elsewhere but {v} in input `{name}`"
                            );
                            return Err(IrError::Binding(msg));
                        }
                    }
                }
            }
        }
    }
    for &(name, decl) in declared {
        let want = crate::dim::eval_shape(decl, &env).map_err(IrError::Binding)?;
        if want != actual[name] {
            let msg = format!(
                "input `{name}` has shape {:?}, declared {}",
                actual[name],
                shape_string(decl)
            );
            return Err(IrError::Binding(msg));
        }
    }
    Ok(env)
}

/// A weight the module declares: every entry point reading it sees this type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl WeightSpec {
    /// The type a Graph or kernel reading this weight must give it.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype, self.shape.iter().map(|&d| d.into()).collect())
    }
}

/// A tensor carried from one call of an entry point to the next (the KV cache): each entry point
/// has an input and an output of this name; the output becomes the next call's input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSpec {
    pub name: String,
    pub dtype: DType,
    /// Shape of the input, e.g. `[batch, kv_heads, past, head_dim]`.
    pub shape: Shape,
}

/// One callable graph of a module (`prefill`, `decode`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryPoint {
    pub name: String,
    /// The program as imported: always present, it defines the entry point's meaning.
    pub graph: Graph,
    /// The optimized program that computes the same outputs; what executors run when present.
    /// `None` (compiled with `--no-opt`) means the Graph itself runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<KernelGraph>,
    /// Code per target (DESIGN.md §6): for `--target cpu`, the LIR program of every kernel of
    /// `kernels`, index-aligned with `kernels.kernels`, which the runtime JIT-compiles at load. Empty for
    /// targets that execute the KernelGraph itself (reference) or for `--no-opt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_code: Vec<crate::lir::Program>,
    /// For `--target vulkan`, the SIMT LIR program of every kernel of `kernels`, index-aligned
    /// like `cpu_code`, lowered for the device capabilities the artifact was compiled for; the
    /// runtime writes it as SPIR-V for the device it opens (naga validates it there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_code: Vec<crate::lir::Program>,
}

/// What the runtime needs to know about the model beyond its graphs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The Hugging Face `model_type` (`llama`, `qwen2`, `gpt2`, …).
    pub architecture: String,
    pub vocab_size: usize,
    /// Longest sequence (prompt + generated) the model supports.
    pub max_context: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub num_layers: usize,
    pub hidden_size: usize,
}

/// Entry points that share one set of weights and one set of state tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Module {
    pub info: ModelInfo,
    pub weights: Vec<WeightSpec>,
    pub state: Vec<StateSpec>,
    pub entries: Vec<EntryPoint>,
}

impl Module {
    pub fn entry(&self, name: &str) -> Option<&EntryPoint> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn weight(&self, name: &str) -> Option<&WeightSpec> {
        self.weights.iter().find(|w| w.name == name)
    }

    /// Checks every entry point: graphs verify, weights they read are declared with the same type,
    /// every state tensor is both an input and an output of every entry point, a KernelGraph
    /// verifies and fits its Graph and the module's weights, and CPU code, when present, has one
    /// LIR kernel per kernel.
    pub fn validate(&self) -> Result<(), IrError> {
        for entry in &self.entries {
            let at = |msg: String| IrError::Invalid(format!("entry point `{}`: {msg}", entry.name));
            entry.graph.verify()?;
            // What executes must find its weights: the KernelGraph when there is one (the Graph
            // then only documents the entry point, and weights merged away may be gone).
            let graph_runs = entry.kernels.is_none();
            for node in entry.graph.nodes.iter().filter(|_| graph_runs) {
                if let Op::Weight { name } = &node.op {
                    let spec = self
                        .weight(name)
                        .ok_or_else(|| at(format!("weight `{name}` is not declared")))?;
                    if spec.ty() != node.ty {
                        return Err(at(format!(
                            "weight `{name}` is read as {} but declared {}",
                            node.ty,
                            spec.ty()
                        )));
                    }
                }
            }
            if let Some(kg) = &entry.kernels {
                self.validate_kernels(&entry.graph, kg)
                    .map_err(|m| at(format!("kernels: {m}")))?;
            }
            let kernel_count = entry.kernels.as_ref().map_or(0, |kg| kg.kernels.len());
            for (field, code) in [("cpu_code", &entry.cpu_code), ("gpu_code", &entry.gpu_code)] {
                if !code.is_empty() && code.len() != kernel_count {
                    return Err(at(format!(
                        "{field} has {} LIR programs for {kernel_count} kernels",
                        code.len()
                    )));
                }
                for program in code {
                    program.check().map_err(|e| at(format!("{field}: {e}")))?;
                }
            }
            for s in &self.state {
                if !entry.graph.inputs().any(|(n, _)| n == s.name) {
                    return Err(at(format!("state `{}` is not an input", s.name)));
                }
                if entry.graph.output_node(&s.name).is_none() {
                    return Err(at(format!("state `{}` is not an output", s.name)));
                }
            }
        }
        Ok(())
    }

    /// Checks a KernelGraph against the Graph it replaces and this module: it verifies, its input
    /// buffers are inputs of the Graph and its weight buffers declared weights (both with the
    /// same types), it yields the Graph's outputs by name and type, and each derived weight is
    /// declared — materialized by the compile driver — with the type its body yields.
    fn validate_kernels(&self, graph: &Graph, kg: &KernelGraph) -> Result<(), String> {
        let message = |e: IrError| match e {
            IrError::Invalid(m) => m,
            e => e.to_string(),
        };
        kg.verify().map_err(message)?;
        for (i, buffer) in kg.buffers.iter().enumerate() {
            let (what, name, ty) = match &buffer.source {
                BufferSource::Input(name) => {
                    let ty = graph
                        .inputs()
                        .find(|(n, _)| n == name)
                        .map(|(_, id)| graph.ty(id).clone());
                    ("input", name, ty)
                }
                BufferSource::Weight(name) => ("weight", name, self.weight(name).map(|w| w.ty())),
                BufferSource::Computed => continue,
            };
            let ty =
                ty.ok_or_else(|| format!("b{i} reads {what} `{name}`, which is not declared"))?;
            if ty != buffer.ty {
                return Err(format!(
                    "b{i} reads {what} `{name}` as {} but it is {ty}",
                    buffer.ty
                ));
            }
        }
        for (name, node) in &graph.outputs {
            let id = kg
                .outputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, id)| *id)
                .ok_or_else(|| format!("output `{name}` is missing"))?;
            if kg.buffer(id).ty != *graph.ty(*node) {
                return Err(format!(
                    "output `{name}` is {} but the graph yields {}",
                    kg.buffer(id).ty,
                    graph.ty(*node)
                ));
            }
        }
        for (i, (name, _)) in kg.outputs.iter().enumerate() {
            if graph.output_node(name).is_none() {
                return Err(format!("yields `{name}`, which the graph does not"));
            }
            if kg.outputs[..i].iter().any(|(n, _)| n == name) {
                return Err(format!("yields `{name}` twice"));
            }
        }
        for derived in &kg.derived_weights {
            let spec = self.weight(&derived.name).ok_or_else(|| {
                format!(
                    "derived weight `{}` is not declared (not materialized)",
                    derived.name
                )
            })?;
            let (body, out) = derived
                .body_graph(|n| self.weight(n).map(WeightSpec::ty))
                .map_err(message)?;
            if *body.ty(out) != spec.ty() {
                return Err(format!(
                    "derived weight `{}` is declared {} but its body yields {}",
                    derived.name,
                    spec.ty(),
                    body.ty(out)
                ));
            }
        }
        Ok(())
    }
}
