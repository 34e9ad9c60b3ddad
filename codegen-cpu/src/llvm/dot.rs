//! The packed 8-bit dot products (`Dot4U8I8Packed`, `Dot4I8Packed`) in LLVM IR: the host's VNNI
//! instruction where it has one for the vector width, else the generic widening form.

use super::translate::{Result, Translator};
use inkwell::types::VectorType;
use inkwell::values::{BasicValueEnum, InstructionOpcode};
use tessera_ir::lir::{ScalarType, Type};

impl<'ctx> Translator<'ctx, '_> {
    /// `acc + Σ a[i]·b[i]` per 32-bit lane of four packed bytes, `a`'s bytes unsigned when
    /// `a_unsigned`, `b`'s signed, over `lanes` lanes (1: scalars).
    pub(super) fn dot4(
        &self,
        [a, b, acc]: [BasicValueEnum<'ctx>; 3],
        a_unsigned: bool,
        lanes: u32,
    ) -> Result<BasicValueEnum<'ctx>> {
        match self.host.dot.intrinsic(a_unsigned, lanes) {
            // vpdpbusd/vpdpbssd take (acc, a, b) as i32 vectors, `a` the unsigned (or first
            // signed) operand: exactly the LIR definition, without saturation.
            Some(name) => self.call(name, &[], &[acc, a, b]),
            None => self.dot4_generic([a, b, acc], a_unsigned, lanes),
        }
    }

    /// The definition written out: the bytes widened to `i32` (zero- or sign-extended), multiplied,
    /// each lane's four products summed (four shuffles picking byte `j` of every lane) and added
    /// to `acc`. LLVM turns the `i16`-sized products into `pmaddwd`-style code where it can.
    fn dot4_generic(
        &self,
        [a, b, acc]: [BasicValueEnum<'ctx>; 3],
        a_unsigned: bool,
        lanes: u32,
    ) -> Result<BasicValueEnum<'ctx>> {
        use InstructionOpcode as O;
        let bytes = self.llvm_type(Type::vector(ScalarType::I8, 4 * lanes));
        let wide = self.llvm_type(Type::vector(ScalarType::I32, 4 * lanes));
        let widen = |x: BasicValueEnum<'ctx>, op: O| -> Result<BasicValueEnum<'ctx>> {
            let x = self.b.build_bit_cast(x, bytes, "")?;
            Ok(self.b.build_cast(op, x, wide, "")?)
        };
        let a = widen(a, if a_unsigned { O::ZExt } else { O::SExt })?;
        let b = widen(b, O::SExt)?;
        let products = self.b.build_binop(O::Mul, a, b, "")?.into_vector_value();
        // Column `j`: byte `j`'s product of every lane.
        let column = |j: u32| -> Result<BasicValueEnum<'ctx>> {
            let picks: Vec<_> = (0..lanes)
                .map(|l| self.cx.i32_type().const_int(u64::from(4 * l + j), false))
                .collect();
            let mask = VectorType::const_vector(&picks);
            Ok(self
                .b
                .build_shuffle_vector(products, products, mask, "")?
                .into())
        };
        let mut sum = column(0)?;
        for j in 1..4 {
            sum = self.b.build_binop(O::Add, sum, column(j)?, "")?;
        }
        let sum = if lanes == 1 {
            self.b.build_bit_cast(sum, acc.get_type(), "")?
        } else {
            sum
        };
        Ok(self.b.build_binop(O::Add, sum, acc, "")?)
    }
}
