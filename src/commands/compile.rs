//! `tessera compile MODEL -o OUT.tsr`.

use super::{print_json, ByteProgress};
use std::path::PathBuf;
use tessera::{compile_model, CompileOptions, Target};

#[derive(clap::Args)]
pub struct Args {
    /// The model: a Hugging Face folder with config.json and *.safetensors (tokenizer.json optional).
    model: PathBuf,
    /// Where to write the artifact.
    #[arg(short, long, value_name = "OUT.tsr")]
    output: PathBuf,
    /// What the artifact's code runs on.
    #[arg(long, value_enum, default_value_t = Target::Reference)]
    target: Target,
    /// Store only the imported Graphs (no optimized kernels); the runtime interprets them as is.
    #[arg(long)]
    no_opt: bool,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = CompileOptions {
        target: args.target,
        output: args.output,
        optimize: !args.no_opt,
    };
    let bar = ByteProgress::new("writing weights");
    let report = compile_model(&args.model, &opts, &mut |done, total| {
        bar.update(done, total)
    })?;
    bar.finish();
    if args.json {
        return print_json(&report);
    }
    println!(
        "compiled {} ({}, {} layers, {:.1}M parameters) for {}{} → {} ({:.1} MB) in {:.2}s",
        report.source,
        report.architecture,
        report.layers,
        report.parameters as f64 / 1e6,
        report.target.name(),
        if report.optimized {
            ""
        } else {
            " (unoptimized)"
        },
        report.output,
        report.artifact_bytes as f64 / 1e6,
        report.seconds
    );
    Ok(())
}
