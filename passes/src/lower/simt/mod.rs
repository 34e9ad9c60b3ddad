//! The SIMT (GPU) templates: many threads per workgroup, workgroups over the grid, shared
//! memory and subgroups where the target's [`Capabilities`] have them. Written for SIMT in
//! general (a SPIR-V/Vulkan and a PTX backend consume the same LIR) and checked on lavapipe.
//! [`super::lower_gpu`] dispatches here; every kernel kind has a template, and a body a template
//! does not take is an `Unsupported` error naming what.

mod attention;
mod elementwise;
mod gemm;
mod gemv;
mod matmul_store;
mod qgemv;

use super::expr::Body;
use super::{Precision, Steps};
use matmul_store::Sink;
use tessera_ir::kernel::KernelKind;
use tessera_ir::lir::{self, BufRef, Capabilities, KernelBuilder};

/// Threads per workgroup of the templates that use a fixed size: every Vulkan device runs 256
/// (`maxComputeWorkGroupInvocations` ≥ 128 is the guaranteed minimum, 256 the common one).
pub(super) const WORKGROUP: u32 = 256;

/// Lanes of the SIMT templates' vector loads: 4 floats (16 bytes) or 4 halves (8 bytes) per
/// thread and step. The decode path is bandwidth-bound, and a GPU moves memory fastest in
/// 8- and 16-byte accesses, which a backend emits for a vector load whose index
/// `known_alignment` proves a multiple of its lanes (else one access per lane).
pub(super) const VEC: u32 = 4;

/// The lanes a template reads runs of a row of `len` elements in: [`VEC`] when such runs tile
/// it (every run then starts at a multiple of [`VEC`] of an aligned row), else 1.
pub(super) fn run_lanes(len: i64) -> u32 {
    if len % i64::from(VEC) == 0 {
        VEC
    } else {
        1
    }
}

/// The SIMT program of a kernel of `kind` for a device with `caps`: one step, or two for a
/// matmul whose epilogue moves elements between rows ([`matmul_store`]) and for FlashDecoding
/// with more than one split (its splits, then their merge, as on the CPU).
pub(super) fn program(
    steps: &Steps,
    kind: &KernelKind,
    (caps, precision): (&Capabilities, Precision),
) -> Result<lir::Program, String> {
    if caps.max_workgroup_size < WORKGROUP {
        return Err(format!(
            "a device with workgroups of at most {} threads (the SIMT templates use {WORKGROUP})",
            caps.max_workgroup_size
        ));
    }
    let single = |write: &dyn Fn(&mut KernelBuilder, &Body, BufRef) -> Result<(), String>| {
        let step = steps.build("", &[], |b, body, out, _| write(b, body, out))?;
        Ok(lir::Program::single(step))
    };
    match kind {
        KernelKind::Elementwise | KernelKind::Layout => single(&elementwise::lower),
        KernelKind::Gather => single(&super::gather::lower),
        KernelKind::RowReduce => single(&super::row_reduce::lower),
        KernelKind::KvAppend => single(&super::kv_append::lower),
        KernelKind::Gemv { .. } => matmul_store::program(steps, &gemv::lower),
        KernelKind::Gemm { .. } => matmul_store::program(steps, &|b, body, sink: &Sink| {
            gemm::lower(b, body, sink, gemm::SQUARE, (caps, precision))
        }),
        KernelKind::FlatGemm { .. } => matmul_store::program(steps, &|b, body, sink: &Sink| {
            gemm::lower(b, body, sink, gemm::FLAT, (caps, precision))
        }),
        KernelKind::QGemv { .. } => {
            single(&|b, body, out| qgemv::lower(b, body, out, caps, qgemv::GEMV_TILE))
        }
        KernelKind::QGemm { .. } => {
            single(&|b, body, out| qgemv::lower(b, body, out, caps, qgemv::GEMM_TILE))
        }
        KernelKind::FlashDecoding { splits } if *splits > 1 => {
            attention::lower_split(steps, *splits)
        }
        KernelKind::FlashDecoding { .. } => single(&attention::lower_decoding),
        KernelKind::FlashAttention { .. } => {
            single(&|b, body, out| attention::lower_prefill(b, body, out, caps.shared_bytes))
        }
    }
}
