//! The tile alternatives the optimizer puts in an e-class for each template, filtered to those
//! whose tiles fit the target's on-chip memory. Lists stay short (≤ 8 per template): the e-graph
//! holds every one of them for every matmul and attention.

use super::roofline::{
    flash_attention_footprint, matmul_footprint, FLAT_GEMM_ROWS, FLAT_GEMM_STAGES, QGEMM_STAGES,
};
use super::target::TargetSpec;
use tessera_ir::kernel::KernelKind;
use tessera_ir::DType;

/// Gemv (tile_n, split_k): narrow to wide row tiles; split K for when N/tile_n cannot fill the
/// machine (e.g. a K/V projection with few output rows).
const GEMV_TILES: [(u32, u32); 8] = [
    (4, 1),
    (8, 1),
    (16, 1),
    (32, 1),
    (4, 4),
    (8, 4),
    (16, 4),
    (32, 4),
];
/// FlatGemm (tile_n, tile_k): FlashDecoding++ keeps N/tile_n near the unit count for small N, so
/// tile_n reaches down to 16; short and long K steps.
const FLAT_GEMM_TILES: [(u32, u32); 8] = [
    (16, 64),
    (32, 64),
    (64, 64),
    (128, 64),
    (16, 256),
    (32, 256),
    (64, 256),
    (128, 256),
];
/// Gemm (tile_m, tile_n, tile_k, stages): from tiles that fit 32 KiB of workgroup memory
/// (32×64, 64×64) to CUTLASS's A100/H100 defaults (128×128×32, 3 stages); single-stage tiles for
/// targets whose on-chip memory cannot double-buffer.
const GEMM_TILES: [(u32, u32, u32, u32); 8] = [
    (32, 64, 32, 2),
    (64, 64, 32, 2),
    (64, 128, 32, 3),
    (128, 64, 32, 3),
    (128, 128, 32, 3),
    (128, 128, 64, 2),
    (64, 64, 64, 1),
    (128, 128, 32, 1),
];
/// FlashAttention (block_q, block_kv): FlashAttention-2's 128/64 blocks down to 16×16 for small
/// workgroup memories and large heads.
const FLASH_ATTENTION_BLOCKS: [(u32, u32); 8] = [
    (128, 128),
    (128, 64),
    (64, 128),
    (64, 64),
    (64, 32),
    (32, 32),
    (16, 32),
    (16, 16),
];
/// FlashDecoding split counts.
const FLASH_DECODING_SPLITS: [u32; 6] = [1, 2, 4, 8, 16, 32];

/// Element bytes the plain-matmul filters assume (f32, the widest plain dtype), so every listed
/// tile fits whatever plain dtypes the matmul has.
const WIDEST_ELEM_BYTES: f64 = 4.0;

/// Gemv, FlatGemm and Gemm variants for a plain-weight matmul on `target`. With `m_hint` (M known
/// at compile time) Gemm tiles taller than needed are dropped: beyond the smallest `tile_m ≥ M`
/// they only add padding.
pub fn matmul_candidates(target: &TargetSpec, m_hint: Option<usize>) -> Vec<KernelKind> {
    let gemv = GEMV_TILES
        .iter()
        .map(|&(tile_n, split_k)| KernelKind::Gemv { tile_n, split_k });
    let flat = FLAT_GEMM_TILES
        .iter()
        .filter(|&&(tile_n, tile_k)| {
            fits(
                target,
                matmul_footprint(
                    FLAT_GEMM_ROWS,
                    tile_n,
                    tile_k,
                    FLAT_GEMM_STAGES,
                    WIDEST_ELEM_BYTES,
                    WIDEST_ELEM_BYTES,
                ),
            )
        })
        .map(|&(tile_n, tile_k)| KernelKind::FlatGemm { tile_n, tile_k });
    let gemm =
        gemm_tiles(target, m_hint, 1, WIDEST_ELEM_BYTES).map(|(tile_m, tile_n, tile_k, stages)| {
            KernelKind::Gemm {
                tile_m,
                tile_n,
                tile_k,
                stages,
            }
        });
    gemv.chain(flat).chain(gemm).collect()
}

/// QGemv and QGemm variants for a matmul over a `format` (q8_0, q4_0) weight on `target`; none
/// for a format that is not block-quantized.
pub fn quant_matmul_candidates(
    target: &TargetSpec,
    format: DType,
    m_hint: Option<usize>,
) -> Vec<KernelKind> {
    let Some(block) = format.quant_block() else {
        return Vec::new();
    };
    let weight_bytes = block.bytes as f64 / block.elems as f64;
    let gemv = GEMV_TILES
        .iter()
        .map(|&(tile_n, split_k)| KernelKind::QGemv {
            format,
            tile_n,
            split_k,
        });
    let mut kinds: Vec<KernelKind> = gemv.collect();
    // Gemm tiles differing only in stages are one QGemm.
    for (tile_m, tile_n, tile_k, _) in gemm_tiles(target, m_hint, QGEMM_STAGES, weight_bytes) {
        let kind = KernelKind::QGemm {
            format,
            tile_m,
            tile_n,
            tile_k,
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// FlashDecoding split counts (`decode`: one query row per sequence) or FlashAttention blocks
/// whose Q, K and V tiles fit on chip for `head_dim` (prefill); may be empty when no block fits.
pub fn attention_candidates(target: &TargetSpec, decode: bool, head_dim: usize) -> Vec<KernelKind> {
    if decode {
        return FLASH_DECODING_SPLITS
            .iter()
            .map(|&splits| KernelKind::FlashDecoding { splits })
            .collect();
    }
    let d = head_dim as f64;
    FLASH_ATTENTION_BLOCKS
        .iter()
        .filter(|&&(q, kv)| fits(target, flash_attention_footprint(q, kv, d, d)))
        .map(|&(block_q, block_kv)| KernelKind::FlashAttention { block_q, block_kv })
        .collect()
}

fn fits(target: &TargetSpec, footprint: f64) -> bool {
    footprint <= target.onchip_bytes as f64
}

/// Gemm tiles that fit on chip with at least `min_stages` stages (QGemm always double-buffers)
/// and a `weight_bytes` B element, pruned by `m_hint`.
fn gemm_tiles(
    target: &TargetSpec,
    m_hint: Option<usize>,
    min_stages: u32,
    weight_bytes: f64,
) -> impl Iterator<Item = (u32, u32, u32, u32)> + '_ {
    let tallest = m_hint.map(|m| {
        GEMM_TILES
            .iter()
            .map(|t| t.0)
            .filter(|&tm| tm as usize >= m)
            .min()
            .unwrap_or(u32::MAX)
    });
    GEMM_TILES.into_iter().filter(move |&(tm, tn, tk, stages)| {
        let stages = stages.max(min_stages);
        tallest.is_none_or(|t| tm <= t)
            && fits(
                target,
                matmul_footprint(tm, tn, tk, stages, WIDEST_ELEM_BYTES, weight_bytes),
            )
    })
}
