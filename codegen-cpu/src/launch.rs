//! [`CompiledKernel`]: JIT-compiled code and the checks that make a launch of it well-formed.

use crate::CodegenError;
use cranelift_jit::JITModule;
use std::ops::Range;
use tessera_ir::lir::Kernel;

/// The ABI of a compiled kernel: one call runs one workgroup (one group id).
pub(crate) type KernelFn = unsafe extern "C" fn(
    buffers: *const *mut u8,
    scalars: *const i64,
    group_id: *const u64,
    num_groups: *const u64,
);

/// What owns the machine code a [`CompiledKernel`]'s entry points into: one per backend.
pub(crate) enum CodeOwner {
    /// Boxed: a JIT module is hundreds of bytes, the LLVM owner two pointers.
    Cranelift(Box<JITModule>),
    #[cfg(feature = "llvm")]
    Llvm(crate::llvm::JitCode),
}

/// A kernel compiled to host code by [`crate::compile`] (either backend: only the owner of the
/// code differs).
///
/// The generated function is
/// `extern "C" fn(buffers: *const *mut u8, scalars: *const i64, group_id: *const u64,
/// num_groups: *const u64)`: `buffers[i]` is the base of buffer param `i`, `scalars[i]` the value
/// of scalar param `i` (an `f32` param passes its bits, `f32::to_bits as i64`), and `group_id`
/// and `num_groups` point at three `u64`s (x, y, z) read by `Special::GroupId`/`NumGroups`;
/// `LocalId` is 0 and `GroupSize` 1. One call runs one group.
///
/// A launch checks the buffer and scalar counts and that every buffer holds whole elements;
/// the bounds of individual loads and stores are the template's responsibility (an access out of
/// bounds is undefined behaviour, as in a GPU kernel), and so is integer division by zero
/// (it traps under Cranelift and is undefined behaviour under LLVM).
pub struct CompiledKernel {
    kernel: Kernel,
    entry: KernelFn,
    /// Owns the code `entry` points into; `None` only while dropping.
    code: Option<CodeOwner>,
}

impl CompiledKernel {
    pub(crate) fn new(kernel: Kernel, code: CodeOwner, entry: KernelFn) -> CompiledKernel {
        CompiledKernel {
            kernel,
            entry,
            code: Some(code),
        }
    }

    /// The kernel this was compiled from.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The number of groups per axis for these scalar values.
    pub fn grid(&self, scalars: &[i64]) -> Result<[u64; 3], CodegenError> {
        let mut grid = [0; 3];
        for (g, e) in grid.iter_mut().zip(&self.kernel.grid) {
            *g = e.eval(scalars).map_err(|m| self.launch_error(m))?;
        }
        Ok(grid)
    }

    /// The total number of groups (x fastest, then y, then z), the range
    /// [`launch_range`](Self::launch_range) splits.
    pub fn group_count(&self, scalars: &[i64]) -> Result<u64, CodegenError> {
        let [x, y, z] = self.grid(scalars)?;
        x.checked_mul(y)
            .and_then(|xy| xy.checked_mul(z))
            .ok_or_else(|| self.launch_error("the grid overflows u64".to_string()))
    }

    /// Runs the whole grid serially.
    pub fn launch(&self, buffers: &mut [&mut [u8]], scalars: &[i64]) -> Result<(), CodegenError> {
        let groups = self.group_count(scalars)?;
        self.launch_range(buffers, scalars, 0..groups)
    }

    /// Runs groups `groups` of the grid (linear ids, x fastest) serially, after checking the
    /// arguments against the kernel; [`run_groups`](Self::run_groups) is the unchecked form a
    /// thread pool calls from several threads.
    pub fn launch_range(
        &self,
        buffers: &mut [&mut [u8]],
        scalars: &[i64],
        groups: Range<u64>,
    ) -> Result<(), CodegenError> {
        self.check_args(buffers, scalars)?;
        let grid = self.grid(scalars)?;
        let total = self.group_count(scalars)?;
        if groups.end > total {
            return Err(
                self.launch_error(format!("groups {groups:?} are outside the grid of {total}"))
            );
        }
        let bases: Vec<*mut u8> = buffers.iter_mut().map(|b| b.as_mut_ptr()).collect();
        // SAFETY: the counts were checked above, `grid` is this kernel's grid for `scalars`,
        // `groups` lies inside it, and each base is a live, exclusively borrowed slice.
        unsafe { self.run_groups(&bases, scalars, grid, groups) }
        Ok(())
    }

    /// Runs groups `groups` (linear ids, x fastest) of a launch whose buffers start at `bases`,
    /// without any check: the form a thread pool calls concurrently, each thread with a disjoint
    /// range of the same launch, so that the checks and the grid are computed once per launch.
    ///
    /// # Safety
    ///
    /// - `bases.len()` and `scalars.len()` equal the kernel's buffer and scalar param counts;
    /// - `grid` is [`grid`](Self::grid)`(scalars)` and `groups.end` is at most its product;
    /// - every base points at memory valid for each access these groups make (the template's
    ///   accesses are in bounds for buffers of the sizes the kernel's shapes give under
    ///   `scalars`), and the memory a kernel param only reads is not written meanwhile;
    /// - calls running at the same time run disjoint group ranges, nothing else touches the
    ///   bytes they write (the CPU templates write disjoint output elements per group), and no
    ///   two params whose memory overlaps are written.
    pub unsafe fn run_groups(
        &self,
        bases: &[*mut u8],
        scalars: &[i64],
        grid: [u64; 3],
        groups: Range<u64>,
    ) {
        for g in groups {
            let id = [g % grid[0], g / grid[0] % grid[1], g / (grid[0] * grid[1])];
            // SAFETY: `entry` has the `KernelFn` ABI; the tables have the lengths the verified
            // kernel reads and the accesses are valid (the caller's contract).
            unsafe { (self.entry)(bases.as_ptr(), scalars.as_ptr(), id.as_ptr(), grid.as_ptr()) }
        }
    }

    fn check_args(&self, buffers: &[&mut [u8]], scalars: &[i64]) -> Result<(), CodegenError> {
        let k = &self.kernel;
        if buffers.len() != k.buffers.len() || scalars.len() != k.scalars.len() {
            return Err(self.launch_error(format!(
                "{} buffers and {} scalars passed, the kernel takes {} and {}",
                buffers.len(),
                scalars.len(),
                k.buffers.len(),
                k.scalars.len()
            )));
        }
        for (b, p) in buffers.iter().zip(&k.buffers) {
            let size = p.elem.bytes() as usize;
            if !b.len().is_multiple_of(size) {
                return Err(self.launch_error(format!(
                    "buffer {} has {} bytes, not a multiple of its {}-byte elements",
                    p.name,
                    b.len(),
                    size
                )));
            }
        }
        Ok(())
    }

    fn launch_error(&self, message: String) -> CodegenError {
        CodegenError::Launch {
            kernel: self.kernel.name.clone(),
            message,
        }
    }
}

// SAFETY: once compiled, the code is immutable and nothing touches its owner until `Drop`, which
// needs `&mut self`: the Cranelift module after `finalize_definitions`, or the LLVM execution
// engine and context, which are not tied to the thread that made them (an LLVM context may be
// used from any one thread at a time, and only `Drop` uses it; the engine's reference-counted
// handle has no other clone once compiling returns, so no count is shared between threads). `kernel` is plain data and
// `entry` a function pointer. The generated code keeps no state of its own (its math functions
// are pure Rust functions or libm's), so calls from several threads share nothing but the
// buffers their caller passes.
unsafe impl Send for CompiledKernel {}
// SAFETY: as for `Send`: every `&self` method only reads.
unsafe impl Sync for CompiledKernel {}

impl Drop for CompiledKernel {
    fn drop(&mut self) {
        match self.code.take() {
            // SAFETY: `entry` is the only pointer into the module's code and dies with `self`.
            Some(CodeOwner::Cranelift(module)) => unsafe { (*module).free_memory() },
            // Dropping the engine frees the code.
            #[cfg(feature = "llvm")]
            Some(CodeOwner::Llvm(code)) => drop(code),
            None => {}
        }
    }
}
