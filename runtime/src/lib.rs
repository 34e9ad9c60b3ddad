//! tessera's runtime: loads a `.tsr` artifact (mmap, verified), executes its entry points on a
//! device through an [`Executor`], keeps the KV cache state, samples and detokenizes.
//! Later backends replace the executor, not this API.

mod artifact;
mod bindings;
mod cpu;
mod engine;
mod error;
mod executor;
mod profile;
mod sampler;
#[cfg(test)]
mod test_artifact;
mod tokenizer;
#[cfg(feature = "vulkan")]
pub mod vulkan;

pub use artifact::Artifact;
pub use cpu::CpuExecutor;
pub use engine::{Engine, FinishReason, GenerateOptions, Generation, LoadOptions};
pub use error::RuntimeError;
pub use executor::{Executor, ReferenceExecutor};
pub use profile::KernelProfile;
pub use sampler::{argmax, Sampler, SamplingParams, SplitMix64};
pub use tokenizer::{TextStream, Tokenizer};
