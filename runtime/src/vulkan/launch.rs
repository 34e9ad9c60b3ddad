//! [`VulkanPipeline`]: a compiled kernel loaded into a device, and its launch — upload, bind,
//! dispatch, download.

use super::{VulkanDevice, VulkanError};
use std::num::NonZeroU64;
use std::sync::mpsc;
use tessera_codegen_spirv::SpirvKernel;
use wgpu::util::DeviceExt;

/// A [`SpirvKernel`] turned into a compute pipeline on one device; load once, launch often.
pub struct VulkanPipeline {
    kernel: SpirvKernel,
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

impl VulkanPipeline {
    /// The kernel this pipeline runs.
    pub fn kernel(&self) -> &SpirvKernel {
        &self.kernel
    }
}

/// Bytes every buffer and bound range is a whole number of: a kernel's array element may be a
/// 16-byte vector (a `vec4<f32>` for wide loads, see `codegen-spirv`), and the last one must be
/// complete to be addressable.
const GRANULE: usize = 16;

/// Rounds a byte count up to whole [`GRANULE`]s, at least one (wgpu binds no empty buffer).
pub(super) fn padded(len: usize) -> u64 {
    (len.div_ceil(GRANULE).max(1) * GRANULE) as u64
}

impl VulkanDevice {
    /// Loads `kernel` into this device, checking its workgroup size against the device limits.
    pub fn load(&self, kernel: &SpirvKernel) -> Result<VulkanPipeline, VulkanError> {
        let l = &self.limits;
        let [x, y, z] = kernel.workgroup_size;
        let threads = u64::from(x) * u64::from(y) * u64::from(z);
        if x > l.max_compute_workgroup_size_x
            || y > l.max_compute_workgroup_size_y
            || z > l.max_compute_workgroup_size_z
            || threads > u64::from(l.max_compute_invocations_per_workgroup)
        {
            return Err(launch_error(
                kernel,
                format!(
                    "workgroup size {:?} is over the device's limits ({}×{}×{}, {} threads)",
                    kernel.workgroup_size,
                    l.max_compute_workgroup_size_x,
                    l.max_compute_workgroup_size_y,
                    l.max_compute_workgroup_size_z,
                    l.max_compute_invocations_per_workgroup
                ),
            ));
        }
        let (layout, pipeline) = self
            .captured(|| self.create_pipeline(kernel))
            .map_err(|e| launch_error(kernel, format!("creating the pipeline: {e}")))?;
        Ok(VulkanPipeline {
            kernel: kernel.clone(),
            layout,
            pipeline,
        })
    }

    /// The bind group layout `kernel`'s bindings need and its compute pipeline.
    fn create_pipeline(
        &self,
        kernel: &SpirvKernel,
    ) -> (wgpu::BindGroupLayout, wgpu::ComputePipeline) {
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        // Every buffer param is declared read-write to wgpu, read-only ones too (their SPIR-V
        // still says `NonWritable`): an executor binds ranges of one arena buffer as a kernel's
        // inputs and output, and wgpu refuses one buffer in read-only and read-write use within
        // a dispatch even when the ranges are disjoint.
        let entries: Vec<_> = kernel
            .buffers
            .iter()
            .map(|b| storage(b.binding, false))
            .chain(kernel.scalars_binding().map(|b| storage(b, true)))
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&kernel.name),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&kernel.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let [x, y, z] = kernel.workgroup_size;
        let entry = wgpu::PassthroughShaderEntryPoint {
            name: kernel.entry_point.as_str().into(),
            workgroup_size: (x, y, z),
        };
        // SAFETY: the words are a complete SPIR-V module written by naga from a module naga's
        // validator accepted, with the entry point and the bindings declared above.
        let module = unsafe {
            self.device
                .create_shader_module_passthrough(wgpu::ShaderModuleDescriptorPassthrough {
                    label: Some(&kernel.name),
                    entry_points: std::slice::from_ref(&entry).into(),
                    spirv: Some(kernel.words.as_slice().into()),
                    ..Default::default()
                })
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&kernel.name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(&kernel.entry_point),
                compilation_options: Default::default(),
                cache: None,
            });
        (layout, pipeline)
    }

    /// Runs `f` with wgpu's validation and out-of-memory errors captured (wgpu's default
    /// handler would panic on them) and returns the first one.
    pub(super) fn captured<T>(&self, f: impl FnOnce() -> T) -> Result<T, wgpu::Error> {
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let invalid = pollster::block_on(validation.pop());
        let exhausted = pollster::block_on(memory.pop());
        match invalid.or(exhausted) {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }

    /// Loads and runs `kernel` once: see [`launch_pipeline`](Self::launch_pipeline).
    pub fn launch(
        &self,
        kernel: &SpirvKernel,
        buffers: &mut [&mut [u8]],
        scalars: &[i64],
    ) -> Result<(), VulkanError> {
        let pipeline = self.load(kernel)?;
        self.launch_pipeline(&pipeline, buffers, scalars)
    }

    /// Runs the whole grid of `p`: uploads every buffer, dispatches the grid the kernel's
    /// `SizeExpr`s give for `scalars`, waits, and copies the buffers the kernel may write back
    /// into `buffers`. Scalars use the CPU backend's convention (`f32` params pass their bits).
    pub fn launch_pipeline(
        &self,
        p: &VulkanPipeline,
        buffers: &mut [&mut [u8]],
        scalars: &[i64],
    ) -> Result<(), VulkanError> {
        let k = &p.kernel;
        let uploaded: Vec<wgpu::Buffer> = k
            .buffers
            .iter()
            .zip(buffers.iter())
            .map(|(b, data)| self.upload(&b.name, data))
            .collect();
        let ranges: Vec<BufferRange> = uploaded
            .iter()
            .zip(buffers.iter())
            .map(|(buffer, data)| BufferRange::whole(buffer, data.len()))
            .collect();
        let mut batch = self.batch(&k.name, 1);
        batch.dispatch(p, &ranges, scalars)?;
        let written: Vec<usize> = (0..k.buffers.len())
            .filter(|&i| !k.buffers[i].read_only)
            .collect();
        let read = batch.read_back(&written.iter().map(|&i| ranges[i]).collect::<Vec<_>>())?;
        for (i, bytes) in written.into_iter().zip(read) {
            buffers[i].copy_from_slice(&bytes);
        }
        Ok(())
    }

    /// A storage buffer holding `data`, padded to whole granules.
    pub(super) fn upload(&self, name: &str, data: &[u8]) -> wgpu::Buffer {
        let mut contents = data.to_vec();
        contents.resize(padded(data.len()) as usize, 0);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(name),
                contents: &contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// An empty [`Batch`] for up to `dispatches` dispatches, labelled `label` for the driver's
    /// tools.
    pub(super) fn batch(&self, label: &str, dispatches: usize) -> Batch<'_> {
        let scalars = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("scalars"),
            size: (dispatches.max(1) * SCALAR_STRIDE) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        Batch {
            device: self,
            label: label.to_string(),
            encoder: self.encoder(label),
            scalars,
            scalar_bytes: Vec::new(),
            capacity: dispatches.max(1),
            timestamps: None,
            dispatches: 0,
            pass: None,
            scopes: Some((validation, memory)),
        }
    }

    /// A [`batch`](Self::batch) that times each of its first `dispatches` dispatches on the
    /// device with timestamp queries, when the device has them (else `None`).
    pub(super) fn timed_batch(&self, label: &str, dispatches: usize) -> Option<Batch<'_>> {
        let count = u32::try_from(2 * dispatches.max(1)).ok()?;
        if !self.timestamps || count > wgpu::QUERY_SET_MAX_QUERIES {
            return None;
        }
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        Some(Batch {
            timestamps: Some(set),
            ..self.batch(label, dispatches)
        })
    }

    fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }
}

/// Where one buffer param is bound: a byte range of a device buffer.
#[derive(Clone, Copy)]
pub(super) struct BufferRange<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    /// The bytes of the param as its type says (the bound range is that, in whole granules, at least
    /// one: wgpu binds no empty range).
    pub bytes: usize,
}

impl<'a> BufferRange<'a> {
    /// All of `buffer`, which holds `bytes` bytes (padded to whole granules).
    pub fn whole(buffer: &'a wgpu::Buffer, bytes: usize) -> BufferRange<'a> {
        BufferRange {
            buffer,
            offset: 0,
            bytes,
        }
    }

    fn size(&self) -> u64 {
        padded(self.bytes)
    }
}

/// Bytes between two dispatches' scalar params in a batch's scalar buffer: room for 64 params,
/// and a multiple of every device's storage-buffer offset alignment (wgpu allows at most 256).
const SCALAR_STRIDE: usize = 256;

/// Kernel launches recorded into one command buffer and submitted together: the steps of a
/// model's entry point are one submission (wgpu orders the dispatches and the barriers between
/// them by the buffers each binds).
pub(super) struct Batch<'d> {
    device: &'d VulkanDevice,
    label: String,
    encoder: wgpu::CommandEncoder,
    /// The scalar params of every dispatch, each at its index × [`SCALAR_STRIDE`]; written from
    /// `scalar_bytes` when the batch is submitted.
    scalars: wgpu::Buffer,
    scalar_bytes: Vec<u8>,
    /// Dispatches the scalar buffer has room for.
    capacity: usize,
    /// Where each dispatch writes its start and end times, in a timed batch.
    timestamps: Option<wgpu::QuerySet>,
    /// Dispatches recorded so far.
    dispatches: u32,
    /// The compute pass the dispatches of an untimed batch share (a timed batch gives each
    /// dispatch its own pass for its timestamps to bracket); ended before a copy and at submission.
    pass: Option<wgpu::ComputePass<'static>>,
    /// The validation and out-of-memory error scopes (in that order, the order they pop) over
    /// everything the batch records and submits: one pair per batch, not per dispatch, since
    /// scopes cost as much as the recording itself. Every dispatch is checked against the kernel
    /// and the device's limits before it is recorded.
    scopes: Option<(wgpu::ErrorScopeGuard, wgpu::ErrorScopeGuard)>,
}

impl Batch<'_> {
    /// Records the whole grid of `p` over `args` (one range per buffer param) for `scalars`,
    /// after checking the sizes, the scalar range, the grid and the bindings against the kernel
    /// and the device's limits.
    pub fn dispatch(
        &mut self,
        p: &VulkanPipeline,
        args: &[BufferRange],
        scalars: &[i64],
    ) -> Result<(), VulkanError> {
        let k = &p.kernel;
        let limits = &self.device.limits;
        let sizes: Vec<usize> = args.iter().map(|a| a.bytes).collect();
        k.check_buffers(&sizes)?;
        let words = k.scalar_words(scalars)?;
        let grid = k.grid(scalars)?;
        let max_groups = u64::from(limits.max_compute_workgroups_per_dimension);
        if let Some(g) = grid.iter().find(|&&g| g > max_groups) {
            return Err(launch_error(
                k,
                format!(
                    "grid {grid:?}: {g} workgroups along one axis (the device allows {max_groups})"
                ),
            ));
        }
        let index = self.dispatches;
        if index as usize >= self.capacity || 4 * words.len() > SCALAR_STRIDE {
            return Err(launch_error(
                k,
                format!(
                    "dispatch {index} with {} scalar params: the batch holds {} dispatches of at \
                     most {} params",
                    words.len(),
                    self.capacity,
                    SCALAR_STRIDE / 4
                ),
            ));
        }
        self.dispatches += 1;
        let timestamp_writes =
            self.timestamps
                .as_ref()
                .map(|query_set| wgpu::ComputePassTimestampWrites {
                    query_set,
                    beginning_of_pass_write_index: Some(2 * index),
                    end_of_pass_write_index: Some(2 * index + 1),
                });
        if grid.contains(&0) {
            // An empty pass still writes the dispatch's timestamps.
            if timestamp_writes.is_some() {
                self.encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(&k.name),
                        timestamp_writes,
                    });
            }
            return Ok(());
        }
        let max_binding = limits.max_storage_buffer_binding_size;
        for (b, a) in k.buffers.iter().zip(args) {
            if a.size() > max_binding {
                return Err(launch_error(
                    k,
                    format!(
                        "buffer {} has {} bytes, over the device's storage binding limit of {max_binding}",
                        b.name, a.bytes
                    ),
                ));
            }
        }
        let at = index as usize * SCALAR_STRIDE;
        self.scalar_bytes.resize(at, 0);
        self.scalar_bytes
            .extend(words.iter().flat_map(|w| w.to_le_bytes()));
        let scalars = k.scalars_binding().map(|binding| {
            let size = padded(4 * words.len());
            (binding, &self.scalars, at as u64, size)
        });
        let entries: Vec<_> = k
            .buffers
            .iter()
            .zip(args)
            .map(|(b, a)| (b.binding, a.buffer, a.offset, a.size()))
            .chain(scalars)
            .map(|(binding, buffer, offset, size)| wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset,
                    size: NonZeroU64::new(size),
                }),
            })
            .collect();
        let group = self
            .device
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&k.name),
                layout: &p.layout,
                entries: &entries,
            });
        let pass = match timestamp_writes {
            Some(_) => self.pass.insert(
                self.encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(&k.name),
                        timestamp_writes,
                    })
                    .forget_lifetime(),
            ),
            None => self.pass.get_or_insert_with(|| {
                self.encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(&self.label),
                        timestamp_writes: None,
                    })
                    .forget_lifetime()
            }),
        };
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(grid[0] as u32, grid[1] as u32, grid[2] as u32);
        if self.timestamps.is_some() {
            self.pass = None;
        }
        Ok(())
    }

    /// Records a copy of `from` to the start of `to` (after the dispatches recorded so far).
    pub fn copy(&mut self, from: BufferRange, to: &wgpu::Buffer) {
        self.pass = None;
        self.encoder
            .copy_buffer_to_buffer(from.buffer, from.offset, to, 0, from.size());
    }

    /// Submits what was recorded, waits for it, and returns an empty batch.
    pub fn finish_and_wait(self) -> Result<Self, VulkanError> {
        let (device, label, capacity) = (self.device, self.label.clone(), self.capacity);
        self.read_back(&[])?;
        Ok(device.batch(&label, capacity))
    }

    /// [`read_back`](Self::read_back), and in a timed batch the seconds each dispatch took on
    /// the device, in the order they were recorded (empty in an untimed one).
    pub fn read_back_timed(
        mut self,
        ranges: &[BufferRange],
    ) -> Result<(Vec<Vec<u8>>, Vec<f64>), VulkanError> {
        let Some(set) = self.timestamps.take() else {
            return Ok((self.read_back(ranges)?, Vec::new()));
        };
        let device = self.device;
        let queries = 2 * self.dispatches;
        let times = device.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kernel timestamps"),
            size: u64::from(queries.max(1)) * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE
                | wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        self.pass = None;
        if queries > 0 {
            self.encoder.resolve_query_set(&set, 0..queries, &times, 0);
        }
        let mut all = ranges.to_vec();
        all.push(BufferRange::whole(&times, queries as usize * 8));
        let mut bytes = self.read_back(&all)?;
        let ticks: Vec<u64> = bytes
            .pop()
            .expect("the timestamps were read back")
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let period = f64::from(device.queue.get_timestamp_period()) * 1e-9;
        let seconds = ticks
            .chunks_exact(2)
            .map(|t| t[1].saturating_sub(t[0]) as f64 * period)
            .collect();
        Ok((bytes, seconds))
    }

    /// Records copies of `ranges` into one mappable buffer, submits everything, waits, and
    /// returns each range's bytes.
    pub fn read_back(mut self, ranges: &[BufferRange]) -> Result<Vec<Vec<u8>>, VulkanError> {
        let device = self.device;
        let fail = |message: String| VulkanError::Launch {
            kernel: self.label.clone(),
            message,
        };
        let mut at = Vec::with_capacity(ranges.len());
        let mut total = 0u64;
        for r in ranges {
            at.push(total);
            total += r.size();
        }
        let staging = (total > 0).then(|| {
            device.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read back"),
                size: total,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        self.pass = None;
        if let Some(s) = &staging {
            for (r, &to) in ranges.iter().zip(&at) {
                self.encoder
                    .copy_buffer_to_buffer(r.buffer, r.offset, s, to, r.size());
            }
        }
        if !self.scalar_bytes.is_empty() {
            device
                .queue
                .write_buffer(&self.scalars, 0, &self.scalar_bytes);
        }
        device.queue.submit([self.encoder.finish()]);
        if let Some((validation, memory)) = self.scopes.take() {
            let invalid = pollster::block_on(validation.pop());
            let exhausted = pollster::block_on(memory.pop());
            if let Some(e) = invalid.or(exhausted) {
                return Err(fail(format!("recording or running: {e}")));
            }
        }
        let (tx, rx) = mpsc::channel();
        if let Some(s) = &staging {
            s.map_async(wgpu::MapMode::Read, .., move |r| {
                // The receiver outlives the callback: it runs inside `poll` below.
                let _ = tx.send(r);
            });
        }
        device
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| fail(format!("waiting for the device: {e}")))?;
        let Some(s) = staging else {
            return Ok(vec![Vec::new(); ranges.len()]);
        };
        // Waits for the callback: another thread's `poll` of the same device may be running it.
        rx.recv()
            .map_err(|_| fail("the read-back buffer was not mapped".into()))?
            .map_err(|e| fail(format!("reading back: {e}")))?;
        let view = s
            .get_mapped_range(..)
            .map_err(|e| fail(format!("reading back: {e}")))?;
        let out = ranges
            .iter()
            .zip(&at)
            .map(|(r, &from)| view[from as usize..from as usize + r.bytes].to_vec())
            .collect();
        drop(view);
        s.unmap();
        Ok(out)
    }
}

fn launch_error(k: &SpirvKernel, message: String) -> VulkanError {
    VulkanError::Launch {
        kernel: k.name.clone(),
        message,
    }
}
