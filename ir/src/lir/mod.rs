//! LIR, the loop-level kernel IR (DESIGN.md §3): structured loops over SSA scalar and vector
//! values, memory spaces, the thread hierarchy, barriers and a declared set of intrinsics. Templates
//! in `passes/lower` generate it from a KernelGraph kernel; every backend (Cranelift, PTX, SPIR-V)
//! translates it, so one kernel generator per algorithm and target class serves all of them.
//!
//! Build kernels with [`KernelBuilder`], check them against a target's [`Capabilities`] with
//! [`verify`], print them with `Display`.

mod align;
mod builder;
pub mod examples;
mod print;
mod program;
mod verify;

pub use align::{known_alignment, MAX_ALIGN};
pub use builder::KernelBuilder;
pub use program::{Program, Scratch};
pub use verify::verify;

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

/// The element type of a value or buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalarType {
    F32,
    F16,
    Bf16,
    I32,
    I64,
    U32,
    U8,
    I8,
    Bool,
}

impl ScalarType {
    /// Floating point: the only types transcendental ops and `Fma` accept.
    pub fn is_float(self) -> bool {
        matches!(self, ScalarType::F32 | ScalarType::F16 | ScalarType::Bf16)
    }

    /// Integer (signed or not): the only types indices, shifts and loop bounds accept.
    pub fn is_int(self) -> bool {
        matches!(
            self,
            ScalarType::I32 | ScalarType::I64 | ScalarType::U32 | ScalarType::U8 | ScalarType::I8
        )
    }

    /// Size in memory, for shared-memory budgets and byte-sized copies.
    pub fn bytes(self) -> u32 {
        match self {
            ScalarType::I64 => 8,
            ScalarType::F32 | ScalarType::I32 | ScalarType::U32 => 4,
            ScalarType::F16 | ScalarType::Bf16 => 2,
            ScalarType::U8 | ScalarType::I8 | ScalarType::Bool => 1,
        }
    }

    /// The name used in printed LIR.
    pub fn name(self) -> &'static str {
        match self {
            ScalarType::F32 => "f32",
            ScalarType::F16 => "f16",
            ScalarType::Bf16 => "bf16",
            ScalarType::I32 => "i32",
            ScalarType::I64 => "i64",
            ScalarType::U32 => "u32",
            ScalarType::U8 => "u8",
            ScalarType::I8 => "i8",
            ScalarType::Bool => "bool",
        }
    }
}

/// The type of an SSA value: a scalar (`lanes == 1`) or a vector of `lanes` scalars (SIMD
/// registers on CPU, vec2/vec4 or per-thread fragments on GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Type {
    pub scalar: ScalarType,
    pub lanes: u32,
}

impl Type {
    /// A one-lane type.
    pub fn scalar(scalar: ScalarType) -> Type {
        Type { scalar, lanes: 1 }
    }

    /// A `lanes`-wide vector type.
    pub fn vector(scalar: ScalarType, lanes: u32) -> Type {
        Type { scalar, lanes }
    }
}

/// Where a buffer lives: kernel buffer params are `Global`; [`LocalBuffer`]s are `Shared`
/// (workgroup memory) or `Private` (per-thread arrays, registers when small).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySpace {
    Global,
    Shared,
    Private,
}

/// What a kernel may do with a buffer param; the verifier rejects stores to `Read` buffers and
/// backends use it for `readonly`/`noalias` qualifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// A global-memory buffer passed at launch. Quantized weights are `U8` byte buffers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferParam {
    pub name: String,
    pub elem: ScalarType,
    pub access: Access,
}

/// A scalar passed at launch: sizes and bound symbols (`n`, `seq`, `past`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalarParam {
    pub name: String,
    pub ty: ScalarType,
}

/// Kernel-owned memory: `Shared` (one array per workgroup) or `Private` (one per thread).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalBuffer {
    pub name: String,
    pub space: MemorySpace,
    pub elem: ScalarType,
    pub len: u32,
}

/// A buffer operand: a kernel buffer param or a local buffer, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufRef {
    Param(usize),
    Local(usize),
}

/// A dimension of the thread hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    X,
    Y,
    Z,
}

/// A thread-hierarchy value, always an `i64` in LIR (translators narrow it where they can). A CPU
/// kernel has workgroup size `[1, 1, 1]`: its groups are the work items the runtime's thread pool
/// splits, and `LocalId` is always 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Special {
    GroupId(Axis),
    NumGroups(Axis),
    LocalId(Axis),
    GroupSize(Axis),
    SubgroupId,
    SubgroupLane,
    SubgroupSize,
}

impl Special {
    /// Whether every thread of a workgroup sees the same value (barrier placement depends on it).
    pub fn is_uniform(self) -> bool {
        matches!(
            self,
            Special::GroupId(_)
                | Special::NumGroups(_)
                | Special::GroupSize(_)
                | Special::SubgroupSize
        )
    }

    /// Whether it needs a target with subgroups.
    pub fn needs_subgroups(self) -> bool {
        matches!(
            self,
            Special::SubgroupId | Special::SubgroupLane | Special::SubgroupSize
        )
    }
}

/// An SSA value; its type is `Kernel::values[index]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Value(pub u32);

impl Value {
    /// Position in `Kernel::values`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A constant's value; its type is the type recorded for the value it defines.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Literal {
    F(#[serde(with = "json_f64")] f64),
    I(i64),
    Bool(bool),
}

/// Serde for an `f64` that may be infinite or NaN, which JSON numbers cannot hold (a max
/// reduction starts at `-inf`): finite values as numbers, the others as the strings `inf`,
/// `-inf` and `nan`.
mod json_f64 {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("nan"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(v) => Ok(v),
            Repr::Text(t) => match t.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                other => Err(D::Error::custom(format!("`{other}` is not a float"))),
            },
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::Literal;

        #[test]
        fn non_finite_literals_round_trip_through_json() {
            for v in [f64::NEG_INFINITY, f64::INFINITY, -0.5, 1e-6] {
                let json = serde_json::to_string(&Literal::F(v)).unwrap();
                let back: Literal = serde_json::from_str(&json).unwrap();
                assert_eq!(back, Literal::F(v), "{json}");
            }
            let json = serde_json::to_string(&Literal::F(f64::NAN)).unwrap();
            let back: Literal = serde_json::from_str(&json).unwrap();
            assert!(matches!(back, Literal::F(v) if v.is_nan()), "{json}");
        }
    }
}

/// One-operand arithmetic. `Neg` and `Abs` take any numeric type, the rest only floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Tanh,
    Sin,
    Cos,
    Floor,
}

/// Two-operand arithmetic on equal types. Bitwise ops take integers (and, or, xor also bools);
/// shifts take integers; the rest take numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

/// Comparisons; the result is `bool` with the operands' lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Reductions across vector lanes or subgroup threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOp {
    Add,
    Max,
    Min,
}

/// Target-specific operations a backend must declare in [`Capabilities::intrinsics`]. Signatures
/// (argument types → result type), checked by the verifier:
///
/// - `SubgroupReduce(op)`: `[x: T] → T`, `T` numeric; every lane gets the reduction over the
///   subgroup.
/// - `SubgroupBroadcast`: `[x: T, lane: integer] → T`; every lane gets `x` of lane `lane`.
/// - `Dot4I8Packed`: `[a: u32×n, b: u32×n, acc: i32×n] → i32×n`; per lane, `a` and `b` each
///   pack four `i8` and the result is `acc + Σ a[i]·b[i]` (dp4a on GPUs; on a 128-bit CPU vector
///   of four lanes, the `sdot`/`vpdpbssd` shape).
/// - `Dot4U8I8Packed`: the same with `a` packing four `u8` (dp4a.u32.s32, `OpSUDot`, x86
///   `vpdpbusd`, the form block-quantized kernels map best to: unsigned 4-bit codes or offset
///   8-bit values against signed 8-bit activations).
/// - `MmaSync { m, n, k }`: a subgroup-of-32 matrix multiply-accumulate `D = A·B + C` on
///   per-thread fragments: `[a: f16|bf16 × m·k/32, b: (a's scalar) × k·n/32, c: f32 × m·n/32]
///   → f32 × m·n/32`, in the fragment layout of PTX `mma.sync` for that shape.
/// - `AsyncCopy { dst, src, ty }`: `[dst_index: integer, src_index: integer] → u32`; starts
///   copying one `ty` (4, 8 or 16 bytes) from global buffer param `src` into shared local `dst`.
///   The copy is complete after the next `Barrier`; the `u32` result is a token without meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intrinsic {
    SubgroupReduce(ReduceOp),
    SubgroupBroadcast,
    Dot4I8Packed,
    Dot4U8I8Packed,
    MmaSync { m: u32, n: u32, k: u32 },
    AsyncCopy { dst: BufRef, src: BufRef, ty: Type },
}

/// The support a backend declares for an [`Intrinsic`]; MMA support is per shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntrinsicKind {
    SubgroupReduce,
    SubgroupBroadcast,
    Dot4I8Packed,
    Dot4U8I8Packed,
    MmaSync { m: u32, n: u32, k: u32 },
    AsyncCopy,
}

impl Intrinsic {
    /// What a backend must declare to accept this intrinsic.
    pub fn kind(&self) -> IntrinsicKind {
        match *self {
            Intrinsic::SubgroupReduce(_) => IntrinsicKind::SubgroupReduce,
            Intrinsic::SubgroupBroadcast => IntrinsicKind::SubgroupBroadcast,
            Intrinsic::Dot4I8Packed => IntrinsicKind::Dot4I8Packed,
            Intrinsic::Dot4U8I8Packed => IntrinsicKind::Dot4U8I8Packed,
            Intrinsic::MmaSync { m, n, k } => IntrinsicKind::MmaSync { m, n, k },
            Intrinsic::AsyncCopy { .. } => IntrinsicKind::AsyncCopy,
        }
    }
}

/// An instruction: defines exactly one value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inst {
    Const(Literal),
    /// The scalar param at this index.
    Param(usize),
    Special(Special),
    Unary(UnaryOp, Value),
    Binary(BinaryOp, Value, Value),
    /// `a * b + c`, fused.
    Fma(Value, Value, Value),
    Cmp(CmpOp, Value, Value),
    /// `cond ? a : b`; a scalar `cond` selects whole vectors, a vector one selects per lane.
    Select(Value, Value, Value),
    /// Converts each lane to the type's scalar (lanes must match).
    Cast(Type, Value),
    /// Reinterprets the bits as another type of the same total width (`u8x16` as `u32x4`, `f32`
    /// as `u32`); lanes are little-endian, as in memory.
    Bitcast(Type, Value),
    /// Broadcasts a scalar to every lane of the type.
    Splat(Type, Value),
    /// One lane of a vector.
    Extract(Value, u32),
    /// The lanes of the operands in order, as one vector: values of one scalar type (a scalar
    /// counts as one lane) joined lane-wise. Templates use it to fill a wide vector from
    /// narrower reads that are not contiguous (the code runs of separate quantized blocks).
    Concat(Vec<Value>),
    /// Reduces a vector's lanes to a scalar.
    ReduceLanes(ReduceOp, Value),
    /// Reads `ty` at element `index` of `buf`; `ty.lanes > 1` reads that many contiguous
    /// elements. A `u8` buffer is byte-addressed memory: it may be read as any (non-`bool`)
    /// type, `index` counting bytes and carrying no alignment (block-quantized weights mix `f16`
    /// scales and packed values in 18- or 34-byte blocks).
    Load {
        buf: BufRef,
        index: Value,
        ty: Type,
    },
    Intrinsic(Intrinsic, Vec<Value>),
}

impl Inst {
    /// The values it reads, in order.
    pub fn operands(&self) -> Vec<Value> {
        match self {
            Inst::Const(_) | Inst::Param(_) | Inst::Special(_) => vec![],
            Inst::Unary(_, a)
            | Inst::Cast(_, a)
            | Inst::Bitcast(_, a)
            | Inst::Splat(_, a)
            | Inst::Extract(a, _)
            | Inst::ReduceLanes(_, a) => vec![*a],
            Inst::Load { index, .. } => vec![*index],
            Inst::Binary(_, a, b) | Inst::Cmp(_, a, b) => vec![*a, *b],
            Inst::Fma(a, b, c) | Inst::Select(a, b, c) => vec![*a, *b, *c],
            Inst::Concat(args) | Inst::Intrinsic(_, args) => args.clone(),
        }
    }

    /// The type it produces in kernel `k`, or why its operands do not fit it. `declared` is the
    /// type recorded for its value; only constants use it (a literal takes its value's type).
    pub fn result_type(&self, k: &Kernel, declared: Type) -> Result<Type, String> {
        let ty = |v: &Value| {
            k.values
                .get(v.index())
                .copied()
                .ok_or_else(|| format!("%{} has no type", v.0))
        };
        match self {
            Inst::Const(lit) => {
                let fits = match lit {
                    Literal::F(_) => declared.scalar.is_float(),
                    Literal::I(_) => declared.scalar.is_int(),
                    Literal::Bool(_) => declared.scalar == ScalarType::Bool,
                };
                if fits && declared.lanes == 1 {
                    Ok(declared)
                } else {
                    Err(format!("constant {lit:?} cannot have type {declared}"))
                }
            }
            Inst::Param(i) => k
                .scalars
                .get(*i)
                .map(|p| Type::scalar(p.ty))
                .ok_or_else(|| format!("no scalar param {i}")),
            Inst::Special(_) => Ok(Type::scalar(ScalarType::I64)),
            Inst::Unary(op, a) => {
                let t = ty(a)?;
                let ok = match op {
                    UnaryOp::Neg | UnaryOp::Abs => is_numeric(t),
                    _ => t.scalar.is_float(),
                };
                expect(ok, || format!("{op:?} does not take {t}"))?;
                Ok(t)
            }
            Inst::Binary(op, a, b) => {
                let (ta, tb) = (ty(a)?, ty(b)?);
                expect(ta == tb, || {
                    format!("{op:?} operands differ: {ta} and {tb}")
                })?;
                let ok = match op {
                    BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => {
                        ta.scalar.is_int() || ta.scalar == ScalarType::Bool
                    }
                    BinaryOp::Shl | BinaryOp::Shr => ta.scalar.is_int(),
                    _ => is_numeric(ta),
                };
                expect(ok, || format!("{op:?} does not take {ta}"))?;
                Ok(ta)
            }
            Inst::Fma(a, b, c) => {
                let (ta, tb, tc) = (ty(a)?, ty(b)?, ty(c)?);
                expect(ta == tb && tb == tc && ta.scalar.is_float(), || {
                    format!("fma needs three equal float types, got {ta}, {tb}, {tc}")
                })?;
                Ok(ta)
            }
            Inst::Cmp(op, a, b) => {
                let (ta, tb) = (ty(a)?, ty(b)?);
                expect(ta == tb, || {
                    format!("{op:?} operands differ: {ta} and {tb}")
                })?;
                Ok(Type::vector(ScalarType::Bool, ta.lanes))
            }
            Inst::Select(c, a, b) => {
                let (tc, ta, tb) = (ty(c)?, ty(a)?, ty(b)?);
                expect(ta == tb, || format!("select arms differ: {ta} and {tb}"))?;
                expect(
                    tc.scalar == ScalarType::Bool && (tc.lanes == 1 || tc.lanes == ta.lanes),
                    || format!("select condition {tc} does not fit {ta}"),
                )?;
                Ok(ta)
            }
            Inst::Cast(to, a) => {
                let ta = ty(a)?;
                expect(ta.lanes == to.lanes, || {
                    format!("cast changes lanes: {ta} to {to}")
                })?;
                Ok(*to)
            }
            Inst::Bitcast(to, a) => {
                let ta = ty(a)?;
                let bits = |t: Type| t.scalar.bytes() * t.lanes;
                expect(
                    bits(ta) == bits(*to)
                        && ta.scalar != ScalarType::Bool
                        && to.scalar != ScalarType::Bool,
                    || format!("cannot bitcast {ta} to {to}"),
                )?;
                Ok(*to)
            }
            Inst::Splat(to, a) => {
                let ta = ty(a)?;
                expect(ta == Type::scalar(to.scalar), || {
                    format!("cannot splat {ta} to {to}")
                })?;
                Ok(*to)
            }
            Inst::Extract(a, lane) => {
                let ta = ty(a)?;
                expect(*lane < ta.lanes, || format!("lane {lane} out of {ta}"))?;
                Ok(Type::scalar(ta.scalar))
            }
            Inst::Concat(parts) => {
                let types = parts.iter().map(ty).collect::<Result<Vec<_>, _>>()?;
                let first = types.first().ok_or("concat of no values")?;
                expect(types.iter().all(|t| t.scalar == first.scalar), || {
                    let names: Vec<String> = types.iter().map(Type::to_string).collect();
                    format!("concat of different scalar types: {}", names.join(", "))
                })?;
                Ok(Type::vector(
                    first.scalar,
                    types.iter().map(|t| t.lanes).sum(),
                ))
            }
            Inst::ReduceLanes(op, a) => {
                let ta = ty(a)?;
                expect(is_numeric(ta), || format!("cannot reduce {op:?} over {ta}"))?;
                Ok(Type::scalar(ta.scalar))
            }
            Inst::Load { buf, index, ty: t } => {
                check_index(ty(index)?)?;
                let elem = k.buffer_elem(*buf)?;
                let bytes = elem == ScalarType::U8 && t.scalar != ScalarType::Bool;
                expect(t.scalar == elem || bytes, || {
                    format!("load of {t} from a {elem} buffer")
                })?;
                Ok(*t)
            }
            Inst::Intrinsic(i, args) => {
                let types = args.iter().map(ty).collect::<Result<Vec<_>, _>>()?;
                intrinsic_type(k, i, &types)
            }
        }
    }
}

fn is_numeric(t: Type) -> bool {
    t.scalar != ScalarType::Bool
}

fn expect(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(message())
    }
}

/// Indices and loop bounds are integer scalars.
fn check_index(t: Type) -> Result<(), String> {
    expect(t.scalar.is_int() && t.lanes == 1, || {
        format!("index must be an integer scalar, got {t}")
    })
}

fn intrinsic_type(k: &Kernel, i: &Intrinsic, args: &[Type]) -> Result<Type, String> {
    let s = Type::scalar;
    match (i, args) {
        (Intrinsic::SubgroupReduce(_), [x]) if is_numeric(*x) => Ok(*x),
        (Intrinsic::SubgroupBroadcast, [x, lane]) => check_index(*lane).map(|_| *x),
        (Intrinsic::Dot4I8Packed | Intrinsic::Dot4U8I8Packed, [a, b, acc])
            if a.scalar == ScalarType::U32
                && *b == *a
                && *acc == Type::vector(ScalarType::I32, a.lanes) =>
        {
            Ok(*acc)
        }
        (Intrinsic::MmaSync { m, n, k: kk }, [a, b, c]) => {
            let frag = |r: u32, c: u32| {
                r.checked_mul(c)
                    .is_some_and(|p| p > 0 && p.is_multiple_of(32))
            };
            expect(frag(*m, *kk) && frag(*kk, *n) && frag(*m, *n), || {
                format!("mma shape m{m}n{n}k{kk} does not split over 32 threads")
            })?;
            let d = Type::vector(ScalarType::F32, m * n / 32);
            expect(
                matches!(a.scalar, ScalarType::F16 | ScalarType::Bf16)
                    && a.lanes == m * kk / 32
                    && *b == Type::vector(a.scalar, kk * n / 32)
                    && *c == d,
                || format!("mma m{m}n{n}k{kk} fragments do not fit {a}, {b}, {c}"),
            )?;
            Ok(d)
        }
        (Intrinsic::AsyncCopy { dst, src, ty }, [dst_index, src_index]) => {
            check_index(*dst_index)?;
            check_index(*src_index)?;
            let shared_dst = matches!(dst, BufRef::Local(l)
                if k.locals.get(*l).is_some_and(|b| b.space == MemorySpace::Shared));
            expect(shared_dst && matches!(src, BufRef::Param(_)), || {
                "async copy goes from a buffer param to a shared local".to_string()
            })?;
            let (de, se) = (k.buffer_elem(*dst)?, k.buffer_elem(*src)?);
            expect(de == ty.scalar && se == ty.scalar, || {
                format!("async copy of {ty} between {se} and {de} buffers")
            })?;
            let bytes = ty.scalar.bytes() * ty.lanes;
            expect(matches!(bytes, 4 | 8 | 16), || {
                format!("async copy of {bytes} bytes (4, 8 or 16 allowed)")
            })?;
            Ok(s(ScalarType::U32))
        }
        _ => {
            let list: Vec<String> = args.iter().map(Type::to_string).collect();
            Err(format!("{i:?} does not take ({})", list.join(", ")))
        }
    }
}

/// A launch-time size (grid dimensions), evaluated from the scalar params' values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeExpr {
    Const(u64),
    /// The value of the scalar param at this index.
    Param(usize),
    Add(Box<SizeExpr>, Box<SizeExpr>),
    Mul(Box<SizeExpr>, Box<SizeExpr>),
    /// `⌈a / d⌉`: how many tiles of `d` cover `a`.
    CeilDiv(Box<SizeExpr>, u64),
}

impl SizeExpr {
    /// `⌈self / d⌉`, for building grids tersely.
    pub fn ceil_div(self, d: u64) -> SizeExpr {
        SizeExpr::CeilDiv(Box::new(self), d)
    }

    /// Evaluates with `scalars[i]` the value of scalar param `i`; errors on a missing or
    /// negative param, overflow and division by zero.
    pub fn eval(&self, scalars: &[i64]) -> Result<u64, String> {
        match self {
            SizeExpr::Const(c) => Ok(*c),
            SizeExpr::Param(i) => {
                let v = *scalars
                    .get(*i)
                    .ok_or_else(|| format!("no value for scalar param {i}"))?;
                u64::try_from(v).map_err(|_| format!("scalar param {i} is negative ({v})"))
            }
            SizeExpr::Add(a, b) => a
                .eval(scalars)?
                .checked_add(b.eval(scalars)?)
                .ok_or_else(|| "size overflows".to_string()),
            SizeExpr::Mul(a, b) => a
                .eval(scalars)?
                .checked_mul(b.eval(scalars)?)
                .ok_or_else(|| "size overflows".to_string()),
            SizeExpr::CeilDiv(a, d) => {
                expect(*d != 0, || "ceil division by zero".to_string())?;
                Ok(a.eval(scalars)?.div_ceil(*d))
            }
        }
    }
}

/// A statement of a kernel body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stmt {
    Let(Value, Inst),
    /// Writes `value` at element `index` of `buf` (contiguous lanes for a vector).
    Store {
        buf: BufRef,
        index: Value,
        value: Value,
    },
    /// `for iv in start..end step step`, MLIR `scf.for` style: `carried` params start at their
    /// `init`, each iteration's `yields` become the next iteration's params, and the final ones
    /// are the loop's `results` — the only way a body's values leave the loop.
    For {
        iv: Value,
        start: Value,
        end: Value,
        step: u32,
        carried: Vec<Carried>,
        body: Vec<Stmt>,
        yields: Vec<Value>,
        results: Vec<Value>,
    },
    /// No results: branches communicate through Private memory, or use `Select` instead.
    If {
        cond: Value,
        then_: Vec<Stmt>,
        else_: Vec<Stmt>,
    },
    /// Workgroup barrier and memory fence on Shared memory; the whole workgroup must reach it.
    Barrier,
}

/// A loop-carried value: `param` is visible in the body and starts as `init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    pub param: Value,
    pub init: Value,
}

/// One kernel: its launch interface, local memory, value types and body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    pub name: String,
    pub buffers: Vec<BufferParam>,
    pub scalars: Vec<ScalarParam>,
    pub locals: Vec<LocalBuffer>,
    pub workgroup_size: [u32; 3],
    pub grid: [SizeExpr; 3],
    /// The type of every value, indexed by [`Value`].
    pub values: Vec<Type>,
    pub body: Vec<Stmt>,
}

impl Kernel {
    /// The element type of a buffer operand.
    pub fn buffer_elem(&self, buf: BufRef) -> Result<ScalarType, String> {
        match buf {
            BufRef::Param(i) => self.buffers.get(i).map(|b| b.elem),
            BufRef::Local(i) => self.locals.get(i).map(|b| b.elem),
        }
        .ok_or_else(|| format!("no buffer {buf:?}"))
    }

    /// The name of a buffer operand, for printing and errors.
    pub fn buffer_name(&self, buf: BufRef) -> &str {
        match buf {
            BufRef::Param(i) => self.buffers.get(i).map(|b| b.name.as_str()),
            BufRef::Local(i) => self.locals.get(i).map(|b| b.name.as_str()),
        }
        .unwrap_or("<missing>")
    }
}

/// What a backend supports; [`verify`] checks a kernel against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Subgroup (warp) sizes the target can run; empty when it has no subgroups.
    pub subgroup_sizes: Vec<u32>,
    pub intrinsics: BTreeSet<IntrinsicKind>,
    /// Most threads in one workgroup.
    pub max_workgroup_size: u32,
    /// Shared memory per workgroup, in bytes.
    pub shared_bytes: u32,
    /// Whether `f16` values (not only `f16` buffers) are allowed.
    pub f16: bool,
}

/// Why a kernel fails verification: the kernel, the statement path (`body[2].body[0]`) and the
/// values involved.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LirError {
    #[error("kernel {kernel}, {path}: %{} is not defined here", value.0)]
    Undefined {
        kernel: String,
        path: String,
        value: Value,
    },
    #[error("kernel {kernel}, {path}: %{} is defined twice", value.0)]
    Redefined {
        kernel: String,
        path: String,
        value: Value,
    },
    #[error("kernel {kernel}, {path}: type error: {message}")]
    Type {
        kernel: String,
        path: String,
        message: String,
    },
    #[error("kernel {kernel}, {path}: store to read-only buffer {buffer}")]
    ReadOnly {
        kernel: String,
        path: String,
        buffer: String,
    },
    #[error("kernel {kernel}, {path}: barrier not reached by the whole workgroup: {reason}")]
    DivergentBarrier {
        kernel: String,
        path: String,
        reason: String,
    },
    #[error("kernel {kernel}, {path}: not supported by the target: {message}")]
    Unsupported {
        kernel: String,
        path: String,
        message: String,
    },
    #[error("kernel {kernel}, {path}: {message}")]
    Invalid {
        kernel: String,
        path: String,
        message: String,
    },
}

#[cfg(test)]
mod tests;
