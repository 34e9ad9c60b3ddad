//! Where an entry point's KernelGraph buffers live during a run, shared by the compiled
//! executors (CPU, Vulkan), which differ only in what memory is and how a kernel runs: which
//! buffers are inputs, weights, arena slots or views of another buffer; where the memory plan
//! places the arena for a binding of the dims; the checks on a run's inputs; its outputs; and
//! the per-kernel profile rows.

use crate::{KernelProfile, RuntimeError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tessera_ir::interp::{Tensor, TensorData};
use tessera_ir::kernel::{BodyArg, BufferSource, Kernel, KernelGraph};
use tessera_ir::kernel_text::op_names;
use tessera_ir::lir;
use tessera_ir::memory_plan::align_up;
use tessera_ir::{eval_shape, DType, DimEnv, EntryPoint, Graph, Module, Op};

/// Where a buffer's bytes live during a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Home {
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

/// One launched kernel: its index in the KernelGraph and its argument buffers (inputs in order,
/// then the output: the LIR ABI of `passes::lower`; the program's scratch follows them) with
/// views resolved to the buffers whose memory they are.
pub(crate) struct Launched {
    pub index: usize,
    pub args: Vec<usize>,
}

/// Arena offsets of one binding of the symbols.
pub(crate) struct Placement {
    /// Per buffer; meaningful for [`Home::Arena`] buffers only.
    pub offsets: Vec<usize>,
    pub bytes: usize,
}

/// Bindings whose placement is kept per entry point; a longer generation starts over (placing
/// is cheap, and decode sees each `past` once per generation).
const PLACEMENTS_KEPT: usize = 4096;

/// One entry point's buffers and launches, checked against its code.
pub(crate) struct EntryBuffers {
    pub graph: Graph,
    pub kernels: KernelGraph,
    pub homes: Vec<Home>,
    /// The kernels that launch code, in order, with `code[index]` their program.
    pub launched: Vec<Launched>,
    placements: HashMap<DimEnv, Placement>,
}

/// The index of every weight of `module` by name; `executor` (e.g. `the CPU executor`) refuses
/// weights that are neither float nor block-quantized.
pub(crate) fn weight_index<'m>(
    module: &'m Module,
    executor: &str,
) -> Result<HashMap<&'m str, usize>, RuntimeError> {
    let mut index = HashMap::new();
    for (i, spec) in module.weights.iter().enumerate() {
        if !(spec.dtype.is_float() || spec.dtype.is_quantized()) {
            return Err(RuntimeError::Unsupported(format!(
                "weight `{}` is {}: {executor} reads float and block-quantized weights only",
                spec.name, spec.dtype
            )));
        }
        index.insert(spec.name.as_str(), i);
    }
    Ok(index)
}

impl EntryBuffers {
    /// The buffers of `ep`, whose kernels run `code` (one program per kernel, index-aligned;
    /// empty only when the entry has no kernels). `target` names the `--target` whose code it is
    /// and `executor` the executor, for errors.
    pub fn new(
        ep: &EntryPoint,
        code: &[lir::Program],
        weights: &HashMap<&str, usize>,
        target: &str,
        executor: &str,
    ) -> Result<EntryBuffers, RuntimeError> {
        let at = |msg: String| format!("entry point `{}`: {msg}", ep.name);
        let kg = match &ep.kernels {
            Some(kg) if code.len() == kg.kernels.len() => kg,
            _ => {
                return Err(RuntimeError::Unsupported(at(format!(
                    "no {target} code in the artifact (recompile with --target {target})"
                ))))
            }
        };
        if let Some((name, _)) = kg
            .outputs
            .iter()
            .find(|(_, b)| matches!(kg.buffer(*b).source, BufferSource::Weight(_)))
        {
            return Err(RuntimeError::Unsupported(at(format!(
                "output `{name}` is a weight, which {executor} does not yield"
            ))));
        }
        let mut homes = kg
            .buffers
            .iter()
            .map(|b| match &b.source {
                BufferSource::Input(name) => Ok(Home::Input(name.clone())),
                BufferSource::Weight(w) => weights
                    .get(w.as_str())
                    .map(|&i| Home::Weight(i))
                    .ok_or_else(|| RuntimeError::Kernel(at(format!("no weight `{w}`")))),
                BufferSource::Computed => Ok(Home::Arena),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut launched = Vec::with_capacity(kg.kernels.len());
        for (k, (kernel, program)) in kg.kernels.iter().zip(code).enumerate() {
            let name = format!("kernel {k} `{}` ({})", kernel.scope, kernel.kind);
            if kernel.inputs.contains(&kernel.output) {
                return Err(RuntimeError::Kernel(at(format!(
                    "{name} reads the buffer it writes"
                ))));
            }
            if let Some(source) = reshaped_input(kernel) {
                let root = match &homes[source] {
                    Home::View(r) => *r,
                    _ => source,
                };
                homes[kernel.output.0 as usize] = Home::View(root);
                continue;
            }
            let args: Vec<usize> = kernel
                .inputs
                .iter()
                .chain([&kernel.output])
                .map(|b| match homes[b.0 as usize] {
                    Home::View(root) => root,
                    _ => b.0 as usize,
                })
                .collect();
            let takes = program.steps.first().map_or(0, |s| s.buffers.len());
            if args.len() + program.scratch.len() != takes {
                return Err(RuntimeError::Kernel(at(format!(
                    "{name}: {} buffers and {} scratch, its code takes {takes}",
                    args.len(),
                    program.scratch.len()
                ))));
            }
            launched.push(Launched { index: k, args });
        }
        Ok(EntryBuffers {
            graph: ep.graph.clone(),
            kernels: kg.clone(),
            homes,
            launched,
            placements: HashMap::new(),
        })
    }

    /// Binds the dims from the inputs' shapes (by input name) and places the arena for them
    /// (cached per binding: [`placement`](Self::placement)).
    pub fn bind(&mut self, shapes: &BTreeMap<String, Vec<usize>>) -> Result<DimEnv, RuntimeError> {
        // The KernelGraph's input buffers have the Graph's input types (`Module::validate`).
        let env = self.graph.bind_dims(shapes)?;
        if !self.placements.contains_key(&env) {
            if self.placements.len() >= PLACEMENTS_KEPT {
                self.placements.clear();
            }
            let placement = self.place(&env)?;
            self.placements.insert(env.clone(), placement);
        }
        Ok(env)
    }

    /// The arena placement of a binding [`bind`](Self::bind) returned.
    pub fn placement(&self, env: &DimEnv) -> &Placement {
        &self.placements[env]
    }

    /// The arena offsets for `env`: the memory plan's slots, then every other arena buffer (one
    /// the plan does not hold, e.g. a KV append, which the plan makes in place but which the
    /// executors run out of place while the cache is a state tensor) after them.
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

    /// The input of buffer `i` (whose home is [`Home::Input`] `name`), checked to have the
    /// buffer's dtype and, under `env`, its size.
    pub fn input<'t>(
        &self,
        entry: &str,
        i: usize,
        name: &str,
        inputs: &'t BTreeMap<String, Tensor>,
        env: &DimEnv,
    ) -> Result<&'t Tensor, RuntimeError> {
        let t = inputs
            .get(name)
            .ok_or_else(|| RuntimeError::Request(format!("input `{name}` was not given")))?;
        let want = self.kernels.buffers[i].ty.dtype;
        if t.dtype != want {
            return Err(RuntimeError::Request(format!(
                "input `{name}` is {} but the entry point `{entry}` takes {want}",
                t.dtype
            )));
        }
        let bytes = buffer_bytes(&self.kernels, i, env)?;
        let len = t
            .dtype
            .storage_bytes(&t.shape)
            .map_err(RuntimeError::Request)?;
        if len != bytes {
            return Err(RuntimeError::Request(format!(
                "input `{name}` of `{entry}` holds {len} bytes, its shape {:?} needs {bytes}",
                t.shape
            )));
        }
        Ok(t)
    }

    /// The values of a launch's scalar params `params` (the shape symbols its code names)
    /// under `env`.
    pub fn scalars(
        &self,
        entry: &str,
        launched: &Launched,
        params: &[lir::ScalarParam],
        env: &DimEnv,
    ) -> Result<Vec<i64>, RuntimeError> {
        params
            .iter()
            .map(|s| {
                env.get(&s.name).map(|&v| v as i64).ok_or_else(|| {
                    self.launch_error(entry, launched, format!("symbol `{}` is not bound", s.name))
                })
            })
            .collect()
    }

    /// An error of running `launched`, naming the entry point and the kernel.
    pub fn launch_error(&self, entry: &str, launched: &Launched, msg: String) -> RuntimeError {
        let kernel = &self.kernels.kernels[launched.index];
        RuntimeError::Kernel(format!(
            "entry point `{entry}`: kernel {} `{}` ({}): {msg}",
            launched.index, kernel.scope, kernel.kind
        ))
    }

    /// The entry's outputs under `env` whose names `wanted` accepts, each decoded from the
    /// bytes `bytes` gives for its buffer index and length.
    pub fn outputs<'b>(
        &self,
        entry: &str,
        env: &DimEnv,
        wanted: impl Fn(&str) -> bool,
        mut bytes: impl FnMut(usize, usize) -> Result<&'b [u8], RuntimeError>,
    ) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
        let kg = &self.kernels;
        kg.outputs
            .iter()
            .filter(|(name, _)| wanted(name))
            .map(|(name, b)| {
                let i = b.0 as usize;
                let buffer = kg.buffer(*b);
                let shape = eval_shape(&buffer.ty.shape, env).map_err(|m| {
                    RuntimeError::Request(format!("output `{name}` of `{entry}`: {m}"))
                })?;
                let len = buffer_bytes(kg, i, env)?;
                Ok((
                    name.clone(),
                    Tensor::from_le_bytes(buffer.ty.dtype, shape, bytes(i, len)?, name)?,
                ))
            })
            .collect()
    }
}

/// The shape of every tensor of `inputs`, by name.
pub(crate) fn shapes(inputs: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<usize>> {
    inputs
        .iter()
        .map(|(name, t)| (name.clone(), t.shape.clone()))
        .collect()
}

/// The bytes of `t` as a kernel reads them: in place for f32/i32 on a little-endian host, else
/// encoded into `encoded` (kept by the caller while the bytes are in use).
pub(crate) fn input_bytes<'t>(
    t: &'t Tensor,
    encoded: &'t mut Vec<Vec<u8>>,
) -> Result<&'t [u8], RuntimeError> {
    let le = cfg!(target_endian = "little");
    // SAFETY: a `Vec<f32>`/`Vec<i32>` is `4 * len` initialized bytes, read as such.
    match (&t.data, t.dtype) {
        (TensorData::F32(v), DType::F32) if le => {
            Ok(unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), 4 * v.len()) })
        }
        (TensorData::I32(v), DType::I32) if le => {
            Ok(unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), 4 * v.len()) })
        }
        _ => {
            encoded.push(t.to_le_bytes()?);
            Ok(encoded.last().expect("just pushed"))
        }
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

/// The bytes of buffer `i` of `kg` under `env`.
pub(crate) fn buffer_bytes(
    kg: &KernelGraph,
    i: usize,
    env: &DimEnv,
) -> Result<usize, RuntimeError> {
    let ty = &kg.buffers[i].ty;
    let shape = eval_shape(&ty.shape, env).map_err(RuntimeError::Request)?;
    ty.dtype
        .storage_bytes(&shape)
        .map_err(RuntimeError::Request)
}

/// Kernels compiled so far, by their LIR without its name: the layers of a rolled model run the
/// same code on different buffers, so a 22-layer model compiles each distinct kernel once.
pub(crate) struct CodeCache<T>(HashMap<String, Arc<T>>);

impl<T> Default for CodeCache<T> {
    fn default() -> Self {
        CodeCache(HashMap::new())
    }
}

impl<T> CodeCache<T> {
    /// The code of `lir`, made by `compile` on first use.
    pub fn get<E>(
        &mut self,
        lir: &lir::Kernel,
        compile: impl FnOnce(&lir::Kernel) -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut unnamed = lir.clone();
        unnamed.name.clear();
        let key = serde_json::to_string(&unnamed).expect("LIR serializes to JSON");
        if let Some(code) = self.0.get(&key) {
            return Ok(code.clone());
        }
        let code = Arc::new(compile(lir)?);
        self.0.insert(key, code.clone());
        Ok(code)
    }
}

/// The kernel times of a profiling executor, per (entry point, kernel index).
#[derive(Default)]
pub(crate) struct Profile(BTreeMap<(String, usize), KernelProfile>);

impl Profile {
    /// Adds one launch of kernel `index` of `entry` that took `seconds`, its operands' bytes
    /// under `env` counted.
    pub fn record(
        &mut self,
        entry: &str,
        buffers: &EntryBuffers,
        index: usize,
        env: &DimEnv,
        seconds: f64,
    ) -> Result<(), RuntimeError> {
        let kg = &buffers.kernels;
        let kernel = &kg.kernels[index];
        let bytes = kernel
            .inputs
            .iter()
            .chain([&kernel.output])
            .map(|b| buffer_bytes(kg, b.0 as usize, env))
            .sum::<Result<usize, _>>()?;
        let row = self
            .0
            .entry((entry.to_string(), index))
            .or_insert_with(|| KernelProfile {
                entry: entry.to_string(),
                index,
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
        Ok(())
    }

    /// The rows so far; starts over.
    pub fn take(&mut self) -> Vec<KernelProfile> {
        std::mem::take(&mut self.0).into_values().collect()
    }
}
