//! The `tessera` binary end to end: compile, run (ids, text, JSON, logits), inspect, demo, and the
//! errors a user meets with bad input.

mod common;

use common::{bench_json, compile_with, fails, fixture, last_json, ok, tessera};
use serde_json::Value;
use std::path::Path;

fn compile(name: &str, dir: &Path) -> String {
    compile_with(name, dir, &[])
}

/// The fixture's prompt as `--prompt-ids` takes it.
fn prompt_ids(want: &Value) -> String {
    let ids: Vec<String> = want["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    ids.join(",")
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["compile", "--help"],
        vec!["run", "--help"],
        vec!["inspect", "--help"],
        vec!["demo", "--help"],
        vec!["explain", "--help"],
        vec!["bench", "--help"],
        vec!["devices", "--help"],
    ] {
        assert!(ok(&cmd).contains("Usage"), "{cmd:?}");
    }
}

/// `devices` lists the host CPU and the Vulkan adapters by the index `--device` takes; under
/// `TESSERA_REQUIRE_VULKAN=1` (CI, with lavapipe) there must be one.
#[test]
fn devices_lists_the_cpu_and_vulkan_adapters() {
    let stdout = ok(&["devices", "--json"]);
    let d: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(d["cpu"]["cores"].as_u64().unwrap() >= 1, "{d}");
    assert!(d["cpu"]["simd_bits"].as_u64().unwrap() >= 128, "{d}");
    let adapters = d["vulkan"]
        .as_array()
        .expect("a vulkan build lists adapters");
    for (i, a) in adapters.iter().enumerate() {
        assert_eq!(a["index"], i, "{a}");
        assert!(a["max_workgroup_size"].as_u64().unwrap() >= 64, "{a}");
        assert!(a["shader_f16"].is_boolean(), "{a}");
    }
    if std::env::var("TESSERA_REQUIRE_VULKAN").is_ok_and(|v| v == "1") {
        assert!(
            !adapters.is_empty(),
            "TESSERA_REQUIRE_VULKAN=1 but no adapter listed"
        );
    }
    let text = ok(&["devices"]);
    assert!(text.starts_with("cpu "), "{text}");
    assert!(text.contains("vulkan"), "{text}");
}

#[test]
fn run_json_and_dump_logits_match_the_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = compile("llama", tmp.path());
    let want = expected("llama");
    let n = want["generated_ids"].as_array().unwrap().len();
    let npy = tmp.path().join("logits.npy");
    let stdout = ok(&[
        "run",
        &artifact,
        "--prompt-ids",
        &prompt_ids(&want),
        "--max-tokens",
        &n.to_string(),
        "--ignore-eos",
        "--json",
        "--dump-logits",
        npy.to_str().unwrap(),
    ]);
    let report = last_json(&stdout);
    assert_eq!(report["generated_ids"], want["generated_ids"]);
    assert_eq!(report["prompt_ids"], want["prompt_ids"]);
    assert!(report["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["text"].is_string(), "the fixture has a tokenizer");
    let logits = tessera_ir::npy::read::<f32>(&npy).unwrap();
    let reference = tessera_ir::npy::read::<f32>(&fixture("llama").join("logits.npy")).unwrap();
    assert_eq!(logits.shape, reference.shape);
    let worst = logits
        .data
        .iter()
        .zip(&reference.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst <= 1e-3, "max |Δlogit| {worst}");
}

#[test]
fn text_prompt_uses_the_embedded_tokenizer_and_sampling_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = compile("gpt2", tmp.path());
    let prompt = expected("gpt2")["prompt"].as_str().unwrap().to_string();
    let greedy = last_json(&ok(&[
        "run",
        &artifact,
        "--prompt",
        &prompt,
        "--max-tokens",
        "5",
        "--json",
    ]));
    assert!(!greedy["prompt_ids"].as_array().unwrap().is_empty());
    let sample = |seed: &str| {
        let args = [
            "run",
            &artifact,
            "--prompt",
            &prompt,
            "--max-tokens",
            "8",
            "--ignore-eos",
            "--json",
            "--temperature",
            "1.5",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--seed",
            seed,
        ];
        last_json(&ok(&args))["generated_ids"].clone()
    };
    assert_eq!(sample("7"), sample("7"), "same seed, same tokens");
    let streamed = ok(&["run", &artifact, "--prompt", &prompt, "--max-tokens", "5"]);
    assert_eq!(
        streamed,
        greedy["text"].as_str().unwrap(),
        "streamed text equals the decoded text"
    );
}

#[test]
fn inspect_describes_the_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = compile("qwen2", tmp.path());
    let info = last_json(&ok(&["inspect", &artifact, "--json"]));
    assert_eq!(info["architecture"], "qwen2");
    assert_eq!(info["target"], "reference");
    let entries: Vec<&str> = info["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(entries, ["prefill", "decode"]);
    assert!(ok(&["inspect", &artifact]).contains("entry decode"));
}

#[test]
fn cpu_target_compiles_and_runs_the_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = compile_with("qwen2", tmp.path(), &["--target", "cpu"]);
    let want = expected("qwen2");
    let n = want["generated_ids"].as_array().unwrap().len();
    let report = last_json(&ok(&[
        "run",
        &artifact,
        "--prompt-ids",
        &prompt_ids(&want),
        "--max-tokens",
        &n.to_string(),
        "--ignore-eos",
        "--json",
    ]));
    assert_eq!(report["generated_ids"], want["generated_ids"]);
    let model = fixture("qwen2");
    let out = tmp.path().join("plain.tsr");
    let err = fails(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--target",
        "cpu",
        "--no-opt",
    ]);
    assert!(
        err.contains("--no-opt cannot be used with --target cpu"),
        "{err}"
    );
}

/// `--target vulkan` end to end through the CLI on the first adapter: compile (for the baseline
/// device and, with `--device 0`, for the adapter's own limits), run, profile; a missing
/// adapter is named.
#[test]
fn vulkan_target_compiles_runs_and_profiles_the_fixture() {
    if common::vulkan_adapters() == 0 {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let want = expected("llama");
    let n = want["generated_ids"].as_array().unwrap().len().to_string();
    for extra in [&[][..], &["--device", "0"][..]] {
        let args: Vec<&str> = ["--target", "vulkan"]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        let artifact = compile_with("llama", tmp.path(), &args);
        let run = [
            "run",
            &artifact,
            "--prompt-ids",
            &prompt_ids(&want),
            "--max-tokens",
            &n,
            "--ignore-eos",
            "--json",
        ];
        assert_eq!(last_json(&ok(&run))["generated_ids"], want["generated_ids"]);
        let mut on_missing = run.to_vec();
        on_missing.extend(["--device", "99"]);
        assert!(fails(&on_missing).contains("no Vulkan adapter 99"));
    }
    let artifact = tmp.path().join("llama.tsr");
    let bench = bench_json(artifact.to_str().unwrap(), &["--profile"]);
    assert_eq!(bench["target"], "vulkan", "{bench}");
    assert!(
        bench["device"].as_str().is_some_and(|d| !d.is_empty()),
        "{bench}"
    );
    assert!(bench["bandwidth_gb_s"].as_f64().unwrap() > 0.0, "{bench}");
    let rows = bench["profile"].as_array().unwrap();
    // Shares add up to 100% per entry point (prefill and decode).
    let share: f64 = rows.iter().map(|r| r["percent"].as_f64().unwrap()).sum();
    assert!((share - 200.0).abs() < 1e-6, "{share} {bench}");
}

#[test]
fn no_opt_stores_only_graphs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("plain.tsr");
    let out = out.to_str().unwrap();
    let model = fixture("gpt2");
    let report = last_json(&ok(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        out,
        "--no-opt",
        "--json",
    ]));
    assert_eq!(report["optimized"], false);
    let info = last_json(&ok(&["inspect", out, "--json"]));
    let entries = info["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert!(e["kernels"].is_null(), "{e}");
        assert!(e["nodes"].as_u64().unwrap() > 0, "{e}");
    }
    assert!(ok(&["inspect", out]).contains("nodes (unoptimized)"));
    assert!(ok(&["inspect", out, "--graphs"]).contains("entry decode (graph):"));
}

#[test]
fn demo_generates() {
    let report = last_json(&ok(&["demo", "--json"]));
    assert!(report["generated_ids"].as_array().unwrap().len() >= 8);
    assert!(report["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn corrupt_truncated_and_foreign_artifacts_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = compile("gpt2", tmp.path());
    let bytes = std::fs::read(&artifact).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    };
    let mut flipped = bytes.clone();
    let mid = flipped.len() - 100;
    flipped[mid] ^= 1;
    let corrupt = write("corrupt.tsr", &flipped);
    let err = fails(&["run", &corrupt, "--prompt-ids", "1,2"]);
    assert!(
        err.contains("corrupt.tsr") && err.contains("checksum"),
        "{err}"
    );
    let truncated = write("truncated.tsr", &bytes[..bytes.len() / 2]);
    let err = fails(&["inspect", &truncated]);
    assert!(
        err.contains("truncated.tsr") && err.contains("truncated"),
        "{err}"
    );
    let foreign = write("model.gguf", b"GGUF\x03\x00\x00\x00 not an artifact");
    assert!(fails(&["run", &foreign, "--prompt-ids", "1"]).contains("bad magic"));
    let missing = tmp.path().join("missing.tsr");
    assert!(fails(&["inspect", missing.to_str().unwrap()]).contains("missing.tsr"));
}

#[test]
fn bad_requests_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // A model folder without tokenizer.json: --prompt must say so.
    let plain = tmp.path().join("gpt2-no-tokenizer");
    std::fs::create_dir(&plain).unwrap();
    for entry in std::fs::read_dir(fixture("gpt2")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "tokenizer.json" {
            std::fs::copy(&path, plain.join(path.file_name().unwrap())).unwrap();
        }
    }
    let out = tmp.path().join("plain.tsr");
    let out = out.to_str().unwrap();
    ok(&["compile", plain.to_str().unwrap(), "-o", out]);
    assert!(fails(&["run", out, "--prompt", "hello"]).contains("no tokenizer"));
    assert!(fails(&["run", out, "--prompt-ids", "1,99999"]).contains("outside the vocabulary"));
    assert!(
        fails(&["run", out, "--prompt-ids", "1", "--max-tokens", "100000"])
            .contains("exceeds the model's context")
    );
    assert!(fails(&["run", out, "--prompt-ids", "1", "--top-p", "0"]).contains("--top-p"));
    let err = fails(&[
        "compile",
        tmp.path().join("nowhere").to_str().unwrap(),
        "-o",
        out,
    ]);
    assert!(err.contains("nowhere"), "{err}");
    let err = fails(&[
        "compile",
        plain.to_str().unwrap(),
        "-o",
        out,
        "--target",
        "cuda",
    ]);
    assert!(err.contains("cuda"), "{err}");
    // f16 arithmetic is a Vulkan device's, and the baseline device has none.
    let model = plain.to_str().unwrap();
    let f16 = |target: &str| {
        fails(&[
            "compile",
            model,
            "-o",
            out,
            "--target",
            target,
            "--precision",
            "f16",
        ])
    };
    assert!(f16("cpu").contains("--precision f16"), "{}", f16("cpu"));
    assert!(f16("vulkan").contains("shader-f16"), "{}", f16("vulkan"));
}

#[test]
fn unknown_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("weird");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "mamba2", "hidden_size": 8}"#,
    )
    .unwrap();
    let err = fails(&[
        "compile",
        dir.to_str().unwrap(),
        "-o",
        tmp.path().join("w.tsr").to_str().unwrap(),
    ]);
    assert!(err.contains("mamba2"), "{err}");
}

#[test]
fn explain_works_from_a_config_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config-only");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(
        fixture("llama3").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let dir = dir.to_str().unwrap();
    let report = last_json(&ok(&["explain", dir, "--target", "sm_90", "--json"]));
    assert!(report["optimize_seconds"].as_f64().unwrap() > 0.0);
    for entry in ["prefill", "decode"] {
        let n = report["kernels_per_layer"][entry].as_u64().unwrap();
        assert!((1..=12).contains(&n), "{entry}: {n} kernels per layer");
    }
    let egraph = ok(&["explain", dir, "--emit", "egraph", "--entry", "decode"]);
    for phase in ["algebra", "recognition", "merge", "fusion", "selection"] {
        assert!(egraph.contains(phase), "{egraph}");
    }
    assert!(
        egraph.contains("saturated") && egraph.contains("× 2 layers"),
        "{egraph}"
    );
    let kernels = ok(&[
        "explain", dir, "--emit", "kernels", "--entry", "decode", "--bucket", "past=100",
    ]);
    assert!(kernels.contains("flash_decoding{splits"), "{kernels}");
    assert!(ok(&["explain", dir, "--emit", "graph"]).contains("attention"));
    // The SIMT code of every decode kernel the GPU templates cover, as WGSL; the others named.
    let wgsl = ok(&[
        "explain", dir, "--target", "vulkan", "--emit", "wgsl", "--entry", "decode",
    ]);
    assert!(
        wgsl.contains("@compute @workgroup_size(256, 1, 1)") && wgsl.contains("gemv"),
        "{wgsl}"
    );
    let listed = wgsl.lines().filter(|l| l.starts_with("kernel ")).count();
    assert!(listed >= 10, "{listed} kernels listed:\n{wgsl}");
    assert!(fails(&["explain", dir, "--emit", "wgsl"]).contains("--target vulkan"));
    // The same kernels as binary SPIR-V files, one per program step.
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let spirv = ok(&[
        "explain",
        dir,
        "--target",
        "vulkan",
        "--emit",
        "spirv",
        "--entry",
        "decode",
        "--out-dir",
        out_dir,
    ]);
    let files: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert_eq!(files.len(), spirv.matches(".spv (").count(), "{spirv}");
    assert!(!files.is_empty(), "{spirv}");
    for file in files {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        assert_eq!(bytes[..4], 0x0723_0203u32.to_le_bytes(), "SPIR-V magic");
    }
    assert!(
        fails(&["explain", dir, "--target", "vulkan", "--emit", "spirv"]).contains("--out-dir")
    );
    assert!(fails(&["explain", dir, "--target", "tpu"]).contains("valid targets"));
    assert!(fails(&["explain", dir, "--bucket", "seq"]).contains("SYM=N"));
}

/// `--quant` on a model whose projection holds a NaN is an error naming the weight (quantized
/// block scales must be finite).
#[test]
fn quantizing_a_non_finite_weight_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llama");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("llama")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let name = "model.layers.0.self_attn.o_proj.weight";
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shard = dir.join(index["weight_map"][name].as_str().unwrap());
    let mut bytes = std::fs::read(&shard).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let start = 8 + header_len + header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&shard, bytes).unwrap();
    let err = fails(&[
        "compile",
        dir.to_str().unwrap(),
        "-o",
        tmp.path().join("q.tsr").to_str().unwrap(),
        "--quant",
        "q4_0",
    ]);
    assert!(err.contains(name) && err.contains("NaN"), "{err}");
}

/// `--cpu-backend`: every backend this build has generates the fixture's tokens; asking a build
/// without LLVM for it says how to get it.
#[test]
fn cpu_backends_generate_the_fixture_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    // 128-bit vectors: the widest Cranelift runs (an `llvm` build defaults to the host's widest).
    let artifact = compile_with(
        "llama",
        tmp.path(),
        &["--target", "cpu", "--vector-bits", "128"],
    );
    let want = expected("llama");
    let (ids, n) = (
        prompt_ids(&want),
        want["generated_ids"].as_array().unwrap().len().to_string(),
    );
    let run = |backend: &str| {
        let args = [
            "run",
            &artifact,
            "--prompt-ids",
            &ids,
            "--max-tokens",
            &n,
            "--ignore-eos",
            "--json",
            "--cpu-backend",
            backend,
        ];
        tessera(&args)
    };
    let mut backends = vec!["cranelift"];
    if cfg!(feature = "llvm") {
        backends.push("llvm");
    } else {
        let out = run("llvm");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("cargo build --release --features llvm"),
            "{err}"
        );
    }
    for backend in backends {
        let out = run(backend);
        assert!(out.status.success(), "{backend}: {out:?}");
        let report = last_json(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(report["generated_ids"], want["generated_ids"], "{backend}");
    }
}
