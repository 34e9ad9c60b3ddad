//! The CPU executor (`--target cpu`): every entry point's kernels run as native code, JIT-compiled
//! at load from the LIR the compile driver stored in the artifact (`EntryPoint::cpu_code`).
//!
//! Per run nothing is copied but what the [`Executor`] trait forces: weights are read in place
//! from the artifact's mapping, f32/i32 inputs in place from their tensors, activations live in
//! one arena per entry point placed by the KernelGraph's memory plan (reused across runs, grown
//! when a binding needs more), and only the outputs are copied out. Each launch's groups are split
//! across a persistent thread pool.

mod pool;

use crate::bindings::{input_bytes, shapes, weight_index, CodeCache, EntryBuffers, Home, Profile};
use crate::executor::Executor;
use crate::{Artifact, KernelProfile, RuntimeError};
use pool::Pool;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;
use tessera_codegen_cpu::{Backend, CompiledKernel, CompiledProgram};
use tessera_ir::artifact::WeightSlot;
use tessera_ir::interp::Tensor;
use tessera_ir::memory_plan::ARENA_ALIGN;

/// One entry point ready to run.
struct CpuEntry {
    buffers: EntryBuffers,
    /// The code of each of `buffers.launched` (steps sharing code with every launch of the same
    /// LIR: each layer's copy of a rolled kernel).
    code: Vec<CompiledProgram>,
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
    /// The kernel times so far, while profiling.
    profile: Option<Profile>,
}

impl CpuExecutor {
    /// Validates the module, checks its weights are float or block-quantized, JIT-compiles every
    /// entry point's CPU code with `backend` and starts `threads` threads (the caller included;
    /// at least one); an entry point without CPU code, a weight of another dtype or a kernel that
    /// does not compile is an error naming it.
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
        let mut compiled = CodeCache::<CompiledKernel>::default();
        let weights = weight_index(module, "the CPU executor")?;
        let mut entries = HashMap::new();
        for ep in &module.entries {
            let buffers = EntryBuffers::new(ep, &ep.cpu_code, &weights, "cpu", "the CPU executor")?;
            let code = buffers
                .launched
                .iter()
                .map(|l| {
                    CompiledProgram::new(&ep.cpu_code[l.index], |step| {
                        compiled.get(step, |s| tessera_codegen_cpu::compile_with(s, backend))
                    })
                    .map_err(|e| buffers.launch_error(&ep.name, l, e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            entries.insert(
                ep.name.clone(),
                CpuEntry {
                    buffers,
                    code,
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
        let ep = self.entries.get_mut(entry).ok_or_else(|| {
            RuntimeError::Unsupported(format!("the artifact has no entry point `{entry}`"))
        })?;
        let env = ep.buffers.bind(&shapes(inputs))?;
        let placement = ep.buffers.placement(&env);
        let lines = placement.bytes / ARENA_ALIGN;
        if ep.arena.len() < lines {
            ep.arena = vec![Line([0; ARENA_ALIGN]); lines];
        }
        let arena = ep.arena.as_mut_ptr().cast::<u8>();
        let buffers = &ep.buffers;
        // Inputs not stored as their raw bytes (or on a big-endian host) are encoded here.
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        let mut bases: Vec<*mut u8> = Vec::with_capacity(buffers.homes.len());
        for (i, home) in buffers.homes.iter().enumerate() {
            let base = match home {
                Home::Input(name) => {
                    let t = buffers.input(entry, i, name, inputs, &env)?;
                    // An encoded copy moves into `encoded` with its heap bytes where they are.
                    let mut own = Vec::new();
                    let base = input_bytes(t, &mut own)?.as_ptr().cast_mut();
                    encoded.extend(own);
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
        for (i, home) in buffers.homes.iter().enumerate() {
            if let Home::View(root) = home {
                bases[i] = bases[*root];
            }
        }
        for (launch, code) in buffers.launched.iter().zip(&ep.code) {
            let fail = |msg: String| buffers.launch_error(entry, launch, msg);
            let steps = code.steps();
            let scalars = buffers.scalars(entry, launch, &steps[0].kernel().scalars, &env)?;
            let mut launch_bases: Vec<*mut u8> = launch.args.iter().map(|&b| bases[b]).collect();
            let scratch = code
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
            for step in steps {
                let grid = step.grid(&scalars).map_err(|e| fail(e.to_string()))?;
                let groups = step
                    .group_count(&scalars)
                    .map_err(|e| fail(e.to_string()))?;
                let args = Args {
                    code: step,
                    bases: launch_bases.clone(),
                    scalars: scalars.clone(),
                    grid,
                };
                self.pool.run(groups, &|range| args.run(range));
            }
            if let (Some(profile), Some(started)) = (self.profile.as_mut(), started) {
                let seconds = started.elapsed().as_secs_f64();
                profile.record(entry, buffers, launch.index, &env, seconds)?;
            }
        }
        // SAFETY: each output's base points at `len` bytes (an input checked above or the arena
        // as placed), no kernel is running, and the slices die before the next run.
        buffers.outputs(
            entry,
            &env,
            |_| true,
            |i, len| Ok(unsafe { std::slice::from_raw_parts(bases[i], len) }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_artifact::write_add_artifact;
    use tessera_ir::lir;

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

    #[test]
    fn the_arena_reused_across_bindings_gives_what_a_fresh_executor_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("add.tsr");
        write_add_artifact(&path, "cpu");
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
