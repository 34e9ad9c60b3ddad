//! The Graph's op set (DESIGN.md §3): primitives plus first-class composites (matmul, norms, RoPE,
//! attention, quantization, KV append), each with a reference definition in `interp`.

use crate::{DType, Dim, Shape};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Abs,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Relu,
    /// x·sigmoid(x) (Llama's `silu`).
    Silu,
    /// The tanh approximation of GELU (GPT-2's `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// The exact GELU, x·Φ(x).
    GeluErf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
    /// Comparisons produce `bool`.
    Lt,
    Le,
    Eq,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Lt | BinaryOp::Le | BinaryOp::Eq)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOp {
    Sum,
    Max,
    Mean,
}

/// How RoPE pairs the dims it rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeLayout {
    /// Dim i pairs with i + r/2 (HF Llama's `rotate_half`; GPT-NeoX).
    Half,
    /// Dim 2i pairs with 2i + 1 (GPT-J, Meta's original Llama checkpoints, GGUF's `rope` norm mode).
    Interleaved,
}

/// One Graph operation. Inputs are listed on each variant as `(name: shape)`; the output type is
/// given by `infer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A named runtime input (token ids, positions, KV cache state).
    Input { name: String },
    /// A named weight of the module; its type is the module's declaration.
    Weight { name: String },
    /// A scalar of the node's dtype; broadcasts against anything.
    Constant { value: f64 },
    /// Elementwise over one input.
    Unary(UnaryOp),
    /// Elementwise over two inputs with numpy broadcasting.
    Binary(BinaryOp),
    /// (cond: bool, a, b) → where(cond, a, b), broadcasting.
    Select,
    /// Converts to another plain dtype (rounding through it for f16/bf16).
    Cast { to: DType },
    /// Reduces `axes` (sorted, unique).
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
        keep_dims: bool,
    },
    /// Same elements, row-major, new shape (element counts must be provably equal).
    Reshape { shape: Shape },
    /// Axis permutation: output axis i is input axis `perm[i]`.
    Permute { perm: Vec<usize> },
    /// Broadcasts size-1 axes (and new leading axes) to `shape`.
    Expand { shape: Shape },
    /// Elements `start..end` of `axis`.
    Slice { axis: usize, start: Dim, end: Dim },
    /// Joins its inputs along `axis`.
    Concat { axis: usize },
    /// (table: [V, ...], ids: int [...]) → [ids..., ...]: rows of `table`; ids out of range are an error.
    Gather,
    /// (a: [..., M, K], b: [..., K, N] or [..., N, K] when `transpose_b`) → [..., M, N] in a's dtype;
    /// batch axes broadcast; b may be any float dtype (weights stay in their stored precision).
    MatMul { transpose_b: bool },
    /// Softmax over the last axis.
    Softmax,
    /// (x: [..., D], weight: [D]) → x / sqrt(mean(x²) + eps) · weight.
    RmsNorm { eps: f32 },
    /// (x: [..., D], weight: [D], bias: [D]) → (x − mean) / sqrt(var + eps) · weight + bias.
    LayerNorm { eps: f32 },
    /// (x: [B, H, S, D], positions: i32 [B, S], inv_freq: f32 [R/2]) → x with its first R dims
    /// rotated by angle position·inv_freq; the remaining D − R dims pass through. All RoPE scaling
    /// schemes (linear, llama3, …) are expressed through `inv_freq`.
    Rope { layout: RopeLayout },
    /// (q: [B, Hq, S, D], k: [B, Hkv, T, D], v: [B, Hkv, T, Dv] [, mask]) → [B, Hq, S, Dv];
    /// softmax(scale·q·kᵀ [+ mask])·v with query head h reading KV head h / (Hq / Hkv) (GQA).
    /// The optional fourth input `mask` is a float tensor broadcasting (numpy rules) to the scores'
    /// shape [B, Hq, S, T]; it is added to scale·q·kᵀ before the causal/window masking and the
    /// softmax. Queries are the last S positions of the T keys: with `causal`, query i sees keys
    /// j ≤ T − S + i; with `window = Some(w)` also only keys j > T − S + i − w (sliding window).
    /// A query row that sees no key (all masked, or all −∞ after adding `mask`) is zeros.
    Attention {
        scale: f32,
        causal: bool,
        window: Option<usize>,
    },
    /// (w: q8_0 | q4_0 [..., K]) → f32 [..., K].
    Dequantize,
    /// (a: f32 [..., M, K], w: q8_0 | q4_0) → MatMul(a, Dequantize(w)) with the same layout rules.
    QuantMatMul { transpose_b: bool },
    /// (cache: [B, H, P, D], new: [B, H, S, D]) → [B, H, P + S, D]: the cache with `new` appended.
    /// Functional here; backends update the cache in place.
    KvAppend,
}

impl Op {
    /// The short lower-case name used in dumps and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Weight { .. } => "weight",
            Op::Constant { .. } => "constant",
            Op::Unary(_) => "unary",
            Op::Binary(_) => "binary",
            Op::Select => "select",
            Op::Cast { .. } => "cast",
            Op::Reduce { .. } => "reduce",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Expand { .. } => "expand",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Gather => "gather",
            Op::MatMul { .. } => "matmul",
            Op::Softmax => "softmax",
            Op::RmsNorm { .. } => "rms_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Dequantize => "dequantize",
            Op::QuantMatMul { .. } => "quant_matmul",
            Op::KvAppend => "kv_append",
        }
    }
}
