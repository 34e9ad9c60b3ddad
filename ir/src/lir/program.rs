//! What one KernelGraph kernel lowers to: usually one LIR kernel, sometimes several launched in
//! order that hand partial results to each other through scratch memory (FlashDecoding's splits
//! write `(acc, max, sum)` rows that a second step merges by log-sum-exp). The KernelGraph stays
//! one kernel per algorithm; only its code has steps.

use super::{Kernel, LirError, ScalarType, SizeExpr};
use serde::{Deserialize, Serialize};
use std::fmt::{self, Display, Formatter};

/// Global memory that lives for one launch of a [`Program`], shared by its steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scratch {
    pub name: String,
    pub elem: ScalarType,
    /// Elements, from the steps' scalar params.
    pub len: SizeExpr,
}

impl Scratch {
    /// Its size in bytes for the scalar params' values `scalars`.
    pub fn bytes(&self, scalars: &[i64]) -> Result<usize, String> {
        let n = self.len.eval(scalars)?;
        n.checked_mul(u64::from(self.elem.bytes()))
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| format!("scratch `{}` of {n} elements overflows", self.name))
    }
}

/// The steps of one KernelGraph kernel, launched in order, each after the previous one has
/// finished. Every step takes the same scalar params and the same buffer params — the kernel's
/// inputs, its output, then the [`Scratch`] buffers in order — so a runtime binds them once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub scratch: Vec<Scratch>,
    pub steps: Vec<Kernel>,
}

impl Program {
    /// The program of a kernel that needs no scratch: one step.
    pub fn single(kernel: Kernel) -> Program {
        Program {
            scratch: vec![],
            steps: vec![kernel],
        }
    }

    /// Checks the steps agree on the launch interface: at least one step, the same scalar
    /// params, the same buffer count, and each scratch buffer at its place with its type.
    pub fn check(&self) -> Result<(), LirError> {
        let first = self.steps.first().ok_or_else(|| LirError::Invalid {
            kernel: "<program>".into(),
            path: "steps".into(),
            message: "a program without steps".into(),
        })?;
        for step in &self.steps {
            let fail = |message: String| LirError::Invalid {
                kernel: step.name.clone(),
                path: "params".into(),
                message,
            };
            if step.scalars != first.scalars {
                return Err(fail(format!(
                    "scalar params differ from step `{}`'s",
                    first.name
                )));
            }
            if step.buffers.len() != first.buffers.len() {
                return Err(fail(format!(
                    "{} buffer params, step `{}` has {}",
                    step.buffers.len(),
                    first.name,
                    first.buffers.len()
                )));
            }
            let at = step
                .buffers
                .len()
                .checked_sub(self.scratch.len())
                .ok_or_else(|| fail("fewer buffer params than scratch buffers".into()))?;
            for (s, p) in self.scratch.iter().zip(&step.buffers[at..]) {
                if s.elem != p.elem {
                    return Err(fail(format!(
                        "scratch `{}` is {} but its param `{}` is {}",
                        s.name, s.elem, p.name, p.elem
                    )));
                }
            }
        }
        Ok(())
    }

    /// Bytes of each scratch buffer for the scalar params' values `scalars`.
    pub fn scratch_bytes(&self, scalars: &[i64]) -> Result<Vec<usize>, String> {
        self.scratch.iter().map(|s| s.bytes(scalars)).collect()
    }
}

impl Display for Program {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for s in &self.scratch {
            let len = self
                .steps
                .first()
                .map_or_else(|| format!("{:?}", s.len), |k| k.size(&s.len));
            writeln!(f, "scratch {}: global {}[{len}]", s.name, s.elem.name())?;
        }
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{step}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lir::{examples, Access, KernelBuilder};

    fn step(name: &str, scratch: ScalarType) -> Kernel {
        let mut b = KernelBuilder::new(name);
        b.buffer("in0", ScalarType::F32, Access::Read);
        b.buffer("out", ScalarType::F32, Access::Write);
        b.buffer("partials", scratch, Access::ReadWrite);
        b.scalar("n", ScalarType::I64);
        b.grid([SizeExpr::Param(0), SizeExpr::Const(1), SizeExpr::Const(1)]);
        b.finish()
    }

    fn partials(len: SizeExpr) -> Scratch {
        Scratch {
            name: "partials".into(),
            elem: ScalarType::F32,
            len,
        }
    }

    #[test]
    fn steps_must_agree_on_their_params() {
        let len = SizeExpr::Mul(Box::new(SizeExpr::Param(0)), Box::new(SizeExpr::Const(6)));
        let good = Program {
            scratch: vec![partials(len.clone())],
            steps: vec![
                step("split", ScalarType::F32),
                step("merge", ScalarType::F32),
            ],
        };
        good.check().unwrap();
        assert_eq!(good.scratch_bytes(&[5]).unwrap(), vec![120]);
        let text = good.to_string();
        assert!(
            text.starts_with("scratch partials: global f32[n*6]\n"),
            "{text}"
        );
        assert!(text.contains("kernel merge("), "{text}");

        let retyped = Program {
            scratch: vec![partials(len)],
            steps: vec![
                step("split", ScalarType::F32),
                step("merge", ScalarType::I32),
            ],
        };
        let err = retyped.check().unwrap_err().to_string();
        assert!(err.contains("merge") && err.contains("partials"), "{err}");

        let mut other = Program::single(examples::gemv_row());
        other.steps.push(step("merge", ScalarType::F32));
        let err = other.check().unwrap_err().to_string();
        assert!(
            err.contains("merge") && err.contains("scalar params"),
            "{err}"
        );
        let empty = Program {
            scratch: vec![],
            steps: vec![],
        };
        assert!(empty.check().is_err());
    }
}
