//! The Vulkan device the template tests run SIMT lowerings on (the first adapter: lavapipe in
//! CI) and how a lowered kernel is launched there.

use std::sync::OnceLock;
use tessera_codegen_spirv::{compile, vulkan_capabilities, VulkanTarget};
use tessera_ir::kernel::Kernel;
use tessera_ir::lir::Program;
use tessera_ir::TensorType;
use tessera_passes::lower::{lower_gpu_with, Precision};
use tessera_runtime::vulkan::VulkanDevice;

/// The first adapter, opened once; `None` without one, unless `TESSERA_REQUIRE_VULKAN=1`
/// (then a missing adapter fails the test instead of skipping it).
fn device() -> Option<&'static VulkanDevice> {
    static DEVICE: OnceLock<Option<VulkanDevice>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            if VulkanDevice::list().is_empty() {
                let required = std::env::var("TESSERA_REQUIRE_VULKAN").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "TESSERA_REQUIRE_VULKAN=1 but no Vulkan adapter was found"
                );
                return None;
            }
            Some(VulkanDevice::open(0).unwrap_or_else(|e| panic!("{e}")))
        })
        .as_ref()
}

/// What kernels for the adapter may use, or `None` without one.
pub fn target() -> Option<VulkanTarget> {
    device().map(VulkanDevice::target)
}

/// Lowers `k` (inputs of types `inputs`, output of type `output`) for the device and runs each
/// step of its program on a copy of `buffers` (the inputs' bytes, then the output's) with
/// `scalars`, scratch buffers after the output: the output's bytes and the program (to show on
/// a mismatch), or `None` without a device. With `target`, the kernel is lowered and compiled
/// for that device instead (one the adapter can stand in for: its limits within the adapter's);
/// its matmuls compute in `precision`.
pub fn run(
    k: &Kernel,
    inputs: &[TensorType],
    output: &TensorType,
    (buffers, scalars): (&[Vec<u8>], &[i64]),
    (target, precision): (Option<&VulkanTarget>, Precision),
) -> Option<(Vec<u8>, Program)> {
    let Some(device) = device() else {
        eprintln!("skipped on Vulkan: no adapter (install mesa-vulkan-drivers for lavapipe)");
        return None;
    };
    let own = device.target();
    let target = target.unwrap_or(&own);
    let program = lower_gpu_with(k, inputs, output, (&vulkan_capabilities(target), precision))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buffers = buffers.to_vec();
    for bytes in program.scratch_bytes(scalars).unwrap() {
        buffers.push(vec![0; bytes]);
    }
    for step in &program.steps {
        let spirv = compile(step, target).unwrap_or_else(|e| panic!("{e}\n{step}"));
        let mut views: Vec<&mut [u8]> = buffers.iter_mut().map(Vec::as_mut_slice).collect();
        device
            .launch(&spirv, &mut views, scalars)
            .unwrap_or_else(|e| panic!("{e}\n{step}"));
    }
    Some((buffers.swap_remove(inputs.len()), program))
}
