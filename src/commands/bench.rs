//! `tessera bench ARTIFACT`: prefill and decode throughput on a seeded prompt, and how close decode
//! comes to the memory-bandwidth roofline — decode of one token must read (almost) every weight
//! once, so host read bandwidth / weight bytes per token bounds decode tokens per second.

mod bandwidth;
mod profile;

use super::{print_json, LoadArgs};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tessera_ir::kernel::{BodyArg, BufferSource, KernelGraph};
use tessera_ir::{Graph, Module, Op};
use tessera_runtime::{Engine, GenerateOptions, SplitMix64};

#[derive(clap::Args)]
pub struct Args {
    /// The artifact written by `tessera compile`.
    artifact: PathBuf,
    /// Prompt length in tokens (seeded ids: BOS first, then ids within the vocabulary that are
    /// never end-of-sequence).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    prompt_len: u64,
    /// Decode steps timed per run (greedy; end-of-sequence tokens are ignored).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    gen: u64,
    /// Timed runs; medians are reported (an untimed warm-up run comes first).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    #[command(flatten)]
    load: LoadArgs,
    /// After the timed runs, one more with every kernel launch timed: per entry point, where the
    /// time goes by template and fused body (ms, share, launches, operand GB/s).
    #[arg(long)]
    profile: bool,
    /// Print one JSON object on the last line of stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Seed of the prompt's token ids, fixed so every run and every machine times the same prompt.
const PROMPT_SEED: u64 = 0x7E55_E4A0;

/// Decode steps of the warm-up run: enough to JIT, fault in and cache-warm every entry point.
const WARMUP_DECODE_STEPS: usize = 2;

#[derive(Serialize)]
struct Report {
    model: String,
    target: String,
    /// What compiled the kernels (`--target cpu` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_backend: Option<&'static str>,
    /// The Vulkan adapter that ran it (`--target vulkan` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    threads: usize,
    prompt_len: usize,
    gen: usize,
    runs: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    weight_bytes_per_token: u64,
    bandwidth_gb_s: f64,
    roofline_tok_s: f64,
    decode_roofline_pct: f64,
    prefill_tok_s_runs: Vec<f64>,
    decode_tok_s_runs: Vec<f64>,
    prefill_seconds_runs: Vec<f64>,
    decode_seconds_runs: Vec<f64>,
    /// With `--profile`: kernel times of one more run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profile: Vec<profile::ProfileRow>,
}

pub fn run(args: Args) -> Result<()> {
    let path = &args.artifact;
    let (prompt_len, gen, runs) = (
        args.prompt_len as usize,
        args.gen as usize,
        args.runs as usize,
    );
    let options = args.load.options()?;
    let mut engine =
        Engine::load_with(path, &options).with_context(|| format!("loading {}", path.display()))?;
    let manifest = engine.manifest();
    let weight_bytes = decode_weight_bytes(&manifest.module).with_context(|| {
        format!(
            "{}: counting the weight bytes of a decode step",
            path.display()
        )
    })?;
    let (model, target) = (manifest.source.clone(), manifest.target.clone());
    if args.profile && target == "reference" {
        bail!(
            "--profile: {} is compiled for target `{target}`: only --target cpu and vulkan \
             artifacts are profiled",
            path.display()
        );
    }
    let info = engine.info().clone();
    // The first generated token comes from the prefill logits, then each decode step feeds one
    // back: the engine needs room for prompt + gen + 1 tokens.
    if prompt_len + gen + 1 > info.max_context {
        bail!(
            "{}: --prompt-len {prompt_len} + --gen {gen} (+ the token sampled from the prefill) \
             exceeds the model's context of {} tokens",
            path.display(),
            info.max_context
        );
    }
    let prompt = seeded_prompt(
        prompt_len,
        info.vocab_size,
        info.bos_token_id,
        &info.eos_token_ids,
    );
    // The CPU executor splits launches across `threads` (its default: every core); the reference
    // interpreter runs on the calling thread. The bandwidth is measured with the same count.
    let threads = match target.as_str() {
        "cpu" => options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        _ => 1,
    };

    let bar = ProgressBar::new(runs as u64 + 2 + u64::from(args.profile));
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} ({elapsed})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let generate = |engine: &mut Engine, decode_steps: usize| {
        let opts = GenerateOptions {
            max_tokens: decode_steps + 1,
            stop_at_eos: false,
            ..GenerateOptions::default()
        };
        engine
            .generate(&prompt, &opts, &mut |_| {})
            .with_context(|| format!("generating with {}", path.display()))
    };
    bar.set_message("warm-up");
    generate(&mut engine, WARMUP_DECODE_STEPS)?;
    bar.inc(1);
    let mut timed = Vec::with_capacity(runs);
    for i in 0..runs {
        bar.set_message(format!("run {}/{runs}", i + 1));
        timed.push(generate(&mut engine, gen)?);
        bar.inc(1);
    }
    let mut kernel_profile = Vec::new();
    if args.profile {
        bar.set_message("profiled run");
        engine
            .set_profiling(true)
            .with_context(|| format!("--profile: {}", path.display()))?;
        generate(&mut engine, gen)?;
        kernel_profile = profile::rows(&engine.take_profile());
        engine.set_profiling(false)?;
    }
    let (device, bandwidth_gb_s) = match target.as_str() {
        "vulkan" => {
            bar.set_message("device copy bandwidth");
            let (name, gb_s) = device_bandwidth_gb_s(options.device)?;
            (Some(name), gb_s)
        }
        _ => {
            bar.set_message("host read bandwidth");
            let gb_s = bandwidth::measure_gb_s(threads, bandwidth::BUFFER_BYTES, bandwidth::PASSES);
            (None, gb_s)
        }
    };
    bar.finish_and_clear();

    let prefill_tok_s_runs: Vec<f64> = timed.iter().map(|g| g.prefill_tokens_per_s()).collect();
    let decode_tok_s_runs: Vec<f64> = timed.iter().map(|g| g.decode_tokens_per_s()).collect();
    let prefill_tok_s = bandwidth::median(&mut prefill_tok_s_runs.clone());
    let decode_tok_s = bandwidth::median(&mut decode_tok_s_runs.clone());
    let roofline_tok_s = bandwidth_gb_s * 1e9 / weight_bytes as f64;
    let cpu_backend = (target == "cpu").then(|| options.cpu_backend.name());
    let report = Report {
        model,
        target,
        cpu_backend,
        device,
        threads,
        prompt_len,
        gen,
        runs,
        prefill_tok_s,
        decode_tok_s,
        weight_bytes_per_token: weight_bytes,
        bandwidth_gb_s,
        roofline_tok_s,
        decode_roofline_pct: 100.0 * decode_tok_s / roofline_tok_s,
        prefill_tok_s_runs,
        decode_tok_s_runs,
        prefill_seconds_runs: timed.iter().map(|g| g.prefill_seconds).collect(),
        decode_seconds_runs: timed.iter().map(|g| g.decode_seconds).collect(),
        profile: kernel_profile,
    };
    if args.json {
        return print_json(&report);
    }
    print_table(path, &report);
    profile::print(&report.profile);
    Ok(())
}

/// The name and copy bandwidth of Vulkan adapter `device` (a buffer as large as the host
/// measurement's).
fn device_bandwidth_gb_s(device: usize) -> Result<(String, f64)> {
    #[cfg(feature = "vulkan")]
    {
        let device = tessera_runtime::vulkan::VulkanDevice::open(device)?;
        let gb_s = device.copy_bandwidth_gb_s(bandwidth::BUFFER_BYTES as u64, bandwidth::PASSES)?;
        Ok((device.summary().name.clone(), gb_s))
    }
    #[cfg(not(feature = "vulkan"))]
    bail!("device {device}: built without the `vulkan` feature")
}

fn print_table(path: &Path, r: &Report) {
    let runs = |v: &[f64]| {
        let parts: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        parts.join(" ")
    };
    let runs_on = match &r.device {
        Some(name) => format!("on {name}"),
        None => format!(
            "{} thread{}",
            r.threads,
            if r.threads == 1 { "" } else { "s" }
        ),
    };
    println!(
        "{} ({}, target {}{}, {runs_on}): prompt {} tokens, {} decode steps, median of {} run{}",
        path.display(),
        r.model,
        r.target,
        r.cpu_backend
            .map(|b| format!(" ({b} backend)"))
            .unwrap_or_default(),
        r.prompt_len,
        r.gen,
        r.runs,
        if r.runs == 1 { "" } else { "s" },
    );
    println!("  {:<22} {:>12}   runs", "", "median");
    println!(
        "  {:<22} {:>12.1}   {}",
        "prefill tok/s",
        r.prefill_tok_s,
        runs(&r.prefill_tok_s_runs)
    );
    println!(
        "  {:<22} {:>12.1}   {}",
        "decode tok/s",
        r.decode_tok_s,
        runs(&r.decode_tok_s_runs)
    );
    println!(
        "  {:<22} {:>12.3}   ({} bytes)",
        "weights read/token MB",
        r.weight_bytes_per_token as f64 / 1e6,
        r.weight_bytes_per_token
    );
    let bandwidth = match r.target.as_str() {
        "vulkan" => "device copy GB/s",
        _ => "host read GB/s",
    };
    println!("  {:<22} {:>12.1}", bandwidth, r.bandwidth_gb_s);
    println!(
        "  {:<22} {:>12.1}",
        "roofline decode tok/s", r.roofline_tok_s
    );
    println!(
        "  {:<22} {:>11.1}%",
        "decode / roofline", r.decode_roofline_pct
    );
}

/// `len` token ids from a fixed seed: BOS first when the model has one, then uniform ids below
/// `vocab` that are not end-of-sequence (so nothing in the prompt could end a generation).
fn seeded_prompt(len: usize, vocab: usize, bos: Option<u32>, eos: &[u32]) -> Vec<u32> {
    let mut rng = SplitMix64::new(PROMPT_SEED);
    let mut ids: Vec<u32> = bos.into_iter().take(len).collect();
    while ids.len() < len {
        let id = (rng.next_u64() % vocab as u64) as u32;
        if !eos.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// How a decode step reads a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// Every byte (a matmul, a norm's scale, RoPE frequencies).
    Full,
    /// One row per token: the table of a `Gather` (embeddings, learned positions).
    Row,
}

/// Bytes of weights one decode token (batch 1) reads: every weight a launched kernel of the
/// `decode` KernelGraph reads counts fully, once, except a `Gather`'s table, of which one row is
/// read. A weight read both ways (tied embeddings: gathered, then the whole table as lm_head)
/// counts fully. Without a KernelGraph (`--no-opt`) the same rule applies to the Graph's ops.
fn decode_weight_bytes(module: &Module) -> Result<u64> {
    let entry = module
        .entry("decode")
        .context("the artifact has no `decode` entry point")?;
    let reads = match &entry.kernels {
        Some(kg) => kernel_weight_reads(kg),
        None => graph_weight_reads(&entry.graph),
    };
    let mut bytes: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, read) in reads {
        let spec = module
            .weight(name)
            .with_context(|| format!("weight `{name}` is read but not declared"))?;
        let shape = match read {
            Read::Full => &spec.shape[..],
            Read::Row => spec.shape.get(1..).unwrap_or_default(),
        };
        let n = spec
            .dtype
            .storage_bytes(shape)
            .map_err(|e| anyhow::anyhow!("weight `{name}`: {e}"))?;
        let counted = bytes.entry(name).or_default();
        *counted = (*counted).max(n);
    }
    Ok(bytes.values().map(|&b| b as u64).sum())
}

/// Every weight input of every launched kernel, with how it is read.
fn kernel_weight_reads(kg: &KernelGraph) -> Vec<(&str, Read)> {
    let mut reads = Vec::new();
    for kernel in kg.kernels.iter().filter(|k| k.is_launched()) {
        let gather_tables: BTreeSet<usize> = kernel
            .body
            .iter()
            .filter(|b| b.op == Op::Gather)
            .filter_map(|b| match b.args.first() {
                Some(BodyArg::Input(i)) => Some(*i),
                _ => None,
            })
            .collect();
        for (i, &id) in kernel.inputs.iter().enumerate() {
            if let BufferSource::Weight(name) = &kg.buffer(id).source {
                let read = if gather_tables.contains(&i) {
                    Read::Row
                } else {
                    Read::Full
                };
                reads.push((name.as_str(), read));
            }
        }
    }
    reads
}

/// Every use of a weight node by an op of the Graph, with how it is read.
fn graph_weight_reads(graph: &Graph) -> Vec<(&str, Read)> {
    let mut reads = Vec::new();
    for node in &graph.nodes {
        for (pos, input) in node.inputs.iter().enumerate() {
            if let Op::Weight { name } = &graph.nodes[input.0 as usize].op {
                let read = if node.op == Op::Gather && pos == 0 {
                    Read::Row
                } else {
                    Read::Full
                };
                reads.push((name.as_str(), read));
            }
        }
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_ir::kernel::{BodyOp, Buffer, BufferId, Kernel, KernelKind};
    use tessera_ir::{DType, Dim, EntryPoint, ModelInfo, TensorType, WeightSpec};

    const VOCAB: usize = 100;
    const HIDDEN: usize = 64;

    fn weight(name: &str, dtype: DType, shape: &[usize]) -> WeightSpec {
        WeightSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    /// A module with embeddings (f16, gathered), a Q8_0 projection, an f32 norm and an unused weight.
    fn module(kernels: Option<KernelGraph>, graph: Graph) -> Module {
        Module {
            info: ModelInfo {
                architecture: "llama".into(),
                vocab_size: VOCAB,
                max_context: 16,
                bos_token_id: None,
                eos_token_ids: vec![],
                num_layers: 1,
                hidden_size: HIDDEN,
            },
            weights: vec![
                weight("embed", DType::F16, &[VOCAB, HIDDEN]),
                weight("proj", DType::Q8_0, &[VOCAB, HIDDEN]),
                weight("norm", DType::F32, &[HIDDEN]),
                weight("unused", DType::F32, &[1000]),
            ],
            state: vec![],
            entries: vec![EntryPoint {
                name: "decode".into(),
                graph,
                kernels,
                cpu_code: vec![],
                gpu_code: vec![],
            }],
        }
    }

    fn buffer(source: BufferSource, shape: &[usize]) -> Buffer {
        Buffer {
            ty: TensorType::new(DType::F32, shape.iter().map(|&d| Dim::from(d)).collect()),
            source,
        }
    }

    fn kernel(kind: KernelKind, op: Op, inputs: &[u32], output: u32) -> Kernel {
        Kernel {
            scope: String::new(),
            kind,
            body: vec![BodyOp {
                op,
                args: (0..inputs.len()).map(BodyArg::Input).collect(),
            }],
            inputs: inputs.iter().map(|&i| BufferId(i)).collect(),
            output: BufferId(output),
            estimate_seconds: 0.0,
        }
    }

    /// embed gathered (b0, ids b1 → b2), normed (b3), then `lm_head` (b4) as matmul → b6.
    fn kernel_graph(lm_head: &str) -> KernelGraph {
        let w = |n: &str| BufferSource::Weight(n.into());
        KernelGraph {
            buffers: vec![
                buffer(w("embed"), &[VOCAB, HIDDEN]),
                buffer(BufferSource::Input("tokens".into()), &[1, 1]),
                buffer(BufferSource::Computed, &[1, 1, HIDDEN]),
                buffer(w("norm"), &[HIDDEN]),
                buffer(w(lm_head), &[VOCAB, HIDDEN]),
                buffer(BufferSource::Computed, &[1, 1, HIDDEN]),
                buffer(BufferSource::Computed, &[1, 1, VOCAB]),
            ],
            kernels: vec![
                kernel(KernelKind::Gather, Op::Gather, &[0, 1], 2),
                kernel(KernelKind::RowReduce, Op::RmsNorm { eps: 1e-5 }, &[2, 3], 5),
                kernel(
                    KernelKind::Gemv {
                        tile_n: 8,
                        split_k: 1,
                    },
                    Op::MatMul { transpose_b: true },
                    &[5, 4],
                    6,
                ),
            ],
            ..KernelGraph::default()
        }
    }

    const EMBED_ROW: u64 = (HIDDEN * 2) as u64;
    const EMBED_ALL: u64 = (VOCAB * HIDDEN * 2) as u64;
    const PROJ: u64 = (VOCAB * HIDDEN / 32 * 34) as u64;
    const NORM: u64 = (HIDDEN * 4) as u64;

    #[test]
    fn kernels_read_gather_tables_by_row_and_everything_else_fully() {
        let m = module(Some(kernel_graph("proj")), Graph::default());
        assert_eq!(decode_weight_bytes(&m).unwrap(), EMBED_ROW + NORM + PROJ);
    }

    #[test]
    fn a_tied_table_counts_fully_once() {
        let m = module(Some(kernel_graph("embed")), Graph::default());
        assert_eq!(decode_weight_bytes(&m).unwrap(), EMBED_ALL + NORM);
    }

    #[test]
    fn a_free_reshape_reads_nothing() {
        let mut kg = kernel_graph("proj");
        kg.buffers
            .push(buffer(BufferSource::Weight("unused".into()), &[1000]));
        kg.buffers.push(buffer(BufferSource::Computed, &[10, 100]));
        let reshape = Op::Reshape {
            shape: vec![Dim::from(10), Dim::from(100)],
        };
        kg.kernels
            .push(kernel(KernelKind::Layout, reshape, &[7], 8));
        let m = module(Some(kg), Graph::default());
        assert_eq!(decode_weight_bytes(&m).unwrap(), EMBED_ROW + NORM + PROJ);
    }

    #[test]
    fn graphs_follow_the_same_rule() {
        let mut g = Graph::default();
        let embed = g.weight("embed", DType::F16, &[VOCAB, HIDDEN]);
        let ids = g.input("tokens", DType::I32, vec![1.into(), 1.into()]);
        let x = g.add(Op::Gather, &[embed, ids]).unwrap();
        let lm_head = g.weight("embed", DType::F16, &[VOCAB, HIDDEN]);
        let logits = g
            .add(Op::MatMul { transpose_b: true }, &[x, lm_head])
            .unwrap();
        g.output("logits", logits);
        assert_eq!(decode_weight_bytes(&module(None, g)).unwrap(), EMBED_ALL);
    }

    #[test]
    fn missing_decode_or_undeclared_weights_are_errors() {
        let mut m = module(Some(kernel_graph("nope")), Graph::default());
        let err = decode_weight_bytes(&m).unwrap_err().to_string();
        assert!(err.contains("`nope`"), "{err}");
        m.entries[0].name = "prefill".into();
        let err = decode_weight_bytes(&m).unwrap_err().to_string();
        assert!(err.contains("decode"), "{err}");
    }

    #[test]
    fn the_prompt_is_seeded_in_vocab_and_free_of_eos() {
        let a = seeded_prompt(300, 5, Some(1), &[2]);
        assert_eq!(a, seeded_prompt(300, 5, Some(1), &[2]));
        assert_eq!(a.len(), 300);
        assert_eq!(a[0], 1);
        assert!(a.iter().all(|&t| t < 5 && t != 2));
        assert_eq!(seeded_prompt(1, 5, Some(1), &[]), [1]);
    }
}
