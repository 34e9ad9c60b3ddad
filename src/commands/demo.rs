//! `tessera demo`: the whole pipeline on a built-in model, no download.

use super::{print_json, ByteProgress};
use std::path::PathBuf;
use tessera::demo::run_demo;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the demo artifact (default: the system temp folder).
    #[arg(short, long, value_name = "OUT.tsr")]
    output: Option<PathBuf>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let output = args
        .output
        .unwrap_or_else(|| std::env::temp_dir().join("tessera-demo.tsr"));
    let bar = ByteProgress::new("building and optimizing the demo model");
    let r = run_demo(&output, args.max_tokens, &mut |done, total| {
        bar.update(done, total)
    })?;
    bar.finish();
    if args.json {
        return print_json(&r);
    }
    println!(
        "built a {} model with seeded random weights: {} layers, hidden {}, {}/{} heads (GQA), vocab {}, {:.1}M parameters",
        r.architecture, r.layers, r.hidden_size, r.heads, r.kv_heads, r.vocab_size, r.parameters as f64 / 1e6
    );
    println!(
        "compiled for the reference target → {} ({:.1} MB) in {:.2}s; loaded in {:.3}s",
        r.artifact,
        r.artifact_bytes as f64 / 1e6,
        r.compile_seconds,
        r.load_seconds
    );
    let per_layer: Vec<String> = r
        .kernels_per_layer
        .iter()
        .map(|(e, n)| format!("{e} {n}"))
        .collect();
    println!(
        "optimized: kernels per transformer block: {}",
        per_layer.join(", ")
    );
    println!("prompt ids:    {:?}", r.prompt_ids);
    println!("generated ids: {:?}", r.generated_ids);
    println!(
        "prefill {:.1} tok/s, decode {:.1} tok/s (reference interpreter: the oracle, not the fast path)",
        r.prefill_tokens_per_s, r.decode_tokens_per_s
    );
    Ok(())
}
