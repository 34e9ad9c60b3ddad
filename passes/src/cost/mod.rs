//! The cost model the optimizer extracts with (DESIGN.md §4): a roofline per target — bytes moved,
//! flops, launches, occupancy — in which the kernel template decides re-reads, padding,
//! parallelism and efficiency, so the cheapest template depends on the shape bucket; measured
//! times from the tuning database override it. Also the tile alternatives per template.

mod candidates;
mod measured;
mod roofline;
mod target;
mod work;

#[cfg(test)]
mod tests;

pub use candidates::{attention_candidates, matmul_candidates, quant_matmul_candidates};
pub use measured::{tuning_key, Measured};
pub use roofline::{estimate, Estimate, Roofline};
pub use target::{PeakFlops, TargetClass, TargetSpec, UnknownTarget, TARGET_NAMES};

use tessera_ir::kernel::{BodyOp, KernelKind};
use tessera_ir::{DimEnv, TensorType};

/// Seconds one kernel takes for one shape bucket: what extraction minimizes. Infinite means the
/// kernel cannot run there (it is never chosen).
pub trait CostModel {
    /// The cost of `kernel` computing `body` over `inputs` into `output` with the symbols bound
    /// by `env`.
    fn kernel_cost(
        &self,
        kernel: &KernelKind,
        body: &[BodyOp],
        inputs: &[TensorType],
        output: &TensorType,
        env: &DimEnv,
    ) -> f64;
}
