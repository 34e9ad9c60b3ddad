//! [`VulkanDevice`]: adapter discovery and one opened device with its queue.

use super::VulkanError;
use tessera_codegen_spirv::VulkanTarget;

/// What `VulkanDevice::list` reports about one adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Its index for [`VulkanDevice::open`].
    pub index: usize,
    pub name: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu` (lavapipe), …
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_workgroup_size: u32,
    pub shared_bytes: u32,
    pub max_storage_buffer_binding_size: u64,
    /// Smallest and largest subgroup size (0 when unknown).
    pub subgroup_sizes: (u32, u32),
    /// Whether shaders may compute in and store `f16` (`shaderFloat16` with 16-bit storage).
    pub shader_f16: bool,
}

/// An opened Vulkan device: kernels are loaded into it ([`VulkanDevice::load`]) and launched.
pub struct VulkanDevice {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) limits: wgpu::Limits,
    summary: AdapterSummary,
    subgroups: bool,
    /// Whether shaders may use `f16` (the `SHADER_F16` feature is enabled).
    f16: bool,
    /// Whether compute passes can write timestamps (kernel profiling).
    pub(super) timestamps: bool,
}

/// A wgpu instance restricted to the Vulkan backend.
fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

fn adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::VULKAN))
}

fn summary(index: usize, adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let limits = adapter.limits();
    AdapterSummary {
        index,
        name: info.name,
        device_type: format!("{:?}", info.device_type),
        driver: info.driver,
        driver_info: info.driver_info,
        max_workgroup_size: limits.max_compute_invocations_per_workgroup,
        shared_bytes: limits.max_compute_workgroup_storage_size,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
        shader_f16: adapter.features().contains(wgpu::Features::SHADER_F16),
    }
}

impl VulkanDevice {
    /// The Vulkan adapters on this machine, in the order [`open`](Self::open) indexes them.
    pub fn list() -> Vec<AdapterSummary> {
        adapters()
            .iter()
            .enumerate()
            .map(|(i, a)| summary(i, a))
            .collect()
    }

    /// Opens adapter `index` with its full limits, raw SPIR-V passthrough and, where the
    /// adapter has them, subgroup operations, timestamps and `f16`.
    pub fn open(index: usize) -> Result<VulkanDevice, VulkanError> {
        let all = adapters();
        let found = all.len();
        let adapter = all
            .into_iter()
            .nth(index)
            .ok_or(VulkanError::NoAdapter { index, found })?;
        let summary = summary(index, &adapter);
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP);
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut required_features = wgpu::Features::PASSTHROUGH_SHADERS;
        if subgroups {
            required_features |= wgpu::Features::SUBGROUP;
        }
        if timestamps {
            required_features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let f16 = summary.shader_f16;
        if f16 {
            required_features |= wgpu::Features::SHADER_F16;
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("tessera"),
            required_features,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| VulkanError::Device {
                adapter: summary.name.clone(),
                message: e.to_string(),
            })?;
        let limits = device.limits();
        Ok(VulkanDevice {
            device,
            queue,
            limits,
            summary,
            subgroups,
            f16,
            timestamps,
        })
    }

    /// The opened adapter.
    pub fn summary(&self) -> &AdapterSummary {
        &self.summary
    }

    /// What kernels compiled for this device may use: its limits, `f16` arithmetic where it has
    /// `shader-f16` and, when it has subgroup operations, its subgroup sizes (the powers of two
    /// between the smallest and largest).
    pub fn target(&self) -> VulkanTarget {
        let (min, max) = self.summary.subgroup_sizes;
        let subgroup_sizes = if self.subgroups && min > 0 {
            (min.trailing_zeros()..=max.max(min).trailing_zeros())
                .map(|p| 1 << p)
                .collect()
        } else {
            vec![]
        };
        VulkanTarget {
            subgroup_sizes,
            max_workgroup_size: self.limits.max_compute_invocations_per_workgroup,
            shared_bytes: self.limits.max_compute_workgroup_storage_size,
            f16: self.f16,
        }
    }
}
