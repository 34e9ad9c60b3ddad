//! Executors run one entry point of the loaded module. The reference executor interprets the
//! entry's KernelGraph when the artifact carries one, else its Graph; compiled targets (CPU,
//! Vulkan, CUDA) plug in here behind the same trait.

use crate::{Artifact, KernelProfile, RuntimeError};
use std::collections::{BTreeMap, HashMap};
use tessera_ir::interp::{self, Tensor};
use tessera_ir::kernel::run_kernels;
use tessera_ir::Module;

/// Runs entry points of a module on host tensors.
pub trait Executor {
    /// Runs `entry` with `inputs` (token ids, positions, state) and returns its named outputs.
    fn run(
        &mut self,
        entry: &str,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, RuntimeError>;

    /// Starts a new sequence of `batch` rows in state (the KV cache) the executor keeps on its
    /// device, if it can; returns whether it does. From then on `run` neither takes the module's
    /// state tensors nor returns them: each run reads the state the previous one left (no copy
    /// through the host per step).
    fn reset_state(&mut self, _batch: usize) -> Result<bool, RuntimeError> {
        Ok(false)
    }

    /// Starts (`true`) or stops timing every kernel launch; returns whether this executor can.
    fn set_profiling(&mut self, _on: bool) -> bool {
        false
    }

    /// The launches timed since profiling started, one row per kernel; starts over.
    fn take_profile(&mut self) -> Vec<KernelProfile> {
        Vec::new()
    }
}

/// Executes entry points with the reference interpreter (`--target reference`): the oracle, not
/// fast. Per entry point, the optimized KernelGraph runs (each kernel's body interpreted) when
/// present, else the Graph (`--no-opt` artifacts).
pub struct ReferenceExecutor {
    module: Module,
    weights: HashMap<String, Tensor>,
}

impl ReferenceExecutor {
    /// Decodes every weight of the artifact (derived weights included) into host tensors once.
    pub fn new(artifact: &Artifact) -> Result<ReferenceExecutor, RuntimeError> {
        let manifest = artifact.manifest();
        let mut weights = HashMap::new();
        for (spec, slot) in manifest.module.weights.iter().zip(&manifest.weight_slots) {
            let bytes = artifact.weight_bytes(slot);
            let t = Tensor::from_le_bytes(spec.dtype, spec.shape.clone(), bytes, &spec.name)?;
            weights.insert(spec.name.clone(), t);
        }
        Ok(ReferenceExecutor {
            module: manifest.module.clone(),
            weights,
        })
    }
}

impl Executor for ReferenceExecutor {
    fn run(
        &mut self,
        entry: &str,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
        let ep = self.module.entry(entry).ok_or_else(|| {
            RuntimeError::Unsupported(format!("the artifact has no entry point `{entry}`"))
        })?;
        Ok(match &ep.kernels {
            Some(kg) => run_kernels(kg, &self.weights, inputs)?,
            None => interp::run(&ep.graph, &self.weights, inputs)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_ir::artifact::{self, Manifest};
    use tessera_ir::kernel::{
        BodyArg, BodyOp, Buffer, BufferId, BufferSource, Kernel, KernelGraph, KernelKind,
    };
    use tessera_ir::{
        BinaryOp, DType, Dim, EntryPoint, Graph, ModelInfo, Op, TensorType, WeightSpec,
    };

    /// `y = x + w` as a Graph.
    fn add_graph() -> Graph {
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, vec![Dim::sym("n")]);
        let w = g.weight("w", DType::F32, &[1]);
        let y = g.add(Op::Binary(BinaryOp::Add), &[x, w]).unwrap();
        g.output("y", y);
        g
    }

    /// One elementwise kernel computing `y = x ∘ w`. Validation checks types, not meaning, so a
    /// KernelGraph that subtracts where its Graph adds shows which of the two ran.
    fn one_kernel(op: BinaryOp) -> KernelGraph {
        let buffer = |dims: Vec<Dim>, source| Buffer {
            ty: TensorType::new(DType::F32, dims),
            source,
        };
        KernelGraph {
            buffers: vec![
                buffer(vec![Dim::sym("n")], BufferSource::Input("x".into())),
                buffer(vec![Dim::c(1)], BufferSource::Weight("w".into())),
                buffer(vec![Dim::sym("n")], BufferSource::Computed),
            ],
            kernels: vec![Kernel {
                scope: "main".into(),
                kind: KernelKind::Elementwise,
                body: vec![BodyOp {
                    op: Op::Binary(op),
                    args: vec![BodyArg::Input(0), BodyArg::Input(1)],
                }],
                inputs: vec![BufferId(0), BufferId(1)],
                output: BufferId(2),
                estimate_seconds: 0.0,
            }],
            outputs: vec![("y".into(), BufferId(2))],
            derived_weights: vec![],
            plan: Default::default(),
        }
    }

    #[test]
    fn runs_the_kernel_graph_when_present_else_the_graph() {
        let entry = |name: &str, kernels| EntryPoint {
            name: name.into(),
            graph: add_graph(),
            kernels,
            cpu_code: vec![],
            gpu_code: vec![],
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
            entries: vec![
                entry("graph", None),
                entry("kernels", Some(one_kernel(BinaryOp::Sub))),
            ],
        };
        let w = 10.0f32.to_le_bytes();
        let manifest = Manifest {
            producer: "test".into(),
            target: "reference".into(),
            source: "unit".into(),
            config: serde_json::Value::Null,
            weight_slots: artifact::layout_weights([("w", w.len() as u64)]),
            module,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.tsr");
        let mut file = std::fs::File::create(&path).unwrap();
        let mut weights = [&w[..]].into_iter();
        artifact::write(&mut file, &manifest, None, &mut weights, &mut |_| {}).unwrap();
        let mut exec = ReferenceExecutor::new(&Artifact::open(&path).unwrap()).unwrap();
        let x: BTreeMap<String, Tensor> =
            [("x".to_string(), Tensor::f32(vec![2], vec![1.0, 2.0]))].into();
        let y = |exec: &mut ReferenceExecutor, entry: &str| {
            exec.run(entry, &x).unwrap()["y"].as_f32().unwrap().to_vec()
        };
        assert_eq!(y(&mut exec, "graph"), [11.0, 12.0]);
        assert_eq!(y(&mut exec, "kernels"), [-9.0, -8.0]);
        assert!(exec.run("decode", &x).is_err());
    }
}
