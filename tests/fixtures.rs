//! Every transformers fixture, compiled and run through tessera, must reproduce transformers'
//! greedy tokens exactly and its logits to 1e-3 (prefill row, then each decode step); the f32
//! fixtures also through `--target cpu`, and the others must be refused for it by name.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tessera::{compile_model, CompileOptions, Target};
use tessera_ir::npy;
use tessera_runtime::{Engine, GenerateOptions, SamplingParams};

const LOGIT_TOLERANCE: f32 = 1e-3;

#[derive(Deserialize)]
struct Expected {
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Checks the fixture through the optimized KernelGraphs and through the plain Graphs (`--no-opt`).
fn check_fixture(name: &str) {
    for optimize in [true, false] {
        check_path(name, Target::Reference, optimize);
    }
}

/// Checks an f32 fixture through the reference paths and through JIT-compiled CPU code.
fn check_fixture_and_cpu(name: &str) {
    check_fixture(name);
    check_path(name, Target::Cpu, true);
}

fn check_path(name: &str, target: Target, optimize: bool) {
    let dir = fixture(name);
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let want_logits = npy::read::<f32>(&dir.join("logits.npy")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join(format!("{name}.tsr"));
    compile_model(
        &dir,
        &CompileOptions {
            target,
            output: output.clone(),
            optimize,
        },
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("compiling fixture {name}: {e:#}"));
    let name = &format!(
        "{name} ({}, {})",
        target.name(),
        if optimize { "optimized" } else { "--no-opt" }
    );
    let mut engine = Engine::load(&output).unwrap();
    let opts = GenerateOptions {
        max_tokens: expected.generated_ids.len(),
        sampling: SamplingParams::default(),
        stop_at_eos: false,
        keep_logits: true,
    };
    let gen = engine
        .generate(&expected.prompt_ids, &opts, &mut |_| {})
        .unwrap();

    let vocab = engine.info().vocab_size;
    assert_eq!(
        want_logits.shape,
        vec![expected.generated_ids.len(), vocab],
        "{name}: logits.npy shape"
    );
    let mut worst = (0.0f32, 0, 0);
    for (step, row) in gen.logits.iter().enumerate() {
        for (i, (got, want)) in row
            .iter()
            .zip(&want_logits.data[step * vocab..(step + 1) * vocab])
            .enumerate()
        {
            let d = (got - want).abs();
            if d > worst.0 || d.is_nan() {
                worst = (d, step, i);
            }
        }
    }
    eprintln!("{name}: max |Δlogit| = {}", worst.0);
    assert!(
        worst.0 <= LOGIT_TOLERANCE,
        "{name}: max |Δlogit| = {} at step {} token {} (tolerance {LOGIT_TOLERANCE})",
        worst.0,
        worst.1,
        worst.2
    );
    assert_eq!(
        gen.generated, expected.generated_ids,
        "{name}: greedy ids differ from transformers"
    );
}

#[test]
fn llama_sharded_f32() {
    check_fixture_and_cpu("llama");
}

#[test]
fn llama3_rope_scaling_gqa_tied_bf16() {
    check_fixture("llama3");
}

#[test]
fn llama_linear_rope_old_schema_head_dim_f16() {
    check_fixture("llama_linear");
}

#[test]
fn mistral_sliding_window() {
    check_fixture_and_cpu("mistral");
}

#[test]
fn qwen2_qkv_bias() {
    check_fixture_and_cpu("qwen2");
}

#[test]
fn gpt2_conv1d_learned_positions() {
    check_fixture("gpt2");
}

/// Compiling `name` for `--target cpu` fails; returns the error.
fn cpu_compile_error(name: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let opts = CompileOptions {
        target: Target::Cpu,
        output: tmp.path().join(format!("{name}.tsr")),
        optimize: true,
    };
    match compile_model(&fixture(name), &opts, &mut |_, _| {}) {
        Ok(_) => panic!("{name} compiled for --target cpu"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn cpu_target_refuses_what_it_cannot_run_by_name() {
    for (name, unsupported) in [("llama3", "bf16"), ("llama_linear", "f16")] {
        let err = cpu_compile_error(name);
        assert!(
            err.contains("entry point `prefill`: kernel `")
                && err.contains(&format!("is {unsupported}; {unsupported} weights")),
            "{name}: {err}"
        );
        assert!(err.contains("--target reference"), "{name}: {err}");
    }
    let err = cpu_compile_error("gpt2");
    assert!(
        err.contains("kernel `transformer.h.0`") && err.contains("without transpose_b"),
        "gpt2: {err}"
    );
    let no_opt = CompileOptions {
        target: Target::Cpu,
        output: std::env::temp_dir().join("unused.tsr"),
        optimize: false,
    };
    let err = compile_model(&fixture("qwen2"), &no_opt, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("--no-opt"), "{err}");
}
