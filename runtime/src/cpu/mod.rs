//! The CPU executor (`--target cpu`): every entry point's kernels run as native code, JIT-compiled
//! at load from the LIR the compile driver stored in the artifact (`EntryPoint::cpu_code`).
//!
//! Per run nothing is copied but what the [`Executor`] trait forces: weights are read in place
//! from the artifact's mapping, f32/i32 inputs in place from their tensors, activations live in
//! one arena per entry point placed by the KernelGraph's memory plan (reused across runs, grown
//! when a binding needs more), and only the outputs are copied out. Each launch's groups are split
//! across a persistent thread pool.

mod pool;

use crate::executor::Executor;
use crate::{Artifact, KernelProfile, RuntimeError};
use pool::Pool;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;
use tessera_codegen_cpu::{Backend, CompiledKernel, CompiledProgram};
use tessera_ir::artifact::WeightSlot;
use tessera_ir::interp::{Tensor, TensorData};
use tessera_ir::kernel::{BodyArg, BufferSource, Kernel, KernelGraph};
use tessera_ir::kernel_text::op_names;
use tessera_ir::memory_plan::{align_up, ARENA_ALIGN};
use tessera_ir::{eval_shape, DType, DimEnv, Graph, Op};

/// Where a buffer's bytes live during a run.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Home {
    /// The run's input of this name.
    Input(String),
    /// The executor's weight of this index.
    Weight(usize),
    /// Its own place in the entry point's arena.
    Arena,
    /// The memory of this (non-view) buffer: the output of a reshape-only kernel, which
    /// launches nothing.
    View(usize),
}

/// One launched kernel: its code (steps sharing code with every launch of the same LIR: each
/// layer's copy of a rolled kernel), its argument buffers (inputs in order, then the output: the
/// LIR ABI of `lower_cpu`; the program's scratch follows them) with views resolved, and its
/// index in the KernelGraph for errors.
struct Launch {
    index: usize,
    code: CompiledProgram,
    args: Vec<usize>,
}

/// The kernels compiled so far, by their LIR without its name: the layers of a rolled model run
/// the same code on different buffers, so a 22-layer model compiles each distinct kernel once.
#[derive(Default)]
struct CodeCache(HashMap<String, Arc<CompiledKernel>>);

impl CodeCache {
    /// The compiled code of `lir` on `backend`, compiled on first use.
    fn get(
        &mut self,
        lir: &tessera_ir::lir::Kernel,
        backend: Backend,
    ) -> Result<Arc<CompiledKernel>, tessera_codegen_cpu::CodegenError> {
        let mut unnamed = lir.clone();
        unnamed.name.clear();
        let key = serde_json::to_string(&unnamed).expect("LIR serializes to JSON");
        if let Some(code) = self.0.get(&key) {
            return Ok(code.clone());
        }
        let code = Arc::new(tessera_codegen_cpu::compile_with(lir, backend)?);
        self.0.insert(key, code.clone());
        Ok(code)
    }
}

/// Arena offsets of one binding of the symbols.
struct Placement {
    /// Per buffer; meaningful for [`Home::Arena`] buffers only.
    offsets: Vec<usize>,
    bytes: usize,
}

/// Bindings whose placement is kept per entry point; a longer generation starts over (placing
/// is cheap, and decode sees each `past` once per generation).
const PLACEMENTS_KEPT: usize = 4096;

/// One entry point ready to run.
struct CpuEntry {
    graph: Graph,
    kernels: KernelGraph,
    homes: Vec<Home>,
    launches: Vec<Launch>,
    placements: HashMap<DimEnv, Placement>,
    arena: Vec<Line>,
    /// The scratch of the launch running (FlashDecoding's partial rows), reused by every launch.
    scratch: Vec<Line>,
}

/// One arena cache line: a `Vec<Line>` is an [`ARENA_ALIGN`]-aligned allocation.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; ARENA_ALIGN]);

/// Executes entry points as JIT-compiled CPU kernels, one launch per kernel in order, each split
/// across a thread pool. Keeps the artifact alive: weights are read straight from its mapping
/// (the generated code never writes a kernel's input buffers, and the mapping is read-only).
pub struct CpuExecutor {
    artifact: Arc<Artifact>,
    weights: Vec<WeightSlot>,
    entries: HashMap<String, CpuEntry>,
    pool: Pool,
    /// The kernel times so far, per (entry point, kernel index), while profiling.
    profile: Option<BTreeMap<(String, usize), KernelProfile>>,
}

impl CpuExecutor {
    /// Validates the module, checks its weights are f32, JIT-compiles every entry point's CPU
    /// code with `backend` and starts `threads` threads (the caller included; at least one); an
    /// entry point without CPU code, a weight of another dtype or a kernel that does not compile
    /// is an error naming it.
    pub fn new(
        artifact: Arc<Artifact>,
        threads: usize,
        backend: Backend,
    ) -> Result<CpuExecutor, RuntimeError> {
        if threads == 0 {
            return Err(RuntimeError::Request(
                "the CPU executor needs at least one thread".into(),
            ));
        }
        let manifest = artifact.manifest();
        let module = &manifest.module;
        module.validate()?;
        let mut compiled = CodeCache::default();
        let mut weight_index = HashMap::new();
        for (i, spec) in module.weights.iter().enumerate() {
            if !(spec.dtype.is_float() || spec.dtype.is_quantized()) {
                return Err(RuntimeError::Unsupported(format!(
                    "weight `{}` is {}: the CPU executor reads float and block-quantized weights only",
                    spec.name, spec.dtype
                )));
            }
            weight_index.insert(spec.name.as_str(), i);
        }
        let mut entries = HashMap::new();
        for ep in &module.entries {
            let at = |msg: String| format!("entry point `{}`: {msg}", ep.name);
            let kg = match &ep.kernels {
                Some(kg) if !ep.cpu_code.is_empty() || kg.kernels.is_empty() => kg,
                _ => {
                    return Err(RuntimeError::Unsupported(at(
                        "no CPU code in the artifact (recompile with --target cpu)".into(),
                    )))
                }
            };
            if let Some((name, _)) = kg
                .outputs
                .iter()
                .find(|(_, b)| matches!(kg.buffer(*b).source, BufferSource::Weight(_)))
            {
                return Err(RuntimeError::Unsupported(at(format!(
                    "output `{name}` is a weight, which the CPU executor does not yield"
                ))));
            }
            let mut homes = kg
                .buffers
                .iter()
                .map(|b| match &b.source {
                    BufferSource::Input(name) => Ok(Home::Input(name.clone())),
                    BufferSource::Weight(w) => weight_index
                        .get(w.as_str())
                        .map(|&i| Home::Weight(i))
                        .ok_or_else(|| RuntimeError::Kernel(at(format!("no weight `{w}`")))),
                    BufferSource::Computed => Ok(Home::Arena),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut launches = Vec::with_capacity(kg.kernels.len());
            for (k, (kernel, lir)) in kg.kernels.iter().zip(&ep.cpu_code).enumerate() {
                let name = format!("kernel {k} `{}` ({})", kernel.scope, kernel.kind);
                if kernel.inputs.contains(&kernel.output) {
                    return Err(RuntimeError::Kernel(at(format!(
                        "{name} reads the buffer it writes"
                    ))));
                }
                let out = kernel.output.0 as usize;
                if let Some(source) = reshaped_input(kernel) {
                    let root = match &homes[source] {
                        Home::View(r) => *r,
                        _ => source,
                    };
                    homes[out] = Home::View(root);
                    continue;
                }
                let code = CompiledProgram::new(lir, |step| compiled.get(step, backend))
                    .map_err(|e| RuntimeError::Kernel(at(format!("{name}: {e}"))))?;
                let args: Vec<usize> = kernel
                    .inputs
                    .iter()
                    .chain([&kernel.output])
                    .map(|b| match homes[b.0 as usize] {
                        Home::View(root) => root,
                        _ => b.0 as usize,
                    })
                    .collect();
                let takes = code.steps()[0].kernel().buffers.len();
                if args.len() + lir.scratch.len() != takes {
                    return Err(RuntimeError::Kernel(at(format!(
                        "{name}: {} buffers and {} scratch, its code takes {takes}",
                        args.len(),
                        lir.scratch.len()
                    ))));
                }
                launches.push(Launch {
                    index: k,
                    code,
                    args,
                });
            }
            entries.insert(
                ep.name.clone(),
                CpuEntry {
                    graph: ep.graph.clone(),
                    kernels: kg.clone(),
                    homes,
                    launches,
                    placements: HashMap::new(),
                    arena: Vec::new(),
                    scratch: Vec::new(),
                },
            );
        }
        let pool = Pool::new(threads).map_err(|e| {
            RuntimeError::Unsupported(format!("starting {threads} CPU threads: {e}"))
        })?;
        Ok(CpuExecutor {
            weights: manifest.weight_slots.clone(),
            artifact,
            entries,
            pool,
            profile: None,
        })
    }

    /// Threads each launch is split across, the caller included.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
}

/// The input buffer whose bytes a kernel's output is: a kernel that launches nothing (a chain
/// of reshapes of contiguous data) is a view of its input, so it is not run.
fn reshaped_input(kernel: &Kernel) -> Option<usize> {
    if kernel.is_launched() {
        return None;
    }
    let mut arg = BodyArg::Op(kernel.body.len().checked_sub(1)?);
    loop {
        match arg {
            BodyArg::Input(i) => return kernel.inputs.get(i).map(|b| b.0 as usize),
            BodyArg::Op(j) => {
                let op = kernel.body.get(j)?;
                if !matches!(op.op, Op::Reshape { .. }) {
                    return None;
                }
                arg = *op.args.first()?;
            }
        }
    }
}

impl CpuEntry {
    /// The arena offsets for `env`: the memory plan's slots, then every other arena buffer (one
    /// the plan does not hold, e.g. a KV append, which the plan makes in place but which this
    /// executor runs out of place while the cache is a state tensor) after them.
    fn place(&self, env: &DimEnv) -> Result<Placement, RuntimeError> {
        let kg = &self.kernels;
        let (planned, mut bytes) = kg.plan.offsets(env)?;
        let planned: HashMap<usize, usize> = planned
            .into_iter()
            .map(|(b, off)| (b.0 as usize, off))
            .collect();
        let mut offsets = vec![0; kg.buffers.len()];
        let mut extra = bytes;
        for (i, home) in self.homes.iter().enumerate() {
            if *home != Home::Arena {
                continue;
            }
            let size = buffer_bytes(kg, i, env)?;
            let offset = match planned.get(&i) {
                Some(&off) => off,
                None => {
                    let off = extra;
                    extra = align_up(extra + size);
                    off
                }
            };
            offsets[i] = offset;
            bytes = bytes.max(offset + size);
        }
        Ok(Placement {
            offsets,
            bytes: align_up(bytes.max(extra)),
        })
    }
}

/// The bytes of buffer `i` of `kg` under `env`.
fn buffer_bytes(kg: &KernelGraph, i: usize, env: &DimEnv) -> Result<usize, RuntimeError> {
    let ty = &kg.buffers[i].ty;
    let shape = eval_shape(&ty.shape, env).map_err(RuntimeError::Request)?;
    ty.dtype
        .storage_bytes(&shape)
        .map_err(RuntimeError::Request)
}

/// The launch arguments of one kernel, shared by the threads running its groups.
struct Args<'a> {
    code: &'a CompiledKernel,
    bases: Vec<*mut u8>,
    scalars: Vec<i64>,
    grid: [u64; 3],
}

// SAFETY: the pointers are only passed to the kernel, which each thread runs on a disjoint group
// range (see `CompiledKernel::run_groups`).
unsafe impl Sync for Args<'_> {}

impl Args<'_> {
    fn run(&self, groups: Range<u64>) {
        // SAFETY: `bases` has one pointer per buffer param (checked at load) to memory sized by
        // the buffer's type under the run's binding — inputs checked against it, the arena placed
        // for it, weights validated by the module —, `scalars` one value per scalar param,
        // `grid` is the code's grid for them and the pool splits `0..groups` into disjoint
        // ranges; the output never shares memory with an input (different buffers the plan keeps
        // apart while both are live).
        unsafe {
            self.code
                .run_groups(&self.bases, &self.scalars, self.grid, groups)
        }
    }
}

impl Executor for CpuExecutor {
    fn set_profiling(&mut self, on: bool) -> bool {
        self.profile = on.then(BTreeMap::new);
        true
    }

    fn take_profile(&mut self) -> Vec<KernelProfile> {
        self.profile
            .as_mut()
            .map(|p| std::mem::take(p).into_values().collect())
            .unwrap_or_default()
    }

    fn run(
        &mut self,
        entry: &str,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
        let ep = self.entries.get_mut(entry).ok_or_else(|| {
            RuntimeError::Unsupported(format!("the artifact has no entry point `{entry}`"))
        })?;
        let shapes = inputs
            .iter()
            .map(|(name, t)| (name.clone(), t.shape.clone()))
            .collect();
        // The KernelGraph's input buffers have the Graph's input types (`Module::validate`).
        let env = ep.graph.bind_dims(&shapes)?;
        if !ep.placements.contains_key(&env) {
            if ep.placements.len() >= PLACEMENTS_KEPT {
                ep.placements.clear();
            }
            let placement = ep.place(&env)?;
            ep.placements.insert(env.clone(), placement);
        }
        let placement = &ep.placements[&env];
        let lines = placement.bytes / ARENA_ALIGN;
        if ep.arena.len() < lines {
            ep.arena = vec![Line([0; ARENA_ALIGN]); lines];
        }
        let arena = ep.arena.as_mut_ptr().cast::<u8>();
        let kg = &ep.kernels;
        // Inputs not stored as their raw bytes (or on a big-endian host) are encoded here.
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        let mut bases: Vec<*mut u8> = Vec::with_capacity(kg.buffers.len());
        for (i, home) in ep.homes.iter().enumerate() {
            let base = match home {
                Home::Input(name) => {
                    let t = inputs.get(name).ok_or_else(|| {
                        RuntimeError::Request(format!("input `{name}` was not given"))
                    })?;
                    let want = kg.buffers[i].ty.dtype;
                    if t.dtype != want {
                        return Err(RuntimeError::Request(format!(
                            "input `{name}` is {} but the entry point `{entry}` takes {want}",
                            t.dtype
                        )));
                    }
                    let bytes = buffer_bytes(kg, i, &env)?;
                    let (base, len) = match (&t.data, t.dtype) {
                        (TensorData::F32(v), DType::F32) if cfg!(target_endian = "little") => {
                            (v.as_ptr().cast::<u8>().cast_mut(), 4 * v.len())
                        }
                        (TensorData::I32(v), DType::I32) if cfg!(target_endian = "little") => {
                            (v.as_ptr().cast::<u8>().cast_mut(), 4 * v.len())
                        }
                        _ => {
                            encoded.push(t.to_le_bytes()?);
                            let b = encoded.last_mut().expect("just pushed");
                            (b.as_mut_ptr(), b.len())
                        }
                    };
                    if len != bytes {
                        return Err(RuntimeError::Request(format!(
                            "input `{name}` of `{entry}` holds {len} bytes, its shape {:?} needs {bytes}",
                            t.shape
                        )));
                    }
                    base
                }
                // The mapping is read-only and kernels only read weights (see the struct's doc).
                Home::Weight(w) => self
                    .artifact
                    .weight_bytes(&self.weights[*w])
                    .as_ptr()
                    .cast_mut(),
                // SAFETY: the placement keeps every arena buffer inside `placement.bytes`, which
                // the arena holds.
                Home::Arena => unsafe { arena.add(placement.offsets[i]) },
                // Filled below, once its root's base is known.
                Home::View(_) => std::ptr::null_mut(),
            };
            bases.push(base);
        }
        for (i, home) in ep.homes.iter().enumerate() {
            if let Home::View(root) = home {
                bases[i] = bases[*root];
            }
        }
        for launch in &ep.launches {
            let kernel = &kg.kernels[launch.index];
            let fail = |msg: String| {
                RuntimeError::Kernel(format!(
                    "entry point `{entry}`: kernel {} `{}` ({}): {msg}",
                    launch.index, kernel.scope, kernel.kind
                ))
            };
            let steps = launch.code.steps();
            let scalars = steps[0]
                .kernel()
                .scalars
                .iter()
                .map(|s| {
                    env.get(&s.name)
                        .map(|&v| v as i64)
                        .ok_or_else(|| fail(format!("symbol `{}` is not bound", s.name)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut launch_bases: Vec<*mut u8> = launch.args.iter().map(|&b| bases[b]).collect();
            let scratch = launch
                .code
                .scratch_bytes(&scalars)
                .map_err(|e| fail(e.to_string()))?;
            let lines: usize = scratch.iter().map(|&n| n.div_ceil(ARENA_ALIGN)).sum();
            if ep.scratch.len() < lines {
                ep.scratch = vec![Line([0; ARENA_ALIGN]); lines];
            }
            let mut at = ep.scratch.as_mut_ptr();
            for n in scratch {
                launch_bases.push(at.cast::<u8>());
                // SAFETY: the scratch holds the sum of every buffer's lines.
                at = unsafe { at.add(n.div_ceil(ARENA_ALIGN)) };
            }
            let started = self.profile.is_some().then(Instant::now);
            for code in steps {
                let grid = code.grid(&scalars).map_err(|e| fail(e.to_string()))?;
                let groups = code
                    .group_count(&scalars)
                    .map_err(|e| fail(e.to_string()))?;
                let args = Args {
                    code,
                    bases: launch_bases.clone(),
                    scalars: scalars.clone(),
                    grid,
                };
                self.pool.run(groups, &|range| args.run(range));
            }
            if let (Some(profile), Some(started)) = (self.profile.as_mut(), started) {
                let seconds = started.elapsed().as_secs_f64();
                let bytes = kernel
                    .inputs
                    .iter()
                    .chain([&kernel.output])
                    .map(|b| buffer_bytes(kg, b.0 as usize, &env))
                    .sum::<Result<usize, _>>()?;
                let row = profile
                    .entry((entry.to_string(), launch.index))
                    .or_insert_with(|| KernelProfile {
                        entry: entry.to_string(),
                        index: launch.index,
                        scope: kernel.scope.clone(),
                        kind: kernel.kind.to_string(),
                        ops: op_names(&kernel.body),
                        launches: 0,
                        seconds: 0.0,
                        bytes: 0,
                    });
                row.launches += 1;
                row.seconds += seconds;
                row.bytes += bytes as u64;
            }
        }
        kg.outputs
            .iter()
            .map(|(name, b)| {
                let i = b.0 as usize;
                let buffer = kg.buffer(*b);
                let shape = eval_shape(&buffer.ty.shape, &env).map_err(|m| {
                    RuntimeError::Request(format!("output `{name}` of `{entry}`: {m}"))
                })?;
                let len = buffer_bytes(kg, i, &env)?;
                // SAFETY: the buffer's base points at `len` bytes (an input checked above or the
                // arena as placed), no kernel is running, and the slice dies before the next run.
                let bytes = unsafe { std::slice::from_raw_parts(bases[i], len) };
                Ok((
                    name.clone(),
                    Tensor::from_le_bytes(buffer.ty.dtype, shape, bytes, name)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_ir::artifact::{self, Manifest};
    use tessera_ir::kernel::{BodyOp, Buffer, BufferId, KernelKind};
    use tessera_ir::lir::{self, Access, Axis, KernelBuilder, ScalarType, SizeExpr, Special};
    use tessera_ir::memory_plan::{MemoryPlan, Slot};
    use tessera_ir::{BinaryOp, Dim, EntryPoint, ModelInfo, Module, TensorType, WeightSpec};

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn a_launch_split_across_threads_matches_the_serial_launch() {
        let code = tessera_codegen_cpu::compile(&lir::examples::gemv_row()).unwrap();
        let (n, k) = (37usize, 16usize);
        let w: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.25 - 1.0).collect();
        let x: Vec<f32> = (0..k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let scalars = [n as i64, k as i64];
        let (mut wb, mut xb) = (f32_bytes(&w), f32_bytes(&x));
        let mut serial = vec![0u8; 4 * n];
        code.launch(&mut [&mut wb, &mut xb, &mut serial], &scalars)
            .unwrap();
        for threads in [1, 3] {
            let mut pool = Pool::new(threads).unwrap();
            let mut split = vec![0xffu8; 4 * n];
            let args = Args {
                code: &code,
                bases: vec![wb.as_mut_ptr(), xb.as_mut_ptr(), split.as_mut_ptr()],
                scalars: scalars.to_vec(),
                grid: code.grid(&scalars).unwrap(),
            };
            pool.run(code.group_count(&scalars).unwrap(), &|r| args.run(r));
            assert_eq!(split, serial, "{threads} threads");
        }
    }

    /// `y[i] = x[i] + w[0]` for `i < past`, one element per group.
    fn add_w_kernel() -> lir::Kernel {
        let mut b = KernelBuilder::new("add_w");
        let x = b.buffer("x", ScalarType::F32, Access::Read);
        let w = b.buffer("w", ScalarType::F32, Access::Read);
        let y = b.buffer("y", ScalarType::F32, Access::Write);
        b.scalar("past", ScalarType::I64);
        b.grid([SizeExpr::Param(0), SizeExpr::Const(1), SizeExpr::Const(1)]);
        let i = b.special(Special::GroupId(Axis::X));
        let zero = b.const_i(0);
        let xv = b.load(x, i, 1);
        let wv = b.load(w, zero, 1);
        let s = b.add(xv, wv);
        b.store(y, i, s);
        b.finish()
    }

    /// An artifact whose one entry point computes `y = reshape(x + w) + w` on `x: [past]`: two
    /// launches through the arena and a view that launches nothing.
    fn write_artifact(path: &std::path::Path) {
        let past = || vec![Dim::sym("past")];
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, past());
        let w = g.weight("w", DType::F32, &[1]);
        let t = g.add(Op::Binary(BinaryOp::Add), &[x, w]).unwrap();
        let r = g.add(Op::Reshape { shape: past() }, &[t]).unwrap();
        let y = g.add(Op::Binary(BinaryOp::Add), &[r, w]).unwrap();
        g.output("y", y);
        let buffer = |dims: Vec<Dim>, source| Buffer {
            ty: TensorType::new(DType::F32, dims),
            source,
        };
        let add = |input: u32, output: u32| tessera_ir::kernel::Kernel {
            scope: "main".into(),
            kind: KernelKind::Elementwise,
            body: vec![BodyOp {
                op: Op::Binary(BinaryOp::Add),
                args: vec![BodyArg::Input(0), BodyArg::Input(1)],
            }],
            inputs: vec![BufferId(input), BufferId(1)],
            output: BufferId(output),
            estimate_seconds: 0.0,
        };
        let reshape = tessera_ir::kernel::Kernel {
            scope: "main".into(),
            kind: KernelKind::Layout,
            body: vec![BodyOp {
                op: Op::Reshape { shape: past() },
                args: vec![BodyArg::Input(0)],
            }],
            inputs: vec![BufferId(2)],
            output: BufferId(3),
            estimate_seconds: 0.0,
        };
        let slot = |b: u32, first, last| Slot {
            buffer: BufferId(b),
            first,
            last,
            bytes: Dim::sym("past") * Dim::c(4),
        };
        let kernels = KernelGraph {
            buffers: vec![
                buffer(past(), BufferSource::Input("x".into())),
                buffer(vec![Dim::c(1)], BufferSource::Weight("w".into())),
                buffer(past(), BufferSource::Computed),
                buffer(past(), BufferSource::Computed),
                buffer(past(), BufferSource::Computed),
            ],
            kernels: vec![add(0, 2), reshape, add(3, 4)],
            outputs: vec![("y".into(), BufferId(4))],
            derived_weights: vec![],
            plan: MemoryPlan {
                slots: vec![slot(2, 0, 2), slot(4, 2, 2)],
                aliases: vec![tessera_ir::memory_plan::Alias {
                    buffer: BufferId(3),
                    of: BufferId(2),
                }],
            },
        };
        let module = Module {
            info: ModelInfo {
                architecture: "test".into(),
                vocab_size: 1,
                max_context: 1,
                bos_token_id: None,
                eos_token_ids: vec![],
                num_layers: 0,
                hidden_size: 1,
            },
            weights: vec![WeightSpec {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![1],
            }],
            state: vec![],
            entries: vec![EntryPoint {
                name: "decode".into(),
                graph: g,
                kernels: Some(kernels),
                cpu_code: vec![add_w_kernel(), add_w_kernel(), add_w_kernel()]
                    .into_iter()
                    .map(lir::Program::single)
                    .collect(),
            }],
        };
        let w = 10.0f32.to_le_bytes();
        let manifest = Manifest {
            producer: "test".into(),
            target: "cpu".into(),
            source: "unit".into(),
            config: serde_json::Value::Null,
            weight_slots: artifact::layout_weights([("w", w.len() as u64)]),
            module,
        };
        let mut file = std::fs::File::create(path).unwrap();
        let mut weights = [&w[..]].into_iter();
        artifact::write(&mut file, &manifest, None, &mut weights, &mut |_| {}).unwrap();
    }

    #[test]
    fn the_arena_reused_across_bindings_gives_what_a_fresh_executor_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("add.tsr");
        write_artifact(&path);
        let artifact = Arc::new(Artifact::open(&path).unwrap());
        let run = |exec: &mut CpuExecutor, past: usize| {
            let x: Vec<f32> = (0..past).map(|i| i as f32).collect();
            let inputs = [("x".to_string(), Tensor::f32(vec![past], x))].into();
            exec.run("decode", &inputs).unwrap()["y"].clone()
        };
        let mut reused = CpuExecutor::new(Arc::clone(&artifact), 3, Backend::default()).unwrap();
        for past in [5, 40, 3, 40, 1] {
            let got = run(&mut reused, past);
            let mut fresh = CpuExecutor::new(Arc::clone(&artifact), 1, Backend::default()).unwrap();
            assert_eq!(got, run(&mut fresh, past), "past = {past}");
            let want: Vec<f32> = (0..past).map(|i| i as f32 + 20.0).collect();
            assert_eq!(got.as_f32().unwrap(), want, "past = {past}");
        }
        let wrong = [("x".to_string(), Tensor::i32(vec![2], vec![1, 2]))].into();
        let err = reused.run("decode", &wrong).unwrap_err().to_string();
        assert!(err.contains("input `x` is i32"), "{err}");
    }
}
