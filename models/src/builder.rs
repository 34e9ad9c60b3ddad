//! What the architecture builders share: the module's entry points and state, weight
//! declarations, projections, norms, attention over the KV cache, and the logits head. An
//! architecture file only says how its layers are wired and what its weights are called.

use crate::config::{Architecture, ModelConfig};
use crate::{gpt2, llama, ModelError};
use std::collections::HashMap;
use tessera_ir::{
    BinaryOp, DType, Dim, EntryPoint, Graph, ModelInfo, Module, NodeId, Op, RopeLayout, StateSpec,
    UnaryOp, WeightSpec,
};

/// The computed RoPE frequency table (f32 [rotary_dim / 2]), shared by every layer.
pub(crate) const ROPE_INV_FREQ: &str = "rope.inv_freq";
/// The untied LM head's weight.
pub(crate) const LM_HEAD: &str = "lm_head.weight";

/// Tells the builder a stored weight's dtype (from its file); `None` means "use the config's".
pub(crate) type DTypeOf<'a> = &'a dyn Fn(&str) -> Option<DType>;

/// How a projection's weight is stored.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Layout {
    /// `nn.Linear`: `[out, in]`, multiplied transposed.
    Linear,
    /// GPT-2's `Conv1D`: `[in, out]`.
    Conv1D,
}

fn batch() -> Dim {
    Dim::sym("batch")
}

fn cache_name(layer: usize, kind: &str) -> String {
    format!("cache.{layer}.{kind}")
}

/// `[batch, kv_heads, past, head_dim]`, the declared shape of every cache input.
fn cache_shape(cfg: &ModelConfig) -> Vec<Dim> {
    vec![
        batch(),
        Dim::from(cfg.num_key_value_heads),
        Dim::sym("past"),
        Dim::from(cfg.head_dim),
    ]
}

/// Builds the `prefill` (symbolic `seq`) and `decode` (`seq` = 1) entry points of `cfg`.
pub(crate) fn build_module(cfg: &ModelConfig, dtype_of: DTypeOf) -> Result<Module, ModelError> {
    cfg.validate("model config")?;
    let mut weights = Weights {
        specs: Vec::new(),
        dtypes: HashMap::new(),
        dtype_of,
        default: cfg.dtype,
    };
    let mut entries = Vec::new();
    for (name, seq) in [("prefill", Dim::sym("seq")), ("decode", Dim::c(1))] {
        let mut b = Builder::new(cfg, &mut weights, seq);
        let logits = match cfg.architecture {
            Architecture::Gpt2 => gpt2::build(&mut b)?,
            Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 => {
                llama::build(&mut b)?
            }
        };
        b.g.output("logits", logits);
        entries.push(EntryPoint {
            name: name.into(),
            graph: b.g,
            kernels: None,
            cpu_code: vec![],
            gpu_code: vec![],
        });
    }
    let state = (0..cfg.num_hidden_layers)
        .flat_map(|layer| {
            ["k", "v"].map(|kind| StateSpec {
                name: cache_name(layer, kind),
                dtype: DType::F32,
                shape: cache_shape(cfg),
            })
        })
        .collect();
    Ok(Module {
        info: ModelInfo {
            architecture: cfg.architecture.model_type().into(),
            vocab_size: cfg.vocab_size,
            max_context: cfg.max_position_embeddings,
            bos_token_id: cfg.bos_token_id,
            eos_token_ids: cfg.eos_token_ids.clone(),
            num_layers: cfg.num_hidden_layers,
            hidden_size: cfg.hidden_size,
        },
        weights: weights.specs,
        state,
        entries,
    })
}

/// The module's weight declarations, shared by its entry points.
struct Weights<'d> {
    specs: Vec<WeightSpec>,
    dtypes: HashMap<String, DType>,
    dtype_of: DTypeOf<'d>,
    default: DType,
}

impl Weights<'_> {
    /// Declares a weight once; `computed` ones (from the config, not a file) are f32.
    fn declare(&mut self, name: &str, shape: &[usize], computed: bool) -> DType {
        if let Some(&dtype) = self.dtypes.get(name) {
            return dtype;
        }
        let dtype = if computed {
            DType::F32
        } else {
            (self.dtype_of)(name).unwrap_or(self.default)
        };
        self.dtypes.insert(name.into(), dtype);
        self.specs.push(WeightSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        });
        dtype
    }
}

/// One entry point under construction.
pub(crate) struct Builder<'a, 'd> {
    pub(crate) cfg: &'a ModelConfig,
    g: Graph,
    weights: &'a mut Weights<'d>,
    seq: Dim,
    /// `tokens`: i32 [batch, seq].
    pub(crate) tokens: NodeId,
    /// `positions`: i32 [batch, seq], absolute positions past..past+seq.
    pub(crate) positions: NodeId,
    inv_freq: Option<NodeId>,
}

impl<'a, 'd> Builder<'a, 'd> {
    fn new(cfg: &'a ModelConfig, weights: &'a mut Weights<'d>, seq: Dim) -> Builder<'a, 'd> {
        let mut g = Graph::new();
        let ids = vec![batch(), seq.clone()];
        let tokens = g.input("tokens", DType::I32, ids.clone());
        let positions = g.input("positions", DType::I32, ids);
        Builder {
            cfg,
            g,
            weights,
            seq,
            tokens,
            positions,
            inv_freq: None,
        }
    }

    /// Sets the scope recorded on the nodes added next (`model.layers.3.self_attn`).
    pub(crate) fn scope(&mut self, scope: &str) {
        self.g.set_scope(scope);
    }

    pub(crate) fn op(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId, ModelError> {
        Ok(self.g.add(op, inputs)?)
    }

    /// A stored weight, in the dtype its file has.
    fn weight(&mut self, name: &str, shape: &[usize]) -> NodeId {
        let dtype = self.weights.declare(name, shape, false);
        self.g.weight(name, dtype, shape)
    }

    /// Activations are f32; f16/bf16 weights used outside MatMul/norms are cast first.
    fn upcast(&mut self, x: NodeId) -> Result<NodeId, ModelError> {
        if self.g.ty(x).dtype == DType::F32 {
            Ok(x)
        } else {
            self.op(Op::Cast { to: DType::F32 }, &[x])
        }
    }

    pub(crate) fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId, ModelError> {
        self.op(Op::Unary(op), &[x])
    }

    pub(crate) fn binary(
        &mut self,
        op: BinaryOp,
        a: NodeId,
        b: NodeId,
    ) -> Result<NodeId, ModelError> {
        self.op(Op::Binary(op), &[a, b])
    }

    /// Rows `ids` of the table `name` ([rows, hidden]), as f32 [batch, seq, hidden].
    pub(crate) fn embed(
        &mut self,
        name: &str,
        rows: usize,
        ids: NodeId,
    ) -> Result<NodeId, ModelError> {
        let table = self.weight(name, &[rows, self.cfg.hidden_size]);
        let x = self.op(Op::Gather, &[table, ids])?;
        self.upcast(x)
    }

    /// `x · W (+ b)` for the projection whose weights are `{prefix}.weight` / `{prefix}.bias`.
    pub(crate) fn linear(
        &mut self,
        x: NodeId,
        prefix: &str,
        (inputs, outputs): (usize, usize),
        layout: Layout,
        bias: bool,
    ) -> Result<NodeId, ModelError> {
        let (shape, transpose_b) = match layout {
            Layout::Linear => ([outputs, inputs], true),
            Layout::Conv1D => ([inputs, outputs], false),
        };
        let w = self.weight(&format!("{prefix}.weight"), &shape);
        let y = self.op(Op::MatMul { transpose_b }, &[x, w])?;
        if !bias {
            return Ok(y);
        }
        let b = self.weight(&format!("{prefix}.bias"), &[outputs]);
        let b = self.upcast(b)?;
        self.binary(BinaryOp::Add, y, b)
    }

    /// The architecture's norm over the hidden axis: RMSNorm (`{prefix}.weight`) for the Llama
    /// family, LayerNorm (`{prefix}.weight`, `{prefix}.bias`) for GPT-2.
    pub(crate) fn norm(&mut self, x: NodeId, prefix: &str) -> Result<NodeId, ModelError> {
        let (hidden, eps) = (self.cfg.hidden_size, self.cfg.norm_eps);
        let w = self.weight(&format!("{prefix}.weight"), &[hidden]);
        match self.cfg.architecture {
            Architecture::Gpt2 => {
                let b = self.weight(&format!("{prefix}.bias"), &[hidden]);
                self.op(Op::LayerNorm { eps }, &[x, w, b])
            }
            Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 => {
                self.op(Op::RmsNorm { eps }, &[x, w])
            }
        }
    }

    /// Causal self-attention of layer `layer` from projected q [B, S, Hq·D] and k, v
    /// [B, S, Hkv·D]: split heads, RoPE (when the config has it), append k and v to the layer's
    /// cache (state `cache.{layer}.k|v`), attend (GQA and sliding window are the op's), and merge
    /// the heads back to [B, S, Hq·D].
    pub(crate) fn attention(
        &mut self,
        layer: usize,
        q: NodeId,
        k: NodeId,
        v: NodeId,
    ) -> Result<NodeId, ModelError> {
        let cfg = self.cfg;
        let mut q = self.split_heads(q, cfg.num_attention_heads)?;
        let mut k = self.split_heads(k, cfg.num_key_value_heads)?;
        let v = self.split_heads(v, cfg.num_key_value_heads)?;
        if let Some(rope) = &cfg.rope {
            let inv_freq = self.inv_freq(rope.rotary_dim / 2);
            let layout = RopeLayout::Half;
            q = self.op(Op::Rope { layout }, &[q, self.positions, inv_freq])?;
            k = self.op(Op::Rope { layout }, &[k, self.positions, inv_freq])?;
        }
        let k = self.append_cache(layer, "k", k)?;
        let v = self.append_cache(layer, "v", v)?;
        let scale = if cfg.scale_attention {
            (cfg.head_dim as f64).powf(-0.5) as f32
        } else {
            1.0
        };
        let attention = Op::Attention {
            scale,
            causal: true,
            window: cfg.sliding_window,
        };
        let a = self.op(attention, &[q, k, v])?;
        let a = self.op(
            Op::Permute {
                perm: vec![0, 2, 1, 3],
            },
            &[a],
        )?;
        let merged = vec![
            batch(),
            self.seq.clone(),
            Dim::from(cfg.num_attention_heads * cfg.head_dim),
        ];
        self.op(Op::Reshape { shape: merged }, &[a])
    }

    /// [B, S, H·D] → [B, H, S, D].
    fn split_heads(&mut self, x: NodeId, heads: usize) -> Result<NodeId, ModelError> {
        let shape = vec![
            batch(),
            self.seq.clone(),
            Dim::from(heads),
            Dim::from(self.cfg.head_dim),
        ];
        let x = self.op(Op::Reshape { shape }, &[x])?;
        self.op(
            Op::Permute {
                perm: vec![0, 2, 1, 3],
            },
            &[x],
        )
    }

    /// The shared `rope.inv_freq` weight, added to the graph once.
    fn inv_freq(&mut self, len: usize) -> NodeId {
        if let Some(id) = self.inv_freq {
            return id;
        }
        let dtype = self.weights.declare(ROPE_INV_FREQ, &[len], true);
        let id = self.g.weight(ROPE_INV_FREQ, dtype, &[len]);
        self.inv_freq = Some(id);
        id
    }

    /// Reads state `cache.{layer}.{kind}`, appends `new`, and outputs it under the same name.
    fn append_cache(
        &mut self,
        layer: usize,
        kind: &str,
        new: NodeId,
    ) -> Result<NodeId, ModelError> {
        let name = cache_name(layer, kind);
        let cache = self.g.input(&name, DType::F32, cache_shape(self.cfg));
        let appended = self.op(Op::KvAppend, &[cache, new])?;
        self.g.output(&name, appended);
        Ok(appended)
    }

    /// Logits f32 [batch, vocab] of the last position: slice it out of `x` [B, S, hidden], apply
    /// the final norm `{final_norm}`, and project with the LM head, which is the embedding table
    /// `embed` itself when the config ties them (both `[vocab, hidden]`, used transposed).
    pub(crate) fn logits(
        &mut self,
        x: NodeId,
        final_norm: &str,
        embed: &str,
    ) -> Result<NodeId, ModelError> {
        let (hidden, vocab) = (self.cfg.hidden_size, self.cfg.vocab_size);
        self.scope(final_norm);
        let last = Op::Slice {
            axis: 1,
            start: self.seq.clone() - Dim::c(1),
            end: self.seq.clone(),
        };
        let x = self.op(last, &[x])?;
        let x = self.op(
            Op::Reshape {
                shape: vec![batch(), Dim::from(hidden)],
            },
            &[x],
        )?;
        let x = self.norm(x, final_norm)?;
        self.scope("lm_head");
        let head = if self.cfg.tie_word_embeddings {
            embed
        } else {
            LM_HEAD
        };
        let w = self.weight(head, &[vocab, hidden]);
        self.op(Op::MatMul { transpose_b: true }, &[x, w])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_module, parse_config};
    use tessera_ir::{Graph, TensorType};

    fn shape(dims: &[&str]) -> Vec<Dim> {
        dims.iter().map(|d| Dim::parse(d).unwrap()).collect()
    }

    fn ty(dtype: DType, dims: &[&str]) -> TensorType {
        TensorType::new(dtype, shape(dims))
    }

    fn graph<'m>(m: &'m Module, entry: &str) -> &'m Graph {
        &m.entry(entry).unwrap().graph
    }

    fn output(m: &Module, entry: &str, name: &str) -> TensorType {
        let g = graph(m, entry);
        g.ty(g.output_node(name).unwrap()).clone()
    }

    fn ops<'g>(g: &'g Graph, name: &str) -> Vec<&'g tessera_ir::Node> {
        g.nodes.iter().filter(|n| n.op.name() == name).collect()
    }

    fn small_llama() -> ModelConfig {
        ModelConfig::llama(512, 64, 176, 2, 4, 2)
    }

    #[test]
    fn entry_points_state_and_shapes() {
        let m = build_module(&small_llama()).unwrap();
        m.validate().unwrap();
        let names: Vec<&str> = m.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["prefill", "decode"]);
        assert_eq!(m.state.len(), 4);
        for s in &m.state {
            assert_eq!(
                (s.dtype, &s.shape),
                (DType::F32, &shape(&["batch", "2", "past", "16"]))
            );
        }
        assert_eq!(m.state[3].name, "cache.1.v");

        assert_eq!(
            output(&m, "decode", "logits"),
            ty(DType::F32, &["batch", "512"])
        );
        assert_eq!(
            output(&m, "decode", "cache.1.v"),
            ty(DType::F32, &["batch", "2", "past + 1", "16"])
        );
        assert_eq!(
            output(&m, "prefill", "logits"),
            ty(DType::F32, &["batch", "512"])
        );
        assert_eq!(
            output(&m, "prefill", "cache.0.k"),
            ty(DType::F32, &["batch", "2", "past + seq", "16"])
        );
        for (entry, seq) in [("prefill", "seq"), ("decode", "1")] {
            let g = graph(&m, entry);
            let inputs: Vec<&str> = g.inputs().map(|(n, _)| n).collect();
            assert_eq!(&inputs[..2], ["tokens", "positions"]);
            for (_, id) in g.inputs().take(2) {
                assert_eq!(g.ty(id), &ty(DType::I32, &["batch", seq]));
            }
        }
        let info = &m.info;
        assert_eq!(
            (info.architecture.as_str(), info.num_layers, info.vocab_size),
            ("llama", 2, 512)
        );
    }

    #[test]
    fn llama_weights_and_ops() {
        let m = build_module(&small_llama()).unwrap();
        let spec = |name: &str| m.weight(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(m.weights.len(), 1 + 2 * 9 + 3);
        assert_eq!(spec("model.embed_tokens.weight").shape, [512, 64]);
        assert_eq!(spec("lm_head.weight").shape, [512, 64]);
        assert_eq!(
            spec("model.layers.1.self_attn.k_proj.weight").shape,
            [32, 64]
        );
        assert_eq!(
            spec("model.layers.1.self_attn.o_proj.weight").shape,
            [64, 64]
        );
        assert_eq!(spec("model.layers.0.mlp.down_proj.weight").shape, [64, 176]);
        assert_eq!(spec("model.norm.weight").shape, [64]);
        let rope = spec(ROPE_INV_FREQ);
        assert_eq!((rope.dtype, rope.shape.as_slice()), (DType::F32, &[8][..]));

        let g = graph(&m, "prefill");
        assert_eq!(ops(g, "rope").len(), 4);
        assert_eq!(ops(g, "kv_append").len(), 4);
        assert!(ops(g, "matmul")
            .iter()
            .all(|n| n.op == Op::MatMul { transpose_b: true }));
        let attention = ops(g, "attention");
        assert_eq!(attention.len(), 2);
        assert_eq!(
            attention[1].op,
            Op::Attention {
                scale: 0.25,
                causal: true,
                window: None
            }
        );
        assert_eq!(attention[1].scope, "model.layers.1.self_attn");
        assert_eq!(
            g.ty(attention[0].inputs[0]),
            &ty(DType::F32, &["batch", "4", "seq", "16"])
        );
        assert_eq!(ops(g, "unary")[0].scope, "model.layers.0.mlp");
    }

    #[test]
    fn tied_head_reads_the_embedding() {
        let mut cfg = small_llama();
        cfg.tie_word_embeddings = true;
        let m = build_module(&cfg).unwrap();
        assert!(m.weight("lm_head.weight").is_none());
        let g = graph(&m, "decode");
        let head = g.node(g.output_node("logits").unwrap());
        assert_eq!(head.op, Op::MatMul { transpose_b: true });
        assert_eq!(
            g.node(head.inputs[1]).op,
            Op::Weight {
                name: "model.embed_tokens.weight".into()
            }
        );
    }

    #[test]
    fn half_precision_weights_are_cast_where_needed() {
        let mut cfg = small_llama();
        cfg.dtype = DType::Bf16;
        cfg.qkv_bias = true;
        cfg.sliding_window = Some(8);
        let m = build_module(&cfg).unwrap();
        m.validate().unwrap();
        assert!(m
            .weights
            .iter()
            .all(|w| (w.dtype == DType::F32) == (w.name == ROPE_INV_FREQ)));
        let g = graph(&m, "decode");
        // One cast after the embedding gather, one per q/k/v bias.
        assert_eq!(ops(g, "cast").len(), 1 + 2 * 3);
        assert!(ops(g, "binary").iter().all(|n| n.ty.dtype == DType::F32));
        assert!(matches!(
            ops(g, "attention")[0].op,
            Op::Attention {
                window: Some(8),
                ..
            }
        ));
        assert_eq!(output(&m, "decode", "logits").dtype, DType::F32);
    }

    #[test]
    fn gpt2_layout() {
        let cfg = parse_config(
            r#"{"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
                "n_positions": 128, "n_inner": 176, "vocab_size": 512}"#,
            "config.json",
        )
        .unwrap();
        let m = build_module(&cfg).unwrap();
        m.validate().unwrap();
        let spec = |name: &str| {
            m.weight(name)
                .unwrap_or_else(|| panic!("no {name}"))
                .shape
                .clone()
        };
        assert_eq!(spec("transformer.wte.weight"), [512, 64]);
        assert_eq!(spec("transformer.wpe.weight"), [128, 64]);
        assert_eq!(spec("transformer.h.1.attn.c_attn.weight"), [64, 192]);
        assert_eq!(spec("transformer.h.1.attn.c_attn.bias"), [192]);
        assert_eq!(spec("transformer.h.0.mlp.c_fc.weight"), [64, 176]);
        assert_eq!(spec("transformer.h.0.mlp.c_proj.weight"), [176, 64]);
        assert_eq!(spec("transformer.ln_f.bias"), [64]);
        assert!(m.weight(ROPE_INV_FREQ).is_none() && m.weight(LM_HEAD).is_none());
        assert_eq!(m.weights.len(), 2 + 2 * 12 + 2);

        let g = graph(&m, "decode");
        assert!(ops(g, "rope").is_empty());
        assert_eq!(ops(g, "layer_norm").len(), 5);
        assert_eq!(ops(g, "gather").len(), 2);
        let slices = ops(g, "slice");
        assert_eq!(slices.len(), 2 * 3 + 1);
        assert_eq!(slices[2].ty, ty(DType::F32, &["batch", "1", "64"]));
        let matmuls = ops(g, "matmul");
        assert!(matmuls[..matmuls.len() - 1]
            .iter()
            .all(|n| n.op == Op::MatMul { transpose_b: false }));
        assert_eq!(
            output(&m, "decode", "logits"),
            ty(DType::F32, &["batch", "512"])
        );
        assert_eq!(
            output(&m, "prefill", "cache.1.k"),
            ty(DType::F32, &["batch", "4", "past + seq", "16"])
        );
    }

    #[test]
    fn invalid_configs_are_errors() {
        let mut cfg = small_llama();
        cfg.num_key_value_heads = 3;
        let e = build_module(&cfg).unwrap_err().to_string();
        assert!(e.starts_with("model config: `num_key_value_heads`"), "{e}");
        let mut cfg = small_llama();
        cfg.rope = None;
        assert!(build_module(&cfg)
            .unwrap_err()
            .to_string()
            .contains("`rope`"));
    }
}
