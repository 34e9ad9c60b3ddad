//! Artifacts whose entry points carry KernelGraphs: compiled with a derived weight, stored, loaded
//! and run by the runtime, they generate exactly what their Graphs do; `inspect` shows their
//! kernels. The KernelGraphs here are the trivial unfused ones (one kernel per Graph op), so the
//! test needs no optimizer.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use tessera::{materialize_derived_weights, write_artifact, CompileOptions, Target};
use tessera_ir::kernel::{
    BodyArg, BodyOp, Buffer, BufferId, BufferSource, DerivedWeight, Kernel, KernelGraph, KernelKind,
};
use tessera_ir::{Graph, Op};
use tessera_runtime::{Engine, GenerateOptions, Generation};

/// The fixture: GQA, tied embeddings, bf16 weights.
const FIXTURE: &str = "llama3";
/// The weight the kernels read through a derived copy.
const DERIVED_FROM: &str = "model.norm.weight";

fn kind_of(op: &Op) -> KernelKind {
    match op {
        Op::MatMul { .. } => KernelKind::Gemm {
            tile_m: 64,
            tile_n: 64,
            tile_k: 32,
            stages: 2,
        },
        Op::Attention { .. } => KernelKind::FlashAttention {
            block_q: 64,
            block_kv: 64,
        },
        Op::Reduce { .. } | Op::Softmax | Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
            KernelKind::RowReduce
        }
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Expand { .. }
        | Op::Slice { .. }
        | Op::Concat { .. } => KernelKind::Layout,
        Op::Gather => KernelKind::Gather,
        Op::KvAppend => KernelKind::KvAppend,
        _ => KernelKind::Elementwise,
    }
}

/// One kernel per Graph op (constants folded into their users' bodies): no fusion and no
/// choices, so it must compute exactly what the Graph does.
fn unfused(g: &Graph) -> KernelGraph {
    let mut kg = KernelGraph::default();
    let mut buffer_of: Vec<Option<BufferId>> = vec![None; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        let source = match &node.op {
            Op::Constant { .. } => continue,
            Op::Input { name } => BufferSource::Input(name.clone()),
            Op::Weight { name } => BufferSource::Weight(name.clone()),
            _ => BufferSource::Computed,
        };
        let id = BufferId(kg.buffers.len() as u32);
        buffer_of[i] = Some(id);
        kg.buffers.push(Buffer {
            ty: node.ty.clone(),
            source: source.clone(),
        });
        if source != BufferSource::Computed {
            continue;
        }
        let (mut body, mut inputs, mut args) = (vec![], vec![], vec![]);
        for x in &node.inputs {
            match buffer_of[x.0 as usize] {
                Some(b) => {
                    args.push(BodyArg::Input(inputs.len()));
                    inputs.push(b);
                }
                None => {
                    args.push(BodyArg::Op(body.len()));
                    body.push(BodyOp {
                        op: g.node(*x).op.clone(),
                        args: vec![],
                    });
                }
            }
        }
        body.push(BodyOp {
            op: node.op.clone(),
            args,
        });
        kg.kernels.push(Kernel {
            scope: node.scope.clone(),
            kind: kind_of(&node.op),
            body,
            inputs,
            output: id,
            estimate_seconds: 1e-6,
        });
    }
    kg.outputs = g
        .outputs
        .iter()
        .map(|(name, id)| {
            (
                name.clone(),
                buffer_of[id.0 as usize].expect("not a constant"),
            )
        })
        .collect();
    kg
}

/// Makes `kg` read `DERIVED_FROM` through a derived weight: the same values, reshaped to the
/// same shape.
fn read_derived(kg: &mut KernelGraph) -> String {
    let name = format!("{DERIVED_FROM}.copy");
    let mut shape = None;
    for b in &mut kg.buffers {
        if b.source == BufferSource::Weight(DERIVED_FROM.into()) {
            b.source = BufferSource::Weight(name.clone());
            shape = Some(b.ty.shape.clone());
        }
    }
    kg.derived_weights.push(DerivedWeight {
        name: name.clone(),
        sources: vec![DERIVED_FROM.into()],
        body: vec![BodyOp {
            op: Op::Reshape {
                shape: shape.expect("the graph reads the weight"),
            },
            args: vec![BodyArg::Input(0)],
        }],
    });
    name
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(FIXTURE)
}

fn generate(artifact: &Path, prompt: &[u32]) -> Generation {
    let mut engine = Engine::load(artifact).unwrap();
    let opts = GenerateOptions {
        max_tokens: 6,
        stop_at_eos: false,
        keep_logits: true,
        ..GenerateOptions::default()
    };
    engine.generate(prompt, &opts, &mut |_| {}).unwrap()
}

fn inspect(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("inspect")
        .args(args)
        .output()
        .expect("spawn tessera");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kernel_graphs_run_exactly_like_their_graphs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = tessera_models::import_hf(&fixture()).unwrap();
    let write = |model: &tessera_models::ImportedModel, name: &str| {
        let output = tmp.path().join(name);
        let opts = CompileOptions {
            target: Target::Reference,
            output: output.clone(),
            optimize: true,
            quant: None,
            vector_width: tessera::default_vector_width(),
            vulkan: tessera::VulkanTarget::baseline(),
            precision: Default::default(),
        };
        let report = write_artifact(model, FIXTURE, &opts, &mut |_, _| {}).unwrap();
        (output, report.optimized)
    };
    let (plain, optimized) = write(&model, "plain.tsr");
    assert!(!optimized);

    let mut derived = String::new();
    for e in &mut model.module.entries {
        let mut kg = unfused(&e.graph);
        derived = read_derived(&mut kg);
        e.kernels = Some(kg);
    }
    let declared = model.module.weights.len();
    materialize_derived_weights(&mut model).unwrap();
    assert_eq!(
        model.module.weights.len(),
        declared + 1,
        "one copy for both"
    );
    assert_eq!(model.module.weights[declared].name, derived);
    let (kernels, optimized) = write(&model, "kernels.tsr");
    assert!(optimized);

    let prompt = [5, 17, 2, 9, 11];
    let want = generate(&plain, &prompt);
    let got = generate(&kernels, &prompt);
    assert_eq!(got.generated, want.generated);
    assert_eq!(got.logits, want.logits, "bit-identical logits");

    let kernels = kernels.to_str().unwrap();
    let info: Value =
        serde_json::from_str(inspect(&[kernels, "--json"]).lines().last().unwrap()).expect("JSON");
    for entry in info["entries"].as_array().unwrap() {
        let k = &entry["kernels"];
        let by_kind = k["by_kind"].as_object().unwrap();
        let sum: u64 = by_kind.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(k["launched"].as_u64(), Some(sum), "{entry}");
        for kind in [
            "gemm",
            "flash_attention",
            "kv_append",
            "row_reduce",
            "gather",
        ] {
            assert!(by_kind.contains_key(kind), "{kind} in {entry}");
        }
    }
    let text = inspect(&[kernels]);
    assert!(text.contains("entry decode: ") && text.contains(" kernels launched: "));
    let dump = inspect(&[kernels, "--graphs"]);
    assert!(dump.contains("entry prefill (kernels):"), "{dump}");
    // Materialized at compile time, a derived weight is an ordinary stored weight.
    assert!(dump.contains(&format!("= weight \"{derived}\"")), "{dump}");
    assert!(
        !dump.contains("derived \""),
        "no recipe is left to run: {dump}"
    );
    assert!(
        dump.contains(": gemm{tile 64x64x32, stages 2} (matmul) -> f32[batch, seq, "),
        "{dump}"
    );
}
