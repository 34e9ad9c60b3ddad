//! The `tessera` command line.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// tessera compiles large language models into fast kernels and runs them.
#[derive(Parser)]
#[command(name = "tessera", version, about, propagate_version = true)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model (Hugging Face folder) into a `.tsr` artifact.
    Compile(commands::compile::Args),
    /// Generate tokens from an artifact.
    Run(commands::run::Args),
    /// Show what an artifact holds: model, entry points, ops, weights, sizes.
    Inspect(commands::inspect::Args),
    /// Show what the optimizer sees and chooses for a model (a config.json alone is enough).
    Explain(commands::explain::Args),
    /// Build a small Llama-architecture model with seeded random weights, compile, load and run it.
    Demo(commands::demo::Args),
    /// Time prefill and decode of an artifact and compare decode with the memory-bandwidth roofline.
    Bench(commands::bench::Args),
    /// List what kernels can run on: the host CPU and each Vulkan adapter (by `--device` index).
    Devices(commands::devices::Args),
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG").unwrap_or_else(|_| level.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Compile(a) => commands::compile::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Explain(a) => commands::explain::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Devices(a) => commands::devices::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
