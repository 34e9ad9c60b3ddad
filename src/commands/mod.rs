//! One module per subcommand: argument definitions and what the command prints.

pub mod bench;
pub mod compile;
pub mod demo;
pub mod devices;
pub mod explain;
pub mod inspect;
pub mod run;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress on stderr (hidden when stderr is not a terminal): a spinner while the model is
/// imported and optimized, then a byte bar once weights are written.
pub struct ByteProgress(ProgressBar);

impl ByteProgress {
    /// Starts the spinner with `preparing` (what happens before bytes flow).
    pub fn new(preparing: &'static str) -> ByteProgress {
        let bar = ProgressBar::new_spinner();
        bar.set_message(preparing);
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        ByteProgress(bar)
    }

    /// The callback the compile driver reports `(done, total)` written weight bytes through.
    pub fn update(&self, done: u64, total: u64) {
        if self.0.length() != Some(total) {
            self.0.set_style(
                ProgressStyle::with_template(
                    "writing weights [{bar:30}] {bytes}/{total_bytes} ({eta})",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            self.0.set_length(total);
        }
        self.0.set_position(done);
    }

    pub fn finish(self) {
        self.0.finish_and_clear();
    }
}

/// Prints `value` as one JSON line on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// How `run` and `bench` load an artifact: the CPU executor's threads and backend, the Vulkan
/// device.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// Threads each kernel launch is split across on `--target cpu` (default: all available).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// What compiles the CPU kernels on `--target cpu` (default: llvm when built with it,
    /// else cranelift).
    #[arg(long, value_enum, value_name = "BACKEND")]
    cpu_backend: Option<CpuBackend>,
    /// The Vulkan adapter a `--target vulkan` artifact runs on, as `tessera devices` numbers
    /// them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    device: usize,
}

impl LoadArgs {
    pub fn options(&self) -> anyhow::Result<tessera_runtime::LoadOptions> {
        Ok(tessera_runtime::LoadOptions {
            threads: self.threads.map(|n| n as usize),
            cpu_backend: CpuBackend::resolve(self.cpu_backend)?,
            device: self.device,
        })
    }
}

/// `--cpu-backend`: what compiles the CPU kernels. Both names always parse, so that asking a
/// build without LLVM for it says how to get it instead of "invalid value".
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuBackend {
    /// Cranelift: compiles in milliseconds, 128-bit SIMD.
    Cranelift,
    /// LLVM at O3 for the host CPU (the default when built with `--features llvm`).
    Llvm,
}

impl CpuBackend {
    /// The backend `choice` names (the build's default without one), or why this build lacks it.
    pub fn resolve(choice: Option<CpuBackend>) -> anyhow::Result<tessera_codegen_cpu::Backend> {
        use tessera_codegen_cpu::Backend;
        match choice {
            None => Ok(Backend::default()),
            Some(CpuBackend::Cranelift) => Ok(Backend::Cranelift),
            #[cfg(feature = "llvm")]
            Some(CpuBackend::Llvm) => Ok(Backend::Llvm),
            #[cfg(not(feature = "llvm"))]
            Some(CpuBackend::Llvm) => anyhow::bail!(
                "--cpu-backend llvm: built without the `llvm` feature: rebuild with \
                 `cargo build --release --features llvm`"
            ),
        }
    }
}

/// The CPU kernels' vector width for `--vector-bits` (`None`: [`tessera::default_vector_width`]).
pub fn vector_width(bits: Option<u32>) -> anyhow::Result<tessera_passes::lower::VectorWidth> {
    use tessera_passes::lower::VectorWidth;
    match bits {
        None => Ok(tessera::default_vector_width()),
        Some(bits) => VectorWidth::from_bits(bits)
            .ok_or_else(|| anyhow::anyhow!("--vector-bits {bits}: expected 128, 256 or 512")),
    }
}
