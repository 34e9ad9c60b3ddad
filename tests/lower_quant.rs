//! Quantized matmul kernels (QGemv/QGemm over Q8_0 and Q4_0 weights) lowered for the CPU,
//! JIT-compiled and run, and lowered by `lower_gpu` and run on the Vulkan device (lavapipe in
//! CI), against the reference interpreter on the same quantized weights. The
//! kernel rounds its activations to 8 bits per block (as llama.cpp does), so a plain lhs is
//! checked against the interpreter fed that rounding of it (only float reassociation differs),
//! and kernels with prologues and epilogues within the rounding's bound. Every kernel is run at
//! each vector width this build compiles ([`widths`]): the wide dot products cover runs of
//! blocks, the 128-bit path the blocks left over.

mod cases;

use std::collections::{BTreeMap, BTreeSet};
use tessera_ir::interp::{self, Tensor};
use tessera_ir::kernel::{body_graph, BodyArg, BodyInput, BodyOp, KernelKind};
use tessera_ir::lir::Capabilities;
use tessera_ir::{BinaryOp, DType, Dim, Op, Shape, TensorType, UnaryOp};
use tessera_passes::lower::{lower_cpu, lower_gpu, Precision, VectorWidth};

use cases::{kernel, step};
use BodyArg::{Input as In, Op as At};

fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, dims.iter().map(|&d| Dim::from(d)).collect::<Shape>())
}

/// Deterministic values in [-2, 2).
fn random(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 22) as f32 - 2.0
        })
        .collect()
}

/// `x` rounded to 8 bits per block of 32 as the kernel rounds it: Q8_0's rule with the scale
/// kept in f32 (GGUF stores it as f16; the kernel never stores it).
fn q8_round_trip(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|block| {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let (d, inv) = (amax / 127.0, if amax > 0.0 { 127.0 / amax } else { 0.0 });
            block.iter().map(move |v| (v * inv).round() * d)
        })
        .collect()
}

/// The vector widths to lower at: Cranelift's 128 bits, and with the `llvm` feature (the
/// default backend then) 256 and 512, whose dot products cover 2 and 4 blocks.
fn widths() -> Vec<VectorWidth> {
    if cfg!(feature = "llvm") {
        vec![VectorWidth::V128, VectorWidth::V256, VectorWidth::V512]
    } else {
        vec![VectorWidth::V128]
    }
}

/// Runs `body` (its matmul weight is input 1) at every width of [`widths`] and, with the
/// `vulkan` feature, on the Vulkan device, and checks each against the interpreter within `tol`
/// (relative to the largest result); `round_lhs` feeds the interpreter input 0 rounded as the
/// kernel rounds it.
fn check(kind: KernelKind, body: Vec<BodyOp>, inputs: &[TensorType], round_lhs: bool, tol: f32) {
    let k = kernel(kind.clone(), body);
    let symbolic: Vec<BodyInput> = inputs.iter().cloned().map(BodyInput::Value).collect();
    let (g, node) = body_graph(&k.body, &symbolic).unwrap();
    let output = g.ty(node).clone();
    let (buffers, want) = case(&g, inputs, round_lhs);
    for width in widths() {
        let lir = lower_cpu(&k, inputs, &output, width).unwrap();
        let compiled = tessera_codegen_cpu::compile_program(&lir, Default::default())
            .unwrap_or_else(|e| panic!("{e}\n{lir}"));
        let mut buffers = buffers.clone();
        let mut views: Vec<&mut [u8]> = buffers.iter_mut().map(Vec::as_mut_slice).collect();
        compiled.launch(&mut views, &[]).unwrap();
        let got = floats(buffers.last().unwrap());
        assert_close(
            &got,
            &want,
            tol,
            &format!("{kind} at {} bits", width.bits()),
        );
    }
    #[cfg(feature = "vulkan")]
    if let Some((got, program)) =
        cases::vulkan::run(&k, inputs, &output, (&buffers, &[]), (None, Precision::F32))
    {
        assert_close(
            &floats(&got),
            &want,
            tol,
            &format!("{kind} on Vulkan\n{program}"),
        );
    }
}

/// The buffers of a run of the kernel body `g` (seeded inputs, quantized weights as their GGUF
/// bytes, a zeroed output last) and what the interpreter computes from them; `round_lhs` feeds
/// the interpreter input 0 rounded as the kernel rounds it.
fn case(g: &tessera_ir::Graph, inputs: &[TensorType], round_lhs: bool) -> (Vec<Vec<u8>>, Vec<f32>) {
    let mut feed = BTreeMap::new();
    let mut buffers: Vec<Vec<u8>> = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        let dims: Vec<usize> = t
            .shape
            .iter()
            .map(|d| d.as_const().unwrap() as usize)
            .collect();
        let values = random(i as u64 + 11, dims.iter().product());
        let tensor = if t.dtype.is_quantized() {
            Tensor::quantize(t.dtype, dims, &values).unwrap()
        } else {
            let fed = if i == 0 && round_lhs {
                let k = *dims.last().unwrap();
                values.chunks(k).flat_map(q8_round_trip).collect()
            } else {
                values.clone()
            };
            buffers.push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
            Tensor::f32(dims, fed)
        };
        if t.dtype.is_quantized() {
            buffers.push(tensor.to_le_bytes().unwrap());
        }
        feed.insert(i.to_string(), tensor);
    }
    let want = interp::run(g, &BTreeMap::new(), &feed).unwrap()["out"]
        .as_f32()
        .unwrap()
        .to_vec();
    buffers.push(vec![0; want.len() * 4]);
    (buffers, want)
}

/// Little-endian f32 bytes as floats.
fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn qgemv(format: DType) -> KernelKind {
    KernelKind::QGemv {
        format,
        tile_n: 4,
        split_k: 1,
    }
}

fn qgemm(format: DType) -> KernelKind {
    KernelKind::QGemm {
        format,
        tile_m: 4,
        tile_n: 4,
        tile_k: 32,
    }
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}, element {i}: got {g}, want {w}"
        );
    }
}

/// A plain lhs: rows M = 1…9, 16 and 17 (QGemm groups full and partial), N odd (a partial tile,
/// and a lone column), K of 1 to 5, 8, 9 and 13 blocks (runs of 4 or 2 blocks with and without
/// blocks left over) and of 257 and 300 (more blocks than a SIMT workgroup has threads, so
/// some take two), both formats; exact up to float reassociation once the activations are
/// rounded as the kernel rounds them.
#[test]
fn quantized_matmul_matches_the_interpreter_on_the_same_weights() {
    let shapes = [
        (1, 13, 32),
        (2, 7, 64),
        (3, 33, 96),
        (4, 5, 128),
        (5, 1, 160),
        (6, 9, 256),
        (7, 3, 288),
        (8, 11, 416),
        (9, 5, 160),
        (16, 3, 288),
        (17, 19, 64),
        (1, 21, 288),
        (1, 7, 416),
        (17, 5, 160),
        (1, 5, 300 * 32),
        (5, 3, 257 * 32),
    ];
    for format in [DType::Q8_0, DType::Q4_0] {
        for (m, n, k) in shapes {
            let body = vec![step(Op::QuantMatMul { transpose_b: true }, &[In(0), In(1)])];
            let inputs = [ty(DType::F32, &[m, k]), ty(format, &[n, k])];
            let kind = if m == 1 { qgemv(format) } else { qgemm(format) };
            check(kind, body, &inputs, true, 1e-5);
        }
    }
}

/// The decode block's quantized kernels: RmsNorm read in place, a residual add + RmsNorm
/// prologue evaluated into a private row with the merged gate/up SwiGLU epilogue reading two
/// columns per output (also as a QGemm of 5 rows: on a SIMT target more partial sums than one
/// reduction pass takes), GPT-2's LayerNorm prologue (also as a QGemm), and a residual epilogue — within the 8-bit rounding of the activations.
#[test]
fn quantized_matmul_with_prologues_and_epilogues() {
    for format in [DType::Q8_0, DType::Q4_0] {
        let (k, n) = (160, 22);
        let norm = vec![
            step(Op::RmsNorm { eps: 1e-5 }, &[In(0), In(2)]),
            step(Op::QuantMatMul { transpose_b: true }, &[At(0), In(1)]),
        ];
        let inputs = [
            ty(DType::F32, &[1, k]),
            ty(format, &[n, k]),
            ty(DType::F32, &[k]),
        ];
        check(qgemv(format), norm, &inputs, false, 2e-2);

        let half = n / 2;
        let swiglu = vec![
            step(Op::Binary(BinaryOp::Add), &[In(0), In(3)]),
            step(Op::RmsNorm { eps: 1e-5 }, &[At(0), In(2)]),
            step(Op::QuantMatMul { transpose_b: true }, &[At(1), In(1)]),
            step(
                Op::Slice {
                    axis: 1,
                    start: Dim::from(0),
                    end: Dim::from(half),
                },
                &[At(2)],
            ),
            step(
                Op::Slice {
                    axis: 1,
                    start: Dim::from(half),
                    end: Dim::from(n),
                },
                &[At(2)],
            ),
            step(Op::Unary(UnaryOp::Silu), &[At(3)]),
            step(Op::Binary(BinaryOp::Mul), &[At(5), At(4)]),
        ];
        for (kind, m) in [(qgemv(format), 1), (qgemm(format), 5)] {
            let inputs = [
                ty(DType::F32, &[m, k]),
                ty(format, &[n, k]),
                ty(DType::F32, &[k]),
                ty(DType::F32, &[m, k]),
            ];
            check(kind, swiglu.clone(), &inputs, false, 2e-2);
        }

        let layer_norm = vec![
            step(Op::LayerNorm { eps: 1e-5 }, &[In(0), In(2), In(3)]),
            step(Op::QuantMatMul { transpose_b: true }, &[At(0), In(1)]),
        ];
        for (kind, m) in [(qgemv(format), 2), (qgemm(format), 5)] {
            let inputs = [
                ty(DType::F32, &[m, k]),
                ty(format, &[n, k]),
                ty(DType::F32, &[k]),
                ty(DType::F32, &[k]),
            ];
            check(kind, layer_norm.clone(), &inputs, false, 2e-2);
        }

        let residual = vec![
            step(Op::QuantMatMul { transpose_b: true }, &[In(0), In(1)]),
            step(Op::Binary(BinaryOp::Add), &[At(0), In(2)]),
        ];
        let inputs = [
            ty(DType::F32, &[3, k]),
            ty(format, &[n, k]),
            ty(DType::F32, &[3, n]),
        ];
        check(qgemv(format), residual, &inputs, true, 1e-5);
    }
}

/// A head-split epilogue (reshape + permute, the Q projection of prefill and decode) moves each
/// matmul element to another row of the output: written where it lands, exactly.
#[test]
fn quantized_matmul_with_a_head_split_epilogue() {
    for format in [DType::Q8_0, DType::Q4_0] {
        let (seq, heads, dim, k) = (3, 4, 8, 288);
        let body = vec![
            step(Op::QuantMatMul { transpose_b: true }, &[In(0), In(1)]),
            step(
                Op::Reshape {
                    shape: [1, seq, heads, dim].map(Dim::from).to_vec(),
                },
                &[At(0)],
            ),
            step(
                Op::Permute {
                    perm: vec![0, 2, 1, 3],
                },
                &[At(1)],
            ),
        ];
        let inputs = [ty(DType::F32, &[1, seq, k]), ty(format, &[heads * dim, k])];
        check(qgemm(format), body, &inputs, true, 1e-5);
    }
}

/// A device without `Dot4I8Packed` gets no SIMT quantized matmul (there is no float fallback):
/// the error names the intrinsic and the kernel.
#[test]
fn simt_quantized_matmul_without_packed_dot_products_is_named() {
    let body = vec![step(Op::QuantMatMul { transpose_b: true }, &[In(0), In(1)])];
    let k = kernel(qgemv(DType::Q8_0), body);
    let inputs = [ty(DType::F32, &[1, 64]), ty(DType::Q8_0, &[3, 64])];
    let caps = Capabilities {
        subgroup_sizes: vec![],
        intrinsics: BTreeSet::new(),
        max_workgroup_size: 256,
        shared_bytes: 16384,
        f16: false,
    };
    let err = lower_gpu(&k, &inputs, &ty(DType::F32, &[1, 3]), &caps)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Dot4I8Packed") && err.contains("qgemv") && err.contains("SIMT"),
        "{err}"
    );
}
