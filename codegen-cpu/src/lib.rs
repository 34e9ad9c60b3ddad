//! CPU backend: LIR to native code, JIT-compiled for the host (DESIGN.md §5). [`compile`]
//! verifies a kernel against [`cpu_capabilities`], translates it and JIT-compiles it with the
//! default [`Backend`]; [`CompiledKernel::launch`] runs its grid. Two backends share the ABI, the
//! semantics and the launch checks: Cranelift (embedded, always built) and, with cargo feature
//! `llvm`, LLVM at O3 for the host CPU (the default when built). [`clif_text`] shows the
//! Cranelift function (`tessera explain --emit clif`), [`llvm_ir_text`] the optimized LLVM IR.

mod backend;
mod error;
mod jit;
mod launch;
#[cfg(feature = "llvm")]
mod llvm;
mod program;
mod rules;
mod translate;

#[cfg(feature = "llvm")]
pub use backend::llvm_ir_text;
pub use backend::{asm_text, compile, compile_with, Backend};
pub use error::CodegenError;
pub use jit::clif_text;
pub use launch::CompiledKernel;
pub use program::{compile_program, CompiledProgram};

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
