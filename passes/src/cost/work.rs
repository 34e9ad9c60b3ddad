//! What a kernel body does under one shape bucket, before any template is chosen: the bytes of
//! each input read once and of the output written once, the flops of every body op, and the
//! facts of its core op (matmul or attention) that the templates in `roofline` rescale.

use tessera_ir::kernel::{BodyArg, BodyOp};
use tessera_ir::{eval_shape, infer, DType, DimEnv, Op, TensorType};

/// Flops per element of a normalization (mean of squares or mean and variance, scale, shift).
const NORM_FLOPS: f64 = 4.0;
/// Flops per element of RoPE (two multiplies and an add per rotated value, sin/cos amortized).
const ROPE_FLOPS: f64 = 6.0;
/// Flops per dequantized weight (scale multiply, zero-point subtract).
pub(crate) const DEQUANT_FLOPS: f64 = 2.0;
/// Flops per attention score besides the dot products: scale, running max, exp, running sum.
const SOFTMAX_FLOPS: f64 = 5.0;

/// A kernel body evaluated under a shape bucket.
#[derive(Clone, Debug)]
pub(crate) struct Work {
    /// Bytes each kernel input contributes when read once (a gather reads only its rows; a cache
    /// that is appended to in place is not read).
    pub input_bytes: Vec<f64>,
    /// Bytes written (an in-place KV append writes only the new rows).
    pub output_bytes: f64,
    /// Flops of every body op at its plain (unpadded) count.
    pub flops: f64,
    /// Rows of the output (elements over the last axis): the work items of a row reduction.
    pub output_rows: f64,
    /// The dtype whose peak rate the arithmetic runs at.
    pub compute_dtype: DType,
    pub matmul: Option<MatMulCore>,
    pub attention: Option<AttentionCore>,
}

/// The first matmul of a body: `groups` independent [rows × k] · [k × n] products.
#[derive(Clone, Debug)]
pub(crate) struct MatMulCore {
    /// Distinct B matrices (batch axes of B); a shared weight is 1 group.
    pub groups: f64,
    /// Rows of A per group (M, times any batch axes that share the weight).
    pub rows: f64,
    pub n: f64,
    pub k: f64,
    /// The kernel input B is read from, when it is one.
    pub weight: Option<usize>,
    pub a_elem_bytes: f64,
    /// Stored bytes per B element (fractional for block-quantized weights).
    pub b_elem_bytes: f64,
    /// B's stored dtype (block-quantized ones are dequantized in registers).
    pub b_dtype: DType,
}

impl MatMulCore {
    /// 2·M·N·K over all groups with `rows` rows per group (padded or not).
    pub fn flops(&self, rows: f64) -> f64 {
        2.0 * self.groups * rows * self.n * self.k
    }

    /// Weight elements dequantized each time B is read (0 for plain weights).
    pub fn dequant_flops(&self) -> f64 {
        if self.b_dtype.is_quantized() {
            DEQUANT_FLOPS * self.groups * self.n * self.k
        } else {
            0.0
        }
    }
}

/// The first attention of a body: q [B, Hq, S, D], k [B, Hkv, T, D], v [B, Hkv, T, Dv].
#[derive(Clone, Debug)]
pub(crate) struct AttentionCore {
    pub batch: f64,
    pub q_heads: f64,
    pub kv_heads: f64,
    pub s: f64,
    pub t: f64,
    pub d: f64,
    pub dv: f64,
    /// (query, key) pairs the masks leave visible, per batch and query head.
    pub pairs: f64,
    /// Keys visible to at least one query (what a kernel that keeps all S queries together reads).
    pub keys_read: f64,
    /// The kernel inputs K and V are read from (deduplicated).
    pub kv_inputs: Vec<usize>,
}

impl AttentionCore {
    /// Flops for `pairs` (query, key) pairs per batch and query head: q·k and p·v dot products
    /// plus the online softmax.
    pub fn flops(&self, pairs: f64) -> f64 {
        self.batch * self.q_heads * pairs * (2.0 * self.d + 2.0 * self.dv + SOFTMAX_FLOPS)
    }

    /// Bytes of one output row of partial results (acc plus running max and sum, f32).
    pub fn partial_row_bytes(&self) -> f64 {
        (self.dv + 2.0) * 4.0
    }
}

/// A concrete tensor: dtype and evaluated shape.
struct Concrete {
    dtype: DType,
    shape: Vec<usize>,
}

impl Concrete {
    fn new(ty: &TensorType, env: &DimEnv) -> Result<Concrete, String> {
        Ok(Concrete {
            dtype: ty.dtype,
            shape: eval_shape(&ty.shape, env)?,
        })
    }

    fn numel(&self) -> f64 {
        self.shape.iter().product::<usize>() as f64
    }

    fn bytes(&self) -> Result<f64, String> {
        self.dtype.storage_bytes(&self.shape).map(|b| b as f64)
    }

    /// Size of axis `i` counted from the end (1 when the tensor has fewer axes).
    fn dim_from_end(&self, i: usize) -> f64 {
        self.shape
            .len()
            .checked_sub(i)
            .map_or(1.0, |a| self.shape[a] as f64)
    }
}

impl Work {
    /// Types every body op, evaluates shapes under `env` and counts bytes and flops; errors
    /// name what cannot be evaluated (an unbound symbol, a body that does not type).
    pub fn analyze(
        body: &[BodyOp],
        inputs: &[TensorType],
        output: &TensorType,
        env: &DimEnv,
    ) -> Result<Work, String> {
        let types = body_types(body, inputs)?;
        let ins = inputs
            .iter()
            .map(|t| Concrete::new(t, env))
            .collect::<Result<Vec<_>, _>>()?;
        let vals = types
            .iter()
            .map(|t| Concrete::new(t, env))
            .collect::<Result<Vec<_>, _>>()?;
        let out = Concrete::new(output, env)?;
        let mut work = Work {
            input_bytes: ins.iter().map(Concrete::bytes).collect::<Result<_, _>>()?,
            output_bytes: out.bytes()?,
            flops: 0.0,
            output_rows: out.numel() / out.dim_from_end(1).max(1.0),
            compute_dtype: DType::F32,
            matmul: None,
            attention: None,
        };
        let arg = |a: BodyArg| match a {
            BodyArg::Input(i) => &ins[i],
            BodyArg::Op(j) => &vals[j],
        };
        for (j, step) in body.iter().enumerate() {
            let args: Vec<&Concrete> = step.args.iter().map(|&a| arg(a)).collect();
            let result = &vals[j];
            work.flops += match &step.op {
                Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast { .. } => result.numel(),
                Op::Reduce { .. } => args[0].numel(),
                Op::Softmax | Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
                    NORM_FLOPS * result.numel()
                }
                Op::Rope { .. } => ROPE_FLOPS * result.numel(),
                Op::Dequantize => DEQUANT_FLOPS * result.numel(),
                Op::MatMul { .. } | Op::QuantMatMul { .. } => {
                    let core = matmul_core(args[0], args[1], result, root(body, step.args[1]))?;
                    let flops = core.flops(core.rows) + core.dequant_flops();
                    if work.matmul.is_none() {
                        work.compute_dtype = widest(args[0].dtype, args[1].dtype);
                        work.matmul = Some(core);
                    }
                    flops
                }
                // An additive mask (a fourth argument) is read like any input, through
                // `input_bytes`; it adds no flops worth counting next to q·kᵀ.
                Op::Attention { causal, window, .. } => {
                    let kv = [root(body, step.args[1]), root(body, step.args[2])];
                    let core = attention_core(&args, *causal, *window, kv);
                    let flops = core.flops(core.pairs);
                    if work.attention.is_none() {
                        work.compute_dtype = widest(args[0].dtype, args[1].dtype);
                        work.attention = Some(core);
                    }
                    flops
                }
                Op::Gather => {
                    if let Some(t) = root(body, step.args[0]) {
                        let table = &ins[t];
                        let rows = table.shape.first().copied().unwrap_or(1).max(1) as f64;
                        work.input_bytes[t] = args[1].numel() * table.bytes()? / rows;
                    }
                    0.0
                }
                Op::KvAppend if j + 1 == body.len() => {
                    if let Some(c) = root(body, step.args[0]) {
                        work.output_bytes = (work.output_bytes - work.input_bytes[c]).max(0.0);
                        work.input_bytes[c] = 0.0;
                    }
                    0.0
                }
                _ => 0.0,
            };
        }
        // An input read only through slices costs only the slices (the consumers of a merged
        // projection each read their share of its output).
        for (i, full) in work.input_bytes.iter_mut().enumerate() {
            let uses: Vec<usize> = (0..body.len())
                .filter(|&j| body[j].args.contains(&BodyArg::Input(i)))
                .collect();
            if !uses.is_empty() && uses.iter().all(|&j| matches!(body[j].op, Op::Slice { .. })) {
                let sliced = uses
                    .iter()
                    .map(|&j| vals[j].bytes())
                    .sum::<Result<f64, _>>()?;
                *full = full.min(sliced);
            }
        }
        Ok(work)
    }

    /// Every byte read once and written once.
    pub fn plain_bytes(&self) -> f64 {
        self.input_bytes.iter().sum::<f64>() + self.output_bytes
    }
}

/// The inferred type of every body op (body constants are f32 scalars, as in `body_graph`).
fn body_types(body: &[BodyOp], inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    let mut types: Vec<TensorType> = Vec::with_capacity(body.len());
    for (j, step) in body.iter().enumerate() {
        let ty = match &step.op {
            Op::Constant { .. } => TensorType::new(DType::F32, vec![]),
            op => {
                let args = step
                    .args
                    .iter()
                    .map(|a| match *a {
                        BodyArg::Input(i) => inputs.get(i),
                        BodyArg::Op(o) if o < j => types.get(o),
                        BodyArg::Op(_) => None,
                    })
                    .collect::<Option<Vec<&TensorType>>>()
                    .ok_or_else(|| format!("body op {j} ({}) has a bad argument", op.name()))?;
                infer(op, &args).map_err(|e| format!("body op {j} ({}): {e}", op.name()))?
            }
        };
        types.push(ty);
    }
    Ok(types)
}

/// The kernel input a body value is computed from, following first arguments (a weight through
/// its dequantize or permute, a cache through its append).
fn root(body: &[BodyOp], mut arg: BodyArg) -> Option<usize> {
    loop {
        match arg {
            BodyArg::Input(i) => return Some(i),
            BodyArg::Op(j) => arg = *body.get(j)?.args.first()?,
        }
    }
}

/// The precision arithmetic on two operands runs at: f32 if either is f32 or block-quantized
/// (dequantized to f32), int8 if both are 8-bit integers, else f16.
fn widest(a: DType, b: DType) -> DType {
    let rank = |d: DType| match d {
        DType::I8 | DType::U8 => 0,
        DType::F16 | DType::Bf16 => 1,
        _ => 2,
    };
    [a, b]
        .into_iter()
        .max_by_key(|&d| rank(d))
        .map_or(DType::F32, |d| if rank(d) == 2 { DType::F32 } else { d })
}

fn matmul_core(
    a: &Concrete,
    b: &Concrete,
    out: &Concrete,
    weight: Option<usize>,
) -> Result<MatMulCore, String> {
    let n = out.dim_from_end(1);
    let k = a.dim_from_end(1);
    let groups = (b.numel() / (n * k).max(1.0)).max(1.0);
    Ok(MatMulCore {
        groups,
        rows: out.numel() / (n * groups).max(1.0),
        n,
        k,
        weight,
        a_elem_bytes: a.bytes()? / a.numel().max(1.0),
        b_elem_bytes: b.bytes()? / b.numel().max(1.0),
        b_dtype: b.dtype,
    })
}

fn attention_core(
    args: &[&Concrete],
    causal: bool,
    window: Option<usize>,
    kv: [Option<usize>; 2],
) -> AttentionCore {
    let (q, k, v) = (args[0], args[1], args[2]);
    let (s, t) = (q.shape[2], k.shape[2]);
    let mut kv_inputs: Vec<usize> = kv.into_iter().flatten().collect();
    kv_inputs.dedup();
    AttentionCore {
        batch: q.shape[0] as f64,
        q_heads: q.shape[1] as f64,
        kv_heads: k.shape[1] as f64,
        s: s as f64,
        t: t as f64,
        d: q.shape[3] as f64,
        dv: v.shape[3] as f64,
        pairs: visible_pairs(s, t, causal, window) as f64,
        keys_read: window.map_or(t, |w| t.min(w + s - 1)) as f64,
        kv_inputs,
    }
}

/// (query, key) pairs attention computes for one head: query i (the last S of T positions) sees
/// keys j ≤ T − S + i when causal and j > T − S + i − w with a window w (`interp::attention`).
fn visible_pairs(s: usize, t: usize, causal: bool, window: Option<usize>) -> usize {
    (0..s)
        .map(|i| {
            let newest = (t + i) as i64 - s as i64;
            let hi = if causal { newest } else { t as i64 - 1 };
            let lo = window.map_or(0, |w| (newest - w as i64 + 1).max(0));
            (hi - lo + 1).max(0) as usize
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_ir::Dim;

    fn ty(dtype: DType, shape: &[usize]) -> TensorType {
        TensorType::new(dtype, shape.iter().map(|&d| Dim::from(d)).collect())
    }

    fn op(op: Op, args: &[BodyArg]) -> BodyOp {
        BodyOp {
            op,
            args: args.to_vec(),
        }
    }

    #[test]
    fn attention_mask_is_read_but_adds_no_flops() {
        let attention = Op::Attention {
            scale: 0.5,
            causal: false,
            window: None,
        };
        let (q, k, v) = (
            ty(DType::F32, &[1, 8, 4, 16]),
            ty(DType::F16, &[1, 2, 6, 16]),
            ty(DType::F16, &[1, 2, 6, 16]),
        );
        let mask = ty(DType::F32, &[4, 6]);
        let out = ty(DType::F32, &[1, 8, 4, 16]);
        let args = [0, 1, 2, 3].map(BodyArg::Input);
        let plain = Work::analyze(
            &[op(attention.clone(), &args[..3])],
            &[q.clone(), k.clone(), v.clone()],
            &out,
            &DimEnv::new(),
        )
        .unwrap();
        let masked = Work::analyze(
            &[op(attention, &args)],
            &[q, k, v, mask],
            &out,
            &DimEnv::new(),
        )
        .unwrap();
        assert_eq!(masked.flops, plain.flops);
        assert_eq!(masked.input_bytes[3], 4.0 * 6.0 * 4.0);
        assert_eq!(
            masked.plain_bytes(),
            plain.plain_bytes() + masked.input_bytes[3]
        );
        let att = masked.attention.unwrap();
        assert_eq!((att.pairs, att.kv_inputs.clone()), (24.0, vec![1, 2]));
    }

    #[test]
    fn visible_pairs_match_the_masks() {
        assert_eq!(visible_pairs(4, 4, false, None), 16);
        assert_eq!(visible_pairs(4, 4, true, None), 10);
        assert_eq!(visible_pairs(1, 9, true, None), 9);
        assert_eq!(visible_pairs(2, 6, true, None), 5 + 6);
        assert_eq!(visible_pairs(4, 4, true, Some(2)), 1 + 2 + 2 + 2);
        assert_eq!(visible_pairs(1, 9, false, Some(3)), 3);
    }

    #[test]
    fn matmul_with_epilogue() {
        let body = [
            op(
                Op::MatMul { transpose_b: true },
                &[BodyArg::Input(0), BodyArg::Input(1)],
            ),
            op(
                Op::Binary(tessera_ir::BinaryOp::Add),
                &[BodyArg::Op(0), BodyArg::Input(2)],
            ),
        ];
        let inputs = [
            ty(DType::F32, &[2, 3, 64]),
            ty(DType::F16, &[32, 64]),
            ty(DType::F32, &[2, 3, 32]),
        ];
        let w = Work::analyze(&body, &inputs, &inputs[2], &DimEnv::new()).unwrap();
        let mm = w.matmul.unwrap();
        assert_eq!((mm.groups, mm.rows, mm.n, mm.k), (1.0, 6.0, 32.0, 64.0));
        assert_eq!(mm.weight, Some(1));
        assert_eq!(w.flops, 2.0 * 6.0 * 32.0 * 64.0 + 6.0 * 32.0);
        assert_eq!(w.compute_dtype, DType::F32);
        assert_eq!(
            w.input_bytes,
            vec![6.0 * 64.0 * 4.0, 32.0 * 64.0 * 2.0, 6.0 * 32.0 * 4.0]
        );
    }

    #[test]
    fn gather_reads_rows_and_append_writes_new_rows() {
        let gather = [op(Op::Gather, &[BodyArg::Input(0), BodyArg::Input(1)])];
        let inputs = [ty(DType::F16, &[1000, 8]), ty(DType::I32, &[3])];
        let w = Work::analyze(&gather, &inputs, &ty(DType::F16, &[3, 8]), &DimEnv::new()).unwrap();
        assert_eq!(w.input_bytes, vec![3.0 * 8.0 * 2.0, 12.0]);

        let append = [op(Op::KvAppend, &[BodyArg::Input(0), BodyArg::Input(1)])];
        let inputs = [
            ty(DType::F32, &[1, 2, 10, 4]),
            ty(DType::F32, &[1, 2, 1, 4]),
        ];
        let out = ty(DType::F32, &[1, 2, 11, 4]);
        let w = Work::analyze(&append, &inputs, &out, &DimEnv::new()).unwrap();
        assert_eq!(w.plain_bytes(), 2.0 * 8.0 * 4.0);
    }

    #[test]
    fn sliced_inputs_cost_only_their_slices() {
        let slice = Op::Slice {
            axis: 1,
            start: Dim::c(4),
            end: Dim::c(6),
        };
        let body = [op(slice, &[BodyArg::Input(0)])];
        let w = Work::analyze(
            &body,
            &[ty(DType::F32, &[3, 8])],
            &ty(DType::F32, &[3, 2]),
            &DimEnv::new(),
        )
        .unwrap();
        assert_eq!(w.input_bytes, vec![3.0 * 2.0 * 4.0]);
    }

    #[test]
    fn unbound_symbols_and_bad_bodies_are_errors() {
        let body = [op(
            Op::Unary(tessera_ir::UnaryOp::Exp),
            &[BodyArg::Input(0)],
        )];
        let x = [TensorType::new(DType::F32, vec![Dim::sym("seq")])];
        let err = Work::analyze(&body, &x, &x[0], &DimEnv::new()).unwrap_err();
        assert!(err.contains("seq"), "{err}");
        let bad = [op(Op::Unary(tessera_ir::UnaryOp::Exp), &[BodyArg::Op(0)])];
        assert!(Work::analyze(&bad, &x, &x[0], &DimEnv::new()).is_err());
    }
}
