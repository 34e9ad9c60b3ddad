//! Memory planning (DESIGN.md §3): the KernelGraph's activation arena — liveness, symbolic sizes
//! and per-shape-bucket offsets.

mod memory;

pub use memory::{plan, PlanError};
pub use tessera_ir::memory_plan::{Alias, MemoryPlan, Slot, ARENA_ALIGN};
