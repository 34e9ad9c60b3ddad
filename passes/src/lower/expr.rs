//! Elementwise body ops compiled to LIR scalar ops: a body node is evaluated at a multi-index of
//! its shape, recursively through its arguments (broadcasting, reshapes and input loads), so
//! every template shares one translation of prologues and epilogues. Layout ops (permute,
//! expand, slice) and RoPE map the index back onto their operands.

use super::index::{broadcast, Symbols};
use tessera_ir::kernel::{BodyArg, BodyOp};
use tessera_ir::lir::{self, BufRef, CmpOp, KernelBuilder, ScalarType, Value};
use tessera_ir::{BinaryOp, DType, Dim, Op, RopeLayout, TensorType, UnaryOp};

/// The LIR element type of a Graph dtype a CPU template reads or computes.
pub(super) fn scalar_type(dtype: DType) -> Result<ScalarType, String> {
    match dtype {
        DType::F32 => Ok(ScalarType::F32),
        DType::I32 => Ok(ScalarType::I32),
        DType::Bool => Ok(ScalarType::Bool),
        other => Err(format!("dtype {other}")),
    }
}

/// Computes a template's core op at a multi-index of its shape.
pub(super) type HookFn<'h> = dyn Fn(&mut KernelBuilder, &[Value]) -> Result<Value, String> + 'h;

/// Stands in for one body op (a template's core op): its position and how to compute it at the
/// multi-index, in the op's shape, at which its value is wanted.
pub(super) type Hook<'h> = (usize, &'h HookFn<'h>);

/// A kernel body with what evaluating it needs: its ops' types, its inputs' types and buffers,
/// and the shape symbols.
pub(super) struct Body<'a> {
    pub ops: &'a [BodyOp],
    pub types: Vec<TensorType>,
    pub inputs: &'a [TensorType],
    pub buffers: Vec<BufRef>,
    pub symbols: Symbols,
    /// f32 lanes of the target's vectors (4 for 128-bit SIMD, 16 for AVX-512), the width the
    /// float templates compute in.
    pub lanes: u32,
    /// Threads per workgroup: 1 on a CPU (a group is one thread's work item), more on a SIMT
    /// target, where [`for_each_lane`] splits a group's loop between them.
    pub threads: u32,
    /// The smallest subgroup the device may run, when it has subgroup reductions: then
    /// [`workgroup_reduce`](super::lanes::workgroup_reduce) reduces within subgroups first.
    pub subgroup: Option<u32>,
}

impl Body<'_> {
    /// How its workgroup's threads combine values.
    pub(super) fn workgroup(&self) -> super::lanes::Workgroup {
        super::lanes::Workgroup {
            threads: self.threads,
            subgroup: self.subgroup,
        }
    }

    /// The type of a body argument.
    pub(super) fn ty(&self, arg: BodyArg) -> &TensorType {
        match arg {
            BodyArg::Input(i) => &self.inputs[i],
            BodyArg::Op(j) => &self.types[j],
        }
    }

    /// The buffer of `arg` when it is a float kernel input read as is (no body op computes it):
    /// f32, or f16/bf16 weights read through [`load_f32`].
    pub(super) fn float_input(&self, arg: BodyArg) -> Option<BufRef> {
        match arg {
            BodyArg::Input(i)
                if matches!(self.inputs[i].dtype, DType::F32 | DType::F16 | DType::Bf16) =>
            {
                Some(self.buffers[i])
            }
            _ => None,
        }
    }

    /// The body's result: the last op.
    pub(super) fn result(&self) -> BodyArg {
        BodyArg::Op(self.ops.len() - 1)
    }

    /// The value of `arg` at multi-index `idx` of its shape; `hook` computes one op itself.
    pub(super) fn value(
        &self,
        b: &mut KernelBuilder,
        arg: BodyArg,
        idx: &[Value],
        hook: Option<Hook>,
    ) -> Result<Value, String> {
        let j = match arg {
            BodyArg::Input(_) => return self.values(b, arg, idx, 1, None),
            BodyArg::Op(j) => j,
        };
        if let Some((at, f)) = hook {
            if at == j {
                return f(b, idx);
            }
        }
        let step = &self.ops[j];
        let shape = &self.types[j].shape;
        let operand = |b: &mut KernelBuilder, k: usize| {
            let a = step.args[k];
            let at = broadcast(b, idx, shape, &self.ty(a).shape)?;
            self.value(b, a, &at, hook)
        };
        match &step.op {
            Op::Constant { value } => Ok(b.const_f(*value)),
            Op::Unary(u) => {
                let x = operand(b, 0)?;
                unary(b, *u, x)
            }
            Op::Binary(op) => {
                let (x, y) = (operand(b, 0)?, operand(b, 1)?);
                binary(b, *op, x, y)
            }
            Op::Select => {
                let c = operand(b, 0)?;
                let (x, y) = (operand(b, 1)?, operand(b, 2)?);
                Ok(b.select(c, x, y))
            }
            Op::Cast { to } => {
                let x = operand(b, 0)?;
                let (from, to) = (b.type_of(x).scalar, scalar_type(*to)?);
                match (from, to) {
                    _ if from == to => Ok(x),
                    (ScalarType::F32 | ScalarType::I32, ScalarType::F32 | ScalarType::I32) => {
                        Ok(b.cast(to, x))
                    }
                    _ => Err(format!("cast from {} to {}", from.name(), to.name())),
                }
            }
            Op::Reshape { .. } => {
                let a = step.args[0];
                let linear = self.symbols.ravel(b, idx, shape)?;
                let at = self.symbols.unravel(b, linear, &self.ty(a).shape)?;
                self.value(b, a, &at, hook)
            }
            Op::Permute { perm } => {
                let mut at = idx.to_vec();
                for (&i, &p) in idx.iter().zip(perm) {
                    at[p] = i;
                }
                self.value(b, step.args[0], &at, hook)
            }
            Op::Expand { .. } => operand(b, 0),
            Op::Slice { axis, start, .. } => {
                let mut at = idx.to_vec();
                let start = self.symbols.dim(b, start)?;
                at[*axis] = b.add(idx[*axis], start);
                self.value(b, step.args[0], &at, hook)
            }
            Op::Rope { layout } => self.rope(b, step, *layout, idx, hook),
            other => Err(format!("op `{}` in an elementwise position", other.name())),
        }
    }

    /// The `lanes` elements of `arg` from multi-index `idx` along its last axis (which must hold
    /// them), as one vector: a kernel input with one load (a wide access on a GPU when its index
    /// is provably aligned), an op each element through [`Self::value`], joined.
    pub(super) fn values(
        &self,
        b: &mut KernelBuilder,
        arg: BodyArg,
        idx: &[Value],
        lanes: u32,
        hook: Option<Hook>,
    ) -> Result<Value, String> {
        match arg {
            BodyArg::Input(i) => {
                let offset = self.symbols.ravel(b, idx, &self.inputs[i].shape)?;
                Ok(load_f32(b, self.buffers[i], offset, lanes))
            }
            BodyArg::Op(_) if lanes == 1 => self.value(b, arg, idx, hook),
            BodyArg::Op(_) => {
                let (&last, lead) = idx.split_last().ok_or("a vector of a scalar")?;
                let parts = (0..lanes)
                    .map(|l| {
                        let l = b.const_i(i64::from(l));
                        let at: Vec<Value> = lead.iter().copied().chain([b.add(last, l)]).collect();
                        self.value(b, arg, &at, hook)
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(b.concat(&parts))
            }
        }
    }

    /// The multi-index in the body's result of the element at `idx` of op `from`, when the ops
    /// that consume it form a chain to the result, each either elementwise in the chain's value
    /// (of its shape) or a permute or reshape of it: every result element then depends on one
    /// element of op `from`, the one it maps to. Ops off the chain (other operands) are free.
    pub(super) fn forward(
        &self,
        b: &mut KernelBuilder,
        from: usize,
        idx: &[Value],
    ) -> Result<Vec<Value>, String> {
        let chain = self.chain(from, false)?;
        self.map_along(b, from, &chain, idx)
    }

    /// [`Self::forward`] for an epilogue that keeps each element of op `from` (of shape
    /// `[lead…, n]`) with the other elements of its row ([`Self::keeps_rows`]).
    pub(super) fn forward_in_row(
        &self,
        b: &mut KernelBuilder,
        from: usize,
        idx: &[Value],
    ) -> Result<Vec<Value>, String> {
        let chain = self.chain(from, true)?;
        self.map_along(b, from, &chain, idx)
    }

    /// Whether the epilogue after op `from` (of shape `[lead…, n]`) is a chain as
    /// [`Self::forward`] takes that also keeps rows: it may hold a RoPE over an axis that comes
    /// from `n` (which reads a partner in the same row and leaves each element in place), and
    /// its reshapes only regroup the axes that come from `n`. A template that computed whole
    /// rows of op `from` can then evaluate every result element it maps to.
    pub(super) fn keeps_rows(&self, from: usize) -> Result<(), String> {
        self.chain(from, true).map(|_| ())
    }

    /// The ops on the chain from op `from` to the result, checked as [`Self::forward`] (and,
    /// `in_row`, [`Self::keeps_rows`]) require.
    fn chain(&self, from: usize, in_row: bool) -> Result<Vec<usize>, String> {
        let lead = self.types[from].shape.len().saturating_sub(1);
        let mut row_axes: Vec<bool> = (0..=lead).map(|a| a < lead).collect();
        let mut chain = vec![from];
        for (j, step) in self.ops.iter().enumerate().skip(from + 1) {
            let reads = |k: usize| step.args.contains(&BodyArg::Op(k));
            let (&cur, earlier) = chain.split_last().expect("the chain starts at `from`");
            if earlier.iter().any(|&k| reads(k)) {
                return Err(format!(
                    "an epilogue op `{}` reading an earlier step",
                    step.op.name()
                ));
            }
            if !reads(cur) {
                continue;
            }
            let (shape, to) = (&self.types[cur].shape, &self.types[j].shape);
            match &step.op {
                Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast { .. } if shape == to => {}
                Op::Permute { perm } => row_axes = perm.iter().map(|&p| row_axes[p]).collect(),
                Op::Reshape { .. } => {
                    let kept = row_prefix(&row_axes, shape, to);
                    if in_row && kept.is_none() {
                        return Err("an epilogue reshape that moves matmul rows".into());
                    }
                    let rows = kept.unwrap_or(0);
                    row_axes = (0..to.len()).map(|a| a < rows).collect();
                }
                Op::Rope { .. }
                    if in_row
                        && step.args[0] == BodyArg::Op(cur)
                        && !step.args[1..].contains(&BodyArg::Op(cur)) =>
                {
                    if row_axes.last() != Some(&false) {
                        return Err("an epilogue RoPE across matmul rows".into());
                    }
                }
                other => {
                    return Err(format!(
                        "an epilogue op `{}` that is not elementwise, a permute or a reshape",
                        other.name()
                    ))
                }
            }
            chain.push(j);
        }
        if chain.last() == Some(&(self.ops.len() - 1)) {
            Ok(chain)
        } else {
            Err("an epilogue whose result does not depend on the core op".into())
        }
    }

    /// `idx` of op `chain[0]` mapped through the permutes and reshapes of `chain`.
    fn map_along(
        &self,
        b: &mut KernelBuilder,
        from: usize,
        chain: &[usize],
        idx: &[Value],
    ) -> Result<Vec<Value>, String> {
        let mut at = idx.to_vec();
        let mut cur = from;
        for &j in &chain[1..] {
            match &self.ops[j].op {
                Op::Permute { perm } => at = perm.iter().map(|&p| at[p]).collect(),
                Op::Reshape { .. } => {
                    let linear = self.symbols.ravel(b, &at, &self.types[cur].shape)?;
                    at = self.symbols.unravel(b, linear, &self.types[j].shape)?;
                }
                _ => {}
            }
            cur = j;
        }
        Ok(at)
    }

    /// `Rope(x [B, H, S, D], positions i32 [B, S], inv_freq [R/2])` at `idx` = (b, h, s, d): for
    /// d < R, x·cos ∓ x[partner]·sin with the angle `position · inv_freq[pair]` in f32 (minus for
    /// the first dim of a pair); dims from R on pass through.
    fn rope(
        &self,
        b: &mut KernelBuilder,
        step: &BodyOp,
        layout: RopeLayout,
        idx: &[Value],
        hook: Option<Hook>,
    ) -> Result<Value, String> {
        let &[batch, _, pos, d] = idx else {
            return Err("rope of a rank other than 4".into());
        };
        let [x, positions, inv_freq] = step.args[..] else {
            return Err("rope without its three operands".into());
        };
        let half = match self.ty(inv_freq).shape.as_slice() {
            [h] => self.symbols.dim(b, h)?,
            _ => return Err("rope inv_freq of a rank other than 1".into()),
        };
        let two = b.const_i(2);
        let rotated = b.mul(half, two);
        let inside = b.cmp(CmpOp::Lt, d, rotated);
        // Whether d is the first of its pair, its partner and the pair's frequency index.
        let (first, partner, pair) = match layout {
            RopeLayout::Half => {
                let first = b.cmp(CmpOp::Lt, d, half);
                let up = b.add(d, half);
                let down = b.sub(d, half);
                let pair = b.binary(lir::BinaryOp::Rem, d, half);
                (first, b.select(first, up, down), pair)
            }
            RopeLayout::Interleaved => {
                let parity = b.binary(lir::BinaryOp::Rem, d, two);
                let zero = b.const_i(0);
                let first = b.cmp(CmpOp::Eq, parity, zero);
                let one = b.const_i(1);
                let up = b.add(d, one);
                let down = b.sub(d, one);
                (first, b.select(first, up, down), b.div(d, two))
            }
        };
        // Outside the rotated dims, read in bounds (d itself, frequency 0) and pass x through.
        let partner = b.select(inside, partner, d);
        let zero = b.const_i(0);
        let pair = b.select(inside, pair, zero);
        let mut at = idx.to_vec();
        let xv = self.value(b, x, &at, hook)?;
        at[3] = partner;
        let xp = self.value(b, x, &at, hook)?;
        let p = self.value(b, positions, &[batch, pos], hook)?;
        let p = b.cast(ScalarType::F32, p);
        let f = self.value(b, inv_freq, &[pair], hook)?;
        let angle = b.mul(p, f);
        let (cos, sin) = (
            b.unary(lir::UnaryOp::Cos, angle),
            b.unary(lir::UnaryOp::Sin, angle),
        );
        let xc = b.mul(xv, cos);
        let s = b.mul(xp, sin);
        let minus = b.sub(xc, s);
        let plus = b.add(xc, s);
        let out = b.select(first, minus, plus);
        Ok(b.select(inside, out, xv))
    }
}

fn is_float(b: &KernelBuilder, x: Value) -> bool {
    b.type_of(x).scalar == ScalarType::F32
}

/// A Graph unary op on an f32 scalar.
fn unary(b: &mut KernelBuilder, op: UnaryOp, x: Value) -> Result<Value, String> {
    use lir::UnaryOp as L;
    if !is_float(b, x) {
        return Err(format!("unary {op:?} on {}", b.type_of(x).scalar.name()));
    }
    let direct = |b: &mut KernelBuilder, l| Ok(b.unary(l, x));
    match op {
        UnaryOp::Neg => direct(b, L::Neg),
        UnaryOp::Exp => direct(b, L::Exp),
        UnaryOp::Log => direct(b, L::Log),
        UnaryOp::Sqrt => direct(b, L::Sqrt),
        UnaryOp::Rsqrt => direct(b, L::Rsqrt),
        UnaryOp::Recip => direct(b, L::Recip),
        UnaryOp::Abs => direct(b, L::Abs),
        UnaryOp::Sin => direct(b, L::Sin),
        UnaryOp::Cos => direct(b, L::Cos),
        UnaryOp::Tanh => direct(b, L::Tanh),
        UnaryOp::Sigmoid => Ok(sigmoid(b, x)),
        UnaryOp::Relu => {
            // `x < 0` rather than `max` so that NaN stays NaN, as the interpreter does.
            let zero = b.const_f(0.0);
            let negative = b.cmp(CmpOp::Lt, x, zero);
            Ok(b.select(negative, zero, x))
        }
        UnaryOp::Silu => {
            let s = sigmoid(b, x);
            Ok(b.mul(x, s))
        }
        UnaryOp::GeluTanh => {
            // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
            let x3 = b.mul(x, x);
            let x3 = b.mul(x3, x);
            let c = b.const_f(0.044715);
            let inner = b.fma(c, x3, x);
            let k = b.const_f((2.0 / std::f64::consts::PI).sqrt());
            let inner = b.mul(k, inner);
            let t = b.unary(L::Tanh, inner);
            let one = b.const_f(1.0);
            let t = b.add(one, t);
            let half = b.const_f(0.5);
            let hx = b.mul(half, x);
            Ok(b.mul(hx, t))
        }
        UnaryOp::GeluErf => Err("unary gelu_erf (no erf in LIR)".into()),
    }
}

/// σ(x) = 1 / (1 + exp(−x)).
fn sigmoid(b: &mut KernelBuilder, x: Value) -> Value {
    let neg = b.unary(lir::UnaryOp::Neg, x);
    let e = b.unary(lir::UnaryOp::Exp, neg);
    let one = b.const_f(1.0);
    let d = b.add(one, e);
    b.unary(lir::UnaryOp::Recip, d)
}

/// A Graph binary op on two scalars of one type; comparisons give `bool`.
fn binary(b: &mut KernelBuilder, op: BinaryOp, x: Value, y: Value) -> Result<Value, String> {
    use lir::BinaryOp as L;
    let float = is_float(b, x);
    let arith = match op {
        BinaryOp::Lt => return Ok(b.cmp(CmpOp::Lt, x, y)),
        BinaryOp::Le => return Ok(b.cmp(CmpOp::Le, x, y)),
        BinaryOp::Eq => return Ok(b.cmp(CmpOp::Eq, x, y)),
        BinaryOp::Add => L::Add,
        BinaryOp::Sub => L::Sub,
        BinaryOp::Mul => L::Mul,
        BinaryOp::Max => L::Max,
        BinaryOp::Min => L::Min,
        // Integer division by zero traps on CPU where the interpreter reports an error.
        BinaryOp::Div if float => L::Div,
        BinaryOp::Div | BinaryOp::Pow => {
            return Err(format!("binary {op:?} on {}", b.type_of(x).scalar.name()))
        }
    };
    Ok(b.binary(arith, x, y))
}

/// Loads `lanes` elements of `buf` at `index`; half-precision storage (f16/bf16 weights) is
/// widened to f32, the only float type kernels compute in. Other types load as they are.
pub(super) fn load_f32(b: &mut KernelBuilder, buf: BufRef, index: Value, lanes: u32) -> Value {
    let v = b.load(buf, index, lanes);
    match b.type_of(v).scalar {
        ScalarType::F16 | ScalarType::Bf16 => b.cast(ScalarType::F32, v),
        _ => v,
    }
}

/// `Σ f(j, acc)` style fold over `0..end` with one carried f32 accumulator.
pub(super) fn fold(
    b: &mut KernelBuilder,
    end: Value,
    init: Value,
    f: impl FnOnce(&mut KernelBuilder, Value, Value) -> Result<Value, String>,
) -> Result<Value, String> {
    let zero = b.const_i(0);
    fold_range(b, (zero, end, 1), init, f)
}

/// A fold over `start..end` by `step` (the range) with one carried value; a loop body cannot
/// return an error, so the error of `f` is returned after the loop.
pub(super) fn fold_range(
    b: &mut KernelBuilder,
    range: (Value, Value, u32),
    init: Value,
    f: impl FnOnce(&mut KernelBuilder, Value, Value) -> Result<Value, String>,
) -> Result<Value, String> {
    fold_many(b, range, &[init], |b, j, acc| Ok(vec![f(b, j, acc[0])?])).map(|r| r[0])
}

/// [`fold_range`] with several carried values: `f` returns one new value per carried value.
pub(super) fn fold_many(
    b: &mut KernelBuilder,
    (start, end, step): (Value, Value, u32),
    init: &[Value],
    f: impl FnOnce(&mut KernelBuilder, Value, &[Value]) -> Result<Vec<Value>, String>,
) -> Result<Vec<Value>, String> {
    let mut failure = Ok(());
    let results = b.for_range(start, end, step, init, |b, j, acc| match f(b, j, acc) {
        Ok(v) => v,
        Err(e) => {
            failure = Err(e);
            acc.to_vec()
        }
    });
    failure.map(|()| results)
}

/// Runs `f` for each `j` in `start..end` (step 1); a loop body cannot return an error, so the
/// last one is kept and returned after the loop.
pub(super) fn for_each(
    b: &mut KernelBuilder,
    start: Value,
    end: Value,
    f: impl FnOnce(&mut KernelBuilder, Value) -> Result<(), String>,
) -> Result<(), String> {
    let mut failure = Ok(());
    b.for_range(start, end, 1, &[], |b, j, _| {
        failure = f(b, j);
        vec![]
    });
    failure
}

/// For a reshape of `shape` to `to` where the axes flagged in `row_axes` (matmul rows) are the
/// leading ones: how many leading axes of `to` hold exactly those rows (unit axes aside), so
/// the reshape only regroups the other axes; `None` when it mixes rows with the rest.
fn row_prefix(row_axes: &[bool], shape: &[Dim], to: &[Dim]) -> Option<usize> {
    let rows = row_axes.iter().take_while(|&&r| r).count();
    if row_axes[rows..].iter().any(|&r| r) {
        return None;
    }
    let unit = Dim::from(1usize);
    let lead: Vec<&Dim> = shape[..rows].iter().filter(|&d| *d != unit).collect();
    let mut matched = 0;
    for (p, d) in to.iter().enumerate() {
        if matched == lead.len() {
            return Some(p);
        }
        if *d == unit {
            continue;
        }
        if d != lead[matched] {
            return None;
        }
        matched += 1;
    }
    (matched == lead.len()).then_some(to.len())
}
