//! `tessera inspect ARTIFACT`: what an artifact holds, without running it.

use super::print_json;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tessera_ir::kernel::KernelGraph;
use tessera_ir::EntryPoint;
use tessera_runtime::Artifact;

#[derive(clap::Args)]
pub struct Args {
    /// The artifact to describe.
    artifact: PathBuf,
    /// Print one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Also print every entry point's program: its kernels when optimized, else its graph.
    #[arg(long)]
    graphs: bool,
}

#[derive(Serialize)]
struct EntrySummary {
    name: String,
    /// The Graph, always stored.
    nodes: usize,
    ops: BTreeMap<&'static str, usize>,
    /// The optimized program; `null` when the entry point runs its Graph (`--no-opt`).
    kernels: Option<KernelSummary>,
}

/// What a KernelGraph launches: a lone reshape is free and not counted.
#[derive(Serialize)]
struct KernelSummary {
    launched: usize,
    /// Launched kernels by template (`gemm`, `row_reduce`, …).
    by_kind: BTreeMap<&'static str, usize>,
}

impl EntrySummary {
    fn new(e: &EntryPoint) -> EntrySummary {
        let mut ops = BTreeMap::new();
        for n in &e.graph.nodes {
            *ops.entry(n.op.name()).or_insert(0) += 1;
        }
        EntrySummary {
            name: e.name.clone(),
            nodes: e.graph.nodes.len(),
            ops,
            kernels: e.kernels.as_ref().map(KernelSummary::new),
        }
    }
}

impl KernelSummary {
    fn new(kg: &KernelGraph) -> KernelSummary {
        let mut by_kind = BTreeMap::new();
        for k in kg.kernels.iter().filter(|k| k.is_launched()) {
            *by_kind.entry(k.kind.name()).or_insert(0) += 1;
        }
        KernelSummary {
            launched: by_kind.values().sum(),
            by_kind,
        }
    }
}

/// `name×count` pairs joined by spaces.
fn histogram(counts: &BTreeMap<&str, usize>) -> String {
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    parts.join(" ")
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
    let entries = m.module.entries.iter().map(EntrySummary::new).collect();
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
        match &e.kernels {
            Some(k) => println!(
                "  entry {}: {} kernels launched: {}",
                e.name,
                k.launched,
                histogram(&k.by_kind)
            ),
            None => println!(
                "  entry {}: {} nodes (unoptimized): {}",
                e.name,
                e.nodes,
                histogram(&e.ops)
            ),
        }
    }
    if args.graphs {
        for e in &m.module.entries {
            match &e.kernels {
                Some(kg) => println!("\nentry {} (kernels):\n{kg}", e.name),
                None => println!("\nentry {} (graph):\n{}", e.name, e.graph),
            }
        }
    }
    Ok(())
}
