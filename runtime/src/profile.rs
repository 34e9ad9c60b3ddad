//! Per-kernel times of the launches an executor ran while profiling (`tessera bench --profile`):
//! where an entry point's time goes kernel by kernel, with the bytes each kernel's operands span
//! so that a memory-bound kernel's bandwidth can be read off (perf cannot see JIT-compiled code).

use serde::Serialize;

/// One kernel of one entry point, over the launches timed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelProfile {
    pub entry: String,
    /// Its index in the entry point's KernelGraph.
    pub index: usize,
    pub scope: String,
    /// The template and its tiles, as `explain` prints them.
    pub kind: String,
    /// The body's op names joined by `+`.
    pub ops: String,
    pub launches: u64,
    pub seconds: f64,
    /// The bytes of its inputs and output, summed over the launches: what a launch reads and
    /// writes at least once.
    pub bytes: u64,
}
