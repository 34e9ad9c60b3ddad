#!/usr/bin/env python3
"""Smoke check for bench/make_models.py output (use a small `--layers 2` set).

  python3 bench/make_models.py --out /tmp/bm --layers 2
  python3 bench/check_models.py /tmp/bm

Checks:
  1. HF folders load with transformers (float32) and give finite logits; the
     f16 folder (upcast) gives the same logits as the f32 folder.
  2. Every GGUF tensor, dequantized (gguf.quants.dequantize) and with Q/K rows
     un-permuted, equals the HF tensor: exactly for F32/F16, and for Q8_0/Q4_0
     the stored bytes equal gguf.quants.quantize(permuted HF tensor) and the
     dequantization error is reported.
  3. A numpy forward pass over the GGUF F32 tensors using llama.cpp's rope
     layout (LLAMA_ROPE_TYPE_NORM: rotate adjacent pairs) reproduces the HF
     logits, i.e. the Q/K permutation makes both files compute the same function.
  4. GGUF metadata / token list match config.json / tokenizer.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_models as mm  # noqa: E402

PROMPT = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n"


def load_hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_norm(x, pos, theta):
    """ggml NORM rope: rotate (x[2i], x[2i+1]) by pos * theta^(-2i/d).  x: (T, H, D)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None].astype(np.float64) * inv[None, :]           # (T, D/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    out = np.empty(x.shape, dtype=np.float64)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def gguf_forward(t: dict[str, np.ndarray], ids: list[int], n_layers: int) -> np.ndarray:
    c = mm.CONFIG
    eps, hd = c["rms_norm_eps"], c["head_dim"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    T = len(ids)
    pos = np.arange(T)
    x = t["token_embd.weight"][ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(n_layers):
        g = lambda n: t[f"blk.{i}.{n}.weight"].astype(np.float64)  # noqa: E731
        h = rmsnorm(x, g("attn_norm"), eps)
        q = rope_norm((h @ g("attn_q").T).reshape(T, nh, hd), pos, c["rope_theta"])
        k = rope_norm((h @ g("attn_k").T).reshape(T, nkv, hd), pos, c["rope_theta"])
        v = (h @ g("attn_v").T).reshape(T, nkv, hd)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        x = x + a @ g("attn_output").T
        h = rmsnorm(x, g("ffn_norm"), eps)
        gate = h @ g("ffn_gate").T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ g("ffn_up").T)) @ g("ffn_down").T
    x = rmsnorm(x, t["output_norm.weight"].astype(np.float64), eps)
    return x @ t["output.weight"].astype(np.float64).T


def main() -> int:
    import gguf
    import torch
    from gguf.quants import dequantize, quantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/models")
    c = mm.CONFIG
    ok = True

    def check(cond, msg):
        nonlocal ok
        print(("  ok   " if cond else "  FAIL ") + msg)
        ok &= bool(cond)

    # ---- 1. HF folders -----------------------------------------------------
    print("[1] transformers")
    tok = AutoTokenizer.from_pretrained(str(root / "hf-f32"))
    ids = tok(PROMPT)["input_ids"]
    print(f"  prompt -> {len(ids)} tokens, first {ids[:8]}")
    check(ids[0] == mm.BOS_ID, "BOS prepended")
    check(tok.decode(ids, skip_special_tokens=True) == PROMPT, "decode(encode(x)) == x")
    logits = {}
    for d in ("f32", "f16"):
        model = AutoModelForCausalLM.from_pretrained(str(root / f"hf-{d}"), dtype=torch.float32)
        model.eval()
        n_layers = model.config.num_hidden_layers
        rope = getattr(model.config, "rope_parameters", None) or {"rope_theta": model.config.rope_theta}
        check(rope.get("rope_theta") == c["rope_theta"], f"hf-{d} rope_theta {rope}")
        with torch.no_grad():
            logits[d] = model(torch.tensor([ids])).logits[0].double().numpy()
        check(np.isfinite(logits[d]).all(), f"hf-{d} logits finite, std {logits[d].std():.3f}, "
              f"shape {logits[d].shape}")
        del model
    check(np.array_equal(logits["f32"], logits["f16"]), "hf-f16 (upcast) logits == hf-f32 logits")
    hf = load_hf_tensors(root / "hf-f32")
    hf16 = load_hf_tensors(root / "hf-f16")
    check(all(np.array_equal(hf[k], hf16[k].astype(np.float32)) for k in hf), "hf-f16 tensors == hf-f32 tensors")
    del hf16

    # ---- 2./4. GGUF -----------------------------------------------------------
    print("[2] gguf tensors vs HF")
    tj = json.loads((root / "hf-f32" / "tokenizer.json").read_text())
    vocab = {**tj["model"]["vocab"], **{a["content"]: a["id"] for a in tj["added_tokens"]}}
    f32_tensors = None
    to_hf = {mm.hf_to_gguf_name(n): n for n in hf}
    for d in mm.GGUF_DTYPES:
        p = root / "gguf" / f"model-{d}.gguf"
        if not p.exists():
            continue
        r = gguf.GGUFReader(str(p))
        kv = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
        meta_ok = (kv["general.architecture"] == "llama" and kv["llama.block_count"] == n_layers
                   and kv["llama.embedding_length"] == c["hidden_size"]
                   and kv["llama.feed_forward_length"] == c["intermediate_size"]
                   and kv["llama.attention.head_count"] == c["num_attention_heads"]
                   and kv["llama.attention.head_count_kv"] == c["num_key_value_heads"]
                   and kv["llama.rope.dimension_count"] == c["head_dim"]
                   and kv["llama.context_length"] == c["max_position_embeddings"]
                   and abs(kv["llama.rope.freq_base"] - c["rope_theta"]) < 1e-3
                   and abs(kv["llama.attention.layer_norm_rms_epsilon"] - c["rms_norm_eps"]) < 1e-9)
        check(meta_ok, f"{d}: llama metadata, file_type {kv['general.file_type']}")
        toks = kv["tokenizer.ggml.tokens"]
        check(len(toks) == c["vocab_size"] and all(vocab[t] == i for i, t in enumerate(toks))
              and len(kv["tokenizer.ggml.merges"]) == len(tj["model"]["merges"]),
              f"{d}: {len(toks)} tokens / {len(kv['tokenizer.ggml.merges'])} merges match tokenizer.json")
        worst, stats = 0.0, []
        types = set()
        dq = {}
        for t in r.tensors:
            ref = hf[to_hf[t.name]]
            x = dequantize(t.data, t.tensor_type).reshape(ref.shape).astype(np.float32)
            types.add(t.tensor_type.name)
            if d == "f32":
                dq[t.name] = x
            nh = (c["num_attention_heads"] if t.name.endswith("attn_q.weight") else
                  c["num_key_value_heads"] if t.name.endswith("attn_k.weight") else None)
            if nh:
                x = mm.unpermute(x, nh)
            if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                if not np.array_equal(x, ref):
                    check(False, f"{d}: {t.name} differs")
            else:
                refp = mm.permute(ref, nh) if nh else ref
                if not np.array_equal(np.asarray(t.data), quantize(refp, t.tensor_type)):
                    check(False, f"{d}: {t.name} bytes != quantize(HF)")
                err = np.abs(x - ref)
                worst = max(worst, float(err.max()))
                stats.append(float(np.sqrt(np.mean(err ** 2)) / np.sqrt(np.mean(ref ** 2))))
        check(len(r.tensors) == len(hf), f"{d}: {len(r.tensors)} tensors, types {sorted(types)}")
        if stats:
            print(f"         {d}: max |err| {worst:.2e}, relative RMS err mean {np.mean(stats):.2e} "
                  f"max {np.max(stats):.2e}")
        if d == "f32":
            f32_tensors = dq

    # ---- 3. same function ---------------------------------------------------
    if f32_tensors is not None:
        print("[3] numpy forward on GGUF F32 tensors (ggml NORM rope) vs transformers")
        ref = gguf_forward(f32_tensors, ids, n_layers)
        diff = np.abs(ref - logits["f32"]).max()
        check(diff < 1e-3 * max(1.0, np.abs(ref).max()), f"max |logit diff| {diff:.2e} "
              f"(logit range {np.abs(ref).max():.2f}), argmax equal: "
              f"{np.array_equal(ref.argmax(-1), logits['f32'].argmax(-1))}")
        # Negative control: without the permutation the function differs.
        bad = dict(f32_tensors)
        for i in range(n_layers):
            bad[f"blk.{i}.attn_q.weight"] = mm.unpermute(bad[f"blk.{i}.attn_q.weight"], c["num_attention_heads"])
            bad[f"blk.{i}.attn_k.weight"] = mm.unpermute(bad[f"blk.{i}.attn_k.weight"], c["num_key_value_heads"])
        d2 = np.abs(gguf_forward(bad, ids, n_layers) - logits["f32"]).max()
        print(f"         control (un-permuted Q/K with NORM rope): max |logit diff| {d2:.2e}")

    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
