//! [`CodegenError`]: why a kernel cannot be compiled or launched on the CPU backend.

use tessera_ir::lir::LirError;
use thiserror::Error;

/// Why compiling or launching a kernel failed; every variant names the kernel.
#[derive(Debug, Error)]
pub enum CodegenError {
    /// The kernel does not pass [`tessera_ir::lir::verify`] against
    /// [`crate::cpu_capabilities`] (the error names the kernel and the statement).
    #[error("verification failed: {0}")]
    Verify(#[from] LirError),
    /// The kernel verifies but uses something this backend cannot translate.
    #[error("kernel {kernel}: unsupported on the CPU backend: {what}")]
    Unsupported { kernel: String, what: String },
    /// Cranelift rejected the translated function or could not emit it.
    #[error("kernel {kernel}: cranelift: {message}")]
    Cranelift { kernel: String, message: String },
    /// LLVM rejected the translated module or could not optimize or JIT-compile it (the `llvm`
    /// feature's backend).
    #[cfg(feature = "llvm")]
    #[error("kernel {kernel}: llvm: {message}")]
    Llvm { kernel: String, message: String },
    /// The buffers or scalars passed to a launch do not fit the kernel.
    #[error("kernel {kernel}: launch: {message}")]
    Launch { kernel: String, message: String },
}
