//! Importing a Hugging Face folder: `config.json` → [`ModelConfig`], safetensors → mapped
//! weights, the Module built against the stored dtypes, and every weight checked against it.

use crate::builder::{self, LM_HEAD};
use crate::config::{Architecture, Fields};
use crate::safetensors::TensorIndex;
use crate::{computed_weights, parse_config, ImportedModel, ModelConfig, ModelError, Weight};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tessera_ir::Module;

/// Imports the model in `dir`: `config.json`, `model.safetensors` (or a sharded set named by
/// `model.safetensors.index.json`), and `tokenizer.json` when present. Weights stay memory-mapped.
///
/// Stored weights keep their file's dtype. Extra eos ids from `generation_config.json` (which
/// `transformers`' `generate` stops on) are added to the config's. With tied embeddings a stored
/// `lm_head.weight` is ignored, as `transformers` ignores it; untied, it is required.
pub fn import_hf(dir: &Path) -> Result<ImportedModel, ModelError> {
    let config_path = dir.join("config.json");
    let text = read_optional(&config_path)?.ok_or_else(|| ModelError::MissingFile {
        dir: dir.to_path_buf(),
        what: "config.json".into(),
    })?;
    let mut config = parse_config(&text, &config_path.display().to_string())?;
    add_generation_eos(dir, &mut config)?;
    let tensors = TensorIndex::open(dir)?;
    let dtype_of = |name: &str| tensors.find(name).and_then(|(_, t)| t.ir_dtype());
    let module = builder::build_module(&config, &dtype_of)?;
    module.validate()?;
    let weights = load_weights(&config, &module, &tensors)?;
    let tokenizer_json = read_optional(&dir.join("tokenizer.json"))?;
    Ok(ImportedModel {
        module,
        weights,
        tokenizer_json,
        config,
    })
}

/// The file's text, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, ModelError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::io(path, e)),
    }
}

fn add_generation_eos(dir: &Path, config: &mut ModelConfig) -> Result<(), ModelError> {
    let path = dir.join("generation_config.json");
    let Some(text) = read_optional(&path)? else {
        return Ok(());
    };
    let file = path.display().to_string();
    let json_error = |message: String| ModelError::Json {
        file: file.clone(),
        message,
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| json_error(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(json_error("the top level is not an object".into()));
    };
    for id in Fields::new(&map, &file).token_ids_or("eos_token_id", vec![])? {
        if !config.eos_token_ids.contains(&id) {
            config.eos_token_ids.push(id);
        }
    }
    Ok(())
}

/// One [`Weight`] per declared weight, in declaration order: computed ones from the config,
/// stored ones mapped from their file after checking dtype and shape.
fn load_weights(
    config: &ModelConfig,
    module: &Module,
    tensors: &TensorIndex,
) -> Result<Vec<Weight>, ModelError> {
    let mut computed: HashMap<String, Weight> = computed_weights(config)
        .into_iter()
        .map(|w| (w.spec.name.clone(), w))
        .collect();
    let mut used = HashSet::new();
    let mut weights = Vec::with_capacity(module.weights.len());
    for spec in &module.weights {
        if let Some(weight) = computed.remove(&spec.name) {
            weights.push(weight);
            continue;
        }
        let (stored, info) = tensors
            .find(&spec.name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: spec.name.clone(),
                searched: tensors.paths(),
            })?;
        let file = tensors.path_of(info).to_path_buf();
        // The builder declared the file's dtype, so only an unreadable one can differ.
        if info.ir_dtype() != Some(spec.dtype) {
            return Err(ModelError::TensorDType {
                name: stored.into(),
                file,
                dtype: info.dtype.clone(),
            });
        }
        if info.shape != spec.shape {
            return Err(ModelError::TensorShape {
                name: stored.into(),
                file,
                expected: spec.shape.clone(),
                found: info.shape.clone(),
            });
        }
        used.insert(stored);
        weights.push(Weight {
            spec: spec.clone(),
            data: tensors.data(info),
        });
    }
    let unused: Vec<&str> = tensors
        .names()
        .filter(|n| !used.contains(n) && !is_known_extra(config, n))
        .collect();
    if !unused.is_empty() {
        tracing::warn!(
            count = unused.len(),
            tensors = %unused.join(", "),
            "the weight files hold tensors the model does not use"
        );
    }
    Ok(weights)
}

/// Stored tensors that are expected and deliberately unused: non-parameter buffers some
/// exporters save, and the LM head of a tied model.
fn is_known_extra(config: &ModelConfig, name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || (config.architecture == Architecture::Gpt2
            && (name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")))
        || (config.tie_word_embeddings && name == LM_HEAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::ROPE_INV_FREQ;
    use crate::safetensors::tests::safetensors_bytes;
    use crate::{build_module, WeightData};
    use serde_json::json;
    use std::path::PathBuf;
    use tempfile::TempDir;
    use tessera_ir::DType;

    fn llama_config() -> Value {
        json!({
            "model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 40, "max_position_embeddings": 64, "eos_token_id": 1,
            "dtype": "float16", "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}
        })
    }

    fn st_dtype(dtype: DType) -> &'static str {
        match dtype {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::Bf16 => "BF16",
            other => panic!("{other}"),
        }
    }

    /// The stored tensors the config's module needs, as (name, safetensors dtype, shape).
    fn tensors_for(config: &Value) -> Vec<(String, &'static str, Vec<usize>)> {
        let cfg = parse_config(&config.to_string(), "config.json").unwrap();
        build_module(&cfg)
            .unwrap()
            .weights
            .into_iter()
            .filter(|w| w.name != ROPE_INV_FREQ)
            .map(|w| (w.name, st_dtype(w.dtype), w.shape))
            .collect()
    }

    fn write_tensors(path: &Path, tensors: &[(String, &'static str, Vec<usize>)]) {
        let refs: Vec<(&str, &str, &[usize])> = tensors
            .iter()
            .map(|(n, d, s)| (n.as_str(), *d, s.as_slice()))
            .collect();
        std::fs::write(path, safetensors_bytes(&refs)).unwrap();
    }

    /// A model folder with `config.json` and a `model.safetensors` holding `tensors`.
    fn folder(config: &Value, tensors: &[(String, &'static str, Vec<usize>)]) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix("tessera-models-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        write_tensors(&dir.path().join("model.safetensors"), tensors);
        dir
    }

    fn import_err(dir: &TempDir) -> String {
        import_hf(dir.path()).unwrap_err().to_string()
    }

    #[test]
    fn imports_a_llama_folder() {
        let config = llama_config();
        let mut tensors = tensors_for(&config);
        tensors.push((
            "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
            "F32",
            vec![4],
        ));
        tensors.push(("extra.unused".into(), "F32", vec![2]));
        let dir = folder(&config, &tensors);
        std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": {}}").unwrap();
        std::fs::write(
            dir.path().join("generation_config.json"),
            json!({"eos_token_id": [1, 9]}).to_string(),
        )
        .unwrap();

        let m = import_hf(dir.path()).unwrap();
        m.module.validate().unwrap();
        assert_eq!(m.tokenizer_json.as_deref(), Some("{\"model\": {}}"));
        assert_eq!(m.config.eos_token_ids, vec![1, 9]);
        assert_eq!(m.module.info.eos_token_ids, vec![1, 9]);
        let names: Vec<&str> = m.weights.iter().map(|w| w.spec.name.as_str()).collect();
        let declared: Vec<&str> = m.module.weights.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, declared);
        for w in &m.weights {
            let numel: usize = w.spec.shape.iter().product();
            assert_eq!(w.bytes().len(), numel * w.spec.dtype.elem_bytes().unwrap());
            match (&w.data, w.spec.name.as_str()) {
                (WeightData::Owned(_), ROPE_INV_FREQ) => assert_eq!(w.spec.dtype, DType::F32),
                (WeightData::Mapped { .. }, _) => assert_eq!(w.spec.dtype, DType::F16),
                (data, name) => panic!("{name} is {data:?}"),
            }
        }
        let rope = m
            .weights
            .iter()
            .find(|w| w.spec.name == ROPE_INV_FREQ)
            .unwrap();
        let inv_freq: Vec<f32> = rope
            .bytes()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(inv_freq, [1.0, 0.1, 0.01, 0.001]);
        // Mapped, not copied: the first stored tensor's bytes are the file's pattern.
        assert_eq!(&m.weights[0].bytes()[..3], &[0, 1, 2]);
    }

    #[test]
    fn stored_dtypes_win_over_the_config() {
        let config = llama_config();
        let mut tensors = tensors_for(&config);
        for t in &mut tensors {
            if t.0.ends_with("norm.weight") {
                t.1 = "F32";
            }
        }
        let m = import_hf(folder(&config, &tensors).path()).unwrap();
        let spec = m.module.weight("model.norm.weight").unwrap();
        assert_eq!(spec.dtype, DType::F32);
        assert_eq!(m.module.weight("lm_head.weight").unwrap().dtype, DType::F16);
    }

    #[test]
    fn tied_models_ignore_a_stored_head() {
        let mut config = llama_config();
        config["tie_word_embeddings"] = json!(true);
        let mut tensors = tensors_for(&config);
        tensors.push(("lm_head.weight".into(), "F16", vec![40, 32]));
        let m = import_hf(folder(&config, &tensors).path()).unwrap();
        assert!(m.weights.iter().all(|w| w.spec.name != "lm_head.weight"));
    }

    #[test]
    fn missing_config() {
        let dir = tempfile::tempdir().unwrap();
        let e = import_err(&dir);
        assert_eq!(e, format!("{}: missing config.json", dir.path().display()));
    }

    #[test]
    fn unknown_model_type() {
        let dir = folder(&json!({"model_type": "t5"}), &[]);
        let e = import_err(&dir);
        assert!(e.contains("config.json: unknown model_type `t5`"), "{e}");
        assert!(e.contains("supported: llama, mistral, qwen2, gpt2"), "{e}");
    }

    #[test]
    fn unsupported_option() {
        let mut config = llama_config();
        config["rope_parameters"]["rope_type"] = json!("longrope");
        let e = import_err(&folder(&config, &[]));
        assert!(
            e.contains("unsupported option `rope_parameters.rope_type` = longrope"),
            "{e}"
        );
    }

    #[test]
    fn missing_weights_file() {
        let dir = folder(&llama_config(), &[]);
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let e = import_err(&dir);
        assert!(e.contains("missing weights (model.safetensors or model.safetensors.index.json)"));
    }

    #[test]
    fn missing_tensor_names_it_and_the_files() {
        let config = llama_config();
        let tensors: Vec<_> = tensors_for(&config)
            .into_iter()
            .filter(|t| t.0 != "model.layers.1.mlp.up_proj.weight")
            .collect();
        let dir = folder(&config, &tensors);
        let e = import_err(&dir);
        let file = dir.path().join("model.safetensors");
        assert_eq!(
            e,
            format!(
                "tensor `model.layers.1.mlp.up_proj.weight` not found (searched {})",
                file.display()
            )
        );
    }

    #[test]
    fn misshaped_tensor() {
        let config = llama_config();
        let mut tensors = tensors_for(&config);
        let k = tensors
            .iter_mut()
            .find(|t| t.0 == "model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        k.2 = vec![32, 32];
        let e = import_err(&folder(&config, &tensors));
        assert!(
            e.starts_with("tensor `model.layers.0.self_attn.k_proj.weight` in ")
                && e.ends_with("model.safetensors: expected shape [16, 32], found [32, 32]"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_tensor_dtype() {
        let config = llama_config();
        let mut tensors = tensors_for(&config);
        tensors[0].1 = "I64";
        let e = import_err(&folder(&config, &tensors));
        assert!(
            e.contains("tensor `model.embed_tokens.weight` in ")
                && e.contains("dtype I64 is not supported"),
            "{e}"
        );
    }

    #[test]
    fn truncated_file_names_the_file() {
        let config = llama_config();
        let dir = folder(&config, &tensors_for(&config));
        let path = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        for keep in [bytes.len() - 10, 100, 4, 0] {
            std::fs::write(&path, &bytes[..keep]).unwrap();
            let e = import_err(&dir);
            assert!(
                e.starts_with(&format!("{}: corrupt safetensors file", path.display())),
                "{e}"
            );
        }
    }

    fn write_sharded(dir: &Path, tensors: &[(String, &'static str, Vec<usize>)]) -> Vec<PathBuf> {
        let (a, b) = tensors.split_at(tensors.len() / 2);
        let shards = [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ];
        let mut map = serde_json::Map::new();
        for (part, shard) in [a, b].into_iter().zip(shards) {
            write_tensors(&dir.join(shard), part);
            for t in part {
                map.insert(t.0.clone(), json!(shard));
            }
        }
        let index = json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        shards.iter().map(|s| dir.join(s)).collect()
    }

    #[test]
    fn sharded_weights() {
        let config = llama_config();
        let tensors = tensors_for(&config);
        let dir = folder(&config, &[]);
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let shards = write_sharded(dir.path(), &tensors);
        let m = import_hf(dir.path()).unwrap();
        assert_eq!(m.weights.len(), tensors.len() + 1);

        std::fs::remove_file(&shards[1]).unwrap();
        let e = import_err(&dir);
        assert!(e.starts_with(&shards[1].display().to_string()), "{e}");

        let mut partial = tensors.clone();
        partial.retain(|t| t.0 != "model.norm.weight");
        let shards = write_sharded(dir.path(), &partial);
        let e = import_err(&dir);
        assert!(
            e.contains("`model.norm.weight` not found")
                && shards.iter().all(|s| e.contains(&s.display().to_string())),
            "{e}"
        );
        std::fs::write(dir.path().join("model.safetensors.index.json"), "{}").unwrap();
        assert!(import_err(&dir).contains("`weight_map`: missing"));
    }

    #[test]
    fn gpt2_without_prefix_and_with_buffers() {
        let config = json!({
            "model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 16,
            "vocab_size": 40
        });
        let mut tensors: Vec<_> = tensors_for(&config)
            .into_iter()
            .map(|(n, d, s)| (n.strip_prefix("transformer.").unwrap().to_string(), d, s))
            .collect();
        tensors.push(("h.0.attn.bias".into(), "F32", vec![1, 1, 16, 16]));
        tensors.push(("h.0.attn.masked_bias".into(), "F32", vec![]));
        let m = import_hf(folder(&config, &tensors).path()).unwrap();
        assert_eq!(m.weights.len(), 2 + 12 + 2);
        assert!(m
            .weights
            .iter()
            .all(|w| w.spec.name.starts_with("transformer.")));
        assert_eq!(m.module.info.architecture, "gpt2");
    }
}
