//! The normalized architecture description: what a Hugging Face `config.json` says, with every
//! default filled in the way `transformers` fills it, in one schema for all supported families.

use crate::ModelError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use tessera_ir::{DType, UnaryOp};

/// The model families tessera builds. Mistral and Qwen2 share the Llama builder; they differ in
/// defaults (sliding window, biases), which parsing resolves into [`ModelConfig`] fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Gpt2,
}

impl Architecture {
    /// Every supported architecture, in the order error messages list them.
    pub const ALL: [Architecture; 4] = [
        Architecture::Llama,
        Architecture::Mistral,
        Architecture::Qwen2,
        Architecture::Gpt2,
    ];

    /// The Hugging Face `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Gpt2 => "gpt2",
        }
    }

    fn from_model_type(name: &str) -> Option<Architecture> {
        Architecture::ALL
            .into_iter()
            .find(|a| a.model_type() == name)
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.model_type())
    }
}

/// Rotary position embedding parameters; together they determine `inv_freq` (see `rope.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// The base θ (`rope_theta`).
    pub theta: f64,
    /// Leading dims of each head that are rotated: `int(head_dim · partial_rotary_factor)`, as
    /// `transformers` computes it; the remaining dims pass through unrotated.
    pub rotary_dim: usize,
    pub scaling: RopeScaling,
}

/// How `inv_freq` is rescaled for longer contexts (`rope_type`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// `default`: plain 1/θ^(2i/d).
    None,
    /// `linear`: every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// `llama3`: low frequencies divided by `factor`, high ones kept, a smooth band between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// A parsed, normalized architecture description. Field names follow the Llama `config.json`
/// keys (GPT-2's `n_embd`, `n_layer`, … are mapped onto them), so errors about a field name the
/// key users know. Serializable so the artifact manifest can carry it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Which builder applies (and the `model_type` reported in `ModelInfo`).
    pub architecture: Architecture,
    pub vocab_size: usize,
    /// Width of the residual stream (GPT-2: `n_embd`).
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer (GPT-2: `n_inner`, default 4·`n_embd`).
    pub intermediate_size: usize,
    /// Transformer blocks (GPT-2: `n_layer`).
    pub num_hidden_layers: usize,
    /// Query heads (GPT-2: `n_head`).
    pub num_attention_heads: usize,
    /// KV heads for grouped-query attention; equals `num_attention_heads` for MHA.
    pub num_key_value_heads: usize,
    /// Per-head width; explicit `head_dim` or `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    /// Longest sequence the model supports (`max_position_embeddings`, GPT-2 `n_positions`).
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon (Llama family) or LayerNorm epsilon (GPT-2).
    pub norm_eps: f32,
    /// The MLP activation (`hidden_act` / `activation_function`).
    pub activation: UnaryOp,
    /// RoPE parameters; `None` for learned absolute positions (GPT-2).
    pub rope: Option<RopeConfig>,
    /// Biases on the q/k/v projections (Qwen2, Llama `attention_bias`, GPT-2).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama `attention_bias`, GPT-2).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama `mlp_bias`, GPT-2).
    pub mlp_bias: bool,
    /// Each query sees only the last `w` keys, itself included (Mistral `sliding_window`).
    pub sliding_window: Option<usize>,
    /// Scale attention scores by 1/√head_dim; only GPT-2's `scale_attn_weights: false` turns it off.
    pub scale_attention: bool,
    /// The LM head reads the token embedding matrix instead of a separate `lm_head.weight`.
    pub tie_word_embeddings: bool,
    /// Stored weight dtype (`dtype` / `torch_dtype`); used for weights when no file says
    /// otherwise (config-only builds). Imports take each tensor's dtype from its file.
    pub dtype: DType,
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these (`eos_token_id` may be one id or a list).
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// A Llama with `transformers`' `LlamaConfig` defaults for everything but the sizes
    /// (θ = 10000, RMSNorm ε = 1e-6, SiLU, untied, f32, 2048 positions, bos 1, eos 2): what
    /// `tessera demo` builds with random weights.
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> ModelConfig {
        let head_dim = hidden_size / num_attention_heads.max(1);
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: 2048,
            norm_eps: 1e-6,
            activation: UnaryOp::Silu,
            rope: Some(RopeConfig {
                theta: 10000.0,
                rotary_dim: head_dim,
                scaling: RopeScaling::None,
            }),
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            sliding_window: None,
            scale_attention: true,
            tie_word_embeddings: false,
            dtype: DType::F32,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        }
    }

    /// Checks that the fields describe a buildable model; `source` names where they came from.
    pub fn validate(&self, source: &str) -> Result<(), ModelError> {
        let err = |key: &str, message: String| ModelError::Config {
            file: source.to_string(),
            key: key.to_string(),
            message,
        };
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(err(key, "must be at least 1".into()));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(err(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !(self.norm_eps >= 0.0 && self.norm_eps.is_finite()) {
            return Err(err(
                "norm_eps",
                format!("{} is not a valid epsilon", self.norm_eps),
            ));
        }
        if self.sliding_window == Some(0) {
            return Err(err("sliding_window", "must be at least 1".into()));
        }
        match (self.architecture, &self.rope) {
            (Architecture::Gpt2, Some(_)) => {
                return Err(err("rope", "gpt2 uses learned positions, not RoPE".into()))
            }
            (Architecture::Gpt2, None) => {
                if self.num_key_value_heads != self.num_attention_heads
                    || self.num_attention_heads * self.head_dim != self.hidden_size
                {
                    return Err(err(
                        "head_dim",
                        format!(
                            "gpt2 needs heads · head_dim = hidden_size and kv heads = heads, got \
                             {} · {} vs {} with {} kv heads",
                            self.num_attention_heads,
                            self.head_dim,
                            self.hidden_size,
                            self.num_key_value_heads
                        ),
                    ));
                }
            }
            (arch, None) => return Err(err("rope", format!("{arch} needs RoPE parameters"))),
            (_, Some(rope)) => rope.validate(self.head_dim, &err)?,
        }
        Ok(())
    }
}

impl RopeConfig {
    fn validate(
        &self,
        head_dim: usize,
        err: &dyn Fn(&str, String) -> ModelError,
    ) -> Result<(), ModelError> {
        if self.rotary_dim < 2 || !self.rotary_dim.is_multiple_of(2) || self.rotary_dim > head_dim {
            return Err(err(
                "partial_rotary_factor",
                format!(
                    "rotates {} dims; needs an even number in 2..={head_dim} (head_dim)",
                    self.rotary_dim
                ),
            ));
        }
        if !(self.theta > 0.0 && self.theta.is_finite()) {
            return Err(err(
                "rope_theta",
                format!("{} must be positive", self.theta),
            ));
        }
        let positive = |key: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(err(key, format!("{v} must be positive")))
            }
        };
        match &self.scaling {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("rope_scaling.factor", *factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.low_freq_factor", *low_freq_factor)?;
                if high_freq_factor <= low_freq_factor || !high_freq_factor.is_finite() {
                    return Err(err(
                        "rope_scaling.high_freq_factor",
                        format!("{high_freq_factor} must exceed low_freq_factor {low_freq_factor}"),
                    ));
                }
                if *original_max_position_embeddings == 0 {
                    return Err(err(
                        "rope_scaling.original_max_position_embeddings",
                        "must be at least 1".into(),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Parses a Hugging Face `config.json`; `source` names the file in error messages.
pub fn parse_config(json: &str, source: &str) -> Result<ModelConfig, ModelError> {
    let value: Value = serde_json::from_str(json).map_err(|e| ModelError::Json {
        file: source.to_string(),
        message: e.to_string(),
    })?;
    let Value::Object(map) = &value else {
        return Err(ModelError::Json {
            file: source.to_string(),
            message: "the top level is not an object".into(),
        });
    };
    let f = Fields::new(map, source);
    let model_type = f
        .opt_str("model_type")?
        .ok_or_else(|| f.err("model_type", "missing".into()))?;
    let arch = Architecture::from_model_type(model_type).ok_or_else(|| {
        let supported: Vec<&str> = Architecture::ALL.iter().map(|a| a.model_type()).collect();
        ModelError::UnknownModelType {
            file: source.to_string(),
            model_type: model_type.to_string(),
            supported: supported.join(", "),
        }
    })?;
    let config = match arch {
        Architecture::Gpt2 => parse_gpt2(&f)?,
        _ => parse_llama_family(&f, arch)?,
    };
    config.validate(source)?;
    Ok(config)
}

fn parse_llama_family(f: &Fields, arch: Architecture) -> Result<ModelConfig, ModelError> {
    let hidden_size = f.usize("hidden_size")?;
    let num_attention_heads = f.usize("num_attention_heads")?;
    if num_attention_heads == 0 {
        return Err(f.err("num_attention_heads", "must be at least 1".into()));
    }
    let head_dim = f
        .opt_usize("head_dim")?
        .unwrap_or(hidden_size / num_attention_heads);
    let (qkv_bias, o_bias, mlp_bias) = match arch {
        Architecture::Qwen2 => (true, false, false),
        Architecture::Llama => {
            let attention = f.bool_or("attention_bias", false)?;
            (attention, attention, f.bool_or("mlp_bias", false)?)
        }
        _ => (false, false, false),
    };
    let sliding_window = match arch {
        Architecture::Mistral if f.has_key("sliding_window") => f.opt_usize("sliding_window")?,
        Architecture::Mistral => Some(4096),
        _ => {
            if f.bool_or("use_sliding_window", false)? {
                return Err(f.unsupported(
                    "use_sliding_window",
                    "true",
                    "sliding-window layers are not implemented for this architecture",
                ));
            }
            full_attention_only(f)?;
            None
        }
    };
    let (default_max_positions, bos, eos) = match arch {
        Architecture::Mistral => (131072, Some(1), vec![2]),
        Architecture::Qwen2 => (32768, None, vec![]),
        _ => (2048, Some(1), vec![2]),
    };
    let max_position_embeddings = f
        .opt_usize("max_position_embeddings")?
        .unwrap_or(default_max_positions);
    Ok(ModelConfig {
        architecture: arch,
        vocab_size: f.usize("vocab_size")?,
        hidden_size,
        intermediate_size: f.usize("intermediate_size")?,
        num_hidden_layers: f.usize("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads: f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads),
        head_dim,
        max_position_embeddings,
        norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
        activation: activation(f, "hidden_act", "silu")?,
        rope: Some(parse_rope(f, head_dim, max_position_embeddings)?),
        qkv_bias,
        o_bias,
        mlp_bias,
        sliding_window,
        scale_attention: true,
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        dtype: weight_dtype(f)?,
        bos_token_id: f.token_id_or("bos_token_id", bos)?,
        eos_token_ids: f.token_ids_or("eos_token_id", eos)?,
    })
}

fn parse_gpt2(f: &Fields) -> Result<ModelConfig, ModelError> {
    let hidden_size = f.usize("n_embd")?;
    let heads = f.usize("n_head")?;
    if heads == 0 || !hidden_size.is_multiple_of(heads) {
        return Err(f.err(
            "n_head",
            format!("{heads} does not divide n_embd {hidden_size}"),
        ));
    }
    if f.bool_or("scale_attn_by_inverse_layer_idx", false)? {
        return Err(f.unsupported(
            "scale_attn_by_inverse_layer_idx",
            "true",
            "per-layer attention scaling is not implemented",
        ));
    }
    if f.bool_or("add_cross_attention", false)? {
        return Err(f.unsupported(
            "add_cross_attention",
            "true",
            "only decoder-only models are supported",
        ));
    }
    Ok(ModelConfig {
        architecture: Architecture::Gpt2,
        vocab_size: f.usize("vocab_size")?,
        hidden_size,
        intermediate_size: f.opt_usize("n_inner")?.unwrap_or(4 * hidden_size),
        num_hidden_layers: f.usize("n_layer")?,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: hidden_size / heads,
        max_position_embeddings: f.opt_usize("n_positions")?.unwrap_or(1024),
        norm_eps: f.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
        activation: activation(f, "activation_function", "gelu_new")?,
        rope: None,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        sliding_window: None,
        scale_attention: f.bool_or("scale_attn_weights", true)?,
        tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
        dtype: weight_dtype(f)?,
        bos_token_id: f.token_id_or("bos_token_id", Some(50256))?,
        eos_token_ids: f.token_ids_or("eos_token_id", vec![50256])?,
    })
}

/// Newer configs list each layer's attention kind; where no window is configured, only full
/// attention is built.
fn full_attention_only(f: &Fields) -> Result<(), ModelError> {
    let Some(types) = f.value("layer_types") else {
        return Ok(());
    };
    let list = types
        .as_array()
        .ok_or_else(|| f.err("layer_types", format!("expected a list, got {types}")))?;
    match list.iter().find(|t| t.as_str() != Some("full_attention")) {
        Some(other) => Err(f.unsupported(
            "layer_types",
            other,
            "only \"full_attention\" layers are implemented",
        )),
        None => Ok(()),
    }
}

/// RoPE from either schema: `rope_parameters` (transformers ≥ 5) or `rope_theta` +
/// `rope_scaling` (older); `partial_rotary_factor` may sit at the top level or inside.
fn parse_rope(f: &Fields, head_dim: usize, max_positions: usize) -> Result<RopeConfig, ModelError> {
    let (params, theta) = match f.object("rope_parameters")? {
        Some(p) => {
            if let Some((key, _)) = p.map.iter().find(|(_, v)| v.is_object()) {
                return Err(p.unsupported(
                    key,
                    "{…}",
                    "per-layer-type RoPE parameters are not implemented",
                ));
            }
            let theta = match p.opt_f64("rope_theta")? {
                Some(theta) => Some(theta),
                None => f.opt_f64("rope_theta")?,
            };
            (Some(p), theta)
        }
        None => (f.object("rope_scaling")?, f.opt_f64("rope_theta")?),
    };
    let inner = match &params {
        Some(p) => p.opt_f64("partial_rotary_factor")?,
        None => None,
    };
    let partial = match inner {
        Some(v) => v,
        None => f.opt_f64("partial_rotary_factor")?.unwrap_or(1.0),
    };
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(f.err(
            "partial_rotary_factor",
            format!("{partial} must be in (0, 1]"),
        ));
    }
    let scaling = match &params {
        None => RopeScaling::None,
        Some(p) => parse_rope_scaling(p, max_positions)?,
    };
    Ok(RopeConfig {
        theta: theta.unwrap_or(10000.0),
        rotary_dim: (head_dim as f64 * partial) as usize,
        scaling,
    })
}

/// `original_max_position_embeddings` defaults to the model's own, as in `transformers`.
fn parse_rope_scaling(p: &Fields, max_positions: usize) -> Result<RopeScaling, ModelError> {
    let kind_key = if p.has_key("rope_type") {
        "rope_type"
    } else {
        "type"
    };
    let kind = p.opt_str(kind_key)?.unwrap_or("default");
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: p.f64("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: p.f64("factor")?,
            low_freq_factor: p.f64("low_freq_factor")?,
            high_freq_factor: p.f64("high_freq_factor")?,
            original_max_position_embeddings: p
                .opt_usize("original_max_position_embeddings")?
                .unwrap_or(max_positions),
        },
        other => {
            return Err(p.unsupported(
                kind_key,
                other,
                "supported RoPE types are default, linear and llama3",
            ))
        }
    })
}

fn activation(f: &Fields, key: &str, default: &str) -> Result<UnaryOp, ModelError> {
    let name = f.opt_str(key)?.unwrap_or(default);
    Ok(match name {
        "silu" | "swish" => UnaryOp::Silu,
        "gelu" | "gelu_python" => UnaryOp::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => UnaryOp::GeluTanh,
        "relu" => UnaryOp::Relu,
        other => {
            return Err(f.unsupported(
                key,
                other,
                "supported activations are silu, swish, gelu, gelu_python, gelu_new, \
                 gelu_pytorch_tanh, gelu_fast and relu",
            ))
        }
    })
}

fn weight_dtype(f: &Fields) -> Result<DType, ModelError> {
    let key = if f.has_key("dtype") {
        "dtype"
    } else {
        "torch_dtype"
    };
    Ok(match f.opt_str(key)? {
        None | Some("float32") => DType::F32,
        Some("float16") => DType::F16,
        Some("bfloat16") => DType::Bf16,
        Some(other) => {
            return Err(f.unsupported(key, other, "weights must be float32, float16 or bfloat16"))
        }
    })
}

/// Typed access to one JSON object of a config, with errors that name the file and the dotted
/// key. `null` reads as absent, as in `transformers`.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    file: &'a str,
    prefix: String,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(map: &'a Map<String, Value>, file: &'a str) -> Fields<'a> {
        Fields {
            map,
            file,
            prefix: String::new(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn err(&self, key: &str, message: String) -> ModelError {
        ModelError::Config {
            file: self.file.to_string(),
            key: self.key(key),
            message,
        }
    }

    fn unsupported(&self, key: &str, value: impl fmt::Display, reason: &str) -> ModelError {
        ModelError::Unsupported {
            file: self.file.to_string(),
            key: self.key(key),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    fn has_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub(crate) fn value(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        self.value(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        self.err(key, format!("expected a non-negative integer, got {v}"))
                    })
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(key, "missing".into()))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        self.value(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.err(key, format!("expected a number, got {v}")))
            })
            .transpose()
    }

    fn f64(&self, key: &str) -> Result<f64, ModelError> {
        self.opt_f64(key)?
            .ok_or_else(|| self.err(key, "missing".into()))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.value(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("expected true or false, got {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ModelError> {
        self.value(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.err(key, format!("expected a string, got {v}")))
            })
            .transpose()
    }

    fn object(&self, key: &str) -> Result<Option<Fields<'a>>, ModelError> {
        self.value(key)
            .map(|v| match v {
                Value::Object(map) => Ok(Fields {
                    map,
                    file: self.file,
                    prefix: format!("{}.", self.key(key)),
                }),
                _ => Err(self.err(key, format!("expected an object, got {v}"))),
            })
            .transpose()
    }

    fn token_id(&self, key: &str, v: &Value) -> Result<u32, ModelError> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.err(key, format!("expected a token id, got {v}")))
    }

    /// A token id or null (none); `default` when the key is absent.
    fn token_id_or(&self, key: &str, default: Option<u32>) -> Result<Option<u32>, ModelError> {
        if !self.has_key(key) {
            return Ok(default);
        }
        self.value(key).map(|v| self.token_id(key, v)).transpose()
    }

    /// A token id, a list of them, or null (none); `default` when the key is absent.
    pub(crate) fn token_ids_or(
        &self,
        key: &str,
        default: Vec<u32>,
    ) -> Result<Vec<u32>, ModelError> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => items.iter().map(|v| self.token_id(key, v)).collect(),
            Some(v) => Ok(vec![self.token_id(key, v)?]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig, ModelError> {
        parse_config(&v.to_string(), "config.json")
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    fn llama_json() -> Value {
        json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 512, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
            "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1, "dtype": "bfloat16",
            "tie_word_embeddings": true,
            "rope_parameters": {
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64
            }
        })
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    #[test]
    fn llama3_new_schema() {
        let c = parse(llama_json()).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_hidden_layers),
            (64, 176, 2)
        );
        assert_eq!(
            (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (4, 2, 16)
        );
        assert_eq!((c.vocab_size, c.max_position_embeddings), (512, 128));
        assert_eq!(c.norm_eps, 1e-5);
        assert_eq!(c.activation, UnaryOp::Silu);
        assert_eq!(c.dtype, DType::Bf16);
        assert!(c.tie_word_embeddings && c.scale_attention);
        assert!(!c.qkv_bias && !c.o_bias && !c.mlp_bias);
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.as_slice()),
            (Some(0), &[1][..])
        );
        assert_eq!(c.sliding_window, None);
        assert_eq!(
            c.rope,
            Some(RopeConfig {
                theta: 500000.0,
                rotary_dim: 16,
                scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 64
                }
            })
        );
        // The manifest carries it: it must round-trip through serde.
        let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn llama_old_schema_and_defaults() {
        let v = json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512,
            "head_dim": 32, "rope_theta": 20000.0, "torch_dtype": "float16",
            "rope_scaling": {"type": "linear", "factor": 2.0},
            "attention_bias": true, "eos_token_id": [1, 7]
        });
        let c = parse(v.clone()).unwrap();
        assert_eq!((c.num_key_value_heads, c.head_dim), (4, 32));
        assert_eq!(c.dtype, DType::F16);
        assert_eq!(c.norm_eps, 1e-6);
        assert_eq!(c.max_position_embeddings, 2048);
        assert!(!c.tie_word_embeddings);
        assert!(c.qkv_bias && c.o_bias && !c.mlp_bias);
        assert_eq!(c.eos_token_ids, vec![1, 7]);
        let rope = c.rope.unwrap();
        assert_eq!((rope.theta, rope.rotary_dim), (20000.0, 32));
        assert_eq!(rope.scaling, RopeScaling::Linear { factor: 2.0 });

        // Old-schema llama3 (`rope_type` inside `rope_scaling`), no original context: falls
        // back to max_position_embeddings as transformers does.
        let v = with(
            v,
            "rope_scaling",
            json!({"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}),
        );
        let rope = parse(v.clone()).unwrap().rope.unwrap();
        assert!(matches!(
            rope.scaling,
            RopeScaling::Llama3 {
                original_max_position_embeddings: 2048,
                ..
            }
        ));
        // `default` and null mean no scaling; absent θ is 10000.
        let v = without(
            with(v, "rope_scaling", json!({"rope_type": "default"})),
            "rope_theta",
        );
        let rope = parse(v.clone()).unwrap().rope.unwrap();
        assert_eq!((rope.theta, rope.scaling), (10000.0, RopeScaling::None));
        let rope = parse(with(v, "rope_scaling", Value::Null))
            .unwrap()
            .rope
            .unwrap();
        assert_eq!(rope.scaling, RopeScaling::None);
    }

    #[test]
    fn partial_rotary_factor_in_either_place() {
        let c = parse(with(llama_json(), "partial_rotary_factor", json!(0.5))).unwrap();
        assert_eq!(c.rope.unwrap().rotary_dim, 8);
        let mut v = llama_json();
        v["rope_parameters"]["partial_rotary_factor"] = json!(0.25);
        assert_eq!(parse(v).unwrap().rope.unwrap().rotary_dim, 4);
        let e = err(with(llama_json(), "partial_rotary_factor", json!(0.1)));
        assert!(
            e.contains("partial_rotary_factor") && e.contains("even"),
            "{e}"
        );
    }

    #[test]
    fn other_rope_types_are_unsupported() {
        let mut v = llama_json();
        v["rope_parameters"]["rope_type"] = json!("yarn");
        let e = err(v);
        assert!(e.contains("`rope_parameters.rope_type` = yarn"), "{e}");
        let v = with(
            without(llama_json(), "rope_parameters"),
            "rope_scaling",
            json!({"type": "dynamic", "factor": 2.0}),
        );
        let e = err(v);
        assert!(
            e.contains("unsupported option `rope_scaling.type` = dynamic"),
            "{e}"
        );
        let v = with(
            llama_json(),
            "rope_parameters",
            json!({"full_attention": {"rope_type": "default"}}),
        );
        assert!(err(v).contains("rope_parameters.full_attention"));
    }

    #[test]
    fn llama3_needs_its_parameters() {
        let mut v = llama_json();
        v["rope_parameters"]
            .as_object_mut()
            .unwrap()
            .remove("low_freq_factor");
        let e = err(v);
        assert!(
            e.contains("`rope_parameters.low_freq_factor`: missing"),
            "{e}"
        );
    }

    #[test]
    fn mistral_sliding_window() {
        let v = with(
            with(llama_json(), "model_type", json!("mistral")),
            "sliding_window",
            json!(8),
        );
        let c = parse(v.clone()).unwrap();
        assert_eq!(c.architecture, Architecture::Mistral);
        assert_eq!(c.sliding_window, Some(8));
        assert_eq!(
            parse(with(v.clone(), "sliding_window", Value::Null))
                .unwrap()
                .sliding_window,
            None
        );
        // Absent: MistralConfig's default.
        assert_eq!(
            parse(without(v, "sliding_window")).unwrap().sliding_window,
            Some(4096)
        );
    }

    #[test]
    fn qwen2_biases_and_window() {
        let v = without(
            with(llama_json(), "model_type", json!("qwen2")),
            "tie_word_embeddings",
        );
        let v = with(v, "use_sliding_window", json!(false));
        let c = parse(v.clone()).unwrap();
        assert!(c.qkv_bias && !c.o_bias && !c.mlp_bias);
        assert!(!c.tie_word_embeddings, "Qwen2Config defaults to untied");
        assert_eq!(c.sliding_window, None);
        let e = err(with(v.clone(), "use_sliding_window", json!(true)));
        assert!(
            e.contains("unsupported option `use_sliding_window` = true"),
            "{e}"
        );
        let e = err(with(
            v,
            "layer_types",
            json!(["full_attention", "sliding_attention"]),
        ));
        assert!(e.contains("`layer_types` = \"sliding_attention\""), "{e}");
    }

    fn gpt2_json() -> Value {
        json!({
            "model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128,
            "n_inner": null, "vocab_size": 512, "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new", "scale_attn_by_inverse_layer_idx": false
        })
    }

    #[test]
    fn gpt2_fields() {
        let c = parse(gpt2_json()).unwrap();
        assert_eq!(c.architecture, Architecture::Gpt2);
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.head_dim),
            (64, 256, 16)
        );
        assert_eq!((c.num_attention_heads, c.num_key_value_heads), (4, 4));
        assert_eq!(c.max_position_embeddings, 128);
        assert_eq!(c.activation, UnaryOp::GeluTanh);
        assert!(c.rope.is_none() && c.tie_word_embeddings && c.scale_attention);
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias);
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.as_slice()),
            (Some(50256), &[50256][..])
        );
        let c = parse(with(gpt2_json(), "n_inner", json!(176))).unwrap();
        assert_eq!(c.intermediate_size, 176);
        let c = parse(with(gpt2_json(), "activation_function", json!("gelu"))).unwrap();
        assert_eq!(c.activation, UnaryOp::GeluErf);
        let c = parse(with(gpt2_json(), "scale_attn_weights", json!(false))).unwrap();
        assert!(!c.scale_attention);
    }

    #[test]
    fn gpt2_unsupported_options() {
        let e = err(with(
            gpt2_json(),
            "scale_attn_by_inverse_layer_idx",
            json!(true),
        ));
        assert!(
            e.contains("`scale_attn_by_inverse_layer_idx` = true"),
            "{e}"
        );
        let e = err(with(
            gpt2_json(),
            "activation_function",
            json!("quick_gelu"),
        ));
        assert!(e.contains("`activation_function` = quick_gelu"), "{e}");
        let e = err(with(gpt2_json(), "n_head", json!(5)));
        assert!(e.contains("`n_head`") && e.contains("n_embd 64"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(json!({"model_type": "bert"}));
        assert!(
            e.contains("config.json")
                && e.contains("`bert`")
                && e.contains("llama, mistral, qwen2, gpt2"),
            "{e}"
        );
        assert!(err(json!({"hidden_size": 1})).contains("`model_type`: missing"));
        let e = err(without(llama_json(), "hidden_size"));
        assert_eq!(e, "config.json: `hidden_size`: missing");
        let e = err(with(llama_json(), "num_key_value_heads", json!(3)));
        assert!(
            e.contains("`num_key_value_heads`: 3 does not divide"),
            "{e}"
        );
        let e = err(with(llama_json(), "vocab_size", json!("many")));
        assert!(
            e.contains("`vocab_size`: expected a non-negative integer"),
            "{e}"
        );
        let e = err(with(llama_json(), "hidden_act", json!("mish")));
        assert!(e.contains("unsupported option `hidden_act` = mish"), "{e}");
        let e = err(with(llama_json(), "dtype", json!("float64")));
        assert!(e.contains("`dtype` = float64"), "{e}");
        assert!(parse_config("{", "x/config.json")
            .unwrap_err()
            .to_string()
            .starts_with("x/config.json: invalid JSON"));
    }

    #[test]
    fn llama_constructor_is_valid() {
        let c = ModelConfig::llama(256, 64, 128, 2, 4, 2);
        c.validate("demo").unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope.unwrap().rotary_dim, 16);
        let bad = ModelConfig::llama(256, 64, 128, 2, 4, 3);
        assert!(bad
            .validate("demo")
            .unwrap_err()
            .to_string()
            .starts_with("demo: `num_key_value_heads`"));
    }
}
