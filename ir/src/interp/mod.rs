//! The reference interpreter: runs any [`Graph`] on concrete tensors with f32 arithmetic, naively
//! and obviously right. It defines what every op means (DESIGN.md §3) and is the oracle every
//! optimizer rule, kernel and backend is tested against.
//!
//! Ops are grouped by idea: elementwise (unary, binary, select, cast, constants),
//! reductions, movement (reshape, permute, expand, slice, concat, gather, KV append), matmul (plain
//! and quantized), row normalizations (softmax, RMSNorm, LayerNorm), RoPE and attention.

mod attention;
mod elementwise;
mod layout;
mod matmul;
mod movement;
mod norm;
mod reduce;
mod rope;
mod tensor;

#[cfg(test)]
pub(crate) mod testutil;

pub use tensor::{Tensor, TensorData};

use crate::{eval_shape, DimEnv, Graph, IrError, Node, Op};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// Where the interpreter finds weights by name.
pub trait Weights {
    fn weight(&self, name: &str) -> Option<&Tensor>;
}

impl Weights for HashMap<String, Tensor> {
    fn weight(&self, name: &str) -> Option<&Tensor> {
        self.get(name)
    }
}

impl Weights for BTreeMap<String, Tensor> {
    fn weight(&self, name: &str) -> Option<&Tensor> {
        self.get(name)
    }
}

/// Runs `graph`: binds symbolic dims from the actual input shapes (an input that is missing or
/// whose shape does not fit its declaration is an [`IrError::Binding`]), evaluates every node in
/// order, freeing intermediate values after their last use, and returns the named outputs.
///
/// Nothing a caller passes makes it panic: a missing weight, a weight or input whose dtype or
/// shape differs from its declaration, an id out of range, … are [`IrError::Eval`] errors naming
/// the node, e.g. `%12 gather in model.layers.0: id 900 out of range for table of 512 rows`.
pub fn run(
    graph: &Graph,
    weights: &dyn Weights,
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>, IrError> {
    let shapes = inputs
        .iter()
        .map(|(name, t)| (name.clone(), t.shape.clone()))
        .collect();
    let env = graph.bind_dims(&shapes)?;
    let last_use = last_uses(graph);
    let mut values: Vec<Option<Cow<Tensor>>> = vec![None; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let value = eval_node(node, &values, weights, inputs, &env).map_err(|msg| {
            let scope = if node.scope.is_empty() {
                String::new()
            } else {
                format!(" in {}", node.scope)
            };
            IrError::Eval(format!("%{i} {}{scope}: {msg}", node.op.name()))
        })?;
        values[i] = Some(value);
        for x in node.inputs.iter().map(|x| x.0 as usize).chain([i]) {
            if last_use.get(x) == Some(&i) {
                values[x] = None;
            }
        }
    }
    let mut outputs = BTreeMap::new();
    for (name, id) in &graph.outputs {
        let value = values
            .get(id.0 as usize)
            .and_then(|v| v.as_deref())
            .ok_or_else(|| IrError::Eval(format!("output `{name}` refers to missing node {id}")))?;
        outputs.insert(name.clone(), value.clone());
    }
    Ok(outputs)
}

/// For each node, the index of the last node reading it: itself when nothing does, `usize::MAX`
/// for outputs (kept to the end).
fn last_uses(graph: &Graph) -> Vec<usize> {
    let mut last: Vec<usize> = (0..graph.nodes.len()).collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        for x in &node.inputs {
            if let Some(l) = last.get_mut(x.0 as usize) {
                *l = (*l).max(i);
            }
        }
    }
    for (_, id) in &graph.outputs {
        if let Some(l) = last.get_mut(id.0 as usize) {
            *l = usize::MAX;
        }
    }
    last
}

/// Evaluates one node; inputs and weights are borrowed, computed values owned.
fn eval_node<'a>(
    node: &Node,
    values: &[Option<Cow<'a, Tensor>>],
    weights: &'a dyn Weights,
    inputs: &'a BTreeMap<String, Tensor>,
    env: &DimEnv,
) -> Result<Cow<'a, Tensor>, String> {
    let shape = eval_shape(&node.ty.shape, env)?;
    let leaf = match &node.op {
        Op::Input { name } => Some(("input", name, inputs.get(name))),
        Op::Weight { name } => Some(("weight", name, weights.weight(name))),
        _ => None,
    };
    if let Some((kind, name, found)) = leaf {
        let t = found.ok_or_else(|| format!("{kind} `{name}` is missing"))?;
        t.check().map_err(|e| format!("{kind} `{name}`: {e}"))?;
        if t.dtype != node.ty.dtype || t.shape != shape {
            return Err(format!(
                "{kind} `{name}` is {} but {}{shape:?} was declared",
                t.describe(),
                node.ty.dtype
            ));
        }
        return Ok(Cow::Borrowed(t));
    }
    let args = node
        .inputs
        .iter()
        .map(|x| {
            values
                .get(x.0 as usize)
                .and_then(|v| v.as_deref())
                .ok_or_else(|| format!("input {x} has no value (not computed before this node)"))
        })
        .collect::<Result<Vec<&Tensor>, String>>()?;
    let out = eval_op(node, &args, &shape, env)?.conform(node.ty.dtype)?;
    if out.shape != shape {
        return Err(format!(
            "computed shape {:?} differs from the declared {shape:?}",
            out.shape
        ));
    }
    Ok(Cow::Owned(out))
}

/// The `N` inputs of an op, or an error when the node has another number.
fn take<'t, const N: usize>(args: &[&'t Tensor]) -> Result<[&'t Tensor; N], String> {
    args.try_into()
        .map_err(|_| format!("takes {N} inputs, got {}", args.len()))
}

/// Computes a non-leaf op. `shape` is the node's declared shape, evaluated; ops that cannot
/// derive their shape from their inputs (reshape, expand) take it from there.
fn eval_op(node: &Node, args: &[&Tensor], shape: &[usize], env: &DimEnv) -> Result<Tensor, String> {
    let dtype = node.ty.dtype;
    match &node.op {
        Op::Input { .. } | Op::Weight { .. } => Err("leaf op evaluated as a computation".into()),
        Op::Constant { value } => elementwise::constant(*value, dtype),
        Op::Unary(op) => elementwise::unary(*op, take::<1>(args)?[0]),
        Op::Binary(op) => {
            let [a, b] = take(args)?;
            elementwise::binary(*op, a, b)
        }
        Op::Select => {
            let [c, a, b] = take(args)?;
            elementwise::select(c, a, b)
        }
        Op::Cast { to } => elementwise::cast(take::<1>(args)?[0], *to),
        Op::Reduce {
            op,
            axes,
            keep_dims,
        } => reduce::reduce(take::<1>(args)?[0], *op, axes, *keep_dims),
        Op::Reshape { .. } => movement::reshape(take::<1>(args)?[0], shape),
        Op::Permute { perm } => movement::permute(take::<1>(args)?[0], perm),
        Op::Expand { .. } => movement::expand(take::<1>(args)?[0], shape),
        Op::Slice { axis, start, end } => {
            let start = start.eval(env)?;
            let end = end.eval(env)?;
            movement::slice(take::<1>(args)?[0], *axis, start, end)
        }
        Op::Concat { axis } => movement::concat(args, *axis),
        Op::Gather => {
            let [table, ids] = take(args)?;
            movement::gather(table, ids)
        }
        Op::MatMul { transpose_b } | Op::QuantMatMul { transpose_b } => {
            let [a, b] = take(args)?;
            matmul::matmul(a, b, *transpose_b)
        }
        Op::Dequantize => {
            let [w] = take(args)?;
            if !w.dtype.is_quantized() {
                return Err(format!(
                    "dequantize needs q8_0 or q4_0, got {}",
                    w.describe()
                ));
            }
            Ok(Tensor::f32(w.shape.clone(), w.to_f32()?))
        }
        Op::Softmax => norm::softmax(take::<1>(args)?[0]),
        Op::RmsNorm { eps } => {
            let [x, w] = take(args)?;
            norm::rms_norm(x, w, *eps)
        }
        Op::LayerNorm { eps } => {
            let [x, w, b] = take(args)?;
            norm::layer_norm(x, w, b, *eps)
        }
        Op::Rope { layout } => {
            let [x, pos, inv_freq] = take(args)?;
            rope::rope(x, pos, inv_freq, *layout)
        }
        Op::Attention {
            scale,
            causal,
            window,
        } => {
            let (qkv, mask) = match args {
                [q, k, v, mask] => ([*q, *k, *v], Some(*mask)),
                _ => (take::<3>(args)?, None),
            };
            let [q, k, v] = qkv;
            attention::attention(q, k, v, mask, *scale, *causal, *window)
        }
        Op::KvAppend => {
            let [cache, new] = take(args)?;
            movement::kv_append(cache, new)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::{BinaryOp, DType, Dim, Op, UnaryOp};

    fn add_graph() -> Graph {
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, vec![Dim::sym("n")]);
        let w = g.weight("w", DType::F32, &[1]);
        let y = g.add(Op::Binary(BinaryOp::Add), &[x, w]).unwrap();
        g.output("y", y);
        g
    }

    #[test]
    fn runs_and_binds_symbols() {
        let w = weights(&[("w", Tensor::f32(vec![1], vec![10.0]))]);
        let out = run(
            &add_graph(),
            &w,
            &feed(&[("x", Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]))]),
        );
        assert_eq!(out.unwrap()["y"].as_f32(), Some(&[11.0, 12.0, 13.0][..]));
    }

    #[test]
    fn missing_input_is_named() {
        let w = weights(&[("w", Tensor::f32(vec![1], vec![10.0]))]);
        let err = run(&add_graph(), &w, &feed(&[])).unwrap_err();
        assert!(matches!(err, IrError::Binding(_)), "{err}");
        assert!(err.to_string().contains("input `x`"), "{err}");
    }

    #[test]
    fn wrong_input_rank_and_dtype() {
        let w = weights(&[("w", Tensor::f32(vec![1], vec![10.0]))]);
        let x = Tensor::f32(vec![1, 3], vec![0.0; 3]);
        let err = run(&add_graph(), &w, &feed(&[("x", x)])).unwrap_err();
        assert!(err.to_string().contains("rank 2"), "{err}");
        let x = Tensor::i32(vec![3], vec![0; 3]);
        let err = run(&add_graph(), &w, &feed(&[("x", x)])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("%0 input") && msg.contains("i32[3]"), "{msg}");
        let torn = Tensor {
            dtype: DType::F32,
            shape: vec![3],
            data: TensorData::F32(vec![0.0; 2]),
        };
        let err = run(&add_graph(), &w, &feed(&[("x", torn)])).unwrap_err();
        assert!(err.to_string().contains("holds 2 items"), "{err}");
    }

    #[test]
    fn missing_or_mistyped_weight() {
        let x = || feed(&[("x", Tensor::f32(vec![2], vec![1.0, 2.0]))]);
        let err = run(&add_graph(), &weights(&[]), &x()).unwrap_err();
        assert!(
            err.to_string().contains("%1 weight: weight `w` is missing"),
            "{err}"
        );
        let w = weights(&[("w", Tensor::f32(vec![2], vec![1.0, 2.0]))]);
        let err = run(&add_graph(), &w, &x()).unwrap_err();
        assert!(
            err.to_string().contains("f32[2] but f32[1] was declared"),
            "{err}"
        );
        let w = weights(&[("w", Tensor::i32(vec![1], vec![1]))]);
        assert!(run(&add_graph(), &w, &x()).is_err());
    }

    #[test]
    fn outputs_survive_later_uses_and_hashmap_weights() {
        let mut g = Graph::new();
        g.set_scope("block");
        let x = g.input("x", DType::F32, vec![Dim::c(2)]);
        let e = g.add(Op::Unary(UnaryOp::Neg), &[x]).unwrap();
        let f = g.add(Op::Unary(UnaryOp::Abs), &[e]).unwrap();
        g.output("neg", e);
        g.output("abs", f);
        g.output("x", x);
        let w: HashMap<String, Tensor> = HashMap::new();
        let out = run(
            &g,
            &w,
            &feed(&[("x", Tensor::f32(vec![2], vec![1.0, -2.0]))]),
        )
        .unwrap();
        assert_eq!(out["neg"].as_f32(), Some(&[-1.0, 2.0][..]));
        assert_eq!(out["abs"].as_f32(), Some(&[1.0, 2.0][..]));
        assert_eq!(out["x"].as_f32(), Some(&[1.0, -2.0][..]));
    }

    #[test]
    fn f16_nodes_round_their_results() {
        let mut g = Graph::new();
        let x = g.input("x", DType::F16, vec![Dim::c(2)]);
        let c = g.constant(0.0001, DType::F16);
        let y = g.add(Op::Binary(BinaryOp::Add), &[x, c]).unwrap();
        g.output("y", y);
        let x = Tensor {
            dtype: DType::F16,
            shape: vec![2],
            data: TensorData::F32(vec![1.0, 0.0]),
        };
        let out = run(&g, &weights(&[]), &feed(&[("x", x)])).unwrap();
        // 1 + 1e-4 rounds back to 1 in f16; the constant itself is f16(1e-4).
        let want = half::f16::from_f32(0.0001).to_f32();
        assert_eq!(out["y"].as_f32(), Some(&[1.0, want][..]));
        assert_eq!(out["y"].dtype, DType::F16);
    }
}
