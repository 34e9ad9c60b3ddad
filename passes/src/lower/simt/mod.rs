//! The SIMT (GPU) templates: many threads per workgroup, workgroups over the grid, shared
//! memory and subgroups where the target's [`Capabilities`] have them. Written for SIMT in
//! general (a SPIR-V/Vulkan and a PTX backend consume the same LIR) and checked on lavapipe.
//! [`super::lower_gpu`] dispatches here; a kernel kind without a SIMT template yet is an
//! `Unsupported` error naming it.

mod attention;
mod elementwise;
mod gemv;

use super::expr::Body;
use super::Steps;
use tessera_ir::kernel::KernelKind;
use tessera_ir::lir::{self, BufRef, Capabilities, KernelBuilder};

/// Threads per workgroup of the templates that use a fixed size: every Vulkan device runs 256
/// (`maxComputeWorkGroupInvocations` ≥ 128 is the guaranteed minimum, 256 the common one).
pub(super) const WORKGROUP: u32 = 256;

/// The SIMT program of a kernel of `kind` built by `steps`: one step, except FlashDecoding with
/// more than one split (its splits, then their merge, as on the CPU).
pub(super) fn lower(
    steps: &Steps,
    kind: &KernelKind,
    caps: &Capabilities,
) -> Result<lir::Program, String> {
    if caps.max_workgroup_size < WORKGROUP {
        return Err(format!(
            "a device with workgroups of at most {} threads (the SIMT templates use {WORKGROUP})",
            caps.max_workgroup_size
        ));
    }
    if let KernelKind::FlashDecoding { splits } = *kind {
        if splits > 1 {
            return attention::lower_split(steps, splits);
        }
    }
    steps
        .build("", &[], |b, body, out, _| {
            lower_step(b, kind, body, out, caps)
        })
        .map(lir::Program::single)
}

/// Writes the one-step SIMT kernel of `kind` over `body` into `b`, storing to `out`.
fn lower_step(
    b: &mut KernelBuilder,
    kind: &KernelKind,
    body: &Body,
    out: BufRef,
    caps: &Capabilities,
) -> Result<(), String> {
    match kind {
        KernelKind::Elementwise | KernelKind::Layout => elementwise::lower(b, body, out),
        KernelKind::Gather => super::gather::lower(b, body, out),
        KernelKind::RowReduce => super::row_reduce::lower(b, body, out),
        KernelKind::Gemv { .. } => gemv::lower(b, body, out),
        KernelKind::KvAppend => super::kv_append::lower(b, body, out),
        KernelKind::FlashDecoding { .. } => attention::lower_decoding(b, body, out),
        KernelKind::FlashAttention { .. } => {
            attention::lower_prefill(b, body, out, caps.shared_bytes)
        }
        other => Err(format!("a {} kernel (no SIMT template yet)", other.name())),
    }
}
