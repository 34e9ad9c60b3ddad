//! `tessera inspect ARTIFACT`: what an artifact holds, without running it.

use super::print_json;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tessera_runtime::Artifact;

#[derive(clap::Args)]
pub struct Args {
    /// The artifact to describe.
    artifact: PathBuf,
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Also print every entry point's graph.
    #[arg(long)]
    graphs: bool,
}

#[derive(Serialize)]
struct EntrySummary {
    name: String,
    nodes: usize,
    ops: BTreeMap<&'static str, usize>,
}

#[derive(Serialize)]
struct Summary {
    file: String,
    file_bytes: usize,
    producer: String,
    target: String,
    source: String,
    architecture: String,
    layers: usize,
    hidden_size: usize,
    vocab_size: usize,
    max_context: usize,
    parameters: u64,
    weights: usize,
    weight_bytes_by_dtype: BTreeMap<String, u64>,
    state: Vec<String>,
    entries: Vec<EntrySummary>,
    tokenizer: bool,
}

pub fn run(args: Args) -> Result<()> {
    let artifact = Artifact::open(&args.artifact)?;
    let m = artifact.manifest();
    let info = &m.module.info;
    let mut weight_bytes_by_dtype = BTreeMap::new();
    for (w, slot) in m.module.weights.iter().zip(&m.weight_slots) {
        *weight_bytes_by_dtype
            .entry(w.dtype.to_string())
            .or_insert(0) += slot.len;
    }
    let entries = m
        .module
        .entries
        .iter()
        .map(|e| {
            let mut ops = BTreeMap::new();
            for n in &e.graph.nodes {
                *ops.entry(n.op.name()).or_insert(0) += 1;
            }
            EntrySummary {
                name: e.name.clone(),
                nodes: e.graph.nodes.len(),
                ops,
            }
        })
        .collect();
    let summary = Summary {
        file: args.artifact.display().to_string(),
        file_bytes: artifact.file_bytes(),
        producer: m.producer.clone(),
        target: m.target.clone(),
        source: m.source.clone(),
        architecture: info.architecture.clone(),
        layers: info.num_layers,
        hidden_size: info.hidden_size,
        vocab_size: info.vocab_size,
        max_context: info.max_context,
        parameters: m
            .module
            .weights
            .iter()
            .map(|w| w.shape.iter().product::<usize>() as u64)
            .sum(),
        weights: m.module.weights.len(),
        weight_bytes_by_dtype,
        state: m
            .module
            .state
            .iter()
            .map(|s| {
                format!(
                    "{}: {}{}",
                    s.name,
                    s.dtype,
                    tessera_ir::shape_string(&s.shape)
                )
            })
            .collect(),
        entries,
        tokenizer: artifact.tokenizer_json().is_some(),
    };
    if args.json {
        return print_json(&summary);
    }
    println!(
        "{} ({:.2} MB, {})",
        summary.file,
        summary.file_bytes as f64 / 1e6,
        summary.producer
    );
    println!(
        "  model:     {} from {}",
        summary.architecture, summary.source
    );
    println!(
        "  shape:     {} layers, hidden {}, vocab {}, context {}",
        summary.layers, summary.hidden_size, summary.vocab_size, summary.max_context
    );
    println!("  target:    {}", summary.target);
    println!(
        "  weights:   {} tensors, {:.2}M parameters",
        summary.weights,
        summary.parameters as f64 / 1e6
    );
    for (dtype, bytes) in &summary.weight_bytes_by_dtype {
        println!("             {dtype}: {:.2} MB", *bytes as f64 / 1e6);
    }
    println!(
        "  state:     {} tensors (KV cache), e.g. {}",
        summary.state.len(),
        summary.state.first().map_or("-", String::as_str)
    );
    println!(
        "  tokenizer: {}",
        if summary.tokenizer {
            "embedded"
        } else {
            "none"
        }
    );
    for e in &summary.entries {
        let ops: Vec<String> = e.ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        println!("  entry {}: {} nodes: {}", e.name, e.nodes, ops.join(" "));
    }
    if args.graphs {
        for e in &m.module.entries {
            println!("\nentry {}:\n{}", e.name, e.graph);
        }
    }
    Ok(())
}
