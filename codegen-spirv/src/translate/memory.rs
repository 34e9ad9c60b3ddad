//! Buffer memory: how a buffer's elements sit in its naga array, and the loads and stores
//! through it.
//!
//! A buffer param's array element is a vector of `width` units (its scalars, or the `u32` words
//! of a packed buffer) when the kernel accesses it with vectors whose index is provably a
//! multiple of that width ([`known_alignment`]): such an access is one wide memory operation
//! (`vec4<f32>`: 16 bytes, one `LDG.128` on NVIDIA) instead of one per lane. Any other access
//! addresses a single unit inside an element. The runtime binds every buffer in whole 16-byte
//! granules, so the array's last element is always complete.

use super::Translator;
use crate::builder::Expr;
use crate::CodegenError;
use naga::{BinaryOperator, Expression, MathFunction, Scalar, ScalarKind};
use tessera_ir::lir::{Access, BufRef, Inst, MemorySpace, ScalarType, Stmt, Type, Value};

/// How a buffer's elements sit in its naga array.
#[derive(Clone, Copy)]
pub(super) enum Layout {
    /// Units of the element's own type, `words` units per LIR element (2 for `i64`).
    Native { words: u32 },
    /// `u32` words of bytes, read by extraction.
    Packed,
}

/// A buffer operand: a pointer to its naga array and how to address it.
#[derive(Clone, Copy)]
pub(super) struct Memory {
    pointer: Expr,
    layout: Layout,
    /// Units per array element: 1, 2 or 4 (a vector element).
    width: u32,
}

/// The widest vector element, in units.
const WIDTHS: [u32; 2] = [4, 2];

impl Translator<'_> {
    /// The layout of a buffer param with elements of `elem`.
    fn buffer_layout(&self, elem: ScalarType) -> Layout {
        match elem {
            ScalarType::F32 | ScalarType::I32 | ScalarType::U32 => Layout::Native { words: 1 },
            ScalarType::F16 if self.half => Layout::Native { words: 1 },
            ScalarType::I64 => Layout::Native { words: 2 },
            ScalarType::U8
            | ScalarType::I8
            | ScalarType::F16
            | ScalarType::Bf16
            | ScalarType::Bool => Layout::Packed,
        }
    }

    /// Declares the buffer params (arrays of the widest aligned access each), the scalar
    /// params' array and the locals.
    pub(super) fn declare_memory(&mut self) -> Result<(), CodegenError> {
        let mut widths = vec![1; self.k.buffers.len()];
        self.widest_accesses(&self.k.body, &mut widths);
        for (i, p) in self.k.buffers.iter().enumerate() {
            let layout = self.buffer_layout(p.elem);
            let scalar = match layout {
                Layout::Native { .. } => self.repr(p.elem),
                Layout::Packed => Scalar::U32,
            };
            let read_only = p.access == Access::Read;
            let pointer = self
                .b
                .storage_buffer(&p.name, (scalar, widths[i]), i as u32, read_only);
            self.buffers.push(Memory {
                pointer,
                layout,
                width: widths[i],
            });
        }
        if !self.k.scalars.is_empty() {
            let binding = self.k.buffers.len() as u32;
            self.scalars = Some(
                self.b
                    .storage_buffer("scalars", (Scalar::U32, 1), binding, true),
            );
        }
        for l in &self.k.locals {
            let scalar = self.repr(l.elem);
            let pointer = match l.space {
                MemorySpace::Shared => self.b.workgroup_array(&l.name, scalar, l.len),
                MemorySpace::Private => {
                    let ty = self.b.array_type(scalar, Some(l.len));
                    self.b.local_variable(&l.name, ty)
                }
                MemorySpace::Global => {
                    return Err(self.unsupported(format!("local {} in global memory", l.name)))
                }
            };
            self.locals.push(pointer);
        }
        Ok(())
    }

    /// Raises `widths[i]` to the widest aligned access to buffer param `i` in `body`.
    fn widest_accesses(&self, body: &[Stmt], widths: &mut [u32]) {
        for stmt in body {
            let (buf, index, ty) = match stmt {
                Stmt::Let(_, Inst::Load { buf, index, ty }) => (*buf, *index, *ty),
                Stmt::Store { buf, index, value } => (*buf, *index, self.type_of(*value)),
                Stmt::For { body, .. } => {
                    self.widest_accesses(body, widths);
                    continue;
                }
                Stmt::If { then_, else_, .. } => {
                    self.widest_accesses(then_, widths);
                    self.widest_accesses(else_, widths);
                    continue;
                }
                Stmt::Let(..) | Stmt::Barrier => continue,
            };
            if let BufRef::Param(i) = buf {
                let elem = self.k.buffers[i].elem;
                let layout = self.buffer_layout(elem);
                let width = WIDTHS
                    .into_iter()
                    .find(|&w| self.groups(layout, elem, index, ty, w).is_some())
                    .unwrap_or(1);
                widths[i] = widths[i].max(width);
            }
        }
    }

    /// How many whole vector elements of `width` units an access of `ty` at `index` spans,
    /// when it starts at one (its index provably aligned) and ends at one.
    fn groups(
        &self,
        layout: Layout,
        elem: ScalarType,
        index: Value,
        ty: Type,
        width: u32,
    ) -> Option<u32> {
        let align = self.align[index.index()];
        let (units, unit_align) = match layout {
            Layout::Native { words: 1 } => (ty.lanes, align),
            Layout::Native { .. } => return None,
            Layout::Packed => {
                let bytes = ty.scalar.bytes() * ty.lanes;
                let byte_align = align * elem.bytes();
                if !bytes.is_multiple_of(4) || !byte_align.is_multiple_of(4) {
                    return None;
                }
                (bytes / 4, byte_align / 4)
            }
        };
        (units.is_multiple_of(width) && unit_align.is_multiple_of(width)).then_some(units / width)
    }

    pub(super) fn memory(&self, buf: BufRef) -> Result<Memory, CodegenError> {
        match buf {
            BufRef::Param(i) => self.buffers.get(i).copied(),
            BufRef::Local(i) => self.locals.get(i).map(|&pointer| Memory {
                pointer,
                layout: Layout::Native { words: 1 },
                width: 1,
            }),
        }
        .ok_or_else(|| self.unsupported(format!("no buffer {buf:?}")))
    }

    /// A pointer to unit `u` (a `u32`) of `m`.
    fn unit(&mut self, m: Memory, u: Expr) -> Expr {
        if m.width == 1 {
            return self.b.element(m.pointer, u);
        }
        let shift = self.u32(m.width.trailing_zeros());
        let element = self.binary(BinaryOperator::ShiftRight, u, shift);
        let mask = self.u32(m.width - 1);
        let within = self.binary(BinaryOperator::And, u, mask);
        let p = self.b.element(m.pointer, element);
        self.b.element(p, within)
    }

    /// The units `first..first + count` of `m`, as `count` values: whole vector elements read
    /// at once when `wide` (`first` proven aligned to them and `count` whole ones), one unit each
    /// otherwise.
    fn read_units(&mut self, m: Memory, first: Expr, count: u32, wide: bool) -> Vec<Expr> {
        if !wide || m.width == 1 {
            return (0..count)
                .map(|i| {
                    let at = self.offset(first, i);
                    let p = self.unit(m, at);
                    self.b.load(p)
                })
                .collect();
        }
        let shift = self.u32(m.width.trailing_zeros());
        let element = self.binary(BinaryOperator::ShiftRight, first, shift);
        let mut units = Vec::with_capacity(count as usize);
        for g in 0..count / m.width {
            let at = self.offset(element, g);
            let p = self.b.element(m.pointer, at);
            let v = self.b.load(p);
            units.extend((0..m.width).map(|l| self.lane(v, m.width, l)));
        }
        units
    }

    /// Whether an access of `ty` at `index` of `buf` covers whole vector elements of `m`.
    fn wide_groups(&self, m: Memory, buf: BufRef, index: Value, ty: Type) -> Option<u32> {
        let elem = self.k.buffer_elem(buf).ok()?;
        self.groups(m.layout, elem, index, ty, m.width)
    }

    pub(super) fn load(
        &mut self,
        buf: BufRef,
        index: Value,
        ty: Type,
    ) -> Result<Expr, CodegenError> {
        let m = self.memory(buf)?;
        let elem = self.k.buffer_elem(buf).map_err(|e| self.unsupported(e))?;
        let base = self.index_u32(index)?;
        let wide = self.wide_groups(m, buf, index, ty);
        let lanes = match m.layout {
            Layout::Native { words } => {
                if ty.scalar != elem {
                    return Err(self.unsupported(format!(
                        "load of {ty} from {}, a {elem} local (only u8 buffer params are byte-addressed)",
                        self.k.buffer_name(buf)
                    )));
                }
                let first = self.scale(base, words);
                if words == 1 {
                    self.read_units(m, first, ty.lanes, wide.is_some())
                } else {
                    (0..ty.lanes)
                        .map(|i| {
                            let at = self.offset(first, i * words);
                            let p = self.unit(m, at);
                            self.b.load(p)
                        })
                        .collect()
                }
            }
            Layout::Packed => self.load_packed(m, elem, (base, index), ty),
        };
        self.gather(lanes, ty)
    }

    /// The lanes of a load of `ty` from a packed buffer of `elem` at `index` (`base` as a
    /// `u32`): whole words when the access is word-aligned, byte extraction otherwise.
    fn load_packed(
        &mut self,
        m: Memory,
        elem: ScalarType,
        (base, index): (Expr, Value),
        ty: Type,
    ) -> Vec<Expr> {
        let byte = self.scale(base, elem.bytes());
        let size = ty.scalar.bytes();
        if let Some(words) = self.groups(m.layout, elem, index, ty, 1) {
            let two = self.u32(2);
            let first = self.binary(BinaryOperator::ShiftRight, byte, two);
            let wide = self.groups(m.layout, elem, index, ty, m.width).is_some();
            let read = self.read_units(m, first, words, wide);
            return (0..ty.lanes)
                .map(|i| {
                    let at = i * size;
                    let word = read[(at / 4) as usize];
                    let bits = self.field(word, 8 * (at % 4), size);
                    self.decode_bits(bits, ty.scalar)
                })
                .collect();
        }
        // Only a `u8` buffer read as a wider type can be misaligned.
        let aligned = size <= elem.bytes();
        (0..ty.lanes)
            .map(|i| {
                let at = self.offset(byte, i * size);
                let bits = self.read_bytes(m, at, size.min(4), aligned);
                self.decode_bits(bits, ty.scalar)
            })
            .collect()
    }

    /// The `size` bytes of `word` from bit `shift`, zero-extended (the whole word for 4 or more).
    fn field(&mut self, word: Expr, shift: u32, size: u32) -> Expr {
        let shifted = if shift == 0 {
            word
        } else {
            let s = self.u32(shift);
            self.binary(BinaryOperator::ShiftRight, word, s)
        };
        if size >= 4 {
            return shifted;
        }
        let mask = self.u32((1u32 << (8 * size)) - 1);
        self.binary(BinaryOperator::And, shifted, mask)
    }

    /// A value of `scalar` from the low bits of the `u32` `bits` (the packed-buffer and
    /// scalar-param encodings).
    pub(super) fn decode_bits(&mut self, bits: Expr, scalar: ScalarType) -> Expr {
        match scalar {
            ScalarType::U32 | ScalarType::U8 => bits,
            ScalarType::Bool => {
                let zero = self.u32(0);
                self.binary(BinaryOperator::NotEqual, bits, zero)
            }
            ScalarType::I32 | ScalarType::I64 => self.cast(bits, ScalarKind::Sint, None),
            ScalarType::I8 => {
                let signed = self.cast(bits, ScalarKind::Sint, None);
                self.wrap8(signed, Type::scalar(ScalarType::I8))
            }
            ScalarType::F32 => self.cast(bits, ScalarKind::Float, None),
            ScalarType::F16 => {
                let pair = self.b.math(MathFunction::Unpack2x16float, &[bits]);
                let wide = self.b.expr(Expression::AccessIndex {
                    base: pair,
                    index: 0,
                });
                self.narrow_float(wide, ScalarType::F16)
            }
            ScalarType::Bf16 => {
                let sixteen = self.u32(16);
                let high = self.binary(BinaryOperator::ShiftLeft, bits, sixteen);
                self.cast(high, ScalarKind::Float, None)
            }
        }
    }

    /// `e * factor` in `u32`.
    fn scale(&mut self, e: Expr, factor: u32) -> Expr {
        if factor == 1 {
            return e;
        }
        let f = self.u32(factor);
        self.binary(BinaryOperator::Multiply, e, f)
    }

    /// The `size` (1, 2 or 4) bytes at byte `byte` of the packed buffer `m`, zero-extended
    /// into a `u32`. Unless `aligned` (`byte` a multiple of `size`), a read may cross a word
    /// boundary and joins two words; the second word's index is clamped to the buffer, so
    /// reading its last bytes never reads past it.
    fn read_bytes(&mut self, m: Memory, byte: Expr, size: u32, aligned: bool) -> Expr {
        let two = self.u32(2);
        let index = self.binary(BinaryOperator::ShiftRight, byte, two);
        let p = self.unit(m, index);
        let low = self.b.load(p);
        let three = self.u32(3);
        let within = self.binary(BinaryOperator::And, byte, three);
        let shift = self.binary(BinaryOperator::ShiftLeft, within, three);
        let shifted = self.binary(BinaryOperator::ShiftRight, low, shift);
        let joined = if size == 1 || aligned {
            shifted
        } else {
            let next = self.offset(index, 1);
            let elements = self.b.expr(Expression::ArrayLength(m.pointer));
            let len = self.scale(elements, m.width);
            let one = self.u32(1);
            let last = self.binary(BinaryOperator::Subtract, len, one);
            let next = self.b.math(MathFunction::Min, &[next, last]);
            let p = self.unit(m, next);
            let high = self.b.load(p);
            // `high << (32 - shift)`, written as two shifts so that shift 0 gives 0 (a shift
            // by 32 is undefined in SPIR-V).
            let thirty_one = self.u32(31);
            let rest = self.binary(BinaryOperator::Subtract, thirty_one, shift);
            let up = self.binary(BinaryOperator::ShiftLeft, high, rest);
            let up = self.binary(BinaryOperator::ShiftLeft, up, one);
            self.binary(BinaryOperator::InclusiveOr, shifted, up)
        };
        self.field(joined, 0, size)
    }

    pub(super) fn store(
        &mut self,
        buf: BufRef,
        index: Value,
        value: Value,
    ) -> Result<(), CodegenError> {
        let m = self.memory(buf)?;
        let Layout::Native { words } = m.layout else {
            let elem = self.k.buffer_elem(buf).map_err(|e| self.unsupported(e))?;
            return Err(self.unsupported(format!(
                "store to {}: {elem} buffers are read-only on Vulkan (no byte stores without atomics)",
                self.k.buffer_name(buf)
            )));
        };
        let ty = self.type_of(value);
        let base = self.index_u32(index)?;
        let first = self.scale(base, words);
        let v = self.val(value)?;
        if let (Some(groups), true) = (self.wide_groups(m, buf, index, ty), m.width > 1) {
            let shift = self.u32(m.width.trailing_zeros());
            let element = self.binary(BinaryOperator::ShiftRight, first, shift);
            let vector = self.ty(Type::vector(ty.scalar, m.width))?;
            for g in 0..groups {
                let part = if groups == 1 {
                    v
                } else {
                    let lanes = (0..m.width)
                        .map(|l| self.lane(v, ty.lanes, g * m.width + l))
                        .collect();
                    self.b.compose(vector, lanes)
                };
                let at = self.offset(element, g);
                let p = self.b.element(m.pointer, at);
                self.b.store(p, part);
            }
            return Ok(());
        }
        for i in 0..ty.lanes {
            let x = self.lane(v, ty.lanes, i);
            let at = self.offset(first, i * words);
            let p = self.unit(m, at);
            self.b.store(p, x);
            if words == 2 {
                // The high word of the narrowed i64: its sign.
                let thirty_one = self.u32(31);
                let sign = self.binary(BinaryOperator::ShiftRight, x, thirty_one);
                let at = self.offset(at, 1);
                let p = self.unit(m, at);
                self.b.store(p, sign);
            }
        }
        Ok(())
    }
}
