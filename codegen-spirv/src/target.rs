//! [`VulkanTarget`] and [`vulkan_capabilities`]: what a Vulkan device lets kernels use.

use std::collections::BTreeSet;
use tessera_ir::lir::{Capabilities, IntrinsicKind};

/// The properties of a Vulkan device that code generation depends on; the runtime reads them
/// from the device it opens (`VulkanDevice::target`), tests use [`VulkanTarget::baseline`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VulkanTarget {
    /// Subgroup sizes the device may run compute shaders with; empty when subgroup operations
    /// are not to be used (then kernels with subgroup specials or intrinsics are refused).
    pub subgroup_sizes: Vec<u32>,
    /// `maxComputeWorkGroupInvocations`.
    pub max_workgroup_size: u32,
    /// `maxComputeSharedMemorySize`, in bytes.
    pub shared_bytes: u32,
    /// `shaderFloat16` with 16-bit storage (wgpu's `SHADER_F16`): `f16` values and buffers are
    /// native (8-byte `vec4<f16>` loads, no unpacking) and kernels may compute in `f16`.
    pub f16: bool,
}

impl VulkanTarget {
    /// The limits every Vulkan device guarantees (256 invocations, 16 KiB of shared memory) and
    /// no subgroups: what a kernel may assume without asking the device.
    pub fn baseline() -> VulkanTarget {
        VulkanTarget {
            subgroup_sizes: vec![],
            max_workgroup_size: 256,
            shared_bytes: 16384,
            f16: false,
        }
    }

    /// Whether subgroup operations are available.
    pub fn has_subgroups(&self) -> bool {
        !self.subgroup_sizes.is_empty()
    }
}

/// What kernels for `target` may use: its limits; the packed 8-bit dot products (naga emits
/// `OpSDot` or a polyfill, `Dot4U8I8Packed` is emulated); subgroup reductions and broadcasts
/// when it has subgroups; `f16` arithmetic when it has `shader-f16` (otherwise `f16` is a storage
/// type only and values are widened to `f32`).
pub fn vulkan_capabilities(target: &VulkanTarget) -> Capabilities {
    let mut intrinsics =
        BTreeSet::from([IntrinsicKind::Dot4I8Packed, IntrinsicKind::Dot4U8I8Packed]);
    if target.has_subgroups() {
        intrinsics.extend([
            IntrinsicKind::SubgroupReduce,
            IntrinsicKind::SubgroupBroadcast,
        ]);
    }
    Capabilities {
        subgroup_sizes: target.subgroup_sizes.clone(),
        intrinsics,
        max_workgroup_size: target.max_workgroup_size,
        shared_bytes: target.shared_bytes,
        f16: target.f16,
    }
}
