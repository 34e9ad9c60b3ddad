//! The roofline estimate of one kernel: `launches · launch_overhead + max(bytes / bandwidth,
//! flops / peak)`, where the body fixes the work and the template fixes how it is done — how often
//! it re-reads the weight or the KV cache, how much it pads, how many work items it offers the
//! machine, what fraction of peak it reaches, and whether its tiles fit on chip at all. That is
//! what makes the optimizer's choice between Gemv, FlatGemm and Gemm (or between FlashDecoding
//! split counts) depend on the shape bucket.

use super::target::{TargetClass, TargetSpec};
use super::work::{AttentionCore, MatMulCore, Work};
use super::CostModel;
use tessera_ir::kernel::{BodyOp, KernelKind};
use tessera_ir::{DType, DimEnv, TensorType};

/// The cost of one kernel for one shape bucket, and the work behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Infinite when the template cannot run the body here (tiles too large for on-chip memory,
    /// zero tile sizes, a template that does not fit the body, a shape that does not evaluate).
    pub seconds: f64,
    /// Bytes moved to and from memory, re-reads included.
    pub bytes: f64,
    /// Arithmetic performed, padding included.
    pub flops: f64,
}

impl Estimate {
    /// What an infeasible or uncostable kernel estimates to: never the cheapest choice.
    pub const INFEASIBLE: Estimate = Estimate {
        seconds: f64::INFINITY,
        bytes: 0.0,
        flops: 0.0,
    };

    /// A kernel that launches nothing (a reshape of contiguous data).
    pub const FREE: Estimate = Estimate {
        seconds: 0.0,
        bytes: 0.0,
        flops: 0.0,
    };
}

/// The roofline over one target as the optimizer's [`CostModel`].
#[derive(Clone, Debug, PartialEq)]
pub struct Roofline {
    pub target: TargetSpec,
}

impl CostModel for Roofline {
    fn kernel_cost(
        &self,
        kernel: &KernelKind,
        body: &[BodyOp],
        inputs: &[TensorType],
        output: &TensorType,
        env: &DimEnv,
    ) -> f64 {
        estimate(kernel, body, inputs, output, env, &self.target).seconds
    }
}

/// Estimates `kernel` computing `body` over `inputs` into `output`, with shapes evaluated under
/// the shape bucket `env`, on `target`. See [`Estimate::seconds`] for when it is infinite.
pub fn estimate(
    kernel: &KernelKind,
    body: &[BodyOp],
    inputs: &[TensorType],
    output: &TensorType,
    env: &DimEnv,
    target: &TargetSpec,
) -> Estimate {
    if !kernel.launches(body) {
        return Estimate::FREE;
    }
    let work = match Work::analyze(body, inputs, output, env) {
        Ok(work) => work,
        Err(msg) => {
            tracing::warn!(%kernel, "cannot cost kernel: {msg}");
            return Estimate::INFEASIBLE;
        }
    };
    match schedule(kernel, &work, target) {
        Some(s) => Estimate {
            seconds: s.seconds(target, work.compute_dtype),
            bytes: s.bytes,
            flops: s.flops,
        },
        None => Estimate::INFEASIBLE,
    }
}

/// Fractions of peak bandwidth and peak arithmetic a template reaches when the machine is full.
#[derive(Clone, Copy, Debug)]
struct Efficiency {
    bandwidth: f64,
    compute: f64,
}

/// Wide streaming loads with no reuse reach ≥ 80–90% of bandwidth (TECHNIQUES.md); every
/// multiply-add needs its own weight load (and conversion), so load throughput caps arithmetic
/// at ≈ 40% of peak.
const GEMV: Efficiency = Efficiency {
    bandwidth: 0.90,
    compute: 0.40,
};
/// Double-buffered N×K tiles stream nearly as well as Gemv; the 8-row M tile gives each loaded
/// weight 8 uses — more than Gemv — but stays far from the MMA shapes peak needs: ≈ 50%
/// (FlashDecoding++).
const FLAT_GEMM: Efficiency = Efficiency {
    bandwidth: 0.85,
    compute: 0.50,
};
/// Full output tiles reused from on-chip memory: cuBLAS/CUTLASS reach 70–80% of peak on large
/// problems; tiles are laid out for reuse rather than streaming, so less bandwidth than Gemv.
const GEMM: Efficiency = Efficiency {
    bandwidth: 0.80,
    compute: 0.75,
};
/// FlashAttention-2 reports 50–73% of A100 peak in the forward pass.
const FLASH_ATTENTION: Efficiency = Efficiency {
    bandwidth: 0.80,
    compute: 0.60,
};
/// A decode sweep streams K/V with little arithmetic per byte.
const FLASH_DECODING: Efficiency = Efficiency {
    bandwidth: 0.85,
    compute: 0.50,
};
/// Elementwise, row-reduction, gather, append and layout kernels: STREAM-like copies reach
/// ≈ 80% of bandwidth.
const STREAMING: Efficiency = Efficiency {
    bandwidth: 0.80,
    compute: 0.50,
};

/// Rows of M one FlatGemm pass covers (M is padded to a multiple of this).
pub(crate) const FLAT_GEMM_ROWS: u32 = 8;
/// FlatGemm double-buffers its tiles.
pub(crate) const FLAT_GEMM_STAGES: u32 = 2;
/// QGemm has no stage parameter: it double-buffers.
pub(crate) const QGEMM_STAGES: u32 = 2;
/// Bytes of each split-K partial sum (f32), written once and read once by the reduction.
const PARTIAL_BYTES: f64 = 4.0;
/// Bytes one work item of a streaming kernel covers (a block of 1024 threads × 16 bytes).
const STREAMING_GRAIN_BYTES: f64 = 16.0 * 1024.0;

/// On-chip bytes of a matmul tile pipeline: `stages` copies of an A tile (`rows × tile_k`) and a
/// B tile (`tile_k × tile_n`).
pub(crate) fn matmul_footprint(
    rows: u32,
    tile_n: u32,
    tile_k: u32,
    stages: u32,
    a_elem_bytes: f64,
    b_elem_bytes: f64,
) -> f64 {
    let tile =
        f64::from(tile_k) * (f64::from(rows) * a_elem_bytes + f64::from(tile_n) * b_elem_bytes);
    f64::from(stages) * tile
}

/// On-chip bytes of a FlashAttention tile: a Q block and a K and a V block, in f32.
pub(crate) fn flash_attention_footprint(block_q: u32, block_kv: u32, d: f64, dv: f64) -> f64 {
    4.0 * (f64::from(block_q) * d + f64::from(block_kv) * (d + dv))
}

/// How a template runs a body: the roofline's inputs.
struct Schedule {
    bytes: f64,
    flops: f64,
    /// Independent work items (blocks, or pool tasks on a CPU).
    work_items: f64,
    launches: f64,
    efficiency: Efficiency,
    /// Whether loads overlap arithmetic (pipelined), so the slower of the two bounds the time.
    overlapped: bool,
}

impl Schedule {
    /// The roofline time: both bounds scale with the part of the machine the work items keep
    /// busy (see [`TargetSpec::bandwidth`]); without overlap memory and arithmetic add up.
    fn seconds(&self, target: &TargetSpec, dtype: DType) -> f64 {
        let busy = target.utilization(self.work_items);
        let memory = self.bytes / (target.bandwidth(self.work_items) * self.efficiency.bandwidth);
        let compute =
            self.flops / (target.peak_flops.for_dtype(dtype) * self.efficiency.compute * busy);
        let body = if self.overlapped {
            memory.max(compute)
        } else {
            memory + compute
        };
        self.launches * target.launch_overhead + body
    }
}

/// The schedule of `kind` for `work`, or `None` when the template cannot run it on `target`.
fn schedule(kind: &KernelKind, work: &Work, target: &TargetSpec) -> Option<Schedule> {
    match *kind {
        KernelKind::Gemv { tile_n, split_k } => gemv(work, None, tile_n, split_k),
        KernelKind::QGemv {
            format,
            tile_n,
            split_k,
        } => gemv(work, Some(format), tile_n, split_k),
        KernelKind::FlatGemm { tile_n, tile_k } => flat_gemm(work, target, tile_n, tile_k),
        KernelKind::Gemm {
            tile_m,
            tile_n,
            tile_k,
            stages,
        } => gemm(work, target, None, [tile_m, tile_n, tile_k], stages),
        KernelKind::QGemm {
            format,
            tile_m,
            tile_n,
            tile_k,
        } => gemm(
            work,
            target,
            Some(format),
            [tile_m, tile_n, tile_k],
            QGEMM_STAGES,
        ),
        KernelKind::FlashAttention { block_q, block_kv } => {
            flash_attention(work, target, block_q, block_kv)
        }
        KernelKind::FlashDecoding { splits } => flash_decoding(work, splits),
        KernelKind::RowReduce => Some(streaming(work, work.output_rows)),
        KernelKind::Elementwise
        | KernelKind::Gather
        | KernelKind::KvAppend
        | KernelKind::Layout => Some(streaming(
            work,
            (work.plain_bytes() / STREAMING_GRAIN_BYTES).ceil(),
        )),
    }
}

/// The body's matmul when the template reads its B operand: plain templates need a plain B,
/// quantized ones a B stored in their `format`.
fn matmul_for(work: &Work, format: Option<DType>) -> Option<&MatMulCore> {
    let mm = work.matmul.as_ref()?;
    let fits = match format {
        None => !mm.b_dtype.is_quantized(),
        Some(f) => mm.b_dtype == f,
    };
    fits.then_some(mm)
}

/// A matmul done in passes of `rows_per_pass` rows of M (padded up), each pass reading all of B
/// once, with N cut into `tile_n` columns and K split `split_k` ways across work items.
struct MatMulPasses {
    rows_per_pass: u32,
    tile_n: u32,
    split_k: u32,
    efficiency: Efficiency,
    overlapped: bool,
}

impl MatMulPasses {
    fn schedule(&self, work: &Work, mm: &MatMulCore) -> Schedule {
        let passes = (mm.rows / f64::from(self.rows_per_pass)).ceil();
        let padded_rows = passes * f64::from(self.rows_per_pass);
        let weight_rereads = mm
            .weight
            .map_or(0.0, |w| (passes - 1.0) * work.input_bytes[w]);
        let partials = if self.split_k > 1 {
            2.0 * f64::from(self.split_k) * mm.groups * mm.rows * mm.n * PARTIAL_BYTES
        } else {
            0.0
        };
        let n_tiles = (mm.n / f64::from(self.tile_n)).ceil();
        Schedule {
            bytes: work.plain_bytes() + weight_rereads + partials,
            flops: work.flops
                + mm.flops(padded_rows - mm.rows)
                + (passes - 1.0) * mm.dequant_flops(),
            work_items: mm.groups * passes * n_tiles * f64::from(self.split_k),
            launches: 1.0,
            efficiency: self.efficiency,
            overlapped: self.overlapped,
        }
    }
}

/// One row of M per pass: at M = 1 a pure weight stream; at M > 1 the weight is read M times.
fn gemv(work: &Work, format: Option<DType>, tile_n: u32, split_k: u32) -> Option<Schedule> {
    let mm = matmul_for(work, format)?;
    (tile_n > 0 && split_k > 0).then(|| {
        MatMulPasses {
            rows_per_pass: 1,
            tile_n,
            split_k,
            efficiency: GEMV,
            overlapped: true,
        }
        .schedule(work, mm)
    })
}

/// M padded to 8 per pass: the weight is read once for M ≤ 8, ⌈M/8⌉ times beyond.
fn flat_gemm(work: &Work, target: &TargetSpec, tile_n: u32, tile_k: u32) -> Option<Schedule> {
    let mm = matmul_for(work, None)?;
    let footprint = matmul_footprint(
        FLAT_GEMM_ROWS,
        tile_n,
        tile_k,
        FLAT_GEMM_STAGES,
        mm.a_elem_bytes,
        mm.b_elem_bytes,
    );
    (tile_n > 0 && tile_k > 0 && footprint <= target.onchip_bytes as f64).then(|| {
        MatMulPasses {
            rows_per_pass: FLAT_GEMM_ROWS,
            tile_n,
            split_k: 1,
            efficiency: FLAT_GEMM,
            overlapped: true,
        }
        .schedule(work, mm)
    })
}

/// M padded to `tile_m` per pass; `stages` tile copies must fit on chip. A GPU overlaps loads
/// with arithmetic only with ≥ 2 stages; a CPU's out-of-order core and prefetchers always do.
fn gemm(
    work: &Work,
    target: &TargetSpec,
    format: Option<DType>,
    [tile_m, tile_n, tile_k]: [u32; 3],
    stages: u32,
) -> Option<Schedule> {
    let mm = matmul_for(work, format)?;
    let footprint = matmul_footprint(
        tile_m,
        tile_n,
        tile_k,
        stages,
        mm.a_elem_bytes,
        mm.b_elem_bytes,
    );
    let valid = tile_m > 0 && tile_n > 0 && tile_k > 0 && stages > 0;
    (valid && footprint <= target.onchip_bytes as f64).then(|| {
        MatMulPasses {
            rows_per_pass: tile_m,
            tile_n,
            split_k: 1,
            efficiency: GEMM,
            overlapped: stages >= 2 || target.class == TargetClass::Cpu,
        }
        .schedule(work, mm)
    })
}

/// Each `block_q` block of each query head sweeps the K/V it may see through on-chip memory, so
/// K/V are read ⌈S/block_q⌉ × (Hq/Hkv) times (masked tiles skipped); S and T pad to the blocks.
fn flash_attention(
    work: &Work,
    target: &TargetSpec,
    block_q: u32,
    block_kv: u32,
) -> Option<Schedule> {
    let att = work.attention.as_ref()?;
    let footprint = flash_attention_footprint(block_q, block_kv, att.d, att.dv);
    if block_q == 0 || block_kv == 0 || footprint > target.onchip_bytes as f64 {
        return None;
    }
    let q_blocks = (att.s / f64::from(block_q)).ceil();
    let kv_blocks = (att.t / f64::from(block_kv)).ceil();
    let visible = att.pairs / (att.s * att.t).max(1.0);
    let sweeps = q_blocks * (att.q_heads / att.kv_heads) * visible;
    let padding = (q_blocks * f64::from(block_q) / att.s.max(1.0))
        * (kv_blocks * f64::from(block_kv) / att.t.max(1.0));
    Some(Schedule {
        bytes: work.plain_bytes() + (sweeps - 1.0) * kv_bytes(work, att),
        flops: work.flops + att.flops(att.pairs * (padding - 1.0)),
        work_items: att.batch * att.q_heads * q_blocks,
        launches: 1.0,
        efficiency: FLASH_ATTENTION,
        overlapped: true,
    })
}

/// K/V split `splits` ways along T; each split reads its part once for the whole GQA group, and
/// a second kernel merges the partial (acc, max, sum) rows by log-sum-exp.
fn flash_decoding(work: &Work, splits: u32) -> Option<Schedule> {
    let att = work.attention.as_ref()?;
    if splits == 0 {
        return None;
    }
    let splits = f64::from(splits);
    let unread = (1.0 - att.keys_read / att.t.max(1.0)) * kv_bytes(work, att);
    let merged_rows = if splits > 1.0 {
        splits * att.batch * att.q_heads * att.s
    } else {
        0.0
    };
    Some(Schedule {
        bytes: work.plain_bytes() - unread + 2.0 * merged_rows * att.partial_row_bytes(),
        flops: work.flops + 3.0 * merged_rows * (att.dv + 2.0),
        work_items: att.batch * att.kv_heads * splits.min(att.keys_read.max(1.0)),
        launches: if splits > 1.0 { 2.0 } else { 1.0 },
        efficiency: FLASH_DECODING,
        overlapped: true,
    })
}

/// Bytes of the kernel inputs K and V are read from.
fn kv_bytes(work: &Work, att: &AttentionCore) -> f64 {
    att.kv_inputs.iter().map(|&i| work.input_bytes[i]).sum()
}

/// Bandwidth-bound kernels: every byte once.
fn streaming(work: &Work, work_items: f64) -> Schedule {
    Schedule {
        bytes: work.plain_bytes(),
        flops: work.flops,
        work_items,
        launches: 1.0,
        efficiency: STREAMING,
        overlapped: true,
    }
}
