//! [`compile`] and [`wgsl_text`]: verify, translate, validate, write.

use crate::translate::translate;
use crate::{vulkan_capabilities, BufferBinding, CodegenError, SpirvKernel, VulkanTarget};
use naga::back::spv;
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::Module;
use tessera_ir::lir::{verify, Access, Kernel};

/// The SPIR-V version written: 1.3 is the first with the subgroup (`GroupNonUniform`)
/// instructions, and every Vulkan 1.1 device accepts it.
const SPIRV_VERSION: (u8, u8) = (1, 3);

/// Verifies `kernel` for `target`, translates it and writes validated SPIR-V.
///
/// Out-of-bounds accesses are clamped (naga's `Restrict` policy): a template bug reads a wrong
/// element instead of corrupting device memory, at the price of a `min` per access, until the
/// GPU templates are measured.
pub fn compile(kernel: &Kernel, target: &VulkanTarget) -> Result<SpirvKernel, CodegenError> {
    let (module, info) = validated(kernel, target)?;
    let restrict = BoundsCheckPolicy::Restrict;
    let options = spv::Options {
        lang_version: SPIRV_VERSION,
        bounds_check_policies: BoundsCheckPolicies {
            index: restrict,
            buffer: restrict,
            ..BoundsCheckPolicies::default()
        },
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
        ..spv::Options::default()
    };
    let words =
        spv::write_vec(&module, &info, &options, None).map_err(|e| naga_error(kernel, e))?;
    let buffers = kernel
        .buffers
        .iter()
        .enumerate()
        .map(|(i, p)| BufferBinding {
            name: p.name.clone(),
            binding: i as u32,
            elem: p.elem,
            read_only: p.access == Access::Read,
        })
        .collect();
    Ok(SpirvKernel {
        name: kernel.name.clone(),
        words,
        entry_point: kernel.name.clone(),
        workgroup_size: kernel.workgroup_size,
        buffers,
        scalars: kernel.scalars.clone(),
        grid: kernel.grid.clone(),
    })
}

/// The translated module of `kernel` as WGSL, after validation.
pub fn wgsl_text(kernel: &Kernel, target: &VulkanTarget) -> Result<String, CodegenError> {
    let (module, info) = validated(kernel, target)?;
    naga::back::wgsl::write_string(&module, &info, naga::back::wgsl::WriterFlags::empty())
        .map_err(|e| naga_error(kernel, e))
}

/// `kernel` verified against the target, translated and validated by naga with the
/// capabilities the target has.
fn validated(kernel: &Kernel, target: &VulkanTarget) -> Result<(Module, ModuleInfo), CodegenError> {
    verify(kernel, &vulkan_capabilities(target))?;
    let module = translate(kernel, target.f16)?;
    // `pack2x16float`/`unpack2x16float`/`quantizeToF16` are core GLSL.std.450 on every Vulkan
    // device.
    let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if target.has_subgroups() {
        caps |= Capabilities::SUBGROUP;
    }
    if target.f16 {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| naga_error(kernel, format!("{:?}", e.into_inner())))?;
    Ok((module, info))
}

fn naga_error(kernel: &Kernel, e: impl std::fmt::Display) -> CodegenError {
    CodegenError::Naga {
        kernel: kernel.name.clone(),
        message: e.to_string(),
    }
}
