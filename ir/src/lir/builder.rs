//! [`KernelBuilder`]: the short API templates write LIR with. It infers result types and never
//! panics on ill-typed input: it records what it was given and [`super::verify`] reports the error.

use super::{
    Access, BinaryOp, BufRef, BufferParam, Carried, CmpOp, Inst, Intrinsic, Kernel, Literal,
    LocalBuffer, MemorySpace, ReduceOp, ScalarParam, ScalarType, SizeExpr, Special, Stmt, Type,
    UnaryOp, Value,
};

/// Builds one [`Kernel`] statement by statement; nested bodies are built inside closures.
pub struct KernelBuilder {
    kernel: Kernel,
    /// Statement lists being built, innermost last; the first is the kernel body.
    blocks: Vec<Vec<Stmt>>,
}

/// Recorded for a value whose instruction is ill-typed, so building can go on; `verify` reports
/// the instruction's error.
const UNTYPED: Type = Type {
    scalar: ScalarType::Bool,
    lanes: 1,
};

impl KernelBuilder {
    /// A kernel with no params, workgroup size `[1, 1, 1]` and a `[1, 1, 1]` grid.
    pub fn new(name: &str) -> KernelBuilder {
        KernelBuilder {
            kernel: Kernel {
                name: name.to_string(),
                buffers: vec![],
                scalars: vec![],
                locals: vec![],
                workgroup_size: [1, 1, 1],
                grid: [SizeExpr::Const(1), SizeExpr::Const(1), SizeExpr::Const(1)],
                values: vec![],
                body: vec![],
            },
            blocks: vec![vec![]],
        }
    }

    /// Sets the threads per workgroup.
    pub fn workgroup_size(&mut self, size: [u32; 3]) -> &mut Self {
        self.kernel.workgroup_size = size;
        self
    }

    /// Sets the number of workgroups per axis.
    pub fn grid(&mut self, grid: [SizeExpr; 3]) -> &mut Self {
        self.kernel.grid = grid;
        self
    }

    /// Declares a global buffer param.
    pub fn buffer(&mut self, name: &str, elem: ScalarType, access: Access) -> BufRef {
        self.kernel.buffers.push(BufferParam {
            name: name.to_string(),
            elem,
            access,
        });
        BufRef::Param(self.kernel.buffers.len() - 1)
    }

    /// Declares a scalar param (its index is the declaration order, for [`SizeExpr::Param`])
    /// and reads it.
    pub fn scalar(&mut self, name: &str, ty: ScalarType) -> Value {
        self.kernel.scalars.push(ScalarParam {
            name: name.to_string(),
            ty,
        });
        self.inst(Inst::Param(self.kernel.scalars.len() - 1))
    }

    /// Declares a Shared or Private buffer of `len` elements.
    pub fn local(&mut self, name: &str, space: MemorySpace, elem: ScalarType, len: u32) -> BufRef {
        self.kernel.locals.push(LocalBuffer {
            name: name.to_string(),
            space,
            elem,
            len,
        });
        BufRef::Local(self.kernel.locals.len() - 1)
    }

    /// A thread-hierarchy value (`i64`).
    pub fn special(&mut self, s: Special) -> Value {
        self.inst(Inst::Special(s))
    }

    /// A constant of type `ty`.
    pub fn constant(&mut self, ty: Type, lit: Literal) -> Value {
        self.emit(ty, Inst::Const(lit))
    }

    /// An `i64` constant.
    pub fn const_i(&mut self, v: i64) -> Value {
        self.constant(Type::scalar(ScalarType::I64), Literal::I(v))
    }

    /// An `f32` constant.
    pub fn const_f(&mut self, v: f64) -> Value {
        self.constant(Type::scalar(ScalarType::F32), Literal::F(v))
    }

    /// Any instruction, its result type inferred.
    pub fn inst(&mut self, inst: Inst) -> Value {
        let ty = inst.result_type(&self.kernel, UNTYPED).unwrap_or(UNTYPED);
        self.emit(ty, inst)
    }

    /// One-operand arithmetic.
    pub fn unary(&mut self, op: UnaryOp, a: Value) -> Value {
        self.inst(Inst::Unary(op, a))
    }

    /// Two-operand arithmetic.
    pub fn binary(&mut self, op: BinaryOp, a: Value, b: Value) -> Value {
        self.inst(Inst::Binary(op, a, b))
    }

    /// `a + b`.
    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Add, a, b)
    }

    /// `a - b`.
    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// `a * b`.
    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// `a / b`.
    pub fn div(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Div, a, b)
    }

    /// `a * b + c`, fused.
    pub fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.inst(Inst::Fma(a, b, c))
    }

    /// A comparison (`bool` result).
    pub fn cmp(&mut self, op: CmpOp, a: Value, b: Value) -> Value {
        self.inst(Inst::Cmp(op, a, b))
    }

    /// `cond ? a : b`.
    pub fn select(&mut self, cond: Value, a: Value, b: Value) -> Value {
        self.inst(Inst::Select(cond, a, b))
    }

    /// Converts `a` to `scalar`, keeping its lanes.
    pub fn cast(&mut self, scalar: ScalarType, a: Value) -> Value {
        let lanes = self.type_of(a).lanes;
        self.inst(Inst::Cast(Type::vector(scalar, lanes), a))
    }

    /// Reinterprets `a`'s bits as `lanes` lanes of `scalar` (the same total width).
    pub fn bitcast(&mut self, scalar: ScalarType, lanes: u32, a: Value) -> Value {
        self.inst(Inst::Bitcast(Type::vector(scalar, lanes), a))
    }

    /// Broadcasts scalar `a` to `lanes` lanes; for one lane, `a` itself (templates written for
    /// any width need no special case).
    pub fn splat(&mut self, a: Value, lanes: u32) -> Value {
        if lanes == 1 {
            return a;
        }
        let scalar = self.type_of(a).scalar;
        self.inst(Inst::Splat(Type::vector(scalar, lanes), a))
    }

    /// Lane `lane` of vector `a`.
    pub fn extract(&mut self, a: Value, lane: u32) -> Value {
        self.inst(Inst::Extract(a, lane))
    }

    /// The lanes of `parts` in order as one vector (see [`Inst::Concat`]).
    pub fn concat(&mut self, parts: &[Value]) -> Value {
        self.inst(Inst::Concat(parts.to_vec()))
    }

    /// Reduces `a`'s lanes to a scalar.
    pub fn reduce_lanes(&mut self, op: ReduceOp, a: Value) -> Value {
        self.inst(Inst::ReduceLanes(op, a))
    }

    /// Reads `lanes` contiguous elements of `buf` from `index`.
    pub fn load(&mut self, buf: BufRef, index: Value, lanes: u32) -> Value {
        let scalar = self.kernel.buffer_elem(buf).unwrap_or(UNTYPED.scalar);
        self.inst(Inst::Load {
            buf,
            index,
            ty: Type::vector(scalar, lanes),
        })
    }

    /// Reads a `ty` at byte `index` of the `u8` buffer `buf` (see [`Inst::Load`]).
    pub fn load_bytes(&mut self, buf: BufRef, index: Value, ty: Type) -> Value {
        self.inst(Inst::Load { buf, index, ty })
    }

    /// Calls a target intrinsic.
    pub fn intrinsic(&mut self, i: Intrinsic, args: &[Value]) -> Value {
        self.inst(Inst::Intrinsic(i, args.to_vec()))
    }

    /// Writes `value` to `buf` at `index`.
    pub fn store(&mut self, buf: BufRef, index: Value, value: Value) {
        self.push(Stmt::Store { buf, index, value });
    }

    /// Workgroup barrier.
    pub fn barrier(&mut self) {
        self.push(Stmt::Barrier);
    }

    /// `for iv in start..end step step` carrying `inits`: `body(builder, iv, params)` returns
    /// the values to yield; returns the loop's results (the last yields).
    pub fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: u32,
        inits: &[Value],
        body: impl FnOnce(&mut KernelBuilder, Value, &[Value]) -> Vec<Value>,
    ) -> Vec<Value> {
        let iv = self.fresh(self.type_of(start));
        let carried: Vec<Carried> = inits
            .iter()
            .map(|&init| Carried {
                param: self.fresh(self.type_of(init)),
                init,
            })
            .collect();
        let params: Vec<Value> = carried.iter().map(|c| c.param).collect();
        self.blocks.push(vec![]);
        let yields = body(self, iv, &params);
        let body = self.pop_block();
        let results: Vec<Value> = params
            .iter()
            .map(|&p| self.fresh(self.type_of(p)))
            .collect();
        self.push(Stmt::For {
            iv,
            start,
            end,
            step,
            carried,
            body,
            yields,
            results: results.clone(),
        });
        results
    }

    /// `if cond { then_ }`.
    pub fn if_then(&mut self, cond: Value, then_: impl FnOnce(&mut KernelBuilder)) {
        self.if_else(cond, then_, |_| {});
    }

    /// `if cond { then_ } else { else_ }`.
    pub fn if_else(
        &mut self,
        cond: Value,
        then_: impl FnOnce(&mut KernelBuilder),
        else_: impl FnOnce(&mut KernelBuilder),
    ) {
        self.blocks.push(vec![]);
        then_(self);
        let then_ = self.pop_block();
        self.blocks.push(vec![]);
        else_(self);
        let else_ = self.pop_block();
        self.push(Stmt::If { cond, then_, else_ });
    }

    /// The type recorded for `v` (a placeholder for a value the builder never made).
    pub fn type_of(&self, v: Value) -> Type {
        self.kernel
            .values
            .get(v.index())
            .copied()
            .unwrap_or(UNTYPED)
    }

    /// The finished kernel; check it with [`super::verify`].
    pub fn finish(mut self) -> Kernel {
        self.kernel.body = self.pop_block();
        self.kernel
    }

    fn fresh(&mut self, ty: Type) -> Value {
        self.kernel.values.push(ty);
        Value(self.kernel.values.len() as u32 - 1)
    }

    fn emit(&mut self, ty: Type, inst: Inst) -> Value {
        let v = self.fresh(ty);
        self.push(Stmt::Let(v, inst));
        v
    }

    fn push(&mut self, stmt: Stmt) {
        self.blocks
            .last_mut()
            .expect("the kernel body block is never popped before finish")
            .push(stmt);
    }

    fn pop_block(&mut self) -> Vec<Stmt> {
        self.blocks.pop().unwrap_or_default()
    }
}
