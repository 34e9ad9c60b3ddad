//! LIR → naga IR, one kernel into one compute entry point, through [`ModuleBuilder`].
//!
//! Representation (each decision forced by WGSL/naga without `SHADER_INT64`/`SHADER_FLOAT16`):
//!
//! - **Values.** `f32`, `f16` and `bf16` values are naga `f32` (half types are storage only on
//!   this backend: loads widen them, casts to `f16` round with `quantizeToF16`); `i32`, `i64`
//!   and `i8` are `i32`; `u32` and `u8` are `u32`; `bool` is `bool`. **`i64` is narrowed to
//!   `i32`**: indices, loop counters and the thread-hierarchy specials are 32-bit on the GPU, so
//!   the launch refuses buffers over 2^31−1 elements and scalar values outside `i32`. 8-bit
//!   values keep their 8-bit meaning (results are wrapped back to 8 bits after arithmetic).
//!   Vectors of 2–4 lanes are naga vectors; other lane counts are unsupported (so is a
//!   `Concat` into one). A `Concat` composes its operands' lanes.
//! - **Buffers.** Buffer param `i` is the storage buffer at group 0, binding `i`, read-only for
//!   [`Access::Read`]; the scalar params follow in one more read-only `array<u32>` binding (one
//!   word each, see [`crate::SpirvKernel::scalar_words`]). `f32`, `i32` and `u32` buffers are
//!   arrays of their type; an `i64` buffer is an `array<i32>` of two words per element (loads
//!   read the low word, stores write both). `u8`, `i8`, `f16`, `bf16` and `bool` buffers have no
//!   WGSL storage form: they are `array<u32>` read with byte extraction, a `u8` buffer
//!   byte-addressed as LIR says (a load of any type at a byte index, unaligned reads joining two
//!   words), `f16` widened with `unpack2x16float`, `bf16` by a 16-bit shift. Stores to them are
//!   unsupported (they would need atomics; GPU templates write `f32`).
//! - **Locals.** Shared locals are workgroup arrays, Private locals function-scope arrays, both
//!   of the element's value representation (a `u8` local takes a word per element).
//! - **Control flow.** naga has no SSA across blocks: a `For` keeps its counter and carried values
//!   in function variables (`loop { if !(iv < end) { break } ... }`); `If` maps to `If`.
//! - **Intrinsics.** `Dot4I8Packed` is naga's `dot4I8Packed` (SPIR-V `OpSDot` where available);
//!   `Dot4U8I8Packed`, which naga lacks, unpacks both words and takes an integer dot product.
//!   Subgroup reductions and broadcasts are naga subgroup operations (a broadcast from a
//!   computed lane is a shuffle).

mod memory;

use crate::builder::{Expr, ModuleBuilder};
use crate::CodegenError;
use memory::Memory;
use naga::{
    BinaryOperator, BuiltIn, Expression, Literal as NagaLiteral, MathFunction, Module, Scalar,
    ScalarKind, SubgroupOperation, UnaryOperator,
};
use std::collections::HashMap;
use tessera_ir::lir::{
    known_alignment, BinaryOp, CmpOp, Inst, Intrinsic, Kernel, Literal, ReduceOp, ScalarType,
    Special, Stmt, Type, UnaryOp, Value,
};

/// Translates verified kernel `k` into a naga module with one compute entry point named after
/// the kernel; `half`: the device computes in and stores `f16` (then `f16` values and buffers
/// are naga `f16`, not widened).
pub(crate) fn translate(k: &Kernel, half: bool) -> Result<Module, CodegenError> {
    let mut t = Translator {
        k,
        half,
        align: known_alignment(k),
        b: ModuleBuilder::new(),
        vals: vec![None; k.values.len()],
        buffers: vec![],
        locals: vec![],
        scalars: None,
        builtins: HashMap::new(),
    };
    t.check_lanes()?;
    t.declare_memory()?;
    t.block(&k.body)?;
    Ok(t.b.finish(&k.name, k.workgroup_size))
}

/// The naga scalar a LIR scalar type is represented by (see the module docs).
fn repr(s: ScalarType, half: bool) -> Scalar {
    match s {
        ScalarType::F16 if half => Scalar::F16,
        ScalarType::F32 | ScalarType::F16 | ScalarType::Bf16 => Scalar::F32,
        ScalarType::I32 | ScalarType::I64 | ScalarType::I8 => Scalar::I32,
        ScalarType::U32 | ScalarType::U8 => Scalar::U32,
        ScalarType::Bool => Scalar::BOOL,
    }
}

struct Translator<'a> {
    k: &'a Kernel,
    /// `f16` is a naga type of its own (the device has `shader-f16`).
    half: bool,
    /// [`known_alignment`] of every value: which accesses can be wide.
    align: Vec<u32>,
    b: ModuleBuilder,
    vals: Vec<Option<Expr>>,
    buffers: Vec<Memory>,
    locals: Vec<Expr>,
    /// The scalar params' `array<u32>`, when the kernel has any.
    scalars: Option<Expr>,
    /// Entry-point arguments, created on first use (subgroup builtins need a capability).
    builtins: HashMap<BuiltIn, Expr>,
}

impl Translator<'_> {
    /// The naga scalar of `s` on this device.
    fn repr(&self, s: ScalarType) -> Scalar {
        repr(s, self.half)
    }

    fn unsupported(&self, what: String) -> CodegenError {
        CodegenError::Unsupported {
            kernel: self.k.name.clone(),
            what,
        }
    }

    fn check_lanes(&self) -> Result<(), CodegenError> {
        match self
            .k
            .values
            .iter()
            .enumerate()
            .find(|(_, t)| !(1..=4).contains(&t.lanes))
        {
            Some((i, t)) => Err(self.unsupported(format!(
                "value %{i} is {t}: SPIR-V vectors have 2 to 4 lanes"
            ))),
            None => Ok(()),
        }
    }

    fn ty(&mut self, t: Type) -> Result<naga::Handle<naga::Type>, CodegenError> {
        self.b
            .value_type(self.repr(t.scalar), t.lanes)
            .ok_or_else(|| self.unsupported(format!("type {t}: SPIR-V vectors have 2 to 4 lanes")))
    }

    fn type_of(&self, v: Value) -> Type {
        self.k.values[v.index()]
    }

    fn val(&self, v: Value) -> Result<Expr, CodegenError> {
        self.vals
            .get(v.index())
            .copied()
            .flatten()
            .ok_or_else(|| self.unsupported(format!("%{} is used before it is translated", v.0)))
    }

    fn u32(&mut self, v: u32) -> Expr {
        self.b.literal(NagaLiteral::U32(v))
    }

    /// The literal `lit` in each of `lanes` lanes.
    fn splat_lit(&mut self, lit: NagaLiteral, lanes: u32) -> Expr {
        let l = self.b.literal(lit);
        self.b.splat(l, lanes)
    }

    fn binary(&mut self, op: BinaryOperator, left: Expr, right: Expr) -> Expr {
        self.b.expr(Expression::Binary { op, left, right })
    }

    fn cast(&mut self, expr: Expr, kind: ScalarKind, convert: Option<u8>) -> Expr {
        self.b.expr(Expression::As {
            expr,
            kind,
            convert,
        })
    }

    fn lane(&mut self, e: Expr, lanes: u32, i: u32) -> Expr {
        if lanes == 1 {
            e
        } else {
            self.b.expr(Expression::AccessIndex { base: e, index: i })
        }
    }

    /// An index value as a `u32`.
    fn index_u32(&mut self, v: Value) -> Result<Expr, CodegenError> {
        let e = self.val(v)?;
        Ok(match self.repr(self.type_of(v).scalar).kind {
            ScalarKind::Uint => e,
            _ => self.cast(e, ScalarKind::Uint, None),
        })
    }

    /// `base + offset` in `u32` (no addition for offset 0).
    fn offset(&mut self, base: Expr, offset: u32) -> Expr {
        if offset == 0 {
            return base;
        }
        let o = self.u32(offset);
        self.binary(BinaryOperator::Add, base, o)
    }

    fn builtin(&mut self, builtin: BuiltIn) -> Expr {
        if let Some(&e) = self.builtins.get(&builtin) {
            return e;
        }
        let lanes = match builtin {
            BuiltIn::WorkGroupId | BuiltIn::NumWorkGroups | BuiltIn::LocalInvocationId => 3,
            _ => 1,
        };
        let ty = self
            .b
            .value_type(Scalar::U32, lanes)
            .expect("1 and 3 lanes have naga types");
        let e = self.b.builtin(builtin, ty);
        self.builtins.insert(builtin, e);
        e
    }

    fn block(&mut self, stmts: &[Stmt]) -> Result<(), CodegenError> {
        stmts.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&mut self, stmt: &Stmt) -> Result<(), CodegenError> {
        match stmt {
            Stmt::Let(v, inst) => {
                let e = self.inst(*v, inst)?;
                self.vals[v.index()] = Some(e);
            }
            Stmt::Store { buf, index, value } => self.store(*buf, *index, *value)?,
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
                let iv_ty = self.ty(self.type_of(*iv))?;
                let counter = self.b.local_variable(&format!("iv{}", iv.0), iv_ty);
                let start = self.val(*start)?;
                self.b.store(counter, start);
                let mut vars = vec![];
                for c in carried {
                    let ty = self.ty(self.type_of(c.param))?;
                    let var = self.b.local_variable(&format!("carried{}", c.param.0), ty);
                    let init = self.val(c.init)?;
                    self.b.store(var, init);
                    vars.push(var);
                }
                self.b.begin_block();
                let i = self.b.load(counter);
                let end = self.val(*end)?;
                let go_on = self.binary(BinaryOperator::Less, i, end);
                self.b.begin_block();
                let accept = self.b.end_block();
                self.b.begin_block();
                self.b.break_();
                let reject = self.b.end_block();
                self.b.if_(go_on, accept, reject);
                self.vals[iv.index()] = Some(i);
                for (c, &var) in carried.iter().zip(&vars) {
                    self.vals[c.param.index()] = Some(self.b.load(var));
                }
                self.block(body)?;
                for (y, &var) in yields.iter().zip(&vars) {
                    let y = self.val(*y)?;
                    self.b.store(var, y);
                }
                let step = match self.repr(self.type_of(*iv).scalar).kind {
                    ScalarKind::Uint => NagaLiteral::U32(*step),
                    _ => NagaLiteral::I32(self.narrow(i64::from(*step))?),
                };
                let step = self.b.literal(step);
                let next = self.binary(BinaryOperator::Add, i, step);
                self.b.store(counter, next);
                let body = self.b.end_block();
                self.b.loop_(body);
                for (r, &var) in results.iter().zip(&vars) {
                    self.vals[r.index()] = Some(self.b.load(var));
                }
            }
            Stmt::If { cond, then_, else_ } => {
                let cond = self.val(*cond)?;
                self.b.begin_block();
                self.block(then_)?;
                let accept = self.b.end_block();
                self.b.begin_block();
                self.block(else_)?;
                let reject = self.b.end_block();
                self.b.if_(cond, accept, reject);
            }
            Stmt::Barrier => self.b.workgroup_barrier(),
        }
        Ok(())
    }

    /// `v` as an `i32`, or why it does not fit the narrowing of `i64`.
    fn narrow(&self, v: i64) -> Result<i32, CodegenError> {
        i32::try_from(v).map_err(|_| {
            self.unsupported(format!(
                "constant {v} does not fit in 32 bits (i64 is narrowed to i32 on Vulkan)"
            ))
        })
    }

    fn inst(&mut self, v: Value, inst: &Inst) -> Result<Expr, CodegenError> {
        let ty = self.type_of(v);
        Ok(match inst {
            Inst::Const(Literal::F(f)) if !f.is_finite() => {
                // naga literals are finite: infinities and NaN are bitcast from their bits.
                let bits = self.u32((*f as f32).to_bits());
                let wide = self.cast(bits, ScalarKind::Float, None);
                self.narrow_float(wide, ty.scalar)
            }
            Inst::Const(lit) => {
                let lit = self.literal(ty.scalar, *lit)?;
                self.b.literal(lit)
            }
            Inst::Param(i) => {
                let scalars = self
                    .scalars
                    .ok_or_else(|| self.unsupported(format!("no scalar param {i}")))?;
                let index = self.u32(*i as u32);
                let word = self.b.element(scalars, index);
                let bits = self.b.load(word);
                self.decode_bits(bits, ty.scalar)
            }
            Inst::Special(s) => self.special(*s),
            Inst::Unary(op, a) => self.unary(*op, *a, ty)?,
            Inst::Binary(op, a, b) => self.binary_op(*op, *a, *b, ty)?,
            Inst::Fma(a, b, c) => {
                let (a, b, c) = (self.val(*a)?, self.val(*b)?, self.val(*c)?);
                self.b.math(MathFunction::Fma, &[a, b, c])
            }
            Inst::Cmp(op, a, b) => {
                let op = match op {
                    CmpOp::Eq => BinaryOperator::Equal,
                    CmpOp::Ne => BinaryOperator::NotEqual,
                    CmpOp::Lt => BinaryOperator::Less,
                    CmpOp::Le => BinaryOperator::LessEqual,
                    CmpOp::Gt => BinaryOperator::Greater,
                    CmpOp::Ge => BinaryOperator::GreaterEqual,
                };
                let (a, b) = (self.val(*a)?, self.val(*b)?);
                self.binary(op, a, b)
            }
            Inst::Select(c, a, b) => {
                let (condition, accept, reject) = (self.val(*c)?, self.val(*a)?, self.val(*b)?);
                self.b.expr(Expression::Select {
                    condition,
                    accept,
                    reject,
                })
            }
            Inst::Cast(to, a) => self.convert(*a, *to)?,
            Inst::Bitcast(to, a) => self.bitcast(*a, *to)?,
            Inst::Splat(to, a) => {
                let a = self.val(*a)?;
                self.b.splat(a, to.lanes)
            }
            Inst::Extract(a, lane) => {
                let a = self.val(*a)?;
                self.b.expr(Expression::AccessIndex {
                    base: a,
                    index: *lane,
                })
            }
            Inst::Concat(parts) => {
                let handle = self.ty(ty)?;
                let mut components = Vec::new();
                for &p in parts {
                    let lanes = self.type_of(p).lanes;
                    let x = self.val(p)?;
                    components.extend((0..lanes).map(|l| self.lane(x, lanes, l)));
                }
                match components[..] {
                    [one] => one,
                    _ => self.b.compose(handle, components),
                }
            }
            Inst::ReduceLanes(op, a) => {
                let lanes = self.type_of(*a).lanes;
                let a = self.val(*a)?;
                let mut acc = self.lane(a, lanes, 0);
                for i in 1..lanes {
                    let x = self.lane(a, lanes, i);
                    acc = self.reduce(*op, acc, x);
                }
                self.wrap8(acc, ty)
            }
            Inst::Load { buf, index, ty } => self.load(*buf, *index, *ty)?,
            Inst::Intrinsic(i, args) => self.intrinsic(i, args, ty)?,
        })
    }

    fn literal(&self, s: ScalarType, lit: Literal) -> Result<NagaLiteral, CodegenError> {
        Ok(match (s, lit) {
            (ScalarType::F16, Literal::F(f)) if self.half => {
                NagaLiteral::F16(half::f16::from_f64(f))
            }
            (_, Literal::F(f)) => NagaLiteral::F32(f as f32),
            (_, Literal::Bool(b)) => NagaLiteral::Bool(b),
            (ScalarType::U32, Literal::I(i)) => NagaLiteral::U32(
                u32::try_from(i)
                    .map_err(|_| self.unsupported(format!("constant {i} does not fit in u32")))?,
            ),
            (ScalarType::U8, Literal::I(i)) => NagaLiteral::U32(u32::from(i as u8)),
            (ScalarType::I8, Literal::I(i)) => NagaLiteral::I32(i32::from(i as i8)),
            (_, Literal::I(i)) => NagaLiteral::I32(self.narrow(i)?),
        })
    }

    fn special(&mut self, s: Special) -> Expr {
        let axis = |a: tessera_ir::lir::Axis| a as u32;
        let raw = match s {
            Special::GroupId(a) => self.vector_builtin(BuiltIn::WorkGroupId, axis(a)),
            Special::NumGroups(a) => self.vector_builtin(BuiltIn::NumWorkGroups, axis(a)),
            Special::LocalId(a) => self.vector_builtin(BuiltIn::LocalInvocationId, axis(a)),
            Special::GroupSize(a) => {
                return self.b.literal(NagaLiteral::I32(
                    self.k.workgroup_size[axis(a) as usize] as i32,
                ))
            }
            Special::SubgroupId => self.builtin(BuiltIn::SubgroupId),
            Special::SubgroupLane => self.builtin(BuiltIn::SubgroupInvocationId),
            Special::SubgroupSize => self.builtin(BuiltIn::SubgroupSize),
        };
        self.cast(raw, ScalarKind::Sint, Some(4))
    }

    fn vector_builtin(&mut self, builtin: BuiltIn, index: u32) -> Expr {
        let base = self.builtin(builtin);
        self.b.expr(Expression::AccessIndex { base, index })
    }

    fn unary(&mut self, op: UnaryOp, a: Value, ty: Type) -> Result<Expr, CodegenError> {
        let x = self.val(a)?;
        let fun = |f| Some(f);
        let math = match op {
            UnaryOp::Abs => fun(MathFunction::Abs),
            UnaryOp::Exp => fun(MathFunction::Exp),
            UnaryOp::Log => fun(MathFunction::Log),
            UnaryOp::Sqrt => fun(MathFunction::Sqrt),
            UnaryOp::Rsqrt => fun(MathFunction::InverseSqrt),
            UnaryOp::Tanh => fun(MathFunction::Tanh),
            UnaryOp::Sin => fun(MathFunction::Sin),
            UnaryOp::Cos => fun(MathFunction::Cos),
            UnaryOp::Floor => fun(MathFunction::Floor),
            UnaryOp::Neg | UnaryOp::Recip => None,
        };
        let e = match (math, op) {
            (Some(f), _) => self.b.math(f, &[x]),
            (None, UnaryOp::Recip) => {
                let one = self.literal(ty.scalar, Literal::F(1.0))?;
                let one = self.splat_lit(one, ty.lanes);
                self.binary(BinaryOperator::Divide, one, x)
            }
            (None, _) if self.repr(ty.scalar).kind == ScalarKind::Uint => {
                let t = self.ty(ty)?;
                let zero = self.b.zero(t);
                self.binary(BinaryOperator::Subtract, zero, x)
            }
            (None, _) => self.b.expr(Expression::Unary {
                op: UnaryOperator::Negate,
                expr: x,
            }),
        };
        Ok(self.wrap8(e, ty))
    }

    fn binary_op(
        &mut self,
        op: BinaryOp,
        a: Value,
        b: Value,
        ty: Type,
    ) -> Result<Expr, CodegenError> {
        let (x, y) = (self.val(a)?, self.val(b)?);
        let boolean = ty.scalar == ScalarType::Bool;
        let op = match op {
            BinaryOp::Add => BinaryOperator::Add,
            BinaryOp::Sub => BinaryOperator::Subtract,
            BinaryOp::Mul => BinaryOperator::Multiply,
            BinaryOp::Div => BinaryOperator::Divide,
            BinaryOp::Rem => BinaryOperator::Modulo,
            BinaryOp::And => BinaryOperator::And,
            BinaryOp::Or => BinaryOperator::InclusiveOr,
            BinaryOp::Xor if boolean => BinaryOperator::NotEqual,
            BinaryOp::Xor => BinaryOperator::ExclusiveOr,
            BinaryOp::Min | BinaryOp::Max => {
                let fun = if op == BinaryOp::Min {
                    MathFunction::Min
                } else {
                    MathFunction::Max
                };
                return Ok(self.b.math(fun, &[x, y]));
            }
            BinaryOp::Shl | BinaryOp::Shr => {
                // naga shifts by a `u32`; like WGSL (and Cranelift), the amount is taken modulo
                // the 32-bit width.
                let amount = self.cast(y, ScalarKind::Uint, None);
                let mask = self.splat_lit(NagaLiteral::U32(31), ty.lanes);
                let amount = self.binary(BinaryOperator::And, amount, mask);
                let op = if op == BinaryOp::Shl {
                    BinaryOperator::ShiftLeft
                } else {
                    BinaryOperator::ShiftRight
                };
                let e = self.binary(op, x, amount);
                return Ok(self.wrap8(e, ty));
            }
        };
        let e = self.binary(op, x, y);
        Ok(self.wrap8(e, ty))
    }

    /// Brings an 8-bit value computed in 32 bits back to its 8-bit range (identity otherwise).
    fn wrap8(&mut self, e: Expr, ty: Type) -> Expr {
        match ty.scalar {
            ScalarType::U8 => {
                let mask = self.splat_lit(NagaLiteral::U32(0xff), ty.lanes);
                self.binary(BinaryOperator::And, e, mask)
            }
            ScalarType::I8 => {
                let shift = self.splat_lit(NagaLiteral::U32(24), ty.lanes);
                let up = self.binary(BinaryOperator::ShiftLeft, e, shift);
                self.binary(BinaryOperator::ShiftRight, up, shift)
            }
            _ => e,
        }
    }

    fn reduce(&mut self, op: ReduceOp, a: Expr, b: Expr) -> Expr {
        match op {
            ReduceOp::Add => self.binary(BinaryOperator::Add, a, b),
            ReduceOp::Max => self.b.math(MathFunction::Max, &[a, b]),
            ReduceOp::Min => self.b.math(MathFunction::Min, &[a, b]),
        }
    }

    /// `Cast`: converts lane by lane, then restores the target's meaning (8-bit wrap, `f16`
    /// rounding with `quantizeToF16`).
    fn convert(&mut self, a: Value, to: Type) -> Result<Expr, CodegenError> {
        let from = self.type_of(a);
        let x = self.val(a)?;
        if to.scalar == ScalarType::Bool {
            let t = self.ty(from)?;
            let zero = self.b.zero(t);
            return Ok(self.binary(BinaryOperator::NotEqual, x, zero));
        }
        let target = self.repr(to.scalar);
        let e = if self.repr(from.scalar) == target {
            x
        } else {
            self.cast(x, target.kind, Some(target.width))
        };
        match to.scalar {
            ScalarType::F16 if from.scalar != ScalarType::F16 && !self.half => {
                Ok(self.b.math(MathFunction::QuantizeToF16, &[e]))
            }
            ScalarType::Bf16 if from.scalar != ScalarType::Bf16 => Err(self.unsupported(format!(
                "cast of %{} to bf16 (bf16 is read-only on Vulkan)",
                a.0
            ))),
            _ => Ok(self.wrap8(e, to)),
        }
    }

    /// `e`, an `f32` (or vector of them) holding a value of `scalar`, in `scalar`'s
    /// representation: converted to naga `f16` for an `f16` on a `half` device, as is otherwise.
    fn narrow_float(&mut self, e: Expr, scalar: ScalarType) -> Expr {
        match scalar {
            ScalarType::F16 if self.half => self.cast(e, ScalarKind::Float, Some(2)),
            _ => e,
        }
    }

    /// One value of type `ty` from its lanes.
    fn gather(&mut self, lanes: Vec<Expr>, ty: Type) -> Result<Expr, CodegenError> {
        if ty.lanes == 1 {
            return Ok(lanes[0]);
        }
        let t = self.ty(ty)?;
        Ok(self.b.compose(t, lanes))
    }

    /// `Bitcast`: a naga bitcast between 32-bit lanes, or through one packed `u32` word for
    /// `u8x4`, `i8x4` and `f16x2`.
    fn bitcast(&mut self, a: Value, to: Type) -> Result<Expr, CodegenError> {
        let from = self.type_of(a);
        let x = self.val(a)?;
        let word = |t: Type| t.scalar.bytes() == 4 && t.scalar != ScalarType::I64;
        if from.lanes == to.lanes && word(from) && word(to) {
            let target = self.repr(to.scalar);
            return Ok(if self.repr(from.scalar) == target {
                x
            } else {
                self.cast(x, target.kind, None)
            });
        }
        let what = format!(
            "bitcast of %{}: {from} to {to} (32-bit lanes, u8x4, i8x4 and f16x2 only)",
            a.0
        );
        let pack = match (from.scalar, from.lanes) {
            (_, 1) if word(from) => None,
            (ScalarType::U8, 4) => Some(MathFunction::Pack4xU8),
            (ScalarType::I8, 4) => Some(MathFunction::Pack4xI8),
            (ScalarType::F16, 2) => Some(MathFunction::Pack2x16float),
            _ => return Err(self.unsupported(what)),
        };
        let bits = match pack {
            Some(MathFunction::Pack2x16float) if self.half => {
                let wide = self.cast(x, ScalarKind::Float, Some(4));
                self.b.math(MathFunction::Pack2x16float, &[wide])
            }
            Some(f) => self.b.math(f, &[x]),
            None => self.cast(x, ScalarKind::Uint, None),
        };
        match (to.scalar, to.lanes) {
            (_, 1) if word(to) => Ok(self.cast(bits, self.repr(to.scalar).kind, None)),
            (ScalarType::U8, 4) => Ok(self.b.math(MathFunction::Unpack4xU8, &[bits])),
            (ScalarType::I8, 4) => Ok(self.b.math(MathFunction::Unpack4xI8, &[bits])),
            (ScalarType::F16, 2) => {
                let wide = self.b.math(MathFunction::Unpack2x16float, &[bits]);
                Ok(self.narrow_float(wide, ScalarType::F16))
            }
            _ => Err(self.unsupported(what)),
        }
    }

    fn intrinsic(&mut self, i: &Intrinsic, args: &[Value], ty: Type) -> Result<Expr, CodegenError> {
        let vals = args
            .iter()
            .map(|&a| self.val(a))
            .collect::<Result<Vec<_>, _>>()?;
        match (i, vals.as_slice()) {
            (Intrinsic::SubgroupReduce(op), &[x]) => {
                let op = match op {
                    ReduceOp::Add => SubgroupOperation::Add,
                    ReduceOp::Max => SubgroupOperation::Max,
                    ReduceOp::Min => SubgroupOperation::Min,
                };
                let t = self.ty(ty)?;
                Ok(self.b.subgroup_reduce(op, x, t))
            }
            (Intrinsic::SubgroupBroadcast, &[x, _]) => {
                let lane = self.index_u32(args[1])?;
                let t = self.ty(ty)?;
                Ok(self.b.subgroup_shuffle(x, lane, t))
            }
            (Intrinsic::Dot4I8Packed | Intrinsic::Dot4U8I8Packed, &[a, b, acc]) => {
                let lanes = (0..ty.lanes)
                    .map(|l| {
                        let (a, b, acc) = (
                            self.lane(a, ty.lanes, l),
                            self.lane(b, ty.lanes, l),
                            self.lane(acc, ty.lanes, l),
                        );
                        let dot = self.dot4(i, a, b);
                        self.binary(BinaryOperator::Add, acc, dot)
                    })
                    .collect();
                self.gather(lanes, ty)
            }
            _ => Err(self.unsupported(format!("intrinsic {i:?}"))),
        }
    }

    /// The packed 4×8-bit dot product of `u32` words `a` and `b`, as an `i32`.
    fn dot4(&mut self, i: &Intrinsic, a: Expr, b: Expr) -> Expr {
        if matches!(i, Intrinsic::Dot4I8Packed) {
            return self.b.math(MathFunction::Dot4I8Packed, &[a, b]);
        }
        let ua = self.b.math(MathFunction::Unpack4xU8, &[a]);
        let ua = self.cast(ua, ScalarKind::Sint, Some(4));
        let sb = self.b.math(MathFunction::Unpack4xI8, &[b]);
        self.b.math(MathFunction::Dot, &[ua, sb])
    }
}
