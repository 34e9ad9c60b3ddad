//! [`CompiledProgram`]: the compiled steps of an LIR [`Program`] (one KernelGraph kernel), and a
//! serial launch that allocates the program's scratch itself — what tests and tools call; the
//! runtime runs the steps on its thread pool over scratch from its own arena.

use crate::{compile_with, Backend, CodegenError, CompiledKernel};
use std::sync::Arc;
use tessera_ir::lir::{Kernel, Program, Scratch};

/// The steps of a [`Program`], compiled, with its scratch buffers.
pub struct CompiledProgram {
    scratch: Vec<Scratch>,
    steps: Vec<Arc<CompiledKernel>>,
}

impl CompiledProgram {
    /// Checks `program`'s steps agree on their params and compiles each with `compile` (a
    /// runtime passes its code cache, so the same step in every layer compiles once).
    pub fn new(
        program: &Program,
        mut compile: impl FnMut(&Kernel) -> Result<Arc<CompiledKernel>, CodegenError>,
    ) -> Result<CompiledProgram, CodegenError> {
        program.check()?;
        Ok(CompiledProgram {
            scratch: program.scratch.clone(),
            steps: program
                .steps
                .iter()
                .map(&mut compile)
                .collect::<Result<_, _>>()?,
        })
    }

    /// The steps, to launch in order.
    pub fn steps(&self) -> &[Arc<CompiledKernel>] {
        &self.steps
    }

    /// Bytes of each scratch buffer for the scalar values `scalars`.
    pub fn scratch_bytes(&self, scalars: &[i64]) -> Result<Vec<usize>, CodegenError> {
        self.scratch
            .iter()
            .map(|s| s.bytes(scalars))
            .collect::<Result<_, _>>()
            .map_err(|message| CodegenError::Launch {
                kernel: self.steps[0].kernel().name.clone(),
                message,
            })
    }

    /// Runs every step's whole grid serially over `buffers` (the kernel's inputs, then its
    /// output), with the scratch buffers allocated here.
    pub fn launch(&self, buffers: &mut [&mut [u8]], scalars: &[i64]) -> Result<(), CodegenError> {
        // u64 words keep every scratch buffer aligned for any element type.
        let lens = self.scratch_bytes(scalars)?;
        let mut words: Vec<Vec<u64>> = lens.iter().map(|&n| vec![0; n.div_ceil(8)]).collect();
        let mut args: Vec<&mut [u8]> = buffers.iter_mut().map(|b| &mut **b).collect();
        for (w, len) in words.iter_mut().zip(lens) {
            // SAFETY: `w` owns at least `len` initialized bytes, borrowed exclusively here.
            args.push(unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), len) });
        }
        for step in &self.steps {
            step.launch(&mut args, scalars)?;
        }
        Ok(())
    }
}

/// Verifies, translates and JIT-compiles every step of `program` with `backend`.
pub fn compile_program(
    program: &Program,
    backend: Backend,
) -> Result<CompiledProgram, CodegenError> {
    CompiledProgram::new(program, |k| compile_with(k, backend).map(Arc::new))
}
