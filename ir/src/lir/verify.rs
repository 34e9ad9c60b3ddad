//! [`verify`]: the checks every LIR kernel passes before a backend sees it — scoping and SSA,
//! types, writability, barrier uniformity and the target's [`Capabilities`].

use super::{
    Access, BufRef, Capabilities, Inst, Kernel, LirError, MemorySpace, ScalarType, SizeExpr, Stmt,
    Type, Value,
};

/// Checks `k` against the target `caps`; the error names the kernel, the statement path and the
/// values involved.
pub fn verify(k: &Kernel, caps: &Capabilities) -> Result<(), LirError> {
    check_header(k, caps)?;
    let mut scope = Scope {
        k,
        caps,
        defined: vec![false; k.values.len()],
        visible: vec![false; k.values.len()],
        blocks: vec![],
    };
    scope.block(&k.body, "body", &[], &[])?;
    let uniform = uniformity(k);
    check_barriers(k, &uniform, &k.body, "body", None)
}

fn err(k: &Kernel, path: &str, message: String) -> LirError {
    LirError::Invalid {
        kernel: k.name.clone(),
        path: path.to_string(),
        message,
    }
}

fn type_err(k: &Kernel, path: &str, message: String) -> LirError {
    LirError::Type {
        kernel: k.name.clone(),
        path: path.to_string(),
        message,
    }
}

fn unsupported(k: &Kernel, path: &str, message: String) -> LirError {
    LirError::Unsupported {
        kernel: k.name.clone(),
        path: path.to_string(),
        message,
    }
}

fn check_header(k: &Kernel, caps: &Capabilities) -> Result<(), LirError> {
    let threads = k
        .workgroup_size
        .iter()
        .try_fold(1u32, |acc, &d| acc.checked_mul(d).filter(|_| d > 0));
    match threads {
        Some(t) if t <= caps.max_workgroup_size => {}
        _ => {
            return Err(unsupported(
                k,
                "header",
                format!(
                    "workgroup size {:?} (at most {} threads)",
                    k.workgroup_size, caps.max_workgroup_size
                ),
            ))
        }
    }
    let mut shared = 0u64;
    for l in &k.locals {
        match l.space {
            MemorySpace::Global => {
                return Err(err(
                    k,
                    "header",
                    format!("local {} is in global memory", l.name),
                ))
            }
            MemorySpace::Shared => shared += u64::from(l.len) * u64::from(l.elem.bytes()),
            MemorySpace::Private => {}
        }
    }
    if shared > u64::from(caps.shared_bytes) {
        return Err(unsupported(
            k,
            "header",
            format!(
                "{shared} bytes of shared memory (at most {})",
                caps.shared_bytes
            ),
        ));
    }
    for e in &k.grid {
        check_size(k, e)?;
    }
    Ok(())
}

fn check_size(k: &Kernel, e: &SizeExpr) -> Result<(), LirError> {
    match e {
        SizeExpr::Const(_) => Ok(()),
        SizeExpr::Param(i) => match k.scalars.get(*i) {
            Some(p) if p.ty.is_int() => Ok(()),
            _ => Err(err(
                k,
                "grid",
                format!("param {i} is not an integer scalar param"),
            )),
        },
        SizeExpr::Add(a, b) | SizeExpr::Mul(a, b) => {
            check_size(k, a)?;
            check_size(k, b)
        }
        SizeExpr::CeilDiv(a, d) if *d > 0 => check_size(k, a),
        SizeExpr::CeilDiv(..) => Err(err(k, "grid", "ceil division by zero".to_string())),
    }
}

/// SSA and scoping state of the main walk.
struct Scope<'a> {
    k: &'a Kernel,
    caps: &'a Capabilities,
    defined: Vec<bool>,
    visible: Vec<bool>,
    /// Values defined in each open block, innermost last, hidden again when it closes.
    blocks: Vec<Vec<Value>>,
}

impl Scope<'_> {
    /// Checks a block in which `params` are defined on entry and `yields` are read at the end.
    fn block(
        &mut self,
        stmts: &[Stmt],
        path: &str,
        params: &[Value],
        yields: &[Value],
    ) -> Result<Vec<Type>, LirError> {
        self.blocks.push(vec![]);
        for &p in params {
            self.define(p, path)?;
        }
        for (i, stmt) in stmts.iter().enumerate() {
            self.stmt(stmt, &format!("{path}[{i}]"))?;
        }
        let types = yields
            .iter()
            .map(|&y| self.use_(y, &format!("{path}.yield")))
            .collect();
        for v in self.blocks.pop().unwrap_or_default() {
            self.visible[v.index()] = false;
        }
        types
    }

    fn use_(&self, v: Value, path: &str) -> Result<Type, LirError> {
        if self.visible.get(v.index()) == Some(&true) {
            Ok(self.k.values[v.index()])
        } else {
            Err(LirError::Undefined {
                kernel: self.k.name.clone(),
                path: path.to_string(),
                value: v,
            })
        }
    }

    fn define(&mut self, v: Value, path: &str) -> Result<Type, LirError> {
        let k = self.k;
        let Some(&ty) = k.values.get(v.index()) else {
            return Err(err(k, path, format!("{v} has no recorded type")));
        };
        if std::mem::replace(&mut self.defined[v.index()], true) {
            return Err(LirError::Redefined {
                kernel: k.name.clone(),
                path: path.to_string(),
                value: v,
            });
        }
        if ty.lanes == 0 {
            return Err(type_err(k, path, format!("{v} has zero lanes")));
        }
        self.visible[v.index()] = true;
        if let Some(block) = self.blocks.last_mut() {
            block.push(v);
        }
        Ok(ty)
    }

    fn stmt(&mut self, stmt: &Stmt, path: &str) -> Result<(), LirError> {
        let k = self.k;
        match stmt {
            Stmt::Let(v, inst) => {
                for op in inst.operands() {
                    self.use_(op, path)?;
                }
                self.check_caps(inst, path)?;
                let declared = self.define(*v, path)?;
                let actual = inst
                    .result_type(k, declared)
                    .map_err(|m| type_err(k, path, format!("{v}: {m}")))?;
                self.check_half(inst, declared, path)?;
                if actual != declared {
                    return Err(type_err(
                        k,
                        path,
                        format!("{v} is declared {declared} but its instruction produces {actual}"),
                    ));
                }
            }
            Stmt::Store { buf, index, value } => {
                let (ti, tv) = (self.use_(*index, path)?, self.use_(*value, path)?);
                let elem = k.buffer_elem(*buf).map_err(|m| err(k, path, m))?;
                if !ti.scalar.is_int() || ti.lanes != 1 {
                    return Err(type_err(k, path, format!("store index {index} is {ti}")));
                }
                if tv.scalar != elem {
                    return Err(type_err(
                        k,
                        path,
                        format!("store of {value}: {tv} into a {elem} buffer"),
                    ));
                }
                if let BufRef::Param(i) = buf {
                    if k.buffers[*i].access == Access::Read {
                        return Err(LirError::ReadOnly {
                            kernel: k.name.clone(),
                            path: path.to_string(),
                            buffer: k.buffers[*i].name.clone(),
                        });
                    }
                }
            }
            Stmt::For {
                iv,
                start,
                end,
                step,
                carried,
                body,
                yields,
                results,
            } => {
                let bounds = [self.use_(*start, path)?, self.use_(*end, path)?];
                let inits = carried
                    .iter()
                    .map(|c| self.use_(c.init, path))
                    .collect::<Result<Vec<_>, _>>()?;
                if *step == 0 {
                    return Err(err(k, path, "loop step 0".to_string()));
                }
                let params: Vec<Value> = std::iter::once(*iv)
                    .chain(carried.iter().map(|c| c.param))
                    .collect();
                let ys = self.block(body, &format!("{path}.body"), &params, yields)?;
                let tiv = k.values[iv.index()];
                if !tiv.scalar.is_int() || tiv.lanes != 1 || bounds.iter().any(|&b| b != tiv) {
                    return Err(type_err(
                        k,
                        path,
                        format!(
                            "loop {iv}: {tiv} over {start}: {} .. {end}: {}",
                            bounds[0], bounds[1]
                        ),
                    ));
                }
                if ys.len() != carried.len() || results.len() != carried.len() {
                    return Err(type_err(
                        k,
                        path,
                        format!(
                            "loop {iv} carries {} values, yields {} and has {} results",
                            carried.len(),
                            ys.len(),
                            results.len()
                        ),
                    ));
                }
                for (i, c) in carried.iter().enumerate() {
                    let tp = k.values[c.param.index()];
                    let tr = self.define(results[i], path)?;
                    if inits[i] != tp || ys[i] != tp || tr != tp {
                        return Err(type_err(
                            k,
                            path,
                            format!(
                                "loop {iv} carried {}: param {tp}, init {} {}, yield {} {}, result {} {tr}",
                                c.param, c.init, inits[i], yields[i], ys[i], results[i]
                            ),
                        ));
                    }
                }
            }
            Stmt::If { cond, then_, else_ } => {
                let tc = self.use_(*cond, path)?;
                if tc != Type::scalar(ScalarType::Bool) {
                    return Err(type_err(k, path, format!("if condition {cond} is {tc}")));
                }
                self.block(then_, &format!("{path}.then"), &[], &[])?;
                self.block(else_, &format!("{path}.else"), &[], &[])?;
            }
            Stmt::Barrier => {}
        }
        Ok(())
    }

    /// Without `Capabilities::f16`, half-precision values are storage only: loaded, stored,
    /// converted and reinterpreted, never computed with (the CPU and Vulkan devices without
    /// `shader-f16` widen them to f32 first).
    fn check_half(&self, inst: &Inst, declared: Type, path: &str) -> Result<(), LirError> {
        let storage = matches!(
            inst,
            Inst::Load { .. }
                | Inst::Cast(..)
                | Inst::Bitcast(..)
                | Inst::Extract(..)
                | Inst::Concat(..)
        );
        let half = |t: Type| matches!(t.scalar, ScalarType::F16 | ScalarType::Bf16);
        let computes_half = half(declared)
            || inst
                .operands()
                .iter()
                .any(|v| self.k.values.get(v.index()).is_some_and(|&t| half(t)));
        if computes_half && !storage && !self.caps.f16 && !matches!(inst, Inst::Intrinsic(..)) {
            return Err(unsupported(
                self.k,
                path,
                format!("half-precision arithmetic ({inst:?}): this target stores f16/bf16 only"),
            ));
        }
        Ok(())
    }

    fn check_caps(&self, inst: &Inst, path: &str) -> Result<(), LirError> {
        match inst {
            Inst::Special(s) if s.needs_subgroups() && self.caps.subgroup_sizes.is_empty() => {
                Err(unsupported(self.k, path, format!("{s} (no subgroups)")))
            }
            Inst::Intrinsic(i, _) if !self.caps.intrinsics.contains(&i.kind()) => Err(unsupported(
                self.k,
                path,
                format!("intrinsic {:?}", i.kind()),
            )),
            _ => Ok(()),
        }
    }
}

/// Which values every thread of a workgroup agrees on: those computed only from constants,
/// scalar params and uniform specials through pure instructions. Loop-carried values are
/// uniform when their init and yield are (found by iterating to a fixpoint).
fn uniformity(k: &Kernel) -> Vec<bool> {
    let mut uniform = vec![false; k.values.len()];
    mark_uniform(&k.body, &mut uniform);
    uniform
}

fn mark_uniform(stmts: &[Stmt], u: &mut Vec<bool>) {
    for stmt in stmts {
        match stmt {
            Stmt::Let(v, inst) => {
                u[v.index()] = match inst {
                    Inst::Const(_) | Inst::Param(_) => true,
                    Inst::Special(s) => s.is_uniform(),
                    Inst::Load { .. } | Inst::Intrinsic(..) => false,
                    pure => pure.operands().iter().all(|o| u[o.index()]),
                }
            }
            Stmt::For {
                iv,
                start,
                end,
                carried,
                body,
                yields,
                results,
                ..
            } => {
                u[iv.index()] = u[start.index()] && u[end.index()];
                for c in carried {
                    u[c.param.index()] = u[c.init.index()];
                }
                loop {
                    mark_uniform(body, u);
                    let mut changed = false;
                    for (c, y) in carried.iter().zip(yields) {
                        if u[c.param.index()] && !u[y.index()] {
                            u[c.param.index()] = false;
                            changed = true;
                        }
                    }
                    if !changed {
                        break;
                    }
                }
                for (c, r) in carried.iter().zip(results) {
                    u[r.index()] = u[c.param.index()];
                }
            }
            Stmt::If { then_, else_, .. } => {
                mark_uniform(then_, u);
                mark_uniform(else_, u);
            }
            Stmt::Store { .. } | Stmt::Barrier => {}
        }
    }
}

/// Rejects barriers some threads of a workgroup may skip; `divergence` says why the current
/// block may be skipped by some of them.
fn check_barriers(
    k: &Kernel,
    uniform: &[bool],
    stmts: &[Stmt],
    path: &str,
    divergence: Option<&str>,
) -> Result<(), LirError> {
    for (i, stmt) in stmts.iter().enumerate() {
        let path = format!("{path}[{i}]");
        match stmt {
            Stmt::Barrier => {
                if let Some(reason) = divergence {
                    return Err(LirError::DivergentBarrier {
                        kernel: k.name.clone(),
                        path,
                        reason: reason.to_string(),
                    });
                }
            }
            Stmt::For {
                start, end, body, ..
            } => {
                let reason = (!uniform[start.index()] || !uniform[end.index()])
                    .then(|| format!("loop bounds {start}..{end} are not uniform"));
                let inner = divergence.or(reason.as_deref());
                check_barriers(k, uniform, body, &format!("{path}.body"), inner)?;
            }
            Stmt::If { cond, then_, else_ } => {
                let reason =
                    (!uniform[cond.index()]).then(|| format!("condition {cond} is not uniform"));
                let inner = divergence.or(reason.as_deref());
                check_barriers(k, uniform, then_, &format!("{path}.then"), inner)?;
                check_barriers(k, uniform, else_, &format!("{path}.else"), inner)?;
            }
            Stmt::Let(..) | Stmt::Store { .. } => {}
        }
    }
    Ok(())
}
