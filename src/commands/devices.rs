//! `tessera devices`: what this machine can run kernels on — the host CPU (`--target cpu`) and,
//! in a build with the `vulkan` feature, every Vulkan adapter by the index `--device` takes,
//! with the limits kernel generation must respect.

use super::print_json;
use anyhow::Result;
use serde::Serialize;
use tessera_passes::cost::TargetSpec;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object on the last line of stdout instead of a list.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Cpu {
    cores: usize,
    simd_bits: usize,
}

#[derive(Serialize)]
struct Devices {
    cpu: Cpu,
    /// `None` when this build has no Vulkan support.
    vulkan: Option<Vec<Adapter>>,
}

#[derive(Serialize)]
struct Adapter {
    index: usize,
    name: String,
    device_type: String,
    driver: String,
    driver_info: String,
    max_workgroup_size: u32,
    shared_bytes: u32,
    max_storage_buffer_bytes: u64,
    subgroup_sizes: (u32, u32),
    shader_f16: bool,
}

#[cfg(feature = "vulkan")]
fn vulkan_adapters() -> Option<Vec<Adapter>> {
    let list = tessera_runtime::vulkan::VulkanDevice::list();
    Some(
        list.into_iter()
            .map(|a| Adapter {
                index: a.index,
                name: a.name,
                device_type: a.device_type,
                driver: a.driver,
                driver_info: a.driver_info,
                max_workgroup_size: a.max_workgroup_size,
                shared_bytes: a.shared_bytes,
                max_storage_buffer_bytes: a.max_storage_buffer_binding_size,
                subgroup_sizes: a.subgroup_sizes,
                shader_f16: a.shader_f16,
            })
            .collect(),
    )
}

#[cfg(not(feature = "vulkan"))]
fn vulkan_adapters() -> Option<Vec<Adapter>> {
    None
}

pub fn run(args: Args) -> Result<()> {
    let host = TargetSpec::cpu_host();
    let devices = Devices {
        cpu: Cpu {
            cores: host.parallel_units,
            simd_bits: host.simd_width_bytes * 8,
        },
        vulkan: vulkan_adapters(),
    };
    if args.json {
        return print_json(&devices);
    }
    println!(
        "cpu        host: {} cores, {}-bit SIMD (--target cpu)",
        devices.cpu.cores, devices.cpu.simd_bits
    );
    match &devices.vulkan {
        None => println!("vulkan     not in this build (rebuild with the default `vulkan` feature)"),
        Some(list) if list.is_empty() => println!(
            "vulkan     no adapter found (install a Vulkan driver: a GPU's, or Mesa's lavapipe from \
             `mesa-vulkan-drivers`)"
        ),
        Some(list) => {
            for a in list {
                let (lo, hi) = a.subgroup_sizes;
                println!(
                    "vulkan {:<3} {} ({}, {} {}): workgroups of ≤ {} threads, {} KiB shared, \
                     buffers ≤ {} MiB, subgroups {lo}..{hi}{}",
                    a.index,
                    a.name,
                    a.device_type,
                    a.driver,
                    a.driver_info,
                    a.max_workgroup_size,
                    a.shared_bytes / 1024,
                    a.max_storage_buffer_bytes >> 20,
                    if a.shader_f16 { ", f16 arithmetic" } else { "" },
                );
            }
        }
    }
    Ok(())
}
