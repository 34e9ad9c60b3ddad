//! The optimizer on real architectures: what it chooses must follow the shapes the way the cost
//! model says (GEMV → FlatGEMM → GEMM as M grows; FlashDecoding splits the KV length when it is
//! long), a Llama block must fit in seven decode kernels, and identical blocks are optimized once.

use tessera_ir::kernel::{KernelGraph, KernelKind};
use tessera_ir::{DimEnv, Module};
use tessera_models::{build_module, ModelConfig};
use tessera_passes::cost::{Roofline, TargetSpec};
use tessera_passes::optimize::{default_bucket, optimize_entry, optimize_module};

/// TinyLlama-1.1B's block shapes (hidden 2048, 32/4 heads, ffn 5632, vocab 32000), two layers.
fn tinyllama(layers: usize) -> Module {
    build_module(&ModelConfig::llama(32000, 2048, 5632, layers, 32, 4)).unwrap()
}

fn optimize(
    module: &Module,
    entry: &str,
    target: &TargetSpec,
    bucket: &[(&str, usize)],
) -> KernelGraph {
    let ep = module.entry(entry).unwrap();
    let mut env: DimEnv = default_bucket(entry, &module.info);
    env.extend(bucket.iter().map(|(k, v)| (k.to_string(), *v)));
    optimize_entry(
        ep,
        target,
        &Roofline {
            target: target.clone(),
        },
        &env,
    )
    .unwrap()
    .0
}

fn layer0(kg: &KernelGraph) -> Vec<&KernelKind> {
    kg.kernels
        .iter()
        .filter(|k| k.is_launched() && k.scope == "model.layers.0")
        .map(|k| &k.kind)
        .collect()
}

#[test]
fn a_llama_block_decodes_in_seven_kernels_and_blocks_are_optimized_once() {
    let mut module = tinyllama(3);
    let target = TargetSpec::cpu_host();
    let reports = optimize_module(
        &mut module,
        &target,
        &Roofline {
            target: target.clone(),
        },
    )
    .unwrap();
    let decode = reports.iter().find(|r| r.entry == "decode").unwrap();
    assert!(
        decode.kernels_per_layer <= 7,
        "decode needs {} kernels per block",
        decode.kernels_per_layer
    );
    let blocks: Vec<_> = decode
        .segments
        .iter()
        .filter(|s| !s.layers.is_empty())
        .collect();
    assert_eq!(blocks.len(), 1, "one optimization shared by every block");
    assert_eq!(blocks[0].layers, vec![0, 1, 2]);
    for s in &decode.segments {
        for p in &s.phases {
            assert_eq!(
                p.stop_reason,
                "saturated",
                "{} {} stopped by {}",
                s.scope,
                p.phase.name(),
                p.stop_reason
            );
        }
    }
    // Q/K/V and gate/up run on weights concatenated at compile time.
    assert!(module.entries.iter().all(|e| e
        .kernels
        .as_ref()
        .is_some_and(|k| !k.derived_weights.is_empty())));
}

/// The template most of a block's matmuls use at M rows.
fn dominant_matmul(module: &Module, target: &TargetSpec, m: usize) -> &'static str {
    let kg = optimize(module, "prefill", target, &[("seq", m)]);
    let names: Vec<&str> = layer0(&kg)
        .into_iter()
        .map(|k| k.name())
        .filter(|n| matches!(*n, "gemv" | "flat_gemm" | "gemm"))
        .collect();
    ["gemv", "flat_gemm", "gemm"]
        .into_iter()
        .max_by_key(|kind| names.iter().filter(|n| *n == kind).count())
        .unwrap()
}

#[test]
fn matmul_template_follows_m() {
    let module = tinyllama(1);
    for target in [TargetSpec::cpu_host(), TargetSpec::sm_90()] {
        let chosen: Vec<&str> = [1, 16, 512]
            .into_iter()
            .map(|m| dominant_matmul(&module, &target, m))
            .collect();
        assert_eq!(
            chosen,
            ["gemv", "flat_gemm", "gemm"],
            "{}: templates at M = 1, 16, 512",
            target.name
        );
    }
}

#[test]
fn decode_attention_splits_long_kv() {
    let module = tinyllama(1);
    for target in [TargetSpec::cpu_host(), TargetSpec::sm_90()] {
        let splits = |past: usize| {
            let kg = optimize(&module, "decode", &target, &[("past", past)]);
            layer0(&kg)
                .into_iter()
                .find_map(|k| match k {
                    KernelKind::FlashDecoding { splits } => Some(*splits),
                    _ => None,
                })
                .expect("decode attention is FlashDecoding")
        };
        assert!(
            splits(2047) > 1,
            "{}: long KV, small batch → several splits",
            target.name
        );
        assert_eq!(splits(16), 1, "{}: short KV → one split", target.name);
    }
    let prefill = optimize(&module, "prefill", &TargetSpec::cpu_host(), &[]);
    assert!(layer0(&prefill)
        .iter()
        .any(|k| matches!(k, KernelKind::FlashAttention { .. })));
}
