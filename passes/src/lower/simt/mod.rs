//! The SIMT (GPU) templates: many threads per workgroup, workgroups over the grid, shared
//! memory and subgroups where the target's [`Capabilities`] have them. Written for SIMT in
//! general (a SPIR-V/Vulkan and a PTX backend consume the same LIR) and checked on lavapipe.
//! [`super::lower_gpu`] dispatches here; a kernel kind without a SIMT template yet is an
//! `Unsupported` error naming it.

mod elementwise;
mod gemv;
mod qgemv;

use super::expr::Body;
use tessera_ir::kernel::KernelKind;
use tessera_ir::lir::{BufRef, Capabilities, KernelBuilder};

/// Threads per workgroup of the templates that use a fixed size: every Vulkan device runs 256
/// (`maxComputeWorkGroupInvocations` ≥ 128 is the guaranteed minimum, 256 the common one).
pub(super) const WORKGROUP: u32 = 256;

/// Writes the SIMT kernel of `kind` over `body` into `b`, storing to `out`.
pub(super) fn lower(
    b: &mut KernelBuilder,
    kind: &KernelKind,
    body: &Body,
    out: BufRef,
    caps: &Capabilities,
) -> Result<(), String> {
    if caps.max_workgroup_size < WORKGROUP {
        return Err(format!(
            "a device with workgroups of at most {} threads (the SIMT templates use {WORKGROUP})",
            caps.max_workgroup_size
        ));
    }
    match kind {
        KernelKind::Elementwise | KernelKind::Layout => elementwise::lower(b, body, out),
        KernelKind::Gather => super::gather::lower(b, body, out),
        KernelKind::RowReduce => super::row_reduce::lower(b, body, out),
        KernelKind::Gemv { .. } => gemv::lower(b, body, out),
        KernelKind::KvAppend => super::kv_append::lower(b, body, out),
        KernelKind::QGemv { .. } => qgemv::lower(b, body, out, caps, qgemv::GEMV_TILE),
        KernelKind::QGemm { .. } => qgemv::lower(b, body, out, caps, qgemv::GEMM_TILE),
        other => Err(format!("a {} kernel (no SIMT template yet)", other.name())),
    }
}
