//! The machine LLVM generates code for: the host's triple, CPU and features, detected once, and
//! what follows from them (the kernel functions' target attributes, the packed-byte dot product
//! instructions, the optimizer's target machine).

use super::Failure;
use inkwell::attributes::Attribute;
use inkwell::context::Context;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;
use std::sync::OnceLock;

/// The host CPU as LLVM names it.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    triple: String,
    cpu: String,
    /// LLVM's feature string, `+avx2,-avx512f,…`.
    features: String,
    pub(crate) dot: DotInstructions,
}

/// Which x86 VNNI instructions compute `Dot4U8I8Packed`/`Dot4I8Packed` in one step; each is
/// only used when the host has it, the generic widening form otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DotInstructions {
    /// `vpdpbusd` on 128- and 256-bit vectors: AVX512-VNNI with AVX512-VL, or AVX-VNNI (which
    /// LLVM selects for the same intrinsic).
    pub(crate) u8i8_narrow: bool,
    /// `vpdpbusd` on 512-bit vectors: AVX512-VNNI.
    pub(crate) u8i8_512: bool,
    /// `vpdpbssd` on 128- and 256-bit vectors: AVX-VNNI-INT8. Without it `i8·i8` takes the
    /// generic form.
    pub(crate) i8i8_narrow: bool,
}

impl DotInstructions {
    /// None: every dot product takes the generic form.
    pub(crate) const NONE: DotInstructions = DotInstructions {
        u8i8_narrow: false,
        u8i8_512: false,
        i8i8_narrow: false,
    };

    /// The LLVM intrinsic computing a dot product of `lanes` 32-bit lanes in one instruction,
    /// if the host has one.
    pub(crate) fn intrinsic(self, a_unsigned: bool, lanes: u32) -> Option<&'static str> {
        match (a_unsigned, lanes) {
            (true, 4) if self.u8i8_narrow => Some("llvm.x86.avx512.vpdpbusd.128"),
            (true, 8) if self.u8i8_narrow => Some("llvm.x86.avx512.vpdpbusd.256"),
            (true, 16) if self.u8i8_512 => Some("llvm.x86.avx512.vpdpbusd.512"),
            (false, 4) if self.i8i8_narrow => Some("llvm.x86.avx2.vpdpbssd.128"),
            (false, 8) if self.i8i8_narrow => Some("llvm.x86.avx2.vpdpbssd.256"),
            _ => None,
        }
    }
}

impl Host {
    /// The machine this process runs on, detected on first use (which also registers LLVM's
    /// native target).
    pub(crate) fn native() -> Result<&'static Host, Failure> {
        static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
        HOST.get_or_init(Host::detect)
            .as_ref()
            .map_err(|e| Failure::Llvm(e.clone()))
    }

    fn detect() -> Result<Host, String> {
        Target::initialize_native(&InitializationConfig::default())
            .map_err(|e| format!("initializing the native target: {e}"))?;
        let triple = TargetMachine::get_default_triple();
        let triple = triple
            .as_str()
            .to_str()
            .map_err(|e| format!("host triple: {e}"))?
            .to_string();
        let cpu = TargetMachine::get_host_cpu_name().to_string();
        let features = TargetMachine::get_host_cpu_features().to_string();
        let mut host = Host {
            triple,
            cpu,
            features,
            dot: DotInstructions::NONE,
        };
        let vnni512 = host.has("avx512vnni");
        host.dot = DotInstructions {
            u8i8_narrow: (vnni512 && host.has("avx512vl")) || host.has("avxvnni"),
            u8i8_512: vnni512,
            i8i8_narrow: host.has("avxvnniint8"),
        };
        Ok(host)
    }

    /// This host with other dot-product instructions (tests force the generic form with it).
    #[cfg(test)]
    pub(crate) fn with_dot(&self, dot: DotInstructions) -> Host {
        Host {
            dot,
            ..self.clone()
        }
    }

    /// Whether the host has LLVM feature `name` (`avx512f`, `neon`, …).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.features
            .split(',')
            .any(|f| f.strip_prefix('+') == Some(name))
    }

    /// The attributes every kernel function carries. `target-cpu` and `target-features` make
    /// LLVM use the host's whole instruction set (and scheduling model) for the function, even
    /// under an execution engine created for a generic CPU. `prefer-vector-width=512` on hosts
    /// with AVX-512: LLVM otherwise keeps its vectorizer at 256 bits to avoid the clock
    /// penalty of 512-bit instructions on early AVX-512 parts, but kernels are long, dense
    /// loops whose throughput doubles with `zmm` registers on current ones (Ice Lake and
    /// later, Zen 4), and the 512-bit VNNI dot product needs the wide registers enabled.
    pub(crate) fn function_attributes(&self, cx: &Context) -> Vec<Attribute> {
        let mut attributes = vec![
            cx.create_string_attribute("target-cpu", &self.cpu),
            cx.create_string_attribute("target-features", &self.features),
        ];
        if self.has("avx512f") {
            attributes.push(cx.create_string_attribute("prefer-vector-width", "512"));
        }
        attributes
    }

    /// A target machine for the host at the highest optimization level: the optimizer's cost
    /// model and the module's data layout.
    pub(crate) fn target_machine(&self) -> Result<TargetMachine, Failure> {
        let triple = TargetTriple::create(&self.triple);
        let target = Target::from_triple(&triple)
            .map_err(|e| Failure::Llvm(format!("target {}: {e}", self.triple)))?;
        target
            .create_target_machine(
                &triple,
                &self.cpu,
                &self.features,
                OptimizationLevel::Aggressive,
                RelocMode::Default,
                CodeModel::JITDefault,
            )
            .ok_or_else(|| {
                Failure::Llvm(format!(
                    "no target machine for {} ({})",
                    self.triple, self.cpu
                ))
            })
    }
}
