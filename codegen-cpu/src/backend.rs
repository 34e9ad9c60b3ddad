//! [`Backend`]: which compiler turns LIR into host code, and the entry points that take one.

use crate::{jit, CodegenError, CompiledKernel};
use tessera_ir::lir::Kernel;

/// The code generator behind [`compile_with`]. Both take the same LIR, produce the same ABI and
/// compute the same results (within float rounding: LLVM may reassociate lane reductions and
/// uses libm's transcendentals); they differ in compile time and code quality. The default is
/// the fastest code this build can produce: LLVM when built with it, Cranelift otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Cranelift: compiles in milliseconds, embedded, always built; 128-bit SIMD only.
    #[cfg_attr(not(feature = "llvm"), default)]
    Cranelift,
    /// LLVM at O3 for the host CPU (cargo feature `llvm`): slower to compile, faster code
    /// (auto-vectorization to the host's widest registers, VNNI dot products).
    #[cfg(feature = "llvm")]
    #[default]
    Llvm,
}

impl Backend {
    /// Every backend this build has.
    pub const ALL: &'static [Backend] = &[
        Backend::Cranelift,
        #[cfg(feature = "llvm")]
        Backend::Llvm,
    ];

    /// Its name on the command line (`--cpu-backend`) and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cranelift => "cranelift",
            #[cfg(feature = "llvm")]
            Backend::Llvm => "llvm",
        }
    }
}

/// Verifies, translates and JIT-compiles `kernel` for the host CPU with the default backend.
pub fn compile(kernel: &Kernel) -> Result<CompiledKernel, CodegenError> {
    compile_with(kernel, Backend::default())
}

/// [`compile`] with a chosen backend.
pub fn compile_with(kernel: &Kernel, backend: Backend) -> Result<CompiledKernel, CodegenError> {
    match backend {
        Backend::Cranelift => jit::compile(kernel),
        #[cfg(feature = "llvm")]
        Backend::Llvm => crate::llvm::compile(kernel),
    }
}

/// The host machine code `backend` generates for `kernel`, as assembly text (`tessera explain
/// --emit asm`): what to read when a template is slower than its instruction count suggests.
pub fn asm_text(kernel: &Kernel, backend: Backend) -> Result<String, CodegenError> {
    match backend {
        Backend::Cranelift => jit::asm_text(kernel),
        #[cfg(feature = "llvm")]
        Backend::Llvm => crate::llvm::asm_text(kernel),
    }
}

/// The LLVM IR of `kernel` after LLVM's O3 pipeline for the host (`tessera explain --emit
/// llvm`): whether a loop vectorized, and to what width.
#[cfg(feature = "llvm")]
pub fn llvm_ir_text(kernel: &Kernel) -> Result<String, CodegenError> {
    crate::llvm::ir_text(kernel)
}
