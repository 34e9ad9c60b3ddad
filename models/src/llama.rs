//! The Llama family (Llama 1/2/3, Mistral, Qwen2): pre-norm RMSNorm blocks with RoPE attention
//! and a gated MLP, weights named as `transformers`' `LlamaForCausalLM` saves them. The family's
//! differences (biases, sliding window, tying) are config fields the shared helpers read.

use crate::builder::{Builder, Layout};
use crate::ModelError;
use tessera_ir::{BinaryOp, NodeId};

const EMBED: &str = "model.embed_tokens.weight";

/// Builds one entry point's body and returns its logits.
pub(crate) fn build(b: &mut Builder) -> Result<NodeId, ModelError> {
    let cfg = b.cfg;
    b.scope("model.embed_tokens");
    let tokens = b.tokens;
    let mut x = b.embed(EMBED, cfg.vocab_size, tokens)?;
    for layer in 0..cfg.num_hidden_layers {
        x = block(b, layer, x)?;
    }
    b.logits(x, "model.norm", EMBED)
}

fn block(b: &mut Builder, layer: usize, x: NodeId) -> Result<NodeId, ModelError> {
    let cfg = b.cfg;
    let (hidden, ffn) = (cfg.hidden_size, cfg.intermediate_size);
    let q_width = cfg.num_attention_heads * cfg.head_dim;
    let kv_width = cfg.num_key_value_heads * cfg.head_dim;
    let at = format!("model.layers.{layer}");

    b.scope(&at);
    let h = b.norm(x, &format!("{at}.input_layernorm"))?;
    let attn = format!("{at}.self_attn");
    b.scope(&attn);
    let proj = |name: &str| format!("{attn}.{name}");
    let q = b.linear(
        h,
        &proj("q_proj"),
        (hidden, q_width),
        Layout::Linear,
        cfg.qkv_bias,
    )?;
    let k = b.linear(
        h,
        &proj("k_proj"),
        (hidden, kv_width),
        Layout::Linear,
        cfg.qkv_bias,
    )?;
    let v = b.linear(
        h,
        &proj("v_proj"),
        (hidden, kv_width),
        Layout::Linear,
        cfg.qkv_bias,
    )?;
    let a = b.attention(layer, q, k, v)?;
    let o = b.linear(
        a,
        &proj("o_proj"),
        (q_width, hidden),
        Layout::Linear,
        cfg.o_bias,
    )?;
    b.scope(&at);
    let x = b.binary(BinaryOp::Add, x, o)?;

    let h = b.norm(x, &format!("{at}.post_attention_layernorm"))?;
    let mlp = format!("{at}.mlp");
    b.scope(&mlp);
    let proj = |name: &str| format!("{mlp}.{name}");
    let gate = b.linear(
        h,
        &proj("gate_proj"),
        (hidden, ffn),
        Layout::Linear,
        cfg.mlp_bias,
    )?;
    let gate = b.unary(cfg.activation, gate)?;
    let up = b.linear(
        h,
        &proj("up_proj"),
        (hidden, ffn),
        Layout::Linear,
        cfg.mlp_bias,
    )?;
    let gated = b.binary(BinaryOp::Mul, gate, up)?;
    let down = b.linear(
        gated,
        &proj("down_proj"),
        (ffn, hidden),
        Layout::Linear,
        cfg.mlp_bias,
    )?;
    b.scope(&at);
    b.binary(BinaryOp::Add, x, down)
}
