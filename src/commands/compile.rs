//! `tessera compile MODEL -o OUT.tsr`.

use super::{print_json, ByteProgress};
use std::path::PathBuf;
use tessera::{compile_model, CompileOptions, Precision, Quant, Target, VulkanTarget};

#[derive(clap::Args)]
pub struct Args {
    /// The model: a Hugging Face folder with config.json and *.safetensors (tokenizer.json optional).
    model: PathBuf,
    /// Where to write the artifact.
    #[arg(short, long, value_name = "OUT.tsr")]
    output: PathBuf,
    /// What the artifact's code runs on.
    #[arg(long, value_enum, default_value_t = Target::Reference)]
    target: Target,
    /// Store the projection weights block-quantized (embeddings and norms keep their dtype).
    #[arg(long, value_enum)]
    quant: Option<Quant>,
    /// Store only the imported Graphs (no optimized kernels); the runtime interprets them as is.
    #[arg(long)]
    no_opt: bool,
    /// Vector width of the CPU kernels, in bits: 128, 256 or 512 (default: the host's widest
    /// when built with the `llvm` feature, else 128, the most Cranelift runs).
    #[arg(long, value_name = "BITS")]
    vector_bits: Option<u32>,
    /// With `--target vulkan`: lower for this Vulkan adapter's limits and subgroups (as
    /// `tessera devices` numbers them); without it, for a baseline device every Vulkan GPU runs.
    #[arg(long, value_name = "N")]
    device: Option<usize>,
    /// What the GPU matmuls compute in: `f32` matches the reference to f32 rounding; `f16`
    /// (`--target vulkan --device N` of a device with shader-f16) stages the prefill GEMM's tiles
    /// in f16 and sums each k chunk in f16, trading about 1% error for speed on GPUs.
    #[arg(long, value_parser = ["f32", "f16"], default_value = "f32")]
    precision: String,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = CompileOptions {
        target: args.target,
        output: args.output,
        optimize: !args.no_opt,
        quant: args.quant,
        vector_width: super::vector_width(args.vector_bits)?,
        vulkan: vulkan_target(args.target, args.device)?,
        precision: match args.precision.as_str() {
            "f16" => Precision::F16,
            _ => Precision::F32,
        },
    };
    let bar = ByteProgress::new("importing and optimizing");
    let report = compile_model(&args.model, &opts, &mut |done, total| {
        bar.update(done, total)
    })?;
    bar.finish();
    if args.json {
        return print_json(&report);
    }
    let optimization = if report.optimized {
        let per_layer: Vec<String> = report
            .entries
            .iter()
            .map(|e| format!("{} {} kernels/layer", e.entry, e.kernels_per_layer))
            .collect();
        let seconds: f64 = report.entries.iter().map(|e| e.optimize_seconds).sum();
        format!(" ({}; optimized in {seconds:.2}s)", per_layer.join(", "))
    } else {
        " (unoptimized)".to_string()
    };
    println!(
        "compiled {} ({}, {} layers, {:.1}M parameters) for {}{optimization} → {} ({:.1} MB) in {:.2}s",
        report.source,
        report.architecture,
        report.layers,
        report.parameters as f64 / 1e6,
        report.target.name(),
        report.output,
        report.artifact_bytes as f64 / 1e6,
        report.seconds
    );
    Ok(())
}

/// The Vulkan device `--device` names (its limits and subgroups), else the baseline.
fn vulkan_target(target: Target, device: Option<usize>) -> anyhow::Result<VulkanTarget> {
    let Some(index) = device else {
        return Ok(VulkanTarget::baseline());
    };
    if target != Target::Vulkan {
        anyhow::bail!("--device {index}: only --target vulkan compiles for a device");
    }
    #[cfg(feature = "vulkan")]
    return Ok(tessera_runtime::vulkan::VulkanDevice::open(index)?.target());
    #[cfg(not(feature = "vulkan"))]
    anyhow::bail!("--device {index}: built without the `vulkan` feature, which opens devices");
}
