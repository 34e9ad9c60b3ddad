//! Executors run one entry point of the loaded module. The reference executor interprets the Graph;
//! compiled targets (CPU, Vulkan, CUDA) plug in here behind the same trait.

use crate::{Artifact, RuntimeError};
use std::collections::{BTreeMap, HashMap};
use tessera_ir::interp::{self, Tensor};
use tessera_ir::Module;

/// Runs entry points of a module on host tensors.
pub trait Executor {
    /// Runs `entry` with `inputs` (token ids, positions, state) and returns its named outputs.
    fn run(
        &mut self,
        entry: &str,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, RuntimeError>;
}

/// Executes the Graph with the reference interpreter (`--target reference`): the oracle, not fast.
pub struct ReferenceExecutor {
    module: Module,
    weights: HashMap<String, Tensor>,
}

impl ReferenceExecutor {
    /// Decodes every weight of the artifact into host tensors once.
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
        Ok(interp::run(&ep.graph, &self.weights, inputs)?)
    }
}
