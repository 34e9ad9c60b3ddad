//! [`VulkanExecutor`] (`--target vulkan`): every entry point's kernels run on a Vulkan device.
//!
//! At load the SIMT LIR the compile driver stored (`EntryPoint::gpu_code`) is written as SPIR-V
//! for the opened device (naga validates every kernel) and made into pipelines, each distinct
//! kernel once; every weight is uploaded into its own device buffer. A run uploads its inputs,
//! records every kernel launch of the entry point into one command buffer — one submission per
//! step — over one device arena placed by the KernelGraph's memory plan (buffers bound by
//! range), and reads back only the outputs.

use super::launch::{padded, BufferRange};
use super::{VulkanDevice, VulkanError, VulkanPipeline};
use crate::bindings::{
    buffer_bytes, input_bytes, shapes, weight_index, CodeCache, EntryBuffers, Home, Profile,
};
use crate::executor::Executor;
use crate::{Artifact, KernelProfile, RuntimeError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tessera_codegen_spirv::VulkanTarget;
use tessera_ir::interp::Tensor;
use tessera_ir::lir;
use tessera_ir::memory_plan::ARENA_ALIGN;
use tessera_ir::{eval_shape, DimEnv, StateSpec};

/// One launched kernel's program on the device: its steps' pipelines and its scratch.
struct DeviceProgram {
    scratch: Vec<lir::Scratch>,
    steps: Vec<Arc<VulkanPipeline>>,
}

/// One entry point ready to run.
struct VulkanEntry {
    buffers: EntryBuffers,
    /// The code of each of `buffers.launched`.
    code: Vec<DeviceProgram>,
    /// The activations (grown when a binding needs more).
    arena: Option<wgpu::Buffer>,
    /// The scratch of every launch of a run, each at its own offset (grown when needed).
    scratch: Option<wgpu::Buffer>,
}

/// One state tensor (a KV cache) kept on the device between runs.
struct DeviceState {
    shape: Vec<usize>,
    /// Holds at least the tensor's bytes (more, so that a growing cache is rarely reallocated).
    buffer: wgpu::Buffer,
}

/// Executes entry points on a Vulkan device; see the module doc.
pub struct VulkanExecutor {
    device: VulkanDevice,
    /// One device buffer per module weight, in the module's order.
    weights: Vec<wgpu::Buffer>,
    entries: HashMap<String, VulkanEntry>,
    /// The module's state tensors.
    state_specs: Vec<StateSpec>,
    /// The state by name once [`Executor::reset_state`] made it resident: each run reads it in
    /// place of its state inputs and leaves its state outputs in it.
    state: Option<BTreeMap<String, DeviceState>>,
    profile: Option<Profile>,
}

impl VulkanExecutor {
    /// Opens Vulkan adapter `device` (as `tessera devices` numbers them), validates the module,
    /// writes every entry point's kernels as SPIR-V for that device and uploads the weights.
    /// An entry point without GPU code, a kernel the device cannot run (subgroups, shared
    /// memory) or a weight larger than the device binds is an error naming it.
    pub fn new(artifact: &Artifact, device: usize) -> Result<VulkanExecutor, RuntimeError> {
        let device = VulkanDevice::open(device).map_err(unsupported)?;
        let manifest = artifact.manifest();
        let module = &manifest.module;
        module.validate()?;
        let adapter = device.summary().name.clone();
        let align = u64::from(device.limits.min_storage_buffer_offset_alignment);
        if align > ARENA_ALIGN as u64 {
            return Err(RuntimeError::Unsupported(format!(
                "Vulkan adapter {adapter}: storage buffers bind at multiples of {align} bytes; \
                 the arena places buffers at multiples of {ARENA_ALIGN}"
            )));
        }
        let index = weight_index(module, "the Vulkan executor")?;
        let target = device.target();
        let mut cache = CodeCache::default();
        let mut entries = HashMap::new();
        for ep in &module.entries {
            let buffers =
                EntryBuffers::new(ep, &ep.gpu_code, &index, "vulkan", "the Vulkan executor")?;
            let code = buffers
                .launched
                .iter()
                .map(|l| {
                    let program = &ep.gpu_code[l.index];
                    let steps = program
                        .steps
                        .iter()
                        .map(|step| cache.get(step, |s| load(&device, &target, s)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| buffers.launch_error(&ep.name, l, e.to_string()))?;
                    Ok(DeviceProgram {
                        scratch: program.scratch.clone(),
                        steps,
                    })
                })
                .collect::<Result<Vec<_>, RuntimeError>>()?;
            entries.insert(
                ep.name.clone(),
                VulkanEntry {
                    buffers,
                    code,
                    arena: None,
                    scratch: None,
                },
            );
        }
        let max_binding = device.limits.max_storage_buffer_binding_size;
        let weights = module
            .weights
            .iter()
            .zip(&manifest.weight_slots)
            .map(|(spec, slot)| {
                let bytes = artifact.weight_bytes(slot);
                if padded(bytes.len()) > max_binding {
                    return Err(RuntimeError::Unsupported(format!(
                        "the model does not fit Vulkan adapter {adapter}: weight `{}` has {} bytes, \
                         over the {max_binding} bytes the device binds as one storage buffer",
                        spec.name,
                        bytes.len()
                    )));
                }
                device
                    .captured(|| device.upload(&spec.name, bytes))
                    .map_err(|e| {
                        RuntimeError::Unsupported(format!(
                            "the model does not fit Vulkan adapter {adapter}: uploading weight `{}` \
                             ({} bytes): {e}",
                            spec.name,
                            bytes.len()
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VulkanExecutor {
            device,
            weights,
            entries,
            state_specs: module.state.clone(),
            state: None,
            profile: None,
        })
    }

    /// The opened device.
    pub fn device(&self) -> &VulkanDevice {
        &self.device
    }
}

/// `step` as SPIR-V for `target`, loaded into `device`.
fn load(
    device: &VulkanDevice,
    target: &VulkanTarget,
    step: &lir::Kernel,
) -> Result<VulkanPipeline, VulkanError> {
    let spirv = tessera_codegen_spirv::compile(step, target)?;
    device.load(&spirv)
}

fn unsupported(e: VulkanError) -> RuntimeError {
    RuntimeError::Unsupported(e.to_string())
}

/// `n` rounded up to the arena's alignment.
fn aligned(n: u64) -> u64 {
    n.div_ceil(ARENA_ALIGN as u64) * ARENA_ALIGN as u64
}

impl VulkanDevice {
    /// A device storage buffer of at least `bytes` bytes (whole granules), uninitialized.
    pub(super) fn storage_buffer(&self, name: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size: padded(bytes as usize),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// `buffer` if it holds `bytes`, else a new one of `bytes` (a quarter more, so that a
    /// growing binding does not reallocate each run), checked against the device's limit.
    fn grown(
        &self,
        buffer: Option<wgpu::Buffer>,
        name: &str,
        bytes: u64,
    ) -> Result<wgpu::Buffer, String> {
        match buffer {
            Some(b) if b.size() >= bytes => Ok(b),
            _ => {
                let size = aligned(bytes + bytes / 4).min(self.limits.max_buffer_size.max(bytes));
                if size > self.limits.max_buffer_size {
                    return Err(format!(
                        "the {name} needs {bytes} bytes, over the device's largest buffer ({})",
                        self.limits.max_buffer_size
                    ));
                }
                self.captured(|| self.storage_buffer(name, size))
                    .map_err(|e| format!("allocating the {name} ({size} bytes): {e}"))
            }
        }
    }
}

impl Executor for VulkanExecutor {
    fn reset_state(&mut self, batch: usize) -> Result<bool, RuntimeError> {
        let env: DimEnv = [("batch".to_string(), batch), ("past".to_string(), 0)].into();
        let state = self
            .state_specs
            .iter()
            .map(|s| {
                let at = |e: String| RuntimeError::Unsupported(format!("state `{}`: {e}", s.name));
                let shape = eval_shape(&s.shape, &env).map_err(at)?;
                let bytes = s.dtype.storage_bytes(&shape).map_err(at)?;
                let buffer = self.device.storage_buffer(&s.name, bytes as u64);
                Ok((s.name.clone(), DeviceState { shape, buffer }))
            })
            .collect::<Result<_, RuntimeError>>()?;
        self.state = Some(state);
        Ok(true)
    }

    fn set_profiling(&mut self, on: bool) -> bool {
        self.profile = on.then(Profile::default);
        true
    }

    fn take_profile(&mut self) -> Vec<KernelProfile> {
        self.profile.as_mut().map(Profile::take).unwrap_or_default()
    }

    fn run(
        &mut self,
        entry: &str,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
        let device = &self.device;
        let ep = self.entries.get_mut(entry).ok_or_else(|| {
            RuntimeError::Unsupported(format!("the artifact has no entry point `{entry}`"))
        })?;
        let at = |msg: String| RuntimeError::Kernel(format!("entry point `{entry}`: {msg}"));
        let mut shapes = shapes(inputs);
        if let Some(state) = &self.state {
            shapes.extend(state.iter().map(|(n, s)| (n.clone(), s.shape.clone())));
        }
        let env = ep.buffers.bind(&shapes)?;
        let placement = ep.buffers.placement(&env);
        // A buffer of no bytes is still bound as one word past its offset.
        let arena_bytes = placement.bytes as u64 + ARENA_ALIGN as u64;
        let arena = device
            .grown(ep.arena.take(), "activation arena", arena_bytes)
            .map_err(at)?;
        let buffers = &ep.buffers;
        // The scratch of every launch, each at its own offset: the steps of all launches are
        // recorded before any runs.
        let mut scalars = Vec::with_capacity(buffers.launched.len());
        let mut scratch_at = Vec::with_capacity(buffers.launched.len());
        let mut scratch_bytes = 0u64;
        for (launch, code) in buffers.launched.iter().zip(&ep.code) {
            let values = buffers.scalars(entry, launch, &code.steps[0].kernel().scalars, &env)?;
            let mut offsets = Vec::with_capacity(code.scratch.len());
            for s in &code.scratch {
                let bytes = s
                    .bytes(&values)
                    .map_err(|m| buffers.launch_error(entry, launch, m))?;
                offsets.push((scratch_bytes, bytes));
                scratch_bytes = aligned(scratch_bytes + bytes.max(4) as u64);
            }
            scalars.push(values);
            scratch_at.push(offsets);
        }
        let scratch = match scratch_bytes {
            0 => None,
            n => Some(device.grown(ep.scratch.take(), "scratch", n).map_err(at)?),
        };
        let mut encoded = Vec::new();
        let mut uploaded: HashMap<usize, wgpu::Buffer> = HashMap::new();
        let resident = |name: &str| self.state.as_ref().and_then(|s| s.get(name));
        for (i, home) in buffers.homes.iter().enumerate() {
            if let Home::Input(name) = home {
                if resident(name).is_some() {
                    continue;
                }
                let t = buffers.input(entry, i, name, inputs, &env)?;
                let bytes = input_bytes(t, &mut encoded)?;
                uploaded.insert(i, device.upload(name, bytes));
            }
        }
        let range = |i: usize| -> Result<BufferRange<'_>, RuntimeError> {
            let bytes = buffer_bytes(&buffers.kernels, i, &env)?;
            let (buffer, offset) = match &buffers.homes[i] {
                Home::Input(name) => match resident(name) {
                    Some(state) => (&state.buffer, 0),
                    None => (&uploaded[&i], 0),
                },
                Home::Weight(w) => (&self.weights[*w], 0),
                Home::Arena => (&arena, placement.offsets[i] as u64),
                Home::View(_) => unreachable!("launch arguments are resolved to their roots"),
            };
            Ok(BufferRange {
                buffer,
                offset,
                bytes,
            })
        };
        // Profiling times each dispatch with timestamp queries where the device has them, else
        // waits for each launch.
        let dispatches = ep.code.iter().map(|c| c.steps.len()).sum();
        let timed = self.profile.is_some();
        let (mut batch, timestamps) = match timed
            .then(|| device.timed_batch(entry, dispatches))
            .flatten()
        {
            Some(batch) => (batch, true),
            None => (device.batch(entry, dispatches), false),
        };
        for (((launch, code), values), offsets) in buffers
            .launched
            .iter()
            .zip(&ep.code)
            .zip(&scalars)
            .zip(&scratch_at)
        {
            let fail = |e: VulkanError| buffers.launch_error(entry, launch, e.to_string());
            let mut args = launch
                .args
                .iter()
                .map(|&b| range(b))
                .collect::<Result<Vec<_>, _>>()?;
            let scratch = scratch.as_ref();
            args.extend(offsets.iter().map(|&(offset, bytes)| BufferRange {
                buffer: scratch.expect("scratch allocated for every offset"),
                offset,
                bytes,
            }));
            let started = (timed && !timestamps).then(Instant::now);
            for step in &code.steps {
                batch.dispatch(step, &args, values).map_err(fail)?;
            }
            if let (Some(profile), Some(started)) = (self.profile.as_mut(), started) {
                batch = batch.finish_and_wait().map_err(fail)?;
                profile.record(
                    entry,
                    buffers,
                    launch.index,
                    &env,
                    started.elapsed().as_secs_f64(),
                )?;
            }
        }
        // Outputs by buffer, roots resolved; the resident state's stay on the device.
        let mut read = Vec::new();
        let mut kept = Vec::new();
        for (name, b) in &buffers.kernels.outputs {
            let i = b.0 as usize;
            let root = match buffers.homes[i] {
                Home::View(root) => root,
                _ => i,
            };
            match resident(name) {
                Some(_) => kept.push((name.clone(), i, range(root)?)),
                None => read.push((i, range(root)?)),
            }
        }
        // The state's new shapes, and a larger buffer where the old one is too small.
        let mut updates: Vec<(String, Vec<usize>, Option<wgpu::Buffer>)> = Vec::new();
        for (name, i, from) in &kept {
            let state = resident(name).expect("kept outputs are resident");
            let larger = (state.buffer.size() < padded(from.bytes))
                .then(|| device.grown(None, name, from.bytes as u64))
                .transpose()
                .map_err(at)?;
            batch.copy(*from, larger.as_ref().unwrap_or(&state.buffer));
            let shape = eval_shape(&buffers.kernels.buffers[*i].ty.shape, &env)
                .map_err(RuntimeError::Request)?;
            updates.push((name.clone(), shape, larger));
        }
        let (bytes, seconds) = batch
            .read_back_timed(&read.iter().map(|(_, r)| *r).collect::<Vec<_>>())
            .map_err(|e| at(e.to_string()))?;
        if let (Some(profile), true) = (self.profile.as_mut(), timestamps) {
            let mut at = 0;
            for (launch, code) in buffers.launched.iter().zip(&ep.code) {
                let took = seconds[at..at + code.steps.len()].iter().sum();
                at += code.steps.len();
                profile.record(entry, buffers, launch.index, &env, took)?;
            }
        }
        let by_buffer: HashMap<usize, &[u8]> = read
            .iter()
            .zip(&bytes)
            .map(|((i, _), bytes)| (*i, bytes.as_slice()))
            .collect();
        let result = buffers.outputs(
            entry,
            &env,
            |name| resident(name).is_none(),
            |i, len| Ok(&by_buffer[&i][..len]),
        );
        if let Some(state) = self.state.as_mut() {
            for (name, shape, larger) in updates {
                let s = state.get_mut(&name).expect("kept outputs are resident");
                s.shape = shape;
                if let Some(buffer) = larger {
                    s.buffer = buffer;
                }
            }
        }
        ep.arena = Some(arena);
        if scratch.is_some() {
            ep.scratch = scratch;
        }
        result
    }
}
