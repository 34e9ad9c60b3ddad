//! The CPU executor (`--target cpu`): every entry point's kernels run as native code, JIT-compiled
//! at load from the LIR the compile driver stored in the artifact (`EntryPoint::cpu_code`).

use crate::executor::Executor;
use crate::{Artifact, RuntimeError};
use std::collections::{BTreeMap, HashMap};
use tessera_codegen_cpu::CompiledKernel;
use tessera_ir::interp::Tensor;
use tessera_ir::kernel::{BufferSource, KernelGraph};
use tessera_ir::{eval_shape, DType, DimEnv, Graph};

/// Where a kernel argument's bytes live during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// The run's buffer of this index (an input's bytes or a computed buffer).
    Buffer(usize),
    /// The executor's weight of this index.
    Weight(usize),
}

/// One entry point ready to run: its KernelGraph, the compiled code of each kernel and each
/// kernel's arguments (inputs in order, then the output: the LIR ABI of `lower_cpu`).
struct CpuEntry {
    graph: Graph,
    kernels: KernelGraph,
    compiled: Vec<CompiledKernel>,
    args: Vec<Vec<Slot>>,
}

/// Executes entry points as JIT-compiled CPU kernels, one launch per kernel in order. Computed
/// buffers are allocated per run, zeroed, at their evaluated size (the memory plan's arena comes
/// later); weights are copied once at load into owned byte buffers (the generated code's loads
/// do not assume alignment).
pub struct CpuExecutor {
    entries: HashMap<String, CpuEntry>,
    weights: Vec<Vec<u8>>,
}

impl CpuExecutor {
    /// Validates the module, copies its f32 weights and JIT-compiles every entry point's CPU code;
    /// an entry point without it, a weight of another dtype or a kernel that does not compile is
    /// an error naming it.
    pub fn new(artifact: &Artifact) -> Result<CpuExecutor, RuntimeError> {
        let manifest = artifact.manifest();
        let module = &manifest.module;
        module.validate()?;
        let mut weights = Vec::with_capacity(module.weights.len());
        let mut weight_index = HashMap::new();
        for (spec, slot) in module.weights.iter().zip(&manifest.weight_slots) {
            if spec.dtype != DType::F32 {
                return Err(RuntimeError::Unsupported(format!(
                    "weight `{}` is {}: the CPU executor reads f32 weights only",
                    spec.name, spec.dtype
                )));
            }
            weight_index.insert(spec.name.as_str(), weights.len());
            weights.push(artifact.weight_bytes(slot).to_vec());
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
            let mut compiled = Vec::with_capacity(kg.kernels.len());
            let mut args = Vec::with_capacity(kg.kernels.len());
            for (k, (kernel, lir)) in kg.kernels.iter().zip(&ep.cpu_code).enumerate() {
                let name = format!("kernel {k} `{}` ({})", kernel.scope, kernel.kind);
                let code = tessera_codegen_cpu::compile(lir)
                    .map_err(|e| RuntimeError::Kernel(at(format!("{name}: {e}"))))?;
                compiled.push(code);
                if kernel.inputs.contains(&kernel.output) {
                    return Err(RuntimeError::Kernel(at(format!(
                        "{name} reads the buffer it writes"
                    ))));
                }
                let slots = kernel
                    .inputs
                    .iter()
                    .chain([&kernel.output])
                    .map(|&b| match &kg.buffer(b).source {
                        BufferSource::Weight(w) => weight_index
                            .get(w.as_str())
                            .map(|&i| Slot::Weight(i))
                            .ok_or_else(|| {
                                RuntimeError::Kernel(at(format!("{name}: no weight `{w}`")))
                            }),
                        _ => Ok(Slot::Buffer(b.0 as usize)),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                args.push(slots);
            }
            entries.insert(
                ep.name.clone(),
                CpuEntry {
                    graph: ep.graph.clone(),
                    kernels: kg.clone(),
                    compiled,
                    args,
                },
            );
        }
        Ok(CpuExecutor { entries, weights })
    }
}

impl Executor for CpuExecutor {
    fn run(
        &mut self,
        entry: &str,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
        let ep = self.entries.get(entry).ok_or_else(|| {
            RuntimeError::Unsupported(format!("the artifact has no entry point `{entry}`"))
        })?;
        let kg = &ep.kernels;
        let shapes = inputs
            .iter()
            .map(|(name, t)| (name.clone(), t.shape.clone()))
            .collect();
        // The KernelGraph's input buffers have the Graph's input types (`Module::validate`).
        let env = ep.graph.bind_dims(&shapes)?;
        let mut buffers = kg
            .buffers
            .iter()
            .map(|b| match &b.source {
                BufferSource::Input(name) => {
                    let t = inputs.get(name).ok_or_else(|| {
                        RuntimeError::Request(format!("input `{name}` was not given"))
                    })?;
                    if t.dtype != b.ty.dtype {
                        return Err(RuntimeError::Request(format!(
                            "input `{name}` is {} but the entry point `{entry}` takes {}",
                            t.dtype, b.ty.dtype
                        )));
                    }
                    Ok(t.to_le_bytes()?)
                }
                BufferSource::Computed => Ok(vec![0; buffer_bytes(b.ty.dtype, &b.ty.shape, &env)?]),
                BufferSource::Weight(_) => Ok(Vec::new()),
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        for (k, (code, slots)) in ep.compiled.iter().zip(&ep.args).enumerate() {
            let kernel = &kg.kernels[k];
            let fail = |msg: String| {
                RuntimeError::Kernel(format!(
                    "entry point `{entry}`: kernel {k} `{}` ({}): {msg}",
                    kernel.scope, kernel.kind
                ))
            };
            let scalars = code
                .kernel()
                .scalars
                .iter()
                .map(|s| {
                    env.get(&s.name)
                        .map(|&v| v as i64)
                        .ok_or_else(|| fail(format!("symbol `{}` is not bound", s.name)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut copies = Vec::new();
            let mut args = arguments(slots, &mut buffers, &mut self.weights, &mut copies);
            code.launch(&mut args, &scalars)
                .map_err(|e| fail(e.to_string()))?;
        }
        kg.outputs
            .iter()
            .map(|(name, b)| {
                let buffer = kg.buffer(*b);
                let bytes = &buffers[b.0 as usize];
                let shape = eval_shape(&buffer.ty.shape, &env).map_err(|m| {
                    RuntimeError::Request(format!("output `{name}` of `{entry}`: {m}"))
                })?;
                Ok((
                    name.clone(),
                    Tensor::from_le_bytes(buffer.ty.dtype, shape, bytes, name)?,
                ))
            })
            .collect()
    }
}

/// The bytes of a computed buffer of `dtype` and symbolic `shape` under `env`.
fn buffer_bytes(
    dtype: DType,
    shape: &tessera_ir::Shape,
    env: &DimEnv,
) -> Result<usize, RuntimeError> {
    let shape = eval_shape(shape, env).map_err(RuntimeError::Request)?;
    dtype.storage_bytes(&shape).map_err(RuntimeError::Request)
}

/// The launch arguments for `slots`, borrowed from the run's `buffers` and the `weights`. A
/// buffer passed twice (`x * x`) is borrowed once; its later uses read copies kept in `copies`.
fn arguments<'a>(
    slots: &[Slot],
    buffers: &'a mut [Vec<u8>],
    weights: &'a mut [Vec<u8>],
    copies: &'a mut Vec<Vec<u8>>,
) -> Vec<&'a mut [u8]> {
    let repeated: Vec<bool> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| slots[..i].contains(s))
        .collect();
    for (s, _) in slots.iter().zip(&repeated).filter(|(_, &r)| r) {
        copies.push(match *s {
            Slot::Buffer(i) => buffers[i].clone(),
            Slot::Weight(i) => weights[i].clone(),
        });
    }
    let mut buffers: Vec<Option<&mut [u8]>> =
        buffers.iter_mut().map(|v| Some(v.as_mut_slice())).collect();
    let mut weights: Vec<Option<&mut [u8]>> =
        weights.iter_mut().map(|v| Some(v.as_mut_slice())).collect();
    let mut copies = copies.iter_mut().map(Vec::as_mut_slice);
    slots
        .iter()
        .zip(repeated)
        .map(|(s, repeated)| {
            let first = match *s {
                Slot::Buffer(i) => buffers[i].take(),
                Slot::Weight(i) => weights[i].take(),
            };
            match (repeated, first) {
                (false, Some(slice)) => slice,
                _ => copies.next().expect("one copy per repeated slot"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_passed_twice_is_borrowed_once_and_copied_once() {
        let mut buffers = vec![vec![1u8, 2], vec![0u8; 2]];
        let mut weights = vec![vec![7u8]];
        let mut copies = Vec::new();
        let slots = [
            Slot::Buffer(0),
            Slot::Weight(0),
            Slot::Buffer(0),
            Slot::Buffer(1),
        ];
        let args = arguments(&slots, &mut buffers, &mut weights, &mut copies);
        let args: Vec<Vec<u8>> = args.into_iter().map(|a| a.to_vec()).collect();
        assert_eq!(args, [vec![1, 2], vec![7], vec![1, 2], vec![0, 0]]);
        assert_eq!(copies.len(), 1);
    }
}
