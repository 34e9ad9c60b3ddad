//! [`ModuleBuilder`]: a small layer over `naga::Module` that builds one compute entry point. It
//! is the only place that knows naga's bookkeeping: which expressions need an `Emit` statement
//! (and coalescing consecutive ones into one range), which are "pre-emitted" (literals,
//! variables, arguments, statement results), type interning, and how nested blocks are
//! assembled. The translator above it speaks in values, pointers, blocks and statements.

use naga::{
    AddressSpace, ArraySize, Barrier, Binding, Block, BuiltIn, CollectiveOperation, EntryPoint,
    Expression, Function, FunctionArgument, GatherMode, GlobalVariable, Handle, Literal,
    LocalVariable, MathFunction, MemoryDecorations, Module, Range, ResourceBinding, Scalar,
    ShaderStage, Span, Statement, StorageAccess, SubgroupOperation, Type, TypeInner, VectorSize,
};
use std::num::NonZeroU32;

/// A naga expression of the function being built.
pub(crate) type Expr = Handle<Expression>;

/// Builds a module with one compute entry point, statement by statement; nested blocks are
/// opened with [`begin_block`](Self::begin_block) and closed with
/// [`end_block`](Self::end_block), which returns them for an `If` or `Loop`.
pub(crate) struct ModuleBuilder {
    module: Module,
    function: Function,
    /// Statement lists being built, innermost last; the first is the function body.
    blocks: Vec<Block>,
    /// The first and last expressions appended since the last `Emit`, if any; flushed into an
    /// `Emit` before any other statement, so that one range covers a run of expressions.
    pending: Option<(Expr, Expr)>,
}

impl ModuleBuilder {
    pub(crate) fn new() -> ModuleBuilder {
        ModuleBuilder {
            module: Module::default(),
            function: Function::default(),
            blocks: vec![Block::new()],
            pending: None,
        }
    }

    /// The type of a scalar (`lanes == 1`) or a 2–4 lane vector; `None` for other lane counts.
    pub(crate) fn value_type(&mut self, scalar: Scalar, lanes: u32) -> Option<Handle<Type>> {
        let inner = match lanes {
            1 => TypeInner::Scalar(scalar),
            n => TypeInner::Vector {
                size: vector_size(n)?,
                scalar,
            },
        };
        Some(self.intern(inner))
    }

    /// `array<scalar, len>`, or the runtime-sized `array<scalar>` of a storage buffer.
    pub(crate) fn array_type(&mut self, scalar: Scalar, len: Option<u32>) -> Handle<Type> {
        self.vector_array_type(scalar, 1, len)
    }

    /// [`array_type`](Self::array_type) with elements of `width` (1, 2 or 4) lanes of `scalar`.
    fn vector_array_type(&mut self, scalar: Scalar, width: u32, len: Option<u32>) -> Handle<Type> {
        let base = self
            .value_type(scalar, width)
            .unwrap_or_else(|| self.intern(TypeInner::Scalar(scalar)));
        let size = len
            .and_then(NonZeroU32::new)
            .map_or(ArraySize::Dynamic, ArraySize::Constant);
        // A 3-lane vector is aligned like a 4-lane one; the widths used are 1, 2 and 4.
        let lanes = if width == 3 { 4 } else { width };
        self.intern(TypeInner::Array {
            base,
            size,
            stride: u32::from(scalar.width) * lanes,
        })
    }

    fn intern(&mut self, inner: TypeInner) -> Handle<Type> {
        self.module
            .types
            .insert(Type { name: None, inner }, Span::UNDEFINED)
    }

    /// A storage buffer `array<scalar>` (`array<vecN<scalar>>` for `width` N > 1) at group 0,
    /// `binding`; returns a pointer to it.
    pub(crate) fn storage_buffer(
        &mut self,
        name: &str,
        (scalar, width): (Scalar, u32),
        binding: u32,
        read_only: bool,
    ) -> Expr {
        let ty = self.vector_array_type(scalar, width, None);
        let access = if read_only {
            StorageAccess::LOAD
        } else {
            StorageAccess::LOAD | StorageAccess::STORE
        };
        self.global(
            name,
            AddressSpace::Storage { access },
            ty,
            Some(ResourceBinding { group: 0, binding }),
        )
    }

    /// A workgroup-shared `array<scalar, len>`; returns a pointer to it.
    pub(crate) fn workgroup_array(&mut self, name: &str, scalar: Scalar, len: u32) -> Expr {
        let ty = self.array_type(scalar, Some(len));
        self.global(name, AddressSpace::WorkGroup, ty, None)
    }

    fn global(
        &mut self,
        name: &str,
        space: AddressSpace,
        ty: Handle<Type>,
        binding: Option<ResourceBinding>,
    ) -> Expr {
        let var = self.module.global_variables.append(
            GlobalVariable {
                name: Some(name.to_string()),
                space,
                binding,
                ty,
                init: None,
                memory_decorations: MemoryDecorations::empty(),
            },
            Span::UNDEFINED,
        );
        self.pre_emitted(Expression::GlobalVariable(var))
    }

    /// A per-thread variable of type `ty`; returns a pointer to it.
    pub(crate) fn local_variable(&mut self, name: &str, ty: Handle<Type>) -> Expr {
        let var = self.function.local_variables.append(
            LocalVariable {
                name: Some(name.to_string()),
                ty,
                init: None,
            },
            Span::UNDEFINED,
        );
        self.pre_emitted(Expression::LocalVariable(var))
    }

    /// An entry-point argument bound to `builtin`.
    pub(crate) fn builtin(&mut self, builtin: BuiltIn, ty: Handle<Type>) -> Expr {
        let index = self.function.arguments.len() as u32;
        self.function.arguments.push(FunctionArgument {
            name: Some(format!("{builtin:?}").to_lowercase()),
            ty,
            binding: Some(Binding::BuiltIn(builtin)),
        });
        self.pre_emitted(Expression::FunctionArgument(index))
    }

    /// A literal (pre-emitted: usable anywhere in the function).
    pub(crate) fn literal(&mut self, literal: Literal) -> Expr {
        self.pre_emitted(Expression::Literal(literal))
    }

    /// The zero of type `ty`.
    pub(crate) fn zero(&mut self, ty: Handle<Type>) -> Expr {
        self.pre_emitted(Expression::ZeroValue(ty))
    }

    /// Any expression that is evaluated where it appears (covered by an `Emit`).
    pub(crate) fn expr(&mut self, e: Expression) -> Expr {
        let h = self.function.expressions.append(e, Span::UNDEFINED);
        let first = self.pending.map_or(h, |(first, _)| first);
        self.pending = Some((first, h));
        h
    }

    /// `fun(args...)`.
    pub(crate) fn math(&mut self, fun: MathFunction, args: &[Expr]) -> Expr {
        self.expr(Expression::Math {
            fun,
            arg: args[0],
            arg1: args.get(1).copied(),
            arg2: args.get(2).copied(),
            arg3: args.get(3).copied(),
        })
    }

    /// Reads through `pointer`.
    pub(crate) fn load(&mut self, pointer: Expr) -> Expr {
        self.expr(Expression::Load { pointer })
    }

    /// A pointer to element `index` of the array `base` points at.
    pub(crate) fn element(&mut self, base: Expr, index: Expr) -> Expr {
        self.expr(Expression::Access { base, index })
    }

    /// `value` (a scalar) in each of `lanes` lanes.
    pub(crate) fn splat(&mut self, value: Expr, lanes: u32) -> Expr {
        match vector_size(lanes) {
            Some(size) => self.expr(Expression::Splat { size, value }),
            None => value,
        }
    }

    /// The vector of type `ty` made of `components`.
    pub(crate) fn compose(&mut self, ty: Handle<Type>, components: Vec<Expr>) -> Expr {
        self.expr(Expression::Compose { ty, components })
    }

    fn pre_emitted(&mut self, e: Expression) -> Expr {
        self.flush();
        self.function.expressions.append(e, Span::UNDEFINED)
    }

    /// Ends the pending run of expressions with its `Emit`.
    fn flush(&mut self) {
        if let Some((first, last)) = self.pending.take() {
            self.statement_raw(Statement::Emit(Range::new_from_bounds(first, last)));
        }
    }

    fn statement_raw(&mut self, s: Statement) {
        if let Some(block) = self.blocks.last_mut() {
            block.push(s, Span::UNDEFINED);
        }
    }

    /// Appends a statement after the expressions built so far.
    pub(crate) fn statement(&mut self, s: Statement) {
        self.flush();
        self.statement_raw(s);
    }

    /// `*pointer = value`.
    pub(crate) fn store(&mut self, pointer: Expr, value: Expr) {
        self.statement(Statement::Store { pointer, value });
    }

    /// Workgroup execution barrier with a workgroup-memory fence.
    pub(crate) fn workgroup_barrier(&mut self) {
        self.statement(Statement::ControlBarrier(Barrier::WORK_GROUP));
    }

    /// The subgroup-wide reduction of `argument` (of type `ty`), in every lane.
    pub(crate) fn subgroup_reduce(
        &mut self,
        op: SubgroupOperation,
        argument: Expr,
        ty: Handle<Type>,
    ) -> Expr {
        let result = self.pre_emitted(Expression::SubgroupOperationResult { ty });
        self.statement(Statement::SubgroupCollectiveOperation {
            op,
            collective_op: CollectiveOperation::Reduce,
            argument,
            result,
        });
        result
    }

    /// `argument` (of type `ty`) as seen in subgroup lane `lane` (a `u32`).
    pub(crate) fn subgroup_shuffle(
        &mut self,
        argument: Expr,
        lane: Expr,
        ty: Handle<Type>,
    ) -> Expr {
        let result = self.pre_emitted(Expression::SubgroupOperationResult { ty });
        self.statement(Statement::SubgroupGather {
            mode: GatherMode::Shuffle(lane),
            argument,
            result,
        });
        result
    }

    /// Starts a nested block; the statements built until [`end_block`](Self::end_block) go
    /// into it.
    pub(crate) fn begin_block(&mut self) {
        self.flush();
        self.blocks.push(Block::new());
    }

    /// Closes the innermost nested block and returns it.
    pub(crate) fn end_block(&mut self) -> Block {
        self.flush();
        if self.blocks.len() > 1 {
            self.blocks.pop().unwrap_or_default()
        } else {
            Block::new()
        }
    }

    /// `if condition { accept } else { reject }`.
    pub(crate) fn if_(&mut self, condition: Expr, accept: Block, reject: Block) {
        self.statement(Statement::If {
            condition,
            accept,
            reject,
        });
    }

    /// `loop { body }` (left with [`break_`](Self::break_)).
    pub(crate) fn loop_(&mut self, body: Block) {
        self.statement(Statement::Loop {
            body,
            continuing: Block::new(),
            break_if: None,
        });
    }

    /// Leaves the innermost loop.
    pub(crate) fn break_(&mut self) {
        self.statement(Statement::Break);
    }

    /// The finished module: the body built so far as the compute entry point `name`.
    pub(crate) fn finish(mut self, name: &str, workgroup_size: [u32; 3]) -> Module {
        self.flush();
        let body = std::mem::take(&mut self.blocks);
        self.function.body = body.into_iter().next().unwrap_or_default();
        self.function.name = Some(name.to_string());
        self.module.entry_points.push(EntryPoint {
            name: name.to_string(),
            stage: ShaderStage::Compute,
            early_depth_test: None,
            workgroup_size,
            workgroup_size_overrides: None,
            function: self.function,
            mesh_info: None,
            task_payload: None,
            incoming_ray_payload: None,
        });
        self.module
    }
}

/// naga's vector size for 2–4 lanes.
fn vector_size(lanes: u32) -> Option<VectorSize> {
    match lanes {
        2 => Some(VectorSize::Bi),
        3 => Some(VectorSize::Tri),
        4 => Some(VectorSize::Quad),
        _ => None,
    }
}
