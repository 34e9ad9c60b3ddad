//! [`VulkanError`]: why a Vulkan device could not be opened or a kernel not run on it.

use tessera_codegen_spirv::CodegenError;
use thiserror::Error;

/// Why opening a Vulkan device or launching a kernel on it failed; launch errors name the kernel.
#[derive(Debug, Error)]
pub enum VulkanError {
    /// No Vulkan adapter at this index (`found` adapters exist; none at all without a Vulkan
    /// driver: install e.g. `mesa-vulkan-drivers` for lavapipe).
    #[error("no Vulkan adapter {index} ({found} found; is a Vulkan driver such as mesa-vulkan-drivers installed?)")]
    NoAdapter { index: usize, found: usize },
    /// The adapter refused to create a device.
    #[error("Vulkan adapter {adapter}: {message}")]
    Device { adapter: String, message: String },
    /// The kernel's arguments do not fit it (counts, sizes, scalar ranges).
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    /// The kernel cannot run on this device (limits) or the device reported an error running it.
    #[error("kernel {kernel}: {message}")]
    Launch { kernel: String, message: String },
}
