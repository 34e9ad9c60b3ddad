//! Helpers the binary's end-to-end tests share (`mod common;` in each test file). A test file
//! uses only some of them, so unused ones are allowed here.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `tessera` binary with `args`.
pub fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("spawn tessera")
}

pub fn ok(args: &[&str]) -> String {
    let out = tessera(args);
    assert!(
        out.status.success(),
        "tessera {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail and returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = tessera(args);
    assert!(!out.status.success(), "tessera {args:?} should have failed");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !err.contains("panicked"),
        "tessera {args:?} panicked:\n{err}"
    );
    err
}

pub fn last_json(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().expect("output")).expect("last line is JSON")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Compiles fixture `name` into `dir` with the extra compile arguments `extra`.
pub fn compile_with(name: &str, dir: &Path, extra: &[&str]) -> String {
    let out = dir.join(format!("{name}.tsr"));
    let out = out.to_str().unwrap().to_string();
    let model = fixture(name);
    let mut args = vec!["compile", model.to_str().unwrap(), "-o", &out];
    args.extend_from_slice(extra);
    ok(&args);
    out
}

/// How many Vulkan adapters `tessera devices` lists (none in a build without Vulkan); none is a
/// failure under `TESSERA_REQUIRE_VULKAN=1`.
pub fn vulkan_adapters() -> usize {
    let listed = last_json(&ok(&["devices", "--json"]))["vulkan"]
        .as_array()
        .map_or(0, Vec::len);
    let required = std::env::var("TESSERA_REQUIRE_VULKAN").is_ok_and(|v| v == "1");
    assert!(
        listed > 0 || !required,
        "TESSERA_REQUIRE_VULKAN=1 but no Vulkan adapter was listed"
    );
    listed
}

/// `tessera bench ARTIFACT` over a short prompt (8 tokens, 4 decode steps, one run) with the
/// extra arguments `extra`: its `--json` report.
pub fn bench_json(artifact: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "bench",
        artifact,
        "--prompt-len",
        "8",
        "--gen",
        "4",
        "--runs",
        "1",
        "--json",
    ];
    args.extend(extra);
    last_json(&ok(&args))
}
