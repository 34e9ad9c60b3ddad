//! Measured kernel times overriding estimates: the interface through which the tuning database
//! (`tessera autotune`, DESIGN.md §4) feeds the optimizer.

use super::CostModel;
use std::collections::HashMap;
use tessera_ir::kernel::{BodyOp, KernelKind};
use tessera_ir::{eval_shape, DimEnv, TensorType};

/// A cost model whose answers come from a table of measured seconds where it has an entry for
/// the kernel (see [`tuning_key`]) and from `inner` elsewhere. One table belongs to one target.
#[derive(Clone, Debug)]
pub struct Measured<C> {
    inner: C,
    table: HashMap<String, f64>,
}

impl<C> Measured<C> {
    /// Wraps `inner` with measured seconds keyed by [`tuning_key`].
    pub fn new(inner: C, table: HashMap<String, f64>) -> Measured<C> {
        Measured { inner, table }
    }

    /// Records a measurement; returns the one it replaces.
    pub fn insert(&mut self, key: String, seconds: f64) -> Option<f64> {
        self.table.insert(key, seconds)
    }

    /// The model used where nothing was measured.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The measurements.
    pub fn table(&self) -> &HashMap<String, f64> {
        &self.table
    }
}

impl<C: CostModel> CostModel for Measured<C> {
    fn kernel_cost(
        &self,
        kernel: &KernelKind,
        body: &[BodyOp],
        inputs: &[TensorType],
        output: &TensorType,
        env: &DimEnv,
    ) -> f64 {
        tuning_key(kernel, body, inputs, output, env)
            .ok()
            .and_then(|key| self.table.get(&key).copied())
            .unwrap_or_else(|| self.inner.kernel_cost(kernel, body, inputs, output, env))
    }
}

/// The stable key of one kernel at one concrete shape: the template with its tiles, the body in
/// its serialized (artifact) form, and the input and output types with every dim evaluated, e.g.
/// `gemv{tile_n 4, split_k 1}|[{"op":{"mat_mul":…},"args":…}]|f32[1, 2048],f16[2048, 2048]->f32[1, 2048]`.
/// Errors name an unbound symbol.
pub fn tuning_key(
    kernel: &KernelKind,
    body: &[BodyOp],
    inputs: &[TensorType],
    output: &TensorType,
    env: &DimEnv,
) -> Result<String, String> {
    let concrete = |t: &TensorType| -> Result<String, String> {
        Ok(format!("{}{:?}", t.dtype, eval_shape(&t.shape, env)?))
    };
    let ins = inputs.iter().map(concrete).collect::<Result<Vec<_>, _>>()?;
    let body = serde_json::to_string(body).map_err(|e| e.to_string())?;
    Ok(format!(
        "{kernel}|{body}|{}->{}",
        ins.join(","),
        concrete(output)?
    ))
}
