//! `tessera explain MODEL --target T --emit graph|egraph|kernels|lir|clif|llvm|asm|wgsl|spirv`: what
//! the optimizer sees and chooses, per entry point, and the CPU or SIMT code of its kernels. MODEL may be a
//! folder with only config.json (shapes, no weights).

use super::{print_json, CpuBackend};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tessera_codegen_cpu::Backend;
use tessera_ir::kernel::KernelGraph;
use tessera_ir::DimEnv;
use tessera_passes::cost::{Roofline, TargetSpec};
use tessera_passes::lower::VectorWidth;
use tessera_passes::optimize::{default_bucket, optimize_entry, EntryReport};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Emit {
    /// The tensor Graph of each entry point.
    Graph,
    /// E-graph statistics per phase and segment: nodes, classes, iterations, time, stop reason.
    Egraph,
    /// The chosen kernels: template, tiles, fused body, estimated time.
    Kernels,
    /// Each kernel's loop-level IR as the CPU templates write it (`--target cpu`).
    Lir,
    /// Each kernel's Cranelift IR, before Cranelift's optimizations (`--target cpu`).
    Clif,
    /// Each kernel's LLVM IR after LLVM's O3 pipeline for this host (`--target cpu`; needs a
    /// build with `--features llvm`).
    Llvm,
    /// Each kernel's host machine code as `--cpu-backend` emits it (`--target cpu`).
    Asm,
    /// Each kernel's SIMT code as WGSL (naga's rendering of the SPIR-V `compile --target vulkan`
    /// will produce) for a baseline Vulkan device: 256 threads, 16 KiB shared memory, no
    /// subgroups (`--target vulkan`); kernels without a SIMT template yet are listed as such.
    Wgsl,
    /// Each kernel's SPIR-V for the same baseline device, written as binary `.spv` files into
    /// `--out-dir` (for `spirv-dis`, `spirv-val`, RenderDoc), one line per file printed.
    Spirv,
}

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face folder; config.json alone is enough.
    model: PathBuf,
    /// The target whose cost model drives the choices: cpu, sm_80, sm_90, vulkan.
    #[arg(long, default_value = "cpu")]
    target: String,
    /// What to show.
    #[arg(long, value_enum, default_value_t = Emit::Kernels)]
    emit: Emit,
    /// Only this entry point (prefill or decode).
    #[arg(long)]
    entry: Option<String>,
    /// Override the shape bucket, e.g. `seq=4` or `past=4096,batch=2`.
    #[arg(long, value_name = "SYM=N,…")]
    bucket: Option<String>,
    /// With --emit asm: the backend whose machine code to show (default: llvm when built with
    /// it, else cranelift).
    #[arg(long, value_enum, value_name = "BACKEND")]
    cpu_backend: Option<CpuBackend>,
    /// With --emit lir|clif|llvm|asm: the vector width of the CPU kernels, in bits (128, 256,
    /// 512; default as `compile`).
    #[arg(long, value_name = "BITS")]
    vector_bits: Option<u32>,
    /// With --emit lir|clif|llvm|asm: only the kernel at this position of the entry's kernel list.
    #[arg(long, value_name = "N")]
    kernel: Option<usize>,
    /// Explain the model with its projection weights block-quantized, as `compile --quant` stores them.
    #[arg(long, value_enum)]
    quant: Option<tessera::Quant>,
    /// With --emit spirv: the folder the `.spv` files are written to (created if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Explanation {
    target: String,
    optimize_seconds: f64,
    kernels_per_layer: BTreeMap<String, usize>,
    entries: Vec<EntryReport>,
}

fn parse_bucket(text: &str, env: &mut DimEnv) -> Result<()> {
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--bucket entry `{part}` is not SYM=N"))?;
        let v: usize = v
            .trim()
            .parse()
            .with_context(|| format!("--bucket value `{v}` is not a number"))?;
        env.insert(k.trim().to_string(), v);
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let mut module = tessera::load_module(&args.model)?;
    // The weights as `compile` stores them.
    let transposed = tessera::transposed_projections(&module);
    tessera::apply_storage(&mut module, &transposed)?;
    if let Some(quant) = args.quant {
        let quantized = tessera::quantized_weights(&module, quant.dtype());
        tessera::apply_storage(&mut module, &quantized)?;
    }
    let backend = CpuBackend::resolve(args.cpu_backend)?;
    let width = super::vector_width(args.vector_bits)?;
    let target = TargetSpec::by_name(&args.target).map_err(anyhow::Error::msg)?;
    let cost = Roofline {
        target: target.clone(),
    };
    let entries: Vec<_> = module
        .entries
        .iter()
        .filter(|e| args.entry.as_ref().is_none_or(|n| *n == e.name))
        .collect();
    if entries.is_empty() {
        bail!(
            "no entry point `{}` (the model has prefill and decode)",
            args.entry.unwrap_or_default()
        );
    }
    let mut explanation = Explanation {
        target: target.name.clone(),
        optimize_seconds: 0.0,
        kernels_per_layer: BTreeMap::new(),
        entries: vec![],
    };
    for entry in entries {
        if args.emit == Emit::Graph && !args.json {
            println!("entry {}:\n{}", entry.name, entry.graph);
            continue;
        }
        let mut env = default_bucket(&entry.name, &module.info);
        if let Some(b) = &args.bucket {
            parse_bucket(b, &mut env)?;
        }
        let (kg, report) = optimize_entry(entry, &target, &cost, &env)?;
        explanation.optimize_seconds += report.optimize_seconds;
        explanation
            .kernels_per_layer
            .insert(entry.name.clone(), report.kernels_per_layer);
        if !args.json {
            print_entry(&report, &kg, args.emit);
            if matches!(args.emit, Emit::Lir | Emit::Clif | Emit::Llvm | Emit::Asm) {
                print_code(&kg, args.emit, args.kernel, &args.target, backend, width)?;
            }
            if matches!(args.emit, Emit::Wgsl | Emit::Spirv) {
                let out_dir =
                    match args.emit {
                        Emit::Spirv => Some(args.out_dir.as_deref().context(
                            "--emit spirv writes binary .spv files: give --out-dir DIR",
                        )?),
                        _ => None,
                    };
                print_simt(&kg, &entry.name, args.kernel, &args.target, out_dir)?;
            }
        }
        explanation.entries.push(report);
    }
    if args.json {
        return print_json(&explanation);
    }
    if args.emit != Emit::Graph {
        println!(
            "optimized in {:.3}s for {}",
            explanation.optimize_seconds, explanation.target
        );
    }
    Ok(())
}

fn print_entry(report: &EntryReport, kg: &KernelGraph, emit: Emit) {
    let bucket: Vec<String> = report
        .bucket
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "entry {} [{}]: {} kernels ({} per layer), estimated {:.1} µs, arena {:.2} MB, optimized in {:.3}s",
        report.entry,
        bucket.join(", "),
        report.kernels,
        report.kernels_per_layer,
        report.estimated_seconds * 1e6,
        report.arena_bytes as f64 / 1e6,
        report.optimize_seconds
    );
    match emit {
        Emit::Egraph => {
            for seg in &report.segments {
                let layers = if seg.layers.is_empty() {
                    String::new()
                } else {
                    format!(" × {} layers", seg.layers.len())
                };
                println!(
                    "  segment {}{layers}: {} kernels, extraction {:.3}s",
                    seg.scope, seg.kernels, seg.extract_seconds
                );
                for p in &seg.phases {
                    println!(
                        "    {:<12} {:>7} nodes {:>6} classes {:>3} iterations {:>8.3}s  {}",
                        p.phase.name(),
                        p.nodes,
                        p.classes,
                        p.iterations,
                        p.seconds,
                        p.stop_reason
                    );
                }
            }
        }
        Emit::Kernels => print!("{kg}"),
        Emit::Graph
        | Emit::Lir
        | Emit::Clif
        | Emit::Llvm
        | Emit::Asm
        | Emit::Wgsl
        | Emit::Spirv => {}
    }
}

/// The launched kernels of `kg` (or kernel `only`), with their positions.
fn launched(
    kg: &KernelGraph,
    only: Option<usize>,
) -> Result<impl Iterator<Item = (usize, &tessera_ir::kernel::Kernel)>> {
    if let Some(n) = only.filter(|&n| n >= kg.kernels.len()) {
        bail!(
            "--kernel {n}: the entry point has {} kernels",
            kg.kernels.len()
        );
    }
    Ok(kg
        .kernels
        .iter()
        .enumerate()
        .filter(move |(i, k)| only.is_none_or(|n| n == *i) && k.kind.launches(&k.body)))
}

/// Shows the SIMT code of `kg`'s launched kernels (or of kernel `only`) of entry point `entry`
/// for a baseline Vulkan device: as WGSL on stdout, or with `out_dir` as SPIR-V files there (one
/// per program step, named `entry.kernel.step.spv`); a kernel the SIMT templates do not cover
/// yet is named with the reason.
fn print_simt(
    kg: &KernelGraph,
    entry: &str,
    only: Option<usize>,
    target: &str,
    out_dir: Option<&Path>,
) -> Result<()> {
    if target != "vulkan" {
        bail!(
            "--emit wgsl|spirv shows Vulkan code: use --target vulkan (the cost model was {target})"
        );
    }
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let device = tessera_codegen_spirv::VulkanTarget::baseline();
    let caps = tessera_codegen_spirv::vulkan_capabilities(&device);
    for (i, kernel) in launched(kg, only)? {
        let program = match tessera::lower_kernel_gpu(kg, kernel, (&caps, tessera::Precision::F32))
        {
            Ok(program) => program,
            Err(e) => {
                println!(
                    "kernel {i} `{}` ({}): no SIMT code: {e}\n",
                    kernel.scope, kernel.kind
                );
                continue;
            }
        };
        for (s, step) in program.steps.iter().enumerate() {
            let Some(dir) = out_dir else {
                let text = tessera_codegen_spirv::wgsl_text(step, &device)?;
                println!(
                    "kernel {i} `{}` ({}): {}\n{text}",
                    kernel.scope, kernel.kind, step.name
                );
                continue;
            };
            let spirv = tessera_codegen_spirv::compile(step, &device)?;
            let path = dir.join(format!("{entry}.{i}.{s}.spv"));
            let bytes: Vec<u8> = spirv.words.iter().flat_map(|w| w.to_le_bytes()).collect();
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            println!(
                "kernel {i} `{}` ({}): {} → {} ({} words, workgroup {:?}, {} buffers)",
                kernel.scope,
                kernel.kind,
                step.name,
                path.display(),
                spirv.words.len(),
                spirv.workgroup_size,
                spirv.buffers.len()
            );
        }
    }
    Ok(())
}

/// Prints the CPU code of `kg`'s launched kernels (or of kernel `only`) as `emit` asks.
fn print_code(
    kg: &KernelGraph,
    emit: Emit,
    only: Option<usize>,
    target: &str,
    backend: Backend,
    width: VectorWidth,
) -> Result<()> {
    if !matches!(target, "cpu" | "reference") {
        bail!(
            "--emit lir|clif|llvm|asm shows CPU code: use --target cpu (the cost model was {target})"
        );
    }
    #[cfg(not(feature = "llvm"))]
    if emit == Emit::Llvm {
        bail!(
            "--emit llvm: built without the `llvm` feature: rebuild with \
             `cargo build --release --features llvm`"
        );
    }
    for (i, kernel) in launched(kg, only)? {
        let program = tessera::lower_kernel_cpu(kg, kernel, width)
            .with_context(|| format!("kernel {i} `{}`", kernel.scope))?;
        let steps = program.steps.iter().map(|step| match emit {
            Emit::Lir => Ok(step.to_string()),
            Emit::Clif => tessera_codegen_cpu::clif_text(step),
            #[cfg(feature = "llvm")]
            Emit::Llvm => tessera_codegen_cpu::llvm_ir_text(step),
            _ => tessera_codegen_cpu::asm_text(step, backend),
        });
        let text = match emit {
            Emit::Lir => program.to_string(),
            _ => steps.collect::<Result<Vec<_>, _>>()?.join("\n"),
        };
        println!("kernel {i} `{}` ({}):\n{text}", kernel.scope, kernel.kind);
    }
    Ok(())
}
