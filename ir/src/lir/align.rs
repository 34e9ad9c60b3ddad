//! Known alignment of integer values: the largest power of two (up to [`MAX_ALIGN`]) each value
//! is proven to be a multiple of. A backend turns a vector load or store whose index is a
//! multiple of its lanes into one wide memory access (a 16-byte `LDG.128`, a `vec4` element)
//! instead of one access per lane; templates make that provable by building indices from
//! constants, products and loop counters with aligned starts and steps.

use super::{BinaryOp, Inst, Kernel, Literal, Special, Stmt, Value};

/// The largest alignment tracked; no access is wider.
pub const MAX_ALIGN: u32 = 64;

/// For each value of `k` (indexed by [`Value`]), the largest power of two up to [`MAX_ALIGN`]
/// it is a multiple of; 1 for values not proven to be (and for non-integers).
pub fn known_alignment(k: &Kernel) -> Vec<u32> {
    let mut facts = Facts {
        align: vec![1; k.values.len()],
        constants: vec![None; k.values.len()],
    };
    facts.visit(k, &k.body);
    facts.align
}

/// What the walk knows of each value so far: its alignment and, for an integer constant, its
/// value (a shift by a constant scales alignment).
struct Facts {
    align: Vec<u32>,
    constants: Vec<Option<i64>>,
}

impl Facts {
    fn visit(&mut self, k: &Kernel, body: &[Stmt]) {
        for stmt in body {
            match stmt {
                Stmt::Let(v, inst) => {
                    if let Inst::Const(Literal::I(c)) = inst {
                        self.constants[v.index()] = Some(*c);
                    }
                    self.align[v.index()] = self.of_inst(k, inst);
                }
                Stmt::For {
                    iv,
                    start,
                    step,
                    body,
                    ..
                } => {
                    // Carried values keep alignment 1: a fixpoint would buy little.
                    self.align[iv.index()] = self.get(*start).min(power_of(i64::from(*step)));
                    self.visit(k, body);
                }
                Stmt::If { then_, else_, .. } => {
                    self.visit(k, then_);
                    self.visit(k, else_);
                }
                Stmt::Store { .. } | Stmt::Barrier => {}
            }
        }
    }

    fn get(&self, v: Value) -> u32 {
        self.align.get(v.index()).copied().unwrap_or(1)
    }

    fn of_inst(&self, k: &Kernel, inst: &Inst) -> u32 {
        let a = |v: &Value| self.get(*v);
        match inst {
            Inst::Const(Literal::I(c)) => power_of(*c),
            Inst::Special(Special::GroupSize(axis)) => {
                power_of(i64::from(k.workgroup_size[*axis as usize]))
            }
            Inst::Binary(op, x, y) => match op {
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Min | BinaryOp::Max => a(x).min(a(y)),
                // The low zero bits of either operand stay zero.
                BinaryOp::And => a(x).max(a(y)),
                BinaryOp::Mul => a(x).saturating_mul(a(y)).min(MAX_ALIGN),
                BinaryOp::Shl => match self.constants.get(y.index()).copied().flatten() {
                    Some(s @ 0..) => a(x).saturating_mul(1 << s.min(6)).min(MAX_ALIGN),
                    _ => 1,
                },
                _ => 1,
            },
            Inst::Select(_, x, y) => a(x).min(a(y)),
            Inst::Cast(to, x) if to.scalar.is_int() && k.values[x.index()].scalar.is_int() => a(x),
            _ => 1,
        }
        .max(1)
    }
}

/// The largest power of two (up to [`MAX_ALIGN`]) dividing `c`; `MAX_ALIGN` for 0.
fn power_of(c: i64) -> u32 {
    if c == 0 {
        return MAX_ALIGN;
    }
    1u32 << c.trailing_zeros().min(MAX_ALIGN.trailing_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lir::{Access, Axis, KernelBuilder, ScalarType, SizeExpr};

    #[test]
    fn products_of_constants_and_aligned_loops_are_multiples() {
        let mut b = KernelBuilder::new("align");
        b.workgroup_size([64, 1, 1]).grid([
            SizeExpr::Const(1),
            SizeExpr::Const(1),
            SizeExpr::Const(1),
        ]);
        let x = b.buffer("x", ScalarType::F32, Access::Read);
        let y = b.buffer("y", ScalarType::F32, Access::Write);
        let row = b.special(Special::GroupId(Axis::X));
        let lane = b.special(Special::LocalId(Axis::X));
        let (k, four, odd) = (b.const_i(2048), b.const_i(4), b.const_i(3));
        let base = b.mul(row, k);
        let start = b.mul(lane, four);
        let unaligned = b.add(base, odd);
        let end = b.const_i(2048);
        let mut seen = vec![];
        b.for_range(start, end, 256, &[], |b, i, _| {
            let at = b.add(base, i);
            let v = b.load(x, at, 4);
            b.store(y, at, v);
            let tail = b.add(at, odd);
            seen.extend([i, at, tail]);
            vec![]
        });
        let kernel = b.finish();
        let align = known_alignment(&kernel);
        let at = |v: Value| align[v.index()];
        assert_eq!(at(base), MAX_ALIGN, "row × 2048");
        assert_eq!(at(start), 4);
        assert_eq!(at(unaligned), 1);
        assert_eq!(at(lane), 1);
        assert_eq!(at(seen[0]), 4, "a loop from a multiple of 4 by 256");
        assert_eq!(at(seen[1]), 4);
        assert_eq!(at(seen[2]), 1);
    }
}
