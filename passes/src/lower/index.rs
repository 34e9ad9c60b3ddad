//! Shapes in LIR: symbolic dims evaluated from the kernel's scalar params, row-major
//! (un)raveling of indices and numpy broadcasting of a multi-index onto an operand's shape.

use std::collections::BTreeMap;
use tessera_ir::lir::{BinaryOp, KernelBuilder, SizeExpr, Value};
use tessera_ir::Dim;

/// The kernel's shape symbols: each one a scalar param, read once at the top of the kernel.
pub(super) struct Symbols {
    values: BTreeMap<String, (usize, Value)>,
}

impl Symbols {
    /// Declares one `i64` scalar param per symbol, in the given (sorted) order.
    pub(super) fn declare(b: &mut KernelBuilder, names: &[String]) -> Symbols {
        let values = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    (i, b.scalar(n, tessera_ir::lir::ScalarType::I64)),
                )
            })
            .collect();
        Symbols { values }
    }

    fn symbol(&self, s: &str) -> Result<(usize, Value), String> {
        self.values
            .get(s)
            .copied()
            .ok_or_else(|| format!("dim symbol `{s}` that no input or output shape binds"))
    }

    /// The dim's value as an `i64`.
    pub(super) fn dim(&self, b: &mut KernelBuilder, d: &Dim) -> Result<Value, String> {
        let mut total = b.const_i(0);
        for (symbols, coeff) in d.terms() {
            let mut term = b.const_i(coeff);
            for s in symbols {
                let v = self.symbol(s)?.1;
                term = b.mul(term, v);
            }
            total = b.add(total, term);
        }
        Ok(total)
    }

    /// The dim as a launch-time size; dims with negative terms (`seq - 1`) are not supported.
    pub(super) fn size(&self, d: &Dim) -> Result<SizeExpr, String> {
        let mut total = SizeExpr::Const(0);
        for (symbols, coeff) in d.terms() {
            let c = u64::try_from(coeff).map_err(|_| format!("grid size `{d}`"))?;
            let mut term = SizeExpr::Const(c);
            for s in symbols {
                term = SizeExpr::Mul(Box::new(term), Box::new(SizeExpr::Param(self.symbol(s)?.0)));
            }
            total = SizeExpr::Add(Box::new(total), Box::new(term));
        }
        Ok(total)
    }

    /// The product of `dims` as a launch-time size.
    pub(super) fn numel_size(&self, dims: &[Dim]) -> Result<SizeExpr, String> {
        dims.iter().try_fold(SizeExpr::Const(1), |acc, d| {
            Ok(SizeExpr::Mul(Box::new(acc), Box::new(self.size(d)?)))
        })
    }

    /// The product of `dims` as an `i64`.
    pub(super) fn numel(&self, b: &mut KernelBuilder, dims: &[Dim]) -> Result<Value, String> {
        let mut n = b.const_i(1);
        for d in dims {
            let v = self.dim(b, d)?;
            n = b.mul(n, v);
        }
        Ok(n)
    }

    /// The row-major linear index of multi-index `idx` in `shape`.
    pub(super) fn ravel(
        &self,
        b: &mut KernelBuilder,
        idx: &[Value],
        shape: &[Dim],
    ) -> Result<Value, String> {
        let mut linear = b.const_i(0);
        for (&i, d) in idx.iter().zip(shape) {
            let d = self.dim(b, d)?;
            let scaled = b.mul(linear, d);
            linear = b.add(scaled, i);
        }
        Ok(linear)
    }

    /// The multi-index of row-major linear index `linear` in `shape`.
    pub(super) fn unravel(
        &self,
        b: &mut KernelBuilder,
        linear: Value,
        shape: &[Dim],
    ) -> Result<Vec<Value>, String> {
        let mut idx = vec![linear; shape.len()];
        let mut rest = linear;
        for (k, d) in shape.iter().enumerate().skip(1).rev() {
            let dv = self.dim(b, d)?;
            idx[k] = b.binary(BinaryOp::Rem, rest, dv);
            rest = b.div(rest, dv);
        }
        if let Some(first) = idx.first_mut() {
            *first = rest;
        }
        Ok(idx)
    }
}

/// Numpy broadcasting: the index into an operand of shape `arg` of the element at `idx` of the
/// result shape `out` (trailing axes aligned, size-1 operand axes read element 0).
pub(super) fn broadcast(
    b: &mut KernelBuilder,
    idx: &[Value],
    out: &[Dim],
    arg: &[Dim],
) -> Result<Vec<Value>, String> {
    let skip = out
        .len()
        .checked_sub(arg.len())
        .ok_or("an operand of higher rank than its result")?;
    let mut zero = None;
    idx[skip..]
        .iter()
        .zip(&out[skip..])
        .zip(arg)
        .map(|((&i, o), a)| {
            if a == o {
                Ok(i)
            } else if a.as_const() == Some(1) {
                Ok(*zero.get_or_insert_with(|| b.const_i(0)))
            } else {
                Err(format!("broadcasting dim `{a}` to `{o}`"))
            }
        })
        .collect()
}
