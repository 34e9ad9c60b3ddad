//! Lowering: KernelGraph kernels to LIR (DESIGN.md §3), one template per algorithm and target
//! class. [`lower_gpu`] writes the [`simt`] (GPU) templates; [`lower_cpu`] the CPU (SIMD, one
//! thread per workgroup) templates:
//! [`elementwise`], [`row_reduce`], [`gemv`], [`gemm`], [`qgemv`], [`kv_append`], [`gather`]
//! and [`attention`].
//!
//! **LIR ABI.** Buffer params are the kernel's inputs in order (read-only, `in0`, `in1`, …), then
//! its output (`out`); scalar params are the `i64` values of the symbols appearing in any
//! input or output shape, sorted by name, so the kernel evaluates its shapes from them and its
//! grid is a `SizeExpr` over them. Buffers are dense and row-major; inputs broadcast to the
//! output by numpy rules. Supported element types are f32 and i32, f16 and bf16 (weights,
//! widened to f32 as they are read: kernels compute in f32); block-quantized weights (Q8_0,
//! Q4_0) are `u8` buffers of their GGUF blocks.

mod attention;
mod elementwise;
mod expr;
mod gather;
mod gemm;
mod gemv;
mod index;
mod kv_append;
mod lanes;
mod qgemv;
mod row_reduce;
mod simt;

use expr::{scalar_type, Body};
use index::Symbols;
use std::collections::BTreeSet;
use tessera_ir::kernel::{body_graph, BodyInput, Kernel, KernelKind};
use tessera_ir::lir::{self, Access, BufRef, Capabilities, KernelBuilder};
use tessera_ir::{DType, TensorType};
use thiserror::Error;

/// Why a kernel has no lowering: its body is malformed, or a template does not cover it yet.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LowerError {
    #[error("kernel `{scope}` ({kind}): not supported by the {templates} templates: {what}")]
    Unsupported {
        scope: String,
        kind: String,
        /// Which family of templates: `CPU` or `SIMT`.
        templates: &'static str,
        what: String,
    },
    #[error("kernel `{scope}` ({kind}): invalid body: {message}")]
    Invalid {
        scope: String,
        kind: String,
        message: String,
    },
}

/// The width of the vectors the float templates compute in: 128 bits for Cranelift (its SIMD
/// registers), the host's widest (256 for AVX2, 512 for AVX-512) for LLVM, which also splits
/// vectors wider than a host's registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorWidth {
    V128,
    V256,
    V512,
}

impl VectorWidth {
    /// The width of `bits` bits, if it is one of 128, 256 and 512.
    pub fn from_bits(bits: u32) -> Option<VectorWidth> {
        match bits {
            128 => Some(VectorWidth::V128),
            256 => Some(VectorWidth::V256),
            512 => Some(VectorWidth::V512),
            _ => None,
        }
    }

    /// The host's widest vectors (`TargetSpec::cpu_host`'s SIMD width).
    pub fn host() -> VectorWidth {
        let bits = crate::cost::TargetSpec::cpu_host().simd_width_bytes * 8;
        VectorWidth::from_bits(bits as u32).unwrap_or(VectorWidth::V128)
    }

    pub fn bits(self) -> u32 {
        match self {
            VectorWidth::V128 => 128,
            VectorWidth::V256 => 256,
            VectorWidth::V512 => 512,
        }
    }

    /// f32 lanes per vector.
    pub fn lanes(self) -> u32 {
        self.bits() / 32
    }
}

/// Lowers `kernel`, whose inputs have types `inputs` and whose output has type `output`, to a
/// CPU LIR program with the ABI of the module doc, its float vectors `width` wide: one step,
/// except FlashDecoding with more than one split (its splits, then their merge).
pub fn lower_cpu(
    kernel: &Kernel,
    inputs: &[TensorType],
    output: &TensorType,
    width: VectorWidth,
) -> Result<lir::Program, LowerError> {
    let steps = Steps::new(kernel, inputs, output, (width.lanes(), 1))?;
    let single = |write: &dyn Fn(&mut KernelBuilder, &Body, BufRef) -> Result<(), String>| {
        let step = steps.build("", &[], |b, body, out, _| write(b, body, out))?;
        Ok(lir::Program::single(step))
    };
    match &kernel.kind {
        KernelKind::Elementwise | KernelKind::Layout => single(&elementwise::lower),
        KernelKind::RowReduce => single(&row_reduce::lower),
        KernelKind::KvAppend => single(&kv_append::lower),
        KernelKind::Gather => single(&gather::lower),
        KernelKind::FlashDecoding { splits } if *splits > 1 => {
            attention::lower_split(&steps, *splits)
        }
        KernelKind::FlashAttention { .. } | KernelKind::FlashDecoding { .. } => {
            single(&attention::lower)
        }
        KernelKind::Gemv { tile_n, .. } => {
            single(&|b, body, out| gemv::lower(b, body, out, *tile_n))
        }
        KernelKind::FlatGemm { .. } | KernelKind::Gemm { .. } => single(&gemm::lower),
        KernelKind::QGemv { .. } => single(&|b, body, out| qgemv::lower(b, body, out, 1)),
        KernelKind::QGemm { .. } => {
            single(&|b, body, out| qgemv::lower(b, body, out, qgemv::GEMM_ROWS))
        }
    }
    .map_err(|what| steps.unsupported("CPU", what))
}

/// What the SIMT GEMM (prefill) multiplies in. `F32`, the default, matches the interpreter to
/// f32 rounding. `F16`, for devices with f16 arithmetic, stages the lhs and weight tiles in f16
/// shared memory (half the traffic) and sums each k chunk's products in f16 before adding them
/// to f32 sums: the trade MLC-LLM's `q4f16` and llama.cpp's Vulkan f16 shaders make, about 1e-3
/// relative error for prefill speed on GPUs without tensor-core paths. Decode's gemv is
/// bandwidth-bound and stays f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

/// Lowers `kernel` (inputs of types `inputs`, output of type `output`) to a SIMT LIR program
/// for a GPU with capabilities `caps`, with the ABI of the module doc ([`simt`]): one step,
/// except FlashDecoding with more than one split, as [`lower_cpu`].
pub fn lower_gpu(
    kernel: &Kernel,
    inputs: &[TensorType],
    output: &TensorType,
    caps: &Capabilities,
) -> Result<lir::Program, LowerError> {
    lower_gpu_with(kernel, inputs, output, (caps, Precision::F32))
}

/// [`lower_gpu`] with the matmuls' arithmetic chosen by `precision`.
pub fn lower_gpu_with(
    kernel: &Kernel,
    inputs: &[TensorType],
    output: &TensorType,
    (caps, precision): (&Capabilities, Precision),
) -> Result<lir::Program, LowerError> {
    let mut steps = Steps::new(kernel, inputs, output, (1, simt::WORKGROUP))?;
    let reduces = caps
        .intrinsics
        .contains(&lir::IntrinsicKind::SubgroupReduce);
    steps.subgroup = caps
        .subgroup_sizes
        .iter()
        .copied()
        .min()
        .filter(|&s| reduces && s > 1 && simt::WORKGROUP.is_multiple_of(s));
    simt::program(&steps, &kernel.kind, (caps, precision))
        .map_err(|what| steps.unsupported("SIMT", what))
}

/// What every step of a kernel's program is built from: the kernel, its operand types and the
/// vector width.
struct Steps<'a> {
    kernel: &'a Kernel,
    inputs: &'a [TensorType],
    output: &'a TensorType,
    types: Vec<TensorType>,
    lanes: u32,
    threads: u32,
    /// See [`Body::subgroup`].
    subgroup: Option<u32>,
}

impl<'a> Steps<'a> {
    /// Types every body op of `kernel` over `inputs` and checks the last one is `output`; the
    /// steps compute in vectors of `lanes` f32 with `threads` threads per workgroup.
    fn new(
        kernel: &'a Kernel,
        inputs: &'a [TensorType],
        output: &'a TensorType,
        (lanes, threads): (u32, u32),
    ) -> Result<Steps<'a>, LowerError> {
        let invalid = |message: String| LowerError::Invalid {
            scope: kernel.scope.clone(),
            kind: kernel.kind.to_string(),
            message,
        };
        let values: Vec<BodyInput> = inputs.iter().cloned().map(BodyInput::Value).collect();
        let types = (0..kernel.body.len())
            .map(|j| {
                let (g, node) = body_graph(&kernel.body[..=j], &values)?;
                Ok(g.ty(node).clone())
            })
            .collect::<Result<Vec<_>, tessera_ir::IrError>>()
            .map_err(|e| invalid(e.to_string()))?;
        match types.last() {
            Some(t) if t == output => {}
            Some(t) => {
                return Err(invalid(format!(
                    "body yields {t} but the output is {output}"
                )))
            }
            None => return Err(invalid("empty body".into())),
        }
        Ok(Steps {
            kernel,
            inputs,
            output,
            types,
            lanes,
            threads,
            subgroup: None,
        })
    }

    /// The error of a kernel `templates` (`CPU`, `SIMT`) do not cover, for the reason `what`.
    fn unsupported(&self, templates: &'static str, what: String) -> LowerError {
        LowerError::Unsupported {
            scope: self.kernel.scope.clone(),
            kind: self.kernel.kind.to_string(),
            templates,
            what,
        }
    }

    /// One step: a LIR kernel named after the kernel (and `suffix`, when the program has several
    /// steps) with the ABI of the module doc plus the `scratch` buffer params after the output,
    /// its body written by `write` (given the builder, the body, the output and the scratch).
    fn build(
        &self,
        suffix: &str,
        scratch: &[(&str, lir::ScalarType, Access)],
        write: impl FnOnce(&mut KernelBuilder, &Body, BufRef, &[BufRef]) -> Result<(), String>,
    ) -> Result<lir::Kernel, String> {
        let kernel = self.kernel;
        let mut b = KernelBuilder::new(&format!("{}.{}{suffix}", kernel.scope, kernel.kind.name()));
        let buffers = self.input_buffers(&mut b)?;
        let out = b.buffer("out", buffer_type(self.output)?, Access::Write);
        let scratch: Vec<BufRef> = scratch
            .iter()
            .map(|&(name, elem, access)| b.buffer(name, elem, access))
            .collect();
        let body = self.body(&mut b, buffers);
        b.workgroup_size([self.threads, 1, 1]);
        write(&mut b, &body, out, &scratch)?;
        Ok(b.finish())
    }

    /// What `f` finds in the body (its symbols declared on a builder that is dropped): for a
    /// template to choose its program's steps before building them.
    fn inspect<T>(&self, f: impl FnOnce(&Body) -> Result<T, String>) -> Result<T, String> {
        let mut b = KernelBuilder::new(&self.kernel.scope);
        let buffers = self.input_buffers(&mut b)?;
        f(&self.body(&mut b, buffers))
    }

    /// The kernel's input buffer params (`in0`, `in1`, …), declared on `b`.
    fn input_buffers(&self, b: &mut KernelBuilder) -> Result<Vec<BufRef>, String> {
        (self.inputs.iter().enumerate())
            .map(|(i, t)| Ok(b.buffer(&format!("in{i}"), buffer_type(t)?, Access::Read)))
            .collect()
    }

    /// The body over the kernel's input `buffers`, its shape symbols declared as `b`'s scalar
    /// params.
    fn body(&self, b: &mut KernelBuilder, buffers: Vec<BufRef>) -> Body<'a> {
        let names: BTreeSet<String> = self
            .inputs
            .iter()
            .chain([self.output])
            .flat_map(|t| t.shape.iter().flat_map(|d| d.symbols().map(str::to_string)))
            .collect();
        let names: Vec<String> = names.into_iter().collect();
        Body {
            ops: &self.kernel.body,
            types: self.types.clone(),
            inputs: self.inputs,
            buffers,
            symbols: Symbols::declare(b, &names),
            lanes: self.lanes,
            threads: self.threads,
            subgroup: self.subgroup,
        }
    }
}

/// The element type of a buffer param: f32 or i32, f16/bf16 (weights, widened as they are
/// read), or bytes for a block-quantized weight.
fn buffer_type(t: &TensorType) -> Result<lir::ScalarType, String> {
    match t.dtype {
        _ if t.dtype.is_quantized() => return Ok(lir::ScalarType::U8),
        DType::F16 => return Ok(lir::ScalarType::F16),
        DType::Bf16 => return Ok(lir::ScalarType::Bf16),
        _ => {}
    }
    match scalar_type(t.dtype)? {
        s @ (lir::ScalarType::F32 | lir::ScalarType::I32) => Ok(s),
        _ => Err(format!("dtype {} in memory", t.dtype)),
    }
}
