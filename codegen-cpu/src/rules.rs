//! What the CPU translators (Cranelift and, with the `llvm` feature, LLVM) agree on, so that a
//! kernel means the same on both: signedness, which values have a memory layout, and what the
//! CPU thread hierarchy makes of `Special` values and barriers.

use tessera_ir::lir::{ScalarType, Special, Type};

/// Whether integer ops on `s` are signed (division, shifts right, comparisons, widening).
pub(crate) fn is_signed(s: ScalarType) -> bool {
    matches!(s, ScalarType::I32 | ScalarType::I64 | ScalarType::I8)
}

/// Why `t` cannot be loaded or stored, if it cannot: vectors of `bool` have no memory layout
/// (their lanes are masks, not bytes).
pub(crate) fn memory_type_error(t: Type) -> Option<String> {
    (t.scalar == ScalarType::Bool && t.lanes > 1).then(|| format!("loads and stores of {t}"))
}

/// Why a barrier cannot be translated.
pub(crate) const BARRIER_UNSUPPORTED: &str =
    "barrier (a CPU workgroup is one thread with no shared memory)";

/// Where a thread-hierarchy value comes from on the CPU, where a workgroup is one thread.
pub(crate) enum SpecialSource {
    /// `group_id[axis]` (`num_groups: false`) or `num_groups[axis]` of the ABI's tables.
    Table { num_groups: bool, axis: usize },
    /// A constant: `LocalId` is 0 and `GroupSize` 1.
    Const(i64),
}

/// Where `s` comes from, or why it has no CPU meaning.
pub(crate) fn special_source(s: Special) -> Result<SpecialSource, String> {
    match s {
        Special::GroupId(axis) => Ok(SpecialSource::Table {
            num_groups: false,
            axis: axis as usize,
        }),
        Special::NumGroups(axis) => Ok(SpecialSource::Table {
            num_groups: true,
            axis: axis as usize,
        }),
        Special::LocalId(_) => Ok(SpecialSource::Const(0)),
        Special::GroupSize(_) => Ok(SpecialSource::Const(1)),
        Special::SubgroupId | Special::SubgroupLane | Special::SubgroupSize => {
            Err(format!("{s:?} (no subgroups)"))
        }
    }
}
