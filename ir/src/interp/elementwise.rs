//! Elementwise ops: constants, unary math, binary arithmetic and comparisons with numpy
//! broadcasting, select, and casts between plain dtypes.

use super::layout::{broadcast_shapes, broadcast_strides, walk};
use super::{Tensor, TensorData};
use crate::{BinaryOp, DType, UnaryOp};
use std::f64::consts::{FRAC_2_SQRT_PI, SQRT_2};

/// A scalar of `dtype`: floats go through f32 (and are rounded to f16/bf16 by the node), integers
/// truncate toward zero, bools are `value != 0`.
pub(super) fn constant(value: f64, dtype: DType) -> Result<Tensor, String> {
    let data = if dtype.is_float() {
        TensorData::F32(vec![value as f32])
    } else if dtype.is_int() {
        TensorData::I32(vec![value as i32])
    } else if dtype == DType::Bool {
        TensorData::Bool(vec![value != 0.0])
    } else {
        return Err(format!("a constant cannot be {dtype}"));
    };
    Ok(Tensor {
        dtype,
        shape: vec![],
        data,
    })
}

/// Applies a unary op to a float tensor in f32 (GELU-erf in f64, which needs an erf of its own).
pub(super) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor, String> {
    let f: fn(f32) -> f32 = match op {
        UnaryOp::Neg => |x| -x,
        UnaryOp::Exp => f32::exp,
        UnaryOp::Log => f32::ln,
        UnaryOp::Sqrt => f32::sqrt,
        UnaryOp::Rsqrt => |x| 1.0 / x.sqrt(),
        UnaryOp::Recip => |x| 1.0 / x,
        UnaryOp::Abs => f32::abs,
        UnaryOp::Sin => f32::sin,
        UnaryOp::Cos => f32::cos,
        UnaryOp::Tanh => f32::tanh,
        UnaryOp::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
        // `x < 0` rather than `max` so that NaN stays NaN, as in torch.
        UnaryOp::Relu => |x| if x < 0.0 { 0.0 } else { x },
        UnaryOp::Silu => |x| x / (1.0 + (-x).exp()),
        UnaryOp::GeluTanh => |x| {
            let k = (2.0 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        },
        UnaryOp::GeluErf => |x| {
            let x = f64::from(x);
            (0.5 * x * (1.0 + erf(x / SQRT_2))) as f32
        },
    };
    let v = x.floats(&format!("{op:?} input"))?;
    Ok(Tensor::f32(
        x.shape.clone(),
        v.iter().map(|&a| f(a)).collect(),
    ))
}

/// The error function to ~1e-15: for |x| < 3 the everywhere-convergent positive series
/// erf x = 2/√π · e^(−x²) · Σ 2ⁿ x^(2n+1) / (1·3·…·(2n+1)) (no cancellation); beyond, 1 − erfc x
/// with erfc from its continued fraction e^(−x²)/√π · 1/(x + ½/(x + 1/(x + (3/2)/(x + …)))).
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        let (mut term, mut sum) = (a, a);
        let mut n = 0.0;
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * a * a / (2.0 * n + 1.0);
            sum += term;
        }
        FRAC_2_SQRT_PI * (-a * a).exp() * sum
    } else {
        let mut f = a;
        for n in (1..=60).rev() {
            f = a + f64::from(n) / 2.0 / f;
        }
        1.0 - FRAC_2_SQRT_PI / 2.0 * (-a * a).exp() / f
    };
    r.copysign(x)
}

/// The larger of two floats, NaN if either is NaN (torch.maximum; `f32::max` would drop the NaN).
pub(super) fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

/// A binary op's scalar function: arithmetic keeps the element type, comparisons give bools.
enum Kernel<T> {
    Arith(fn(T, T) -> T),
    Compare(fn(T, T) -> bool),
}

/// The comparison `op` (one of `Lt`, `Le`, `Eq`).
fn compare<T: PartialOrd>(op: BinaryOp) -> Kernel<T> {
    Kernel::Compare(match op {
        BinaryOp::Lt => |a, b| a < b,
        BinaryOp::Le => |a, b| a <= b,
        _ => |a, b| a == b,
    })
}

fn float_kernel(op: BinaryOp) -> Kernel<f32> {
    Kernel::Arith(match op {
        BinaryOp::Add => |a, b| a + b,
        BinaryOp::Sub => |a, b| a - b,
        BinaryOp::Mul => |a, b| a * b,
        BinaryOp::Div => |a, b| a / b,
        BinaryOp::Max => nan_max,
        BinaryOp::Min => |a, b| if a.is_nan() || a < b { a } else { b },
        BinaryOp::Pow => f32::powf,
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Eq => return compare(op),
    })
}

/// Integer kernels wrap on overflow and divide truncating toward zero; a zero divisor or negative
/// exponent anywhere in `rhs` is an error rather than a panic.
fn int_kernel(op: BinaryOp, rhs: &[i32]) -> Result<Kernel<i32>, String> {
    Ok(Kernel::Arith(match op {
        BinaryOp::Add => i32::wrapping_add,
        BinaryOp::Sub => i32::wrapping_sub,
        BinaryOp::Mul => i32::wrapping_mul,
        BinaryOp::Div if rhs.contains(&0) => return Err("integer division by zero".into()),
        BinaryOp::Div => i32::wrapping_div,
        BinaryOp::Max => i32::max,
        BinaryOp::Min => i32::min,
        BinaryOp::Pow if rhs.iter().any(|&e| e < 0) => {
            return Err("integer to a negative power".into())
        }
        BinaryOp::Pow => |a, e| a.wrapping_pow(e.unsigned_abs()),
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Eq => return Ok(compare(op)),
    }))
}

/// `f` over two broadcast operands, in row-major order of `shape`.
fn map2<A: Copy, B: Copy, O>(
    shape: &[usize],
    (a, sa): (&[A], &[usize]),
    (b, sb): (&[B], &[usize]),
    f: impl Fn(A, B) -> O,
) -> Vec<O> {
    let mut out = Vec::with_capacity(shape.iter().product());
    walk(shape, [sa, sb], |[i, j]| out.push(f(a[i], b[j])));
    out
}

/// Applies a binary op with numpy broadcasting; both operands share one storage class.
pub(super) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let shape = broadcast_shapes(&[&a.shape, &b.shape])?;
    let sa = broadcast_strides(&a.shape, &shape)?;
    let sb = broadcast_strides(&b.shape, &shape)?;
    let data = match (&a.data, &b.data) {
        (TensorData::F32(x), TensorData::F32(y)) => match float_kernel(op) {
            Kernel::Arith(f) => TensorData::F32(map2(&shape, (x, &sa), (y, &sb), f)),
            Kernel::Compare(f) => TensorData::Bool(map2(&shape, (x, &sa), (y, &sb), f)),
        },
        (TensorData::I32(x), TensorData::I32(y)) => match int_kernel(op, y)? {
            Kernel::Arith(f) => TensorData::I32(map2(&shape, (x, &sa), (y, &sb), f)),
            Kernel::Compare(f) => TensorData::Bool(map2(&shape, (x, &sa), (y, &sb), f)),
        },
        _ => {
            return Err(format!(
                "{op:?} is not defined on {} and {}",
                a.describe(),
                b.describe()
            ))
        }
    };
    Ok(Tensor {
        dtype: a.dtype,
        shape,
        data,
    })
}

/// `where(cond, a, b)` with all three broadcast together.
pub(super) fn select(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let c = cond
        .as_bool()
        .ok_or_else(|| format!("select condition must be bool, got {}", cond.describe()))?;
    let shape = broadcast_shapes(&[&cond.shape, &a.shape, &b.shape])?;
    let sc = broadcast_strides(&cond.shape, &shape)?;
    let sa = broadcast_strides(&a.shape, &shape)?;
    let sb = broadcast_strides(&b.shape, &shape)?;
    let strides = [sc.as_slice(), sa.as_slice(), sb.as_slice()];
    fn pick<T: Copy>(
        shape: &[usize],
        strides: [&[usize]; 3],
        c: &[bool],
        x: &[T],
        y: &[T],
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(shape.iter().product());
        walk(shape, strides, |[i, j, k]| {
            out.push(if c[i] { x[j] } else { y[k] })
        });
        out
    }
    let data = match (&a.data, &b.data) {
        (TensorData::F32(x), TensorData::F32(y)) => TensorData::F32(pick(&shape, strides, c, x, y)),
        (TensorData::I32(x), TensorData::I32(y)) => TensorData::I32(pick(&shape, strides, c, x, y)),
        (TensorData::Bool(x), TensorData::Bool(y)) => {
            TensorData::Bool(pick(&shape, strides, c, x, y))
        }
        _ => {
            return Err(format!(
                "select branches {} and {} differ or are quantized",
                a.describe(),
                b.describe()
            ))
        }
    };
    Ok(Tensor {
        dtype: a.dtype,
        shape,
        data,
    })
}

/// Converts between plain dtypes. Float → integer truncates toward zero (NaN → 0, saturating at
/// the i32 range, then wrapping into i8/u8 like torch); numbers → bool is `!= 0`; bool → numbers
/// is 0/1. Rounding into f16/bf16 and wrapping into i8/u8 happen when the node conforms the result.
pub(super) fn cast(x: &Tensor, to: DType) -> Result<Tensor, String> {
    use TensorData::{Bool, F32, I32};
    let data = match &x.data {
        F32(v) if to.is_float() => F32(v.clone()),
        F32(v) if to.is_int() => I32(v.iter().map(|&f| f as i32).collect()),
        F32(v) if to == DType::Bool => Bool(v.iter().map(|&f| f != 0.0).collect()),
        I32(v) if to.is_float() => F32(v.iter().map(|&i| i as f32).collect()),
        I32(v) if to.is_int() => I32(v.clone()),
        I32(v) if to == DType::Bool => Bool(v.iter().map(|&i| i != 0).collect()),
        Bool(v) if to.is_float() => F32(v.iter().map(|&b| f32::from(u8::from(b))).collect()),
        Bool(v) if to.is_int() => I32(v.iter().map(|&b| i32::from(b)).collect()),
        Bool(v) if to == DType::Bool => Bool(v.clone()),
        _ => return Err(format!("cannot cast {} to {to}", x.describe())),
    };
    Ok(Tensor {
        dtype: to,
        shape: x.shape.clone(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::{Dim, Graph, Op};

    fn unary_values(op: UnaryOp, xs: &[f32]) -> Vec<f32> {
        let t = Tensor::f32(vec![xs.len()], xs.to_vec());
        unary(op, &t).unwrap().as_f32().unwrap().to_vec()
    }

    #[test]
    fn erf_matches_reference_values() {
        // From CPython's math.erf.
        let cases = [
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.5, 0.999593047982555),
            (2.999, 0.9999777698314002),
            (3.0, 0.9999779095030014),
            (3.5, 0.9999992569016276),
            (5.0, 0.9999999999984626),
            (-1.5, -0.9661051464753108),
        ];
        for (x, want) in cases {
            assert!(
                (erf(x) - want).abs() < 1e-14,
                "erf({x}) = {} vs {want}",
                erf(x)
            );
        }
        assert_eq!(erf(0.0), 0.0);
    }

    #[test]
    fn activations_match_reference_values() {
        let gelu = unary_values(UnaryOp::GeluErf, &[1.0, -1.0, 3.0, -6.0]);
        assert_close(&gelu[..3], &[0.841_344_7, -0.158_655_26, 2.995_950_3], 1e-6);
        assert!((gelu[3] - -5.919_526e-9).abs() < 1e-14, "{}", gelu[3]);
        let tanh = unary_values(UnaryOp::GeluTanh, &[1.0, -1.0, 2.0]);
        assert_close(&tanh, &[0.841_192, -0.158_808_01, 1.954_597_7], 1e-6);
        let silu = unary_values(UnaryOp::Silu, &[1.0, -1.0, 0.0, -100.0]);
        assert_close(&silu, &[0.731_058_6, -0.268_941_43, 0.0, 0.0], 1e-6);
        let relu = unary_values(UnaryOp::Relu, &[-1.0, 2.0, f32::NAN]);
        assert_eq!(&relu[..2], &[0.0, 2.0]);
        assert!(relu[2].is_nan());
        let misc = [
            (UnaryOp::Rsqrt, 4.0, 0.5),
            (UnaryOp::Recip, 4.0, 0.25),
            (UnaryOp::Sigmoid, 0.0, 0.5),
            (UnaryOp::Log, 1.0, 0.0),
            (UnaryOp::Neg, 3.0, -3.0),
        ];
        for (op, x, want) in misc {
            assert_eq!(unary_values(op, &[x]), [want], "{op:?}");
        }
    }

    #[test]
    fn binary_broadcasts_like_numpy() {
        let a = Tensor::f32(vec![2, 1, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = Tensor::f32(vec![2, 1], vec![10.0, 20.0]);
        let out = binary(BinaryOp::Add, &a, &b).unwrap();
        assert_eq!(out.shape, vec![2, 2, 3]);
        let want = [11., 12., 13., 21., 22., 23., 14., 15., 16., 24., 25., 26.];
        assert_eq!(out.as_f32(), Some(&want[..]));
        let lt = binary(BinaryOp::Lt, &b, &Tensor::f32(vec![], vec![15.0])).unwrap();
        assert_eq!(lt.as_bool(), Some(&[true, false][..]));
        let max = binary(BinaryOp::Max, &b, &Tensor::f32(vec![1], vec![f32::NAN])).unwrap();
        assert!(max.as_f32().unwrap().iter().all(|x| x.is_nan()));
        let bad = Tensor::f32(vec![2], vec![0.0; 2]);
        assert!(binary(BinaryOp::Add, &a, &bad).is_err());
    }

    #[test]
    fn integer_arithmetic_wraps_and_rejects_division_by_zero() {
        let a = Tensor::i32(vec![3], vec![7, -7, i32::MAX]);
        let b = Tensor::i32(vec![3], vec![2, 2, 1]);
        let div = binary(BinaryOp::Div, &a, &b).unwrap();
        assert_eq!(div.as_i32(), Some(&[3, -3, i32::MAX][..]));
        let add = binary(BinaryOp::Add, &a, &b).unwrap();
        assert_eq!(add.as_i32(), Some(&[9, -5, i32::MIN][..]));
        let pow = binary(BinaryOp::Pow, &b, &Tensor::i32(vec![], vec![3])).unwrap();
        assert_eq!(pow.as_i32(), Some(&[8, 8, 1][..]));
        let eq = binary(BinaryOp::Eq, &b, &Tensor::i32(vec![], vec![2])).unwrap();
        assert_eq!(eq.as_bool(), Some(&[true, true, false][..]));
        let zero = Tensor::i32(vec![1], vec![0]);
        assert!(binary(BinaryOp::Div, &a, &zero)
            .unwrap_err()
            .contains("by zero"));
        let neg = Tensor::i32(vec![1], vec![-1]);
        assert!(binary(BinaryOp::Pow, &a, &neg).is_err());
    }

    #[test]
    fn select_broadcasts_condition() {
        let c = Tensor::bool(vec![2, 1], vec![true, false]);
        let a = Tensor::i32(vec![2], vec![1, 2]);
        let b = Tensor::i32(vec![], vec![-1]);
        let out = select(&c, &a, &b).unwrap();
        assert_eq!(out.shape, vec![2, 2]);
        assert_eq!(out.as_i32(), Some(&[1, 2, -1, -1][..]));
        assert!(select(&a, &a, &b).is_err());
        assert!(select(&c, &a, &Tensor::f32(vec![], vec![0.0])).is_err());
    }

    #[test]
    fn casts_truncate_round_and_wrap() {
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, vec![Dim::c(5)]);
        let mut cast_to = |to| {
            let y = g.add(Op::Cast { to }, &[x]).unwrap();
            g.output(to.name(), y);
        };
        for to in [
            DType::I32,
            DType::U8,
            DType::I8,
            DType::F16,
            DType::Bf16,
            DType::Bool,
        ] {
            cast_to(to);
        }
        let xs = Tensor::f32(vec![5], vec![-1.7, 2.9, 300.0, 1.0 / 3.0, 0.0]);
        let out = super::super::run(&g, &weights(&[]), &feed(&[("x", xs)])).unwrap();
        assert_eq!(out["i32"].as_i32(), Some(&[-1, 2, 300, 0, 0][..]));
        assert_eq!(out["u8"].as_i32(), Some(&[255, 2, 44, 0, 0][..]));
        assert_eq!(out["i8"].as_i32(), Some(&[-1, 2, 44, 0, 0][..]));
        assert_eq!(out["f16"].as_f32().unwrap()[3], 0.333_251_95);
        assert_eq!(out["bf16"].as_f32().unwrap()[1], 2.90625);
        assert_eq!(
            out["bool"].as_bool(),
            Some(&[true, true, true, true, false][..])
        );
        let b = Tensor::bool(vec![2], vec![true, false]);
        assert_eq!(
            cast(&b, DType::F32).unwrap().as_f32(),
            Some(&[1.0, 0.0][..])
        );
        assert_eq!(cast(&b, DType::I32).unwrap().as_i32(), Some(&[1, 0][..]));
        let i = Tensor::i32(vec![2], vec![3, 0]);
        assert_eq!(
            cast(&i, DType::Bool).unwrap().as_bool(),
            Some(&[true, false][..])
        );
        assert!(cast(&i, DType::Q8_0).is_err());
    }

    #[test]
    fn constants_take_the_node_dtype() {
        assert_eq!(constant(2.7, DType::I32).unwrap().as_i32(), Some(&[2][..]));
        assert_eq!(
            constant(0.5, DType::Bool).unwrap().as_bool(),
            Some(&[true][..])
        );
        assert!(constant(1.0, DType::Q4_0).is_err());
    }
}
