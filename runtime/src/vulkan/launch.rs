//! [`VulkanPipeline`]: a compiled kernel loaded into a device, and its launch — upload, bind,
//! dispatch, download.

use super::{VulkanDevice, VulkanError};
use std::sync::mpsc;
use tessera_codegen_spirv::SpirvKernel;
use wgpu::util::DeviceExt;

/// A [`SpirvKernel`] turned into a compute pipeline on one device; load once, launch often.
pub struct VulkanPipeline {
    kernel: SpirvKernel,
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

/// One launch's device buffer for a kernel buffer param, and whether to read it back.
struct Bound {
    buffer: wgpu::Buffer,
    read_back: bool,
}

impl VulkanPipeline {
    /// The kernel this pipeline runs.
    pub fn kernel(&self) -> &SpirvKernel {
        &self.kernel
    }
}

/// Rounds a byte count up to whole 32-bit words, at least one (packed buffers are read as
/// words, and wgpu binds no empty buffer).
fn padded(len: usize) -> u64 {
    (len.div_ceil(4).max(1) * 4) as u64
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
        let entries: Vec<_> = kernel
            .buffers
            .iter()
            .map(|b| storage(b.binding, b.read_only))
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
    fn captured<T>(&self, f: impl FnOnce() -> T) -> Result<T, wgpu::Error> {
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
        let sizes: Vec<usize> = buffers.iter().map(|b| b.len()).collect();
        k.check_buffers(&sizes)?;
        let words = k.scalar_words(scalars)?;
        let grid = k.grid(scalars)?;
        let max_groups = u64::from(self.limits.max_compute_workgroups_per_dimension);
        if let Some(g) = grid.iter().find(|&&g| g > max_groups) {
            return Err(launch_error(
                k,
                format!(
                    "grid {grid:?}: {g} workgroups along one axis (the device allows {max_groups})"
                ),
            ));
        }
        if grid.contains(&0) {
            return Ok(());
        }
        let max_binding = self.limits.max_storage_buffer_binding_size;
        for (b, data) in k.buffers.iter().zip(buffers.iter()) {
            if padded(data.len()) > max_binding {
                return Err(launch_error(
                    k,
                    format!(
                        "buffer {} has {} bytes, over the device's storage binding limit of {max_binding}",
                        b.name,
                        data.len()
                    ),
                ));
            }
        }
        let staging = self
            .captured(|| self.submit(p, buffers, &words, grid))
            .map_err(|e| launch_error(k, format!("running: {e}")))?;
        self.read_back(k, &staging, buffers)
    }

    /// Uploads the buffers and scalars, dispatches `grid` and queues the copies of the writable
    /// buffers into mappable staging buffers (`None` for read-only ones), which it returns.
    fn submit(
        &self,
        p: &VulkanPipeline,
        buffers: &[&mut [u8]],
        words: &[u32],
        grid: [u64; 3],
    ) -> Vec<Option<wgpu::Buffer>> {
        let k = &p.kernel;
        let bound: Vec<Bound> = k
            .buffers
            .iter()
            .zip(buffers.iter())
            .map(|(b, data)| Bound {
                buffer: self.upload(&b.name, data),
                read_back: !b.read_only,
            })
            .collect();
        let scalar_bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let scalar_buffer = k
            .scalars_binding()
            .map(|binding| (binding, self.upload("scalars", &scalar_bytes)));
        let entries: Vec<_> = k
            .buffers
            .iter()
            .zip(&bound)
            .map(|(b, d)| (b.binding, &d.buffer))
            .chain(scalar_buffer.as_ref().map(|(binding, buf)| (*binding, buf)))
            .map(|(binding, buffer)| wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&k.name),
            layout: &p.layout,
            entries: &entries,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(&k.name),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&k.name),
                timestamp_writes: None,
            });
            pass.set_pipeline(&p.pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(grid[0] as u32, grid[1] as u32, grid[2] as u32);
        }
        let staging: Vec<Option<wgpu::Buffer>> = bound
            .iter()
            .map(|d| {
                d.read_back.then(|| {
                    let s = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("read back"),
                        size: d.buffer.size(),
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    encoder.copy_buffer_to_buffer(&d.buffer, 0, &s, 0, d.buffer.size());
                    s
                })
            })
            .collect();
        self.queue.submit([encoder.finish()]);
        staging
    }

    /// A storage buffer holding `data`, padded to whole words.
    fn upload(&self, name: &str, data: &[u8]) -> wgpu::Buffer {
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

    /// Waits for the submitted work and copies each staging buffer into its slice.
    fn read_back(
        &self,
        k: &SpirvKernel,
        staging: &[Option<wgpu::Buffer>],
        buffers: &mut [&mut [u8]],
    ) -> Result<(), VulkanError> {
        let (tx, rx) = mpsc::channel();
        for (i, s) in staging.iter().enumerate() {
            if let Some(s) = s {
                let tx = tx.clone();
                s.map_async(wgpu::MapMode::Read, .., move |r| {
                    // The receiver outlives every callback (it waits for them all below).
                    let _ = tx.send((i, r));
                });
            }
        }
        drop(tx);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| launch_error(k, format!("waiting for the device: {e}")))?;
        // Blocks until every callback has run: another thread's `poll` may run ours after
        // this one returns (tests launch from several threads at once).
        for (i, result) in rx.iter() {
            result.map_err(|e| launch_error(k, format!("reading back buffer {i}: {e}")))?;
            let Some(s) = &staging[i] else { continue };
            let view = s
                .get_mapped_range(..)
                .map_err(|e| launch_error(k, format!("reading back buffer {i}: {e}")))?;
            let out = &mut buffers[i];
            let len = out.len();
            out.copy_from_slice(&view[..len]);
            drop(view);
            s.unmap();
        }
        Ok(())
    }
}

fn launch_error(k: &SpirvKernel, message: String) -> VulkanError {
    VulkanError::Launch {
        kernel: k.name.clone(),
        message,
    }
}
