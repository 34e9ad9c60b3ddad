//! The activation arena of a KernelGraph (DESIGN.md §3): which kernel-written buffers are alive
//! when, their sizes as symbolic expressions, and — once a shape bucket binds the symbols —
//! offsets that let buffers whose lifetimes do not overlap share memory. The optimizer computes
//! the plan; a runtime places it with [`MemoryPlan::offsets`] once per bound shape.

use crate::kernel::BufferId;
use crate::{Dim, DimEnv, IrError};
use serde::{Deserialize, Serialize};

/// Arena offsets are multiples of this (a cache line; enough for any SIMD load or GPU vector
/// access).
pub const ARENA_ALIGN: usize = 64;

/// One arena buffer: alive from the kernel that writes it through the last kernel that reads it
/// (or through the last kernel when it is a graph output).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub buffer: BufferId,
    /// Index of the kernel that writes it.
    pub first: usize,
    /// Index of the last kernel that reads it (itself or through a view).
    pub last: usize,
    /// numel · element bytes, over the graph's symbols.
    pub bytes: Dim,
}

/// A computed buffer that is a view of another one (the output of a reshape that launches
/// nothing): it lives at `of`'s memory, an arena slot or an input/weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub buffer: BufferId,
    pub of: BufferId,
}

/// The memory plan of one KernelGraph: computed once per compile; [`MemoryPlan::offsets`] places
/// it for each shape bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// In buffer order.
    pub slots: Vec<Slot>,
    /// In buffer order; `of` is never itself an alias.
    pub aliases: Vec<Alias>,
}

/// `n` rounded up to [`ARENA_ALIGN`].
pub fn align_up(n: usize) -> usize {
    n.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

/// A slot placed in the arena.
struct Placed {
    offset: usize,
    end: usize,
    first: usize,
    last: usize,
}

impl MemoryPlan {
    /// Arena offsets for the shape bucket `env` and the arena's size: sizes are evaluated, then
    /// slots are placed largest first, each at the lowest `ARENA_ALIGN`-aligned offset where it
    /// overlaps no placed slot whose lifetime overlaps its own (greedy first fit). Returns an
    /// offset for every slot and for every alias of a slot, in buffer order; aliases of inputs
    /// and weights are not in the arena and not listed.
    pub fn offsets(&self, env: &DimEnv) -> Result<(Vec<(BufferId, usize)>, usize), IrError> {
        let sizes = self
            .slots
            .iter()
            .map(|s| {
                s.bytes.eval(env).map_err(|message| {
                    IrError::Binding(format!("size of buffer {}: {message}", s.buffer))
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let mut order: Vec<usize> = (0..self.slots.len()).collect();
        order.sort_by_key(|&i| {
            (
                std::cmp::Reverse(sizes[i]),
                self.slots[i].first,
                self.slots[i].buffer,
            )
        });
        let mut placed: Vec<Placed> = Vec::with_capacity(order.len());
        let mut offsets: Vec<(BufferId, usize)> = Vec::with_capacity(order.len());
        for i in order {
            let slot = &self.slots[i];
            let mut conflicts: Vec<&Placed> = placed
                .iter()
                .filter(|p| p.first <= slot.last && slot.first <= p.last)
                .collect();
            conflicts.sort_by_key(|p| p.offset);
            let mut offset = 0;
            for p in conflicts {
                if offset + sizes[i] <= p.offset {
                    break;
                }
                offset = offset.max(align_up(p.end));
            }
            placed.push(Placed {
                offset,
                end: offset + sizes[i],
                first: slot.first,
                last: slot.last,
            });
            offsets.push((slot.buffer, offset));
        }
        let arena = align_up(placed.iter().map(|p| p.end).max().unwrap_or(0));
        let views: Vec<(BufferId, usize)> = self
            .aliases
            .iter()
            .filter_map(|a| {
                offsets
                    .iter()
                    .find(|(b, _)| *b == a.of)
                    .map(|&(_, offset)| (a.buffer, offset))
            })
            .collect();
        offsets.extend(views);
        offsets.sort_by_key(|&(b, _)| b);
        Ok((offsets, arena))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_slots() -> impl Strategy<Value = Vec<Slot>> {
        prop::collection::vec((0usize..12, 0usize..6, 0i64..5000), 1..24).prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (first, len, bytes))| Slot {
                    buffer: BufferId(i as u32),
                    first,
                    last: first + len,
                    bytes: Dim::c(bytes),
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn live_buffers_never_share_bytes(slots in arb_slots()) {
            let plan = MemoryPlan { slots, aliases: vec![] };
            let (offsets, arena) = plan.offsets(&DimEnv::new()).unwrap();
            prop_assert_eq!(offsets.len(), plan.slots.len());
            prop_assert_eq!(arena % ARENA_ALIGN, 0);
            let size = |s: &Slot| s.bytes.as_const().unwrap() as usize;
            let total: usize = plan.slots.iter().map(|s| align_up(size(s))).sum();
            prop_assert!(arena <= total);
            for (a, &(ida, oa)) in plan.slots.iter().zip(&offsets) {
                prop_assert_eq!(a.buffer, ida);
                prop_assert_eq!(oa % ARENA_ALIGN, 0);
                prop_assert!(oa + size(a) <= arena);
                for (b, &(_, ob)) in plan.slots.iter().zip(&offsets) {
                    let live_together = a.buffer != b.buffer && a.first <= b.last && b.first <= a.last;
                    let disjoint = oa + size(a) <= ob || ob + size(b) <= oa;
                    prop_assert!(!live_together || disjoint, "{:?} and {:?} at {} and {}", a, b, oa, ob);
                }
            }
        }
    }
}
