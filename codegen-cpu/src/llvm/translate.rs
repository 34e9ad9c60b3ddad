//! LIR → LLVM IR: one kernel into one module, as the exported function with the ABI documented on
//! [`crate::CompiledKernel`] and the body it calls.
//!
//! The exported function only loads the buffer bases from the `buffers` table and calls the body,
//! an internal `alwaysinline` function that takes each base as its own pointer param. Params give
//! LLVM what a table of pointers cannot: a buffer the kernel only reads ([`Access::Read`]) is
//! `noalias readonly`, sound because a launch never writes a buffer a kernel only reads (the
//! contract of [`crate::CompiledKernel::run_groups`]); the scalar and group tables are too. When
//! the body is inlined LLVM keeps these facts as alias scopes, so stores to the output do not
//! force reloads of weights, scalars or group ids.
//!
//! Representation: a LIR value is one LLVM value. Scalars map to `float`, `i32` (also `u32`),
//! `i64`, `i8` (also `u8`), `i1` (`bool`) and `i16` (the bits of `f16`/`bf16`, storage-only);
//! vectors of any lane count to LLVM vectors of those (`<n x i1>` for `bool`), which LLVM splits
//! or widens to the host's registers. A `bool` in memory is a byte, 0 or 1. Semantics match the
//! Cranelift translator: integer shifts take their amount modulo the lane width, float `Min`/`Max`
//! propagate NaN (`llvm.minimum`/`llvm.maximum`), float-to-integer casts saturate like Rust's
//! `as`, and `f16`/`bf16` widen exactly with integer arithmetic (no libcall). Integer division by
//! zero is undefined behaviour here (it traps under Cranelift); templates never divide by zero.

use super::Failure;
use crate::llvm::host::Host;
use crate::rules::{
    is_signed, memory_type_error, special_source, SpecialSource, BARRIER_UNSUPPORTED,
};
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic as LlvmIntrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType, BasicTypeEnum, VectorType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FastMathFlags, FunctionValue,
    InstructionOpcode, IntValue, PointerValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};
use tessera_ir::lir::{
    Access, BinaryOp, BufRef, Carried, CmpOp, Inst, Intrinsic, Kernel, Literal, ReduceOp,
    ScalarType, Special, Stmt, Type, UnaryOp, Value,
};

pub(super) type Result<T> = std::result::Result<T, Failure>;

/// The name of the body function the exported kernel function calls.
fn body_name(k: &Kernel) -> String {
    format!("{}.body", k.name)
}

/// Adds the exported function named like kernel `k` (whose address is the [`crate::CompiledKernel`]
/// entry) and its body to `module`, with `host`'s target attributes on both.
pub(super) fn translate<'ctx>(
    cx: &'ctx Context,
    module: &Module<'ctx>,
    k: &Kernel,
    host: &Host,
) -> Result<()> {
    let ptr = cx.ptr_type(AddressSpace::default());
    let void = cx.void_type();
    let abi = module.add_function(
        &k.name,
        void.fn_type(&[ptr.into(); 4], false),
        Some(Linkage::External),
    );
    let body_params: Vec<BasicMetadataTypeEnum> = vec![ptr.into(); k.buffers.len() + 3];
    let body = module.add_function(
        &body_name(k),
        void.fn_type(&body_params, false),
        Some(Linkage::Internal),
    );
    let enum_attribute =
        |name: &str| cx.create_enum_attribute(Attribute::get_named_enum_kind_id(name), 0);
    for f in [abi, body] {
        for a in host.function_attributes(cx) {
            f.add_attribute(AttributeLoc::Function, a);
        }
        f.add_attribute(AttributeLoc::Function, enum_attribute("nounwind"));
    }
    body.add_attribute(AttributeLoc::Function, enum_attribute("alwaysinline"));
    let read_only = k
        .buffers
        .iter()
        .map(|b| b.access == Access::Read)
        .chain([true; 3]);
    for (i, only_read) in read_only.enumerate() {
        let at = AttributeLoc::Param(i as u32);
        body.add_attribute(at, enum_attribute("nocapture"));
        if only_read {
            body.add_attribute(at, enum_attribute("noalias"));
            body.add_attribute(at, enum_attribute("readonly"));
        }
    }
    call_body(cx, k, abi, body)?;

    let b = cx.create_builder();
    b.position_at_end(cx.append_basic_block(body, "entry"));
    let params: Vec<PointerValue> = body
        .get_param_iter()
        .map(|p| p.into_pointer_value())
        .collect();
    let [scalars, group_id, num_groups] = params[k.buffers.len()..] else {
        return Err(Failure::Llvm(
            "the body takes the buffers and three tables".into(),
        ));
    };
    let locals = k
        .locals
        .iter()
        .map(|l| {
            let array = mem_type(cx, l.elem).array_type(l.len);
            let slot = b.build_alloca(array, &l.name)?;
            slot.as_instruction()
                .map(|i| i.set_alignment(16))
                .transpose()
                .map_err(|e| Failure::Llvm(e.to_string()))?;
            Ok(slot)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut t = Translator {
        k,
        host,
        cx,
        module,
        b,
        vals: vec![None; k.values.len()],
        bases: params[..k.buffers.len()].to_vec(),
        locals,
        scalars,
        group_id,
        num_groups,
        function: body,
    };
    t.block(&k.body)?;
    t.b.build_return(None)?;
    Ok(())
}

/// The exported function's body: load each buffer base from the table, call the body.
fn call_body<'ctx>(
    cx: &'ctx Context,
    k: &Kernel,
    abi: FunctionValue<'ctx>,
    body: FunctionValue<'ctx>,
) -> Result<()> {
    let b = cx.create_builder();
    b.position_at_end(cx.append_basic_block(abi, "entry"));
    let ptr = cx.ptr_type(AddressSpace::default());
    let [buffers, scalars, group_id, num_groups] =
        [0, 1, 2, 3].map(|i| abi.get_nth_param(i).map(|p| p.into_pointer_value()));
    let missing = || Failure::Llvm("the kernel function has four params".into());
    let buffers = buffers.ok_or_else(missing)?;
    let mut args: Vec<BasicMetadataValueEnum> = Vec::with_capacity(k.buffers.len() + 3);
    for (i, p) in k.buffers.iter().enumerate() {
        let index = cx.i64_type().const_int(i as u64, false);
        // SAFETY: `buffers` points at one pointer per buffer param (the ABI).
        let at = unsafe { b.build_in_bounds_gep(ptr, buffers, &[index], "")? };
        let base = b.build_load(ptr, at, &p.name)?;
        set_alignment(base, 8)?;
        args.push(base.into());
    }
    for table in [scalars, group_id, num_groups] {
        args.push(table.ok_or_else(missing)?.into());
    }
    b.build_call(body, &args, "")?;
    b.build_return(None)?;
    Ok(())
}

/// How a buffer element lies in memory: a `bool` is a byte, a half its 16 bits.
fn mem_type(cx: &Context, s: ScalarType) -> BasicTypeEnum<'_> {
    match s {
        ScalarType::Bool => cx.i8_type().into(),
        _ => scalar_type(cx, s),
    }
}

/// The LLVM type of one lane of scalar type `s`.
fn scalar_type(cx: &Context, s: ScalarType) -> BasicTypeEnum<'_> {
    match s {
        ScalarType::F32 => cx.f32_type().into(),
        ScalarType::I32 | ScalarType::U32 => cx.i32_type().into(),
        ScalarType::I64 => cx.i64_type().into(),
        ScalarType::U8 | ScalarType::I8 => cx.i8_type().into(),
        ScalarType::Bool => cx.bool_type().into(),
        // Storage only (the verifier allows no arithmetic on them): held as their bits.
        ScalarType::F16 | ScalarType::Bf16 => cx.i16_type().into(),
    }
}

/// The width of an integer lane as LLVM holds it (`bool` is one bit).
fn int_bits(s: ScalarType) -> u32 {
    match s {
        ScalarType::Bool => 1,
        _ => s.bytes() * 8,
    }
}

/// The alignment of a load or store through a buffer of `elem`s: a `u8` buffer is
/// byte-addressed memory and promises nothing, the others their element size.
fn alignment(elem: ScalarType) -> u32 {
    match elem {
        ScalarType::U8 => 1,
        _ => elem.bytes(),
    }
}

fn set_alignment(v: BasicValueEnum, align: u32) -> Result<()> {
    v.as_instruction_value()
        .ok_or_else(|| Failure::Llvm("a load folded to a constant".into()))?
        .set_alignment(align)
        .map_err(|e| Failure::Llvm(e.to_string()))
}

pub(super) struct Translator<'ctx, 'a> {
    pub(super) k: &'a Kernel,
    pub(super) host: &'a Host,
    pub(super) cx: &'ctx Context,
    module: &'a Module<'ctx>,
    pub(super) b: Builder<'ctx>,
    /// The LLVM value of each LIR value defined so far.
    vals: Vec<Option<BasicValueEnum<'ctx>>>,
    /// Base addresses of the buffer params and of the locals (stack arrays).
    bases: Vec<PointerValue<'ctx>>,
    locals: Vec<PointerValue<'ctx>>,
    scalars: PointerValue<'ctx>,
    group_id: PointerValue<'ctx>,
    num_groups: PointerValue<'ctx>,
    function: FunctionValue<'ctx>,
}

impl<'ctx> Translator<'ctx, '_> {
    fn ty(&self, v: Value) -> Type {
        self.k.values[v.index()]
    }

    pub(super) fn val(&self, v: Value) -> Result<BasicValueEnum<'ctx>> {
        self.vals[v.index()]
            .ok_or_else(|| Failure::Llvm(format!("%{} is used before it is defined", v.0)))
    }

    pub(super) fn llvm_type(&self, t: Type) -> BasicTypeEnum<'ctx> {
        let lane = scalar_type(self.cx, t.scalar);
        if t.lanes == 1 {
            lane
        } else {
            vector_of(lane, t.lanes).into()
        }
    }

    /// A constant of type `t` (splat over its lanes): `int` for integers and `bool`s, `float`
    /// for floats.
    pub(super) fn constant(&self, t: Type, int: i64, float: f64) -> BasicValueEnum<'ctx> {
        let lane: BasicValueEnum = match scalar_type(self.cx, t.scalar) {
            BasicTypeEnum::FloatType(f) => f.const_float(float).into(),
            lane => {
                let bits = int_bits(t.scalar);
                let masked = if bits < 64 {
                    int & ((1 << bits) - 1)
                } else {
                    int
                };
                lane.into_int_type().const_int(masked as u64, false).into()
            }
        };
        if t.lanes == 1 {
            return lane;
        }
        let lanes = vec![lane; t.lanes as usize];
        VectorType::const_vector(&lanes).into()
    }

    fn i32_const(&self, v: u32) -> IntValue<'ctx> {
        self.cx.i32_type().const_int(u64::from(v), false)
    }

    fn block(&mut self, stmts: &[Stmt]) -> Result<()> {
        stmts.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&mut self, stmt: &Stmt) -> Result<()> {
        match stmt {
            Stmt::Let(v, inst) => {
                let x = self.inst(inst, self.ty(*v))?;
                self.vals[v.index()] = Some(x);
            }
            Stmt::Store { buf, index, value } => {
                let t = self.ty(*value);
                check_memory_type(t)?;
                let at = self.address(*buf, *index)?;
                let mut x = self.val(*value)?;
                if t.scalar == ScalarType::Bool {
                    x = self
                        .b
                        .build_int_z_extend(x.into_int_value(), self.cx.i8_type(), "")?
                        .into();
                }
                let store = self.b.build_store(at, x)?;
                store
                    .set_alignment(self.access_alignment(*buf))
                    .map_err(|e| Failure::Llvm(e.to_string()))?;
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
            } => self.for_loop(*iv, (*start, *end, *step), carried, body, yields, results)?,
            Stmt::If { cond, then_, else_ } => {
                let then_block = self.cx.append_basic_block(self.function, "then");
                let else_block = self.cx.append_basic_block(self.function, "else");
                let merge = self.cx.append_basic_block(self.function, "endif");
                let c = self.val(*cond)?.into_int_value();
                self.b.build_conditional_branch(c, then_block, else_block)?;
                for (block, stmts) in [(then_block, then_), (else_block, else_)] {
                    self.b.position_at_end(block);
                    self.block(stmts)?;
                    self.b.build_unconditional_branch(merge)?;
                }
                self.b.position_at_end(merge);
            }
            Stmt::Barrier => return Err(Failure::Unsupported(BARRIER_UNSUPPORTED.into())),
        }
        Ok(())
    }

    /// `header: iv, params.. = phi [inits, preheader], [next, yields, latch]` tests `iv < end`
    /// and enters the body or leaves; the results are the header's phis, which the exit sees.
    fn for_loop(
        &mut self,
        iv: Value,
        (start, end, step): (Value, Value, u32),
        carried: &[Carried],
        body: &[Stmt],
        yields: &[Value],
        results: &[Value],
    ) -> Result<()> {
        let preheader = self
            .b
            .get_insert_block()
            .ok_or_else(|| Failure::Llvm("no block to branch from".into()))?;
        let header = self.cx.append_basic_block(self.function, "loop");
        let body_block = self.cx.append_basic_block(self.function, "body");
        let exit = self.cx.append_basic_block(self.function, "done");
        self.b.build_unconditional_branch(header)?;
        self.b.position_at_end(header);
        let iv_type = self.ty(iv);
        let mut phis = vec![];
        for (v, init) in
            std::iter::once((iv, start)).chain(carried.iter().map(|c| (c.param, c.init)))
        {
            let phi = self.b.build_phi(self.llvm_type(self.ty(v)), "")?;
            let init = self.val(init)?;
            phi.add_incoming(&[(&init as &dyn BasicValue, preheader)]);
            self.vals[v.index()] = Some(phi.as_basic_value());
            phis.push(phi);
        }
        let predicate = if is_signed(iv_type.scalar) {
            IntPredicate::SLT
        } else {
            IntPredicate::ULT
        };
        let i = phis[0].as_basic_value().into_int_value();
        let more = self
            .b
            .build_int_compare(predicate, i, self.val(end)?.into_int_value(), "")?;
        self.b.build_conditional_branch(more, body_block, exit)?;

        self.b.position_at_end(body_block);
        self.block(body)?;
        let step = self
            .constant(iv_type, i64::from(step), 0.0)
            .into_int_value();
        let next: BasicValueEnum = self.b.build_int_add(i, step, "")?.into();
        let latch = self
            .b
            .get_insert_block()
            .ok_or_else(|| Failure::Llvm("no block to branch back from".into()))?;
        let back = std::iter::once(Ok(next)).chain(yields.iter().map(|&y| self.val(y)));
        for (phi, value) in phis.iter().zip(back) {
            let value = value?;
            phi.add_incoming(&[(&value as &dyn BasicValue, latch)]);
        }
        self.b.build_unconditional_branch(header)?;

        self.b.position_at_end(exit);
        for (r, phi) in results.iter().zip(&phis[1..]) {
            self.vals[r.index()] = Some(phi.as_basic_value());
        }
        Ok(())
    }

    fn inst(&self, inst: &Inst, ty: Type) -> Result<BasicValueEnum<'ctx>> {
        Ok(match inst {
            Inst::Const(lit) => match *lit {
                _ if matches!(ty.scalar, ScalarType::F16 | ScalarType::Bf16) => {
                    return Err(Failure::Unsupported(format!(
                        "constant of type {} (a storage type)",
                        ty.scalar.name()
                    )))
                }
                Literal::F(f) => self.constant(ty, 0, f64::from(f as f32)),
                Literal::I(i) => self.constant(ty, i, 0.0),
                Literal::Bool(v) => self.constant(ty, i64::from(v), 0.0),
            },
            Inst::Param(i) => self.param(*i, ty.scalar)?,
            Inst::Special(s) => self.special(*s)?,
            Inst::Unary(op, a) => self.unary(*op, self.val(*a)?, ty)?,
            Inst::Binary(op, a, b) => self.binary(*op, ty, self.val(*a)?, self.val(*b)?)?,
            Inst::Fma(a, b, c) => {
                let args = [self.val(*a)?, self.val(*b)?, self.val(*c)?];
                self.call("llvm.fma", &[self.llvm_type(ty)], &args)?
            }
            Inst::Cmp(op, a, b) => {
                self.compare(*op, self.ty(*a).scalar, self.val(*a)?, self.val(*b)?)?
            }
            Inst::Select(c, a, b) => {
                let (m, x, y) = (self.val(*c)?, self.val(*a)?, self.val(*b)?);
                match m {
                    BasicValueEnum::VectorValue(m) => self.b.build_select(m, x, y, "")?,
                    m => self.b.build_select(m.into_int_value(), x, y, "")?,
                }
            }
            Inst::Cast(to, a) => self.cast(self.ty(*a).scalar, *to, self.val(*a)?)?,
            Inst::Bitcast(to, a) => {
                let (x, target) = (self.val(*a)?, self.llvm_type(*to));
                if x.get_type() == target {
                    x
                } else {
                    self.b.build_bit_cast(x, target, "")?
                }
            }
            Inst::Splat(to, a) => self.splat(self.val(*a)?, to.lanes)?,
            Inst::Extract(a, lane) => {
                let x = self.val(*a)?;
                if self.ty(*a).lanes == 1 {
                    x
                } else {
                    self.b.build_extract_element(
                        x.into_vector_value(),
                        self.i32_const(*lane),
                        "",
                    )?
                }
            }
            Inst::Concat(parts) => self.concat(parts, ty)?,
            Inst::ReduceLanes(op, a) => self.reduce(*op, self.ty(*a), self.val(*a)?)?,
            Inst::Load { buf, index, ty } => {
                check_memory_type(*ty)?;
                let at = self.address(*buf, *index)?;
                let memory = match ty.scalar {
                    ScalarType::Bool => self.cx.i8_type().into(),
                    _ => self.llvm_type(*ty),
                };
                let x = self.b.build_load(memory, at, "")?;
                set_alignment(x, self.access_alignment(*buf))?;
                if ty.scalar == ScalarType::Bool {
                    let zero = self.cx.i8_type().const_zero();
                    self.b
                        .build_int_compare(IntPredicate::NE, x.into_int_value(), zero, "")?
                        .into()
                } else {
                    x
                }
            }
            Inst::Intrinsic(i @ (Intrinsic::Dot4I8Packed | Intrinsic::Dot4U8I8Packed), args) => {
                let [a, b, acc] = [args[0], args[1], args[2]].map(|v| self.val(v));
                self.dot4([a?, b?, acc?], *i == Intrinsic::Dot4U8I8Packed, ty.lanes)?
            }
            Inst::Intrinsic(i, _) => {
                return Err(Failure::Unsupported(format!("intrinsic {:?}", i.kind())))
            }
        })
    }

    /// Calls LLVM intrinsic `name`, overloaded on `overloads` (none for a fixed signature).
    pub(super) fn call(
        &self,
        name: &str,
        overloads: &[BasicTypeEnum<'ctx>],
        args: &[BasicValueEnum<'ctx>],
    ) -> Result<BasicValueEnum<'ctx>> {
        let declaration = LlvmIntrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, overloads))
            .ok_or_else(|| {
                Failure::Llvm(format!("LLVM has no intrinsic {name} for {overloads:?}"))
            })?;
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        self.b
            .build_call(declaration, &args, "")?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| Failure::Llvm(format!("{name} returns nothing")))
    }

    /// Scalar param `i`: the ABI passes every scalar as an `i64` (an `f32` as its bits).
    fn param(&self, i: usize, s: ScalarType) -> Result<BasicValueEnum<'ctx>> {
        let raw = self.load_i64(self.scalars, i)?;
        Ok(match s {
            ScalarType::I64 => raw.into(),
            ScalarType::Bool => self
                .b
                .build_int_compare(IntPredicate::NE, raw, raw.get_type().const_zero(), "")?
                .into(),
            ScalarType::F32 => {
                let bits = self.b.build_int_truncate(raw, self.cx.i32_type(), "")?;
                self.b.build_bit_cast(bits, self.cx.f32_type(), "")?
            }
            _ => self
                .b
                .build_int_truncate(raw, scalar_type(self.cx, s).into_int_type(), "")?
                .into(),
        })
    }

    /// `table[i]` of an `i64` table.
    fn load_i64(&self, table: PointerValue<'ctx>, i: usize) -> Result<IntValue<'ctx>> {
        let i64_type = self.cx.i64_type();
        let index = i64_type.const_int(i as u64, false);
        // SAFETY: the ABI's tables hold every entry a verified kernel reads.
        let at = unsafe { self.b.build_in_bounds_gep(i64_type, table, &[index], "")? };
        let x = self.b.build_load(i64_type, at, "")?;
        set_alignment(x, 8)?;
        Ok(x.into_int_value())
    }

    fn special(&self, s: Special) -> Result<BasicValueEnum<'ctx>> {
        Ok(match special_source(s).map_err(Failure::Unsupported)? {
            SpecialSource::Table { num_groups, axis } => {
                let table = if num_groups {
                    self.num_groups
                } else {
                    self.group_id
                };
                self.load_i64(table, axis)?.into()
            }
            SpecialSource::Const(c) => self.constant(Type::scalar(ScalarType::I64), c, 0.0),
        })
    }

    fn unary(
        &self,
        op: UnaryOp,
        x: BasicValueEnum<'ctx>,
        ty: Type,
    ) -> Result<BasicValueEnum<'ctx>> {
        let t = self.llvm_type(ty);
        let float = ty.scalar.is_float();
        let math = |name: &str| self.call(name, &[t], &[x]);
        Ok(match op {
            UnaryOp::Neg if float => match x {
                BasicValueEnum::VectorValue(v) => self.b.build_float_neg(v, "")?.into(),
                x => self.b.build_float_neg(x.into_float_value(), "")?.into(),
            },
            UnaryOp::Neg => self
                .b
                .build_binop(InstructionOpcode::Sub, t.const_zero(), x, "")?,
            UnaryOp::Abs if float => math("llvm.fabs")?,
            UnaryOp::Abs if is_signed(ty.scalar) => {
                let int_min_is_poison = self.cx.bool_type().const_zero().into();
                self.call("llvm.abs", &[t], &[x, int_min_is_poison])?
            }
            UnaryOp::Abs => x,
            UnaryOp::Sqrt => math("llvm.sqrt")?,
            UnaryOp::Floor => math("llvm.floor")?,
            UnaryOp::Exp => math("llvm.exp")?,
            UnaryOp::Log => math("llvm.log")?,
            UnaryOp::Tanh => math("llvm.tanh")?,
            UnaryOp::Sin => math("llvm.sin")?,
            UnaryOp::Cos => math("llvm.cos")?,
            UnaryOp::Rsqrt => {
                let root = math("llvm.sqrt")?;
                self.b
                    .build_binop(InstructionOpcode::FDiv, self.constant(ty, 0, 1.0), root, "")?
            }
            UnaryOp::Recip => {
                self.b
                    .build_binop(InstructionOpcode::FDiv, self.constant(ty, 0, 1.0), x, "")?
            }
        })
    }

    /// `a op b` on values of type `ty`.
    fn binary(
        &self,
        op: BinaryOp,
        ty: Type,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        use InstructionOpcode as O;
        let t = [self.llvm_type(ty)];
        let signed = is_signed(ty.scalar);
        let opcode = if ty.scalar.is_float() {
            match op {
                BinaryOp::Add => O::FAdd,
                BinaryOp::Sub => O::FSub,
                BinaryOp::Mul => O::FMul,
                BinaryOp::Div => O::FDiv,
                BinaryOp::Rem => O::FRem,
                BinaryOp::Min => return self.call("llvm.minimum", &t, &[a, b]),
                BinaryOp::Max => return self.call("llvm.maximum", &t, &[a, b]),
                BinaryOp::And | BinaryOp::Or | BinaryOp::Xor | BinaryOp::Shl | BinaryOp::Shr => {
                    return Err(Failure::Llvm(format!("{op:?} on floats")))
                }
            }
        } else {
            match op {
                BinaryOp::Add => O::Add,
                BinaryOp::Sub => O::Sub,
                BinaryOp::Mul => O::Mul,
                BinaryOp::Div if signed => O::SDiv,
                BinaryOp::Div => O::UDiv,
                BinaryOp::Rem if signed => O::SRem,
                BinaryOp::Rem => O::URem,
                BinaryOp::Min if signed => return self.call("llvm.smin", &t, &[a, b]),
                BinaryOp::Min => return self.call("llvm.umin", &t, &[a, b]),
                BinaryOp::Max if signed => return self.call("llvm.smax", &t, &[a, b]),
                BinaryOp::Max => return self.call("llvm.umax", &t, &[a, b]),
                BinaryOp::And => O::And,
                BinaryOp::Or => O::Or,
                BinaryOp::Xor => O::Xor,
                BinaryOp::Shl | BinaryOp::Shr => {
                    // Cranelift's (and the hardware's) shift: the amount modulo the lane width.
                    let mask = self.constant(ty, i64::from(int_bits(ty.scalar) - 1), 0.0);
                    let amount = self.b.build_binop(O::And, b, mask, "")?;
                    let opcode = match op {
                        BinaryOp::Shl => O::Shl,
                        _ if signed => O::AShr,
                        _ => O::LShr,
                    };
                    return Ok(self.b.build_binop(opcode, a, amount, "")?);
                }
            }
        };
        Ok(self.b.build_binop(opcode, a, b, "")?)
    }

    /// A comparison, lane by lane for vectors (`<n x i1>`).
    fn compare(
        &self,
        op: CmpOp,
        s: ScalarType,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        if s.is_float() {
            let p = match op {
                CmpOp::Eq => FloatPredicate::OEQ,
                CmpOp::Ne => FloatPredicate::UNE,
                CmpOp::Lt => FloatPredicate::OLT,
                CmpOp::Le => FloatPredicate::OLE,
                CmpOp::Gt => FloatPredicate::OGT,
                CmpOp::Ge => FloatPredicate::OGE,
            };
            return self.float_compare(p, a, b);
        }
        let p = match (op, is_signed(s)) {
            (CmpOp::Eq, _) => IntPredicate::EQ,
            (CmpOp::Ne, _) => IntPredicate::NE,
            (CmpOp::Lt, true) => IntPredicate::SLT,
            (CmpOp::Le, true) => IntPredicate::SLE,
            (CmpOp::Gt, true) => IntPredicate::SGT,
            (CmpOp::Ge, true) => IntPredicate::SGE,
            (CmpOp::Lt, false) => IntPredicate::ULT,
            (CmpOp::Le, false) => IntPredicate::ULE,
            (CmpOp::Gt, false) => IntPredicate::UGT,
            (CmpOp::Ge, false) => IntPredicate::UGE,
        };
        self.int_compare(p, a, b)
    }

    pub(super) fn int_compare(
        &self,
        p: IntPredicate,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        Ok(match (a, b) {
            (BasicValueEnum::VectorValue(a), BasicValueEnum::VectorValue(b)) => {
                self.b.build_int_compare(p, a, b, "")?.into()
            }
            (a, b) => self
                .b
                .build_int_compare(p, a.into_int_value(), b.into_int_value(), "")?
                .into(),
        })
    }

    fn float_compare(
        &self,
        p: FloatPredicate,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        Ok(match (a, b) {
            (BasicValueEnum::VectorValue(a), BasicValueEnum::VectorValue(b)) => {
                self.b.build_float_compare(p, a, b, "")?.into()
            }
            (a, b) => self
                .b
                .build_float_compare(p, a.into_float_value(), b.into_float_value(), "")?
                .into(),
        })
    }

    /// Converts each lane like Rust's `as` (float to integer truncates and saturates at the
    /// `i32`/`u32`/`i64` range, then wraps to 8 bits); `bool` results are `x != 0`; halves widen
    /// to `f32` only.
    fn cast(
        &self,
        from: ScalarType,
        to: Type,
        x: BasicValueEnum<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        use InstructionOpcode as O;
        let target = self.llvm_type(to);
        let like = |s: ScalarType| Type::vector(s, to.lanes);
        let half = |s: ScalarType| matches!(s, ScalarType::F16 | ScalarType::Bf16);
        if half(from) || half(to.scalar) {
            return match (from, to.scalar) {
                (ScalarType::F16, ScalarType::F32) => self.f16_to_f32(x, to.lanes),
                (ScalarType::Bf16, ScalarType::F32) => {
                    let wide =
                        self.b
                            .build_cast(O::ZExt, x, self.llvm_type(like(ScalarType::I32)), "")?;
                    let sixteen = self.constant(like(ScalarType::I32), 16, 0.0);
                    let bits = self.b.build_binop(O::Shl, wide, sixteen, "")?;
                    Ok(self.b.build_bit_cast(bits, target, "")?)
                }
                _ => Err(Failure::Unsupported(format!(
                    "cast from {} to {} (half precision widens to f32 only)",
                    from.name(),
                    to.scalar.name()
                ))),
            };
        }
        let zero = |s: ScalarType| self.constant(like(s), 0, 0.0);
        Ok(match (from.is_float(), to.scalar.is_float()) {
            (true, true) => x,
            (false, true) => {
                let op = if is_signed(from) {
                    O::SIToFP
                } else {
                    O::UIToFP
                };
                self.b.build_cast(op, x, target, "")?
            }
            (true, false) if to.scalar == ScalarType::Bool => {
                self.float_compare(FloatPredicate::UNE, x, zero(from))?
            }
            (true, false) => {
                let wide = if to.scalar == ScalarType::I64 {
                    ScalarType::I64
                } else {
                    ScalarType::I32
                };
                let name = if is_signed(to.scalar) {
                    "llvm.fptosi.sat"
                } else {
                    "llvm.fptoui.sat"
                };
                let wide_type = self.llvm_type(like(wide));
                let converted = self.call(name, &[wide_type, x.get_type()], &[x])?;
                self.int_resize(converted, wide, to)?
            }
            (false, false) if to.scalar == ScalarType::Bool => {
                self.int_compare(IntPredicate::NE, x, zero(from))?
            }
            (false, false) => self.int_resize(x, from, to)?,
        })
    }

    /// Truncates or extends (by `from`'s signedness) integer or `bool` lanes to `to`'s width.
    fn int_resize(
        &self,
        x: BasicValueEnum<'ctx>,
        from: ScalarType,
        to: Type,
    ) -> Result<BasicValueEnum<'ctx>> {
        use InstructionOpcode as O;
        let op = match int_bits(from).cmp(&int_bits(to.scalar)) {
            std::cmp::Ordering::Greater => O::Trunc,
            std::cmp::Ordering::Less if is_signed(from) => O::SExt,
            std::cmp::Ordering::Less => O::ZExt,
            std::cmp::Ordering::Equal => return Ok(x),
        };
        Ok(self.b.build_cast(op, x, self.llvm_type(to), "")?)
    }

    /// The `f32` lanes of IEEE half bits `h` (`i16` lanes), exactly. On hosts that convert
    /// halves in hardware (x86 F16C's `vcvtph2ps`, Arm's `fcvtl`) an `fpext` of the bits as
    /// `half`; elsewhere as the Cranelift translator computes them (an `fpext` would become a
    /// libcall the JIT cannot resolve): exponent and mantissa shifted into place and rescaled by
    /// 2^112 (which also normalizes subnormals); infinities and NaNs, whose exponent the
    /// rescaling would not reach, are rebuilt with the `f32` exponent.
    fn f16_to_f32(&self, h: BasicValueEnum<'ctx>, lanes: u32) -> Result<BasicValueEnum<'ctx>> {
        use InstructionOpcode as O;
        let floats = Type::vector(ScalarType::F32, lanes);
        if self.host.has("f16c") || self.host.has("fp-armv8") {
            let half = self.cx.f16_type();
            let halves: BasicTypeEnum = if lanes == 1 {
                half.into()
            } else {
                half.vec_type(lanes).into()
            };
            let h = self.b.build_bit_cast(h, halves, "")?;
            return Ok(self.b.build_cast(O::FPExt, h, self.llvm_type(floats), "")?);
        }
        let (ints, floats) = (
            Type::vector(ScalarType::I32, lanes),
            Type::vector(ScalarType::F32, lanes),
        );
        let int = |v: i64| self.constant(ints, v, 0.0);
        let h = self.b.build_cast(O::ZExt, h, self.llvm_type(ints), "")?;
        let sign = self.b.build_binop(O::And, h, int(0x8000), "")?;
        let sign = self.b.build_binop(O::Shl, sign, int(16), "")?;
        let magnitude = self.b.build_binop(O::And, h, int(0x7fff), "")?;
        let shifted = self.b.build_binop(O::Shl, magnitude, int(13), "")?;
        let as_float = self.b.build_bit_cast(shifted, self.llvm_type(floats), "")?;
        let scale = self.constant(floats, 0, 2f64.powi(112));
        let finite = self.b.build_binop(O::FMul, as_float, scale, "")?;
        let finite = self.b.build_bit_cast(finite, self.llvm_type(ints), "")?;
        let special = self.b.build_binop(O::Or, shifted, int(0x7f80_0000), "")?;
        let is_special = self.int_compare(IntPredicate::UGE, magnitude, int(0x7c00))?;
        let bits = match is_special {
            BasicValueEnum::VectorValue(c) => self.b.build_select(c, special, finite, "")?,
            c => self
                .b
                .build_select(c.into_int_value(), special, finite, "")?,
        };
        let bits = self.b.build_binop(O::Or, bits, sign, "")?;
        Ok(self.b.build_bit_cast(bits, self.llvm_type(floats), "")?)
    }

    /// Scalar `x` broadcast to `lanes` lanes.
    pub(super) fn splat(
        &self,
        x: BasicValueEnum<'ctx>,
        lanes: u32,
    ) -> Result<BasicValueEnum<'ctx>> {
        let vector = vector_of(x.get_type(), lanes);
        let poison = vector.get_poison();
        let one = self
            .b
            .build_insert_element(poison, x, self.i32_const(0), "")?;
        let mask = self.cx.i32_type().vec_type(lanes).const_zero();
        Ok(self.b.build_shuffle_vector(one, poison, mask, "")?.into())
    }

    /// `parts` joined into one vector of type `to`. Equal vectors, a power of two of them, join
    /// pairwise with `shufflevector` (what the backend turns into `vinserti128`-style inserts
    /// of whole registers); any other mix is built lane by lane, which LLVM folds into shuffles.
    fn concat(&self, parts: &[Value], to: Type) -> Result<BasicValueEnum<'ctx>> {
        let first = self.ty(parts[0]);
        if parts.len() == 1 {
            return self.val(parts[0]);
        }
        if first.lanes > 1
            && parts.len().is_power_of_two()
            && parts.iter().all(|&p| self.ty(p) == first)
        {
            let mut level = parts
                .iter()
                .map(|&p| Ok(self.val(p)?.into_vector_value()))
                .collect::<Result<Vec<_>>>()?;
            let mut lanes = first.lanes;
            while level.len() > 1 {
                let mask: Vec<_> = (0..2 * lanes).map(|l| self.i32_const(l)).collect();
                let mask = VectorType::const_vector(&mask);
                level = level
                    .chunks(2)
                    .map(|pair| Ok(self.b.build_shuffle_vector(pair[0], pair[1], mask, "")?))
                    .collect::<Result<Vec<_>>>()?;
                lanes *= 2;
            }
            return Ok(level[0].into());
        }
        let mut out = self.llvm_type(to).into_vector_type().get_poison();
        let mut at = 0;
        for &p in parts {
            let (x, t) = (self.val(p)?, self.ty(p));
            for lane in 0..t.lanes {
                let x = if t.lanes == 1 {
                    x
                } else {
                    self.b
                        .build_extract_element(x.into_vector_value(), self.i32_const(lane), "")?
                };
                out = self
                    .b
                    .build_insert_element(out, x, self.i32_const(at), "")?;
                at += 1;
            }
        }
        Ok(out.into())
    }

    /// Lanes of `x` (of type `t`) reduced to a scalar. A float sum may add in any order (a
    /// tree rather than lane 0 first) and starts from -0.0, the identity of addition; `Max` and
    /// `Min` propagate NaN like the binary ops.
    fn reduce(
        &self,
        op: ReduceOp,
        t: Type,
        x: BasicValueEnum<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        if t.lanes == 1 {
            return Ok(x);
        }
        let v = [x.get_type()];
        if t.scalar.is_float() {
            return match op {
                ReduceOp::Add => {
                    let start = self.constant(Type::scalar(t.scalar), 0, -0.0);
                    let sum = self.call("llvm.vector.reduce.fadd", &v, &[start, x])?;
                    sum.as_instruction_value()
                        .ok_or_else(|| Failure::Llvm("a reduction folded to a constant".into()))?
                        .set_fast_math_flags(FastMathFlags::AllowReassoc)
                        .map_err(|e| Failure::Llvm(e.to_string()))?;
                    Ok(sum)
                }
                ReduceOp::Max => self.call("llvm.vector.reduce.fmaximum", &v, &[x]),
                ReduceOp::Min => self.call("llvm.vector.reduce.fminimum", &v, &[x]),
            };
        }
        let signed = is_signed(t.scalar);
        let name = match op {
            ReduceOp::Add => "llvm.vector.reduce.add",
            ReduceOp::Max if signed => "llvm.vector.reduce.smax",
            ReduceOp::Max => "llvm.vector.reduce.umax",
            ReduceOp::Min if signed => "llvm.vector.reduce.smin",
            ReduceOp::Min => "llvm.vector.reduce.umin",
        };
        self.call(name, &v, &[x])
    }

    fn access_alignment(&self, buf: BufRef) -> u32 {
        match buf {
            BufRef::Param(i) => alignment(self.k.buffers[i].elem),
            BufRef::Local(i) => self.k.locals[i].elem.bytes(),
        }
    }

    /// `&buf[index]`, elements of the buffer's type (bytes for a `u8` buffer).
    fn address(&self, buf: BufRef, index: Value) -> Result<PointerValue<'ctx>> {
        let (base, elem) = match buf {
            BufRef::Param(i) => (self.bases[i], self.k.buffers[i].elem),
            BufRef::Local(i) => (self.locals[i], self.k.locals[i].elem),
        };
        let i = self.int_resize(
            self.val(index)?,
            self.ty(index).scalar,
            Type::scalar(ScalarType::I64),
        )?;
        // SAFETY: in-bounds addressing is the template's contract (an access out of bounds is
        // undefined behaviour, documented on `CompiledKernel`).
        Ok(unsafe {
            self.b
                .build_in_bounds_gep(mem_type(self.cx, elem), base, &[i.into_int_value()], "")?
        })
    }
}

/// The vector of `lanes` lanes of type `lane`.
fn vector_of(lane: BasicTypeEnum<'_>, lanes: u32) -> VectorType<'_> {
    match lane {
        BasicTypeEnum::FloatType(f) => f.vec_type(lanes),
        other => other.into_int_type().vec_type(lanes),
    }
}

/// See [`memory_type_error`].
fn check_memory_type(t: Type) -> Result<()> {
    memory_type_error(t).map_or(Ok(()), |m| Err(Failure::Unsupported(m)))
}
