//! `tessera run ARTIFACT --prompt TEXT`: generate and print tokens, timings, optionally logits.

use super::{print_json, LoadArgs};
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use tessera_runtime::{Engine, GenerateOptions, Generation, SamplingParams};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "prompt_ids"])))]
pub struct Args {
    /// The artifact written by `tessera compile`.
    artifact: PathBuf,
    /// Prompt text (needs a tokenizer in the artifact).
    #[arg(long)]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    prompt_ids: Option<Vec<u32>>,
    /// How many tokens to generate at most.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample only among the most likely tokens whose probabilities sum to P (1: all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler's random stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object on the last line of stdout instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the logits behind each generated token as float32 .npy of shape [steps, vocab].
    #[arg(long, value_name = "FILE.npy")]
    dump_logits: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Serialize)]
struct Report {
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    finish_reason: &'static str,
    prompt_tokens: usize,
    generated_tokens: usize,
    prefill_seconds: f64,
    decode_seconds: f64,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
}

pub fn run(args: Args) -> Result<()> {
    let options = args.load.options()?;
    let mut engine = Engine::load_with(&args.artifact, &options)?;
    let prompt = match (&args.prompt, &args.prompt_ids) {
        (Some(text), _) => engine.encode(text)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => unreachable!("clap requires --prompt or --prompt-ids"),
    };
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_at_eos: !args.ignore_eos,
        keep_logits: args.dump_logits.is_some(),
    };
    let gen = generate_streaming(&mut engine, &prompt, &opts, !args.json)?;
    if let Some(path) = &args.dump_logits {
        let vocab = engine.info().vocab_size;
        let flat: Vec<f32> = gen.logits.concat();
        tessera_ir::npy::write(path, &[gen.logits.len(), vocab], &flat)?;
    }
    let text = engine
        .tokenizer()
        .map(|t| t.decode(&gen.generated))
        .transpose()?;
    let report = Report {
        prompt_ids: prompt,
        generated_ids: gen.generated.clone(),
        text,
        finish_reason: match gen.finish {
            tessera_runtime::FinishReason::Length => "length",
            tessera_runtime::FinishReason::Eos => "eos",
        },
        prompt_tokens: gen.prompt_tokens,
        generated_tokens: gen.generated.len(),
        prefill_seconds: gen.prefill_seconds,
        decode_seconds: gen.decode_seconds,
        prefill_tokens_per_s: gen.prefill_tokens_per_s(),
        decode_tokens_per_s: gen.decode_tokens_per_s(),
    };
    if args.json {
        return print_json(&report);
    }
    eprintln!(
        "\n[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, finished by {}]",
        report.prompt_tokens,
        report.prefill_tokens_per_s,
        report.generated_tokens,
        report.decode_tokens_per_s,
        report.finish_reason
    );
    Ok(())
}

/// Generates, printing text (or ids without a tokenizer) as tokens arrive when `stream` is set.
fn generate_streaming(
    engine: &mut Engine,
    prompt: &[u32],
    opts: &GenerateOptions,
    stream: bool,
) -> Result<Generation> {
    tracing::info!(
        prompt_tokens = prompt.len(),
        max_tokens = opts.max_tokens,
        "generating"
    );
    let tokenizer = engine.tokenizer();
    let mut text_stream = tokenizer.as_ref().map(|t| t.stream());
    let mut stdout = std::io::stdout();
    let mut failure = None;
    let gen = engine.generate(prompt, opts, &mut |token| {
        if !stream || failure.is_some() {
            return;
        }
        let piece = match text_stream.as_mut() {
            Some(s) => s.step(token),
            None => Ok(Some(format!("{token} "))),
        };
        match piece {
            Ok(p) => {
                let _ = write!(stdout, "{}", p.unwrap_or_default());
                let _ = stdout.flush();
            }
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e).context("decoding generated tokens");
    }
    Ok(gen?)
}
