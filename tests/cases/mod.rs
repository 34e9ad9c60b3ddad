//! What the template tests share (`mod cases;`, in `lower.rs` and `lower_quant.rs`):
//! kernels built by hand, seeded inputs, the reference interpreter's evaluation of a kernel's
//! body that every backend's run of its lowering must match, and the Vulkan device the SIMT
//! lowerings run on ([`vulkan`]).
#![allow(dead_code)]

#[cfg(feature = "vulkan")]
pub mod vulkan;

use std::collections::BTreeMap;
use std::fmt::Display;
use tessera_ir::interp::{self, Tensor};
use tessera_ir::kernel::{body_graph, BodyArg, BodyInput, BodyOp, Kernel, KernelKind};
use tessera_ir::{eval_shape, DType, Dim, Op, Shape, TensorType};

pub fn shape(dims: &[&str]) -> Shape {
    dims.iter().map(|d| Dim::parse(d).unwrap()).collect()
}

pub fn f32_(dims: &[&str]) -> TensorType {
    TensorType::new(DType::F32, shape(dims))
}

/// A half-precision weight: its [`random`] values rounded to f16 in memory.
pub fn f16_(dims: &[&str]) -> TensorType {
    TensorType::new(DType::F16, shape(dims))
}

pub fn step(op: Op, args: &[BodyArg]) -> BodyOp {
    BodyOp {
        op,
        args: args.to_vec(),
    }
}

pub fn kernel(kind: KernelKind, body: Vec<BodyOp>) -> Kernel {
    Kernel {
        scope: "test".into(),
        kind,
        body,
        inputs: vec![],
        output: tessera_ir::kernel::BufferId(0),
        estimate_seconds: 0.0,
    }
}

/// Deterministic values in [-2, 2).
pub fn random(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Deterministic integers in [0, INTS): positions and ids of the tests' i32 inputs.
pub fn ints(seed: u64, n: usize) -> Vec<i32> {
    random(seed, n)
        .iter()
        .map(|x| ((x + 2.0) / 4.0 * INTS as f32) as i32 % INTS)
        .collect()
}

/// The bound of [`ints`]: every gather table of the tests has more rows.
pub const INTS: i32 = 7;

pub fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `op` with the symbols of its dims bound by `env`, for the interpreter's concrete graph.
pub fn concrete_op(op: &Op, env: &BTreeMap<String, usize>) -> Op {
    let dim = |d: &Dim| Dim::from(d.eval(env).unwrap());
    match op {
        Op::Slice { axis, start, end } => Op::Slice {
            axis: *axis,
            start: dim(start),
            end: dim(end),
        },
        Op::Expand { shape } => Op::Expand {
            shape: shape.iter().map(dim).collect(),
        },
        Op::Reshape { shape } => Op::Reshape {
            shape: shape.iter().map(dim).collect(),
        },
        other => other.clone(),
    }
}

pub fn i32_(dims: &[&str]) -> TensorType {
    TensorType::new(DType::I32, shape(dims))
}

/// One run of a kernel: its inputs' bytes (seeded: f32 and f16 from [`random`], i32 from
/// [`ints`]) and a zeroed output buffer last, the scalar params (the symbols' values, sorted by
/// name), the output's type and what the interpreter computes.
pub struct Case {
    pub buffers: Vec<Vec<u8>>,
    pub scalars: Vec<i64>,
    pub output: TensorType,
    pub want: Vec<f32>,
}

impl Case {
    /// Inputs of (possibly symbolic) types `inputs` with the symbols bound by `env`.
    pub fn new(k: &Kernel, inputs: &[TensorType], env: &[(&str, usize)]) -> Case {
        let env: BTreeMap<String, usize> = env.iter().map(|(s, v)| (s.to_string(), *v)).collect();
        let symbolic: Vec<BodyInput> = inputs.iter().cloned().map(BodyInput::Value).collect();
        let (g, node) = body_graph(&k.body, &symbolic).unwrap();
        let output = g.ty(node).clone();
        let mut feed = BTreeMap::new();
        let mut concrete = Vec::new();
        let mut buffers = Vec::new();
        for (i, t) in inputs.iter().enumerate() {
            let dims = eval_shape(&t.shape, &env).unwrap();
            let n = dims.iter().product();
            let tensor = if t.dtype == DType::I32 {
                let data = ints(i as u64 + 1, n);
                buffers.push(data.iter().flat_map(|x| x.to_le_bytes()).collect());
                Tensor::i32(dims.clone(), data)
            } else if t.dtype == DType::F16 {
                let data: Vec<u8> = random(i as u64 + 1, n)
                    .into_iter()
                    .flat_map(|x| half::f16::from_f32(x).to_le_bytes())
                    .collect();
                buffers.push(data.clone());
                Tensor::from_le_bytes(DType::F16, dims.clone(), &data, "an f16 input").unwrap()
            } else {
                let data = random(i as u64 + 1, n);
                buffers.push(bytes(&data));
                Tensor::f32(dims.clone(), data)
            };
            concrete.push(BodyInput::Value(TensorType::new(
                t.dtype,
                dims.iter().map(|&d| Dim::from(d)).collect(),
            )));
            feed.insert(i.to_string(), tensor);
        }
        let body: Vec<BodyOp> = k
            .body
            .iter()
            .map(|s| step(concrete_op(&s.op, &env), &s.args))
            .collect();
        let (reference, _) = body_graph(&body, &concrete).unwrap();
        let want = interp::run(&reference, &BTreeMap::new(), &feed).unwrap();
        let want = want["out"].as_f32().unwrap().to_vec();
        buffers.push(vec![0; want.len() * 4]);
        Case {
            buffers,
            scalars: env.values().map(|&v| v as i64).collect(),
            output,
            want,
        }
    }

    /// Checks the output bytes `got` against the interpreter (1e-5 absolute + 1e-4 relative);
    /// `code` is shown on a mismatch.
    pub fn assert_matches(&self, got: &[u8], code: &dyn Display) {
        self.assert_within(got, code, (1e-5, 1e-4));
    }

    /// [`Self::assert_matches`] within `abs + rel·|want|` of each element; returns the largest
    /// difference.
    pub fn assert_within(&self, got: &[u8], code: &dyn Display, (abs, rel): (f32, f32)) -> f32 {
        let got: Vec<f32> = got
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got.len(), self.want.len());
        let mut largest = 0f32;
        for (i, (g, w)) in got.iter().zip(&self.want).enumerate() {
            assert!(
                (g - w).abs() <= abs + rel * w.abs(),
                "element {i}: got {g}, want {w}\n{code}"
            );
            largest = largest.max((g - w).abs());
        }
        largest
    }
}
