#!/usr/bin/env python3
"""Benchmark models for tessera (issue 4, deliverable 6).

Builds a TinyLlama-1.1B-shaped Llama with seeded random weights (nothing is
downloaded) and writes it as

  * Hugging Face folders  <out>/hf-f32/, <out>/hf-f16/
      config.json, generation_config.json, sharded model-*.safetensors +
      model.safetensors.index.json, tokenizer.json, tokenizer_config.json,
      special_tokens_map.json
  * GGUF files            <out>/gguf/model-{f32,f16,q8_0,q4_0}.gguf
      arch "llama", llama.cpp tensor names, Q/K rows permuted exactly like
      convert_hf_to_gguf.py's LlamaModel.permute, tokenizer "gpt2" (BPE).

Every format holds the *same* values: each tensor is drawn from its own
generator, numpy.random.default_rng([seed, crc32(tensor name)]), and rounded to
float16 once, so F32 files hold exactly the F16 values widened, and the Q8_0 /
Q4_0 files are quantizations of those values.  A tensor's values depend only on
(seed, name), so `--layers 2` gives the first two layers of the full model.

Memory: tensors are generated, converted and written one at a time (safetensors
shards of <= ~1 GiB are assembled in memory; GGUF is streamed tensor by tensor),
so peak memory is about one shard, never a full-precision copy of the model.

Usage:
  python3 bench/make_models.py --out bench/models \
      [--formats hf,gguf] [--dtypes f32,f16,q8_0,q4_0] [--layers N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------
# Model shape (TinyLlama-1.1B)
# --------------------------------------------------------------------------

CONFIG = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=64,
    vocab_size=32000,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=2048,
)
FULL_LAYERS = 22
INIT_STD = 0.02          # like HF's initializer_range
NORM_STD = 0.02          # norm weights ~ N(1, 0.02)
BOS_ID, EOS_ID = 1, 2
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]   # ids 0, 1, 2 as in Llama
SHARD_MAX_BYTES = 1 << 30

HF_DTYPES = {"f32": np.float32, "f16": np.float16}
GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0")


# --------------------------------------------------------------------------
# Tensor plan and deterministic values
# --------------------------------------------------------------------------

def tensor_plan(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, HF shape) in the order they are written."""
    h = CONFIG["hidden_size"]
    f = CONFIG["intermediate_size"]
    hd = CONFIG["head_dim"]
    nq = CONFIG["num_attention_heads"] * hd
    nkv = CONFIG["num_key_value_heads"] * hd
    v = CONFIG["vocab_size"]
    plan = [("model.embed_tokens.weight", (v, h))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        plan += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (nq, h)),
            (p + "self_attn.k_proj.weight", (nkv, h)),
            (p + "self_attn.v_proj.weight", (nkv, h)),
            (p + "self_attn.o_proj.weight", (h, nq)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (f, h)),
            (p + "mlp.up_proj.weight", (f, h)),
            (p + "mlp.down_proj.weight", (h, f)),
        ]
    plan += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return plan


def make_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic float32 values that are exactly representable in float16."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    x = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) == 1:          # RMSNorm weights: near 1
        x *= NORM_STD
        x += 1.0
    else:
        x *= INIT_STD
    return x.astype(np.float16).astype(np.float32)


def hf_to_gguf_name(name: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split(".")          # model.layers.{i}.<module>.<proj>.weight
    i = parts[2]
    sub = ".".join(parts[3:-1])
    m = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }[sub]
    return f"blk.{i}.{m}.weight"


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half -> ggml NORM rope rows)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute()."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# --------------------------------------------------------------------------
# Tokenizer: byte-level BPE trained on a deterministic local corpus
# --------------------------------------------------------------------------

def _corpus_files(max_bytes: int) -> list[str]:
    """Python standard-library sources of the running interpreter (sorted, capped)."""
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if rel[0] in ("site-packages", "dist-packages", "test", "idlelib", "lib2to3"):
            continue
        try:
            n = p.stat().st_size
        except OSError:
            continue
        files.append(str(p))
        total += n
        if total >= max_bytes:
            break
    return files


def build_tokenizer(vocab_size: int, corpus_bytes: int = 8 << 20):
    """Byte-level BPE (GPT-2 style) with Llama's special ids; padded to vocab_size.

    Returns (tokenizers.Tokenizer, tokens list[str] by id, token types list[int],
    merges list[str]).  The tokenizer.json vocabulary has exactly vocab_size
    entries: trained tokens + unused "<pad_N>" tokens filling the rest (so the
    embedding matrix, GGUF token list and tokenizer agree on 32000).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from tokenizers import AddedToken

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    files = _corpus_files(corpus_bytes)
    tok.train(files, trainer)
    n_trained = tok.get_vocab_size()
    if n_trained < vocab_size:
        tok.add_tokens([AddedToken(f"<pad_{i}>", special=True, normalized=False)
                        for i in range(n_trained, vocab_size)])
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])

    inv = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    assert [inv[i] for i in range(3)] == SPECIAL_TOKENS
    tokens = [inv[i] for i in range(vocab_size)]
    import gguf
    types = []
    for i, t in enumerate(tokens):
        if i < len(SPECIAL_TOKENS):
            types.append(int(gguf.TokenType.CONTROL))
        elif i >= n_trained:
            types.append(int(gguf.TokenType.UNUSED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tok, tokens, types, merges, n_trained


# --------------------------------------------------------------------------
# Hugging Face writer
# --------------------------------------------------------------------------

def hf_config(n_layers: int, dtype: str) -> dict:
    c = CONFIG
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": n_layers,
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": c["max_position_embeddings"],
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"],
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": INIT_STD,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "vocab_size": c["vocab_size"],
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "use_cache": True,
        "torch_dtype": {"f32": "float32", "f16": "float16"}[dtype],
    }


def write_hf(out: Path, dtype: str, n_layers: int, seed: int, tok) -> None:
    from safetensors.numpy import save_file

    npdt = HF_DTYPES[dtype]
    out.mkdir(parents=True, exist_ok=True)
    plan = tensor_plan(n_layers)
    itemsize = np.dtype(npdt).itemsize

    # Greedy shard plan (deterministic, known before writing => stable file names).
    shards, cur, cur_bytes = [], [], 0
    for name, shape in plan:
        nb = int(np.prod(shape)) * itemsize
        if cur and cur_bytes + nb > SHARD_MAX_BYTES:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((name, shape))
        cur_bytes += nb
    shards.append(cur)

    weight_map, total = {}, 0
    for si, shard in enumerate(shards):
        fname = (f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
                 if len(shards) > 1 else "model.safetensors")
        tensors = {}
        for name, shape in shard:
            tensors[name] = make_tensor(name, shape, seed).astype(npdt, copy=False)
            weight_map[name] = fname
            total += tensors[name].nbytes
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        os.chmod(out / fname, 0o644)   # safetensors creates 0600 files
        del tensors
    if len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(hf_config(n_layers, dtype), indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False}, indent=2))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False,
        "model_max_length": CONFIG["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))


# --------------------------------------------------------------------------
# GGUF writer (streamed)
# --------------------------------------------------------------------------

def gguf_encode(name: str, x: np.ndarray, dtype: str):
    """HF float32 values -> (array to write, raw ggml type or None)."""
    import gguf
    from gguf.quants import quantize
    if x.ndim == 1 or dtype == "f32":
        return x.astype(np.float32, copy=False), None   # norms always F32
    if dtype == "f16":
        return x.astype(np.float16), None
    qt = {"q8_0": gguf.GGMLQuantizationType.Q8_0,
          "q4_0": gguf.GGMLQuantizationType.Q4_0}[dtype]
    return quantize(x, qt), qt


def gguf_info(shape: tuple[int, ...], dtype: str):
    """(byte shape, numpy dtype, nbytes, raw type) without materialising the tensor."""
    import gguf
    if len(shape) == 1 or dtype == "f32":
        return shape, np.dtype(np.float32), int(np.prod(shape)) * 4, None
    if dtype == "f16":
        return shape, np.dtype(np.float16), int(np.prod(shape)) * 2, None
    qt = {"q8_0": gguf.GGMLQuantizationType.Q8_0,
          "q4_0": gguf.GGMLQuantizationType.Q4_0}[dtype]
    block, tsize = gguf.GGML_QUANT_SIZES[qt]
    assert shape[-1] % block == 0
    bshape = (*shape[:-1], shape[-1] // block * tsize)
    return bshape, np.dtype(np.uint8), int(np.prod(bshape)), qt


def write_gguf(path: Path, dtype: str, n_layers: int, seed: int, tokinfo) -> None:
    import gguf

    _, tokens, types, merges, _ = tokinfo
    c = CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"tessera-bench-llama-1.1b-random-L{n_layers}-seed{seed}")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_vocab_size(c["vocab_size"])
    ft = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype]
    w.add_file_type(int(ft))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # Tokenizer: byte-level BPE in llama.cpp's "gpt2" model with the GPT-2 pre-tokenizer regex
    # (the same regex as tokenizers' ByteLevel(use_regex=True)).
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    plan = tensor_plan(n_layers)
    for name, shape in plan:
        bshape, npdt, nbytes, raw = gguf_info(shape, dtype)
        w.add_tensor_info(hf_to_gguf_name(name), bshape, npdt, nbytes, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in plan:
        x = make_tensor(name, shape, seed)
        if name.endswith("q_proj.weight"):
            x = permute(x, c["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            x = permute(x, c["num_key_value_heads"])
        data, _ = gguf_encode(name, x, dtype)
        w.write_tensor_data(data)
        del x, data
    w.close()


# --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/models", type=Path)
    ap.add_argument("--formats", default="hf,gguf")
    ap.add_argument("--dtypes", default="f32,f16,q8_0,q4_0",
                    help="f32,f16 apply to hf and gguf; q8_0,q4_0 to gguf only")
    ap.add_argument("--layers", type=int, default=FULL_LAYERS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    formats = [f for f in args.formats.split(",") if f]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for f in formats:
        if f not in ("hf", "gguf"):
            ap.error(f"unknown format {f!r}")
    for d in dtypes:
        if d not in GGUF_DTYPES:
            ap.error(f"unknown dtype {d!r}")

    t0 = time.time()
    tokinfo = build_tokenizer(CONFIG["vocab_size"])
    print(f"tokenizer: {tokinfo[4]} trained BPE tokens + {CONFIG['vocab_size'] - tokinfo[4]} "
          f"unused pads, {len(tokinfo[3])} merges ({time.time() - t0:.1f}s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    made = []
    for fmt in formats:
        for d in dtypes:
            t = time.time()
            if fmt == "hf":
                if d not in HF_DTYPES:
                    continue
                p = args.out / f"hf-{d}"
                write_hf(p, d, args.layers, args.seed, tokinfo[0])
                size = sum(f.stat().st_size for f in p.iterdir())
            else:
                p = args.out / "gguf" / f"model-{d}.gguf"
                write_gguf(p, d, args.layers, args.seed, tokinfo)
                size = p.stat().st_size
            made.append({"format": fmt, "dtype": d, "path": str(p), "bytes": size})
            print(f"{fmt:4s} {d:5s} {size / 2**20:9.1f} MiB  {time.time() - t:6.1f}s  {p}", flush=True)

    (args.out / "manifest.json").write_text(json.dumps(
        {"layers": args.layers, "seed": args.seed, "config": CONFIG, "made": made}, indent=2))
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
