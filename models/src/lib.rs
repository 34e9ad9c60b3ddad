//! Model importers: a Hugging Face folder (config + safetensors + tokenizer) becomes a
//! [`tessera_ir::Module`] with `prefill` and `decode` entry points plus its weights, still
//! memory-mapped. Architecture builders (Llama family, GPT-2) emit the Graph from a
//! [`ModelConfig`] alone, so a config without weights can be built too.
//!
//! Module conventions the runtime relies on: inputs `tokens` and `positions` (i32 [batch, seq];
//! `seq` is 1 in `decode`), state `cache.{i}.k|v` (f32 [batch, kv_heads, past, head_dim]) read
//! and written back appended by each entry point, output `logits` (f32 [batch, vocab], last
//! position only). Weight names are the `transformers` names (GPT-2 with its `transformer.`
//! prefix), plus the computed [`computed_weights`].

mod builder;
mod config;
mod error;
mod gpt2;
mod import;
mod llama;
mod rope;
mod safetensors;

pub use config::{parse_config, Architecture, ModelConfig, RopeConfig, RopeScaling};
pub use error::ModelError;
pub use import::import_hf;

use memmap2::Mmap;
use std::sync::Arc;
use tessera_ir::{DType, Module, WeightSpec};

/// A model ready for the optimizer: its Module, the data of every weight the Module declares (in
/// declaration order), the tokenizer, and the config it was built from.
#[derive(Debug)]
pub struct ImportedModel {
    /// `prefill` and `decode`, sharing weights and the KV-cache state.
    pub module: Module,
    /// One per `module.weights` entry, in the same order.
    pub weights: Vec<Weight>,
    /// `tokenizer.json` verbatim, when the folder has one.
    pub tokenizer_json: Option<String>,
    /// The parsed config (eos ids include `generation_config.json`'s).
    pub config: ModelConfig,
}

/// One weight: its declaration and its bytes (row-major, little-endian, the declared dtype).
#[derive(Clone, Debug)]
pub struct Weight {
    pub spec: WeightSpec,
    pub data: WeightData,
}

impl Weight {
    /// The raw stored bytes, `spec.dtype.storage_bytes(&spec.shape)` long.
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }
}

/// Where a weight's bytes live: computed at import, or a range of a mapped weight file (so a
/// multi-gigabyte checkpoint is never copied).
#[derive(Clone, Debug)]
pub enum WeightData {
    Owned(Vec<u8>),
    /// Bytes `start..end` of a mapped file.
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        end: usize,
    },
}

impl WeightData {
    /// The bytes, wherever they live.
    pub fn bytes(&self) -> &[u8] {
        match self {
            WeightData::Owned(bytes) => bytes,
            WeightData::Mapped { map, start, end } => &map[*start..*end],
        }
    }
}

/// Builds the Module from a config alone (no weights): what `tessera demo` runs with random
/// weights and `explain` shows for a config-only folder. Stored weights get `config.dtype`; the
/// weights of [`computed_weights`] must take their values from there, not be randomized.
pub fn build_module(config: &ModelConfig) -> Result<Module, ModelError> {
    builder::build_module(config, &|_| None)
}

/// The weights a Module declares that come from the config rather than from files: today
/// `rope.inv_freq` (f32 [rotary_dim / 2], computed as `transformers` does) for RoPE models.
pub fn computed_weights(config: &ModelConfig) -> Vec<Weight> {
    let Some(rope) = &config.rope else {
        return Vec::new();
    };
    let inv_freq = rope::inv_freq(rope);
    let bytes = inv_freq.iter().flat_map(|f| f.to_le_bytes()).collect();
    vec![Weight {
        spec: WeightSpec {
            name: builder::ROPE_INV_FREQ.into(),
            dtype: DType::F32,
            shape: vec![inv_freq.len()],
        },
        data: WeightData::Owned(bytes),
    }]
}
