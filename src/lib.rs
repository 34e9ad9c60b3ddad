//! The compile driver: ties the importers, the optimizer, the code generators (later) and the
//! artifact writer together. The `tessera` binary is a thin CLI over this library.

pub mod compile;
pub mod demo;

pub use compile::{
    apply_storage, compile_model, default_vector_width, load_module, lower_for_cpu,
    lower_for_vulkan, lower_kernel_cpu, lower_kernel_gpu, materialize_derived_weights,
    optimize_model, quantize_model, quantized_weights, transpose_projections,
    transposed_projections, write_artifact, CompileOptions, CompileReport, Quant, Target,
};
pub use tessera_codegen_spirv::VulkanTarget;
pub use tessera_passes::lower::Precision;
