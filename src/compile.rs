//! `tessera compile`: import a model, prepare it for a target, write one `.tsr` artifact.

use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tessera_ir::artifact::{self, Manifest};
use tessera_models::ImportedModel;

/// What the artifact's code runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The reference interpreter executes the Graph: exact and slow; the oracle for every backend.
    Reference,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Reference => "reference",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub target: Target,
    pub output: PathBuf,
}

/// What `compile` did, for the one-line summary and `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct CompileReport {
    pub source: String,
    pub output: String,
    pub target: Target,
    pub architecture: String,
    pub layers: usize,
    pub parameters: u64,
    pub weight_bytes: u64,
    pub artifact_bytes: u64,
    pub has_tokenizer: bool,
    pub seconds: f64,
}

/// Imports the model at `model` (a Hugging Face folder) and writes the artifact.
pub fn compile_model(
    model: &Path,
    opts: &CompileOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CompileReport> {
    let start = Instant::now();
    if !model.is_dir() {
        anyhow::bail!(
            "{}: expected a Hugging Face model folder (config.json + *.safetensors)",
            model.display()
        );
    }
    let imported = tessera_models::import_hf(model)?;
    tracing::info!(architecture = %imported.module.info.architecture, weights = imported.weights.len(), "imported");
    let mut report = write_artifact(&imported, &model.display().to_string(), opts, progress)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes `model` as an artifact for `opts.target` to `opts.output`.
pub fn write_artifact(
    model: &ImportedModel,
    source: &str,
    opts: &CompileOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CompileReport> {
    let start = Instant::now();
    model.module.validate()?;
    let slots = artifact::layout_weights(
        model
            .weights
            .iter()
            .map(|w| (w.spec.name.as_str(), w.bytes().len() as u64)),
    );
    let weight_bytes: u64 = model.weights.iter().map(|w| w.bytes().len() as u64).sum();
    let manifest = Manifest {
        producer: format!("tessera {}", env!("CARGO_PKG_VERSION")),
        target: opts.target.name().to_string(),
        source: source.to_string(),
        config: serde_json::to_value(&model.config)?,
        module: model.module.clone(),
        weight_slots: slots,
    };
    let out = &opts.output;
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = BufWriter::new(file);
    let mut bytes = model.weights.iter().map(|w| w.bytes());
    let total = slots_end(&manifest);
    artifact::write(
        &mut writer,
        &manifest,
        model.tokenizer_json.as_deref(),
        &mut bytes,
        &mut |done| progress(done, total),
    )
    .with_context(|| format!("writing {}", out.display()))?;
    drop(writer);
    let parameters = model
        .module
        .weights
        .iter()
        .map(|w| w.shape.iter().product::<usize>() as u64)
        .sum();
    Ok(CompileReport {
        source: source.to_string(),
        output: out.display().to_string(),
        target: opts.target,
        architecture: model.module.info.architecture.clone(),
        layers: model.module.info.num_layers,
        parameters,
        weight_bytes,
        artifact_bytes: std::fs::metadata(out).map(|m| m.len()).unwrap_or(0),
        has_tokenizer: model.tokenizer_json.is_some(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn slots_end(manifest: &Manifest) -> u64 {
    manifest.weight_slots.last().map_or(0, |s| s.offset + s.len)
}
