//! `tessera compile`: import a model, prepare it for a target (compute the derived weights its
//! KernelGraphs read), write one `.tsr` artifact.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tessera_codegen_spirv::{vulkan_capabilities, VulkanTarget};
use tessera_ir::artifact::{self, Manifest};
use tessera_ir::interp::{self, Tensor};
use tessera_ir::kernel::{BufferSource, DerivedWeight, Kernel, KernelGraph, BODY_OUTPUT};
use tessera_ir::{DType, Module, TensorType, WeightSpec};
use tessera_models::{ImportedModel, Weight, WeightData};
use tessera_passes::cost::{Roofline, TargetSpec};
use tessera_passes::lower::{lower_cpu, lower_gpu_with, LowerError, Precision, VectorWidth};
use tessera_passes::optimize::{optimize_module, EntryReport};
use tessera_passes::quantize::quantizable_weights;
use tessera_passes::storage::{store_weights, transpose_bytes, untransposed_projections, Storage};

/// What the artifact's code runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The reference interpreter executes the Graph: exact and slow; the oracle for every backend.
    Reference,
    /// Native code for the host CPU: every kernel lowered to LIR (stored in the artifact) and
    /// JIT-compiled by the runtime at load. Requires the optimizer (kernels).
    Cpu,
    /// SIMT code for a Vulkan GPU: every kernel lowered for the device limits of
    /// [`CompileOptions::vulkan`] (stored as LIR, written as SPIR-V and validated at compile time,
    /// again for the device the runtime opens). Requires the optimizer.
    Vulkan,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Reference => "reference",
            Target::Cpu => "cpu",
            Target::Vulkan => "vulkan",
        }
    }

    /// The machine description whose cost model chooses kernels for this target. The reference
    /// target executes any choice exactly, so it optimizes as for the host CPU.
    pub fn spec(self) -> TargetSpec {
        match self {
            Target::Reference | Target::Cpu => TargetSpec::cpu_host(),
            Target::Vulkan => TargetSpec::vulkan_generic(),
        }
    }
}

/// How to compile.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub target: Target,
    pub output: PathBuf,
    /// Run the optimizer, storing a KernelGraph per entry point; `false` (`--no-opt`) stores only
    /// the Graphs, which the runtime then interprets as imported.
    pub optimize: bool,
    /// Store the projection weights block-quantized (`--quant`).
    pub quant: Option<Quant>,
    /// The vector width of the CPU kernels (`--vector-bits`; see [`default_vector_width`]).
    pub vector_width: VectorWidth,
    /// The Vulkan device the GPU kernels are lowered for (`--device N`: that adapter's limits
    /// and subgroups; else [`VulkanTarget::baseline`], which every Vulkan device runs).
    pub vulkan: VulkanTarget,
    /// What the GPU matmuls compute in (`--precision`; f16 only on a Vulkan device with
    /// shader-f16).
    pub precision: Precision,
}

impl CompileOptions {
    /// The machine description the cost model chooses kernels for: the target's, with a Vulkan
    /// device's shared memory and workgroup limits when compiling for one.
    pub fn spec(&self) -> TargetSpec {
        let mut spec = self.target.spec();
        if self.target == Target::Vulkan {
            spec.onchip_bytes = self.vulkan.shared_bytes as usize;
            spec.max_threads_per_block = self.vulkan.max_workgroup_size as usize;
        }
        spec
    }
}

/// The CPU kernels' default vector width: the host's widest when the runtime compiles them with
/// LLVM (the default backend of an `llvm` build), else 128 bits, Cranelift's registers.
pub fn default_vector_width() -> VectorWidth {
    if cfg!(feature = "llvm") {
        VectorWidth::host()
    } else {
        VectorWidth::V128
    }
}

/// A block quantization `--quant` stores weights in (GGUF's formats, bit-exact with llama.cpp's
/// reference quantizers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Quant {
    /// 8-bit values with one f16 scale per block of 32 (8.5 bits per weight).
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit values with one f16 scale per block of 32 (4.5 bits per weight).
    #[value(name = "q4_0")]
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl Quant {
    pub fn dtype(self) -> DType {
        match self {
            Quant::Q8_0 => DType::Q8_0,
            Quant::Q4_0 => DType::Q4_0,
        }
    }
}

/// What `compile` did, for the one-line summary and `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct CompileReport {
    pub source: String,
    pub output: String,
    pub target: Target,
    pub architecture: String,
    pub layers: usize,
    pub parameters: u64,
    pub weight_bytes: u64,
    pub artifact_bytes: u64,
    pub has_tokenizer: bool,
    /// Whether every entry point carries a KernelGraph (what `--no-opt` turns off).
    pub optimized: bool,
    /// What the optimizer did per entry point (empty with `--no-opt`).
    pub entries: Vec<EntryReport>,
    pub seconds: f64,
}

/// Imports the model at `model` (a Hugging Face folder), materializes the weights its
/// KernelGraphs derive, and writes the artifact.
pub fn compile_model(
    model: &Path,
    opts: &CompileOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CompileReport> {
    let start = Instant::now();
    if !model.is_dir() {
        anyhow::bail!(
            "{}: expected a Hugging Face model folder (config.json + *.safetensors)",
            model.display()
        );
    }
    if opts.target != Target::Reference && !opts.optimize {
        bail!(
            "--no-opt cannot be used with --target {}: its code is generated from the optimized kernels",
            opts.target.name()
        );
    }
    let mut imported = tessera_models::import_hf(model)?;
    tracing::info!(architecture = %imported.module.info.architecture, weights = imported.weights.len(), "imported");
    transpose_projections(&mut imported)?;
    if let Some(quant) = opts.quant {
        quantize_model(&mut imported, quant.dtype())?;
    }
    let optimized = if opts.optimize {
        optimize_model(&mut imported, opts)?
    } else {
        Vec::new()
    };
    let mut report = write_artifact(&imported, &model.display().to_string(), opts, progress)?;
    report.entries = optimized;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Stores the `[K, N]` projection weights (GPT-2's `Conv1D`) as `[N, K]`, the layout the matmul
/// templates and `--quant` read ([`tessera_passes::storage`]).
pub fn transpose_projections(model: &mut ImportedModel) -> Result<()> {
    let stored = transposed_projections(&model.module);
    store_weights_as(model, &stored)
}

/// The weights [`transpose_projections`] stores transposed, in their dtype; with
/// [`apply_storage`], what `explain` applies (no weight data needed).
pub fn transposed_projections(module: &Module) -> BTreeMap<String, Storage> {
    let names = untransposed_projections(module);
    module
        .weights
        .iter()
        .filter(|w| names.contains(&w.name))
        .map(|w| {
            let storage = Storage {
                dtype: w.dtype,
                transposed: true,
            };
            (w.name.clone(), storage)
        })
        .collect()
}

/// Stores the model's projection weights as `format` and reads them through `Dequantize` in every
/// entry point's Graph ([`tessera_passes::quantize`]); other weights keep their dtype.
pub fn quantize_model(model: &mut ImportedModel, format: DType) -> Result<()> {
    let stored = quantized_weights(&model.module, format);
    store_weights_as(model, &stored)
}

/// The weights of `module` that `--quant` stores as `format` ([`quantizable_weights`]), mapped
/// to it; with [`apply_storage`], what `explain --quant` applies (no weight data needed).
pub fn quantized_weights(module: &Module, format: DType) -> BTreeMap<String, Storage> {
    quantizable_weights(module)
        .into_iter()
        .map(|name| (name, Storage::as_dtype(format)))
        .collect()
}

/// Re-encodes each weight named in `stored` in its stored form (quantized or another float
/// dtype, transposed) and rewrites the Graphs that read it ([`store_weights`]).
fn store_weights_as(model: &mut ImportedModel, stored: &BTreeMap<String, Storage>) -> Result<()> {
    apply_storage(&mut model.module, stored)?;
    for weight in &mut model.weights {
        let spec = &weight.spec;
        let Some(&storage) = stored.get(&spec.name) else {
            continue;
        };
        let (mut shape, mut bytes) = (spec.shape.clone(), weight.bytes().to_vec());
        if storage.transposed {
            let (&[rows, cols], Some(elem)) = (shape.as_slice(), spec.dtype.elem_bytes()) else {
                bail!(
                    "weight `{}` cannot be stored transposed: {} {:?}",
                    spec.name,
                    spec.dtype,
                    shape
                );
            };
            bytes = transpose_bytes(&bytes, rows, cols, elem);
            shape.reverse();
        }
        if storage.dtype != spec.dtype {
            let values = Tensor::from_le_bytes(spec.dtype, shape.clone(), &bytes, &spec.name)?;
            bytes = encode_as(values, storage.dtype, &spec.name)?;
        }
        tracing::debug!(weight = %spec.name, from = %spec.dtype, to = %storage.dtype, transposed = storage.transposed, "re-encoded");
        weight.spec.dtype = storage.dtype;
        weight.spec.shape = shape;
        weight.data = WeightData::Owned(bytes);
    }
    Ok(())
}

/// The bytes of `values` (weight `name`) in `dtype`: block-quantized, or converted.
fn encode_as(values: Tensor, dtype: DType, name: &str) -> Result<Vec<u8>> {
    if !dtype.is_quantized() {
        let mut converted = values;
        converted.dtype = dtype;
        return Ok(converted.to_le_bytes()?);
    }
    let values = values
        .as_f32()
        .with_context(|| format!("weight `{name}` is not a float tensor"))?;
    if values.iter().any(|v| !v.is_finite()) {
        bail!("weight `{name}` holds infinite or NaN values: it cannot be quantized");
    }
    tessera_ir::quant::quantize(dtype, values)
        .with_context(|| format!("quantizing weight `{name}`"))
}

/// Declares each weight named in `stored` in its stored form, in the Module and its Graphs.
pub fn apply_storage(module: &mut Module, stored: &BTreeMap<String, Storage>) -> Result<()> {
    for entry in &mut module.entries {
        entry.graph = store_weights(&entry.graph, stored)
            .with_context(|| format!("storing the weights of entry point `{}`", entry.name))?;
    }
    for spec in &mut module.weights {
        if let Some(storage) = stored.get(&spec.name) {
            spec.dtype = storage.dtype;
            if storage.transposed {
                spec.shape.reverse();
            }
        }
    }
    Ok(())
}

/// Runs the optimizer on every entry point for the cost model of `opts.target` and materializes
/// the weights the chosen kernels derive (merged projections); for `--target cpu` and `vulkan`,
/// then lowers every kernel to LIR ([`lower_for_cpu`], [`lower_for_vulkan`]).
pub fn optimize_model(
    model: &mut ImportedModel,
    opts: &CompileOptions,
) -> Result<Vec<EntryReport>> {
    if opts.precision == Precision::F16 && opts.target != Target::Vulkan {
        bail!(
            "--precision f16: only --target vulkan computes in f16 (got --target {})",
            opts.target.name()
        );
    }
    let spec = opts.spec();
    let reports = optimize_module(
        &mut model.module,
        &spec,
        &Roofline {
            target: spec.clone(),
        },
    )?;
    for r in &reports {
        tracing::info!(entry = %r.entry, kernels = r.kernels, per_layer = r.kernels_per_layer, seconds = r.optimize_seconds, "optimized");
    }
    materialize_derived_weights(model)?;
    drop_unread_weights(model);
    match opts.target {
        Target::Reference => {}
        Target::Cpu => lower_for_cpu(&mut model.module, opts.vector_width)?,
        Target::Vulkan => lower_for_vulkan(&mut model.module, (&opts.vulkan, opts.precision))?,
    }
    Ok(reports)
}

/// Lowers every kernel of every entry point's KernelGraph with [`lower_cpu`] into the entry's
/// `cpu_code`. A kernel without a CPU template (or reading a dtype the templates cannot read) is
/// an error naming the entry point, the kernel and the reason.
pub fn lower_for_cpu(module: &mut Module, width: VectorWidth) -> Result<()> {
    lower_entries(module, "cpu", |kg, kernel| {
        lower_kernel_cpu(kg, kernel, width).map_err(|e| lower_reason(e, "CPU"))
    })
}

/// Lowers every kernel of every entry point's KernelGraph with [`lower_gpu_with`] for the device
/// `target` and `precision` into the entry's `gpu_code`, and writes each step as SPIR-V
/// (validated by naga) so that what the device could not run is found now. Errors name the
/// entry point and kernel.
pub fn lower_for_vulkan(
    module: &mut Module,
    (target, precision): (&VulkanTarget, Precision),
) -> Result<()> {
    if precision == Precision::F16 && !target.f16 {
        bail!(
            "--precision f16 needs a device with shader-f16: compile with --device N for one \
             (`tessera devices` shows which have f16 arithmetic)"
        );
    }
    let caps = vulkan_capabilities(target);
    lower_entries(module, "vulkan", |kg, kernel| {
        let program = lower_kernel_gpu(kg, kernel, (&caps, precision))
            .map_err(|e| lower_reason(e, "SIMT"))?;
        for step in &program.steps {
            tessera_codegen_spirv::compile(step, target)
                .map_err(|e| format!("writing SPIR-V: {e}"))?;
        }
        Ok(program)
    })
}

/// Why a kernel has no code, for [`lower_entries`]' error.
fn lower_reason(e: LowerError, templates: &str) -> String {
    match e {
        LowerError::Unsupported { what, .. } => {
            format!("not supported by the {templates} templates yet: {what}")
        }
        LowerError::Invalid { message, .. } => format!("invalid body: {message}"),
    }
}

/// Sets every entry point's code for `target` (`cpu`, `vulkan`) to what `lower` makes of each
/// of its kernels; a kernel it refuses is an error naming the entry point and kernel.
fn lower_entries(
    module: &mut Module,
    target: &str,
    lower: impl Fn(&KernelGraph, &Kernel) -> std::result::Result<tessera_ir::lir::Program, String>,
) -> Result<()> {
    for entry in &mut module.entries {
        let kg = entry.kernels.as_ref().with_context(|| {
            format!(
                "entry point `{}` has no kernels: --target {target} needs the optimizer",
                entry.name
            )
        })?;
        let code = kg
            .kernels
            .iter()
            .map(|kernel| {
                lower(kg, kernel).map_err(|reason| {
                    anyhow::anyhow!(
                        "entry point `{}`: kernel `{}` ({}): {reason}; use --target reference",
                        entry.name,
                        kernel.scope,
                        kernel.kind
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        match target {
            "cpu" => entry.cpu_code = code,
            _ => entry.gpu_code = code,
        }
    }
    Ok(())
}

/// Lowers one kernel of `kg` to a CPU LIR program with its buffers' types and `width`-wide vectors.
pub fn lower_kernel_cpu(
    kg: &KernelGraph,
    kernel: &Kernel,
    width: VectorWidth,
) -> Result<tessera_ir::lir::Program, LowerError> {
    lower_cpu(
        kernel,
        &input_types(kg, kernel),
        &kg.buffer(kernel.output).ty,
        width,
    )
}

/// Lowers one kernel of `kg` to a SIMT LIR program for a GPU with capabilities `caps`, its
/// matmuls computing in `precision`.
pub fn lower_kernel_gpu(
    kg: &KernelGraph,
    kernel: &Kernel,
    (caps, precision): (&tessera_ir::lir::Capabilities, Precision),
) -> Result<tessera_ir::lir::Program, LowerError> {
    lower_gpu_with(
        kernel,
        &input_types(kg, kernel),
        &kg.buffer(kernel.output).ty,
        (caps, precision),
    )
}

/// The types of `kernel`'s input buffers, in order.
fn input_types(kg: &KernelGraph, kernel: &Kernel) -> Vec<TensorType> {
    kernel
        .inputs
        .iter()
        .map(|&b| kg.buffer(b).ty.clone())
        .collect()
}

/// Keeps only the weights some KernelGraph reads, once every entry point has one: projections
/// merged at compile time would otherwise be stored twice (for TinyLlama, Q/K/V and gate/up are
/// most of the model).
fn drop_unread_weights(model: &mut ImportedModel) {
    let graphs: Option<Vec<&KernelGraph>> = model
        .module
        .entries
        .iter()
        .map(|e| e.kernels.as_ref())
        .collect();
    let Some(graphs) = graphs else { return };
    let read: BTreeSet<String> = graphs
        .iter()
        .flat_map(|kg| kg.buffers.iter())
        .filter_map(|b| match &b.source {
            BufferSource::Weight(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    model.weights.retain(|w| read.contains(&w.spec.name));
    model.module.weights.retain(|w| read.contains(&w.name));
}

/// The Module of a model folder: imported with its weights when it has safetensors, built from
/// config.json alone otherwise (what `explain` needs: shapes, not weights).
pub fn load_module(model: &Path) -> Result<Module> {
    let has_weights = std::fs::read_dir(model)
        .with_context(|| format!("{}: not a readable model folder", model.display()))?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"));
    if has_weights {
        return Ok(tessera_models::import_hf(model)?.module);
    }
    let path = model.join("config.json");
    let json =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = tessera_models::parse_config(&json, &path.display().to_string())?;
    Ok(tessera_models::build_module(&config)?)
}

/// Writes `model` as an artifact for `opts.target` to `opts.output`.
pub fn write_artifact(
    model: &ImportedModel,
    source: &str,
    opts: &CompileOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CompileReport> {
    let start = Instant::now();
    model.module.validate()?;
    let slots = artifact::layout_weights(
        model
            .weights
            .iter()
            .map(|w| (w.spec.name.as_str(), w.bytes().len() as u64)),
    );
    let weight_bytes: u64 = model.weights.iter().map(|w| w.bytes().len() as u64).sum();
    let manifest = Manifest {
        producer: format!("tessera {}", env!("CARGO_PKG_VERSION")),
        target: opts.target.name().to_string(),
        source: source.to_string(),
        config: serde_json::to_value(&model.config)?,
        module: model.module.clone(),
        weight_slots: slots,
    };
    let out = &opts.output;
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = BufWriter::new(file);
    let mut bytes = model.weights.iter().map(|w| w.bytes());
    let total = slots_end(&manifest);
    artifact::write(
        &mut writer,
        &manifest,
        model.tokenizer_json.as_deref(),
        &mut bytes,
        &mut |done| progress(done, total),
    )
    .with_context(|| format!("writing {}", out.display()))?;
    drop(writer);
    let parameters = model
        .module
        .weights
        .iter()
        .map(|w| w.shape.iter().product::<usize>() as u64)
        .sum();
    Ok(CompileReport {
        source: source.to_string(),
        output: out.display().to_string(),
        target: opts.target,
        architecture: model.module.info.architecture.clone(),
        layers: model.module.info.num_layers,
        parameters,
        weight_bytes,
        artifact_bytes: std::fs::metadata(out).map(|m| m.len()).unwrap_or(0),
        has_tokenizer: model.tokenizer_json.is_some(),
        optimized: !model.module.entries.is_empty()
            && model.module.entries.iter().all(|e| e.kernels.is_some()),
        entries: Vec::new(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Computes the weights the module's KernelGraphs derive from imported ones (e.g. Q, K and V
/// projections concatenated for one merged matmul) and appends them to `model.weights` and
/// `model.module.weights`, in the dtype their body yields. Each derived weight is evaluated once
/// with the reference interpreter, however many entry points read it; two entry points defining
/// one name differently, or a name the module already declares, is an error. Later derived
/// weights may read earlier ones. Afterwards the KernelGraphs list no derived weights: they are
/// declared weights.
pub fn materialize_derived_weights(model: &mut ImportedModel) -> Result<()> {
    let mut done: BTreeMap<String, DerivedWeight> = BTreeMap::new();
    let derived: Vec<DerivedWeight> = model
        .module
        .entries
        .iter()
        .filter_map(|e| e.kernels.as_ref())
        .flat_map(|kg| kg.derived_weights.iter().cloned())
        .collect();
    for d in derived {
        if let Some(first) = done.get(&d.name) {
            if *first != d {
                bail!(
                    "derived weight `{}` is defined differently by two entry points",
                    d.name
                );
            }
            continue;
        }
        if model.module.weight(&d.name).is_some() {
            bail!(
                "derived weight `{}` has the name of a declared weight",
                d.name
            );
        }
        let weight = evaluate_derived(model, &d)?;
        tracing::debug!(name = %d.name, dtype = %weight.spec.dtype, shape = ?weight.spec.shape, "derived weight");
        model.module.weights.push(weight.spec.clone());
        model.weights.push(weight);
        done.insert(d.name.clone(), d);
    }
    // Computed: from here on they are weights like any other (their names still say how they
    // were made), and their sources need not be kept.
    for kg in model
        .module
        .entries
        .iter_mut()
        .filter_map(|e| e.kernels.as_mut())
    {
        kg.derived_weights.clear();
    }
    Ok(())
}

/// Runs a derived weight's body over its decoded source weights.
fn evaluate_derived(model: &ImportedModel, derived: &DerivedWeight) -> Result<Weight> {
    let (graph, _) = derived.body_graph(|n| model.module.weight(n).map(WeightSpec::ty))?;
    let mut sources = BTreeMap::new();
    for name in &derived.sources {
        let w = model
            .weights
            .iter()
            .find(|w| w.spec.name == *name)
            .with_context(|| format!("derived weight `{}`: no data for `{name}`", derived.name))?;
        let t = Tensor::from_le_bytes(w.spec.dtype, w.spec.shape.clone(), w.bytes(), name)?;
        sources.insert(name.clone(), t);
    }
    let value = interp::run(&graph, &sources, &BTreeMap::new())
        .with_context(|| format!("computing derived weight `{}`", derived.name))?
        .remove(BODY_OUTPUT)
        .context("the body has no result")?;
    Ok(Weight {
        data: WeightData::Owned(value.to_le_bytes()?),
        spec: WeightSpec {
            name: derived.name.clone(),
            dtype: value.dtype,
            shape: value.shape,
        },
    })
}

fn slots_end(manifest: &Manifest) -> u64 {
    manifest.weight_slots.last().map_or(0, |s| s.offset + s.len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_ir::kernel::{
        run_kernels, BodyArg, BodyOp, Buffer, BufferId, BufferSource, Kernel, KernelGraph,
        KernelKind,
    };
    use tessera_ir::{DType, EntryPoint, Graph, ModelInfo, Module, Op, UnaryOp};
    use tessera_models::ModelConfig;

    fn f16_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect()
    }

    fn weight(name: &str, shape: &[usize], values: &[f32]) -> Weight {
        Weight {
            spec: WeightSpec {
                name: name.into(),
                dtype: DType::F16,
                shape: shape.to_vec(),
            },
            data: WeightData::Owned(f16_bytes(values)),
        }
    }

    /// `y = -concat(a, b)`; its KernelGraph reads the concatenation as the derived weight `ab`.
    fn entry(name: &str, derived: DerivedWeight) -> EntryPoint {
        let mut g = Graph::new();
        let a = g.weight("a", DType::F16, &[2, 3]);
        let b = g.weight("b", DType::F16, &[1, 3]);
        let ab = g.add(Op::Concat { axis: 0 }, &[a, b]).unwrap();
        let y = g.add(Op::Unary(UnaryOp::Neg), &[ab]).unwrap();
        g.output("y", y);
        let ty = g.ty(ab).clone();
        let kg = KernelGraph {
            buffers: vec![
                Buffer {
                    ty: ty.clone(),
                    source: BufferSource::Weight(derived.name.clone()),
                },
                Buffer {
                    ty,
                    source: BufferSource::Computed,
                },
            ],
            kernels: vec![Kernel {
                scope: "neg".into(),
                kind: KernelKind::Elementwise,
                body: vec![BodyOp {
                    op: Op::Unary(UnaryOp::Neg),
                    args: vec![BodyArg::Input(0)],
                }],
                inputs: vec![BufferId(0)],
                output: BufferId(1),
                estimate_seconds: 0.0,
            }],
            outputs: vec![("y".into(), BufferId(1))],
            derived_weights: vec![derived],
            plan: Default::default(),
        };
        EntryPoint {
            name: name.into(),
            graph: g,
            kernels: Some(kg),
            cpu_code: vec![],
            gpu_code: vec![],
        }
    }

    fn concat(name: &str, axis: usize) -> DerivedWeight {
        DerivedWeight {
            name: name.into(),
            sources: vec!["a".into(), "b".into()],
            body: vec![BodyOp {
                op: Op::Concat { axis },
                args: vec![BodyArg::Input(0), BodyArg::Input(1)],
            }],
        }
    }

    fn model(entries: Vec<EntryPoint>) -> ImportedModel {
        let weights = vec![
            weight("a", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            weight("b", &[1, 3], &[-0.5, 0.25, 1e-3]),
        ];
        ImportedModel {
            module: Module {
                info: ModelInfo {
                    architecture: "test".into(),
                    vocab_size: 1,
                    max_context: 1,
                    bos_token_id: None,
                    eos_token_ids: vec![],
                    num_layers: 0,
                    hidden_size: 3,
                },
                weights: weights.iter().map(|w| w.spec.clone()).collect(),
                state: vec![],
                entries,
            },
            weights,
            tokenizer_json: None,
            config: ModelConfig::llama(1, 4, 4, 1, 1, 1),
        }
    }

    #[test]
    fn derived_weights_are_computed_once_in_their_dtype() {
        let mut m = model(vec![
            entry("prefill", concat("ab", 0)),
            entry("decode", concat("ab", 0)),
        ]);
        assert!(m.module.validate().is_err(), "`ab` is not declared yet");
        materialize_derived_weights(&mut m).unwrap();
        m.module.validate().unwrap();
        assert_eq!(m.weights.len(), 3);
        let ab = &m.weights[2];
        assert_eq!(ab.spec, m.module.weights[2]);
        assert_eq!((ab.spec.name.as_str(), ab.spec.dtype), ("ab", DType::F16));
        assert_eq!(ab.spec.shape, [3, 3]);
        let mut want = m.weights[0].bytes().to_vec();
        want.extend_from_slice(m.weights[1].bytes());
        assert_eq!(ab.bytes(), want, "concatenated f16 bits, unchanged");

        let decoded: BTreeMap<String, Tensor> = m
            .weights
            .iter()
            .map(|w| {
                let t = Tensor::from_le_bytes(w.spec.dtype, w.spec.shape.clone(), w.bytes(), "w");
                (w.spec.name.clone(), t.unwrap())
            })
            .collect();
        let entry = &m.module.entries[0];
        let none = BTreeMap::new();
        let kernels = run_kernels(entry.kernels.as_ref().unwrap(), &decoded, &none).unwrap();
        assert_eq!(kernels, interp::run(&entry.graph, &decoded, &none).unwrap());
    }

    #[test]
    fn conflicting_derived_weights_are_errors() {
        let mut m = model(vec![
            entry("prefill", concat("ab", 0)),
            entry("decode", concat("ab", 1)),
        ]);
        let err = materialize_derived_weights(&mut m).unwrap_err().to_string();
        assert!(err.contains("`ab` is defined differently"), "{err}");
        let mut m = model(vec![entry("prefill", concat("a", 0))]);
        let err = materialize_derived_weights(&mut m).unwrap_err().to_string();
        assert!(
            err.contains("`a` has the name of a declared weight"),
            "{err}"
        );
    }
}
