//! CPU backend: LIR to native code through the Cranelift JIT, the embedded default backend
//! (DESIGN.md §5). [`compile`] verifies a kernel against [`cpu_capabilities`], translates it to
//! one Cranelift function and JIT-compiles it for the host; [`CompiledKernel::launch`] runs its
//! grid. [`clif_text`] shows the translated function (`tessera explain --emit clif`).

mod error;
mod jit;
mod launch;
mod translate;

pub use error::CodegenError;
pub use jit::{asm_text, clif_text, compile};
pub use launch::CompiledKernel;

use std::collections::BTreeSet;
use tessera_ir::lir::{Capabilities, IntrinsicKind};

/// What CPU kernels may use: a workgroup is one thread (the groups are the work items a thread
/// pool splits), so there are no subgroups and no shared memory; the intrinsics are the packed
/// 8-bit dot products of quantized kernels; `f16` is a storage type only.
pub fn cpu_capabilities() -> Capabilities {
    Capabilities {
        subgroup_sizes: vec![],
        intrinsics: BTreeSet::from([IntrinsicKind::Dot4I8Packed, IntrinsicKind::Dot4U8I8Packed]),
        max_workgroup_size: 1,
        shared_bytes: 0,
        f16: false,
    }
}

#[cfg(test)]
mod tests;
