//! `tessera compile --quant q8_0|q4_0`: which weights a model stores block-quantized
//! ([`crate::storage`] rewrites the Graph to read them through `Dequantize`). The optimizer then recognizes
//! `matmul(x, dequantize(w))` as `quant_matmul` and selects QGEMV/QGEMM kernels, so the
//! dequantization happens in registers, never in memory.
//!
//! Quantized: every 2-D float weight whose every use, in every entry point, is the `[N, K]`
//! right-hand side of a `MatMul { transpose_b: true }` with `K` a multiple of the block — the
//! projections and an untied LM head. Embedding tables (read by `Gather`, one row per token),
//! norms and biases keep their dtype, as llama.cpp's quantizations keep the norms; a tied
//! embedding is both a gather table and the head, so it stays unquantized too.

use std::collections::BTreeSet;
use tessera_ir::{DType, Module, Op, QK};

/// The weights of `module` that `--quant` stores block-quantized (see the module doc).
pub fn quantizable_weights(module: &Module) -> BTreeSet<String> {
    let mut candidates: BTreeSet<String> = module
        .weights
        .iter()
        .filter(|w| {
            matches!(w.dtype, DType::F32 | DType::F16 | DType::Bf16)
                && matches!(w.shape.as_slice(), [_, k] if k % QK == 0)
        })
        .map(|w| w.name.clone())
        .collect();
    for entry in &module.entries {
        let g = &entry.graph;
        for (i, node) in g.nodes.iter().enumerate() {
            for (slot, &input) in node.inputs.iter().enumerate() {
                if let Op::Weight { name } = &g.node(input).op {
                    let projection = node.op == (Op::MatMul { transpose_b: true }) && slot == 1;
                    if !projection {
                        candidates.remove(name);
                    }
                }
            }
            // A weight that is itself an output is read as is.
            if let Op::Weight { name } = &node.op {
                if g.outputs.iter().any(|(_, o)| o.0 as usize == i) {
                    candidates.remove(name);
                }
            }
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{store_weights, Storage};
    use std::collections::BTreeMap;
    use tessera_ir::interp::{self, Tensor};
    use tessera_ir::{Dim, Graph};

    /// `logits = (embed[tokens]) @ head^T`, plus `proj` used once as a projection and once
    /// transposed the other way.
    fn module() -> Module {
        let mut g = Graph::new();
        let tokens = g.input("tokens", DType::I32, vec![Dim::from(2)]);
        let embed = g.weight("embed", DType::F32, &[8, 64]);
        let head = g.weight("head", DType::F16, &[5, 64]);
        let norm = g.weight("norm", DType::F32, &[64]);
        let x = g.add(Op::Gather, &[embed, tokens]).unwrap();
        let x = g.add(Op::RmsNorm { eps: 1e-5 }, &[x, norm]).unwrap();
        let logits = g.add(Op::MatMul { transpose_b: true }, &[x, head]).unwrap();
        let tied = g
            .add(Op::MatMul { transpose_b: true }, &[x, embed])
            .unwrap();
        g.output("logits", logits);
        g.output("tied", tied);
        crate::test_module::single_entry("decode", g)
    }

    #[test]
    fn only_projection_weights_are_quantized() {
        let m = module();
        let names = quantizable_weights(&m);
        assert_eq!(names, BTreeSet::from(["head".to_string()]));
    }

    #[test]
    fn the_rewritten_graph_reads_the_quantized_weight_through_dequantize() {
        let m = module();
        let names = quantizable_weights(&m);
        let stored = names
            .into_iter()
            .map(|n| (n, Storage::as_dtype(DType::Q8_0)))
            .collect();
        let g = store_weights(&m.entries[0].graph, &stored).unwrap();
        g.verify().unwrap();
        let head = g
            .nodes
            .iter()
            .position(|n| {
                n.op == (Op::Weight {
                    name: "head".into(),
                })
            })
            .unwrap();
        assert_eq!(g.nodes[head].ty.dtype, DType::Q8_0);
        assert_eq!(g.nodes[head + 1].op, Op::Dequantize);
        // Same function: the interpreter on the quantized head equals the interpreter on the
        // float graph with the head's dequantized values.
        let values: Vec<f32> = (0..5 * 64)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0)
            .collect();
        let quantized = Tensor::quantize(DType::Q8_0, vec![5, 64], &values).unwrap();
        let mut rounded = vec![0.0; values.len()];
        tessera_ir::quant::dequantize(DType::Q8_0, &quantized.to_le_bytes().unwrap(), &mut rounded)
            .unwrap();
        let embed: Vec<f32> = (0..8 * 64)
            .map(|i| ((i * 13 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let norm = vec![1.0; 64];
        let tokens = Tensor::i32(vec![2], vec![3, 6]);
        let run = |g: &Graph, head: Tensor| {
            let weights: BTreeMap<String, Tensor> = [
                ("embed".to_string(), Tensor::f32(vec![8, 64], embed.clone())),
                ("head".to_string(), head),
                ("norm".to_string(), Tensor::f32(vec![64], norm.clone())),
            ]
            .into();
            let inputs: BTreeMap<String, Tensor> = [("tokens".to_string(), tokens.clone())].into();
            interp::run(g, &weights, &inputs).unwrap()["logits"].clone()
        };
        let got = run(&g, quantized);
        let mut head = Tensor::f32(vec![5, 64], rounded);
        head.dtype = DType::F16;
        let want = run(&m.entries[0].graph, head);
        let (got, want) = (got.as_f32().unwrap(), want.as_f32().unwrap());
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
