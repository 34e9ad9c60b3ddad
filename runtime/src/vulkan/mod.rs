//! The Vulkan launch path (feature `vulkan`, on by default): runs kernels compiled by
//! `tessera-codegen-spirv` on a Vulkan device through wgpu's Vulkan backend (DESIGN.md §5).
//!
//! [`VulkanDevice::list`] shows the adapters, [`VulkanDevice::open`] opens one and
//! [`VulkanDevice::target`] says what code generation may assume about it. The SPIR-V goes to
//! the driver as it is, through `Features::PASSTHROUGH_SHADERS` (every Vulkan adapter has it):
//! the words were validated by naga when they were written, and passthrough keeps the
//! subgroup and packed-dot-product instructions wgpu's own shader front end would re-check.
//! The binding layout is the one `SpirvKernel` documents, declared explicitly since a
//! passthrough module carries no reflection. wgpu is a large dependency (a few minutes of build),
//! hence the feature; lavapipe (Mesa's CPU driver) is enough to run everything in CI.

mod bandwidth;
mod device;
mod error;
mod executor;
mod launch;

pub use device::{AdapterSummary, VulkanDevice};
pub use error::VulkanError;
pub use executor::VulkanExecutor;
pub use launch::VulkanPipeline;

#[cfg(test)]
mod tests;
