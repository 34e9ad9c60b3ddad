//! Lowering end to end: hand-built KernelGraph kernels lowered by `lower_cpu`, JIT-compiled
//! (Cranelift, and LLVM with the `llvm` feature) and run on seeded inputs must match the
//! reference interpreter's evaluation of their bodies; kinds the SIMT templates cover are also
//! lowered by `lower_gpu` and run on the first Vulkan adapter (lavapipe in CI). Unsupported
//! kernels are errors, and every kernel of the optimized llama fixture lowers.

use std::collections::BTreeMap;
use std::path::Path;
use tessera_ir::kernel::{BodyArg, BodyOp, Kernel, KernelKind};
use tessera_ir::{BinaryOp, DType, Dim, Op, RopeLayout, TensorType, UnaryOp};
use tessera_passes::cost::{Roofline, TargetSpec};
use tessera_passes::lower::{lower_cpu, LowerError, VectorWidth};
use tessera_passes::optimize::optimize_module;

mod cases;

use cases::*;
use BodyArg::{Input as In, Op as At};

/// The vector widths the templates are checked at: Cranelift's 128 bits, and with the `llvm`
/// feature (the default backend then) AVX-512's 512, which LLVM splits on narrower hosts.
fn widths() -> Vec<VectorWidth> {
    if cfg!(feature = "llvm") {
        vec![VectorWidth::V128, VectorWidth::V512]
    } else {
        vec![VectorWidth::V128]
    }
}

/// Lowers, compiles and runs `k` over inputs of (possibly symbolic) types `inputs` (f32 random,
/// i32 from [`ints`]) with the symbols bound by `env`, and compares with the interpreter on the
/// body, at every width of [`widths`].
fn check(k: &Kernel, inputs: &[TensorType], env: &[(&str, usize)]) {
    check_cpu(k, inputs, env);
    #[cfg(feature = "vulkan")]
    if matches!(
        k.kind,
        KernelKind::Elementwise
            | KernelKind::Layout
            | KernelKind::Gather
            | KernelKind::KvAppend
            | KernelKind::RowReduce
            | KernelKind::Gemv { .. }
            | KernelKind::Gemm { .. }
            | KernelKind::FlatGemm { .. }
            | KernelKind::FlashDecoding { .. }
            | KernelKind::FlashAttention { .. }
    ) {
        vulkan::check(k, inputs, env);
    }
}

/// [`check`] on the CPU only.
fn check_cpu(k: &Kernel, inputs: &[TensorType], env: &[(&str, usize)]) {
    for width in widths() {
        check_width(k, inputs, env, width);
    }
}

fn check_width(k: &Kernel, inputs: &[TensorType], env: &[(&str, usize)], width: VectorWidth) {
    let case = Case::new(k, inputs, env);
    let lir = lower_cpu(k, inputs, &case.output, width).unwrap();
    let compiled = tessera_codegen_cpu::compile_program(&lir, Default::default())
        .unwrap_or_else(|e| panic!("{e}\n{lir}"));
    let mut buffers = case.buffers.clone();
    let mut views: Vec<&mut [u8]> = buffers.iter_mut().map(Vec::as_mut_slice).collect();
    compiled.launch(&mut views, &case.scalars).unwrap();
    case.assert_matches(buffers.last().unwrap(), &lir);
}

#[test]
fn swiglu_elementwise_with_a_symbolic_dim() {
    let k = kernel(
        KernelKind::Elementwise,
        vec![
            step(Op::Unary(UnaryOp::Silu), &[In(0)]),
            step(Op::Binary(BinaryOp::Mul), &[At(0), In(1)]),
        ],
    );
    let ty = f32_(&["seq", "37"]);
    check(&k, &[ty.clone(), ty], &[("seq", 3)]);
}

#[test]
fn elementwise_broadcasts_selects_and_reshapes() {
    let k = kernel(
        KernelKind::Elementwise,
        vec![
            step(Op::Binary(BinaryOp::Add), &[In(0), In(1)]),
            step(Op::Constant { value: 0.5 }, &[]),
            step(Op::Binary(BinaryOp::Lt), &[At(0), At(1)]),
            step(Op::Unary(UnaryOp::GeluTanh), &[At(0)]),
            step(Op::Select, &[At(2), At(3), In(1)]),
            step(
                Op::Reshape {
                    shape: shape(&["3", "37"]),
                },
                &[At(4)],
            ),
        ],
    );
    check(&k, &[f32_(&["3", "1", "37"]), f32_(&["37"])], &[]);
}

#[test]
fn residual_add_then_rms_norm() {
    let k = kernel(
        KernelKind::RowReduce,
        vec![
            step(Op::Binary(BinaryOp::Add), &[In(0), In(1)]),
            step(Op::RmsNorm { eps: 1e-5 }, &[At(0), In(2)]),
        ],
    );
    // Rows shorter than a SIMT workgroup, and longer (each thread several elements).
    for d in ["37", "600"] {
        let x = f32_(&["seq", d]);
        check(&k, &[x.clone(), x, f32_(&[d])], &[("seq", 3)]);
    }
}

#[test]
fn softmax_and_layer_norm_rows() {
    let softmax = kernel(KernelKind::RowReduce, vec![step(Op::Softmax, &[In(0)])]);
    check(&softmax, &[f32_(&["3", "37"])], &[]);
    check(&softmax, &[f32_(&["2", "1000"])], &[]);
    let layer_norm = kernel(
        KernelKind::RowReduce,
        vec![
            step(Op::LayerNorm { eps: 1e-5 }, &[In(0), In(1), In(2)]),
            step(Op::Unary(UnaryOp::Relu), &[At(0)]),
        ],
    );
    for d in ["37", "513"] {
        let w = f32_(&[d]);
        check(&layer_norm, &[f32_(&["3", d]), w.clone(), w], &[]);
    }
}

fn gemv_kernel(norm: bool) -> Kernel {
    let mut body = Vec::new();
    let lhs = if norm {
        body.push(step(Op::RmsNorm { eps: 1e-5 }, &[In(0), In(3)]));
        At(0)
    } else {
        In(0)
    };
    let mm = body.len();
    body.push(step(Op::MatMul { transpose_b: true }, &[lhs, In(1)]));
    body.push(step(Op::Binary(BinaryOp::Add), &[At(mm), In(2)]));
    kernel(
        KernelKind::Gemv {
            tile_n: 4,
            split_k: 1,
        },
        body,
    )
}

#[test]
fn gemv_with_rms_norm_prologue_and_residual_epilogue() {
    for k in ["70", "64", "600"] {
        let inputs = [
            f32_(&["seq", k]),
            f32_(&["13", k]),
            f32_(&["seq", "13"]),
            f32_(&[k]),
        ];
        check(&gemv_kernel(true), &inputs, &[("seq", 3)]);
    }
}

#[test]
fn gemv_with_bias_epilogue() {
    let inputs = [f32_(&["1", "70"]), f32_(&["13", "70"]), f32_(&["13"])];
    check(&gemv_kernel(false), &inputs, &[]);
}

const GEMM: KernelKind = KernelKind::Gemm {
    tile_m: 32,
    tile_n: 64,
    tile_k: 32,
    stages: 2,
};

/// The gemm template's M, N and K tails: every M of `seq` from 1 to past two register blocks, N
/// and K with and without a remainder, with and without an RmsNorm prologue on the direct lhs.
#[test]
fn gemm_tails_with_and_without_rms_norm_prologue() {
    for norm in [false, true] {
        let mut k = gemv_kernel(norm);
        k.kind = GEMM;
        for (n, kk) in [("13", "70"), ("64", "64"), ("13", "64"), ("64", "70")] {
            let inputs = [
                f32_(&["seq", kk]),
                f32_(&[n, kk]),
                f32_(&["seq", n]),
                f32_(&[kk]),
            ];
            for m in [1, 2, 3, 4, 5, 7, 8, 16, 17, 33] {
                check(&k, &inputs, &[("seq", m)]);
            }
        }
    }
}

/// M, N and K that are not multiples of the SIMT tiles (64×64 for `Gemm`, 8×128 for
/// `FlatGemm`, k chunks of 16) nor of the CPU register block, with f32 and f16 weights: a
/// residual epilogue on a direct lhs, and an RmsNorm prologue with a SiLU epilogue.
#[test]
fn gemm_shapes_past_the_tiles_with_f32_and_f16_weights() {
    let flat = KernelKind::FlatGemm {
        tile_n: 64,
        tile_k: 32,
    };
    let plain = kernel(
        GEMM,
        vec![
            step(Op::MatMul { transpose_b: true }, &[In(0), In(1)]),
            step(Op::Binary(BinaryOp::Add), &[At(0), In(2)]),
        ],
    );
    let normed = kernel(
        GEMM,
        vec![
            step(Op::RmsNorm { eps: 1e-5 }, &[In(0), In(2)]),
            step(Op::MatMul { transpose_b: true }, &[At(0), In(1)]),
            step(Op::Unary(UnaryOp::Silu), &[At(1)]),
        ],
    );
    for (n, kk, ms) in [
        ("3", "5", &[1, 7, 65][..]),
        ("67", "257", &[7, 130][..]),
        ("200", "64", &[1, 65][..]),
    ] {
        for weight in [f32_(&[n, kk]), f16_(&[n, kk])] {
            let plain_inputs = [f32_(&["seq", kk]), weight.clone(), f32_(&["seq", n])];
            let normed_inputs = [f32_(&["seq", kk]), weight, f32_(&[kk])];
            for &m in ms {
                for kind in [GEMM, flat.clone()] {
                    let env = [("seq", m)];
                    check(
                        &kernel(kind.clone(), plain.body.clone()),
                        &plain_inputs,
                        &env,
                    );
                    check(&kernel(kind, normed.body.clone()), &normed_inputs, &env);
                }
            }
        }
    }
}

/// GPT-2's form: LayerNorm (mean, variance, weight, bias) → matmul → bias, as gemv and gemm
/// kernels; the norm is evaluated through the prologue with its statistics once per row.
#[test]
fn gemv_and_gemm_with_layer_norm_prologue() {
    let body = vec![
        step(Op::LayerNorm { eps: 1e-5 }, &[In(0), In(3), In(4)]),
        step(Op::MatMul { transpose_b: true }, &[At(0), In(1)]),
        step(Op::Binary(BinaryOp::Add), &[At(1), In(2)]),
    ];
    let gemv = KernelKind::Gemv {
        tile_n: 4,
        split_k: 1,
    };
    for kind in [gemv, GEMM] {
        let k = kernel(kind, body.clone());
        let inputs = [
            f32_(&["seq", "70"]),
            f32_(&["13", "70"]),
            f32_(&["13"]),
            f32_(&["70"]),
            f32_(&["70"]),
        ];
        for m in [1, 5] {
            check(&k, &inputs, &[("seq", m)]);
        }
    }
}

/// The gemm template with the optimizer's MLP forms: residual add → RmsNorm → matmul → SiLU ·
/// up (a computed prologue, scalar accumulators) and a direct rank-3 lhs with a SiLU-mul
/// epilogue, as `FlatGemm` and `Gemm` kernels.
#[test]
fn gemm_with_computed_prologue_and_silu_mul_epilogue() {
    let computed = kernel(
        GEMM,
        vec![
            step(Op::Binary(BinaryOp::Add), &[In(0), In(1)]),
            step(Op::RmsNorm { eps: 1e-5 }, &[At(0), In(3)]),
            step(Op::MatMul { transpose_b: true }, &[At(1), In(2)]),
            step(Op::Unary(UnaryOp::Silu), &[At(2)]),
            step(Op::Binary(BinaryOp::Mul), &[At(3), In(4)]),
        ],
    );
    let direct = kernel(
        KernelKind::FlatGemm {
            tile_n: 64,
            tile_k: 32,
        },
        vec![
            step(Op::MatMul { transpose_b: true }, &[In(0), In(1)]),
            step(Op::Unary(UnaryOp::Silu), &[At(0)]),
            step(Op::Binary(BinaryOp::Mul), &[At(1), In(2)]),
        ],
    );
    for m in [1, 5, 17] {
        let x = f32_(&["seq", "70"]);
        let inputs = [
            x.clone(),
            x,
            f32_(&["13", "70"]),
            f32_(&["70"]),
            f32_(&["seq", "13"]),
        ];
        check(&computed, &inputs, &[("seq", m)]);
        let inputs = [
            f32_(&["2", "seq", "70"]),
            f32_(&["13", "70"]),
            f32_(&["2", "seq", "13"]),
        ];
        check(&direct, &inputs, &[("seq", m)]);
    }
}

/// SwiGLU over merged gate/up weights, `silu(x·Wg)·(x·Wu)` as slices of one `[M, 2H]` matmul
/// with an RmsNorm prologue, as gemv and gemm kernels: each output column reads matmul columns
/// `j` and `j + H` in the same pass (H odd, M past the register block).
#[test]
fn gemv_and_gemm_with_a_swiglu_slice_epilogue() {
    let half = 13;
    let slice = |start: usize, end: usize| Op::Slice {
        axis: 1,
        start: Dim::from(start),
        end: Dim::from(end),
    };
    let body = vec![
        step(Op::RmsNorm { eps: 1e-5 }, &[In(0), In(2)]),
        step(Op::MatMul { transpose_b: true }, &[At(0), In(1)]),
        step(slice(0, half), &[At(1)]),
        step(slice(half, 2 * half), &[At(1)]),
        step(Op::Unary(UnaryOp::Silu), &[At(2)]),
        step(Op::Binary(BinaryOp::Mul), &[At(4), At(3)]),
    ];
    let gemv = KernelKind::Gemv {
        tile_n: 4,
        split_k: 1,
    };
    let inputs = [f32_(&["seq", "70"]), f32_(&["26", "70"]), f32_(&["70"])];
    for kind in [gemv, GEMM] {
        let k = kernel(kind, body.clone());
        for m in [1, 2, 5, 9] {
            check(&k, &inputs, &[("seq", m)]);
        }
    }
}

#[test]
fn gemv_with_multi_op_prologues() {
    // residual add → RmsNorm → matmul → add, and residual add → matmul → mul.
    let normed = kernel(
        KernelKind::Gemm {
            tile_m: 32,
            tile_n: 5,
            tile_k: 32,
            stages: 2,
        },
        vec![
            step(Op::Binary(BinaryOp::Add), &[In(0), In(1)]),
            step(Op::RmsNorm { eps: 1e-5 }, &[At(0), In(3)]),
            step(Op::MatMul { transpose_b: true }, &[At(1), In(2)]),
            step(Op::Binary(BinaryOp::Add), &[At(2), In(4)]),
        ],
    );
    let plain = kernel(
        KernelKind::Gemv {
            tile_n: 4,
            split_k: 1,
        },
        vec![
            step(Op::Binary(BinaryOp::Add), &[In(0), In(1)]),
            step(Op::MatMul { transpose_b: true }, &[At(0), In(2)]),
            step(Op::Binary(BinaryOp::Mul), &[At(1), In(3)]),
        ],
    );
    for k in ["70", "64", "600"] {
        let x = f32_(&["seq", k]);
        let inputs = [
            x.clone(),
            f32_(&["1", k]),
            f32_(&["13", k]),
            f32_(&[k]),
            f32_(&["seq", "13"]),
        ];
        check(&normed, &inputs, &[("seq", 3)]);
        let inputs = [x.clone(), x, f32_(&["13", k]), f32_(&["13"])];
        check(&plain, &inputs, &[("seq", 3)]);
    }
}

#[test]
fn permute_slice_expand_and_rope() {
    // x [B, S, H, D] → permute to [B, H, S, D] → slice the last `seq` of `past + seq` positions
    // → rope (both layouts, D = 11 with R = 6 so that dims 6.. pass through) → times an
    // expanded scale.
    for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
        let k = kernel(
            KernelKind::Elementwise,
            vec![
                step(
                    Op::Permute {
                        perm: vec![0, 2, 1, 3],
                    },
                    &[In(0)],
                ),
                step(
                    Op::Slice {
                        axis: 2,
                        start: Dim::parse("past").unwrap(),
                        end: Dim::parse("past + seq").unwrap(),
                    },
                    &[At(0)],
                ),
                step(Op::Rope { layout }, &[At(1), In(1), In(2)]),
                step(
                    Op::Expand {
                        shape: shape(&["2", "3", "seq", "11"]),
                    },
                    &[In(3)],
                ),
                step(Op::Binary(BinaryOp::Mul), &[At(2), At(3)]),
            ],
        );
        let inputs = [
            f32_(&["2", "past + seq", "3", "11"]),
            i32_(&["2", "seq"]),
            f32_(&["3"]),
            f32_(&["3", "1", "11"]),
        ];
        check(&k, &inputs, &[("past", 4), ("seq", 5)]);
    }
}

#[test]
fn kv_append_with_a_prologue_on_the_new_entries() {
    let k = kernel(
        KernelKind::KvAppend,
        vec![
            step(Op::Binary(BinaryOp::Mul), &[In(1), In(2)]),
            step(Op::KvAppend, &[In(0), At(0)]),
        ],
    );
    let inputs = [
        f32_(&["2", "3", "past", "5"]),
        f32_(&["2", "3", "seq", "5"]),
        f32_(&["5"]),
    ];
    check(&k, &inputs, &[("past", 4), ("seq", 3)]);
    check(&k, &inputs, &[("past", 0), ("seq", 1)]);
}

fn embedding() -> Kernel {
    kernel(
        KernelKind::Gather,
        vec![
            step(Op::Gather, &[In(0), In(1)]),
            step(Op::Cast { to: DType::F32 }, &[At(0)]),
            step(Op::Constant { value: 0.5 }, &[]),
            step(Op::Binary(BinaryOp::Mul), &[At(1), At(2)]),
        ],
    )
}

#[test]
fn gather_rows_with_an_epilogue() {
    check(
        &embedding(),
        &[f32_(&["11", "6"]), i32_(&["2", "seq"])],
        &[("seq", 3)],
    );
}

#[test]
fn gather_writes_nothing_for_ids_out_of_range() {
    let inputs = [f32_(&["11", "6"]), i32_(&["3"])];
    let lir = lower_cpu(&embedding(), &inputs, &f32_(&["3", "6"]), VectorWidth::V128).unwrap();
    let compiled = tessera_codegen_cpu::compile_program(&lir, Default::default()).unwrap();
    let table = random(1, 66);
    let mut table_bytes = bytes(&table);
    let mut ids: Vec<u8> = [-1i32, 11, 4]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let mut out = bytes(&[7.0; 18]);
    compiled
        .launch(&mut [&mut table_bytes, &mut ids, &mut out], &[])
        .unwrap();
    let got: Vec<f32> = out
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let row: Vec<f32> = table[24..30].iter().map(|x| x * 0.5).collect();
    assert_eq!(got[..12], [7.0; 12]);
    assert_eq!(got[12..], row[..]);
}

fn attention(causal: bool, window: Option<usize>, args: &[BodyArg]) -> BodyOp {
    step(
        Op::Attention {
            scale: 0.4,
            causal,
            window,
        },
        args,
    )
}

fn flash(body: Vec<BodyOp>) -> Kernel {
    kernel(
        KernelKind::FlashAttention {
            block_q: 16,
            block_kv: 32,
        },
        body,
    )
}

#[test]
fn causal_gqa_prefill_attention() {
    let k = flash(vec![attention(true, None, &[In(0), In(1), In(2)])]);
    // Short and long sequences: one key block, and several with a tail.
    for (d, seq) in [("6", "5"), ("8", "5"), ("8", "37")] {
        let inputs = [
            f32_(&["1", "4", seq, d]),
            f32_(&["1", "2", seq, d]),
            f32_(&["1", "2", seq, d]),
        ];
        check(&k, &inputs, &[]);
    }
}

fn decoding(splits: u32, body: Vec<BodyOp>) -> Kernel {
    kernel(KernelKind::FlashDecoding { splits }, body)
}

#[test]
fn decode_attention_over_a_symbolic_past() {
    let kv = |d: &str| f32_(&["2", "2", "past + 1", d]);
    // Head dims of 6 and 3 read K/V element by element; 8 and 4, and 16 and 20 (V in a chunk
    // of four vectors and one of one), as whole vectors. A short and a long KV (3 key blocks).
    // One split, and FlashDecoding's splits merged by log-sum-exp: 3 splits of one key leave
    // two empty, 4 splits of 41 keys are 11, 11, 11 and 8.
    for splits in [1, 3, 4] {
        let k = decoding(splits, vec![attention(true, None, &[In(0), In(1), In(2)])]);
        for (d, dv) in [("6", "3"), ("8", "4"), ("16", "20")] {
            let inputs = [f32_(&["2", "4", "1", d]), kv(d), kv(dv)];
            for past in [0, 8, 40] {
                check(&k, &inputs, &[("past", past)]);
            }
        }
    }
}

#[test]
fn split_decoding_with_a_window_a_mask_and_an_epilogue() {
    let kv = f32_(&["1", "2", "70", "8"]);
    let q = f32_(&["1", "4", "1", "8"]);
    let windowed = decoding(4, vec![attention(true, Some(37), &[In(0), In(1), In(2)])]);
    check(&windowed, &[q.clone(), kv.clone(), kv.clone()], &[]);
    // An additive mask, and an epilogue moving heads into columns.
    let masked = decoding(
        2,
        vec![
            attention(false, None, &[In(0), In(1), In(2), In(3)]),
            step(
                Op::Permute {
                    perm: vec![0, 2, 1, 3],
                },
                &[At(0)],
            ),
            step(
                Op::Reshape {
                    shape: shape(&["1", "1", "32"]),
                },
                &[At(1)],
            ),
        ],
    );
    check(
        &masked,
        &[q, kv.clone(), kv, f32_(&["1", "1", "1", "70"])],
        &[],
    );
}

#[test]
fn decode_attention_with_real_head_dims_over_several_key_blocks() {
    // 300 and 700 keys: blocks of 256 keys on a GPU with a tail, splits of 75 and 234.
    for (d, keys, splits) in [
        ("64", 300, 1),
        ("64", 300, 4),
        ("128", 700, 1),
        ("128", 700, 3),
    ] {
        let k = decoding(splits, vec![attention(true, None, &[In(0), In(1), In(2)])]);
        let kv = f32_(&["1", "2", "past + 1", d]);
        let inputs = [f32_(&["1", "4", "1", d]), kv.clone(), kv];
        check(&k, &inputs, &[("past", keys - 1)]);
    }
}

#[test]
fn prefill_attention_with_real_head_dims_over_a_long_past() {
    // 37 and 45 new rows over 300 and 700 keys (chunked prefill): several query-row blocks and
    // key tiles, both with tails; the window starts inside a tile.
    let causal = flash(vec![attention(true, None, &[In(0), In(1), In(2)])]);
    let q = f32_(&["1", "4", "37", "128"]);
    let kv = f32_(&["1", "2", "300", "128"]);
    check(&causal, &[q, kv.clone(), kv], &[]);
    let windowed = flash(vec![attention(true, Some(333), &[In(0), In(1), In(2)])]);
    let q = f32_(&["1", "2", "45", "64"]);
    let kv = f32_(&["1", "1", "700", "64"]);
    check(&windowed, &[q, kv.clone(), kv], &[]);
}

#[test]
fn sliding_window_and_masked_attention() {
    let kv = f32_(&["1", "2", "7", "6"]);
    let q = f32_(&["1", "4", "5", "6"]);
    let windowed = flash(vec![attention(true, Some(3), &[In(0), In(1), In(2)])]);
    check(&windowed, &[q.clone(), kv.clone(), kv.clone()], &[]);
    // A window that starts inside a key block and spans several.
    let long = flash(vec![attention(true, Some(20), &[In(0), In(1), In(2)])]);
    let (q_long, kv_long) = (f32_(&["1", "4", "45", "8"]), f32_(&["1", "2", "45", "8"]));
    check(&long, &[q_long, kv_long.clone(), kv_long], &[]);
    let masked = flash(vec![attention(false, None, &[In(0), In(1), In(2), In(3)])]);
    let mask = f32_(&["1", "1", "5", "7"]);
    check(&masked, &[q, kv.clone(), kv, mask], &[]);
}

#[test]
fn attention_with_rope_and_permute_prologue_and_reshape_epilogue() {
    // q [B, S, Hq, D] → permute → rope → attention → permute → reshape to [B, S, Hq·Dv].
    let k = flash(vec![
        step(
            Op::Permute {
                perm: vec![0, 2, 1, 3],
            },
            &[In(0)],
        ),
        step(
            Op::Rope {
                layout: RopeLayout::Half,
            },
            &[At(0), In(3), In(4)],
        ),
        attention(true, None, &[At(1), In(1), In(2)]),
        step(
            Op::Permute {
                perm: vec![0, 2, 1, 3],
            },
            &[At(2)],
        ),
        step(
            Op::Reshape {
                shape: shape(&["2", "seq", "20"]),
            },
            &[At(3)],
        ),
    ]);
    let inputs = [
        f32_(&["2", "seq", "4", "6"]),
        f32_(&["2", "2", "seq", "6"]),
        f32_(&["2", "2", "seq", "5"]),
        i32_(&["2", "seq"]),
        f32_(&["3"]),
    ];
    check(&k, &inputs, &[("seq", 5)]);
}

#[test]
fn matmul_with_reshape_permute_rope_epilogue() {
    // rms_norm → matmul [seq, H·D] → reshape [1, seq, H, D] → permute → rope: per element on
    // the gemv template; on the gemm template whole rows into a tile, then the epilogue (rows
    // in blocks of 4 with a tail, H·D = 20 not a multiple of the 3-column register block). The
    // SIMT templates store the matmul, then apply the epilogue in a second step.
    let gemm = KernelKind::Gemm {
        tile_m: 32,
        tile_n: 64,
        tile_k: 32,
        stages: 2,
    };
    let gemv = KernelKind::Gemv {
        tile_n: 4,
        split_k: 1,
    };
    for (kind, heads, d, seq) in [
        (gemv.clone(), 4, 6, 3),
        (gemm.clone(), 4, 6, 3),
        (gemm.clone(), 5, 4, 9),
        (gemm, 5, 4, 1),
    ] {
        let cols = (heads * d).to_string();
        let (heads, d) = (heads.to_string(), d.to_string());
        let k = kernel(
            kind,
            vec![
                step(Op::RmsNorm { eps: 1e-5 }, &[In(0), In(2)]),
                step(Op::MatMul { transpose_b: true }, &[At(0), In(1)]),
                step(
                    Op::Reshape {
                        shape: shape(&["1", "seq", &heads, &d]),
                    },
                    &[At(1)],
                ),
                step(
                    Op::Permute {
                        perm: vec![0, 2, 1, 3],
                    },
                    &[At(2)],
                ),
                step(
                    Op::Rope {
                        layout: RopeLayout::Half,
                    },
                    &[At(3), In(3), In(4)],
                ),
            ],
        );
        let inputs = [
            f32_(&["seq", "18"]),
            f32_(&[&cols, "18"]),
            f32_(&["18"]),
            i32_(&["1", "seq"]),
            f32_(&["2"]),
        ];
        check(&k, &inputs, &[("seq", seq)]);
    }
}

#[test]
fn attention_outside_its_template_is_named() {
    let mut k = flash(vec![attention(true, None, &[In(0), In(1), In(2)])]);
    k.kind = KernelKind::Elementwise;
    let q = f32_(&["1", "2", "3", "16"]);
    let err = lower_cpu(
        &k,
        &[q.clone(), q.clone(), q.clone()],
        &q,
        VectorWidth::V128,
    )
    .unwrap_err();
    assert!(matches!(err, LowerError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("attention"), "{err}");
}

#[test]
fn every_llama_kernel_lowers_or_is_unsupported() {
    let mut module = tessera::load_module(Path::new("tests/fixtures/llama")).unwrap();
    let spec = TargetSpec::cpu_host();
    optimize_module(
        &mut module,
        &spec,
        &Roofline {
            target: spec.clone(),
        },
    )
    .unwrap();
    let (mut lowered, mut unsupported) = (0, BTreeMap::<String, usize>::new());
    for entry in &module.entries {
        let kg = entry.kernels.as_ref().unwrap();
        for k in &kg.kernels {
            let inputs: Vec<TensorType> =
                k.inputs.iter().map(|&b| kg.buffer(b).ty.clone()).collect();
            match lower_cpu(
                k,
                &inputs,
                &kg.buffer(k.output).ty,
                tessera::default_vector_width(),
            ) {
                Ok(lir) => {
                    tessera_codegen_cpu::compile_program(&lir, Default::default())
                        .unwrap_or_else(|e| panic!("{e}\n{lir}"));
                    lowered += 1;
                }
                Err(e) => {
                    eprintln!("{e}");
                    *unsupported.entry(k.kind.name().to_string()).or_default() += 1;
                }
            }
        }
    }
    eprintln!("llama: {lowered} kernels lowered, unsupported by kind: {unsupported:?}");
    // All 32: attention and matmuls with layout epilogues lower too.
    assert_eq!(
        lowered, 32,
        "only {lowered} llama kernels lowered: {unsupported:?}"
    );
}

/// The SIMT templates on the first Vulkan adapter. Without one the checks print that they
/// skipped, unless `TESSERA_REQUIRE_VULKAN=1`, which makes a missing adapter a failure.
#[cfg(feature = "vulkan")]
mod vulkan {
    use super::*;
    use tessera_codegen_spirv::VulkanTarget;
    use tessera_passes::lower::{lower_gpu, lower_gpu_with, Precision};

    /// Lowers `k` for the Vulkan device, runs it and compares the output with the interpreter.
    pub fn check(k: &Kernel, inputs: &[TensorType], env: &[(&str, usize)]) {
        check_for(k, inputs, env, None);
    }

    /// [`check`] with `k` lowered and compiled for `target` when given, a device the adapter
    /// can stand in for (its limits within the adapter's), else for the adapter itself.
    fn check_for(
        k: &Kernel,
        inputs: &[TensorType],
        env: &[(&str, usize)],
        target: Option<&VulkanTarget>,
    ) {
        let case = Case::new(k, inputs, env);
        if let Some((got, program)) = cases::vulkan::run(
            k,
            inputs,
            &case.output,
            (&case.buffers, &case.scalars),
            (target, Precision::F32),
        ) {
            case.assert_matches(&got, &program);
        }
    }

    /// The GEMMs of [`gemm_shapes_past_the_tiles_with_f32_and_f16_weights`] in f16 (tiles
    /// staged in f16, each k chunk summed in f16) on an adapter with shader-f16: within f16's
    /// rounding of the lhs and of the chunk sums (about 1% of outputs of magnitude ~5 here);
    /// refused by a device without f16 arithmetic.
    #[test]
    fn gemm_in_f16_where_the_device_has_it() {
        let body = vec![
            step(Op::RmsNorm { eps: 1e-5 }, &[In(0), In(2)]),
            step(Op::MatMul { transpose_b: true }, &[At(0), In(1)]),
            step(Op::Unary(UnaryOp::Silu), &[At(1)]),
        ];
        let flat = KernelKind::FlatGemm {
            tile_n: 64,
            tile_k: 32,
        };
        let baseline = tessera_codegen_spirv::vulkan_capabilities(&VulkanTarget::baseline());
        if !cases::vulkan::target().is_some_and(|t| t.f16) {
            eprintln!("skipped: no adapter with shader-f16");
            return;
        }
        for (n, kk, m) in [("67", "257", 130), ("200", "64", 5), ("13", "132", 70)] {
            for weight in [f32_(&[n, kk]), f16_(&[n, kk])] {
                let inputs = [f32_(&["seq", kk]), weight, f32_(&[kk])];
                for kind in [GEMM, flat.clone()] {
                    let k = kernel(kind, body.clone());
                    let case = Case::new(&k, &inputs, &[("seq", m)]);
                    let err =
                        lower_gpu_with(&k, &inputs, &case.output, (&baseline, Precision::F16))
                            .unwrap_err()
                            .to_string();
                    assert!(err.contains("shader-f16"), "{err}");
                    let Some((got, program)) = cases::vulkan::run(
                        &k,
                        &inputs,
                        &case.output,
                        (&case.buffers, &case.scalars),
                        (None, Precision::F16),
                    ) else {
                        return;
                    };
                    let staged = program.steps[0]
                        .locals
                        .iter()
                        .any(|l| l.elem == tessera_ir::lir::ScalarType::F16);
                    assert!(staged, "f16 tiles\n{program}");
                    let worst = case.assert_within(&got, &program, (5e-2, 2e-2));
                    eprintln!("n {n} k {kk} m {m}: max |Δ| {worst:.2e}");
                }
            }
        }
    }

    /// The GEMM tiles with the most shared memory — `FlatGemm`'s 128 columns, each reading two
    /// weight rows (SwiGLU over merged gate/up), with a LayerNorm's statistics — shrink their k
    /// chunk to fit the baseline's 16 KiB, and still match.
    #[test]
    fn gemm_tiles_fit_the_baseline_shared_memory() {
        let slice = |start: usize, end: usize| Op::Slice {
            axis: 1,
            start: Dim::from(start),
            end: Dim::from(end),
        };
        let body = vec![
            step(Op::LayerNorm { eps: 1e-5 }, &[In(0), In(2), In(3)]),
            step(Op::MatMul { transpose_b: true }, &[At(0), In(1)]),
            step(slice(0, 13), &[At(1)]),
            step(slice(13, 26), &[At(1)]),
            step(Op::Unary(UnaryOp::Silu), &[At(2)]),
            step(Op::Binary(BinaryOp::Mul), &[At(4), At(3)]),
        ];
        let flat = KernelKind::FlatGemm {
            tile_n: 64,
            tile_k: 32,
        };
        let inputs = [
            f32_(&["seq", "70"]),
            f32_(&["26", "70"]),
            f32_(&["70"]),
            f32_(&["70"]),
        ];
        for kind in [GEMM, flat] {
            let k = kernel(kind, body.clone());
            check_for(&k, &inputs, &[("seq", 9)], Some(&VulkanTarget::baseline()));
        }
    }

    /// On a device without subgroups (the baseline) the reductions take the shared-memory tree,
    /// which the adapter's own target (lavapipe has subgroups) does not: gemv with a norm
    /// prologue reduces the statistics and the partial dots that way.
    #[test]
    fn reductions_without_subgroups_take_the_tree() {
        let inputs = [
            f32_(&["seq", "600"]),
            f32_(&["13", "600"]),
            f32_(&["seq", "13"]),
            f32_(&["600"]),
        ];
        let baseline = VulkanTarget::baseline();
        check_for(&gemv_kernel(true), &inputs, &[("seq", 3)], Some(&baseline));
    }

    /// FlashAttention's tiles for head dims of 128 on a device with 16 KiB of shared memory:
    /// 8 query rows and 16 keys per tile.
    #[test]
    fn prefill_tiles_fit_a_baseline_device() {
        let k = flash(vec![attention(true, None, &[In(0), In(1), In(2)])]);
        let q = f32_(&["1", "2", "21", "128"]);
        let kv = f32_(&["1", "1", "40", "128"]);
        check_for(
            &k,
            &[q, kv.clone(), kv],
            &[],
            Some(&VulkanTarget::baseline()),
        );
    }

    /// The SIMT matmuls read K in runs of 4 with a scalar tail: K = 37 and 130 + 2 (runs whose
    /// indices are not multiples of 4, then a tail) and 128 (runs only), N = 13 and 70 (not a
    /// multiple of gemv's 4 columns nor of the GEMM tiles), f32 and f16 weights, with a direct
    /// lhs (plain, and an RmsNorm of it applied as factor × weight) and a computed prologue.
    #[test]
    fn vectorized_matmuls_with_k_tails_and_partial_column_tiles() {
        let gemv = KernelKind::Gemv {
            tile_n: 4,
            split_k: 1,
        };
        let flat = KernelKind::FlatGemm {
            tile_n: 64,
            tile_k: 32,
        };
        let plain = vec![
            step(Op::MatMul { transpose_b: true }, &[In(0), In(1)]),
            step(Op::Binary(BinaryOp::Add), &[At(0), In(2)]),
        ];
        let normed = vec![
            step(Op::RmsNorm { eps: 1e-5 }, &[In(0), In(2)]),
            step(Op::MatMul { transpose_b: true }, &[At(0), In(1)]),
            step(Op::Unary(UnaryOp::Silu), &[At(1)]),
        ];
        let computed = vec![
            step(Op::Binary(BinaryOp::Add), &[In(0), In(2)]),
            step(Op::MatMul { transpose_b: true }, &[At(0), In(1)]),
        ];
        for (kind, ms) in [(gemv, &[1, 3][..]), (GEMM, &[5, 67]), (flat, &[9])] {
            for (n, kk) in [("13", "37"), ("70", "132"), ("13", "128")] {
                for weight in [f32_(&[n, kk]), f16_(&[n, kk])] {
                    let x = f32_(&["seq", kk]);
                    let cases = [
                        (&plain, f32_(&["seq", n])),
                        (&normed, f32_(&[kk])),
                        (&computed, x.clone()),
                    ];
                    for (body, third) in cases {
                        let k = kernel(kind.clone(), body.clone());
                        let inputs = [x.clone(), weight.clone(), third];
                        for &m in ms {
                            check(&k, &inputs, &[("seq", m)]);
                        }
                    }
                }
            }
        }
    }

    /// SIMT attention with head dims that are not multiples of 4 (D = 6, Dv = 5: every row read
    /// element by element), one of each (8 and 6, 5 and 8: one operand in runs of 4), and K
    /// computed by a prologue with D = 8 (runs of 4 evaluated element by element), as
    /// FlashDecoding (one split and two) and FlashAttention.
    #[test]
    fn attention_with_head_dims_off_the_vector_width() {
        for (d, dv) in [("6", "5"), ("8", "6"), ("5", "8")] {
            let kv = |dim: &str| f32_(&["1", "2", "past + 1", dim]);
            let inputs = [f32_(&["1", "4", "1", d]), kv(d), kv(dv)];
            for splits in [1, 2] {
                let k = decoding(splits, vec![attention(true, None, &[In(0), In(1), In(2)])]);
                check(&k, &inputs, &[("past", 40)]);
            }
            let k = flash(vec![attention(true, None, &[In(0), In(1), In(2)])]);
            let inputs = [
                f32_(&["1", "4", "19", d]),
                f32_(&["1", "2", "19", d]),
                f32_(&["1", "2", "19", dv]),
            ];
            check(&k, &inputs, &[]);
        }
        let scaled_k = vec![
            step(Op::Binary(BinaryOp::Mul), &[In(1), In(3)]),
            attention(true, None, &[In(0), At(0), In(2)]),
        ];
        let kv = f32_(&["1", "2", "past + 1", "8"]);
        let inputs = [f32_(&["1", "4", "1", "8"]), kv.clone(), kv, f32_(&["8"])];
        check(&decoding(1, scaled_k.clone()), &inputs, &[("past", 40)]);
        let kv = f32_(&["1", "2", "past + 1", "8"]);
        let inputs = [
            f32_(&["1", "4", "past + 1", "8"]),
            kv.clone(),
            kv,
            f32_(&["8"]),
        ];
        check(&flash(scaled_k), &inputs, &[("past", 20)]);
    }

    /// The 4-lane global loads of a lowered SIMT program, each with whether `known_alignment`
    /// proves its index a multiple of 4 (a backend then makes it one wide access), by buffer
    /// param.
    fn wide_loads(program: &tessera_ir::lir::Program) -> Vec<(usize, bool)> {
        use tessera_ir::lir::{known_alignment, BufRef, Inst, Stmt};
        fn walk(body: &[Stmt], align: &[u32], found: &mut Vec<(usize, bool)>) {
            for stmt in body {
                match stmt {
                    Stmt::Let(
                        _,
                        Inst::Load {
                            buf: BufRef::Param(p),
                            index,
                            ty,
                        },
                    ) if ty.lanes == 4 => found.push((*p, align[index.index()].is_multiple_of(4))),
                    Stmt::For { body, .. } => walk(body, align, found),
                    Stmt::If { then_, else_, .. } => {
                        walk(then_, align, found);
                        walk(else_, align, found);
                    }
                    _ => {}
                }
            }
        }
        let mut found = Vec::new();
        for step in &program.steps {
            walk(&step.body, &known_alignment(step), &mut found);
        }
        found
    }

    /// The decode gemv for Vulkan with f16 weights and K = 256 reads the weights, the lhs row
    /// (for its RmsNorm factor and for the dot products) and the norm's weight in 4-lane loads
    /// whose indices are provably multiples of 4: 8-byte loads of four halves, 16-byte loads of
    /// floats. With K = 258 only what is proven is claimed: the norm's weight, and the weight
    /// rows of a workgroup's even columns (258·2j), not its odd ones nor the lhs row.
    #[test]
    fn decode_gemv_weight_loads_are_provably_aligned() {
        let caps = tessera_codegen_spirv::vulkan_capabilities(&VulkanTarget::baseline());
        let k = gemv_kernel(true);
        for (kk, x, w) in [
            ("256", vec![true; 2], vec![true; 4]),
            ("258", vec![false; 2], vec![true, false, true, false]),
        ] {
            let inputs = [
                f32_(&["1", kk]),
                f16_(&["13", kk]),
                f32_(&["1", "13"]),
                f32_(&[kk]),
            ];
            let program = lower_gpu(&k, &inputs, &f32_(&["1", "13"]), &caps).unwrap();
            let loads = wide_loads(&program);
            for (buffer, want) in [(0, x), (1, w), (3, vec![true])] {
                let got: Vec<bool> = loads
                    .iter()
                    .filter(|&&(p, _)| p == buffer)
                    .map(|&(_, aligned)| aligned)
                    .collect();
                assert_eq!(got, want, "K = {kk}, input {buffer}\n{program}");
            }
        }
    }

    /// The GEMM tile loads (weight, direct lhs, its RmsNorm's weight) for K = 256 and the
    /// attention templates' q, K and V rows for head dims of 128 are 4-lane loads, every one
    /// provably a multiple of 4.
    #[test]
    fn gemm_and_attention_runs_are_provably_aligned() {
        let caps = tessera_codegen_spirv::vulkan_capabilities(&VulkanTarget::baseline());
        let mut gemm = gemv_kernel(true);
        gemm.kind = GEMM;
        let gemm_inputs = vec![
            f32_(&["seq", "256"]),
            f16_(&["13", "256"]),
            f32_(&["seq", "13"]),
            f32_(&["256"]),
        ];
        let qkv = |s: &str| {
            let kv = f32_(&["1", "2", "past + 1", "128"]);
            vec![f32_(&["1", "4", s, "128"]), kv.clone(), kv]
        };
        let att = vec![attention(true, None, &[In(0), In(1), In(2)])];
        for (k, inputs, read) in [
            (gemm, gemm_inputs, vec![0, 1, 3]),
            (decoding(1, att.clone()), qkv("1"), vec![0, 1, 2]),
            (flash(att), qkv("past + 1"), vec![0, 1, 2]),
        ] {
            let case = Case::new(&k, &inputs, &[("seq", 5), ("past", 9)]);
            let program = lower_gpu(&k, &inputs, &case.output, &caps).unwrap();
            let loads = wide_loads(&program);
            for buffer in read {
                assert!(
                    loads.iter().any(|&(p, _)| p == buffer),
                    "no 4-lane loads of input {buffer}\n{program}"
                );
            }
            assert!(loads.iter().all(|&(_, a)| a), "{loads:?}\n{program}");
        }
    }

    /// A body a SIMT template refuses (a matmul whose weight is not transposed) is an
    /// `Unsupported` error naming the kernel, the templates and the reason.
    #[test]
    fn bodies_a_simt_template_refuses_are_named() {
        let k = kernel(
            GEMM,
            vec![step(Op::MatMul { transpose_b: false }, &[In(0), In(1)])],
        );
        let (x, w, y) = (f32_(&["1", "8"]), f32_(&["8", "3"]), f32_(&["1", "3"]));
        let caps = tessera_codegen_spirv::vulkan_capabilities(
            &tessera_codegen_spirv::VulkanTarget::baseline(),
        );
        let err = lower_gpu(&k, &[x, w], &y, &caps).unwrap_err();
        assert!(matches!(err, LowerError::Unsupported { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("SIMT")
                && err.contains("gemm")
                && err.contains("test")
                && err.contains("without transpose_b"),
            "{err}"
        );
    }
}
