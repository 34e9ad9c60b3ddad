//! [`SpirvKernel`]: compiled SPIR-V and the launch interface that goes with it — the binding
//! layout, the encoding of scalar params and the checks that keep the `i64` → `i32` narrowing
//! sound.

use crate::CodegenError;
use tessera_ir::lir::{ScalarParam, ScalarType, SizeExpr};

/// The largest element count a buffer may have: indices are `i32` on the GPU.
pub const MAX_ELEMENTS: u64 = i32::MAX as u64;

/// One buffer param's storage-buffer binding (descriptor set 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferBinding {
    pub name: String,
    pub binding: u32,
    pub elem: ScalarType,
    /// Declared `NonWritable` (the param's access is `Read`).
    pub read_only: bool,
}

/// A kernel compiled by [`crate::compile`]: SPIR-V words with one compute entry point, and what
/// a launch needs to bind and size it.
///
/// Layout: buffer param `i` is the storage buffer at set 0, binding `i` (`buffers[i]`); when the
/// kernel has scalar params they follow in one read-only storage buffer at binding
/// `buffers.len()`, one 32-bit word per param ([`scalar_words`](Self::scalar_words)). Buffers
/// whose element type has no 32-bit storage form (`u8`, `i8`, `f16`, `bf16`, `bool`) are read
/// as words, so their size is rounded up to a multiple of 4 bytes when bound.
#[derive(Clone, Debug)]
pub struct SpirvKernel {
    /// The LIR kernel's name, for errors.
    pub name: String,
    pub words: Vec<u32>,
    pub entry_point: String,
    pub workgroup_size: [u32; 3],
    pub buffers: Vec<BufferBinding>,
    pub scalars: Vec<ScalarParam>,
    /// Workgroups per axis, from the scalar values.
    pub grid: [SizeExpr; 3],
}

impl SpirvKernel {
    /// The binding of the scalar params' buffer, when the kernel has scalar params.
    pub fn scalars_binding(&self) -> Option<u32> {
        (!self.scalars.is_empty()).then_some(self.buffers.len() as u32)
    }

    /// The number of workgroups per axis for these scalar values.
    pub fn grid(&self, scalars: &[i64]) -> Result<[u64; 3], CodegenError> {
        let mut grid = [0; 3];
        for (g, e) in grid.iter_mut().zip(&self.grid) {
            *g = e.eval(scalars).map_err(|m| self.launch_error(m))?;
        }
        Ok(grid)
    }

    /// The scalar params' buffer contents: one word per param, in the CPU backend's `i64`
    /// convention (an `f32` param passes its bits, `f32::to_bits as i64`). Integer values must
    /// fit in 32 bits (`i64` params are narrowed to `i32`).
    pub fn scalar_words(&self, values: &[i64]) -> Result<Vec<u32>, CodegenError> {
        if values.len() != self.scalars.len() {
            return Err(self.launch_error(format!(
                "{} scalars passed, the kernel takes {}",
                values.len(),
                self.scalars.len()
            )));
        }
        self.scalars
            .iter()
            .zip(values)
            .map(|(p, &v)| {
                let fits = match p.ty {
                    ScalarType::I64 | ScalarType::I32 => i32::try_from(v).is_ok(),
                    ScalarType::U32 => u32::try_from(v).is_ok(),
                    _ => true,
                };
                if fits {
                    Ok(v as u32)
                } else {
                    Err(self.launch_error(format!(
                        "scalar {} = {v} does not fit in 32 bits ({} is narrowed to 32 bits on Vulkan)",
                        p.name, p.ty
                    )))
                }
            })
            .collect()
    }

    /// Checks buffer sizes (in bytes) against the kernel: one per buffer param, whole elements,
    /// at most [`MAX_ELEMENTS`] elements each.
    pub fn check_buffers(&self, sizes: &[usize]) -> Result<(), CodegenError> {
        if sizes.len() != self.buffers.len() {
            return Err(self.launch_error(format!(
                "{} buffers passed, the kernel takes {}",
                sizes.len(),
                self.buffers.len()
            )));
        }
        for (&size, b) in sizes.iter().zip(&self.buffers) {
            let elem = b.elem.bytes() as usize;
            if !size.is_multiple_of(elem) {
                return Err(self.launch_error(format!(
                    "buffer {} has {size} bytes, not a multiple of its {elem}-byte elements",
                    b.name
                )));
            }
            if (size / elem) as u64 > MAX_ELEMENTS {
                return Err(self.launch_error(format!(
                    "buffer {} has {} elements; Vulkan kernels index with i32 (at most {MAX_ELEMENTS})",
                    b.name,
                    size / elem
                )));
            }
        }
        Ok(())
    }

    fn launch_error(&self, message: String) -> CodegenError {
        CodegenError::Launch {
            kernel: self.name.clone(),
            message,
        }
    }
}
