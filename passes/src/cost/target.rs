//! What the cost model knows about a machine: bandwidth, peak arithmetic rates per dtype, launch
//! overhead, on-chip memory and parallelism. One `TargetSpec` per compile target; the figures are
//! vendor datasheet numbers (GPUs) or documented estimates (the detected host CPU).

use serde::{Deserialize, Serialize};
use tessera_ir::DType;
use thiserror::Error;

/// CPUs and GPUs schedule work items differently (see [`TargetSpec::utilization`]) and overlap
/// memory with compute differently (see `roofline`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetClass {
    Cpu,
    Gpu,
}

/// Peak arithmetic rate in operations per second (a fused multiply-add counts 2), per dtype class.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeakFlops {
    pub f32: f64,
    /// f16 and bf16 (tensor cores on GPUs; on CPUs converted to f32 on load, so the f32 rate).
    pub f16: f64,
    pub int8: f64,
}

impl PeakFlops {
    /// The rate for arithmetic in `dtype`. Integers other than 8-bit and block-quantized types
    /// (dequantized to f32 in registers) run at the f32 rate.
    pub fn for_dtype(&self, dtype: DType) -> f64 {
        match dtype {
            DType::F16 | DType::Bf16 => self.f16,
            DType::I8 | DType::U8 => self.int8,
            _ => self.f32,
        }
    }
}

/// A machine as the roofline cost model sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// The name [`TargetSpec::by_name`] accepts.
    pub name: String,
    pub class: TargetClass,
    /// Sustainable DRAM/HBM bandwidth, bytes/s (before any template's efficiency factor).
    pub mem_bandwidth: f64,
    /// Bandwidth one unit reaches on its own: a CPU core streams more than its share of a
    /// saturated memory system; a GPU SM is taken at its share, `mem_bandwidth / parallel_units`.
    pub unit_bandwidth: f64,
    pub peak_flops: PeakFlops,
    /// Seconds each launched kernel costs before it does any work.
    pub launch_overhead: f64,
    /// Shared memory per block (GPU) or L2 per core (CPU): what one work item can tile into.
    pub onchip_bytes: usize,
    /// SMs/compute units (GPU) or cores (CPU): how many work items run at once.
    pub parallel_units: usize,
    /// CPU vector width in bytes; GPUs report one 32-bit lane (4).
    pub simd_width_bytes: usize,
    /// Threads one work item may use (GPU block size limit; 1 on CPUs, one thread per item).
    pub max_threads_per_block: usize,
}

/// Names [`TargetSpec::by_name`] accepts.
pub const TARGET_NAMES: [&str; 5] = ["cpu", "sm_80", "sm_90", "vulkan", "reference"];

/// A target name that [`TargetSpec::by_name`] does not know.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("unknown target `{name}`; valid targets: {}", TARGET_NAMES.join(", "))]
pub struct UnknownTarget {
    pub name: String,
}

/// Clock assumed for CPU peak rates (sustained all-core clocks of current desktop and server parts
/// are 2.5–4 GHz).
const CPU_CLOCK_HZ: f64 = 3.0e9;
/// DRAM bandwidth one core streams (this project's 2-core AMD EPYC CI machine measured ≈ 28 GB/s
/// reading with two threads).
const CPU_BANDWIDTH_PER_CORE: f64 = 14.0e9;
/// Cores after which memory channels saturate: 8 × 14 GB/s ≈ 112 GB/s, about dual-channel
/// DDR5-6400 (102 GB/s peak) — desktop class; servers with more channels are underestimated.
const CPU_BANDWIDTH_CORES: usize = 8;
/// L2 per core: 1 MiB on AMD Zen 4 and Intel Skylake-SP/Ice Lake-SP (2 MiB on Sapphire Rapids).
const CPU_L2_BYTES: usize = 1 << 20;
/// Fork/join of the runtime's thread pool around one kernel (OpenMP/rayon barriers: 1–5 µs).
const CPU_LAUNCH_SECONDS: f64 = 2.0e-6;

impl TargetSpec {
    /// A CPU with `cores` cores of `simd_width_bytes`-wide vectors (`fma`: fused multiply-add).
    /// Peak f32 = cores × 3 GHz × f32 lanes × 2 with FMA (one vector FMA per cycle; parts with two
    /// FMA ports are underestimated 2×, which scales every template alike). f16 runs at the f32
    /// rate (converted on load); int8 at twice it (packed 8-bit multiply-adds: `vpmaddubsw`,
    /// VNNI, NEON `sdot`, conservatively).
    pub fn cpu(cores: usize, simd_width_bytes: usize, fma: bool) -> TargetSpec {
        let cores = cores.max(1);
        let lanes = (simd_width_bytes / 4).max(1) as f64;
        let f32 = cores as f64 * CPU_CLOCK_HZ * lanes * if fma { 2.0 } else { 1.0 };
        TargetSpec {
            name: "cpu".into(),
            class: TargetClass::Cpu,
            mem_bandwidth: CPU_BANDWIDTH_PER_CORE * cores.min(CPU_BANDWIDTH_CORES) as f64,
            unit_bandwidth: CPU_BANDWIDTH_PER_CORE,
            peak_flops: PeakFlops {
                f32,
                f16: f32,
                int8: 2.0 * f32,
            },
            launch_overhead: CPU_LAUNCH_SECONDS,
            onchip_bytes: CPU_L2_BYTES,
            parallel_units: cores,
            simd_width_bytes,
            max_threads_per_block: 1,
        }
    }

    /// The machine this process runs on: cores from `available_parallelism`, vector width from
    /// the detected ISA (x86-64: AVX-512F 64 bytes, AVX2 32, else SSE 16; other architectures 16,
    /// i.e. NEON on aarch64), then [`TargetSpec::cpu`]'s estimates.
    pub fn cpu_host() -> TargetSpec {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (simd, fma) = host_simd();
        TargetSpec::cpu(cores, simd, fma)
    }

    /// NVIDIA A100 SXM4 80GB (sm_80), from the NVIDIA A100 Tensor Core GPU datasheet: 2,039 GB/s
    /// HBM2e; 19.5 TFLOP/s f32, 312 TFLOP/s dense f16/bf16 tensor, 624 TOPS dense int8; 108 SMs;
    /// 163 KiB shared memory per block (164 KiB per SM); ~4 µs per launch (typical CUDA launch
    /// latency without graphs).
    pub fn sm_80() -> TargetSpec {
        TargetSpec {
            name: "sm_80".into(),
            class: TargetClass::Gpu,
            mem_bandwidth: 2.039e12,
            unit_bandwidth: 2.039e12 / 108.0,
            peak_flops: PeakFlops {
                f32: 19.5e12,
                f16: 312.0e12,
                int8: 624.0e12,
            },
            launch_overhead: 4.0e-6,
            onchip_bytes: 163 * 1024,
            parallel_units: 108,
            simd_width_bytes: 4,
            max_threads_per_block: 1024,
        }
    }

    /// NVIDIA H100 SXM5 (sm_90), from the NVIDIA H100 Tensor Core GPU datasheet: 3.35 TB/s HBM3;
    /// 67 TFLOP/s f32, 989 TFLOP/s dense f16/bf16 tensor, 1,979 TOPS dense int8; 132 SMs; 227 KiB
    /// shared memory per block (228 KiB per SM); ~4 µs per launch. An H200 has the same compute
    /// and 4.8 TB/s, so this underestimates its bandwidth.
    pub fn sm_90() -> TargetSpec {
        TargetSpec {
            name: "sm_90".into(),
            class: TargetClass::Gpu,
            mem_bandwidth: 3.35e12,
            unit_bandwidth: 3.35e12 / 132.0,
            peak_flops: PeakFlops {
                f32: 66.9e12,
                f16: 989.4e12,
                int8: 1978.9e12,
            },
            launch_overhead: 4.0e-6,
            onchip_bytes: 227 * 1024,
            parallel_units: 132,
            simd_width_bytes: 4,
            max_threads_per_block: 1024,
        }
    }

    /// A generic mid-range discrete GPU under Vulkan, not one part: round figures between a
    /// GeForce RTX 3060 Ti (448 GB/s, 38 SMs, 16.2 TFLOP/s f32) and a Radeon RX 7600 (288 GB/s,
    /// 32 CUs, 21.8 TFLOP/s): 450 GB/s, 30 units, 20 TFLOP/s f32 and f16 (no tensor cores
    /// assumed), int8 2× (packed dot products); 32 KiB workgroup memory (the common
    /// `maxComputeSharedMemorySize`), 256 invocations per workgroup (portable), ~8 µs per
    /// dispatch (command-buffer submission through the Vulkan driver).
    pub fn vulkan_generic() -> TargetSpec {
        TargetSpec {
            name: "vulkan".into(),
            class: TargetClass::Gpu,
            mem_bandwidth: 450.0e9,
            unit_bandwidth: 450.0e9 / 30.0,
            peak_flops: PeakFlops {
                f32: 20.0e12,
                f16: 20.0e12,
                int8: 40.0e12,
            },
            launch_overhead: 8.0e-6,
            onchip_bytes: 32 * 1024,
            parallel_units: 30,
            simd_width_bytes: 4,
            max_threads_per_block: 256,
        }
    }

    /// The spec for a target name (see [`TARGET_NAMES`]); `reference` (the reference interpreter)
    /// runs on the host CPU and is costed as it.
    pub fn by_name(name: &str) -> Result<TargetSpec, UnknownTarget> {
        match name {
            "cpu" | "reference" => Ok(TargetSpec::cpu_host()),
            "sm_80" => Ok(TargetSpec::sm_80()),
            "sm_90" => Ok(TargetSpec::sm_90()),
            "vulkan" => Ok(TargetSpec::vulkan_generic()),
            _ => Err(UnknownTarget { name: name.into() }),
        }
    }

    /// The fraction of the machine that `work_items` equal, independent work items keep busy.
    ///
    /// Both classes run items in rounds of `parallel_units` (a GPU's block scheduler issues
    /// waves; a CPU pool hands one item per thread), so a partial last round idles units
    /// ("wave quantization"). A CPU pool's threads do not run in lockstep (shared caches and
    /// memory channels, OS noise, clock changes): when the last item finishes, the others have
    /// idled half an item on average, i.e. (1 − 1/p)/2 of a round. Finer items shrink that tail,
    /// which is why CPU kernels want several items per thread.
    pub fn utilization(&self, work_items: f64) -> f64 {
        let n = work_items.max(1.0);
        let p = self.parallel_units.max(1) as f64;
        let rounds = (n / p).ceil();
        let tail = match self.class {
            TargetClass::Cpu if n > 1.0 => (1.0 - 1.0 / p) / 2.0,
            _ => 0.0,
        };
        n / (p * (rounds + tail))
    }

    /// The bandwidth `work_items` work items reach: their busy units' own bandwidth, up to the
    /// memory system's.
    pub fn bandwidth(&self, work_items: f64) -> f64 {
        let busy_units = self.utilization(work_items) * self.parallel_units.max(1) as f64;
        self.mem_bandwidth.min(busy_units * self.unit_bandwidth)
    }
}

/// (vector width in bytes, fused multiply-add) of the host.
#[cfg(target_arch = "x86_64")]
fn host_simd() -> (usize, bool) {
    let fma = is_x86_feature_detected!("fma") || is_x86_feature_detected!("avx512f");
    if is_x86_feature_detected!("avx512f") {
        (64, fma)
    } else if is_x86_feature_detected!("avx2") {
        (32, fma)
    } else {
        (16, fma)
    }
}

/// (vector width in bytes, fused multiply-add) of the host: 128-bit vectors with FMA (NEON on
/// aarch64; a conservative default elsewhere).
#[cfg(not(target_arch = "x86_64"))]
fn host_simd() -> (usize, bool) {
    (16, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_name_knows_every_listed_target() {
        for name in TARGET_NAMES {
            let spec = TargetSpec::by_name(name).unwrap();
            assert!(
                spec.mem_bandwidth > 0.0 && spec.peak_flops.f32 > 0.0,
                "{name}"
            );
        }
        assert_eq!(TargetSpec::by_name("sm_90").unwrap(), TargetSpec::sm_90());
        assert_eq!(
            TargetSpec::by_name("reference").unwrap().class,
            TargetClass::Cpu
        );
    }

    #[test]
    fn by_name_error_lists_the_names() {
        let err = TargetSpec::by_name("sm_75").unwrap_err().to_string();
        assert!(err.contains("`sm_75`"), "{err}");
        for name in TARGET_NAMES {
            assert!(err.contains(name), "{err} lacks {name}");
        }
    }

    #[test]
    fn cpu_rates_follow_cores_and_vector_width() {
        let avx2 = TargetSpec::cpu(2, 32, true);
        assert_eq!(avx2.peak_flops.f32, 2.0 * 3.0e9 * 8.0 * 2.0);
        assert_eq!(avx2.mem_bandwidth, 28.0e9);
        assert_eq!(TargetSpec::cpu(64, 32, true).mem_bandwidth, 112.0e9);
        assert_eq!(
            TargetSpec::cpu(2, 64, true).peak_flops.f32,
            2.0 * avx2.peak_flops.f32
        );
        let host = TargetSpec::cpu_host();
        assert!(host.parallel_units >= 1 && host.simd_width_bytes >= 16);
    }

    #[test]
    fn utilization_counts_rounds_and_the_cpu_tail() {
        let gpu = TargetSpec::sm_90();
        assert_eq!(gpu.utilization(132.0), 1.0);
        assert!((gpu.utilization(66.0) - 0.5).abs() < 1e-12);
        assert!((gpu.utilization(133.0) - 133.0 / 264.0).abs() < 1e-12);
        let cpu = TargetSpec::cpu(2, 32, true);
        assert_eq!(cpu.utilization(1.0), 0.5);
        assert!((cpu.utilization(4.0) - 4.0 / 4.5).abs() < 1e-12);
        assert!(cpu.utilization(64.0) > cpu.utilization(4.0));
        assert_eq!(TargetSpec::cpu(1, 16, true).utilization(3.0), 1.0);
    }

    #[test]
    fn few_busy_cores_still_stream() {
        let gpu = TargetSpec::sm_90();
        assert!((gpu.bandwidth(66.0) - gpu.mem_bandwidth / 2.0).abs() < 1.0);
        let many = TargetSpec::cpu(64, 32, true);
        assert_eq!(many.bandwidth(1.0), 14.0e9);
        assert_eq!(many.bandwidth(64.0 * 64.0), many.mem_bandwidth);
    }

    #[test]
    fn serde_round_trip() {
        let spec = TargetSpec::vulkan_generic();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<TargetSpec>(&json).unwrap(), spec);
    }
}
