//! Where the SIMT matmul templates (gemv, GEMM) write their dot products, and so how many steps
//! their program has. An epilogue that keeps the rows (bias, residual, SwiGLU over merged
//! gate/up reading columns `j` and `j + H`: [`Gemv::epilogue_columns`]) is applied as the
//! output is stored: one step. An epilogue that moves elements to other rows or columns (the
//! QKV projection's head split — reshape, permute — and RoPE, which pairs column `i` with
//! `i ± head_dim/2`) needs matmul elements another workgroup computes, so the program has two
//! steps: the template stores the plain matmul `[rows, N]` into a scratch buffer, then the
//! elementwise template evaluates the epilogue over the output's index space, reading the
//! matmul elements it asks for from the scratch. Any remapping the body can express works this
//! way, at the cost of writing and reading the matmul once more (small next to the weight
//! reads of a gemv or the K-fold reuse of a GEMM).

use super::super::expr::Body;
use super::super::gemv::{store_output, Gemv};
use super::super::Steps;
use super::elementwise;
use tessera_ir::lir::{self, Access, BufRef, KernelBuilder, ScalarType, SizeExpr, Value};

/// A SIMT matmul template: writes its kernel of the body into the builder, storing to the sink.
pub(super) type Template<'t> = dyn Fn(&mut KernelBuilder, &Body, &Sink) -> Result<(), String> + 't;

/// Where a matmul template stores.
pub(super) enum Sink {
    /// The kernel's output, through an epilogue that keeps the rows: each of its `cols` output
    /// columns `j` reads matmul columns `j + o` for the `offsets` o.
    Output {
        out: BufRef,
        offsets: Vec<i64>,
        cols: i64,
    },
    /// The plain matmul, row-major `[rows, n]`, into the scratch buffer `buf`.
    Matmul { buf: BufRef, n: i64 },
}

impl Sink {
    /// The matmul columns each stored column reads, as offsets from it, and how many columns
    /// a row stores.
    pub(super) fn columns(&self) -> (&[i64], i64) {
        match self {
            Sink::Output { offsets, cols, .. } => (offsets, *cols),
            Sink::Matmul { n, .. } => (&[0], *n),
        }
    }

    /// Stores column `col` of matmul row `row` (row-major over the matmul's leading dims, at
    /// `lead_idx`), given the dot products `dots` of the matmul columns `mm_cols` it reads (one
    /// per offset of [`Self::columns`]).
    pub(super) fn store(
        &self,
        b: &mut KernelBuilder,
        body: &Body,
        m: usize,
        (row, lead_idx, col): (Value, &[Value], Value),
        (mm_cols, dots): (&[Value], &[Value]),
    ) -> Result<(), String> {
        match *self {
            Sink::Output { out, .. } => {
                let idx: Vec<Value> = lead_idx.iter().copied().chain([col]).collect();
                store_output(b, body, m, (false, mm_cols, dots), &idx, out)
            }
            Sink::Matmul { buf, n } => {
                let n = b.const_i(n);
                let base = b.mul(row, n);
                let at = b.add(base, col);
                b.store(buf, at, dots[0]);
                Ok(())
            }
        }
    }
}

/// The program of a matmul kernel written by `template`: one step storing through the
/// epilogue when it keeps the rows, else the matmul into scratch and the epilogue after it.
pub(super) fn program(steps: &Steps, template: &Template) -> Result<lir::Program, String> {
    let Some((offsets, cols)) = steps.inspect(|body| Ok(Gemv::parse(body)?.epilogue_columns()))?
    else {
        return staged(steps, template);
    };
    steps
        .build("", &[], |b, body, out, _| {
            let sink = Sink::Output { out, offsets, cols };
            template(b, body, &sink)
        })
        .map(lir::Program::single)
}

/// The two steps of a matmul whose epilogue moves elements between rows: `.matmul` stores the
/// plain matmul into the scratch buffer `matmul`, `.epilogue` evaluates the body's result
/// reading the matmul from it.
fn staged(steps: &Steps, template: &Template) -> Result<lir::Program, String> {
    let mut len = None;
    let matmul = steps.build(
        ".matmul",
        &[("matmul", ScalarType::F32, Access::Write)],
        |b, body, _, scratch| {
            let g = Gemv::parse(body)?;
            let rows = body.symbols.numel_size(g.lead())?;
            len = Some(SizeExpr::Mul(
                Box::new(rows),
                Box::new(SizeExpr::Const(g.n as u64)),
            ));
            template(
                b,
                body,
                &Sink::Matmul {
                    buf: scratch[0],
                    n: g.n,
                },
            )
        },
    )?;
    let epilogue = steps.build(
        ".epilogue",
        &[("matmul", ScalarType::F32, Access::Read)],
        |b, body, out, scratch| {
            let g = Gemv::parse(body)?;
            let shape = &body.types[g.m].shape;
            let read = |b: &mut KernelBuilder, idx: &[Value]| {
                let at = body.symbols.ravel(b, idx, shape)?;
                Ok(b.load(scratch[0], at, 1))
            };
            elementwise::lower_with(b, body, out, Some((g.m, &read)))
        },
    )?;
    Ok(lir::Program {
        scratch: vec![lir::Scratch {
            name: "matmul".into(),
            elem: ScalarType::F32,
            len: len.expect("the matmul step sets the scratch length"),
        }],
        steps: vec![matmul, epilogue],
    })
}
