//! GPT-2: pre-norm LayerNorm blocks with learned absolute positions, a fused q|k|v projection
//! and a plain MLP. Its `Conv1D` weights are stored `[in, out]`, so they are multiplied as they
//! are. Canonical names carry the `transformer.` prefix `GPT2LMHeadModel` saves; checkpoints of
//! the bare `GPT2Model` (no prefix) resolve to the same names when loaded.

use crate::builder::{Builder, Layout};
use crate::ModelError;
use tessera_ir::{BinaryOp, Dim, NodeId, Op};

const EMBED: &str = "transformer.wte.weight";
const POSITIONS: &str = "transformer.wpe.weight";

/// Builds one entry point's body and returns its logits.
pub(crate) fn build(b: &mut Builder) -> Result<NodeId, ModelError> {
    let cfg = b.cfg;
    b.scope("transformer.wte");
    let tokens = b.tokens;
    let tokens = b.embed(EMBED, cfg.vocab_size, tokens)?;
    b.scope("transformer.wpe");
    let positions = b.positions;
    let positions = b.embed(POSITIONS, cfg.max_position_embeddings, positions)?;
    let mut x = b.binary(BinaryOp::Add, tokens, positions)?;
    for layer in 0..cfg.num_hidden_layers {
        x = block(b, layer, x)?;
    }
    b.logits(x, "transformer.ln_f", EMBED)
}

fn block(b: &mut Builder, layer: usize, x: NodeId) -> Result<NodeId, ModelError> {
    let cfg = b.cfg;
    let (hidden, ffn) = (cfg.hidden_size, cfg.intermediate_size);
    let at = format!("transformer.h.{layer}");

    b.scope(&at);
    let h = b.norm(x, &format!("{at}.ln_1"))?;
    let attn = format!("{at}.attn");
    b.scope(&attn);
    let qkv = b.linear(
        h,
        &format!("{attn}.c_attn"),
        (hidden, 3 * hidden),
        Layout::Conv1D,
        cfg.qkv_bias,
    )?;
    let split = |b: &mut Builder, i: usize| {
        let slice = Op::Slice {
            axis: 2,
            start: Dim::from(i * hidden),
            end: Dim::from((i + 1) * hidden),
        };
        b.op(slice, &[qkv])
    };
    let (q, k, v) = (split(b, 0)?, split(b, 1)?, split(b, 2)?);
    let a = b.attention(layer, q, k, v)?;
    let o = b.linear(
        a,
        &format!("{attn}.c_proj"),
        (hidden, hidden),
        Layout::Conv1D,
        cfg.o_bias,
    )?;
    b.scope(&at);
    let x = b.binary(BinaryOp::Add, x, o)?;

    let h = b.norm(x, &format!("{at}.ln_2"))?;
    let mlp = format!("{at}.mlp");
    b.scope(&mlp);
    let up = b.linear(
        h,
        &format!("{mlp}.c_fc"),
        (hidden, ffn),
        Layout::Conv1D,
        cfg.mlp_bias,
    )?;
    let up = b.unary(cfg.activation, up)?;
    let down = b.linear(
        up,
        &format!("{mlp}.c_proj"),
        (ffn, hidden),
        Layout::Conv1D,
        cfg.mlp_bias,
    )?;
    b.scope(&at);
    b.binary(BinaryOp::Add, x, down)
}
