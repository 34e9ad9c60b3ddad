//! Vulkan backend: LIR → `naga::Module` → validated SPIR-V (DESIGN.md §5). [`compile`] verifies a
//! kernel against [`vulkan_capabilities`] of a [`VulkanTarget`], translates it into a naga module
//! with one compute entry point, validates that module with naga's validator (capabilities
//! derived from the target) and writes SPIR-V 1.3; the result, a [`SpirvKernel`], carries the
//! words and the binding layout the runtime's Vulkan launch path needs. [`wgsl_text`] shows the
//! same module as WGSL (`tessera explain`). The representation decisions (`i64` narrowed to
//! `i32`, byte-addressed `u8` buffers, half types as storage) are documented in `translate.rs`.

mod builder;
mod compile;
mod error;
pub mod examples;
mod kernel;
mod target;
mod translate;

pub use compile::{compile, wgsl_text};
pub use error::CodegenError;
pub use kernel::{BufferBinding, SpirvKernel};
pub use target::{vulkan_capabilities, VulkanTarget};

#[cfg(test)]
mod tests;
