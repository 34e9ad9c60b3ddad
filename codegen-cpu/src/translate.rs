//! LIR → Cranelift IR, one kernel into one function with the ABI documented on
//! [`crate::CompiledKernel`].
//!
//! Representation: a LIR value is one Cranelift value. Scalars map to `f32`, `i32` (also `u32`),
//! `i64` and `i8` (also `u8` and `bool`, which is 0 or 1). Vectors must be 128-bit SIMD types
//! (`f32x4`, `i32x4`, `i64x2`, `i8x16`); a `bool` vector of n lanes is the lane mask
//! (0 or all ones) of the 128-bit integer vector with n lanes, which is what a vector compare
//! produces. Operations Cranelift has no vector form for (transcendentals, shifts by a vector,
//! integer division, remainders, casts) run lane by lane.

use crate::rules::{
    is_signed, memory_type_error, special_source, SpecialSource, BARRIER_UNSUPPORTED,
};
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I16, I32, I32X4, I64, I8, I8X16};
use cranelift_codegen::ir::{
    self, AbiParam, BlockArg, Endianness, FuncRef, Function, InstBuilder, MemFlagsData, Signature,
    StackSlotData, StackSlotKind,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{Linkage, Module};
use std::collections::HashMap;
use tessera_ir::lir::{
    BinaryOp, BufRef, Carried, CmpOp, Inst, Intrinsic, Kernel, Literal, ReduceOp, ScalarType,
    Special, Stmt, Type, UnaryOp, Value,
};

/// The signature of every kernel function: four pointers (buffers, scalars, group id, number of
/// groups), no results.
pub(crate) fn kernel_signature(module: &impl Module) -> Signature {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.extend([AbiParam::new(ptr); 4]);
    sig
}

/// The `f32` math functions generated code calls, by symbol name; the JIT resolves the names to
/// these addresses (Cranelift has no instructions for them).
pub(crate) fn math_symbols() -> [(&'static str, *const u8); 6] {
    extern "C" fn exp(x: f32) -> f32 {
        x.exp()
    }
    extern "C" fn log(x: f32) -> f32 {
        x.ln()
    }
    extern "C" fn tanh(x: f32) -> f32 {
        x.tanh()
    }
    extern "C" fn sin(x: f32) -> f32 {
        x.sin()
    }
    extern "C" fn cos(x: f32) -> f32 {
        x.cos()
    }
    extern "C" fn rem(a: f32, b: f32) -> f32 {
        a % b
    }
    [
        ("tessera_exp_f32", exp as *const u8),
        ("tessera_log_f32", log as *const u8),
        ("tessera_tanh_f32", tanh as *const u8),
        ("tessera_sin_f32", sin as *const u8),
        ("tessera_cos_f32", cos as *const u8),
        ("tessera_rem_f32", rem as *const u8),
    ]
}

/// Writes the body of `func` (whose signature is [`kernel_signature`]) from verified kernel `k`,
/// importing math functions into `module`.
pub(crate) fn translate(
    module: &mut impl Module,
    k: &Kernel,
    func: &mut Function,
) -> Result<(), CodegenError> {
    let config = module.target_config();
    let ptr = config.pointer_type();
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let [buffers, scalars, group_id, num_groups] = b.block_params(entry) else {
        unreachable!("kernel_signature has four params")
    };
    let (buffers, scalars, group_id, num_groups) = (*buffers, *scalars, *group_id, *num_groups);
    let bases = (0..k.buffers.len())
        .map(|i| {
            b.ins()
                .load(ptr, MemFlagsData::trusted(), buffers, byte_offset(i, 8))
        })
        .collect();
    let locals = k
        .locals
        .iter()
        .map(|l| {
            let size = l.len * l.elem.bytes();
            let slot =
                b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, size, 4));
            b.ins().stack_addr(ptr, slot, 0)
        })
        .collect();
    let mut t = Translator {
        k,
        module,
        b,
        ptr,
        vals: vec![None; k.values.len()],
        bases,
        locals,
        scalars,
        group_id,
        num_groups,
        math: HashMap::new(),
        splats: HashMap::new(),
    };
    t.block(&k.body)?;
    t.b.ins().return_(&[]);
    t.b.seal_all_blocks();
    t.b.finalize(config);
    Ok(())
}

fn byte_offset(index: usize, size: usize) -> i32 {
    i32::try_from(index * size).expect("param tables are far smaller than 2 GiB")
}

/// Loads and stores: never trapping (bounds are the template's responsibility) and little-endian
/// as LIR buffers are, but not `aligned`: vector accesses are only element-aligned.
fn mem_flags() -> MemFlagsData {
    MemFlagsData::new()
        .with_notrap()
        .with_endianness(Endianness::Little)
}

/// Four half-precision lanes: held zero-extended in the 32-bit lanes of an `i32x4` (Cranelift's
/// vectors are 128-bit), loaded with `uload16x4` and only widened to `f32x4`.
fn is_half_x4(t: Type) -> bool {
    matches!(t.scalar, ScalarType::F16 | ScalarType::Bf16) && t.lanes == 4
}

fn block_args(vals: &[ir::Value]) -> Vec<BlockArg> {
    vals.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// The math function an op calls, for ops Cranelift has no instruction for.
fn math_function(op: UnaryOp) -> Option<&'static str> {
    match op {
        UnaryOp::Exp => Some("tessera_exp_f32"),
        UnaryOp::Log => Some("tessera_log_f32"),
        UnaryOp::Tanh => Some("tessera_tanh_f32"),
        UnaryOp::Sin => Some("tessera_sin_f32"),
        UnaryOp::Cos => Some("tessera_cos_f32"),
        _ => None,
    }
}

struct Translator<'a, 'f, M: Module> {
    k: &'a Kernel,
    module: &'a mut M,
    b: FunctionBuilder<'f>,
    ptr: ir::Type,
    /// The Cranelift value of each LIR value defined so far.
    vals: Vec<Option<ir::Value>>,
    /// Base addresses of the buffer params and of the locals (stack slots).
    bases: Vec<ir::Value>,
    locals: Vec<ir::Value>,
    scalars: ir::Value,
    group_id: ir::Value,
    num_groups: ir::Value,
    /// Math functions imported into the function so far.
    math: HashMap<&'static str, FuncRef>,
    /// The scalar each splat value was made from (vector shifts by a splat use it directly).
    splats: HashMap<Value, Value>,
}

impl<M: Module> Translator<'_, '_, M> {
    fn unsupported(&self, what: String) -> CodegenError {
        CodegenError::Unsupported {
            kernel: self.k.name.clone(),
            what,
        }
    }

    fn ty(&self, v: Value) -> Type {
        self.k.values[v.index()]
    }

    fn val(&self, v: Value) -> ir::Value {
        self.vals[v.index()].expect("verified kernels define values before use")
    }

    fn lane_type(&self, s: ScalarType) -> Result<ir::Type, CodegenError> {
        match s {
            ScalarType::F32 => Ok(F32),
            ScalarType::I32 | ScalarType::U32 => Ok(I32),
            ScalarType::I64 => Ok(I64),
            ScalarType::U8 | ScalarType::I8 | ScalarType::Bool => Ok(I8),
            // Storage only (the verifier allows no arithmetic on them): held as their bits.
            ScalarType::F16 | ScalarType::Bf16 => Ok(I16),
        }
    }

    fn clif_type(&self, t: Type) -> Result<ir::Type, CodegenError> {
        let lane = self.lane_type(t.scalar)?;
        if t.lanes == 1 {
            return Ok(lane);
        }
        if is_half_x4(t) {
            return Ok(I32X4);
        }
        let lane = if t.scalar == ScalarType::Bool {
            u16::try_from(128 / t.lanes).ok().and_then(ir::Type::int)
        } else {
            Some(lane)
        };
        lane.and_then(|l| l.by(t.lanes))
            .filter(|v| v.bits() == 128)
            .ok_or_else(|| {
                self.unsupported(format!(
                    "vector type {t}: Cranelift has 128-bit SIMD vectors only (compile the \
                     model with --vector-bits 128, or run it with --cpu-backend llvm)"
                ))
            })
    }

    fn block(&mut self, stmts: &[Stmt]) -> Result<(), CodegenError> {
        stmts.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&mut self, stmt: &Stmt) -> Result<(), CodegenError> {
        match stmt {
            Stmt::Let(v, inst) => {
                if let Inst::Splat(_, a) = inst {
                    self.splats.insert(*v, *a);
                }
                let x = self.inst(inst, self.ty(*v))?;
                self.vals[v.index()] = Some(x);
            }
            Stmt::Store { buf, index, value } => {
                self.check_memory_type(self.ty(*value))?;
                if is_half_x4(self.ty(*value)) {
                    return Err(self.unsupported(format!(
                        "stores of {} (half-precision vectors are read-only here)",
                        self.ty(*value)
                    )));
                }
                let addr = self.address(*buf, *index);
                let x = self.val(*value);
                self.b.ins().store(mem_flags(), x, addr, 0);
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
                let (then_block, else_block, merge) = (
                    self.b.create_block(),
                    self.b.create_block(),
                    self.b.create_block(),
                );
                let c = self.val(*cond);
                self.b.ins().brif(c, then_block, &[], else_block, &[]);
                for (block, stmts) in [(then_block, then_), (else_block, else_)] {
                    self.b.switch_to_block(block);
                    self.block(stmts)?;
                    self.b.ins().jump(merge, &[]);
                }
                self.b.switch_to_block(merge);
            }
            Stmt::Barrier => return Err(self.unsupported(BARRIER_UNSUPPORTED.to_string())),
        }
        Ok(())
    }

    /// `header(iv, params..)` tests `iv < end` and enters `body` or leaves to
    /// `exit(results..)`; the body jumps back with `iv + step` and the yields.
    fn for_loop(
        &mut self,
        iv: Value,
        (start, end, step): (Value, Value, u32),
        carried: &[Carried],
        body: &[Stmt],
        yields: &[Value],
        results: &[Value],
    ) -> Result<(), CodegenError> {
        let (header, body_block, exit) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        let iv_type = self.ty(iv);
        self.b.append_block_param(header, self.clif_type(iv_type)?);
        for c in carried {
            let t = self.clif_type(self.ty(c.param))?;
            self.b.append_block_param(header, t);
            self.b.append_block_param(exit, t);
        }
        let inits: Vec<ir::Value> = std::iter::once(start)
            .chain(carried.iter().map(|c| c.init))
            .map(|v| self.val(v))
            .collect();
        self.b.ins().jump(header, &block_args(&inits));

        self.b.switch_to_block(header);
        let params = self.b.block_params(header).to_vec();
        self.vals[iv.index()] = Some(params[0]);
        for (c, &p) in carried.iter().zip(&params[1..]) {
            self.vals[c.param.index()] = Some(p);
        }
        let cc = if is_signed(iv_type.scalar) {
            IntCC::SignedLessThan
        } else {
            IntCC::UnsignedLessThan
        };
        let end = self.val(end);
        let more = self.b.ins().icmp(cc, params[0], end);
        self.b
            .ins()
            .brif(more, body_block, &[], exit, &block_args(&params[1..]));

        self.b.switch_to_block(body_block);
        self.block(body)?;
        let next = self.b.ins().iadd_imm_s(params[0], i64::from(step));
        let back: Vec<ir::Value> = std::iter::once(next)
            .chain(yields.iter().map(|&y| self.val(y)))
            .collect();
        self.b.ins().jump(header, &block_args(&back));

        self.b.switch_to_block(exit);
        let exits = self.b.block_params(exit).to_vec();
        for (r, x) in results.iter().zip(exits) {
            self.vals[r.index()] = Some(x);
        }
        Ok(())
    }

    fn inst(&mut self, inst: &Inst, ty: Type) -> Result<ir::Value, CodegenError> {
        let ct = self.clif_type(ty)?;
        Ok(match inst {
            Inst::Const(lit) => match *lit {
                Literal::F(f) => self.b.ins().f32const(f as f32),
                Literal::I(i) => {
                    let bits = ct.bits();
                    let masked = if bits < 64 { i & ((1 << bits) - 1) } else { i };
                    self.b.ins().iconst(ct, masked)
                }
                Literal::Bool(v) => self.b.ins().iconst(I8, i64::from(v)),
            },
            Inst::Param(i) => self.param(*i, ty.scalar),
            Inst::Special(s) => self.special(*s)?,
            Inst::Unary(op, a) => self.unary(*op, *a, ty)?,
            Inst::Binary(op @ (BinaryOp::Shl | BinaryOp::Shr), a, b)
                if self.splats.contains_key(b) =>
            {
                // A vector shifted by a splat shifts every lane by one scalar amount.
                let (x, amount) = (self.val(*a), self.val(self.splats[b]));
                let ins = self.b.ins();
                match op {
                    BinaryOp::Shl => ins.ishl(x, amount),
                    _ if is_signed(ty.scalar) => ins.sshr(x, amount),
                    _ => ins.ushr(x, amount),
                }
            }
            Inst::Binary(op, a, b) => {
                let (x, y) = (self.val(*a), self.val(*b));
                let lanewise = matches!(op, BinaryOp::Rem | BinaryOp::Shl | BinaryOp::Shr)
                    || (*op == BinaryOp::Div && !ty.scalar.is_float());
                if lanewise {
                    self.lanewise(ty, &[(x, ty), (y, ty)], |t, l| {
                        t.binary(*op, ty.scalar, l[0], l[1])
                    })?
                } else {
                    self.binary(*op, ty.scalar, x, y)?
                }
            }
            Inst::Fma(a, b, c) => {
                let (x, y, z) = (self.val(*a), self.val(*b), self.val(*c));
                self.b.ins().fma(x, y, z)
            }
            Inst::Cmp(op, a, b) => {
                let (x, y) = (self.val(*a), self.val(*b));
                self.compare(*op, self.ty(*a).scalar, x, y)
            }
            Inst::Select(c, a, b) => {
                let (m, x, y) = (self.val(*c), self.val(*a), self.val(*b));
                if self.ty(*c).lanes == 1 {
                    self.b.ins().select(m, x, y)
                } else {
                    let mask = if self.b.func.dfg.value_type(m) == ct {
                        m
                    } else {
                        self.b.ins().bitcast(ct, MemFlagsData::new(), m)
                    };
                    self.b.ins().bitselect(mask, x, y)
                }
            }
            Inst::Cast(to, a) => {
                let from = self.ty(*a);
                let x = self.val(*a);
                match (from.scalar, to.scalar) {
                    (ScalarType::I32, ScalarType::F32) if from.lanes == 4 => {
                        self.b.ins().fcvt_from_sint(ct, x)
                    }
                    (ScalarType::F32, ScalarType::I32) if from.lanes == 4 => {
                        self.b.ins().fcvt_to_sint_sat(ct, x)
                    }
                    (ScalarType::F16, ScalarType::F32) if from.lanes == 4 => self.f16_to_f32(x),
                    (ScalarType::Bf16, ScalarType::F32) if from.lanes == 4 => {
                        let bits = self.b.ins().ishl_imm_u(x, 16);
                        let flags = MemFlagsData::new().with_endianness(Endianness::Little);
                        self.b.ins().bitcast(ct, flags, bits)
                    }
                    _ => self.lanewise(*to, &[(x, from)], |t, l| {
                        t.cast(from.scalar, to.scalar, l[0])
                    })?,
                }
            }
            Inst::Bitcast(to, a) if is_half_x4(*to) || is_half_x4(self.ty(*a)) => {
                return Err(self.unsupported(format!(
                    "bitcasts of {} to {to} (half-precision vectors only widen to f32)",
                    self.ty(*a)
                )))
            }
            Inst::Bitcast(_, a) => {
                let x = self.val(*a);
                if self.b.func.dfg.value_type(x) == ct {
                    x
                } else {
                    let flags = MemFlagsData::new().with_endianness(Endianness::Little);
                    self.b.ins().bitcast(ct, flags, x)
                }
            }
            Inst::Splat(to, a) => {
                let x = self.val(*a);
                let lane = self.lane_value(to.scalar, x, ct.lane_type());
                self.b.ins().splat(ct, lane)
            }
            Inst::Extract(a, lane) => self.extract(self.val(*a), self.ty(*a), *lane),
            // Only scalars and 128-bit vectors exist here (`ct` checked the result), so a
            // concatenation of more than one part joins scalars, lane by lane (four halves,
            // held widened in an `i32x4`, are the one narrower vector, and are refused).
            Inst::Concat(parts) if parts.len() == 1 => self.val(parts[0]),
            Inst::Concat(parts) if parts.iter().any(|&p| self.ty(p).lanes > 1) => {
                return Err(self.unsupported(format!(
                    "a concatenation of vectors into {ty} (Cranelift has 128-bit SIMD vectors only)"
                )))
            }
            Inst::Concat(parts) => {
                let mut vector = None;
                for (lane, &p) in parts.iter().enumerate() {
                    let (x, t) = (self.val(p), self.ty(p));
                    let x = self.extract(x, t, 0);
                    let x = self.lane_value(t.scalar, x, ct.lane_type());
                    let lane = u8::try_from(lane).expect("at most 16 lanes");
                    vector = Some(match vector {
                        None => self.b.ins().splat(ct, x),
                        Some(v) => self.b.ins().insertlane(v, x, lane),
                    });
                }
                vector.expect("verified concatenations have parts")
            }
            Inst::ReduceLanes(op, a) => {
                let (x, t) = (self.val(*a), self.ty(*a));
                let op = match op {
                    ReduceOp::Add => BinaryOp::Add,
                    ReduceOp::Max => BinaryOp::Max,
                    ReduceOp::Min => BinaryOp::Min,
                };
                let mut acc = self.extract(x, t, 0);
                for lane in 1..t.lanes {
                    let l = self.extract(x, t, lane);
                    acc = self.binary(op, t.scalar, acc, l)?;
                }
                acc
            }
            Inst::Load { buf, index, ty } => {
                self.check_memory_type(*ty)?;
                let addr = self.address(*buf, *index);
                if is_half_x4(*ty) {
                    self.b.ins().uload16x4(mem_flags(), addr, 0)
                } else {
                    self.b.ins().load(ct, mem_flags(), addr, 0)
                }
            }
            Inst::Intrinsic(i @ (Intrinsic::Dot4I8Packed | Intrinsic::Dot4U8I8Packed), args) => {
                let operands = [args[0], args[1], args[2]].map(|v| self.val(v));
                self.dot4_i8(operands, *i == Intrinsic::Dot4U8I8Packed, ty.lanes)
            }
            Inst::Intrinsic(i, _) => {
                return Err(self.unsupported(format!("intrinsic {:?}", i.kind())))
            }
        })
    }

    /// `acc + Σ a[i]·b[i]` per 32-bit lane of four packed bytes, `a`'s bytes unsigned when
    /// `a_unsigned`, `b`'s signed. Signed × signed is SSE's sign-extend to `i16`, `pmaddwd`
    /// (pairs) and a pairwise add (quads). Unsigned × signed is written as the widening tree
    /// Cranelift folds into one `vpdpbusd` on AVX-VNNI / AVX512-VNNI hosts (and `usdot` on
    /// Arm); elsewhere it lowers to the same arithmetic in plain SSE. One lane goes through the
    /// same sequence in lane 0 of a vector.
    fn dot4_i8(&mut self, [a, b, acc]: [ir::Value; 3], a_unsigned: bool, lanes: u32) -> ir::Value {
        let flags = MemFlagsData::new().with_endianness(Endianness::Little);
        let as_bytes = |t: &mut Self, x: ir::Value| {
            let v = if lanes == 1 {
                t.b.ins().scalar_to_vector(I32X4, x)
            } else {
                x
            };
            t.b.ins().bitcast(I8X16, flags, v)
        };
        let (a, b) = (as_bytes(self, a), as_bytes(self, b));
        let (b_lo, b_hi) = (self.b.ins().swiden_low(b), self.b.ins().swiden_high(b));
        let quads = if a_unsigned {
            let (a_lo, a_hi) = (self.b.ins().uwiden_low(a), self.b.ins().uwiden_high(a));
            let lo = self.pair_sums_i16_products(b_lo, a_lo);
            let hi = self.pair_sums_i16_products(b_hi, a_hi);
            self.b.ins().iadd_pairwise(lo, hi)
        } else {
            let (a_lo, a_hi) = (self.b.ins().swiden_low(a), self.b.ins().swiden_high(a));
            let lo = self.pmaddwd(a_lo, b_lo);
            let hi = self.pmaddwd(a_hi, b_hi);
            self.b.ins().iadd_pairwise(lo, hi)
        };
        if lanes == 1 {
            let q = self.b.ins().extractlane(quads, 0);
            self.b.ins().iadd(q, acc)
        } else {
            // (iadd quads acc), in this order, is the tree the VNNI rules match.
            self.b.ins().iadd(quads, acc)
        }
    }

    /// Adjacent-pair sums of the `i16` products `x·y` (`i16x8` operands whose products fit
    /// `i16`: one signed, one unsigned byte), as `i32x4`.
    fn pair_sums_i16_products(&mut self, x: ir::Value, y: ir::Value) -> ir::Value {
        let p = self.b.ins().imul(x, y);
        let (lo, hi) = (self.b.ins().swiden_low(p), self.b.ins().swiden_high(p));
        self.b.ins().iadd_pairwise(lo, hi)
    }

    /// Adjacent-pair sums of the `i32` products of two `i16x8`, written as the tree x64 lowers
    /// to one `pmaddwd`.
    fn pmaddwd(&mut self, x: ir::Value, y: ir::Value) -> ir::Value {
        let (xl, yl) = (self.b.ins().swiden_low(x), self.b.ins().swiden_low(y));
        let (xh, yh) = (self.b.ins().swiden_high(x), self.b.ins().swiden_high(y));
        let lo = self.b.ins().imul(xl, yl);
        let hi = self.b.ins().imul(xh, yh);
        self.b.ins().iadd_pairwise(lo, hi)
    }

    /// Scalar param `i`: the ABI passes every scalar as an `i64` (an `f32` as its bits).
    fn param(&mut self, i: usize, s: ScalarType) -> ir::Value {
        let raw = self.b.ins().load(
            I64,
            MemFlagsData::trusted(),
            self.scalars,
            byte_offset(i, 8),
        );
        match s {
            ScalarType::I64 => raw,
            ScalarType::Bool => self.b.ins().icmp_imm_s(IntCC::NotEqual, raw, 0),
            ScalarType::F32 => {
                let bits = self.b.ins().ireduce(I32, raw);
                self.b.ins().bitcast(F32, MemFlagsData::new(), bits)
            }
            _ => self.int_resize(raw, ScalarType::I64, s),
        }
    }

    fn special(&mut self, s: Special) -> Result<ir::Value, CodegenError> {
        Ok(match special_source(s).map_err(|m| self.unsupported(m))? {
            SpecialSource::Table { num_groups, axis } => {
                let base = if num_groups {
                    self.num_groups
                } else {
                    self.group_id
                };
                let offset = byte_offset(axis, 8);
                self.b
                    .ins()
                    .load(I64, MemFlagsData::trusted(), base, offset)
            }
            SpecialSource::Const(c) => self.b.ins().iconst(I64, c),
        })
    }

    fn unary(&mut self, op: UnaryOp, a: Value, ty: Type) -> Result<ir::Value, CodegenError> {
        let x = self.val(a);
        let float = ty.scalar.is_float();
        let ins = self.b.ins();
        Ok(match op {
            UnaryOp::Neg if float => ins.fneg(x),
            UnaryOp::Neg => ins.ineg(x),
            UnaryOp::Abs if float => ins.fabs(x),
            UnaryOp::Abs if is_signed(ty.scalar) => ins.iabs(x),
            UnaryOp::Abs => x,
            UnaryOp::Sqrt => ins.sqrt(x),
            UnaryOp::Floor => ins.floor(x),
            UnaryOp::Rsqrt => {
                let root = ins.sqrt(x);
                self.recip(root, ty)?
            }
            UnaryOp::Recip => self.recip(x, ty)?,
            UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sin | UnaryOp::Cos => {
                let name = math_function(op).expect("every transcendental has a math function");
                self.lanewise(ty, &[(x, ty)], |t, l| t.call_math(name, l))?
            }
        })
    }

    fn recip(&mut self, x: ir::Value, ty: Type) -> Result<ir::Value, CodegenError> {
        let mut one = self.b.ins().f32const(1.0f32);
        if ty.lanes > 1 {
            let vector = self.clif_type(ty)?;
            one = self.b.ins().splat(vector, one);
        }
        Ok(self.b.ins().fdiv(one, x))
    }

    /// `a op b` on values of scalar type `s`, scalars or (for the ops Cranelift has vector forms
    /// of) vectors.
    fn binary(
        &mut self,
        op: BinaryOp,
        s: ScalarType,
        a: ir::Value,
        b: ir::Value,
    ) -> Result<ir::Value, CodegenError> {
        if s.is_float() {
            let ins = self.b.ins();
            return Ok(match op {
                BinaryOp::Add => ins.fadd(a, b),
                BinaryOp::Sub => ins.fsub(a, b),
                BinaryOp::Mul => ins.fmul(a, b),
                BinaryOp::Div => ins.fdiv(a, b),
                BinaryOp::Min => ins.fmin(a, b),
                BinaryOp::Max => ins.fmax(a, b),
                BinaryOp::Rem => return self.call_math("tessera_rem_f32", &[a, b]),
                BinaryOp::And | BinaryOp::Or | BinaryOp::Xor | BinaryOp::Shl | BinaryOp::Shr => {
                    unreachable!("the verifier allows bitwise ops on integers and bools only")
                }
            });
        }
        let signed = is_signed(s);
        let ins = self.b.ins();
        Ok(match op {
            BinaryOp::Add => ins.iadd(a, b),
            BinaryOp::Sub => ins.isub(a, b),
            BinaryOp::Mul => ins.imul(a, b),
            BinaryOp::Div if signed => ins.sdiv(a, b),
            BinaryOp::Div => ins.udiv(a, b),
            BinaryOp::Rem if signed => ins.srem(a, b),
            BinaryOp::Rem => ins.urem(a, b),
            BinaryOp::Min if signed => ins.smin(a, b),
            BinaryOp::Min => ins.umin(a, b),
            BinaryOp::Max if signed => ins.smax(a, b),
            BinaryOp::Max => ins.umax(a, b),
            BinaryOp::And => ins.band(a, b),
            BinaryOp::Or => ins.bor(a, b),
            BinaryOp::Xor => ins.bxor(a, b),
            BinaryOp::Shl => ins.ishl(a, b),
            BinaryOp::Shr if signed => ins.sshr(a, b),
            BinaryOp::Shr => ins.ushr(a, b),
        })
    }

    /// A comparison; on vectors it yields the lane mask that is the `bool` vector.
    fn compare(&mut self, op: CmpOp, s: ScalarType, a: ir::Value, b: ir::Value) -> ir::Value {
        if s.is_float() {
            let cc = match op {
                CmpOp::Eq => FloatCC::Equal,
                CmpOp::Ne => FloatCC::NotEqual,
                CmpOp::Lt => FloatCC::LessThan,
                CmpOp::Le => FloatCC::LessThanOrEqual,
                CmpOp::Gt => FloatCC::GreaterThan,
                CmpOp::Ge => FloatCC::GreaterThanOrEqual,
            };
            return self.b.ins().fcmp(cc, a, b);
        }
        let cc = match (op, is_signed(s)) {
            (CmpOp::Eq, _) => IntCC::Equal,
            (CmpOp::Ne, _) => IntCC::NotEqual,
            (CmpOp::Lt, true) => IntCC::SignedLessThan,
            (CmpOp::Le, true) => IntCC::SignedLessThanOrEqual,
            (CmpOp::Gt, true) => IntCC::SignedGreaterThan,
            (CmpOp::Ge, true) => IntCC::SignedGreaterThanOrEqual,
            (CmpOp::Lt, false) => IntCC::UnsignedLessThan,
            (CmpOp::Le, false) => IntCC::UnsignedLessThanOrEqual,
            (CmpOp::Gt, false) => IntCC::UnsignedGreaterThan,
            (CmpOp::Ge, false) => IntCC::UnsignedGreaterThanOrEqual,
        };
        self.b.ins().icmp(cc, a, b)
    }

    /// Converts one scalar like Rust's `as` (float to integer truncates and saturates at the
    /// `i32`/`u32`/`i64` range, then wraps to 8 bits); `bool` results are `x != 0`.
    fn cast(
        &mut self,
        from: ScalarType,
        to: ScalarType,
        x: ir::Value,
    ) -> Result<ir::Value, CodegenError> {
        let target = self.lane_type(to)?;
        let half = |s: ScalarType| matches!(s, ScalarType::F16 | ScalarType::Bf16);
        if half(from) || half(to) {
            return match (from, to) {
                (ScalarType::F16, ScalarType::F32) => {
                    let wide = self.b.ins().uextend(I32, x);
                    Ok(self.f16_to_f32(wide))
                }
                (ScalarType::Bf16, ScalarType::F32) => {
                    let wide = self.b.ins().uextend(I32, x);
                    let bits = self.b.ins().ishl_imm_u(wide, 16);
                    Ok(self.b.ins().bitcast(F32, MemFlagsData::new(), bits))
                }
                _ => Err(self.unsupported(format!(
                    "cast from {} to {} (half precision widens to f32 only)",
                    from.name(),
                    to.name()
                ))),
            };
        }
        let ins = self.b.ins();
        Ok(match (from.is_float(), to.is_float()) {
            (true, true) => x,
            (false, true) => {
                let wide = match from.bytes() {
                    4 | 8 => x,
                    _ if is_signed(from) => self.int_resize(x, from, ScalarType::I32),
                    _ => self.int_resize(x, from, ScalarType::U32),
                };
                let ins = self.b.ins();
                if is_signed(from) {
                    ins.fcvt_from_sint(target, wide)
                } else {
                    ins.fcvt_from_uint(target, wide)
                }
            }
            (true, false) if to == ScalarType::Bool => {
                let zero = ins.f32const(0.0f32);
                self.b.ins().fcmp(FloatCC::NotEqual, x, zero)
            }
            (true, false) => {
                let wide = if to == ScalarType::I64 { I64 } else { I32 };
                let converted = if is_signed(to) {
                    ins.fcvt_to_sint_sat(wide, x)
                } else {
                    ins.fcvt_to_uint_sat(wide, x)
                };
                if target == wide {
                    converted
                } else {
                    self.b.ins().ireduce(target, converted)
                }
            }
            (false, false) if to == ScalarType::Bool => ins.icmp_imm_s(IntCC::NotEqual, x, 0),
            (false, false) => self.int_resize(x, from, to),
        })
    }

    /// The `f32` of IEEE half bits `h` (an `i32`, or an `i32x4` of four), exactly: exponent and
    /// mantissa shifted into place and rescaled by 2^112 (which also normalizes subnormals);
    /// infinities and NaNs, whose exponent the rescaling would not reach, are rebuilt with the
    /// `f32` exponent.
    fn f16_to_f32(&mut self, h: ir::Value) -> ir::Value {
        let ty = self.b.func.dfg.value_type(h);
        let float = if ty.is_vector() { F32X4 } else { F32 };
        let flags = MemFlagsData::new().with_endianness(Endianness::Little);
        let int = |t: &mut Self, c: i64| {
            let c = t.b.ins().iconst(I32, c);
            if ty.is_vector() {
                t.b.ins().splat(ty, c)
            } else {
                c
            }
        };
        let (sign_mask, magnitude_mask) = (int(self, 0x8000), int(self, 0x7fff));
        let (infinity, exponent_mask) = (int(self, 0x7c00), int(self, 0x7f80_0000));
        let sign = self.b.ins().band(h, sign_mask);
        let sign = self.b.ins().ishl_imm_u(sign, 16);
        let magnitude = self.b.ins().band(h, magnitude_mask);
        let shifted = self.b.ins().ishl_imm_u(magnitude, 13);
        let as_float = self.b.ins().bitcast(float, flags, shifted);
        let mut scale = self.b.ins().f32const(2f32.powi(112));
        if ty.is_vector() {
            scale = self.b.ins().splat(float, scale);
        }
        let finite = self.b.ins().fmul(as_float, scale);
        let finite = self.b.ins().bitcast(ty, flags, finite);
        let special = self.b.ins().bor(shifted, exponent_mask);
        let is_special = self
            .b
            .ins()
            .icmp(IntCC::UnsignedGreaterThanOrEqual, magnitude, infinity);
        let bits = if ty.is_vector() {
            self.b.ins().bitselect(is_special, special, finite)
        } else {
            self.b.ins().select(is_special, special, finite)
        };
        let bits = self.b.ins().bor(bits, sign);
        self.b.ins().bitcast(float, flags, bits)
    }

    /// Truncates or extends (by `from`'s signedness) an integer or `bool` to `to`'s width.
    fn int_resize(&mut self, x: ir::Value, from: ScalarType, to: ScalarType) -> ir::Value {
        let (from_bits, to_bits) = (from.bytes(), to.bytes());
        let target = ir::Type::int_with_byte_size(to_bits as u16).expect("integer widths");
        let ins = self.b.ins();
        match from_bits.cmp(&to_bits) {
            std::cmp::Ordering::Greater => ins.ireduce(target, x),
            std::cmp::Ordering::Less if is_signed(from) => ins.sextend(target, x),
            std::cmp::Ordering::Less => ins.uextend(target, x),
            std::cmp::Ordering::Equal => x,
        }
    }

    /// Lane `lane` of vector `x` of type `t`, as a scalar (`bool` lanes become 0 or 1).
    fn extract(&mut self, x: ir::Value, t: Type, lane: u32) -> ir::Value {
        if t.lanes == 1 {
            return x;
        }
        let lane = u8::try_from(lane).expect("128-bit vectors have at most 16 lanes");
        let e = self.b.ins().extractlane(x, lane);
        if is_half_x4(t) {
            self.b.ins().ireduce(I16, e)
        } else if t.scalar == ScalarType::Bool {
            self.b.ins().icmp_imm_s(IntCC::NotEqual, e, 0)
        } else {
            e
        }
    }

    /// A scalar as a vector lane of type `lane`: `bool` becomes a lane mask.
    fn lane_value(&mut self, s: ScalarType, x: ir::Value, lane: ir::Type) -> ir::Value {
        if s != ScalarType::Bool {
            return x;
        }
        let wide = if lane == I8 {
            x
        } else {
            self.b.ins().uextend(lane, x)
        };
        self.b.ins().ineg(wide)
    }

    /// Applies `f` to the scalar lanes of `args` and builds the `out` vector from the results;
    /// on scalars it is `f` itself.
    fn lanewise(
        &mut self,
        out: Type,
        args: &[(ir::Value, Type)],
        mut f: impl FnMut(&mut Self, &[ir::Value]) -> Result<ir::Value, CodegenError>,
    ) -> Result<ir::Value, CodegenError> {
        let ct = self.clif_type(out)?;
        let mut vector = None;
        for lane in 0..out.lanes {
            let scalars: Vec<ir::Value> = args
                .iter()
                .map(|&(x, t)| self.extract(x, t, lane))
                .collect();
            let r = f(self, &scalars)?;
            if out.lanes == 1 {
                return Ok(r);
            }
            let r = self.lane_value(out.scalar, r, ct.lane_type());
            let index = u8::try_from(lane).expect("at most 16 lanes");
            vector = Some(match vector {
                None => self.b.ins().splat(ct, r),
                Some(v) => self.b.ins().insertlane(v, r, index),
            });
        }
        Ok(vector.expect("verified values have at least one lane"))
    }

    fn call_math(
        &mut self,
        name: &'static str,
        args: &[ir::Value],
    ) -> Result<ir::Value, CodegenError> {
        let f = match self.math.get(name) {
            Some(&f) => f,
            None => {
                let mut sig = self.module.make_signature();
                sig.params.extend(args.iter().map(|_| AbiParam::new(F32)));
                sig.returns.push(AbiParam::new(F32));
                let id = self
                    .module
                    .declare_function(name, Linkage::Import, &sig)
                    .map_err(|e| CodegenError::Cranelift {
                        kernel: self.k.name.clone(),
                        message: e.to_string(),
                    })?;
                let f = self.module.declare_func_in_func(id, self.b.func);
                self.math.insert(name, f);
                f
            }
        };
        let call = self.b.ins().call(f, args);
        Ok(self.b.inst_results(call)[0])
    }

    /// See [`memory_type_error`].
    fn check_memory_type(&self, t: Type) -> Result<(), CodegenError> {
        memory_type_error(t).map_or(Ok(()), |m| Err(self.unsupported(m)))
    }

    /// `base(buf) + index × element size`.
    fn address(&mut self, buf: BufRef, index: Value) -> ir::Value {
        let (base, elem) = match buf {
            BufRef::Param(i) => (self.bases[i], self.k.buffers[i].elem),
            BufRef::Local(i) => (self.locals[i], self.k.locals[i].elem),
        };
        let pointer_int = if self.ptr == I64 {
            ScalarType::I64
        } else {
            ScalarType::I32
        };
        let i = self.int_resize(self.val(index), self.ty(index).scalar, pointer_int);
        let offset = self.b.ins().imul_imm_s(i, i64::from(elem.bytes()));
        self.b.ins().iadd(base, offset)
    }
}
