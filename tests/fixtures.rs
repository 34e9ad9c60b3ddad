//! Every transformers fixture, compiled and run through tessera, must reproduce transformers'
//! greedy tokens exactly and its logits to 1e-3 (prefill row, then each decode step); the Llama
//! family and GPT-2 also through `--target cpu` (f16/bf16 weights read as they are and widened in
//! registers, Conv1D weights stored transposed) and `--target vulkan` on the first adapter
//! (lavapipe in CI; 2e-3), and what the CPU path cannot run must be refused by name.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tessera::{compile_model, CompileOptions, Quant, Target};
use tessera_codegen_cpu::Backend;
use tessera_ir::kernel::KernelKind;
use tessera_ir::npy;
use tessera_passes::cost::{Roofline, TargetSpec};
use tessera_passes::lower::VectorWidth;
use tessera_passes::optimize::optimize_module;
use tessera_runtime::{Engine, GenerateOptions, LoadOptions, SamplingParams};

const LOGIT_TOLERANCE: f32 = 1e-3;
/// On a GPU (lavapipe in CI): reductions run in another order across a workgroup's threads.
const GPU_LOGIT_TOLERANCE: f32 = 2e-3;
/// With `--precision f16`: the prefill GEMMs' f16 rounding of the lhs and of each k chunk's sums
/// (measured 0.094 on the llama fixture).
const F16_LOGIT_TOLERANCE: f32 = 0.2;

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

/// Checks a fixture through the reference paths, JIT-compiled CPU code and, when this build has
/// Vulkan and the machine an adapter, the first Vulkan device (required under
/// `TESSERA_REQUIRE_VULKAN=1`).
fn check_every_target(name: &str) {
    check_fixture(name);
    check_path(name, Target::Cpu, true);
    if vulkan_adapter() {
        check_path(name, Target::Vulkan, true);
    }
}

/// Whether a Vulkan adapter is there to run on; a missing one fails the test when
/// `TESSERA_REQUIRE_VULKAN=1`.
fn vulkan_adapter() -> bool {
    #[cfg(feature = "vulkan")]
    if !tessera_runtime::vulkan::VulkanDevice::list().is_empty() {
        return true;
    }
    let required = std::env::var("TESSERA_REQUIRE_VULKAN").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "TESSERA_REQUIRE_VULKAN=1 but no Vulkan adapter was found"
    );
    eprintln!("skipped on Vulkan: no adapter (install mesa-vulkan-drivers for lavapipe)");
    false
}

fn check_path(name: &str, target: Target, optimize: bool) {
    let dir = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join(format!("{name}.tsr"));
    compile_model(
        &dir,
        &CompileOptions {
            target,
            output: output.clone(),
            optimize,
            quant: None,
            vector_width: tessera::default_vector_width(),
            vulkan: tessera::VulkanTarget::baseline(),
            precision: Default::default(),
        },
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("compiling fixture {name}: {e:#}"));
    let label = format!(
        "{name} ({}, {})",
        target.name(),
        if optimize { "optimized" } else { "--no-opt" }
    );
    check_artifact(name, &label, &output, tolerance(target));
}

/// How far from transformers' logits a target's may be.
fn tolerance(target: Target) -> f32 {
    match target {
        Target::Vulkan => GPU_LOGIT_TOLERANCE,
        _ => LOGIT_TOLERANCE,
    }
}

/// Generates fixture `name`'s tokens with the artifact `output` and compares them and the logits
/// (within `tolerance`) with transformers'; `label` names the run in messages.
fn check_artifact(name: &str, label: &str, output: &Path, tolerance: f32) {
    let dir = fixture(name);
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let want_logits = npy::read::<f32>(&dir.join("logits.npy")).unwrap();
    let name = label;
    let mut engine = Engine::load(output).unwrap();
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
        worst.0 <= tolerance,
        "{name}: max |Δlogit| = {} at step {} token {} (tolerance {tolerance})",
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
    check_every_target("llama");
}

#[test]
fn llama3_rope_scaling_gqa_tied_bf16() {
    check_every_target("llama3");
}

#[test]
fn llama_linear_rope_old_schema_head_dim_f16() {
    check_every_target("llama_linear");
}

#[test]
fn mistral_sliding_window() {
    check_every_target("mistral");
}

#[test]
fn qwen2_qkv_bias() {
    check_every_target("qwen2");
}

#[test]
fn gpt2_conv1d_learned_positions() {
    check_every_target("gpt2");
}

/// The compiled targets every fixture runs on: the CPU, and Vulkan where there is an adapter
/// (required under `TESSERA_REQUIRE_VULKAN=1`).
fn compiled_targets() -> Vec<Target> {
    let mut targets = vec![Target::Cpu];
    if vulkan_adapter() {
        targets.push(Target::Vulkan);
    }
    targets
}

/// FlashDecoding split three ways (the splits' partial rows merged by log-sum-exp), which the
/// cost model does not choose on a small host, still reproduces transformers on the CPU and on
/// Vulkan: GQA (llama3) and a sliding window (mistral).
#[test]
fn split_flash_decoding_matches_transformers() {
    for (name, target) in ["llama3", "mistral"]
        .into_iter()
        .flat_map(|name| compiled_targets().into_iter().map(move |t| (name, t)))
    {
        let mut model = tessera_models::import_hf(&fixture(name)).unwrap();
        tessera::transpose_projections(&mut model).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let opts = CompileOptions {
            target,
            output: tmp.path().join("split.tsr"),
            optimize: true,
            quant: None,
            vector_width: tessera::default_vector_width(),
            vulkan: tessera::VulkanTarget::baseline(),
            precision: Default::default(),
        };
        tessera::optimize_model(&mut model, &opts).unwrap();
        let mut split = 0;
        for entry in &mut model.module.entries {
            for kernel in &mut entry.kernels.as_mut().unwrap().kernels {
                if let KernelKind::FlashDecoding { splits } = &mut kernel.kind {
                    *splits = 3;
                    split += 1;
                }
            }
        }
        assert!(split > 0, "{name}: no FlashDecoding kernel");
        match target {
            Target::Vulkan => {
                tessera::lower_for_vulkan(&mut model.module, (&opts.vulkan, opts.precision))
            }
            _ => tessera::lower_for_cpu(&mut model.module, opts.vector_width),
        }
        .unwrap();
        tessera::write_artifact(&model, name, &opts, &mut |_, _| {}).unwrap();
        let label = format!("{name} ({}, 3 splits)", target.name());
        check_artifact(name, &label, &opts.output, tolerance(target));
    }
}

/// `--precision f16` on a Vulkan adapter with shader-f16 (lavapipe has it): the prefill GEMMs
/// stage their tiles in f16 and sum k chunks in f16 (decode's gemv stays f32). The logits stay
/// within [`F16_LOGIT_TOLERANCE`] of transformers' and the greedy tokens equal; a device without
/// f16 arithmetic and a CPU target are refused by name.
#[test]
fn f16_prefill_on_vulkan_stays_near_transformers() {
    let compile = |name: &str, target: Target, vulkan: tessera::VulkanTarget, out: &Path| {
        let opts = CompileOptions {
            target,
            output: out.to_path_buf(),
            optimize: true,
            quant: None,
            vector_width: tessera::default_vector_width(),
            vulkan,
            precision: tessera::Precision::F16,
        };
        compile_model(&fixture(name), &opts, &mut |_, _| {}).map(|_| ())
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f16.tsr");
    let baseline = tessera::VulkanTarget::baseline();
    let refused = |target| {
        format!(
            "{:#}",
            compile("llama", target, baseline.clone(), &out).unwrap_err()
        )
    };
    let message = refused(Target::Vulkan);
    assert!(message.contains("shader-f16"), "{message}");
    let message = refused(Target::Cpu);
    assert!(message.contains("--precision f16"), "{message}");
    #[cfg(feature = "vulkan")]
    {
        if !vulkan_adapter() {
            return;
        }
        let device = tessera_runtime::vulkan::VulkanDevice::open(0)
            .unwrap()
            .target();
        if !device.f16 {
            eprintln!("skipped: the adapter has no shader-f16");
            return;
        }
        for name in ["llama", "qwen2"] {
            compile(name, Target::Vulkan, device.clone(), &out).unwrap();
            let label = format!("{name} (vulkan, --precision f16)");
            check_artifact(name, &label, &out, F16_LOGIT_TOLERANCE);
        }
    }
}

#[test]
fn cpu_target_refuses_what_it_cannot_run_by_name() {
    // An attention kernel relabelled as elementwise has no template: the error names the entry
    // point and the kernel.
    let mut module = tessera::load_module(&fixture("llama")).unwrap();
    let spec = TargetSpec::cpu_host();
    let cost = Roofline {
        target: spec.clone(),
    };
    optimize_module(&mut module, &spec, &cost).unwrap();
    let kg = module.entries[0].kernels.as_mut().unwrap();
    let attention = kg
        .kernels
        .iter_mut()
        .find(|k| matches!(k.kind, KernelKind::FlashAttention { .. }))
        .unwrap();
    attention.kind = KernelKind::Elementwise;
    let scope = attention.scope.clone();
    let err = format!(
        "{:#}",
        tessera::lower_for_cpu(&mut module, tessera::default_vector_width()).unwrap_err()
    );
    assert!(
        err.contains(&format!(
            "entry point `prefill`: kernel `{scope}` (elementwise)"
        )) && err.contains("attention"),
        "{err}"
    );
    assert!(err.contains("--target reference"), "{err}");
    let no_opt = CompileOptions {
        target: Target::Cpu,
        output: std::env::temp_dir().join("unused.tsr"),
        optimize: false,
        quant: None,
        vector_width: tessera::default_vector_width(),
        vulkan: tessera::VulkanTarget::baseline(),
        precision: Default::default(),
    };
    let err = compile_model(&fixture("qwen2"), &no_opt, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("--no-opt"), "{err}");
}

/// Kernels compiled for 512-bit vectors need LLVM: Cranelift refuses them by kernel and says
/// what to do instead.
#[test]
fn wide_vector_kernels_name_their_backend_requirement() {
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("wide.tsr");
    let opts = CompileOptions {
        target: Target::Cpu,
        output: output.clone(),
        optimize: true,
        quant: None,
        vector_width: VectorWidth::V512,
        vulkan: tessera::VulkanTarget::baseline(),
        precision: Default::default(),
    };
    compile_model(&fixture("llama"), &opts, &mut |_, _| {}).unwrap();
    let cranelift = LoadOptions {
        threads: Some(1),
        cpu_backend: Backend::Cranelift,
        ..LoadOptions::default()
    };
    let err = Engine::load_with(&output, &cranelift)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("kernel") && err.contains("f32x16") && err.contains("--vector-bits 128"),
        "{err}"
    );
}

/// Generates `max_tokens` greedy tokens from `prompt` with an artifact of `model` compiled for
/// `target` with `--quant quant`; returns (ids, logits per step).
fn generate_quantized(
    model: &Path,
    target: Target,
    quant: Quant,
    prompt: &[u32],
    max_tokens: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("q.tsr");
    let opts = CompileOptions {
        target,
        output: output.clone(),
        optimize: true,
        quant: Some(quant),
        vector_width: tessera::default_vector_width(),
        vulkan: tessera::VulkanTarget::baseline(),
        precision: Default::default(),
    };
    compile_model(model, &opts, &mut |_, _| {}).unwrap();
    let mut engine = Engine::load(&output).unwrap();
    let opts = GenerateOptions {
        max_tokens,
        sampling: SamplingParams::default(),
        stop_at_eos: false,
        keep_logits: true,
    };
    let gen = engine.generate(prompt, &opts, &mut |_| {}).unwrap();
    (gen.generated, gen.logits)
}

/// `--quant q8_0|q4_0` on `--target cpu` and `vulkan` computes what the reference interpreter
/// computes on the same quantized weights, up to the kernels' 8-bit rounding of activations (llama.cpp's
/// approximation): logits within [`QUANT_TOLERANCE`] of the logit range while the greedy tokens
/// agree, and the first tokens equal.
#[test]
fn quantized_code_matches_the_interpreter_on_the_same_quantized_weights() {
    let cases = [
        ("llama", Quant::Q8_0),
        ("llama", Quant::Q4_0),
        ("gpt2", Quant::Q8_0),
    ];
    for ((name, quant), target) in cases
        .into_iter()
        .flat_map(|case| compiled_targets().into_iter().map(move |t| (case, t)))
    {
        let dir = fixture(name);
        let expected: Expected =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let run = |target| generate_quantized(&dir, target, quant, &expected.prompt_ids, 6);
        let (ref_ids, ref_logits) = run(Target::Reference);
        let (ids, logits) = run(target);
        let name = format!("{name} ({})", target.name());
        assert_eq!(
            ids[..2],
            ref_ids[..2],
            "{name} {quant:?}: first tokens differ"
        );
        let agree = ids.iter().zip(&ref_ids).take_while(|(a, b)| a == b).count();
        for step in 0..agree {
            let (got, want) = (&logits[step], &ref_logits[step]);
            let range = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = got
                .iter()
                .zip(want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0f32, f32::max);
            eprintln!("{name} {quant:?} step {step}: max |Δlogit| = {worst} (max |logit| {range})");
            assert!(
                worst <= QUANT_TOLERANCE * range,
                "{name} {quant:?} step {step}: max |Δlogit| = {worst}, max |logit| {range}"
            );
        }
    }
}

/// See [`quantized_code_matches_the_interpreter_on_the_same_quantized_weights`]; measured on the
/// llama fixture (K = 64: two blocks per row, the coarsest rounding): at most 4.7% of the range.
const QUANT_TOLERANCE: f32 = 0.08;
