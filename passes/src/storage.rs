//! How the artifact stores a weight when that differs from the checkpoint, and the Graph rewrite
//! that reads it so: another dtype (block-quantized, read through `Dequantize`) and the `[N, K]` projection layout every matmul
//! template reads. GPT-2's `Conv1D` keeps its weights `[K, N]` (`x @ W`); the artifact stores
//! them transposed, as llama.cpp's converter does, so they take the same kernels (and `--quant`)
//! as every other projection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use tessera_ir::{eval_shape, DType, DimEnv, Graph, IrError, Module, NodeId, Op};

/// A weight's stored form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storage {
    pub dtype: DType,
    /// Stored `[N, K]` where the checkpoint has `[K, N]` (only for [`untransposed_projections`]).
    pub transposed: bool,
}

impl Storage {
    /// Stored in `dtype`, in the checkpoint's layout.
    pub fn as_dtype(dtype: DType) -> Storage {
        Storage {
            dtype,
            transposed: false,
        }
    }
}

/// The 2-D weights of `module` whose every use, in every entry point, is the `[K, N]` right-hand
/// side of a `MatMul { transpose_b: false }` (GPT-2's `Conv1D`).
pub fn untransposed_projections(module: &Module) -> BTreeSet<String> {
    let mut candidates: BTreeSet<String> = module
        .weights
        .iter()
        .filter(|w| w.shape.len() == 2 && !w.dtype.is_quantized())
        .map(|w| w.name.clone())
        .collect();
    for entry in &module.entries {
        let g = &entry.graph;
        for (i, node) in g.nodes.iter().enumerate() {
            for (slot, &input) in node.inputs.iter().enumerate() {
                if let Op::Weight { name } = &g.node(input).op {
                    if !(node.op == (Op::MatMul { transpose_b: false }) && slot == 1) {
                        candidates.remove(name);
                    }
                }
            }
            if let Op::Weight { name } = &node.op {
                if g.outputs.iter().any(|(_, o)| o.0 as usize == i) {
                    candidates.remove(name);
                }
            }
        }
    }
    candidates
}

/// `g` reading each weight named in `stored` in its stored form: a block-quantized one through
/// `Dequantize` (which yields f32), a float one directly, a transposed one by the matmuls that
/// use it with `transpose_b` set. Every other node computes what it did.
pub fn store_weights(g: &Graph, stored: &BTreeMap<String, Storage>) -> Result<Graph, IrError> {
    let mut out = Graph::new();
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let transposed = |id: &NodeId| match &g.node(*id).op {
        Op::Weight { name } => stored.get(name).is_some_and(|s| s.transposed),
        _ => false,
    };
    for (i, node) in g.nodes.iter().enumerate() {
        out.set_scope(node.scope.clone());
        let new = match &node.op {
            Op::Input { name } => out.input(name, node.ty.dtype, node.ty.shape.clone()),
            Op::Weight { name } => {
                let mut shape = eval_shape(&node.ty.shape, &DimEnv::new()).map_err(|m| {
                    IrError::Invalid(format!("weight `{name}` has a symbolic shape: {m}"))
                })?;
                match stored.get(name) {
                    Some(s) => {
                        if s.transposed {
                            shape.reverse();
                        }
                        let w = out.weight(name, s.dtype, &shape);
                        if s.dtype.is_quantized() {
                            out.add(Op::Dequantize, &[w])?
                        } else {
                            w
                        }
                    }
                    None => out.weight(name, node.ty.dtype, &shape),
                }
            }
            Op::Constant { value } => out.constant(*value, node.ty.dtype),
            op => {
                let inputs: Vec<NodeId> = node.inputs.iter().map(|n| map[n]).collect();
                let op = match op {
                    Op::MatMul { transpose_b: false }
                        if node.inputs.get(1).is_some_and(transposed) =>
                    {
                        Op::MatMul { transpose_b: true }
                    }
                    op => op.clone(),
                };
                out.add(op, &inputs)?
            }
        };
        map.insert(NodeId(i as u32), new);
    }
    for (name, id) in &g.outputs {
        out.output(name, map[id]);
    }
    Ok(out)
}

/// `values`, a row-major `[rows, cols]` matrix of `elem_bytes`-byte elements, as `[cols, rows]`.
pub fn transpose_bytes(values: &[u8], rows: usize, cols: usize, elem_bytes: usize) -> Vec<u8> {
    let mut out = vec![0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            let from = (r * cols + c) * elem_bytes;
            let to = (c * rows + r) * elem_bytes;
            out[to..to + elem_bytes].copy_from_slice(&values[from..from + elem_bytes]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_ir::interp::{self, Tensor};
    use tessera_ir::Dim;

    /// `y = x @ w + b` (a Conv1D), and `v` used both as a Conv1D and transposed the other way.
    fn conv1d_module() -> Module {
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, vec![Dim::sym("seq"), Dim::from(3)]);
        let w = g.weight("w", DType::F32, &[3, 5]);
        let v = g.weight("v", DType::F32, &[3, 3]);
        let y = g.add(Op::MatMul { transpose_b: false }, &[x, w]).unwrap();
        let z = g.add(Op::MatMul { transpose_b: false }, &[x, v]).unwrap();
        let z = g.add(Op::MatMul { transpose_b: true }, &[z, v]).unwrap();
        g.output("y", y);
        g.output("z", z);
        crate::test_module::single_entry("prefill", g)
    }

    #[test]
    fn only_weights_used_solely_as_conv1d_are_transposed() {
        let names = untransposed_projections(&conv1d_module());
        assert_eq!(names, BTreeSet::from(["w".to_string()]));
    }

    #[test]
    fn the_transposed_weight_computes_the_same_function() {
        let m = conv1d_module();
        let stored = BTreeMap::from([(
            "w".to_string(),
            Storage {
                dtype: DType::F32,
                transposed: true,
            },
        )]);
        let g = store_weights(&m.entries[0].graph, &stored).unwrap();
        g.verify().unwrap();
        let w: Vec<f32> = (0..15).map(|i| i as f32 * 0.5 - 3.0).collect();
        let v: Vec<f32> = (0..9).map(|i| 1.0 - i as f32 * 0.25).collect();
        let w_t = transpose_bytes(
            &Tensor::f32(vec![3, 5], w.clone()).to_le_bytes().unwrap(),
            3,
            5,
            4,
        );
        let w_t = Tensor::from_le_bytes(DType::F32, vec![5, 3], &w_t, "w").unwrap();
        let x = Tensor::f32(vec![2, 3], vec![0.5, -1.0, 2.0, 1.5, 0.25, -0.75]);
        let run = |g: &Graph, w: Tensor| {
            let weights: BTreeMap<String, Tensor> = [
                ("w".to_string(), w),
                ("v".to_string(), Tensor::f32(vec![3, 3], v.clone())),
            ]
            .into();
            interp::run(g, &weights, &[("x".to_string(), x.clone())].into()).unwrap()
        };
        let (got, want) = (
            run(&g, w_t),
            run(&m.entries[0].graph, Tensor::f32(vec![3, 5], w)),
        );
        assert_eq!(got, want);
    }
}
