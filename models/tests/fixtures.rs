//! Imports the `transformers`-made fixtures (`tests/fixtures/<name>/`, see its README) and checks
//! that each Module validates and has the structure its fixture was made to exercise. Numerical
//! agreement with the fixtures' logits is checked end to end elsewhere.

use std::path::{Path, PathBuf};
use tessera_ir::{DType, Dim, Module, Op, TensorType};
use tessera_models::{import_hf, Architecture, ImportedModel, RopeScaling, WeightData};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// Imports a fixture and checks what every fixture shares: hidden 64, 2 layers, vocab 512, all
/// stored weights mapped, the logits and cache types of both entry points.
fn import(name: &str) -> ImportedModel {
    let m = import_hf(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    m.module.validate().unwrap();
    let info = &m.module.info;
    assert_eq!(
        (info.hidden_size, info.num_layers, info.vocab_size),
        (64, 2, 512)
    );
    assert_eq!(info.eos_token_ids, [if name == "gpt2" { 2 } else { 1 }]);
    assert!(m
        .tokenizer_json
        .as_deref()
        .is_some_and(|t| t.contains("\"model\"")));
    assert_eq!(m.weights.len(), m.module.weights.len());
    for (w, spec) in m.weights.iter().zip(&m.module.weights) {
        assert_eq!(&w.spec, spec);
        let numel: usize = spec.shape.iter().product();
        assert_eq!(
            w.bytes().len(),
            numel * spec.dtype.elem_bytes().unwrap(),
            "{}",
            spec.name
        );
        let computed = spec.name == "rope.inv_freq";
        assert_eq!(
            matches!(w.data, WeightData::Owned(_)),
            computed,
            "{}",
            spec.name
        );
    }
    let kv = m.config.num_key_value_heads;
    let head_dim = m.config.head_dim;
    for (entry, seq) in [("prefill", Dim::sym("seq")), ("decode", Dim::c(1))] {
        let g = &m.module.entry(entry).unwrap().graph;
        let logits = g.ty(g.output_node("logits").unwrap());
        let want = TensorType::new(DType::F32, vec![Dim::sym("batch"), Dim::c(512)]);
        assert_eq!(logits, &want, "{name} {entry}");
        let cache = g.ty(g.output_node("cache.1.v").unwrap());
        let want = vec![
            Dim::sym("batch"),
            Dim::from(kv),
            Dim::sym("past") + seq.clone(),
            Dim::from(head_dim),
        ];
        assert_eq!(
            (cache.dtype, &cache.shape),
            (DType::F32, &want),
            "{name} {entry}"
        );
    }
    m
}

fn attention(module: &Module) -> Op {
    let g = &module.entry("decode").unwrap().graph;
    g.nodes
        .iter()
        .find(|n| matches!(n.op, Op::Attention { .. }))
        .unwrap()
        .op
        .clone()
}

fn dtypes_of_stored(m: &ImportedModel) -> Vec<DType> {
    let mut d: Vec<DType> = m
        .module
        .weights
        .iter()
        .filter(|w| w.name != "rope.inv_freq")
        .map(|w| w.dtype)
        .collect();
    d.dedup();
    d
}

#[test]
fn llama_sharded_f32_untied() {
    let m = import("llama");
    assert_eq!(m.config.architecture, Architecture::Llama);
    assert_eq!(dtypes_of_stored(&m), [DType::F32]);
    assert!(m.module.weight("lm_head.weight").is_some());
    let rope = m.config.rope.as_ref().unwrap();
    assert_eq!((rope.theta, &rope.scaling), (10000.0, &RopeScaling::None));
    assert_eq!(
        attention(&m.module),
        Op::Attention {
            scale: 0.25,
            causal: true,
            window: None
        }
    );
}

#[test]
fn llama3_bf16_tied_gqa() {
    let m = import("llama3");
    assert_eq!(dtypes_of_stored(&m), [DType::Bf16]);
    assert!(m.module.weight("lm_head.weight").is_none());
    assert_eq!(m.config.num_key_value_heads, 2);
    let rope = m.config.rope.as_ref().unwrap();
    assert!(matches!(
        rope.scaling,
        RopeScaling::Llama3 {
            original_max_position_embeddings: 64,
            ..
        }
    ));
}

#[test]
fn llama_linear_f16_old_schema_wide_heads() {
    let m = import("llama_linear");
    assert_eq!(dtypes_of_stored(&m), [DType::F16]);
    assert_eq!(m.config.head_dim, 32);
    assert_eq!(
        m.module
            .weight("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .shape,
        [128, 64]
    );
    assert_eq!(
        m.module
            .weight("model.layers.0.self_attn.o_proj.weight")
            .unwrap()
            .shape,
        [64, 128]
    );
    let rope = m.config.rope.as_ref().unwrap();
    assert_eq!(rope.scaling, RopeScaling::Linear { factor: 2.0 });
    assert!(
        matches!(attention(&m.module), Op::Attention { scale, .. } if scale == 1.0 / 32f32.sqrt())
    );
}

#[test]
fn mistral_sliding_window() {
    let m = import("mistral");
    assert_eq!(m.config.architecture, Architecture::Mistral);
    assert!(matches!(
        attention(&m.module),
        Op::Attention {
            window: Some(8),
            ..
        }
    ));
}

#[test]
fn qwen2_qkv_bias_tied() {
    let m = import("qwen2");
    assert_eq!(m.config.architecture, Architecture::Qwen2);
    for proj in ["q_proj", "k_proj", "v_proj"] {
        let name = format!("model.layers.1.self_attn.{proj}.bias");
        assert!(m.module.weight(&name).is_some(), "{name}");
    }
    assert!(m
        .module
        .weight("model.layers.1.self_attn.o_proj.bias")
        .is_none());
    assert!(m.module.weight("lm_head.weight").is_none());
    assert!(matches!(
        attention(&m.module),
        Op::Attention { window: None, .. }
    ));
}

#[test]
fn gpt2_conv1d_learned_positions() {
    let m = import("gpt2");
    assert_eq!(m.config.architecture, Architecture::Gpt2);
    assert!(m.module.weight("rope.inv_freq").is_none());
    assert_eq!(
        m.module
            .weight("transformer.h.0.attn.c_attn.weight")
            .unwrap()
            .shape,
        [64, 192]
    );
    assert_eq!(
        m.module.weight("transformer.wpe.weight").unwrap().shape,
        [128, 64]
    );
    assert_eq!(m.config.intermediate_size, 176);
}

/// Fixtures added later are at least imported and validated.
#[test]
fn every_fixture_folder_imports() {
    let mut count = 0;
    for entry in std::fs::read_dir(fixture("")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("config.json").is_file() {
            let m = import_hf(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            m.module.validate().unwrap();
            count += 1;
        }
    }
    assert!(count >= 6, "only {count} fixtures found");
}
