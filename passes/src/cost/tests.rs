//! How the roofline ranks the candidate templates across shape buckets and targets.

use super::*;
use std::collections::HashMap;
use tessera_ir::kernel::BodyArg;
use tessera_ir::{DType, Dim, Op};

/// One kernel's body, input types and output type.
struct Body {
    body: Vec<BodyOp>,
    inputs: Vec<TensorType>,
    output: TensorType,
}

impl Body {
    fn estimate(&self, kind: &KernelKind, env: &DimEnv, target: &TargetSpec) -> Estimate {
        estimate(kind, &self.body, &self.inputs, &self.output, env, target)
    }

    /// The cheapest of `candidates` and its time.
    fn cheapest(
        &self,
        candidates: &[KernelKind],
        env: &DimEnv,
        target: &TargetSpec,
    ) -> (KernelKind, f64) {
        candidates
            .iter()
            .map(|k| (k.clone(), self.estimate(k, env, target).seconds))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("no candidates")
    }
}

fn shape(dims: &[&str]) -> Vec<Dim> {
    dims.iter()
        .map(|d| d.parse::<usize>().map_or_else(|_| Dim::sym(d), Dim::from))
        .collect()
}

fn step(op: Op, args: &[BodyArg]) -> BodyOp {
    BodyOp {
        op,
        args: args.to_vec(),
    }
}

fn env(bindings: &[(&str, usize)]) -> DimEnv {
    bindings.iter().map(|&(k, v)| (k.to_string(), v)).collect()
}

/// TinyLlama's q_proj: x f32 [batch, seq, 2048] · Wᵀ with W [2048, 2048] in `weight`.
fn q_proj(weight: DType) -> Body {
    let op = if weight.is_quantized() {
        Op::QuantMatMul { transpose_b: true }
    } else {
        Op::MatMul { transpose_b: true }
    };
    Body {
        body: vec![step(op, &[BodyArg::Input(0), BodyArg::Input(1)])],
        inputs: vec![
            TensorType::new(DType::F32, shape(&["batch", "seq", "2048"])),
            TensorType::new(weight, shape(&["2048", "2048"])),
        ],
        output: TensorType::new(DType::F32, shape(&["batch", "seq", "2048"])),
    }
}

/// TinyLlama's attention: 32 query heads over 4 KV heads of 64 dims, causal, over the cache.
fn attention(head_dim: usize) -> Body {
    let d = head_dim.to_string();
    Body {
        body: vec![step(
            Op::Attention {
                scale: 0.125,
                causal: true,
                window: None,
            },
            &[BodyArg::Input(0), BodyArg::Input(1), BodyArg::Input(2)],
        )],
        inputs: vec![
            TensorType::new(DType::F32, shape(&["batch", "32", "seq", &d])),
            TensorType::new(DType::F32, shape(&["batch", "4", "kv", &d])),
            TensorType::new(DType::F32, shape(&["batch", "4", "kv", &d])),
        ],
        output: TensorType::new(DType::F32, shape(&["batch", "32", "seq", &d])),
    }
}

/// Host-detected CPU, a 2-core AVX2 CPU (this project's CI class), a single SSE core, a 64-core
/// AVX-512 server, and the GPUs.
fn targets() -> Vec<TargetSpec> {
    vec![
        TargetSpec::cpu_host(),
        TargetSpec::cpu(2, 32, true),
        TargetSpec::cpu(1, 16, false),
        TargetSpec::cpu(64, 64, true),
        TargetSpec::sm_80(),
        TargetSpec::sm_90(),
    ]
}

fn rows(m: usize) -> DimEnv {
    env(&[("batch", 1), ("seq", m)])
}

#[test]
fn matmul_template_follows_m() {
    let body = q_proj(DType::F16);
    for target in targets() {
        let all = matmul_candidates(&target, None);
        let name = |m: usize| body.cheapest(&all, &rows(m), &target).0.name();
        assert_eq!(name(1), "gemv", "M = 1 on {target:?}");
        assert_eq!(name(8), "flat_gemm", "M = 8 on {target:?}");
        assert_eq!(name(512), "gemm", "M = 512 on {target:?}");
    }
    let sm_90 = TargetSpec::sm_90();
    let all = matmul_candidates(&sm_90, None);
    assert_eq!(body.cheapest(&all, &rows(4), &sm_90).0.name(), "flat_gemm");
}

#[test]
fn m_hint_keeps_the_cheapest() {
    let body = q_proj(DType::F16);
    for target in targets() {
        for m in [1, 8, 100, 512] {
            let hinted = matmul_candidates(&target, Some(m));
            let all = matmul_candidates(&target, None);
            assert!(hinted.len() <= all.len());
            let best = body.cheapest(&all, &rows(m), &target).1;
            assert_eq!(body.cheapest(&hinted, &rows(m), &target).1, best, "M = {m}");
        }
    }
}

#[test]
fn gemv_rereads_the_weight_per_row() {
    let body = q_proj(DType::F16);
    let gemv = KernelKind::Gemv {
        tile_n: 8,
        split_k: 1,
    };
    let target = TargetSpec::sm_90();
    let weight = 2048.0 * 2048.0 * 2.0;
    let one = body.estimate(&gemv, &rows(1), &target).bytes;
    let four = body.estimate(&gemv, &rows(4), &target).bytes;
    assert!(
        (four - one - 3.0 * weight).abs() < 4.0 * 2048.0 * 8.0,
        "{one} {four}"
    );
    let flat = KernelKind::FlatGemm {
        tile_n: 32,
        tile_k: 64,
    };
    let flat4 = body.estimate(&flat, &rows(4), &target);
    assert!(flat4.bytes < one + 4.0 * 2048.0 * 8.0);
    assert_eq!(flat4.flops, 2.0 * 8.0 * 2048.0 * 2048.0, "M pads to 8");
}

fn splits(kind: &KernelKind) -> u32 {
    match kind {
        KernelKind::FlashDecoding { splits } => *splits,
        other => panic!("not flash decoding: {other}"),
    }
}

#[test]
fn flash_decoding_splits_long_caches_only() {
    let body = attention(64);
    let decode = |t: usize| env(&[("batch", 1), ("seq", 1), ("kv", t)]);
    let best = |target: &TargetSpec, t: usize| {
        let all = attention_candidates(target, true, 64);
        splits(&body.cheapest(&all, &decode(t), target).0)
    };
    for target in targets() {
        let long = best(&target, 2048);
        if target.parallel_units > 1 {
            assert!(long > 1, "T = 2048 on {target:?}: splits {long}");
        } else {
            assert_eq!(long, 1, "one core gains nothing from splitting");
        }
        assert_eq!(best(&target, 16), 1, "T = 16 on {target:?}");
    }
}

#[test]
fn decode_prefers_flash_decoding_and_causal_halves_prefill() {
    let body = attention(64);
    let target = TargetSpec::sm_90();
    let decode = env(&[("batch", 1), ("seq", 1), ("kv", 2048)]);
    let fa = KernelKind::FlashAttention {
        block_q: 64,
        block_kv: 64,
    };
    let fd = KernelKind::FlashDecoding { splits: 32 };
    let (fa_decode, fd_decode) = (
        body.estimate(&fa, &decode, &target),
        body.estimate(&fd, &decode, &target),
    );
    assert!(
        fd_decode.bytes * 4.0 < fa_decode.bytes,
        "GQA group shares K/V"
    );
    assert!(fd_decode.seconds < fa_decode.seconds);

    let prefill = env(&[("batch", 1), ("seq", 2048), ("kv", 2048)]);
    let causal = body.estimate(&fa, &prefill, &target).flops;
    let mut full = attention(64);
    full.body[0].op = Op::Attention {
        scale: 0.125,
        causal: false,
        window: None,
    };
    let full = full.estimate(&fa, &prefill, &target).flops;
    assert!(
        causal < 0.55 * full && causal > 0.45 * full,
        "{causal} {full}"
    );
}

#[test]
fn infeasible_variants_are_infinite() {
    let mm = q_proj(DType::F16);
    let at = attention(64);
    let m1 = rows(1);
    let decode = env(&[("batch", 1), ("seq", 1), ("kv", 64)]);
    let vulkan = TargetSpec::vulkan_generic();
    let sm_90 = TargetSpec::sm_90();
    let cases = [
        (
            &mm,
            KernelKind::Gemm {
                tile_m: 128,
                tile_n: 128,
                tile_k: 64,
                stages: 3,
            },
            &m1,
            &vulkan,
        ),
        (
            &mm,
            KernelKind::Gemm {
                tile_m: 128,
                tile_n: 256,
                tile_k: 128,
                stages: 4,
            },
            &m1,
            &sm_90,
        ),
        (
            &mm,
            KernelKind::Gemm {
                tile_m: 32,
                tile_n: 64,
                tile_k: 32,
                stages: 0,
            },
            &m1,
            &sm_90,
        ),
        (
            &mm,
            KernelKind::Gemv {
                tile_n: 0,
                split_k: 1,
            },
            &m1,
            &sm_90,
        ),
        (
            &mm,
            KernelKind::FlatGemm {
                tile_n: 256,
                tile_k: 256,
            },
            &m1,
            &vulkan,
        ),
        (
            &mm,
            KernelKind::QGemv {
                format: DType::Q4_0,
                tile_n: 8,
                split_k: 1,
            },
            &m1,
            &sm_90,
        ),
        (&mm, KernelKind::FlashDecoding { splits: 4 }, &m1, &sm_90),
        (
            &at,
            KernelKind::FlashAttention {
                block_q: 128,
                block_kv: 128,
            },
            &decode,
            &vulkan,
        ),
        (
            &at,
            KernelKind::FlashDecoding { splits: 0 },
            &decode,
            &sm_90,
        ),
        (
            &at,
            KernelKind::Gemv {
                tile_n: 8,
                split_k: 1,
            },
            &decode,
            &sm_90,
        ),
    ];
    for (body, kind, env, target) in cases {
        let e = body.estimate(&kind, env, target);
        assert_eq!(e.seconds, f64::INFINITY, "{kind} on {}", target.name);
    }
    // The same tiles that fit are finite.
    let fits = KernelKind::Gemm {
        tile_m: 128,
        tile_n: 128,
        tile_k: 64,
        stages: 3,
    };
    assert!(mm.estimate(&fits, &m1, &sm_90).seconds.is_finite());
}

#[test]
fn quantized_weights_move_fewer_bytes() {
    let q4 = q_proj(DType::Q4_0);
    let f16 = q_proj(DType::F16);
    let target = TargetSpec::sm_90();
    let qgemv = KernelKind::QGemv {
        format: DType::Q4_0,
        tile_n: 8,
        split_k: 1,
    };
    let gemv = KernelKind::Gemv {
        tile_n: 8,
        split_k: 1,
    };
    let q = q4.estimate(&qgemv, &rows(1), &target);
    let f = f16.estimate(&gemv, &rows(1), &target);
    let acts = 2.0 * 2048.0 * 4.0;
    assert_eq!(q.bytes, 2048.0 * 64.0 * 18.0 + acts);
    assert_eq!(f.bytes, 2048.0 * 2048.0 * 2.0 + acts);
    assert!(q.seconds < f.seconds);
    assert_eq!(q.flops, f.flops + 2.0 * 2048.0 * 2048.0, "dequantization");
    // Plain templates cannot read a quantized weight.
    assert_eq!(q4.estimate(&gemv, &rows(1), &target).seconds, f64::INFINITY);
    let best = q4
        .cheapest(
            &quant_matmul_candidates(&target, DType::Q4_0, None),
            &rows(512),
            &target,
        )
        .0;
    assert_eq!(best.name(), "qgemm");
    assert!(quant_matmul_candidates(&target, DType::F16, None).is_empty());
}

#[test]
fn every_candidate_is_feasible() {
    let mm = q_proj(DType::F16);
    let q8 = q_proj(DType::Q8_0);
    let targets = [
        TargetSpec::cpu_host(),
        TargetSpec::sm_80(),
        TargetSpec::sm_90(),
        TargetSpec::vulkan_generic(),
    ];
    for target in &targets {
        let plain = matmul_candidates(target, None);
        let quant = quant_matmul_candidates(target, DType::Q8_0, None);
        for (body, kinds) in [(&mm, &plain), (&q8, &quant)] {
            let names: Vec<&str> = kinds.iter().map(KernelKind::name).collect();
            assert!(kinds.len() >= 3, "{names:?} on {}", target.name);
            for kind in kinds {
                let e = body.estimate(kind, &rows(3), target);
                assert!(e.seconds.is_finite(), "{kind} on {}", target.name);
            }
        }
        for head_dim in [64, 128] {
            let body = attention(head_dim);
            let prefill = env(&[("batch", 2), ("seq", 100), ("kv", 100)]);
            let kinds = attention_candidates(target, false, head_dim);
            assert!(!kinds.is_empty(), "D = {head_dim} on {}", target.name);
            for kind in kinds {
                let e = body.estimate(&kind, &prefill, target);
                assert!(e.seconds.is_finite(), "{kind} on {}", target.name);
            }
        }
    }
    for template in ["gemv", "flat_gemm", "gemm"] {
        let n = matmul_candidates(&TargetSpec::cpu_host(), None)
            .iter()
            .filter(|k| k.name() == template)
            .count();
        assert!((1..=8).contains(&n), "{n} {template} candidates");
    }
}

#[test]
fn single_stage_gemm_does_not_overlap_on_gpus() {
    let body = q_proj(DType::F16);
    let tile = |stages| KernelKind::Gemm {
        tile_m: 64,
        tile_n: 64,
        tile_k: 32,
        stages,
    };
    let m = rows(512);
    let gpu = TargetSpec::sm_90();
    let (one, two) = (
        body.estimate(&tile(1), &m, &gpu),
        body.estimate(&tile(2), &m, &gpu),
    );
    assert!(one.seconds > two.seconds && one.bytes == two.bytes);
    let cpu = TargetSpec::cpu(2, 32, true);
    assert_eq!(
        body.estimate(&tile(1), &m, &cpu).seconds,
        body.estimate(&tile(2), &m, &cpu).seconds
    );
}

#[test]
fn reshape_is_free_and_streaming_is_bandwidth_bound() {
    let x = [TensorType::new(DType::F32, shape(&["seq", "2048"]))];
    let split = TensorType::new(DType::F32, shape(&["seq", "32", "64"]));
    let reshape = [step(
        Op::Reshape {
            shape: shape(&["seq", "32", "64"]),
        },
        &[BodyArg::Input(0)],
    )];
    let target = TargetSpec::sm_90();
    let e = env(&[("seq", 7)]);
    let layout = estimate(&KernelKind::Layout, &reshape, &x, &split, &e, &target);
    assert_eq!(layout, Estimate::FREE);
    let copy = estimate(&KernelKind::Elementwise, &reshape, &x, &split, &e, &target);
    assert!(copy.seconds > target.launch_overhead);
    assert_eq!(copy.bytes, 2.0 * 7.0 * 2048.0 * 4.0);

    let silu = [step(
        Op::Unary(tessera_ir::UnaryOp::Silu),
        &[BodyArg::Input(0)],
    )];
    let silu_at = |e: &DimEnv| estimate(&KernelKind::Elementwise, &silu, &x, &x[0], e, &target);
    let (small, big) = (silu_at(&e), silu_at(&env(&[("seq", 70_000)])));
    let busy = |e: Estimate| e.seconds - target.launch_overhead;
    assert!(busy(big) > 100.0 * busy(small));
    assert!(big.bytes / busy(big) < target.mem_bandwidth);
}

#[test]
fn unbound_symbols_cannot_be_costed() {
    let body = q_proj(DType::F16);
    let gemv = KernelKind::Gemv {
        tile_n: 8,
        split_k: 1,
    };
    let e = body.estimate(&gemv, &env(&[("batch", 1)]), &TargetSpec::sm_90());
    assert_eq!(e, Estimate::INFEASIBLE);
}

#[test]
fn measurements_override_estimates() {
    let body = q_proj(DType::F16);
    let roofline = Roofline {
        target: TargetSpec::sm_90(),
    };
    let gemv = KernelKind::Gemv {
        tile_n: 8,
        split_k: 1,
    };
    let gemm = KernelKind::Gemm {
        tile_m: 64,
        tile_n: 64,
        tile_k: 32,
        stages: 2,
    };
    let cost = |model: &dyn CostModel, kind: &KernelKind, m: usize| {
        model.kernel_cost(kind, &body.body, &body.inputs, &body.output, &rows(m))
    };
    let key = tuning_key(&gemv, &body.body, &body.inputs, &body.output, &rows(1)).unwrap();
    assert!(key.starts_with("gemv{tile_n 8, split_k 1}|"), "{key}");
    assert!(
        key.ends_with("|f32[1, 1, 2048],f16[2048, 2048]->f32[1, 1, 2048]"),
        "{key}"
    );

    let mut measured = Measured::new(roofline.clone(), HashMap::new());
    assert_eq!(cost(&measured, &gemv, 1), cost(&roofline, &gemv, 1));
    assert_eq!(measured.insert(key, 1.0), None);
    assert_eq!(cost(&measured, &gemv, 1), 1.0);
    // Other tiles, other shapes: still the estimate.
    assert_eq!(cost(&measured, &gemv, 2), cost(&roofline, &gemv, 2));
    assert_eq!(cost(&measured, &gemm, 1), cost(&roofline, &gemm, 1));
    assert_eq!(measured.table().len(), 1);
    assert_eq!(measured.inner(), &roofline);
}
