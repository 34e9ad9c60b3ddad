//! [`CodegenError`]: why a kernel cannot be compiled for Vulkan.

use tessera_ir::lir::LirError;
use thiserror::Error;

/// Why compiling a kernel for Vulkan failed (or its launch arguments do not fit it); every
/// variant names the kernel.
#[derive(Debug, Error)]
pub enum CodegenError {
    /// The kernel does not pass [`tessera_ir::lir::verify`] against the target's
    /// [`crate::vulkan_capabilities`] (the error names the kernel and the statement).
    #[error("verification failed: {0}")]
    Verify(#[from] LirError),
    /// The kernel verifies but uses something this backend cannot translate.
    #[error("kernel {kernel}: unsupported on the Vulkan backend: {what}")]
    Unsupported { kernel: String, what: String },
    /// naga rejected the translated module or could not write it: a translator bug, reported
    /// with naga's own message.
    #[error("kernel {kernel}: naga: {message}")]
    Naga { kernel: String, message: String },
    /// The scalars passed to a launch do not fit the kernel.
    #[error("kernel {kernel}: launch: {message}")]
    Launch { kernel: String, message: String },
}
