//! The LLVM backend (cargo feature `llvm`): LIR → LLVM IR ([`translate`]), optimized at O3 for
//! the host CPU and JIT-compiled by MCJIT ([`jit`]), with the same ABI and semantics as the
//! Cranelift backend. LLVM's vectorizers, unroller and instruction selection (VNNI dot
//! products, `zmm` registers on AVX-512 hosts) are what it adds; see [`crate::Backend`].

mod dot;
mod host;
mod jit;
mod translate;

pub(crate) use host::Host;
pub(crate) use jit::{asm_text, compile, ir_text, JitCode};
#[cfg(test)]
use {host::DotInstructions, jit::compile_for};

use crate::CodegenError;
use inkwell::builder::BuilderError;
use tessera_ir::lir::Kernel;

/// Why translating or compiling stopped, before the kernel's name is attached.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The kernel uses something the CPU backends cannot run.
    Unsupported(String),
    /// LLVM rejected something (a bug in the translator or an unusable LLVM installation).
    Llvm(String),
}

impl From<BuilderError> for Failure {
    fn from(e: BuilderError) -> Failure {
        Failure::Llvm(e.to_string())
    }
}

impl Failure {
    fn at(self, kernel: &Kernel) -> CodegenError {
        let kernel = kernel.name.clone();
        match self {
            Failure::Unsupported(what) => CodegenError::Unsupported { kernel, what },
            Failure::Llvm(message) => CodegenError::Llvm { kernel, message },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
