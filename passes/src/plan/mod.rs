//! Memory planning (DESIGN.md §3): the KernelGraph's activation arena — liveness, symbolic sizes
//! and per-shape-bucket offsets.

mod memory;

pub use memory::{plan, Alias, MemoryPlan, PlanError, Slot, ARENA_ALIGN};
