//! `tessera demo`: a small Llama-architecture model with seeded random weights, built in-process
//! (no download), compiled to an artifact, loaded and run — the whole pipeline in one command.

use crate::compile::{
    default_vector_width, optimize_model, write_artifact, CompileOptions, Target,
};
use crate::VulkanTarget;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;
use tessera_ir::WeightSpec;
use tessera_models::{
    build_module, computed_weights, ImportedModel, ModelConfig, Weight, WeightData,
};
use tessera_runtime::{Engine, GenerateOptions, SplitMix64};

/// What the demo did and how fast.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub architecture: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab_size: usize,
    pub parameters: u64,
    pub artifact: String,
    pub artifact_bytes: u64,
    /// Launched kernels per transformer block, per entry point.
    pub kernels_per_layer: std::collections::BTreeMap<String, usize>,
    pub compile_seconds: f64,
    pub load_seconds: f64,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// The demo's architecture: a scaled-down Llama (GQA, RoPE, SwiGLU, RMSNorm).
pub fn demo_config() -> ModelConfig {
    ModelConfig::llama(2048, 256, 688, 4, 8, 4)
}

/// Random weights for `config`, reproducible from `seed`: matrices uniform with unit-variance
/// outputs (±√(3/fan_in)), norm scales near 1, computed weights (RoPE frequencies) exact.
pub fn random_model(config: ModelConfig, seed: u64) -> Result<ImportedModel> {
    let module = build_module(&config)?;
    let computed = computed_weights(&config);
    let mut rng = SplitMix64::new(seed);
    let weights = module
        .weights
        .iter()
        .map(
            |spec| match computed.iter().find(|w| w.spec.name == spec.name) {
                Some(w) => w.clone(),
                None => random_weight(spec, &mut rng),
            },
        )
        .collect();
    Ok(ImportedModel {
        module,
        weights,
        tokenizer_json: None,
        config,
    })
}

fn random_weight(spec: &WeightSpec, rng: &mut SplitMix64) -> Weight {
    let fan_in = *spec.shape.last().unwrap_or(&1) as f64;
    let (center, half_width) = match spec.shape.len() {
        1 => (1.0, 0.1),
        _ => (0.0, (3.0 / fan_in).sqrt()),
    };
    let numel: usize = spec.shape.iter().product();
    let bytes = (0..numel)
        .flat_map(|_| ((center + half_width * (2.0 * rng.next_unit() - 1.0)) as f32).to_le_bytes())
        .collect();
    Weight {
        spec: spec.clone(),
        data: WeightData::Owned(bytes),
    }
}

/// Builds, compiles (to `artifact`), loads and runs the demo model, generating `max_tokens`.
pub fn run_demo(
    artifact: &Path,
    max_tokens: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<DemoReport> {
    let config = demo_config();
    let start = Instant::now();
    let mut model = random_model(config.clone(), 0)?;
    let opts = CompileOptions {
        target: Target::Reference,
        output: artifact.to_path_buf(),
        optimize: true,
        quant: None,
        vector_width: default_vector_width(),
        vulkan: VulkanTarget::baseline(),
        precision: Default::default(),
    };
    let optimized = optimize_model(&mut model, &opts)?;
    let compiled = write_artifact(&model, "demo", &opts, progress)?;
    let kernels_per_layer = optimized
        .iter()
        .map(|r| (r.entry.clone(), r.kernels_per_layer))
        .collect();
    let compile_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut engine = Engine::load(artifact)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let mut rng = SplitMix64::new(1);
    let prompt: Vec<u32> = (0..16)
        .map(|_| (rng.next_u64() % config.vocab_size as u64) as u32)
        .collect();
    let opts = GenerateOptions {
        max_tokens,
        stop_at_eos: false,
        ..GenerateOptions::default()
    };
    let gen = engine.generate(&prompt, &opts, &mut |_| {})?;
    Ok(DemoReport {
        architecture: compiled.architecture,
        layers: config.num_hidden_layers,
        hidden_size: config.hidden_size,
        heads: config.num_attention_heads,
        kv_heads: config.num_key_value_heads,
        vocab_size: config.vocab_size,
        parameters: compiled.parameters,
        artifact: compiled.output,
        artifact_bytes: compiled.artifact_bytes,
        kernels_per_layer,
        compile_seconds,
        load_seconds,
        prompt_ids: prompt,
        prefill_tokens_per_s: gen.prefill_tokens_per_s(),
        decode_tokens_per_s: gen.decode_tokens_per_s(),
        generated_ids: gen.generated,
    })
}
