//! `tessera bench` end to end: the JSON report of a real artifact, its weight-bytes figure against
//! one computed independently from the model's config.json, and the errors a user meets.

mod common;

use common::{bench_json, compile_with as compile, fixture, ok, tessera};
use serde_json::Value;

/// Weight bytes one decode token reads, from a Llama config.json alone: every weight fully (in
/// the checkpoint's dtype; `rope.inv_freq`, computed at import, is f32) except the embedding
/// table, of which one row is read — unless it is tied, when it is also the lm_head and read whole.
fn llama_decode_bytes(config: &Value) -> u64 {
    let n = |k: &str| config[k].as_u64().unwrap_or_else(|| panic!("config.{k}"));
    let (h, f, v, layers) = (
        n("hidden_size"),
        n("intermediate_size"),
        n("vocab_size"),
        n("num_hidden_layers"),
    );
    let (heads, kv_heads, head_dim) = (
        n("num_attention_heads"),
        n("num_key_value_heads"),
        n("head_dim"),
    );
    let elem = match config["dtype"].as_str().unwrap() {
        "float32" => 4,
        "float16" | "bfloat16" => 2,
        other => panic!("dtype {other}"),
    };
    let attention = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim;
    let layer = attention + 3 * h * f + 2 * h;
    let tied = config["tie_word_embeddings"].as_bool().unwrap_or(false);
    let table = if tied { v * h } else { h + v * h };
    elem * (layers * layer + h + table) + 4 * (head_dim / 2)
}

fn config(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
        .unwrap()
}

fn positive(report: &Value, key: &str) -> f64 {
    let x = report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key}: {report}"));
    assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    x
}

#[test]
fn bench_reports_rates_and_the_decode_weight_bytes_of_an_optimized_cpu_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = compile("llama", tmp.path(), &["--target", "cpu"]);
    let r = bench_json(&artifact, &["--profile"]);
    assert_eq!(r["target"], "cpu");
    assert_eq!(r["prompt_len"], 8);
    assert_eq!(r["gen"], 4);
    assert_eq!(r["runs"], 1);
    for key in [
        "prefill_tok_s",
        "decode_tok_s",
        "bandwidth_gb_s",
        "roofline_tok_s",
        "decode_roofline_pct",
    ] {
        positive(&r, key);
    }
    assert_eq!(r["decode_tok_s_runs"].as_array().unwrap().len(), 1);
    assert_eq!(r["prefill_tok_s_runs"].as_array().unwrap().len(), 1);
    let bytes = llama_decode_bytes(&config("llama"));
    assert_eq!(r["weight_bytes_per_token"], bytes);
    let roofline = positive(&r, "bandwidth_gb_s") * 1e9 / bytes as f64;
    assert!((positive(&r, "roofline_tok_s") / roofline - 1.0).abs() < 1e-9);
    // --profile: per entry point, rows whose shares add up to 100%, the 4 decode steps of the
    // profiled run launching each layer's attention once per step.
    let rows = r["profile"].as_array().expect("profile rows");
    for entry in ["prefill", "decode"] {
        let share: f64 = rows
            .iter()
            .filter(|row| row["entry"] == entry)
            .map(|row| row["percent"].as_f64().unwrap())
            .sum();
        assert!((share - 100.0).abs() < 1e-6, "{entry}: {share}");
    }
    let layers = config("llama")["num_hidden_layers"].as_u64().unwrap();
    let attention = rows
        .iter()
        .find(|row| {
            row["entry"] == "decode" && row["kind"].as_str().unwrap().starts_with("flash_decoding")
        })
        .expect("a decode attention row");
    assert_eq!(attention["kernels"], layers);
    assert_eq!(attention["launches"], 4 * layers);
}

#[test]
fn unoptimized_artifacts_count_graph_weights_and_tied_tables_once() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = compile("llama3", tmp.path(), &["--no-opt"]);
    let want = config("llama3");
    assert_eq!(
        want["tie_word_embeddings"], true,
        "the fixture ties embeddings"
    );
    let r = bench_json(&artifact, &[]);
    assert_eq!(r["weight_bytes_per_token"], llama_decode_bytes(&want));
    positive(&r, "decode_tok_s");
}

#[test]
fn bench_errors_name_the_option_and_the_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = compile("llama", tmp.path(), &[]);
    let out = tessera(&["bench", &artifact, "--prompt-len", "100", "--gen", "100"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--prompt-len") && err.contains(&artifact) && err.contains("context"),
        "{err}"
    );
    let out = tessera(&["bench", &artifact, "--profile"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && err.contains("--profile") && err.contains("--target cpu"),
        "{err}"
    );
    let out = tessera(&["bench", &artifact, "--runs", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("--runs"));
    let missing = tmp.path().join("missing.tsr");
    let out = tessera(&["bench", missing.to_str().unwrap()]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && err.contains("missing.tsr"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(ok(&["bench", "--help"]).contains("--prompt-len"));
}
